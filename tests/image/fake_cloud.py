"""A loopback stand-in for every cloud API an instance calls as itself (image/host/sdxl_cloud.py).

AWS: IMDSv2 (token, role, credentials), S3 GetObject, SSM GetParameter, ECR GetAuthorizationToken. GCP: the
metadata server's token, a Cloud Storage object download, Secret Manager access. sdxl_cloud.py reaches it
through SDXL_FAKE_CLOUD_URL, which turns https://<host>/<path> into <url>/<host>/<path>. It answers the way
the real APIs document (paths, JSON shapes, required headers) and refuses a request without its credentials.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

IMDS_TOKEN = "imds-session-token"
ROLE = "sdxl-instance-role"
CREDENTIALS = {"Code": "Success", "AccessKeyId": "ASIAFAKEKEYID0000000", "SecretAccessKey": "fake/secret+key",
               "Token": "fake-session-token", "Expiration": "2030-01-01T00:00:00Z"}
GCP_TOKEN = "ya29.fake-access-token"
ECR_PASSWORD = "ecr-password-from-get-authorization-token"


class FakeCloud:
    def __init__(self, log: Path | None = None) -> None:
        self.objects: dict[str, bytes] = {}  # "<bucket>/<key>", for S3 and Cloud Storage alike
        self.parameters: dict[str, str] = {}  # SSM parameter name -> value
        self.secrets: dict[str, str] = {}  # "projects/<project>/secrets/<id>" -> value
        self.requests: list[dict] = []
        self.log = log  # a call log shared with the fake commands, so the order of everything shows
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.handle(self, "GET")

            def do_PUT(self) -> None:  # noqa: N802
                outer.handle(self, "PUT")

            def do_POST(self) -> None:  # noqa: N802
                outer.handle(self, "POST")

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()

    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        host, _, path = parts.path.lstrip("/").partition("/")
        path = "/" + path
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = {"method": method, "host": host, "path": path, "query": parts.query, "headers": headers,
                  "body": body}
        self.requests.append(record)
        target = headers.get("x-amz-target", "")
        if self.log is not None:
            with self.log.open("a") as log:
                log.write(f"cloud {method} {host}{path} {target}".rstrip() + "\n")
        status, payload = self.answer(record)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def answer(self, r: dict) -> tuple[int, bytes | dict | list]:
        host, path, headers = r["host"], r["path"], r["headers"]
        if host == "169.254.169.254":
            if path == "/latest/api/token":
                ok = r["method"] == "PUT" and "x-aws-ec2-metadata-token-ttl-seconds" in headers
                return (200, IMDS_TOKEN.encode()) if ok else (400, b"")
            if headers.get("x-aws-ec2-metadata-token") != IMDS_TOKEN:
                return 401, b""  # IMDSv2 only, as the instance requires
            if path == "/latest/meta-data/iam/security-credentials/":
                return 200, ROLE.encode()
            if path == f"/latest/meta-data/iam/security-credentials/{ROLE}":
                return 200, CREDENTIALS
            return 404, b""
        if host.endswith(".amazonaws.com"):
            signed = headers.get("authorization", "").startswith(
                f"AWS4-HMAC-SHA256 Credential={CREDENTIALS['AccessKeyId']}/")
            if not signed or headers.get("x-amz-security-token") != CREDENTIALS["Token"]:
                return 403, {"message": "missing or unsigned credentials"}
            if ".s3." in host:
                key = f"{host.split('.s3.')[0]}/{urllib.parse.unquote(path[1:])}"
                return (200, self.objects[key]) if key in self.objects else (404, b"NoSuchKey")
            target = headers.get("x-amz-target", "")
            if headers.get("content-type") != "application/x-amz-json-1.1":
                return 400, {"__type": "UnknownOperationException"}
            if host.startswith("ssm.") and target == "AmazonSSM.GetParameter":
                request = json.loads(r["body"])
                if request["Name"] not in self.parameters or request.get("WithDecryption") is not True:
                    return 400, {"__type": "ParameterNotFound"}
                return 200, {"Parameter": {"Name": request["Name"], "Type": "SecureString",
                                           "Value": self.parameters[request["Name"]]}}
            if host.startswith("api.ecr.") and target == "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken":
                token = base64.b64encode(f"AWS:{ECR_PASSWORD}".encode()).decode()
                return 200, {"authorizationData": [{"authorizationToken": token,
                                                    "proxyEndpoint": f"https://{host}"}]}
            return 400, {"__type": "UnknownOperationException"}
        if host == "metadata.google.internal":
            if headers.get("metadata-flavor") != "Google":
                return 403, b""
            if path == "/computeMetadata/v1/instance/service-accounts/default/token":
                return 200, {"access_token": GCP_TOKEN, "expires_in": 3599, "token_type": "Bearer"}
            return 404, b""
        if headers.get("authorization") != f"Bearer {GCP_TOKEN}":
            return 401, {"error": {"code": 401}}
        if host == "storage.googleapis.com" and path.startswith("/storage/v1/b/") and r["query"] == "alt=media":
            bucket, _, key = path.removeprefix("/storage/v1/b/").partition("/o/")
            if "/" in key:
                return 404, b""  # the object name must arrive URL-encoded, slashes included
            key = f"{bucket}/{urllib.parse.unquote(key)}"
            return (200, self.objects[key]) if key in self.objects else (404, b"")
        if host == "secretmanager.googleapis.com" and path.endswith("/versions/latest:access"):
            name = path.removeprefix("/v1/").removesuffix("/versions/latest:access")
            if name not in self.secrets:
                return 404, {"error": {"code": 404}}
            data = base64.b64encode(self.secrets[name].encode()).decode()
            return 200, {"name": f"{name}/versions/1", "payload": {"data": data}}
        return 404, b""
