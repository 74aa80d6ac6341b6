"""`make wake` (tools/wake): boto3 against moto, google-cloud-compute against a loopback stand-in of
the Compute REST API, the Automation API stand-in the CI tests use (tests/tools/conftest.py), and /ready
polling on a fake clock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import httpx
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1
from moto import mock_aws
from pulumi import automation as auto

from tests.stacks.conftest import FAKE_AMI
from tests.tools.conftest import FakeBackend
from tools import wake
from tools.wake import Target, WakeError

TOKEN = "wake-token-" + "w" * 37


def aws_target(instance: str, endpoint: str = "https://203.0.113.10") -> Target:
    return Target(cloud="aws", instance=instance, region="us-east-1", zone="us-east-1a", endpoint=endpoint, token=TOKEN)


@pytest.fixture
def stopped_instance() -> Iterator[tuple[object, str]]:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        instance = ec2.run_instances(ImageId=FAKE_AMI, InstanceType="g5.xlarge", MinCount=1, MaxCount=1)
        instance_id = instance["Instances"][0]["InstanceId"]
        ec2.stop_instances(InstanceIds=[instance_id])
        yield ec2, instance_id


def state(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_aws_start_instances_brings_a_stopped_instance_back(stopped_instance) -> None:
    ec2, instance_id = stopped_instance
    assert state(ec2, instance_id) == "stopped"
    wake.start_aws(aws_target(instance_id), ec2)
    assert state(ec2, instance_id) == "running"
    wake.start_aws(aws_target(instance_id), ec2)  # already running: nothing to do, no error
    assert state(ec2, instance_id) == "running"


class ComputeApi(BaseHTTPRequestHandler):
    """Just enough of compute.googleapis.com for instances.start: records the call, answers a DONE operation."""

    calls: list[str] = []
    fail_with: str | None = None

    def do_POST(self) -> None:  # noqa: N802
        type(self).calls.append(self.path)
        operation = {"name": "operation-1", "kind": "compute#operation", "operationType": "start",
                     "status": "DONE", "zone": "us-central1-a", "targetLink": self.path}
        if self.fail_with:
            operation["error"] = {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": self.fail_with}]}
            operation["httpErrorStatusCode"] = 503
        body = json.dumps(operation).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def compute_api() -> Iterator[compute_v1.InstancesClient]:
    ComputeApi.calls, ComputeApi.fail_with = [], None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ComputeApi)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield compute_v1.InstancesClient(
        credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{httpd.server_address[1]}"),
    )
    httpd.shutdown()


GCP = Target(cloud="gcp", instance="sdxl-gcp-t4-vm", region="us-central1", zone="us-central1-a",
             endpoint="https://203.0.113.20", token=TOKEN, gcp_project="my-project")


def test_gcp_instances_start_through_the_real_client(compute_api) -> None:
    wake.start_gcp(GCP, compute_api)
    assert ComputeApi.calls == ["/compute/v1/projects/my-project/zones/us-central1-a/instances/sdxl-gcp-t4-vm/start"]


def test_gcp_start_failure_surfaces_gces_message(compute_api) -> None:
    ComputeApi.fail_with = "The zone does not have enough resources available to fulfill the request."
    with pytest.raises(WakeError, match="ZONE_RESOURCE_POOL_EXHAUSTED: The zone does not have enough resources"):
        wake.start_gcp(GCP, compute_api)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def sequence_client(answers: list) -> tuple[httpx.Client, list[httpx.Request]]:
    """An httpx client whose responses (or transport errors) come from `answers`, in order."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def test_waits_through_boot_tls_renewal_and_loading_until_ready() -> None:
    clock = FakeClock()
    client, seen = sequence_client([
        httpx.ConnectError("connection refused"),  # still booting
        httpx.ConnectError("TLS: certificate has expired"),  # Caddy renewing its short-lived certificate
        502,  # Caddy up, server container starting
        503, 503,  # loading the model from disk, warming up
        200,
    ])
    said: list[str] = []
    seconds = wake.wait_ready(aws_target("i-1"), 600, client=client, clock=clock, sleep=clock.sleep, say=said.append)
    assert seconds == 5 * wake.POLL_S
    assert all(r.url == "https://203.0.113.10/ready" for r in seen)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in seen)
    assert [line.split()[-1] for line in said] == ["ConnectError", "502", "503"]  # each change, once


