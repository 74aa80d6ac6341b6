"""The load balancer's health check for a fleet instance: `GET /ready`, answered with what the server's own
`/ready` says.

The server asks for its bearer token on every route but /health, and neither AWS's target groups nor Google's
health checks can send a header, so they would only ever see 401. This small host service (stdlib only: both
GPU images ship python3) asks the server's `/ready` on loopback with the token from the root-only env file,
read at every check (a restart of the server rewrites it), and passes the status on: 200 once the model is
loaded and warm, 503 while loading or draining, and 503 while the server does not answer at all. Nothing but
`GET /ready` is served, and no token or body of the server's goes out: only the status and a fixed word.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENV_FILE = "/run/sdxl-endpoint/server.env"
SERVER = "http://127.0.0.1:8000"
TIMEOUT = 4  # below the load balancers' health-check timeouts (5 s)


def bearer_token(env_file: str) -> str | None:
    """SDXL_API_TOKEN from the env file the server's start writes, never executed as shell."""
    try:
        with open(env_file, encoding="utf-8") as f:
            values = dict(line.rstrip("\n").partition("=")[::2] for line in f if "=" in line)
    except OSError:
        return None
    return values.get("SDXL_API_TOKEN") or None


def server_ready(server: str, env_file: str) -> int:
    """The status the server's /ready answers with the token; 503 when it does not answer."""
    if not server.startswith("http://127.0.0.1:"):
        raise ValueError(f"the health check only asks the server on loopback, not {server}")
    token = bearer_token(env_file)
    request = urllib.request.Request(f"{server}/ready",  # noqa: S310 - loopback http, checked above
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 503  # not listening yet (building, starting) or restarting


def handler(server: str, env_file: str) -> type[BaseHTTPRequestHandler]:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status = server_ready(server, env_file) if self.path == "/ready" else 404
            body = b"ready\n" if status == 200 else b"not ready\n" if self.path == "/ready" else b"not found\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            pass  # a check every few seconds from every load balancer node would flood the journal

    return Health


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104 - the cloud firewall admits the load balancer only
    parser.add_argument("--server", default=SERVER)
    parser.add_argument("--env-file", default=ENV_FILE)
    args = parser.parse_args(argv)
    with ThreadingHTTPServer((args.bind, args.port), handler(args.server, args.env_file)) as httpd:
        httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
