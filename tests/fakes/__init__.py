"""Loopback stand-ins for the hosted providers' APIs, built from their official SDKs' source."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def reply_json(handler: BaseHTTPRequestHandler, status: int, answer: Any,
               content_type: str = "application/json") -> None:
    data = json.dumps(answer).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def bearer(request: BaseHTTPRequestHandler) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    return request.headers.get("Authorization", "").removeprefix("Bearer ") or None


@contextmanager
def loopback_server(handle: Callable[[BaseHTTPRequestHandler, str], None]) -> Iterator[str]:
    """An HTTP server on a free loopback port that passes every request to `handle(request, method)`; yields its
    base URL. The short poll interval keeps shutdown (once per test) quick."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    # http.server dispatches each method to do_<METHOD>: every one goes to `handle`.
    for method in ("GET", "POST", "PATCH", "PUT", "DELETE", "HEAD"):
        setattr(Handler, f"do_{method}", lambda request, method=method: handle(request, method))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
