"""One error type for everything the API refuses, rendered in the shape each client family expects.

- HF routes: `{"error": "..."}` (plus `estimated_time` while loading), as the HF Inference API answers.
- OpenAI routes (`/v1/...`): `{"error": {"message", "type", "param", "code"}}`, which the `openai`
  client parses into its exception classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}


@dataclass
class ApiError(Exception):
    status: int
    message: str
    # Metrics label for errors_total, and the OpenAI `code`.
    kind: str = "invalid_request"
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.kind}: {self.message}"


def bad_input(message: str, param: str | None = None, status: int = 422) -> ApiError:
    return ApiError(status, message, kind="validation", param=param)


def unavailable(message: str, kind: str, retry_after: float, **extra: Any) -> ApiError:
    return ApiError(503, message, kind=kind, headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
                    extra=extra)


def error_body(path: str, err: ApiError) -> dict[str, Any]:
    if path.startswith(OPENAI_PREFIX):
        kind = _OPENAI_TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error")
        body: dict[str, Any] = {"error": {"message": err.message, "type": kind, "param": err.param,
                                          "code": err.kind}}
    else:
        body = {"error": err.message}
    body.update(err.extra)
    return body


def error_response(path: str, err: ApiError, metrics: Any | None = None) -> JSONResponse:
    if metrics is not None:
        metrics.errors.labels(kind=err.kind).inc()
    headers = dict(err.headers)
    if err.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    # OpenAI answers every invalid parameter with 400; the HF side keeps FastAPI's 422.
    status = 400 if err.status == 422 and path.startswith(OPENAI_PREFIX) else err.status
    return JSONResponse(error_body(path, err), status_code=status, headers=headers)


def from_pydantic(errors: Sequence[Any], status: int) -> ApiError:
    """A pydantic/FastAPI validation error list as one readable ApiError about its first problem."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":  # FastAPI's: its loc holds a character position, not a field
        position = first.get("loc", ("body", "?"))[-1]
        return bad_input(f"the body is not valid JSON (at character {position})", None, 400)
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return bad_input(f"{param}: {message}" if param else message, param, status)


def install_handlers(app: Any) -> None:
    """Route FastAPI/Starlette's own errors through `error_response` so every body has our shape."""

    def metrics_of(request: Request) -> Any:
        return getattr(request.app.state, "metrics", None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc, metrics_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, from_pydantic(exc.errors(), 422), metrics_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        err = ApiError(exc.status_code, str(exc.detail), kind=kind, headers=dict(exc.headers or {}))
        return error_response(request.url.path, err, metrics_of(request))
