"""What every target shares: the output contract, the public URL, the ports and the API token.

Each target module (stacks/aws.py, stacks/gcp.py, ...) imports this one; it imports no target.
"""

from __future__ import annotations

from collections.abc import Mapping

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

# The server image as every target runs it (image/Dockerfile, server/settings.py defaults; a test compares them).
SERVER_PORT = 8000  # the image's SDXL_PORT and EXPOSE
CONTAINER_UID = 10001  # the image's non-root user (USER 10001:10001)
# /ready answers 200 only once the model is loaded (503 before, and while draining): what load balancers, Kubernetes
# readiness and hosted health routes ask before sending traffic. /health answers as soon as the process serves: it
# says the process is alive (startup and liveness). Both are public (server/app.py PUBLIC_PATHS): a probe has no token.
READY_ROUTE = "/ready"
LIVE_ROUTE = "/health"
# The server answers its own 504 (with CORS) this long after a request's arrival (SDXL_REQUEST_TIMEOUT); every
# front's timeout is built around it.
REQUEST_TIMEOUT_SECONDS = 300
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


def contract_outputs(settings: Settings, *, endpoint: pulumi.Input[str], public_ip: pulumi.Input[str | None],
                     api_token: pulumi.Output[str], instance_id: pulumi.Input[str], zone: str,
                     shell: pulumi.Input[str], hourly_cost: pulumi.Input[float | None] | None = None,
                     fleet: Mapping[str, object] | None = None) -> dict[str, pulumi.Output]:
    """The one builder of the output contract: OUTPUT_NAMES from what every target knows from its settings (the
    machine, its price, the region) and what it built, then a fleet's FLEET_OUTPUT_NAMES from `fleet` where given.
    `hourly_cost` defaults to the machine's price."""
    machine = settings.machine
    values = {
        "endpoint": endpoint,
        "publicIp": public_ip,
        "apiToken": api_token,
        "instanceId": instance_id,
        "instanceType": machine.name,
        "gpu": machine.gpu.model,
        "gpuMemoryGb": machine.gpu.memory_gb,
        "hourlyCostUsd": machine.usd_per_hour if hourly_cost is None else hourly_cost,
        "region": settings.region,
        "availabilityZone": zone,
        "curlExample": curl_example(endpoint),
        "shell": shell,
        **(fleet or {}),
    }
    names = OUTPUT_NAMES + (FLEET_OUTPUT_NAMES if fleet is not None else ())
    return {name: pulumi.Output.from_input(values[name]) for name in names}


def stack_outputs(settings: Settings, *, public_ip: pulumi.Input[str], api_token: pulumi.Output[str],
                  instance_id: pulumi.Input[str], zone: str, shell: pulumi.Input[str]) -> dict[str, pulumi.Output]:
    """The output contract (OUTPUT_NAMES) of one VM: its endpoint is its public URL."""
    # publicIp: for the DNS record when `domain` is set.
    return contract_outputs(settings, endpoint=public_url(settings, public_ip), public_ip=public_ip,
                            api_token=api_token, instance_id=instance_id, zone=zone, shell=shell)


# --- fleets --------------------------------------------------------------------------------------------------

# A fleet (maxReplicas 2 or more) exports OUTPUT_NAMES with the same meaning, then these. In OUTPUT_NAMES a
# fleet's `endpoint` is its one URL, `instanceId` the group's name (instances come and go), `availabilityZone`
# every zone it spans, comma-separated, `publicIp` the load balancer's static address where it has one (GCP;
# None on AWS, where CloudFront or the ALB's DNS name is the address), and `hourlyCostUsd` what it costs at
# minReplicas: the GPUs at rest plus the front's hourly price, a number as for one instance. `hourlyCostUsdAtMax`
# is the same at maxReplicas; per-request and per-GB charges come on top of both.
FLEET_OUTPUT_NAMES = ("fleet", "minReplicas", "maxReplicas", "hourlyCostUsdAtMax", "targetRequestsPerHour",
                      "dnsRecords")


def fleet_hourly_cost(settings: Settings, replicas: int, front_usd_per_hour: float,
                      replica_extra_usd_per_hour: float = 0.0) -> float | None:
    """The fleet's price per hour with `replicas` GPUs running, on demand (spot runs below it): each replica's
    machine (and what else bills per replica, such as its public address), plus the front."""
    price = settings.machine.usd_per_hour
    return None if price is None else round(replicas * (price + replica_extra_usd_per_hour) + front_usd_per_hour, 4)


def fleet_outputs(settings: Settings, *, endpoint: pulumi.Input[str], public_ip: pulumi.Input[str | None],
                  api_token: pulumi.Output[str], fleet: pulumi.Input[str], zones: list[str], shell: pulumi.Input[str],
                  front_usd_per_hour: float, target_requests_per_hour: int, replica_extra_usd_per_hour: float = 0.0,
                  dns_records: pulumi.Input[list[dict[str, str]]]) -> dict[str, pulumi.Output]:
    """The output contract for a fleet: the single instance's names, then FLEET_OUTPUT_NAMES."""
    def cost(replicas: int) -> float | None:
        return fleet_hourly_cost(settings, replicas, front_usd_per_hour, replica_extra_usd_per_hour)

    return contract_outputs(
        settings, endpoint=endpoint, public_ip=public_ip, api_token=api_token, instance_id=fleet,
        zone=",".join(zones), shell=shell, hourly_cost=cost(settings.min_replicas),
        fleet={"fleet": fleet, "minReplicas": settings.min_replicas, "maxReplicas": settings.max_replicas,
               "hourlyCostUsdAtMax": cost(settings.max_replicas), "targetRequestsPerHour": target_requests_per_hour,
               "dnsRecords": dns_records},
    )
