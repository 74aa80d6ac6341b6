"""Typed server settings: every field is a `--kebab-case` flag and an `SDXL_*` environment variable.

Precedence: command line > environment > defaults. `python -m server --help` lists them all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
# Built in-process with random weights by server/synthetic.py (its BUILDERS table has the same names).
SYNTHETIC_MODELS = ("tiny", "random-sdxl")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SDXL_",
        cli_prog_name="python -m server",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        extra="ignore",
        protected_namespaces=(),
    )

    # --- what to serve -------------------------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL,
        description="Hub id, local pipeline directory, 'tiny' (random tiny SDXL, CPU-friendly) "
        "or 'random-sdxl' (full SDXL architecture, random weights, for GPU benchmarks).",
    )
    variant: str | None = Field("fp16", description="Weights variant for Hub ids; falls back to none.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    vae: str | None = Field(
        None, description="Optional VAE to swap in (Hub id or dir), e.g. madebyollin/sdxl-vae-fp16-fix."
    )
    cache_dir: Path | None = Field(None, description="Hub download cache; default: HF_HOME / HF_HUB_CACHE.")

    # --- network -----------------------------------------------------------------------------
    # All interfaces by default: the server runs in a container behind a TLS front.
    host: str = Field("0.0.0.0", description="Interface to bind.")  # noqa: S104
    port: int = Field(8000, ge=1, le=65535)
    api_token: SecretStr | None = Field(
        None, description="When set, every route except /health needs 'Authorization: Bearer <token>'."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Browser origins allowed, comma-separated or a JSON list; '*' allows any (no credentials).",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Also serve /metrics, without the token, on this port (same interface): "
        "for an in-cluster Prometheus, which scrapes pods directly and cannot send the API token. Keep the port "
        "off the public front (a Kubernetes Service exposes only --port). Unset: /metrics only on --port, behind "
        "the token.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1,::1", description="Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-"
        "separated IPs or networks, or '*'): the client address in logs is then the forwarded one. Default, as "
        "uvicorn's: loopback, for the TLS front on the same host.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- hardware ------------------------------------------------------------------------------
    device: str = Field("auto", description="'auto' (cuda, then mps, then cpu), or a torch device string.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="'auto': bfloat16 on GPUs that support it, else float16 on GPU, float32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the UNet (slow first start, cached on disk).")
    compile_mode: str = Field("max-autotune-no-cudagraphs", description="torch.compile mode.")
    compile_cache_dir: Path = Field(
        Path("~/.cache/sdxl-endpoint/torch-compile"),
        description="Inductor/Triton cache, so that a restart reuses earlier compilations.",
    )
    channels_last: bool | None = Field(None, description="UNet/VAE channels_last; default: on with --compile.")
    fuse_qkv: bool | None = Field(None, description="Fuse attention QKV projections; default: on with --compile.")
    warmup: bool = Field(True, description="Run a generation before reporting ready.")

    # --- limits --------------------------------------------------------------------------------
    max_queue: int = Field(32, ge=1, description="Images waiting for the GPU before answering 429.")
    max_batch: int = Field(4, ge=1, description="Most text-to-image requests merged into one pipeline call.")
    batch_wait_ms: float = Field(
        20.0, ge=0, description="Under concurrent load, how long the worker waits for batch-mates (a lone "
        "sequential client never waits)."
    )
    request_timeout: float = Field(300.0, gt=0, description="Seconds from arrival to answer before 504.")
    max_wait_seconds: float | None = Field(
        None, gt=0, description="Wait budget. When a new request's estimated time to its answer (the batch "
        "running, the batches queued ahead and its own, from recent seconds per batch) exceeds this, answer "
        "429 at once with an honest Retry-After instead of letting a front time out. Set it a little under "
        "the front's limit (CloudFront 60 s, RunPod's proxy 100 s). Unset: no budget.")
    max_body_mb: float = Field(20.0, gt=0, description="Largest request body accepted, in MiB.")
    max_input_pixels: int = Field(4096 * 4096, ge=1, description="Largest input image/mask, in pixels.")
    min_size: int = Field(256, ge=8, description="Smallest output width/height (multiple of 8).")
    max_size: int = Field(2048, ge=8, description="Largest output width/height (multiple of 8).")
    max_steps: int = Field(100, ge=1, description="Cap on num_inference_steps.")
    max_n: int = Field(4, ge=1, description="Cap on images per OpenAI request (n).")
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt accepted.")
    default_steps: int = Field(30, ge=1)
    default_guidance: float = Field(5.0, ge=0, le=30)
    shutdown_grace: float = Field(30.0, ge=0, description="Seconds SIGTERM waits for in-flight work.")
    drain_min_seconds: float = Field(
        0.0, ge=0, description="Seconds SIGTERM keeps the server answering even when idle: new work 503 + "
        "Retry-After, /ready 503, so that a load balancer's health checks see the drain and stop sending work "
        "before the port closes. At most --shutdown-grace. 0: an idle server exits at once.")

    # --- test hook -----------------------------------------------------------------------------
    fault_marker: str | None = Field(
        None,
        description="Testing only, and only with --model tiny or random-sdxl (any other model refuses to "
        "start). A prompt containing '<marker>:fail' or '<marker>:oom' raises inside the synthetic pipeline's "
        "call (after its first step); '<marker>:nan' turns that prompt's latents to NaN; '<marker>:stall' "
        "slows each step by 0.2 s.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # Accept "a,b" from env/CLI as well as a JSON list; a cloud-init template writes the former.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("api_token", mode="after")
    @classmethod
    def _empty_token_means_none(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty SDXL_API_TOKEN in a unit file must not silently mean "the empty string is the token".
        return value if value and value.get_secret_value() else None

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        for name in ("min_size", "max_size"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8")
        if self.min_size > self.max_size:
            raise ValueError("min_size must not exceed max_size")
        if self.drain_min_seconds > self.shutdown_grace:
            raise ValueError(f"drain_min_seconds ({self.drain_min_seconds:g}) must not exceed shutdown_grace "
                             f"({self.shutdown_grace:g}): the grace bounds the whole drain")
        if self.fault_marker and self.model not in SYNTHETIC_MODELS:
            raise ValueError(f"--fault-marker is a test hook that only the synthetic models "
                             f"({', '.join(SYNTHETIC_MODELS)}) honour; refusing it for --model {self.model}")
        return self

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def parse_cli(argv: list[str] | None = None) -> Settings:
    """Settings from the command line (and the environment); exits with status 2 on bad values."""
    try:
        return Settings(_cli_parse_args=argv if argv is not None else True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}" for error in exc.errors()
        )
        print(f"usage: python -m server [-h] [flags...]\npython -m server: error: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