def test_gives_up_after_the_timeout_with_where_to_look() -> None:
    clock = FakeClock()
    client, _ = sequence_client([503] * 1000)
    with pytest.raises(WakeError, match=r"not ready after 60 s \(last: HTTP 503\).*boot-phases.log"):
        wake.wait_ready(aws_target("i-1"), 60, client=client, clock=clock, sleep=clock.sleep, say=lambda _: None)


def test_a_wrong_token_fails_at_once() -> None:
    client, _ = sequence_client([401])
    with pytest.raises(WakeError, match="refused the stack's apiToken"):
        wake.wait_ready(aws_target("i-1"), 600, client=client, clock=FakeClock(), sleep=lambda _: None)


def deployed(backend: FakeBackend, name: str, outputs: dict, config: dict) -> None:
    """A stack in the Automation API stand-in, with these outputs (the token secret) and this config."""
    stack = backend.add(name)
    stack.last_outputs = {k: auto.OutputValue(v, k == "apiToken") for k, v in outputs.items()}
    stack.config = {k: auto.ConfigValue(v) for k, v in config.items()}


class Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        ok = self.path == "/ready" and self.headers.get("Authorization") == f"Bearer {TOKEN}"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_make_wake_end_to_end_on_aws(stopped_instance, backend, capsys) -> None:
    ec2, instance_id = stopped_instance
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    deployed(backend, "aws-g5", {"endpoint": endpoint, "apiToken": TOKEN, "instanceId": instance_id,
                                 "region": "us-east-1", "availabilityZone": "us-east-1a", "gpu": "NVIDIA A10G"},
             {"sdxl-endpoint:cloud": "aws"})
    try:
        assert wake.main(["--stack", "aws-g5"]) == 0
    finally:
        httpd.shutdown()
    assert state(ec2, instance_id) == "running"
    out = capsys.readouterr().out
    assert f"Ready in 0 s: {endpoint}" in out
    assert TOKEN not in out
    assert "create_or_select_stack" not in {call[0] for call in backend.calls}  # waking never creates a stack


def test_reads_a_gcp_target_from_outputs_and_config(backend) -> None:
    deployed(backend, "gcp-t4", {"endpoint": "https://203.0.113.20/", "apiToken": TOKEN, "instanceId": "sdxl-gcp-t4-vm",
                                 "region": "us-central1", "availabilityZone": "us-central1-a"},
             {"sdxl-endpoint:cloud": "gcp", "gcp:project": "my-project"})
    assert wake.read_target("gcp-t4") == GCP


def test_an_undeployed_stack_says_how_to_deploy(backend, capsys) -> None:
    backend.add("aws-g4dn")  # created, never deployed: no outputs
    assert wake.main(["--stack", "aws-g4dn"]) == 1
    assert "make up STACK=aws-g4dn" in capsys.readouterr().err


def test_a_missing_stack_says_so(backend, capsys) -> None:
    assert wake.main(["--stack", "nope"]) == 1
    assert "no stack named 'nope'" in capsys.readouterr().err


def test_a_backend_error_reports_pulumis_words(backend, monkeypatch, capsys) -> None:
    def locked(name, work_dir=None, opts=None):
        raise auto.CommandError(auto.CommandResult("", "error: the stack is currently locked by 1 lock(s)", 255))

    monkeypatch.setattr(auto, "select_stack", locked)
    assert wake.main(["--stack", "aws-g5"]) == 1
    assert "cannot read stack aws-g5: error: the stack is currently locked" in capsys.readouterr().err


def pulumi_cli_version() -> str:
    """The SDK's own version: the Automation API refuses a CLI older than it needs."""
    from importlib.metadata import version

    return version("pulumi")


def test_make_wake_goes_through_deploy_sh_and_never_creates_a_stack(tmp_path) -> None:
    """`make wake` -> scripts/deploy.sh wake: the same state backend and passphrase as `make up`."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "scripts").mkdir()
    shutil.copy(root / "scripts" / "deploy.sh", tmp_path / "scripts" / "deploy.sh")
    shutil.copy(root / "requirements.txt", tmp_path / "requirements.txt")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # this suite's venv
    (venv / "python").chmod(0o755)
    (tmp_path / ".venv" / ".deploy-installed").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Enough of the CLI for the Automation API: its version check, `stack select`, outputs and config.
    (bin_dir / "pulumi").write_text(f"""#!/bin/sh
echo "$* | backend=$PULUMI_BACKEND_URL" >> {tmp_path}/calls
[ "$1" != --non-interactive ] || shift
case "$1" in
  version) echo v{pulumi_cli_version()} ;;
  stack|config) [ "$2" = select ] || echo '{{}}' ;;
