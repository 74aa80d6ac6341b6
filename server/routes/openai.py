"""OpenAI Images API compatible routes, for the official `openai` clients given `base_url`.

Extensions beyond OpenAI's fields: `seed`, `negative_prompt`, `num_inference_steps`, `guidance_scale`,
`scheduler` (and `strength` on edits). Each returned item carries the `seed` it was made with.
"""

from __future__ import annotations

import dataclasses
import time

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from server import imaging
from server.errors import bad_input
from server.loader import Pipelines
from server.routes import IMAGE_HEADERS_DOC, deadline_of, encode_timed, image_headers, settings_of, validate, worker_of
from server.schemas import ImageData, ImagesEditFields, ImagesGenerateRequest, ImagesResponse, OpenAIError
from server.settings import Settings
from server.validation import OpenAIPlan, edit_job, openai_plan, parse_json, text_job
from server.worker import Job, Result

router = APIRouter(prefix="/v1/images", tags=["OpenAI Images"])

_RESPONSES = {
    200: {"headers": IMAGE_HEADERS_DOC},
    **{status: {"model": OpenAIError, "description": text} for status, text in {
        400: "Invalid request (type invalid_request_error)",
        401: "Missing or wrong bearer token",
        413: "Body or image too large",
        429: "Queue full, or over the wait budget (see Retry-After)",
        503: "Loading or shutting down (see Retry-After)",
        504: "Timed out",
    }.items()},
}


def _siblings(first: Job, n: int, request: Request) -> list[Job]:
    """n images: seeds seed, seed+1, ..., so that any one of them can be reproduced alone."""
    jobs = [first] + [dataclasses.replace(first, seed=first.seed + i) for i in range(1, n)]
    for job in jobs:
        job.is_disconnected = request.is_disconnected
    return jobs


async def _respond(results: list[Result], plan: OpenAIPlan, response_format: str | None) -> Response:
    encoded = [await encode_timed(result.image, plan.media_type, plan.compression) for result in results]
    items = []
    for result, (data, _) in zip(results, encoded, strict=True):
        b64 = imaging.to_b64(data)
        if response_format == "url":
            # Nothing is stored server-side, so the "URL" is the image itself.
            items.append(ImageData(url=f"data:{plan.media_type};base64,{b64}", seed=result.seed))
        else:
            items.append(ImageData(b64_json=b64, seed=result.seed))
    width, height = results[0].image.size
    body = ImagesResponse(created=int(time.time()), data=items, output_format=plan.output_format,
                          size=f"{width}x{height}", quality=plan.quality)
    return Response(body.model_dump_json(exclude_none=True), media_type="application/json",
                    headers=image_headers(results, sum(seconds for _, seconds in encoded)))


_GENERATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImagesGenerateRequest"}}},
    },
}


@router.post("/generations", response_model=ImagesResponse, responses=_RESPONSES, openapi_extra=_GENERATE_BODY,
             summary="Create images from a prompt")
async def generations(request: Request) -> Response:
    settings, worker = settings_of(request), worker_of(request)
    body: ImagesGenerateRequest = validate(
        ImagesGenerateRequest, parse_json(await request.body(), '{"prompt": ..., "n": ..., "size": ...}'), 400)
    plan = openai_plan(settings, body)
    async with worker.admit() as pipes:
        first = text_job(settings, pipes, body, body.prompt, plan.size, plan.steps)
        results = await worker.generate(_siblings(first, plan.n, request), deadline_of(request))
        return await _respond(results, plan, body.response_format)


_EDIT_FORM = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "allOf": [{"$ref": "#/components/schemas/ImagesEditFields"}],
            "type": "object",
            "required": ["image", "prompt"],
            "properties": {
                "image": {"type": "string", "format": "binary", "description": "The image to edit (also "
                          "accepted as `image[]`). Without a mask, its fully transparent pixels (if any) "
                          "are the area to edit; otherwise the whole image is re-imagined."},
                "mask": {"type": "string", "format": "binary", "description": "PNG with alpha, the image's "
                         "exact size: fully transparent pixels mark the area to edit."},
            },
        }}},
    },
}


def _one_file(form, names: tuple[str, ...], required: bool) -> UploadFile | None:
    files = [value for name in names for value in form.getlist(name)]
    if any(not isinstance(value, UploadFile) for value in files):
        raise bad_input(f"{names[0]} must be a file upload", names[0], 400)
    if len(files) > 1:
        raise bad_input(f"only one {names[0]} is supported", names[0], 400)
    if required and not files:
        raise bad_input(f"{names[0]} is required (multipart/form-data file)", names[0], 400)
    return files[0] if files else None


def _decode_edit(settings: Settings, pipes: Pipelines, fields: ImagesEditFields, image_bytes: bytes,
                 mask_bytes: bytes | None, plan: OpenAIPlan) -> Job:
    image = imaging.decode_image(image_bytes, "image", settings.max_input_pixels, "keep")
    mask = None
    if mask_bytes is not None:
        raw_mask = imaging.decode_image(mask_bytes, "mask", settings.max_input_pixels, "keep")
        if not imaging.has_alpha(raw_mask):
            raise bad_input("mask must have an alpha channel: its fully transparent pixels mark the area "
                            "to edit", "mask", 400)
        mask = imaging.mask_from_transparency(raw_mask)
    elif imaging.has_alpha(image):
        derived = imaging.mask_from_transparency(image, "image")
        if derived.getbbox() is not None:  # some pixel is fully transparent
            mask = derived
    return edit_job(settings, pipes, fields, fields.prompt, imaging.convert(image, "RGB", "image"), mask,
                    fields.strength, plan.size, plan.steps)


@router.post("/edits", response_model=ImagesResponse, responses=_RESPONSES, openapi_extra=_EDIT_FORM,
             summary="Edit an image: inpainting with a mask, image-to-image without")
async def edits(request: Request) -> Response:
    settings, worker = settings_of(request), worker_of(request)
    form = await request.form(max_files=4, max_fields=64, max_part_size=settings.max_body_bytes)
    try:
        image_file = _one_file(form, ("image", "image[]"), required=True)
        mask_file = _one_file(form, ("mask",), required=False)
        if "markup" in form:  # an overlay guiding the edit: ignoring it would answer a different edit
            raise bad_input("markup is not supported: paint the area to edit as the mask's transparent pixels",
                            "markup", 400)
        scalars = {key: value for key, value in form.multi_items() if isinstance(value, str)}
        fields: ImagesEditFields = validate(ImagesEditFields, scalars, 400)
        plan = openai_plan(settings, fields)
        assert image_file is not None
        image_bytes = await image_file.read()
        mask_bytes = await mask_file.read() if mask_file else None
    finally:
        await form.close()
    async with worker.admit() as pipes:
        first = await run_in_threadpool(_decode_edit, settings, pipes, fields, image_bytes, mask_bytes, plan)
        results = await worker.generate(_siblings(first, plan.n, request), deadline_of(request))
        return await _respond(results, plan, fields.response_format)
