"""Wire settings, worker, routes and middleware into one ASGI app: `create_app(settings)`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware

from server import errors
from server.errors import OPENAI_PREFIX
from server.loader import Pipelines, load_pipelines
from server.metrics import Metrics
from server.middleware import BearerAuth, BodyLimit, ErrorShield, RequestMetrics
from server.routes import hf, openai, ops, playground
from server.schemas import HFError, HFRequest, ImagesEditFields, ImagesGenerateRequest, OpenAIError
from server.settings import Settings
from server.worker import GenerationWorker

log = logging.getLogger(__name__)

EXPOSED_HEADERS = ["x-seed", "x-compute-time", "Retry-After", "Server-Timing"]
# No token needed: the probes' /health and /ready (load balancers, Kubernetes probes and hosted health routes
# cannot send one; they reveal only liveness and readiness), and the playground page and files (they hold no
# data; the page asks for the token).
PUBLIC_PATHS = frozenset({"/health", "/ready"}) | playground.PATHS

DESCRIPTION = """Stable Diffusion XL behind two familiar APIs.

- **Hugging Face Inference**: `POST /` (or `/models/{id}`) with `{"inputs", "parameters"}` answers image bytes.
- **OpenAI Images**: `POST /v1/images/generations` and `POST /v1/images/edits`.

Send `Authorization: Bearer <token>` when the server has a token (every route but `/health`, `/ready` and the
playground page).
Errors are `{"error": "..."}` on HF routes and `{"error": {"message", "type", "param", "code"}}` on `/v1`.
"""


def create_app(settings: Settings, loader: Callable[[], Pipelines] | None = None,
               on_fatal: Callable[[], None] | None = None) -> FastAPI:
    """`loader` defaults to loading `settings.model`; `on_fatal` runs when that fails (the CLI exits)."""
    metrics = Metrics()
    worker = GenerationWorker(settings, metrics)
    metrics.ready.set_function(lambda: float(worker.ready and not worker.draining))
    metrics.estimated_wait.set_function(worker.estimated_wait)
    load = loader or (lambda: load_pipelines(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        loading = asyncio.create_task(worker.load(load), name="sdxl-load")

        def loaded(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None and on_fatal is not None:
                on_fatal()

        loading.add_done_callback(loaded)
        yield
        await worker.stop()
        loading.cancel()

    app = FastAPI(title="SDXL endpoint", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.worker = worker
    errors.install_handlers(app)
    routers = (hf.router, openai.router, ops.router, playground.router)
    for router in routers:
        app.include_router(router)

    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(BearerAuth, token=settings.api_token, metrics=metrics, public_paths=PUBLIC_PATHS)
    app.add_middleware(RequestMetrics, metrics=metrics,
                       routes=[route for router in routers for route in router.routes])
    app.add_middleware(ErrorShield, metrics=metrics)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=False,  # bearer tokens, not cookies; also what lets "*" work
        allow_methods=["*"],
        allow_headers=["*"],  # echoes the requested ones: Authorization, Content-Type, SDK extras
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus what it cannot infer: the bearer scheme and the hand-parsed bodies."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    for model in (HFRequest, ImagesGenerateRequest, ImagesEditFields, HFError, OpenAIError):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.setdefault("schemas", {}).update(model_schema.pop("$defs", {}))
        components["schemas"][model.__name__] = model_schema
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer": []}]
    for path, operations in schema["paths"].items():
        error = "OpenAIError" if path.startswith(OPENAI_PREFIX) else "HFError"
        for operation in operations.values():
            if path in PUBLIC_PATHS:
                operation["security"] = []
                continue
            # BearerAuth answers before any route: every operation but the public ones can say 401.
            operation.setdefault("responses", {}).setdefault("401", {
                "description": "Missing or wrong bearer token",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{error}"}}},
            })
    app.openapi_schema = schema
    return schema
