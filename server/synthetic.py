"""Pipelines with random weights, built in-process: no download, no Hub access.

- `tiny`: the SDXL pipeline shape shrunk until a 256x256 image takes a fraction of a second on a
  laptop CPU. For tests and for front-end work without a GPU. Images are noise-like, but they are
  deterministic: the weights come from a fixed seed.
- `random-sdxl`: the real SDXL base architecture (2.6 B-parameter UNet, both CLIP encoders, the VAE)
  with random weights, so that GPU benchmarks measure the true cost without fetching 7 GB.

Only these models honour `--fault-marker` (tests only): `build` then returns pipelines whose own call
makes a prompt containing `<marker>:fail`, `:oom`, `:nan` or `:stall` misbehave inside the real pipeline
call, so that tests reach the server's failure paths without any test code in the server itself.
"""

from __future__ import annotations

import contextlib
import json
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

WEIGHTS_SEED = 0

# SDXL base 1.0's scheduler, as shipped in its scheduler_config.json.
SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

SDXL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

# CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers, as in SDXL base.
SDXL_TEXT_ENCODER = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                     "num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}
SDXL_TEXT_ENCODER_2 = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                       "num_hidden_layers": 32, "projection_dim": 1280, "hidden_act": "gelu"}


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over letters and digits: every prompt maps to distinct tokens, no vocab download.

    Without merges, CLIP's BPE spells each word letter by letter. `model_max_length` must be given:
    without it the pipeline's `max_length` padding overflows an integer.
    """
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for char in string.ascii_lowercase + string.digits:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)


def _text_config(tokenizer: CLIPTokenizer, vocab_size: int | None = None, **arch: object) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        vocab_size=vocab_size or len(tokenizer),
        max_position_embeddings=77,
        **arch,
    )


@contextlib.contextmanager
def _init_context(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on `device` in `dtype` from a fixed seed, leaving global RNG untouched.

    Building 3.5 B parameters in fp32 on a CPU and converting takes minutes; initialising in place takes
    seconds.
    """
    previous = torch.get_default_dtype()
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(WEIGHTS_SEED)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def tiny_sdxl(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> StableDiffusionXLPipeline:
    """SDXL's structure (two text encoders, text_time conditioning, VAE /8) at toy width: 256x256 default.

    Narrow enough that per-call overhead, not arithmetic, dominates on a CPU - as with SDXL on a fast GPU -
    so batching pays off here as it does there (32/64 UNet channels were compute-bound: batch 8 gave only
    1.4x the images per second of batch 1 on 2 cores; 16/32 gives ~1.9x).
    """
    tokenizer = build_tokenizer()
    with _init_context(device, dtype):
        unet = UNet2DConditionModel(
            sample_size=32,  # x8 VAE factor -> 256 px default, the smallest size the API accepts
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=80,  # 6 size/crop ids x 8 + pooled text (32)
            cross_attention_dim=64,  # both encoders' 32 hidden units, concatenated
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=256,
        )
        arch = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                "projection_dim": 32, "hidden_act": "gelu"}
        text_encoder = CLIPTextModel(_text_config(tokenizer, **arch))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, **arch))
    return _assemble(unet, vae, text_encoder, text_encoder_2, tokenizer)


def random_sdxl(device: torch.device | str, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    """The full SDXL base 1.0 architecture with random weights (no download)."""
    tokenizer = build_tokenizer()
    with _init_context(device, dtype):
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        text_encoder = CLIPTextModel(_text_config(tokenizer, vocab_size=49408, **SDXL_TEXT_ENCODER))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, vocab_size=49408, **SDXL_TEXT_ENCODER_2))
    return _assemble(unet, vae, text_encoder, text_encoder_2, tokenizer)


# `--model` names that build their pipeline here; called as builder(device, dtype).
BUILDERS = {"tiny": tiny_sdxl, "random-sdxl": random_sdxl}


def _assemble(unet, vae, text_encoder, text_encoder_2, tokenizer) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )


# --- fault injection (tests only) --------------------------------------------------------------------

FAULTS = ("fail", "oom", "nan", "stall")
STALL_SECONDS = 0.2  # per denoising step


class _InjectsFaults:
    """Mixin for a diffusers pipeline: prompts carrying `<fault_marker>:<fault>` misbehave inside the call.

    - `fail` raises RuntimeError and `oom` raises torch.OutOfMemoryError, after the first denoising step;
    - `nan` turns that prompt's latents (only its own images) to NaN, as an fp16 overflow would;
    - `stall` sleeps STALL_SECONDS after each step, for timeouts, queueing and drain tests.
    A fault on one prompt of a batch fails the whole call, as a real crash would (except `nan`).
    """

    fault_marker: str = ""

    def __call__(self, *args: Any, prompt: str | list[str] | None = None,
                 callback_on_step_end: Callable[..., dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        per_prompt = kwargs.get("num_images_per_prompt") or 1
        found = {fault for fault in FAULTS for text in prompts if f"{self.fault_marker}:{fault}" in text}
        poisoned = [row for index, text in enumerate(prompts) if f"{self.fault_marker}:nan" in text
                    for row in range(index * per_prompt, (index + 1) * per_prompt)]

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if callback_on_step_end is not None:  # the caller's own callback (e.g. the worker's abort) first
                tensors = callback_on_step_end(pipe, step, timestep, tensors)
            if "oom" in found:
                raise torch.OutOfMemoryError("injected CUDA out of memory (--fault-marker)")
            if "fail" in found:
                raise RuntimeError("injected pipeline failure (--fault-marker)")
            if "stall" in found:
                time.sleep(STALL_SECONDS)
            for row in poisoned:
                tensors["latents"][row] = float("nan")
            return tensors

        return super().__call__(*args, prompt=prompt, callback_on_step_end=on_step_end,  # type: ignore[misc]
                                **kwargs)


class FaultInjectingSDXLPipeline(_InjectsFaults, StableDiffusionXLPipeline):
    pass


class FaultInjectingSDXLImg2ImgPipeline(_InjectsFaults, StableDiffusionXLImg2ImgPipeline):
    pass


class FaultInjectingSDXLInpaintPipeline(_InjectsFaults, StableDiffusionXLInpaintPipeline):
    pass


_PLAIN = (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline)
_FAULTY = (FaultInjectingSDXLPipeline, FaultInjectingSDXLImg2ImgPipeline, FaultInjectingSDXLInpaintPipeline)


def build(name: str, device: torch.device | str, dtype: torch.dtype, fault_marker: str | None = None
          ) -> tuple[DiffusionPipeline, DiffusionPipeline, DiffusionPipeline]:
    """Text-to-image, image-to-image and inpainting pipelines over one set of random weights.

    `from_pipe` hands the same modules to each, so the edit pipelines cost no memory. With a
    `fault_marker`, all three inject faults (see `_InjectsFaults`).
    """
    base = BUILDERS[name](device, dtype)
    classes = _FAULTY if fault_marker else _PLAIN
    pipes = tuple(base if cls is type(base) else cls.from_pipe(base) for cls in classes)
    for pipe in pipes:
        if isinstance(pipe, _InjectsFaults):
            pipe.fault_marker = fault_marker or ""
    return pipes  # type: ignore[return-value]
