"""The cloud calls an instance makes as itself, stdlib only (both GPU images ship python3, neither is
documented to ship the AWS CLI or gcloud):

  sdxl_cloud.py fetch aws|gcp REGION BUCKET KEY OUT      the source bundle, from the stack's bucket
  sdxl_cloud.py env-file BASE OUT aws|gcp SCOPE VAR=NAME...   the server's env file: BASE plus the tokens,
                                                          read from SSM Parameter Store (SCOPE: region) or
                                                          Secret Manager (SCOPE: project)
  sdxl_cloud.py registry-password aws|gcp REGISTRY       a short-lived password for `docker login`
  sdxl_cloud.py model aws|gcp SCOPE REPO REVISION VARIANT CACHE UID [HF_TOKEN=NAME]
                                                          the files the server loads, into the Hub cache

AWS: the instance role's credentials from IMDSv2, each request signed with Signature Version 4. GCP: the
service account's token from the metadata server. A secret never reaches a command line (`ps`) or a log;
only registry-password prints one, into a pipe to `docker login --password-stdin`.
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import hmac
import json
import os
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

IMDS = "http://169.254.169.254"
GCE_METADATA = "http://metadata.google.internal/computeMetadata/v1"
# Tests point every cloud API at one loopback stand-in; on an instance nothing sets it.
FAKE_CLOUD = os.environ.get("SDXL_FAKE_CLOUD_URL")
TIMEOUT = 30


def http(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - fixed cloud endpoints
        return response.read()


def endpoint(url: str) -> str:
    if not FAKE_CLOUD:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{FAKE_CLOUD}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


# --- AWS -----------------------------------------------------------------------------------------


def aws_credentials() -> dict[str, str]:
    """The instance role's temporary credentials, through IMDSv2 (the instance requires its token)."""
    token = http("PUT", endpoint(f"{IMDS}/latest/api/token"),
                 {"X-aws-ec2-metadata-token-ttl-seconds": "300"}).decode()
    auth = {"X-aws-ec2-metadata-token": token}
    base = endpoint(f"{IMDS}/latest/meta-data/iam/security-credentials/")
    role = http("GET", base, auth).decode().split()[0]
    return json.loads(http("GET", base + role, auth))


def sigv4(method: str, url: str, region: str, service: str, body: bytes, headers: dict[str, str],
          credentials: dict[str, str], now: datetime.datetime) -> dict[str, str]:
    """`headers` plus the Signature Version 4 headers for this request (AWS's documented algorithm)."""
    parts = urllib.parse.urlsplit(url)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    signed = {**{k.lower(): v for k, v in headers.items()}, "host": parts.netloc, "x-amz-date": stamp,
              "x-amz-content-sha256": payload}  # S3 requires the payload hash header on every request
    if credentials.get("Token"):
        signed["x-amz-security-token"] = credentials["Token"]
    names = ";".join(sorted(signed))
    canonical = "\n".join([method, urllib.parse.quote(parts.path or "/", safe="/-_.~"), parts.query,
                           "".join(f"{k}:{signed[k].strip()}\n" for k in sorted(signed)), names, payload])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{credentials['SecretAccessKey']}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials['AccessKeyId']}/{scope}, "
                               f"SignedHeaders={names}, Signature={signature}")
    del signed["host"]  # urllib sets it from the URL
    return signed


def aws(method: str, url: str, region: str, service: str, body: bytes = b"", **headers: str) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    signed = sigv4(method, url, region, service, body, headers, aws_credentials(), now)
    return http(method, endpoint(url), signed, body or None)


def aws_json(region: str, service: str, host: str, target: str, payload: dict) -> dict:
    """A call to an AWS JSON-protocol API (SSM, ECR), e.g. target AmazonSSM.GetParameter."""
    body = json.dumps(payload).encode()
    return json.loads(aws("POST", f"https://{host}/", region, service, body, **{
        "content-type": "application/x-amz-json-1.1", "x-amz-target": target}))


def ssm_parameter(region: str, name: str) -> str:
    reply = aws_json(region, "ssm", f"ssm.{region}.amazonaws.com", "AmazonSSM.GetParameter",
                     {"Name": name, "WithDecryption": True})
    return reply["Parameter"]["Value"]


# --- GCP -----------------------------------------------------------------------------------------


def gcp_token() -> str:
    """The VM's service account token; IAM decides what it may read."""
    url = endpoint(f"{GCE_METADATA}/instance/service-accounts/default/token")
    return json.loads(http("GET", url, {"Metadata-Flavor": "Google"}))["access_token"]


