"""Hugging Face Inference API compatible routes: `POST /` and `POST /models/{model_id}`.

One route serves three tasks, told apart the way the HF clients send them:
- text-to-image: `inputs` is the prompt;
- image-to-image: `inputs` is a base64 image (or data: URL), or the body is the raw image;
- inpainting: as image-to-image, plus `parameters.mask`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from server import imaging
from server.errors import bad_input
from server.loader import Pipelines
from server.routes import IMAGE_HEADERS_DOC, deadline_of, encode_timed, image_headers, settings_of, validate, worker_of
from server.schemas import HFError, HFParameters, HFRequest
from server.settings import Settings
from server.validation import edit_job, parse_json, text_job
from server.worker import Job

router = APIRouter(tags=["Hugging Face Inference"])

_TRUE = {"1", "true", "yes"}
_INLINE_BODY_BYTES = 16 * 1024

_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HFRequest"}},
            "image/*": {"schema": {"type": "string", "format": "binary"},
                        "description": "Raw image bytes: image-to-image with default parameters."},
        },
    },
}
_RESPONSES = {
    200: {
        "description": "The image. `Accept` picks the format: image/png (default), image/jpeg, image/webp.",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in imaging.OUTPUT_FORMATS},
        "headers": IMAGE_HEADERS_DOC,
    },
    **{status: {"model": HFError, "description": text} for status, text in {
        400: "Malformed body, undecodable image, unknown scheduler, mask size mismatch",
        401: "Missing or wrong bearer token",
        413: "Body or image too large",
        422: "A parameter out of range",
        429: "Queue full, or over the wait budget (see Retry-After)",
        503: "Loading (with estimated_time) or shutting down (see Retry-After)",
        504: "Timed out",
    }.items()},
}


def _payload(request: Request, body: bytes) -> HFRequest | None:
    """The JSON request, or None when the body is a raw image (image-to-image with defaults)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media.startswith("image/") or media == "application/octet-stream" or imaging.looks_like_image_bytes(body):
        return None
    return validate(HFRequest, parse_json(body, '{"inputs": ..., "parameters": {...}}'), 422)


async def _build_job(settings: Settings, pipes: Pipelines, payload: HFRequest | None, body: bytes) -> Job:
    # Base64 and image decoding of up to --max-body-mb is CPU work: keep it off the event loop. A prompt
    # alone is not worth the thread hop; an image always is, since a few KB of PNG can inflate to
    # millions of pixels.
    if payload is None:
        return await run_in_threadpool(_edit_job, settings, pipes, HFParameters(), body, None)
    if len(body) <= _INLINE_BODY_BYTES:
        image_bytes = imaging.b64_to_bytes(payload.inputs)
    else:
        image_bytes = await run_in_threadpool(imaging.b64_to_bytes, payload.inputs)
    if image_bytes is None:
        return _job_from_payload(settings, pipes, payload, None)
    return await run_in_threadpool(_job_from_payload, settings, pipes, payload, image_bytes)


def _job_from_payload(settings: Settings, pipes: Pipelines, payload: HFRequest, image_bytes: bytes | None) -> Job:
    """`image_bytes`: `payload.inputs` decoded from base64, or None when it is a prompt."""
    params = payload.parameters
    target = params.target_size
    size = (params.width if params.width is not None else target.width if target else None,
            params.height if params.height is not None else target.height if target else None)
    if image_bytes is None:
        if params.mask is not None or params.prompt is not None:
            raise bad_input("inputs must be a base64 image (or data: URL) for image-to-image and inpainting",
                            "inputs", 400)
        return text_job(settings, pipes, params, payload.inputs, size)
    mask_bytes = None
    if params.mask is not None:
        mask_bytes = imaging.b64_to_bytes(params.mask)
        if mask_bytes is None:
            raise bad_input("parameters.mask must be a base64 image (or data: URL)", "mask", 400)
    return _edit_job(settings, pipes, params, image_bytes, mask_bytes, size)


def _edit_job(settings: Settings, pipes: Pipelines, params: HFParameters, image_bytes: bytes,
              mask_bytes: bytes | None, size: tuple[int | None, int | None] = (None, None)) -> Job:
    image = imaging.decode_image(image_bytes, "inputs", settings.max_input_pixels)
    mask = None
    if mask_bytes is not None:
        mask = imaging.mask_from_white(imaging.decode_image(mask_bytes, "mask", settings.max_input_pixels, "keep"))
    return edit_job(settings, pipes, params, params.prompt or "", image, mask, params.strength, size)


async def infer(request: Request) -> Response:
    settings, worker = settings_of(request), worker_of(request)
    body = await request.body()
    payload = _payload(request, body)
    wait = request.headers.get("x-wait-for-model", "").lower() in _TRUE or bool(
        payload and payload.options and payload.options.get("wait_for_model"))
    deadline = deadline_of(request)
    async with worker.admit(wait, deadline) as pipes:
        job = await _build_job(settings, pipes, payload, body)
        job.is_disconnected = request.is_disconnected
        [result] = await worker.generate([job], deadline)
        media = imaging.negotiate(request.headers.get("accept"))
        content, encode_seconds = await encode_timed(result.image, media)
    return Response(content, media_type=media, headers=image_headers([result], encode_seconds))


_DESCRIPTION = (__doc__ or "").split("\n", 1)[1].strip()
router.add_api_route("/", infer, methods=["POST"], summary="Text-to-image, image-to-image or inpainting",
                     description=_DESCRIPTION, openapi_extra=_OPENAPI, responses=_RESPONSES,
                     response_class=Response)
_MODEL_ID = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "Any model id, slashes included (e.g. stabilityai/stable-diffusion-xl-base-1.0)."}
router.add_api_route("/models/{model_id:path}", infer, methods=["POST"], summary="Same, HF-API style path",
                     description="`model_id` is accepted and ignored: the server serves one model (see /info).",
                     openapi_extra={**_OPENAPI, "parameters": [_MODEL_ID]}, responses=_RESPONSES,
                     response_class=Response)
