"""Operations: liveness, readiness, Prometheus metrics and a description of what is served."""

from __future__ import annotations

import dataclasses
import functools
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from fastapi import APIRouter, Request, Response

from server.errors import ApiError, error_response
from server.metrics import CONTENT_TYPE
from server.routes import settings_of, worker_of
from server.validation import QUALITY_STEPS, quality_steps

router = APIRouter(tags=["Operations"])


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@functools.cache
def _versions() -> dict[str, str | None]:
    # Fixed for the life of the process; looking up package metadata scans sys.path on every call.
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **{name: _version(name) for name in ("diffusers", "transformers", "fastapi", "uvicorn")},
    }


@router.get("/health", summary="The process is alive (never needs a token)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


# /ready is public: why a load failed (an exception's text, often with local paths) stays in the server's log.
LOAD_FAILED_MESSAGE = "The model failed to load; the server's log says why"


@router.get("/ready", summary="200 once the model is loaded and warmed up; 503 before, and while draining "
                              "(never needs a token)",
            responses={503: {"description": "Loading (with estimated_time), failed to load, or shutting down"}})
async def ready(request: Request) -> Response:
    try:
        await worker_of(request).require_ready()
    except ApiError as err:
        if err.kind == "load_failed":
            err = dataclasses.replace(err, message=LOAD_FAILED_MESSAGE)
        # Not counted in sdxl_errors: load balancers and the boot and wake scripts poll this until ready.
        return error_response(request.url.path, err)
    return Response('{"status":"ready"}', media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/info", summary="Model, device, dtype, versions and limits")
async def info(request: Request) -> dict[str, Any]:
    settings = settings_of(request)
    worker = worker_of(request)
    pipes = worker.pipelines
    cuda = torch.cuda.is_available()
    return {
        "model": settings.model,
        "ready": worker.ready,
        "device": str(pipes.device) if pipes else None,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "dtype": str(pipes.dtype).removeprefix("torch.") if pipes else None,
        "pipelines": {kind: type(pipes.for_kind(kind)).__name__ for kind in ("text2img", "img2img", "inpaint")}
        if pipes else None,
        "default_size": pipes.default_size if pipes else None,
        "schedulers": list(pipes.schedulers) if pipes else None,
        "default_scheduler": pipes.default_scheduler if pipes else None,
        "optimizations": pipes.optimizations if pipes else None,
        "load_seconds": round(pipes.load_seconds, 2) if pipes else None,
        "cuda_memory": {
            "allocated_bytes": torch.cuda.memory_allocated(),
            "reserved_bytes": torch.cuda.memory_reserved(),
            "peak_bytes_by_batch_size": worker.peak_memory,
        } if cuda and pipes and pipes.device.type == "cuda" else None,
        "limits": {
            "min_size": settings.min_size,
            "max_size": settings.max_size,
            "max_steps": settings.max_steps,
            "max_n": settings.max_n,
            "max_queue": settings.max_queue,
            "max_batch": settings.max_batch,
            "max_body_mb": settings.max_body_mb,
            "max_input_pixels": settings.max_input_pixels,
            "max_prompt_chars": settings.max_prompt_chars,
            "request_timeout": settings.request_timeout,
            "max_wait_seconds": settings.max_wait_seconds,
            "guidance_scale": [0, 30],
            "strength": "(0, 1]",
        },
        "defaults": {"num_inference_steps": settings.default_steps, "guidance_scale": settings.default_guidance,
                     # OpenAI `quality` -> steps, when the request gives no num_inference_steps.
                     "quality_steps": {label: quality_steps(label, settings) for label in QUALITY_STEPS}},
        "versions": _versions(),
    }
