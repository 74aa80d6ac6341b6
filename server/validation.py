"""Turn parsed request fields into validated `Job`s. Nothing reaches the GPU without passing here.

Input images keep their aspect ratio: without an explicit size, an image is scaled into
[min_size, max_size] and rounded down to multiples of 8. An inpainting mask must have exactly the input
image's size (400 otherwise): silently stretching a mask would repaint the wrong place.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from PIL import Image

from server.errors import ApiError, bad_input
from server.loader import Kind, Pipelines
from server.schemas import GenerationOptions, OpenAIImageOptions
from server.settings import Settings
from server.worker import Job

_SIZE = re.compile(r"^\s*([0-9]{1,5})\s*[xX]\s*([0-9]{1,5})\s*$")


# OpenAI `quality` -> a multiple of the server's default steps (capped by max_steps).
QUALITY_STEPS = {"low": 0.5, "medium": 0.75, "high": 1.0, "xhigh": 1.5, "max": 2.0}
_QUALITY_ALIASES = {"auto": "high", "standard": "medium", "hd": "high"}


def random_seed() -> int:
    return secrets.randbelow(2**32)


def parse_json(body: bytes, hint: str) -> Any:
    """A JSON body, or a 400 that says what is wrong with it. Never lets the parser's other failures out:
    nesting deep enough to exhaust the recursion limit, or an integer past Python's digit limit."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        message = "the body is not UTF-8 text"
    except json.JSONDecodeError as exc:
        message = (f"the body is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}, "
                   f"character {exc.pos})")
    except RecursionError:
        message = "the body's JSON is nested too deeply"
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        message = f"the body's JSON cannot be read: {str(exc)[:120]}"
    raise bad_input(f"{message}; expected {hint}", None, 400)


def check_side(value: int, name: str, settings: Settings) -> None:
    if not settings.min_size <= value <= settings.max_size or value % 8:
        raise bad_input(f"{name} must be a multiple of 8 within [{settings.min_size}, {settings.max_size}], "
                        f"got {value}", name)


def check_size(width: int, height: int, settings: Settings) -> None:
    check_side(width, "width", settings)
    check_side(height, "height", settings)


def check_n(n: int | None, settings: Settings) -> int:
    """OpenAI's `n`: null (or absent) means 1."""
    n = 1 if n is None else n
    if not 1 <= n <= settings.max_n:
        raise bad_input(f"n must be within [1, {settings.max_n}], got {n}", "n", 400)
    return n


def parse_openai_size(size: str | None) -> tuple[int, int] | None:
    """None means "no explicit size" ('auto' or omitted)."""
    if size is None or size.strip().lower() == "auto":
        return None
    match = _SIZE.match(size)
    if not match:
        raise bad_input(f"size must look like '1024x1024' or be 'auto', got {size[:40]!r}", "size", 400)
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class OpenAIPlan:
    """What an OpenAI request asks for beyond one job: how many, the encoding, and what to echo."""

    n: int
    size: tuple[int | None, int | None]
    media_type: str
    output_format: str
    compression: int | None
    quality: str | None  # the label its steps came from; None when num_inference_steps was explicit
    steps: int | None  # from quality; None when num_inference_steps was explicit


def quality_steps(quality: str, settings: Settings) -> int:
    return min(settings.max_steps, max(1, math.ceil(settings.default_steps * QUALITY_STEPS[quality])))


def openai_plan(settings: Settings, opts: OpenAIImageOptions) -> OpenAIPlan:
    """Refuse what this server cannot do (streaming, transparency) and resolve the OpenAI-only fields."""
    if opts.stream or opts.partial_images:
        raise bad_input("streaming (stream, partial_images) is not supported: ask without it and the images "
                        "come in one JSON answer", "stream", 400)
    for name in ("frame_count", "frame_duration_ms"):
        if getattr(opts, name) is not None:
            raise bad_input(f"{name} is for animated GIF output, which this server does not make (png, jpeg, "
                            "webp): ask without it", name, 400)
    if opts.background == "transparent":
        raise bad_input("background 'transparent' is not supported: SDXL makes opaque images; use 'opaque' or "
                        "'auto'", "background", 400)
    n = check_n(opts.n, settings)
    size = parse_openai_size(opts.size) or (None, None)
    output_format = opts.output_format or "png"
    quality = steps = None
    if opts.num_inference_steps is None:
        quality = _QUALITY_ALIASES.get(opts.quality or "auto", opts.quality or "high")
        steps = quality_steps(quality, settings)
    return OpenAIPlan(n, size, f"image/{output_format}", output_format, opts.output_compression, quality, steps)


def _common(settings: Settings, pipes: Pipelines, opts: GenerationOptions, prompt: str,
            default_steps: int | None = None) -> dict[str, Any]:
    for name, text in (("prompt", prompt), ("negative_prompt", opts.negative_prompt)):
        if text is not None and len(text) > settings.max_prompt_chars:
            raise bad_input(f"{name} is longer than {settings.max_prompt_chars} characters", name)
    steps = opts.num_inference_steps
    if steps is None:
        steps = settings.default_steps if default_steps is None else default_steps
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
             size: tuple[int | None, int | None] = (None, None), default_steps: int | None = None) -> Job:
    width, height = (pipes.default_size if value is None else value for value in size)
    check_size(width, height, settings)
    return Job("text2img", width=width, height=height, **_common(settings, pipes, opts, prompt, default_steps))


def fit_size(image_size: tuple[int, int], settings: Settings, width: int | None = None,
             height: int | None = None) -> tuple[int, int]:
    """Output size for an input image: explicit if given (one side: keep the aspect), else the image's
    own size scaled into the allowed range."""
    if width is not None and height is not None:
        check_size(width, height, settings)
        return width, height
    w, h = image_size
    if width is not None:
        check_side(width, "width", settings)
        scale = width / w
    elif height is not None:
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
             size: tuple[int | None, int | None] = (None, None), default_steps: int | None = None) -> Job:
    kind: Kind = "inpaint" if mask is not None else "img2img"
    if mask is not None and mask.size != image.size:
        raise bad_input(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {image.size[0]}x{image.size[1]};"
                        " they must match", "mask", 400)
    width, height = fit_size(image.size, settings, *size)
    fields = _common(settings, pipes, opts, prompt, default_steps)
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
