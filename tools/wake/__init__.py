"""Start a stopped endpoint (idle auto-stop, or by hand) and wait until it answers `/ready`. Single instances
only: a fleet never stops, and wake says so.

    make wake STACK=aws-g5        (scripts/deploy.sh wake aws-g5 -> python -m tools.wake --stack aws-g5)

It reads the stack's outputs (instance, zone, endpoint, token) and config (cloud, GCP project) through
the Automation API, as the CI automation does (tools/workspace.py), asks the cloud to start the instance
(boto3 `start_instances`, google-cloud-compute `instances.start`, the runpod SDK's `resume_pod`; a running
one is left as it is; a Hugging Face endpoint scaled to zero needs no start: a request wakes it), then polls
`<endpoint>/ready` with the token.
The disk kept the image and the model, so this takes minutes, not the first boot's download.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from pulumi import automation as auto

from stacks import contract
from stacks.config import HOSTED_CLOUDS, cloud_of
from tools import workspace

DEFAULT_TIMEOUT_S = 20 * 60
POLL_S = 5.0


class WakeError(RuntimeError):
    """Raised with a message the user can act on."""


@dataclass(frozen=True)
class Target:
    cloud: str
    instance: str  # AWS instance id, GCP instance name
    region: str
    zone: str
    endpoint: str
    token: str
    gcp_project: str | None = None


def read_target(stack_name: str, select: Callable[[str], auto.Stack | None] = workspace.select) -> Target:
    """What to start and where to look, from the stack's outputs and config."""
    try:
        stack = select(stack_name)
        if stack is None:
            raise WakeError(f"no stack named {stack_name!r} in this backend: deploy it first "
                            f"(make up STACK={stack_name})")
        outputs = {name: output.value for name, output in stack.outputs().items()}
        config = {key: value.value for key, value in stack.get_all_config().items()}
    except FileNotFoundError:
        raise WakeError("the Pulumi CLI is not on PATH: run `make wake` (it sets up the CLI and the state backend)") \
            from None
    except auto.CommandError as err:
        # e.g. a locked or unreadable backend, a wrong passphrase: the CLI's own words.
        raise WakeError(f"cannot read stack {stack_name}: {workspace.error_lines(err, 1)[0]}") from err
    cloud = cloud_of(config.get("sdxl-endpoint:cloud"))
    if cloud == "kubernetes":
        # Checked before the replicas: a Kubernetes stack is never woken, whatever its size.
        raise WakeError(f"stack {stack_name} runs on Kubernetes: wake does not apply. Its pods never power off; the "
                        f"Deployment keeps minReplicas running. `{outputs.get('shell') or 'kubectl logs'}` shows the "
                        "server, and `kubectl rollout status` whether a new pod is still starting.")
    refuse_fleet(stack_name, outputs, config)
    # A hosted endpoint has no zone (its contract output is ""): the provider places it.
    needed = ("instanceId", "endpoint", "apiToken") + (() if cloud in HOSTED_CLOUDS else ("region", "availabilityZone"))
    missing = [k for k in needed if not outputs.get(k)]
    if missing:
        raise WakeError(f"stack {stack_name} has no {', '.join(missing)} output: deploy it first "
                        f"(make up STACK={stack_name})")
    project = config.get("gcp:project")
    if cloud == "gcp" and not project:
        raise WakeError(f"stack {stack_name} has no gcp:project in its config")
    return Target(cloud=cloud, instance=outputs["instanceId"], region=outputs["region"],
                  zone=outputs["availabilityZone"], endpoint=outputs["endpoint"].rstrip("/"),
                  token=outputs["apiToken"], gcp_project=project)


def refuse_fleet(stack_name: str, outputs: dict, config: dict) -> None:
    """A fleet (maxReplicas above 1) never powers off: it shrinks to minReplicas, which are always running."""
    replicas = outputs.get("maxReplicas") or config.get("sdxl-endpoint:maxReplicas") or 1
    if outputs.get("fleet") or int(replicas) > 1:
        endpoint = outputs.get("endpoint") or "its endpoint"
        raise WakeError(f"stack {stack_name} is a fleet (maxReplicas {replicas}): wake does not apply. A fleet never "
                        f"powers off; it keeps minReplicas instances running and scales out on load by itself, so "
                        f"{endpoint} answers as it is. To keep more running, raise minReplicas and `make up`.")


def start_aws(target: Target, ec2=None) -> None:
    import boto3

    ec2 = ec2 or boto3.client("ec2", region_name=target.region)
    # Starting a running instance is a no-op; a stopping one (the idle watcher just fired) must finish first.
    if _aws_state(ec2, target) == "stopping":
        ec2.get_waiter("instance_stopped").wait(InstanceIds=[target.instance], WaiterConfig={"Delay": 5})
    ec2.start_instances(InstanceIds=[target.instance])
    ec2.get_waiter("instance_running").wait(InstanceIds=[target.instance], WaiterConfig={"Delay": 5})