def gcp(url: str) -> bytes:
    return http("GET", endpoint(url), {"Authorization": f"Bearer {gcp_token()}"})


def gcp_secret(project: str, name: str) -> str:
    reply = json.loads(gcp(f"https://secretmanager.googleapis.com/v1/projects/{project}/secrets/{name}"
                           "/versions/latest:access"))
    return base64.b64decode(reply["payload"]["data"]).decode()


# --- commands ------------------------------------------------------------------------------------


def fetch(cloud: str, region: str, bucket: str, key: str, out: str) -> None:
    if cloud == "aws":
        data = aws("GET", f"https://{bucket}.s3.{region}.amazonaws.com/{key}", region, "s3")
    else:
        data = gcp(f"https://storage.googleapis.com/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}"
                   "?alt=media")
    with open(out, "wb") as f:
        f.write(data)


def read_secret(cloud: str, scope: str, name: str) -> str:
    """A token from SSM Parameter Store (AWS, SCOPE: region) or Secret Manager (GCP, SCOPE: project)."""
    return ssm_parameter(scope, name) if cloud == "aws" else gcp_secret(scope, name)


def env_file(base: str, out: str, cloud: str, scope: str, refs: list[str]) -> None:
    """BASE (the settings, no secrets) plus each VAR read from its secret, written root-only and atomically:
    the server's container reads it with --env-file at every start, so a restart picks up a rotation."""
    lines = open(base, encoding="utf-8").read().splitlines()
    for ref in refs:
        variable, _, name = ref.partition("=")
        value = read_secret(cloud, scope, name)
        if not value or "\n" in value or "\r" in value:
            # docker --env-file takes each line literally: a line break would smuggle in another variable.
            raise SystemExit(f"sdxl_cloud: the secret {name} is empty or holds a line break; not written")
        lines.append(f"{variable}={value}")
    os.makedirs(os.path.dirname(out) or ".", mode=0o700, exist_ok=True)
    partial = f"{out}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))
    os.replace(partial, out)


def registry_password(cloud: str, registry: str) -> str:
    if cloud == "aws":  # <account>.dkr.ecr.<region>.amazonaws.com
        region = registry.split(".")[3]
        reply = aws_json(region, "ecr", f"api.ecr.{region}.amazonaws.com",
                         "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken", {})
        return base64.b64decode(reply["authorizationData"][0]["authorizationToken"]).decode().partition(":")[2]
    return gcp_token()  # Artifact Registry takes the token as the password of user oauth2accesstoken


# --- the model, into the Hub cache -------------------------------------------------------------------
# huggingface_hub's own layout (models--ORG--NAME/blobs/<id>, snapshots/<commit>/<file> -> blob, refs/<revision>),
# so the server's from_pretrained finds every file there and downloads only what is missing.

HUB = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
WEIGHT_FILES = (".safetensors", ".bin", ".onnx", ".pb", ".msgpack")  # what marks a folder as a model's
SHARD = r"(-\d{5}-of-\d{5})?"
CHUNK = 1 << 20


