"""Pipeline loading: the real from_pretrained path, shared weights, dtype choices, speed settings."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from server import synthetic
from server.loader import load_pipelines, resolve_device, resolve_dtype
from server.settings import Settings

COMPILE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE",
               "TORCHINDUCTOR_AUTOGRAD_CACHE")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_tiny_pipeline_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = synthetic.tiny_sdxl()
    assert torch.equal(torch.rand(3), expected)
    assert same_weights(first.unet, synthetic.tiny_sdxl().unet)


def test_loading_a_saved_pipeline_directory_round_trips_the_weights(pipelines):
    # `pipelines` was loaded with --model <dir> through from_pretrained (see conftest).
    built = synthetic.tiny_sdxl()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert same_weights(getattr(pipelines.text2img, name), getattr(built, name)), name
    assert pipelines.text2img.tokenizer("a cat").input_ids == built.tokenizer("a cat").input_ids


def test_edit_pipelines_share_every_module_with_text_to_image(pipelines):
    base = pipelines.text2img
    for pipe in (pipelines.img2img, pipelines.inpaint):
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            assert getattr(pipe, name) is getattr(base, name), name
    assert type(pipelines.img2img).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert type(pipelines.inpaint).__name__ == "StableDiffusionXLInpaintPipeline"


def test_variant_weights_in_a_directory_are_found(tmp_path):
    synthetic.tiny_sdxl().save_pretrained(tmp_path, variant="fp16")
    assert any(".fp16." in path.name for path in tmp_path.rglob("*"))
    pipes = load_pipelines(Settings(model=str(tmp_path), variant="fp16"))
    assert same_weights(pipes.text2img.unet, synthetic.tiny_sdxl().unet)


def test_dtype_choice():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu") or \
        resolve_device("auto").type == "mps"
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16


def test_vae_upcast_is_only_kept_for_float16(pipelines, tiny_dir):
    # bf16/fp32 cannot overflow; leaving force_upcast on would make img2img cast the VAE every call.
    assert pipelines.text2img.vae.config.force_upcast is False
    half = load_pipelines(Settings(model=str(tiny_dir), dtype="float16"))
    assert half.dtype is torch.float16 and half.text2img.vae.config.force_upcast is True


def test_schedulers_are_the_compatible_ones_that_can_be_built(pipelines):
    names = set(pipelines.schedulers)
    assert {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
            "DDIMScheduler", "UniPCMultistepScheduler"} <= names
    assert ("DPMSolverSDEScheduler" in names) == (importlib.util.find_spec("torchsde") is not None)
    assert pipelines.default_scheduler == "EulerDiscreteScheduler"


@pytest.mark.parametrize(("name", "steps", "ok"), [("PNDMScheduler", 2, False), ("PNDMScheduler", 4, True),
                                                    ("EulerDiscreteScheduler", 1, True), (None, 1, True)])
def test_steps_problem(pipelines, name, steps, ok):
    assert (pipelines.steps_problem(name, steps) is None) == ok


def test_compile_wraps_one_shared_unet_and_sets_a_persistent_cache(tiny_dir, tmp_path, monkeypatch):
    for name in COMPILE_ENV:
        monkeypatch.delenv(name, raising=False)
    pipes = load_pipelines(Settings(model=str(tiny_dir), compile=True, compile_cache_dir=tmp_path / "cc"))
    unet = pipes.text2img.unet
    assert isinstance(unet, torch._dynamo.eval_frame.OptimizedModule)
    assert pipes.img2img.unet is unet and pipes.inpaint.unet is unet
    assert {"sdpa", "channels_last", "fused_qkv"} <= {o.split("(")[0] for o in pipes.optimizations}
    assert torch._dynamo.config.recompile_limit >= 64
    assert any(o.startswith("torch.compile(max-autotune-no-cudagraphs") for o in pipes.optimizations)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc" / "inductor")
    assert (tmp_path / "cc").is_dir()


def test_random_sdxl_has_the_real_architecture():
    # On the meta device: the full model's shapes, no memory, no time.
    pipe = synthetic.random_sdxl("meta", torch.float16)
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert round(count(pipe.unet) / 1e9, 3) == 2.567
    assert round(count(pipe.text_encoder_2) / 1e6) == 695
    assert round(count(pipe.vae) / 1e6, 1) == 83.7
    assert pipe.unet.dtype == torch.float16
    assert pipe.default_sample_size * pipe.vae_scale_factor == 1024
