"""Turn parsed request fields into validated `Job`s. Nothing reaches the GPU without passing here.

Input images keep their aspect ratio: without an explicit size, an image is scaled into
[min_size, max_size] and rounded down to multiples of 8. An inpainting mask must have exactly the input
image's size (400 otherwise): silently stretching a mask would repaint the wrong place.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from PIL import Image

from server.errors import ApiError, bad_input
from server.loader import Kind, Pipelines
from server.schemas import GenerationOptions
from server.settings import Settings
from server.worker import Job

_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def random_seed() -> int:
    return secrets.randbelow(2**32)


def check_side(value: int, name: str, settings: Settings) -> None:
    if not settings.min_size <= value <= settings.max_size or value % 8:
        raise bad_input(f"{name} must be a multiple of 8 within [{settings.min_size}, {settings.max_size}], "
                        f"got {value}", name)


def check_size(width: int, height: int, settings: Settings) -> None:
    check_side(width, "width", settings)
    check_side(height, "height", settings)


def check_n(n: int, settings: Settings) -> None:
    if n > settings.max_n:
        raise bad_input(f"n must be within [1, {settings.max_n}], got {n}", "n", 400)


def parse_openai_size(size: str | None) -> tuple[int, int] | None:
    """None means "no explicit size" ('auto' or omitted)."""
    if size is None or size.strip().lower() == "auto":
        return None
    match = _SIZE.match(size)
    if not match:
        raise bad_input(f"size must look like '1024x1024' or be 'auto', got {size!r}", "size", 400)
    return int(match.group(1)), int(match.group(2))


def _common(settings: Settings, pipes: Pipelines, opts: GenerationOptions, prompt: str) -> dict[str, Any]:
    for name, text in (("prompt", prompt), ("negative_prompt", opts.negative_prompt)):
        if text is not None and len(text) > settings.max_prompt_chars:
            raise bad_input(f"{name} is longer than {settings.max_prompt_chars} characters", name)
    steps = settings.default_steps if opts.num_inference_steps is None else opts.num_inference_steps
    if not 1 <= steps <= settings.max_steps:
        raise bad_input(f"num_inference_steps must be within [1, {settings.max_steps}], got {steps}",
                        "num_inference_steps")
    if opts.scheduler is not None and opts.scheduler not in pipes.schedulers:
        raise bad_input(f"Unknown scheduler {opts.scheduler!r}; allowed: {', '.join(pipes.schedulers)}",
                        "scheduler", 400)
    problem = pipes.steps_problem(opts.scheduler, steps)
    if problem:
        raise bad_input(f"{opts.scheduler or pipes.default_scheduler} cannot run {steps} steps; use more "
                        f"steps or another scheduler ({problem[:120]})", "num_inference_steps")
    return {
        "prompt": prompt,
        "negative_prompt": opts.negative_prompt,
        "steps": steps,
        "guidance": settings.default_guidance if opts.guidance_scale is None else opts.guidance_scale,
        "scheduler": opts.scheduler,
        "seed": random_seed() if opts.seed is None else opts.seed,
    }


def text_job(settings: Settings, pipes: Pipelines, opts: GenerationOptions, prompt: str,
             size: tuple[int | None, int | None] = (None, None)) -> Job:
    width, height = (value or pipes.default_size for value in size)
    check_size(width, height, settings)
    return Job("text2img", width=width, height=height, **_common(settings, pipes, opts, prompt))


def fit_size(image_size: tuple[int, int], settings: Settings, width: int | None = None,
             height: int | None = None) -> tuple[int, int]:
    """Output size for an input image: explicit if given (one side: keep the aspect), else the image's
    own size scaled into the allowed range."""
    if width and height:
        check_size(width, height, settings)
        return width, height
    w, h = image_size
    if width:
        check_side(width, "width", settings)
        scale = width / w
    elif height:
        check_side(height, "height", settings)
        scale = height / h
    else:
        scale = min(1.0, settings.max_size / max(w, h))
        scale = max(scale, settings.min_size / min(w, h))
    out = (int(w * scale) // 8 * 8, int(h * scale) // 8 * 8)
    try:
        check_size(*out, settings)
    except ApiError:
        raise bad_input(
            f"the image's {w}x{h} aspect ratio cannot fit within [{settings.min_size}, {settings.max_size}]"
            " on both sides; crop it or pass width and height", "image") from None
    return out


def edit_job(settings: Settings, pipes: Pipelines, opts: GenerationOptions, prompt: str, image: Image.Image,
             mask: Image.Image | None, strength: float | None,
             size: tuple[int | None, int | None] = (None, None)) -> Job:
    kind: Kind = "inpaint" if mask is not None else "img2img"
    if mask is not None and mask.size != image.size:
        raise bad_input(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {image.size[0]}x{image.size[1]};"
                        " they must match", "mask", 400)
    width, height = fit_size(image.size, settings, *size)
    fields = _common(settings, pipes, opts, prompt)
    if strength is None:
        strength = 1.0 if kind == "inpaint" else 0.8
    if int(fields["steps"] * strength) < 1:
        raise bad_input(f"num_inference_steps x strength must be at least 1 (got {fields['steps']} x {strength})",
                        "strength")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    if mask is not None and mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return Job(kind, width=width, height=height, strength=strength, image=image, mask=mask, **fields)
