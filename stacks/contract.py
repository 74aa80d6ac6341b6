"""What every target shares: the output contract, the public URL, the ports and the API token.

Each target module (stacks/aws.py, stacks/gcp.py, ...) imports this one; it imports no target.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from stacks.config import Settings

# Every component exports exactly these names, so apps and CI read one contract.
OUTPUT_NAMES = (
    "endpoint", "publicIp", "apiToken", "instanceId", "instanceType", "gpu", "gpuMemoryGb", "hourlyCostUsd",
    "region", "availabilityZone", "curlExample", "shell",
)


def api_token(settings: Settings, parent: pulumi.Resource) -> pulumi.Output[str]:
    """The configured `apiToken`, or a generated one; a secret either way."""
    if settings.api_token is not None:
        return pulumi.Output.secret(settings.api_token)
    generated = random.RandomPassword(
        "api-token", length=48, special=False, opts=pulumi.ResourceOptions(parent=parent)
    )
    # Mocked runs (and older engines) don't apply the provider's secret marking: wrap it anyway.
    return pulumi.Output.secret(generated.result)


HTTP_PORT, HTTPS_PORT = 80, 443
ANYWHERE = ("0.0.0.0/0",)  # neither network has IPv6


def ingress_sources(settings: Settings) -> dict[int, tuple[str, ...]]:
    """Who may reach each public port. The API is on 443 only, behind `allowedCidrs`.

    Port 80 stays open to everyone: Caddy serves nothing there but the redirect to HTTPS and
    Let's Encrypt's HTTP-01 challenge, whose validation servers use unpublished addresses, so
    narrowing it would silently stop certificates from being issued or renewed.
    """
    return {HTTP_PORT: ANYWHERE, HTTPS_PORT: settings.allowed_cidrs}


def public_host(domain: str | None, public_ip: str | None) -> str:
    """The name clients use and Caddy gets a certificate for: the domain, else the public IP itself."""
    if domain:
        return domain
    if not public_ip:
        raise ValueError("no domain and no public IP: the endpoint has no address")
    return f"[{public_ip}]" if ":" in public_ip else public_ip


def public_url(settings: Settings, public_ip: pulumi.Input[str]) -> pulumi.Output[str]:
    """The `endpoint` output: always https (stacks/bootstrap.py runs Caddy with automatic certificates)."""
    return pulumi.Output.from_input(public_ip).apply(lambda ip: f"https://{public_host(settings.domain, ip)}")


def curl_example(endpoint: pulumi.Input[str]) -> pulumi.Output[str]:
    """A ready-to-run text-to-image request; it reads the token from the stack, never inlines it."""
    return pulumi.Output.concat(
        "curl -sS --fail-with-body ", endpoint, "/ ",
        "-H \"Authorization: Bearer $(pulumi stack output apiToken --show-secrets)\" ",
        "-H 'Content-Type: application/json' -H 'Accept: image/png' ",
        "-d '{\"inputs\": \"an astronaut riding a horse, watercolor\", "
        "\"parameters\": {\"num_inference_steps\": 30}}' -o image.png",
    )


def stack_outputs(settings: Settings, *, public_ip: pulumi.Input[str], api_token: pulumi.Output[str],
                  instance_id: pulumi.Input[str], zone: str, shell: pulumi.Input[str]) -> dict[str, pulumi.Output]:
    """The output contract (OUTPUT_NAMES), from what each cloud's component knows about its machine."""
    url = public_url(settings, public_ip)
    machine = settings.machine
    outputs = {
        "endpoint": url,
        "publicIp": public_ip,  # for the DNS record when `domain` is set
        "apiToken": api_token,
        "instanceId": instance_id,
        "instanceType": machine.name,
        "gpu": machine.gpu.model,
        "gpuMemoryGb": machine.gpu.memory_gb,
        "hourlyCostUsd": machine.usd_per_hour,
        "region": settings.region,
        "availabilityZone": zone,
        "curlExample": curl_example(url),
        "shell": shell,
    }
    return {name: pulumi.Output.from_input(outputs[name]) for name in OUTPUT_NAMES}
