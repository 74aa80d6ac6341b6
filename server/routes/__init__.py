"""HTTP routes, one router per client family: hf (HF Inference), openai (OpenAI Images), ops."""

from __future__ import annotations

import time
from typing import Any

from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from server import imaging
from server.errors import from_pydantic
from server.settings import Settings
from server.worker import GenerationWorker, Result


def worker_of(request: Request) -> GenerationWorker:
    return request.app.state.worker


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def deadline_of(request: Request) -> float:
    """--request-timeout from the request's arrival (noted by RequestMetrics), in time.monotonic()."""
    arrived = getattr(request.state, "arrived", None)
    return (time.monotonic() if arrived is None else arrived) + settings_of(request).request_timeout


def validate(model: type[BaseModel], data: Any, status: int) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_pydantic(exc.errors(), status) from None


async def encode_timed(image: Image.Image, media_type: str, quality: int | None = None) -> tuple[bytes, float]:
    """Encode on a worker thread (a 1024x1024 PNG takes tens of ms), returning the bytes and seconds."""
    started = time.perf_counter()
    data = await run_in_threadpool(imaging.encode, image, media_type, quality)
    return data, time.perf_counter() - started


def image_headers(results: list[Result], encode_seconds: float) -> dict[str, str]:
    compute = max(result.compute_seconds for result in results)
    queue = max(result.queue_seconds for result in results)
    return {
        "x-seed": str(results[0].seed),
        "x-compute-time": f"{compute:.3f}",
        # Standard header, shown by browsers' dev tools: where the time went, in milliseconds.
        "Server-Timing": f"queue;dur={queue * 1000:.1f}, compute;dur={compute * 1000:.1f}, "
                         f"encode;dur={encode_seconds * 1000:.1f}",
    }


IMAGE_HEADERS_DOC = {
    "x-seed": {"description": "Seed used (random when the request gave none).", "schema": {"type": "string"}},
    "x-compute-time": {"description": "Seconds of GPU time for the pipeline call.", "schema": {"type": "string"}},
    "Server-Timing": {"description": "queue, compute and encode durations in ms.", "schema": {"type": "string"}},
}