def _aws_state(ec2, target: Target) -> str:
    reservations = ec2.describe_instances(InstanceIds=[target.instance])["Reservations"]
    return reservations[0]["Instances"][0]["State"]["Name"]


def start_gcp(target: Target, instances=None) -> None:
    from google.cloud import compute_v1

    instances = instances or compute_v1.InstancesClient()
    operation = instances.start(project=target.gcp_project, zone=target.zone, instance=target.instance)
    try:
        operation.result(timeout=600)
    except Exception as exc:  # noqa: BLE001 - the client raises several types; the operation says why
        # The client's exception only carries the HTTP status; GCE's reason (a GPU stockout in the
        # zone, a quota) is in the operation's error list.
        error = getattr(operation, "error", None)
        reasons = "; ".join(f"{e.code}: {e.message}" for e in error.errors) if error else ""
        raise WakeError(f"GCE could not start {target.instance} in {target.zone}: {reasons or exc}") from exc


def start_runpod(target: Target, api=None) -> None:
    """Resume a stopped pod through the runpod SDK (RUNPOD_API_KEY; the doctor's client, so a missing or rejected
    key reads the same). A stopped pod keeps its host machine, so it comes back on the same GPU type; a running one
    is left as it is."""
    from tools.doctor import RemoteError
    from tools.doctor.runpod import RunPodApi

    api = api or RunPodApi()
    try:
        pods = api.call("get_pods") or []
    except RemoteError as err:
        raise WakeError(f"cannot list the RunPod pods: {err.why}" + (f"; {err.fix}" if err.fix else "")) from err
    pod = next((pod for pod in pods if pod.get("id") == target.instance), None)
    if pod is None:
        raise WakeError(f"pod {target.instance} no longer exists (terminated outside Pulumi): `make up` creates "
                        "a new one")
    if pod.get("desiredStatus") == "RUNNING":
        return
    try:
        api.call("resume_pod", target.instance, 1)  # gpu_count: the pod's one GPU
    except RemoteError as err:
        raise WakeError(f"RunPod could not resume pod {target.instance}: {err.why}. A stopped pod waits for a GPU "
                        "on its own host: retry later, or replace the pod (make up ARGS=--replace=<the pod's URN>), "
                        "which downloads the model again") from err


def start_huggingface(target: Target) -> None:
    """Nothing to start: a request wakes an endpoint scaled to zero (Hugging Face answers 503 until a replica
    runs), and polling /ready is that request."""


def wait_ready(target: Target, timeout_s: float, *, client: httpx.Client | None = None,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
               say: Callable[[str], None] = print) -> float:
    """Seconds until `/ready` answered 200. Refused connections, TLS errors (Caddy renewing a short-lived
    certificate after a long stop), 502 (a front without the Caddyfile's own answer), 503 (Caddy while the server
    container starts, the server while it loads) all mean: wait."""
    client = client or httpx.Client(timeout=10)
    started = clock()
    last = ""
    while True:
        try:
            response = client.get(f"{target.endpoint}{contract.READY_ROUTE}",
                                  headers={"Authorization": f"Bearer {target.token}"})
            state = f"HTTP {response.status_code}"
            if response.status_code == 200:
                return clock() - started
            if response.status_code in (401, 403):
                raise WakeError(f"{target.endpoint}/ready refused the stack's apiToken ({state})")
        except httpx.TransportError as exc:
            state = type(exc).__name__
        elapsed = clock() - started
        if elapsed >= timeout_s:
            raise WakeError(
                f"{target.endpoint} not ready after {elapsed:.0f} s (last: {state}). On the instance, "
                "/var/lib/sdxl-endpoint/status and boot-phases.log say where the boot stands "
                "(`pulumi stack output shell` opens a shell)."
            )
        if state != last:
            say(f"  {elapsed:4.0f} s  {state}")
            last = state
        sleep(POLL_S)


def wake(target: Target, timeout_s: float = DEFAULT_TIMEOUT_S, *, start=None, ready=wait_ready,
         say: Callable[[str], None] = print) -> float:
    start = start or {"aws": start_aws, "gcp": start_gcp, "runpod": start_runpod,
                      "huggingface": start_huggingface}[target.cloud]
    say(f"Starting {target.instance} ({target.cloud}, {target.zone or target.region or 'provider-placed'})...")
    start(target)
    say(f"Running. Waiting for {target.endpoint}/ready (model and image are on the disk already)...")
    seconds = ready(target, timeout_s, say=say)
    say(f"Ready in {seconds:.0f} s: {target.endpoint}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a stopped SDXL endpoint and wait for /ready.")
    parser.add_argument("--stack", required=True, help="the Pulumi stack, e.g. aws-g5")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for /ready")
    args = parser.parse_args(argv)
    try:
        wake(read_target(args.stack), args.timeout)
    except WakeError as err:
        print(f"wake: {err}", file=sys.stderr)
        return 1
    return 0
