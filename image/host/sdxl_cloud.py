"""The cloud calls an instance makes as itself, stdlib only (both GPU images ship python3, neither is
documented to ship the AWS CLI or gcloud):

  sdxl_cloud.py fetch aws|gcp REGION BUCKET KEY OUT      the source bundle, from the stack's bucket
  sdxl_cloud.py env-file BASE OUT aws|gcp SCOPE VAR=NAME...   the server's env file: BASE plus the tokens,
                                                          read from SSM Parameter Store (SCOPE: region) or
                                                          Secret Manager (SCOPE: project)
  sdxl_cloud.py registry-password aws|gcp REGISTRY       a short-lived password for `docker login`

AWS: the instance role's credentials from IMDSv2, each request signed with Signature Version 4. GCP: the
service account's token from the metadata server. A secret never reaches a command line (`ps`) or a log;
only registry-password prints one, into a pipe to `docker login --password-stdin`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import sys
import urllib.parse
import urllib.request

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


def env_file(base: str, out: str, cloud: str, scope: str, refs: list[str]) -> None:
    """BASE (the settings, no secrets) plus each VAR read from its secret, written root-only and atomically:
    the server's container reads it with --env-file at every start, so a restart picks up a rotation."""
    lines = open(base, encoding="utf-8").read().splitlines()
    for ref in refs:
        variable, _, name = ref.partition("=")
        value = ssm_parameter(scope, name) if cloud == "aws" else gcp_secret(scope, name)
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


def main(argv: list[str]) -> int:
    command, *args = argv or [""]
    if command == "fetch" and len(args) == 5:
        fetch(*args)
    elif command == "env-file" and len(args) >= 4:
        env_file(args[0], args[1], args[2], args[3], args[4:])
    elif command == "registry-password" and len(args) == 2:
        sys.stdout.write(registry_password(*args))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except OSError as err:  # HTTP and network errors: one line, the unit retries
        sys.exit(f"sdxl_cloud: {' '.join(sys.argv[1:3])}: {err}")