class _NoTokenElsewhere(urllib.request.HTTPRedirectHandler):
    """Follows the Hub's redirects (large files live on a CDN), never taking the token to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


HUB_OPENER = urllib.request.build_opener(_NoTokenElsewhere)


def hub_get(url: str, token: str | None, offset: int = 0):  # noqa: ANN201 - an http.client response
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return HUB_OPENER.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)  # noqa: S310 - the Hub


def files_the_server_loads(names: list[str], index: dict, variant: str) -> set[str]:
    """What diffusers' from_pretrained(variant=VARIANT, use_safetensors=True) reads of a pipeline repo:
    model_index.json; in each component folder with weights, its config.json and its VARIANT safetensors (else
    the plain ones), shard index included; every file of the other component folders (tokenizers, scheduler)."""
    chosen = {"model_index.json"}
    for folder in (k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)):
        files = {n.split("/")[1]: n for n in names if n.count("/") == 1 and n.startswith(f"{folder}/")}
        if not any(f.endswith(WEIGHT_FILES) for f in files):
            chosen.update(files.values())
            continue
        for tag in (f"\\.{re.escape(variant)}", ""):
            weights = [n for f, n in files.items() if re.fullmatch(rf"[^.]+{tag}{SHARD}\.safetensors", f)]
            if weights:
                chosen.update(weights, [n for f, n in files.items()
                                        if re.fullmatch(rf"[^.]+\.safetensors\.index{tag}\.json", f)])
                break
        chosen.update(n for f, n in files.items() if f == "config.json")
    return chosen


def fetch_blob(url: str, token: str | None, blob: Path, size: int, sha256: str | None, git_sha1: str | None) -> None:
    """The file into blobs/, resumable (a partial download continues) and atomic (checked, then renamed), under
    huggingface_hub's own lock for that blob, so the server never reads or writes it at the same time."""
    lock_dir = blob.parents[2] / ".locks" / blob.parents[1].name  # <HF_HUB_CACHE>/.locks/models--ORG--NAME
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{blob.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what filelock takes (huggingface_hub's WeakFileLock)
        if blob.exists():
            return
        part = blob.with_name(f"{blob.name}.sdxl-prefetch.incomplete")
        offset = part.stat().st_size if part.exists() and part.stat().st_size < size else 0
        with hub_get(url, token, offset) as response, open(part, "ab" if offset else "wb") as out:
            if offset and response.status != 206:  # no range support: start again
                out.truncate(0)
            while chunk := response.read(CHUNK):
                out.write(chunk)
        if part.stat().st_size < size:  # the connection dropped: the next try continues from here
            raise OSError(f"{url}: {part.stat().st_size} of {size} bytes")
        digest = hashlib.sha256() if sha256 else hashlib.sha1(f"blob {size}\0".encode())  # noqa: S324 - git's id
        with open(part, "rb") as written:
            while chunk := written.read(CHUNK):
                digest.update(chunk)
        if part.stat().st_size != size or digest.hexdigest() != (sha256 or git_sha1):
            part.unlink()
            raise OSError(f"{url}: the download does not match the Hub's size and hash")
        os.replace(part, blob)


def link(snapshot: Path, name: str, blob: Path) -> None:
    path = snapshot / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        temporary = path.with_name(f".{path.name}.sdxl-link")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(os.path.relpath(blob, path.parent))
        os.replace(temporary, path)


def model(cloud: str, scope: str, repo: str, revision: str, variant: str, cache: str, uid: str,
          refs: list[str]) -> None:
    token = None
    for ref in refs:  # HF_TOKEN=NAME: read as the server's start reads it
        name = ref.partition("=")[2]
        token = read_secret(cloud, scope, name)
    if os.geteuid() == 0:  # the cache belongs to the server container's user, which writes to it too
        os.setgroups([])
        os.setgid(int(uid))
        os.setuid(int(uid))
    with hub_get(f"{HUB}/api/models/{repo}/revision/{urllib.parse.quote(revision, safe='')}?blobs=true",
                 token) as response:
        info = json.loads(response.read())
    commit, siblings = info["sha"], {s["rfilename"]: s for s in info["siblings"]}
    root = Path(cache) / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)

    def fetch_file(name: str) -> Path:
        sibling = siblings[name]
        lfs = sibling.get("lfs")
        blob = root / "blobs" / (lfs["sha256"] if lfs else sibling["blobId"])
        fetch_blob(f"{HUB}/{repo}/resolve/{commit}/{urllib.parse.quote(name)}", token, blob,
                   lfs["size"] if lfs else sibling["size"], lfs and lfs["sha256"], sibling.get("blobId"))
        return blob

    index = fetch_file("model_index.json")
    snapshot = root / "snapshots" / commit
    for name in sorted(files_the_server_loads(list(siblings), json.loads(index.read_bytes()), variant)
                       - {"model_index.json"}):
        link(snapshot, name, fetch_file(name))
    link(snapshot, "model_index.json", index)  # last: sdxl-boot takes it as "the model is on disk"
    if revision != commit:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / f".{revision}.sdxl").write_text(commit)
        os.replace(root / "refs" / f".{revision}.sdxl", root / "refs" / revision)


def main(argv: list[str]) -> int:
    command, *args = argv or [""]
    if command == "fetch" and len(args) == 5:
        fetch(*args)
    elif command == "env-file" and len(args) >= 4:
        env_file(args[0], args[1], args[2], args[3], args[4:])
    elif command == "registry-password" and len(args) == 2:
        sys.stdout.write(registry_password(*args))
    elif command == "model" and len(args) >= 7:
        model(*args[:7], refs=args[7:])
    else:
        # The usage, from this file's docstring: the instance's copy keeps only its first line (stacks/bootstrap.py).
        print(__doc__ if "\n" in __doc__.strip() else
              "usage: sdxl_cloud.py fetch|env-file|registry-password|model ...", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except OSError as err:  # HTTP and network errors: one line, the unit retries
        sys.exit(f"sdxl_cloud: {' '.join(sys.argv[1:3])}: {err}")
