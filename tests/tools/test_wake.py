"""`make wake` (stacks/wake.py): boto3 against moto, google-cloud-compute against a loopback stand-in of
the Compute REST API, a stand-in `pulumi` CLI, and /ready polling on a fake clock."""

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

from stacks import wake
from stacks.wake import Target, WakeError
from tests.stacks.conftest import FAKE_AMI

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


def fake_pulumi(tmp_path: Path, outputs: dict, config: dict, exit_code: int = 0) -> Path:
    """A `pulumi` on PATH that answers `stack output` and `config` as the real CLI does with --json."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    (tmp_path / "config.json").write_text(json.dumps(config))
    script = bin_dir / "pulumi"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/calls
[ {exit_code} -eq 0 ] || {{ echo "error: no stack named 'nope' found" >&2; exit {exit_code}; }}
case "$1" in
  stack) cat {tmp_path}/outputs.json ;;
  config) cat {tmp_path}/config.json ;;
esac
""")
    script.chmod(0o755)
    return bin_dir


class Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        ok = self.path == "/ready" and self.headers.get("Authorization") == f"Bearer {TOKEN}"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_make_wake_end_to_end_on_aws(stopped_instance, tmp_path, monkeypatch, capsys) -> None:
    ec2, instance_id = stopped_instance
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    outputs = {"endpoint": endpoint, "apiToken": TOKEN, "instanceId": instance_id, "region": "us-east-1",
               "availabilityZone": "us-east-1a", "gpu": "NVIDIA A10G"}
    config = {"sdxl-endpoint:cloud": {"value": "aws", "secret": False}}
    monkeypatch.setenv("PATH", f"{fake_pulumi(tmp_path, outputs, config)}:/usr/bin:/bin")
    try:
        assert wake.main(["--stack", "aws-g5"]) == 0
    finally:
        httpd.shutdown()
    assert state(ec2, instance_id) == "running"
    out = capsys.readouterr().out
    assert f"Ready in 0 s: {endpoint}" in out
    assert TOKEN not in out
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["stack output --show-secrets --json --stack aws-g5", "config --json --stack aws-g5"]


def test_reads_a_gcp_target_from_outputs_and_config(tmp_path, monkeypatch) -> None:
    outputs = {"endpoint": "https://203.0.113.20/", "apiToken": TOKEN, "instanceId": "sdxl-gcp-t4-vm",
               "region": "us-central1", "availabilityZone": "us-central1-a"}
    config = {"sdxl-endpoint:cloud": {"value": "gcp", "secret": False}, "gcp:project": {"value": "my-project"}}
    monkeypatch.setenv("PATH", f"{fake_pulumi(tmp_path, outputs, config)}:/usr/bin:/bin")
    assert wake.read_target("gcp-t4") == GCP


def test_an_undeployed_stack_says_how_to_deploy(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", f"{fake_pulumi(tmp_path, {}, {})}:/usr/bin:/bin")
    assert wake.main(["--stack", "aws-g4dn"]) == 1
    assert "make up STACK=aws-g4dn" in capsys.readouterr().err


def test_a_missing_stack_reports_pulumis_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", f"{fake_pulumi(tmp_path, {}, {}, exit_code=255)}:/usr/bin:/bin")
    assert wake.main(["--stack", "nope"]) == 1
    assert "no stack named 'nope' found" in capsys.readouterr().err


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
    (bin_dir / "pulumi").write_text(f"""#!/bin/sh
echo "$* | backend=$PULUMI_BACKEND_URL" >> {tmp_path}/calls
case "$1" in stack|config) [ "$2" = select ] || echo '{{}}' ;; esac
""")
    (bin_dir / "pulumi").chmod(0o755)
    result = subprocess.run(["bash", "scripts/deploy.sh", "wake", "aws-g5"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
                                                        "PYTHONPATH": str(root)})
    assert result.returncode == 1  # the stand-in stack has no outputs
    assert "wake: stack aws-g5 has no instanceId" in result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    backend = f"backend=file://{tmp_path}/.pulumi-state"
    assert calls == [f"stack select aws-g5 | {backend}",
                     f"stack output --show-secrets --json --stack aws-g5 | {backend}",
                     f"config --json --stack aws-g5 | {backend}"]


def test_everything_wake_imports_is_in_the_deploy_requirements() -> None:
    """`make wake` runs in the venv deploy.sh builds from requirements.txt alone (not the dev extras)."""
    import ast
    from importlib.metadata import packages_distributions

    root = Path(__file__).resolve().parents[2]
    tree = ast.parse((root / "stacks" / "wake.py").read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    pinned = {line.split("==")[0].split("[")[0].lower() for line in (root / "requirements.txt").read_text().splitlines()
              if "==" in line}
    distributions = packages_distributions()
    for module in sorted(modules - set(sys.stdlib_module_names) - {"stacks"}):
        names = {d.lower() for d in distributions.get(module, [])}
        assert names & pinned, f"stacks/wake.py imports {module} ({names}), which requirements.txt does not pin"
