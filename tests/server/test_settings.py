"""Settings: every flag has an SDXL_* twin, the command line wins, and secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import DEFAULT_MODEL, Settings, parse_cli

# One valid non-default value per field, as text (how env vars and flags arrive).
SAMPLES = {
    "model": ("tiny", "tiny"),
    "variant": ("bf16", "bf16"),
    "revision": ("main", "main"),
    "vae": ("madebyollin/sdxl-vae-fp16-fix", "madebyollin/sdxl-vae-fp16-fix"),
    "cache_dir": ("/models/hf", Path("/models/hf")),
    "host": ("127.0.0.1", "127.0.0.1"),
    "port": ("9000", 9000),
    "cors_origins": ("https://a.example,https://b.example", ["https://a.example", "https://b.example"]),
    "log_level": ("debug", "debug"),
    "forwarded_allow_ips": ("10.0.0.0/8,192.0.2.1", "10.0.0.0/8,192.0.2.1"),
    "metrics_port": ("9464", 9464),
    "device": ("cpu", "cpu"),
    "dtype": ("bfloat16", "bfloat16"),
    "compile": ("true", True),
    "compile_mode": ("reduce-overhead", "reduce-overhead"),
    "compile_cache_dir": ("/models/compile", Path("/models/compile")),
    "channels_last": ("true", True),
    "fuse_qkv": ("false", False),
    "warmup": ("false", False),
    "max_queue": ("7", 7),
    "max_batch": ("2", 2),
    "batch_wait_ms": ("3.5", 3.5),
    "request_timeout": ("12", 12.0),
    "max_wait_seconds": ("50", 50.0),
    "max_body_mb": ("5", 5.0),
    "max_input_pixels": ("1000000", 1_000_000),
    "min_size": ("512", 512),
    "max_size": ("1024", 1024),
    "max_steps": ("50", 50),
    "max_n": ("2", 2),
    "max_prompt_chars": ("100", 100),
    "default_steps": ("20", 20),
    "default_guidance": ("7.5", 7.5),
    "shutdown_grace": ("5", 5.0),
    "drain_min_seconds": ("3", 3.0),
    "fault_marker": ("BOOM", "BOOM"),
}


def test_samples_cover_every_setting():
    assert set(SAMPLES) | {"api_token"} == set(Settings.model_fields)


# Settings that are only valid beside another one.
REQUIRES = {"fault_marker": {"SDXL_MODEL": "tiny"}}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_setting_is_an_env_var_and_a_flag(name, monkeypatch):
    text, expected = SAMPLES[name]
    for variable, value in REQUIRES.get(name, {}).items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv(f"SDXL_{name.upper()}", text)
    assert getattr(Settings(), name) == expected
    monkeypatch.delenv(f"SDXL_{name.upper()}")
    flag = f"--{name.replace('_', '-')}"
    args = [flag] if text == "true" else [f"--no-{name.replace('_', '-')}"] if text == "false" else [flag, text]
    assert getattr(parse_cli(args), name) == expected


def test_defaults():
    settings = Settings()
    assert settings.model == DEFAULT_MODEL and settings.variant == "fp16"
    assert settings.cors_origins == ["*"]
    assert settings.api_token is None
    assert (settings.min_size, settings.max_size) == (256, 2048)


def test_command_line_beats_environment(monkeypatch):
    monkeypatch.setenv("SDXL_PORT", "9000")
    assert parse_cli(["--port", "9100"]).port == 9100
    assert parse_cli([]).port == 9000


def test_cors_origins_accept_a_json_list(monkeypatch):
    monkeypatch.setenv("SDXL_CORS_ORIGINS", '["https://a.example", "https://b.example"]')
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]


def test_api_token_is_secret_and_empty_means_none(monkeypatch):
    monkeypatch.setenv("SDXL_API_TOKEN", "hunter2")
    settings = Settings()
    assert settings.api_token.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert parse_cli(["--api-token", "other"]).api_token.get_secret_value() == "other"
    monkeypatch.setenv("SDXL_API_TOKEN", "")
    assert Settings().api_token is None


@pytest.mark.parametrize("values", [{"min_size": 300}, {"max_size": 1001}, {"min_size": 1024, "max_size": 512},
                                    {"port": 0}, {"max_batch": 0}, {"dtype": "int8"}])
def test_invalid_settings_are_refused(values):
    with pytest.raises(ValidationError):
        Settings(**values)


def test_bad_flag_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        parse_cli(["--max-batch", "lots"])
    assert info.value.code == 2
    assert "usage: python -m server" in capsys.readouterr().err
