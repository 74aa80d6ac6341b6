"""What the targets that run the server image as it is share (stacks/huggingface.py, stacks/runpod.py,
stacks/kubernetes.py): the server's settings as environment variables, the names they give their endpoint, the
provider API key, and the output contract with neutral values.

They all run this project's server image as it is (image/Dockerfile): it listens on SERVER_PORT, runs as uid 10001
and reads its settings from SDXL_* variables (server/settings.py), so the HF and OpenAI APIs, CORS and the bearer
token behave as on AWS and GCP. The provider's own HTTPS front (or the cluster's ingress) replaces Caddy.
"""

from __future__ import annotations

import os

import pulumi

from stacks import contract
from stacks.config import Settings, stack_dns_label

SERVER_PORT = contract.SERVER_PORT
# The route a provider probes before it sends traffic (Hugging Face's `healthRoute`; huggingface_hub's
# InferenceEndpoint.wait GETs it too). /ready answers 200 only once the model is loaded (503 before), where /health
# only says the process is alive; both are public (server/app.py PUBLIC_PATHS), and a probe carries no token.
PROBE_ROUTE = contract.READY_ROUTE
# Hugging Face names on its Inference Endpoints are short DNS labels; RunPod takes any pod name.
NAME_MAX = 32


class ProviderKeyMissing(RuntimeError):
    """The provider's API key is not in the environment the deployment runs in."""


def provider_key(variable: str, how: str) -> str:
    """The provider API key, read when the provider runs (never an input, so never in the state)."""
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ProviderKeyMissing(f"{variable} is not set in the environment `pulumi` runs in: {how}")
    return value


def endpoint_name(stack: str) -> str:
    """`sdxl-<stack>` as the provider's endpoint or pod name (config.stack_dns_label)."""
    return stack_dns_label(stack, NAME_MAX)


def server_env(settings: Settings, *, model: str, request_timeout: float | None = None,
               max_wait_seconds: float | None = None, cache_dir: str | None = None) -> dict[str, str]:
    """The server's non-secret settings. The tokens go to the provider's secret store (or its secret input) apart.
    `request_timeout` is the server's one deadline, under what the front in the way waits (its default otherwise)."""
    env = {
        "SDXL_MODEL": model,
        "SDXL_PORT": str(SERVER_PORT),
        # Comma-separated: the server accepts it, and no value carries a quote.
        "SDXL_CORS_ORIGINS": ",".join(settings.cors_origins),
        # The client address to log is the one the front in the way forwards (the provider's proxy, an Ingress). A
        # Kubernetes loadBalancer Service has no such proxy: there a client could set X-Forwarded-For itself.
        "SDXL_FORWARDED_ALLOW_IPS": "*",
    }
    if request_timeout is not None:
        env["SDXL_REQUEST_TIMEOUT"] = f"{request_timeout:g}"
    if max_wait_seconds is not None:
        env["SDXL_MAX_WAIT_SECONDS"] = f"{max_wait_seconds:g}"
    if cache_dir is not None:
        env["HF_HOME"] = f"{cache_dir}/huggingface"
        env["SDXL_COMPILE_CACHE_DIR"] = f"{cache_dir}/torch-compile"
    return env


def server_secrets(settings: Settings, token: pulumi.Output[str]) -> pulumi.Output[dict[str, str]]:
    """The tokens the server reads, as one secret Output: SDXL_API_TOKEN, and HF_TOKEN for gated models."""
    values: dict[str, pulumi.Input[str]] = {"SDXL_API_TOKEN": token}
    if settings.hf_token is not None:
        values["HF_TOKEN"] = settings.hf_token
    return pulumi.Output.secret(pulumi.Output.all(**values))


def hosted_outputs(settings: Settings, *, endpoint: pulumi.Input[str], api_token: pulumi.Output[str],
                   instance_id: pulumi.Input[str], shell: pulumi.Input[str],
                   hourly_cost: pulumi.Input[float | None] | None = None,
                   public_ip: pulumi.Input[str] = "") -> dict[str, pulumi.Output]:
    """The output contract (contract.OUTPUT_NAMES). What a hosted endpoint does not have is neutral: no public IP
    ("" unless the target has one, such as a Kubernetes load balancer's: the provider's front has the address), no
    availability zone (""), and `region` as the placement says."""
    return contract.contract_outputs(settings, endpoint=endpoint, public_ip=public_ip, api_token=api_token,
                                     instance_id=instance_id, zone="", shell=shell, hourly_cost=hourly_cost)