esac
""")
    (bin_dir / "pulumi").chmod(0o755)
    result = subprocess.run(["bash", "scripts/deploy.sh", "wake", "aws-g5"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
                                                        "PYTHONPATH": str(root)})
    assert result.returncode == 1  # the stand-in stack has no outputs
    assert "wake: stack aws-g5 has no instanceId" in result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    backend = f"backend=file://{tmp_path}/.pulumi-state"
    assert all(call.endswith(f" | {backend}") for call in calls), calls  # one backend: make up's
    commands = [call.split(" | ")[0].removeprefix("--non-interactive ") for call in calls]
    assert commands[0] == "stack select aws-g5"  # deploy.sh: select, never --create
    assert not [c for c in commands if "--create" in c or c.startswith(("stack init", "up", "destroy"))]
    assert "stack output --json --show-secrets --stack aws-g5" in commands  # read through the Automation API
    assert any(c.startswith("config") and "--stack aws-g5" in c for c in commands)


# --- RunPod: the runpod SDK against the loopback GraphQL fake; Hugging Face: nothing to start ------------------


@pytest.fixture
def runpod_api(monkeypatch):
    from tests.fakes import runpod_api as fake_api

    with fake_api.serving(fake_api.FakeRunPod(), monkeypatch) as fake:
        yield fake


def stopped_pod(fake) -> str:
    fake.pods["pod0009xyz"] = {"id": "pod0009xyz", "name": "sdxl-runpod-l4", "imageName": "img", "env": [],
                               "gpuCount": 1, "containerDiskInGb": 100, "volumeInGb": 0, "ports": "8000/http",
                               "desiredStatus": "EXITED", "costPerHr": 0.43, "machine": {"gpuDisplayName": "L4"}}
    return "pod0009xyz"


RUNPOD = Target(cloud="runpod", instance="pod0009xyz", region="any", zone="",
                endpoint="https://pod0009xyz-8000.proxy.runpod.net", token=TOKEN)


def test_runpod_resumes_a_stopped_pod_on_its_own_host(runpod_api) -> None:
    stopped_pod(runpod_api)
    wake.start_runpod(RUNPOD)
    assert runpod_api.pods["pod0009xyz"]["desiredStatus"] == "RUNNING"
    assert runpod_api.calls == ["pods", "podResume"]
    wake.start_runpod(RUNPOD)  # running already: left as it is
    assert runpod_api.calls.count("podResume") == 1


def test_runpod_host_without_a_free_gpu_says_what_to_do(runpod_api) -> None:
    from tests.fakes.runpod_api import NO_GPU_ON_HOST

    stopped_pod(runpod_api)
    runpod_api.host_has_gpu = False
    with pytest.raises(WakeError, match=f"{NO_GPU_ON_HOST}.*retry later, or replace the pod"):
        wake.start_runpod(RUNPOD)


def test_runpod_without_a_key_says_where_to_get_one(runpod_api, monkeypatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(WakeError, match="RUNPOD_API_KEY is not set; create a key at https://www.console.runpod.io"):
        wake.start_runpod(RUNPOD)
    assert runpod_api.calls == []


def test_runpod_pod_terminated_elsewhere(runpod_api) -> None:
    with pytest.raises(WakeError, match="no longer exists.*`make up` creates a new one"):
        wake.start_runpod(RUNPOD)


def test_reads_a_hosted_target_without_a_zone(backend) -> None:
    deployed(backend, "runpod-l4", {"endpoint": RUNPOD.endpoint, "apiToken": TOKEN, "instanceId": "pod0009xyz",
                                    "region": "any", "availabilityZone": ""}, {"sdxl-endpoint:cloud": "runpod"})
    assert wake.read_target("runpod-l4") == RUNPOD


def test_a_hugging_face_endpoint_is_woken_by_the_ready_poll_itself() -> None:
    started: list[str] = []
    target = Target(cloud="huggingface", instance="sdxl-hf-a10g", region="us-east-1", zone="",
                    endpoint="https://sdxl-hf-a10g.us-east-1.aws.endpoints.huggingface.cloud", token=TOKEN)
    seconds = wake.wake(target, 60, ready=lambda t, timeout_s, say: 42.0, say=started.append)
    assert seconds == 42.0 and "Starting sdxl-hf-a10g (huggingface, us-east-1)..." in started
