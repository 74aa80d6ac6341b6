"""Loopback stand-ins for the hosted providers' APIs, built from their official SDKs' source."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def reply_json(handler: BaseHTTPRequestHandler, status: int, answer: Any) -> None:
    data = json.dumps(answer).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextmanager
def loopback_server(handle: Callable[[BaseHTTPRequestHandler, str], None]) -> Iterator[str]:
    """An HTTP server on a free loopback port that passes every request to `handle(request, method)`; yields its
    base URL. The short poll interval keeps shutdown (once per test) quick."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            handle(self, "GET")

        def do_POST(self) -> None:  # noqa: N802
            handle(self, "POST")

        def do_PATCH(self) -> None:  # noqa: N802
            handle(self, "PATCH")

        def do_PUT(self) -> None:  # noqa: N802
            handle(self, "PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            handle(self, "DELETE")

        def do_HEAD(self) -> None:  # noqa: N802
            handle(self, "HEAD")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
