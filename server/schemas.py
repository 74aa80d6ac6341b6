"""Request and response bodies of both APIs. They drive parsing and the OpenAPI schema.

Range checks that depend on settings (size limits, step cap, n cap) live in server/validation.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

SEED_MAX = 2**63 - 1
_IGNORE = ConfigDict(extra="ignore", allow_inf_nan=False)


def _valid_unicode(text: Any) -> Any:
    """JSON's \\uXXXX escapes can spell a lone UTF-16 surrogate, which is no character: tokenizers and
    encoders fail on it. Refused here, with the field's name, before anything else sees it."""
    if isinstance(text, str) and not text.isascii():  # isascii is O(1): the common case costs nothing
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"contains an unpaired UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at "
                             f"character {exc.start}; send valid Unicode") from None
    return text


# Every string the API reads.
Text = Annotated[str, BeforeValidator(_valid_unicode)]


def _single(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"a list must hold exactly one entry (this server makes one image per prompt), "
                             f"got {len(value)}")
        return value[0]
    return value


# HF clients have sent `negative_prompt` as a one-entry list as well as a string.
OneText = Annotated[
    Text | None,
    BeforeValidator(_single),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                                   "maxItems": 1}, {"type": "null"}]}),
]


class TargetSize(BaseModel):
    model_config = _IGNORE
    width: int
    height: int


class GenerationOptions(BaseModel):
    """Knobs shared by every route (HF `parameters`, OpenAI extension fields)."""

    model_config = _IGNORE
    negative_prompt: Text | None = Field(None, description="What the image should not contain.")
    num_inference_steps: int | None = Field(None, description="Denoising steps, 1..max_steps (see /info).")
    guidance_scale: float | None = Field(None, ge=0, le=30, description="Classifier-free guidance, 0..30.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX,
                             description="Same seed and parameters, same image. Random when omitted; "
                             "the seed used is returned in `x-seed`.")
    scheduler: Text | None = Field(None, description="A diffusers scheduler class name; /info lists them.")


class HFParameters(GenerationOptions):
    negative_prompt: OneText = Field(None, description="What the image should not contain: a string, or a "
                                     "list of exactly one string.")
    width: int | None = Field(None, description="Multiple of 8 within [min_size, max_size] (see /info).")
    height: int | None = Field(None, description="Multiple of 8 within [min_size, max_size] (see /info).")
    target_size: TargetSize | None = Field(None, description="Legacy spelling of width/height.")
    prompt: Text | None = Field(None, description="Image-to-image: the prompt (`inputs` is the image).")
    strength: float | None = Field(None, gt=0, le=1,
                                   description="Image-to-image/inpainting: how much to change, (0, 1]; "
                                   "default 0.8 for image-to-image, 1.0 for inpainting.")
    mask: Text | None = Field(
        None,
        description="Inpainting: base64 image (or data: URL), white = repaint. Must have the input "
        "image's exact size, or the request gets 400.",
    )


class HFRequest(BaseModel):
    model_config = _IGNORE
    inputs: Text = Field(description="Text-to-image: the prompt. Image-to-image/inpainting: the image, as "
                        "base64 or a data: URL.")
    parameters: HFParameters = Field(default_factory=HFParameters)
    options: dict[str, Any] | None = Field(None, description="Legacy; `wait_for_model: true` waits while "
                                           "loading instead of answering 503.")


class HFError(BaseModel):
    error: str
    estimated_time: float | None = Field(None, description="Only while loading: seconds until ready.")


class OpenAIImageOptions(GenerationOptions):
    prompt: Text = Field(min_length=1, description="What to draw.")
    n: int | None = Field(None, ge=1, description="Images to generate, 1..max_n (see /info); null means 1. "
                          "Seeds are seed, seed+1...")
    size: Text | None = Field(None, description="'WIDTHxHEIGHT' (multiples of 8) or 'auto'.")
    quality: Literal["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"] | None = Field(
        None, description="Sets num_inference_steps when that is not given: low 0.5x, medium (and standard) "
        "0.75x, high (and auto, hd) 1x, xhigh 1.5x, max 2x the server's default steps, within max_steps. "
        "/info lists the resulting steps.")
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="'b64_json' (default) or 'url', answered as a data: URL (nothing is stored).")
    output_format: Literal["png", "jpeg", "webp"] | None = Field(None, description="Encoding; PNG by default.")
    output_compression: int | None = Field(
        None, ge=0, le=100, description="JPEG/WebP quality, 0-100 (default 92); PNG is lossless and ignores it.")
    background: Literal["auto", "opaque", "transparent"] | None = Field(
        None, description="'auto' and 'opaque' give an opaque image; 'transparent' is refused (400): SDXL "
        "has no alpha channel.")
    stream: bool | None = Field(None, description="Streaming is not supported: true is refused (400).")
    partial_images: int | None = Field(None, description="Needs streaming: anything but 0 or null is refused.")
    model: str | None = Field(None, description="Ignored: this server serves one model.")
    # Fields of the openai client (3.51) that SDXL has no counterpart for: ignored where the image asked for
    # is still what comes back, refused (400) where it would not be.
    complexity: Literal["low", "medium", "high"] | None = Field(
        None, description="Accepted and ignored: SDXL has no planning stage apart from its denoising steps "
        "(set those with quality or num_inference_steps).")
    frame_count: int | None = Field(None, description="GIF frames: there is no GIF output, so anything but "
                                    "null is refused (400) rather than answered with one still image.")
    frame_duration_ms: int | None = Field(None, description="GIF frame delay: refused (400) like frame_count.")


class ImagesGenerateRequest(OpenAIImageOptions):
    style: Literal["vivid", "natural"] | None = Field(
        None, description="Accepted and ignored: DALL-E 3's leaning towards a dramatic or a natural look, a hint "
        "rather than part of what is asked (OpenAI's GPT image models ignore it too); describe the look in the "
        "prompt.")


class ImagesEditFields(OpenAIImageOptions):
    """Multipart fields beside the `image` (and optional `mask`) files."""

    strength: float | None = Field(None, gt=0, le=1, description="Extension: how much to change, (0, 1]; "
                                   "default 0.8 without a mask, 1.0 with one.")
    input_fidelity: Literal["high", "low"] | None = Field(
        None, description="Accepted and ignored: SDXL has no control of how closely it keeps the input's "
        "features; `strength` sets how much of the picture changes.")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    seed: int
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    background: Literal["opaque"] = "opaque"
    output_format: Literal["png", "jpeg", "webp"]
    size: str = Field(description="WIDTHxHEIGHT of the images.")
    quality: Literal["low", "medium", "high", "xhigh", "max"] | None = Field(
        None, description="The quality the steps came from; absent when num_inference_steps was given.")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
