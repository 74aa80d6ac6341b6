"""Request and response bodies of both APIs. They drive parsing and the OpenAPI schema.

Range checks that depend on settings (size limits, step cap, n cap) live in server/validation.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**63 - 1
_IGNORE = ConfigDict(extra="ignore", allow_inf_nan=False)


class TargetSize(BaseModel):
    model_config = _IGNORE
    width: int
    height: int


class GenerationOptions(BaseModel):
    """Knobs shared by every route (HF `parameters`, OpenAI extension fields)."""

    model_config = _IGNORE
    negative_prompt: str | None = Field(None, description="What the image should not contain.")
    num_inference_steps: int | None = Field(None, description="Denoising steps, 1..max_steps (see /info).")
    guidance_scale: float | None = Field(None, ge=0, le=30, description="Classifier-free guidance, 0..30.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX,
                             description="Same seed and parameters, same image. Random when omitted; "
                             "the seed used is returned in `x-seed`.")
    scheduler: str | None = Field(None, description="A diffusers scheduler class name; /info lists them.")


class HFParameters(GenerationOptions):
    width: int | None = Field(None, description="Multiple of 8 within [min_size, max_size] (see /info).")
    height: int | None = Field(None, description="Multiple of 8 within [min_size, max_size] (see /info).")
    target_size: TargetSize | None = Field(None, description="Legacy spelling of width/height.")
    prompt: str | None = Field(None, description="Image-to-image: the prompt (`inputs` is the image).")
    strength: float | None = Field(None, gt=0, le=1,
                                   description="Image-to-image/inpainting: how much to change, (0, 1]; "
                                   "default 0.8 for image-to-image, 1.0 for inpainting.")
    mask: str | None = Field(
        None,
        description="Inpainting: base64 image (or data: URL), white = repaint. Must have the input "
        "image's exact size, or the request gets 400.",
    )


class HFRequest(BaseModel):
    model_config = _IGNORE
    inputs: str = Field(description="Text-to-image: the prompt. Image-to-image/inpainting: the image, as "
                        "base64 or a data: URL.")
    parameters: HFParameters = Field(default_factory=HFParameters)
    options: dict[str, Any] | None = Field(None, description="Legacy; `wait_for_model: true` waits while "
                                           "loading instead of answering 503.")


class HFError(BaseModel):
    error: str
    estimated_time: float | None = Field(None, description="Only while loading: seconds until ready.")


class OpenAIImageOptions(GenerationOptions):
    prompt: str = Field(min_length=1, description="What to draw.")
    n: int = Field(1, ge=1, description="Images to generate, 1..max_n (see /info); seeds are seed, seed+1...")
    size: str | None = Field(None, description="'WIDTHxHEIGHT' (multiples of 8) or 'auto'.")
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="'b64_json' (default) or 'url', answered as a data: URL (nothing is stored).")
    output_format: Literal["png", "jpeg", "webp"] | None = Field(None, description="Encoding; PNG by default.")
    model: str | None = Field(None, description="Ignored: this server serves one model.")


class ImagesGenerateRequest(OpenAIImageOptions):
    pass


class ImagesEditFields(OpenAIImageOptions):
    """Multipart fields beside the `image` (and optional `mask`) files."""

    strength: float | None = Field(None, gt=0, le=1, description="Extension: how much to change, (0, 1]; "
                                   "default 0.8 without a mask, 1.0 with one.")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    seed: int
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
