"""Pipeline loading: the real from_pretrained path, shared weights, dtype choices, speed settings."""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from PIL import Image

from server import synthetic
from server.loader import load_pipelines, resolve_device, resolve_dtype
from server.settings import Settings, parse_cli
from tests.server.helpers import FAULT

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


@pytest.fixture(scope="module")
def from_directory(tiny_dir):
    """--model <dir>: the from_pretrained path, as for a downloaded Hub model."""
    return load_pipelines(Settings(model=str(tiny_dir)))


def test_loading_a_saved_pipeline_directory_round_trips_the_weights(from_directory):
    built = synthetic.tiny_sdxl()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert same_weights(getattr(from_directory.text2img, name), getattr(built, name)), name
    assert from_directory.text2img.tokenizer("a cat").input_ids == built.tokenizer("a cat").input_ids


@pytest.mark.parametrize("which", ["from_directory", "pipelines"])
def test_edit_pipelines_share_every_module_with_text_to_image(request, which):
    pipes = request.getfixturevalue(which)  # Hub-style (AutoPipeline.from_pipe) and synthetic (build)
    base = pipes.text2img
    for pipe in (pipes.img2img, pipes.inpaint):
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            assert getattr(pipe, name) is getattr(base, name), name
    assert isinstance(pipes.text2img, StableDiffusionXLPipeline)
    assert isinstance(pipes.img2img, StableDiffusionXLImg2ImgPipeline)
    assert isinstance(pipes.inpaint, StableDiffusionXLInpaintPipeline)
    if which == "from_directory":  # stock classes: nothing of the test hook in a real model's pipelines
        assert [type(p).__name__ for p in (base, pipes.img2img, pipes.inpaint)] == [
            "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"]


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


# --- the test-only fault marker lives in the synthetic pipelines -----------------------------------

def run(pipes, kind: str, prompts: list[str]) -> np.ndarray:
    kwargs = {"prompt": prompts, "num_inference_steps": 2, "output_type": "np",
              "generator": [torch.Generator().manual_seed(i) for i in range(len(prompts))]}
    if kind != "text2img":
        kwargs.update(image=Image.new("RGB", (256, 256), (90, 120, 200)), strength=1.0)
    if kind == "inpaint":
        kwargs["mask_image"] = Image.new("L", (256, 256), 255)
    return pipes.for_kind(kind)(**kwargs).images


@pytest.mark.parametrize("kind", ["text2img", "img2img", "inpaint"])
@pytest.mark.parametrize(("fault", "error"), [("fail", RuntimeError), ("oom", torch.OutOfMemoryError)])
def test_fault_marker_raises_inside_every_task(pipelines, kind, fault, error):
    with pytest.raises(error, match="injected"):
        run(pipelines, kind, ["a cat", f"a {FAULT}:{fault} dog"])


@pytest.mark.parametrize("kind", ["text2img", "inpaint"])
def test_fault_marker_nan_poisons_only_its_own_image(pipelines, kind):
    images = run(pipelines, kind, ["a cat", f"{FAULT}:nan", "a dog"])
    assert [bool(np.isnan(image).any()) for image in images] == [False, True, False]


def test_fault_marker_stall_slows_each_step(pipelines):
    started = time.perf_counter()
    run(pipelines, "img2img", [f"{FAULT}:stall"])
    assert time.perf_counter() - started >= 2 * synthetic.STALL_SECONDS


def test_without_a_marker_the_synthetic_pipelines_are_stock_and_prompts_are_just_text():
    pipes = load_pipelines(Settings(model="tiny"))
    assert [type(p) for p in (pipes.text2img, pipes.img2img, pipes.inpaint)] == [
        StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline]
    assert np.isfinite(run(pipes, "text2img", [f"{FAULT}:nan {FAULT}:fail"])).all()


@pytest.mark.parametrize("model", ["stabilityai/stable-diffusion-xl-base-1.0", "/models/sdxl"])
def test_a_real_model_refuses_the_fault_marker_at_startup(model, capsys):
    with pytest.raises(SystemExit) as info:
        parse_cli(["--model", model, "--fault-marker", "X"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--fault-marker is a test hook" in err and "tiny, random-sdxl" in err and model in err
    assert parse_cli(["--model", "random-sdxl", "--fault-marker", "X"]).fault_marker == "X"


def test_synthetic_model_names_agree():
    from server.settings import SYNTHETIC_MODELS

    assert set(synthetic.BUILDERS) == set(SYNTHETIC_MODELS)
