"""Turn `--model` into three ready pipelines (text-to-image, image-to-image, inpainting) sharing one set
of weights on the chosen device, with the speed settings applied."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)

from server import synthetic
from server.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["text2img", "img2img", "inpaint"]
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Pipelines:
    text2img: DiffusionPipeline
    img2img: DiffusionPipeline
    inpaint: DiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    # Allowed `scheduler` names -> instances built from the model's own scheduler config.
    schedulers: dict[str, Any] = field(default_factory=dict)
    default_scheduler: str = ""
    load_seconds: float = 0.0
    optimizations: list[str] = field(default_factory=list)
    _step_checks: dict[tuple[str, int], str | None] = field(default_factory=dict, repr=False)

    def for_kind(self, kind: Kind) -> DiffusionPipeline:
        return {"text2img": self.text2img, "img2img": self.img2img, "inpaint": self.inpaint}[kind]

    @property
    def default_size(self) -> int:
        pipe = self.text2img
        return int(pipe.default_sample_size * pipe.vae_scale_factor)

    def use_scheduler(self, pipe: DiffusionPipeline, name: str | None) -> None:
        # Only the worker thread calls pipelines, so swapping the shared scheduler in place is safe.
        pipe.scheduler = self.schedulers[name or self.default_scheduler]

    def steps_problem(self, name: str | None, steps: int) -> str | None:
        """Why `name` cannot run `steps` steps (e.g. PNDM needs at least 4), or None.

        Asks a private copy of the scheduler, so validation never touches the one the GPU thread uses.
        """
        name = name or self.default_scheduler
        key = (name, steps)
        if key not in self._step_checks:
            probe = type(self.schedulers[name]).from_config(self.schedulers[name].config)
            try:
                probe.set_timesteps(steps)
                self._step_checks[key] = None
            except Exception as exc:  # any refusal means "not with these steps"
                self._step_checks[key] = f"{type(exc).__name__}: {exc}"
        return self._step_checks[key]


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        # bf16 keeps fp32's exponent range, so SDXL's VAE does not overflow and needs no fp32 upcast.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _has_variant(directory: Path, variant: str) -> bool:
    return any(f".{variant}." in path.name for path in directory.rglob("*"))


def _from_pretrained(settings: Settings, dtype: torch.dtype) -> DiffusionPipeline:
    source = Path(settings.model).expanduser()
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    if source.is_dir():
        target: str = str(source)
        variant = settings.variant if settings.variant and _has_variant(source, settings.variant) else None
    else:
        target = settings.model
        variant = settings.variant
        kwargs.update(revision=settings.revision, cache_dir=settings.cache_dir)
    try:
        return AutoPipelineForText2Image.from_pretrained(target, variant=variant, **kwargs)
    except (OSError, ValueError) as exc:
        if variant is None or "variant" not in str(exc).lower():
            raise
        log.warning("no %s weights variant for %s; loading the default weights", variant, target)
        return AutoPipelineForText2Image.from_pretrained(target, **kwargs)


def _build(settings: Settings, device: torch.device, dtype: torch.dtype
           ) -> tuple[DiffusionPipeline, DiffusionPipeline, DiffusionPipeline]:
    """Text-to-image, image-to-image and inpainting pipelines sharing one set of weights."""
    if settings.model in synthetic.BUILDERS:
        # Only these honour --fault-marker (settings refuse it for any other model).
        return synthetic.build(settings.model, device, dtype, settings.fault_marker)
    base = _from_pretrained(settings, dtype)
    if settings.vae:
        base.vae = AutoencoderKL.from_pretrained(settings.vae, dtype=dtype, cache_dir=settings.cache_dir)
    base = base.to(device)
    # from_pipe reuses the very same modules: the edit pipelines cost no extra memory.
    return base, AutoPipelineForImage2Image.from_pipe(base), AutoPipelineForInpainting.from_pipe(base)


def _usable_schedulers(pipe: DiffusionPipeline) -> dict[str, Any]:
    """Every scheduler class diffusers lists as compatible and that can be built here.

    Some need optional packages (torchsde, scipy); leaving them out keeps a request that names one a
    clean 400 instead of a failure inside the pipeline.
    """
    config = pipe.scheduler.config
    usable = {type(pipe.scheduler).__name__: pipe.scheduler}
    for cls in getattr(pipe.scheduler, "compatibles", []):
        if cls.__name__ in usable:
            continue
        try:
            usable[cls.__name__] = cls.from_config(config)
        except Exception as exc:  # a missing optional dependency is reason enough
            log.debug("scheduler %s unavailable: %s", cls.__name__, exc)
    return dict(sorted(usable.items()))


def _configure_compile_cache(directory: Path) -> Path:
    directory = directory.expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    # Set, not setdefault: importing torch may already have filled in the /tmp default, which does not
    # survive a container restart. Inductor and Triton read these at compile time.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(directory / "triton")
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    return directory


def _optimize(pipes: list[DiffusionPipeline], settings: Settings, device: torch.device) -> list[str]:
    base = pipes[0]
    applied = ["sdpa"]  # diffusers' default attention processor on torch 2 is SDPA (AttnProcessor2_0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Neither helps eager SDXL measurably (see ARCHITECTURE.md); both help under torch.compile.
    if settings.channels_last if settings.channels_last is not None else settings.compile:
        # UNet only: a channels_last VAE hands img2img/inpaint latents with other strides to the UNet,
        # which costs a second full compilation.
        base.unet.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if settings.fuse_qkv if settings.fuse_qkv is not None else settings.compile:
        base.fuse_qkv_projections()
        applied.append("fused_qkv")
    if settings.compile:
        cache = _configure_compile_cache(settings.compile_cache_dir)
        # Each batch size range and image size can need its own graph; past the limit torch silently
        # falls back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        compiled = torch.compile(base.unet, mode=settings.compile_mode, fullgraph=False)
        for pipe in pipes:
            pipe.unet = compiled
        applied.append(f"torch.compile({settings.compile_mode}, cache={cache})")
    return applied


def load_pipelines(settings: Settings) -> Pipelines:
    started = time.perf_counter()
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    log.info("loading %s on %s as %s", settings.model, device, str(dtype).removeprefix("torch."))
    base, img2img, inpaint = _build(settings, device, dtype)
    for pipe in (base, img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
    if dtype != torch.float16 and getattr(base.vae.config, "force_upcast", False):
        # Only fp16 overflows in SDXL's VAE. Left on, img2img/inpaint would cast the whole VAE to fp32
        # and back on every request, in bf16 too. (The VAE is shared: this covers all three.)
        base.vae.register_to_config(force_upcast=False)
    schedulers = _usable_schedulers(base)
    optimizations = _optimize([base, img2img, inpaint], settings, device)
    return Pipelines(
        text2img=base,
        img2img=img2img,
        inpaint=inpaint,
        device=device,
        dtype=dtype,
        schedulers=schedulers,
        default_scheduler=type(base.scheduler).__name__,
        load_seconds=time.perf_counter() - started,
        optimizations=optimizations,
    )
