"""The hosted targets' server settings, read by the server's own settings loader (server/settings.py), and their
presets previewed through the real `__main__.py`."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import pytest

from server.settings import Settings as ServerSettings
from stacks import config, contract
from stacks import huggingface as hf
from stacks import runpod as rp
from tests.stacks.conftest import run_program

IMAGE = "ghcr.io/example/sdxl-endpoint-server:1.2.3"
ORIGINS = '["https://a.example", "https://b.example"]'
# Read by the image's entrypoint (image/entrypoint.sh), not by the server.
ENTRYPOINT_SETTINGS = {"SDXL_IDLE_STOP_MINUTES"}
SERVER_VARIABLES = {f"SDXL_{name.upper()}" for name in ServerSettings.model_fields}


def server_settings(env: dict[str, str], monkeypatch) -> ServerSettings:
    """What the server makes of these variables, with nothing else of ours in the environment."""
    for name in [name for name in os.environ if name.startswith("SDXL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServerSettings()


def settings(cloud: str, stack: str) -> config.Settings:
    return config.validate({"sdxl-endpoint:cloud": cloud, "sdxl-endpoint:image": IMAGE,
                            "sdxl-endpoint:corsOrigins": ORIGINS}, stack=stack)


def test_the_pods_settings_are_ones_the_server_reads(monkeypatch):
    env = rp.pod_properties(settings("runpod", "runpod-l4"), secrets={})["env"]
    assert set(env) - ENTRYPOINT_SETTINGS - {"HF_HOME"} <= SERVER_VARIABLES
    server = server_settings(env, monkeypatch)
    assert (server.max_wait_seconds, server.request_timeout) == (rp.MAX_WAIT_S, rp.REQUEST_TIMEOUT_S)
    assert server.request_timeout < rp.PROXY_LIMIT_S and server.port == 8000
    assert server.cors_origins == ["https://a.example", "https://b.example"]
    assert server.model == config.DEFAULT_MODEL and server.forwarded_allow_ips == "*"
    assert PurePosixPath(server.compile_cache_dir).is_relative_to(rp.CACHE_DIR)


def test_the_endpoints_settings_are_ones_the_server_reads(monkeypatch):
    env = hf.endpoint_properties(settings("huggingface", "hf-a10g"), secrets={})["env"]
    assert set(env) <= SERVER_VARIABLES
    server = server_settings(env, monkeypatch)
    assert server.model == hf.MOUNTED_MODEL and server.port == 8000
    assert server.cors_origins == ["https://a.example", "https://b.example"]
    assert server.max_wait_seconds is None  # Hugging Face documents no time limit on its front


@pytest.mark.parametrize("preset, instance_type, gpu", [("hf-a10g", "aws-us-east-1-nvidia-a10g-x1", "A10G"),
                                                       ("runpod-l4", "NVIDIA L4", "L4")])
def test_the_preset_previews_with_every_contract_output(preset, instance_type, gpu):
    run = run_program({"image": IMAGE}, preset=preset, preview=True)
    assert tuple(run.outputs) == contract.OUTPUT_NAMES
    assert (run.value(run.outputs["instanceType"]), run.value(run.outputs["gpu"])) == (instance_type, gpu)
    assert run.is_secret(run.outputs["apiToken"])
    assert run.orphans(f"sdxl-endpoint:{'huggingface' if preset.startswith('hf') else 'runpod'}:Endpoint") == []
