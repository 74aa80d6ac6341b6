"""Pure-ASGI middleware. Order, outermost first (see server/app.py):

    CORS -> ErrorShield -> RequestMetrics -> BearerAuth -> BodyLimit -> FastAPI routing

Starlette's ServerErrorMiddleware wraps everything, *outside* CORS: a crash that reached it would be
answered without CORS headers, which a browser reports as "Failed to fetch". ErrorShield therefore
turns every unhandled exception into a JSON 500 inside the CORS layer.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import ApiError, error_response
from server.metrics import Metrics

log = logging.getLogger(__name__)


class ErrorShield:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            err = ApiError(500, "Internal server error", kind="internal")
            await error_response(scope["path"], err, self.metrics)(scope, receive, send)


class RequestMetrics:
    """Count and time every request by route template, so label values stay bounded; note its arrival.

    Matched here rather than read from the router, because 401s and 413s never reach the router.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[Any]) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = [(route.path_regex, route.path_format) for route in routes]

    def _route(self, scope: Scope) -> str:
        for regex, template in self.templates:
            if regex.match(scope["path"]):
                return template
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Arrival, for the request's one deadline (model wait, queue and generation all count from here).
        scope.setdefault("state", {})["arrived"] = time.monotonic()
        status = 500

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


class BearerAuth:
    """Every route but the public ones needs `Authorization: Bearer <token>` when a token is configured.

    Checked before the body is read, so unauthenticated clients cannot make the server parse anything.
    """

    def __init__(self, app: ASGIApp, token: SecretStr | None, metrics: Metrics, public_paths: frozenset[str]) -> None:
        self.app = app
        self.token = token.get_secret_value().encode() if token else None
        self.metrics = metrics
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and self.token is not None and scope["path"] not in self.public_paths
                and scope["method"] != "OPTIONS" and not self._authorized(scope)):
            err = ApiError(401, "Missing or invalid bearer token (Authorization: Bearer <token>)",
                           kind="unauthorized")
            await error_response(scope["path"], err, self.metrics)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, credentials = Headers(scope=scope).get("authorization", "").partition(" ")
        presented = credentials.strip().encode()
        # compare_digest: the time taken does not reveal how much of the token matched.
        return scheme.lower() == "bearer" and hmac.compare_digest(presented, self.token or b"")


class BodyLimit:
    """413 for bodies over the limit, whether announced by Content-Length or streamed chunked.

    The body is buffered here (up to the limit) and replayed, so handlers never see a partial body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnect notifications

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = ApiError(413, f"Request body exceeds {self.max_bytes / 1048576:g} MiB", kind="body_too_large")
        await error_response(scope["path"], err, self.metrics)(scope, receive, send)
