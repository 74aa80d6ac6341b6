"""Renders the instance bootstrap: one cloud-init document shared by every cloud.

The document is rendered from plain values inside an `Output.apply`, so the API token it
carries stays a Pulumi secret; `render_secret_user_data` does that wiring for the stacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import yaml

from stacks.config import Settings

# AWS rejects user data over 16 KB; GCP metadata values allow 256 KB, so AWS is the bound.
USER_DATA_LIMIT_BYTES = 16 * 1024

SERVER_PORT = 8000  # the container's port, published on the host
MODEL_CACHE_DIR = "/opt/sdxl-endpoint/models"  # on the encrypted root disk, survives stop/start
ENV_FILE = "/etc/sdxl-endpoint/server.env"


@dataclass(frozen=True)
class BootstrapValues:
    image: str
    model: str
    api_token: str
    hf_token: str | None
    cors_origins: tuple[str, ...]
    public_port: int = 80


def server_environment(values: BootstrapValues) -> dict[str, str]:
    env = {
        "SDXL_MODEL": values.model,
        "SDXL_HOST": "0.0.0.0",  # noqa: S104 - inside the container; the host publishes one port
        "SDXL_PORT": str(SERVER_PORT),
        "SDXL_API_TOKEN": values.api_token,
        "SDXL_CORS_ORIGINS": json.dumps(list(values.cors_origins)),
        "HF_HOME": "/models",
    }
    if values.hf_token:
        env["HF_TOKEN"] = values.hf_token
    return env


def render_cloud_init(values: BootstrapValues) -> str:
    env_lines = "".join(f"{k}={v}\n" for k, v in server_environment(values).items())
    document = {
        "write_files": [
            # Root-only: it holds the API token and the Hub token.
            {"path": ENV_FILE, "permissions": "0600", "owner": "root:root", "content": env_lines},
        ],
        "runcmd": [
            ["mkdir", "-p", MODEL_CACHE_DIR],
            ["docker", "pull", values.image],
            [
                "docker", "run", "--detach", "--name", "sdxl-server", "--gpus", "all",
                "--restart", "always", "--env-file", ENV_FILE,
                "--volume", f"{MODEL_CACHE_DIR}:/models",
                "--publish", f"{values.public_port}:{SERVER_PORT}",
                values.image,
            ],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)


def render_secret_user_data(settings: Settings, api_token: pulumi.Output[str]) -> pulumi.Output[str]:
    """The cloud-init document as a secret Output (it embeds the tokens)."""
    hf_token = settings.hf_token if settings.hf_token is not None else pulumi.Output.from_input(None)

    def render(tokens: list) -> str:
        token, hf = tokens
        return render_cloud_init(BootstrapValues(
            image=settings.image, model=settings.model, api_token=token, hf_token=hf,
            cors_origins=settings.cors_origins,
        ))

    return pulumi.Output.secret(pulumi.Output.all(api_token, hf_token).apply(render))
