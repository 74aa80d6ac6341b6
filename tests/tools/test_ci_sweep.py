"""tools/ci/sweep.py: the reaper's last sweep, against moto's EC2 and a loopback Compute Engine REST API.

The real boto3 and google-cloud-compute clients make the calls; the stand-ins answer with the shapes the
services use (moto's EC2; Compute's aggregatedList and delete payloads).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from google.auth.credentials import AnonymousCredentials
from moto import mock_aws

from tests.stacks.conftest import FAKE_AMI
from tests.tools.conftest import NOW
from tools import ci
from tools.ci import sweep

PROJECT = "sdxl-test-project"
ZONE = "us-central1-a"


def launch(ec2, stack: str | None, ttl: str | None) -> str:
    tags = [{"Key": k, "Value": v} for k, v in ((sweep.AWS_STACK_TAG, stack), (sweep.AWS_TTL_TAG, ttl)) if v]
    specs = [{"ResourceType": "instance", "Tags": tags}] if tags else []
    return ec2.run_instances(ImageId=FAKE_AMI, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge",
                             TagSpecifications=specs)["Instances"][0]["InstanceId"]


@pytest.fixture
def ec2():
    with mock_aws():
        client = boto3.client("ec2", region_name="us-east-1")
        yield client


def test_aws_orphans_are_expired_pr_instances_that_no_stack_knows(ec2):
    orphan = launch(ec2, "pr-7", "2026-03-14T12:00:00Z")  # expired 3 h ago, stack gone
    launch(ec2, "pr-8", "2026-03-14T12:00:00Z")  # expired, but its stack exists: the reaper's job
    launch(ec2, "pr-9", "2026-03-15T12:00:00Z")  # not expired yet
    launch(ec2, "aws-g5", "2026-03-01T00:00:00Z")  # never a PR instance, whatever its tags
    launch(ec2, None, None)  # not ours at all
    found = sweep.aws_orphans("us-east-1", {"pr-8"}, NOW, client=ec2)
    assert [(o.instance, o.stack, ci.rfc3339(o.expired_at)) for o in found] == [
        (orphan, "pr-7", "2026-03-14T12:00:00Z")]


def test_aws_sweep_reports_and_terminates_only_when_asked(ec2, monkeypatch):
    orphan = launch(ec2, "pr-7", "2026-03-14T12:00:00Z")
    reported = sweep.sweep(aws_regions=["us-east-1"], now=lambda: NOW, known=set())
    assert reported.outputs()["orphans"] == f"aws:us-east-1:{orphan}(pr-7)" and reported.terminated == []
    assert ec2.describe_instances(InstanceIds=[orphan])["Reservations"][0]["Instances"][0]["State"]["Name"] == \
        "running"
    swept = sweep.sweep(aws_regions=["us-east-1"], terminate=True, now=lambda: NOW, known=set())
    assert [o.instance for o in swept.terminated] == [orphan]
    state = ec2.describe_instances(InstanceIds=[orphan])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")
    assert sweep.sweep(aws_regions=["us-east-1"], now=lambda: NOW, known=set()).orphans == [], "gone"


def test_sweep_knows_the_backends_pr_stacks(ec2, backend):
    launch(ec2, "pr-7", "2026-03-14T12:00:00Z")
    backend.add("pr-7").resources = 12
    assert sweep.sweep(aws_regions=["us-east-1"], now=lambda: NOW).orphans == []


def test_preset_regions_are_where_review_stacks_run():
    assert sweep.preset_regions() == ["us-east-1"]


class ComputeApi(BaseHTTPRequestHandler):
    """aggregatedList and delete of Compute Engine v1 instances, as the REST API shapes them."""

    instances: dict[str, dict] = {}
    deleted: list[str] = []
    refused: set[str] = set()  # deletes answered 403, as Compute answers a caller without the permission

    def log_message(self, *args) -> None:
        pass

    def send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        assert self.path.startswith(f"/compute/v1/projects/{PROJECT}/aggregated/instances"), self.path
        self.send({"kind": "compute#instanceAggregatedList", "items": {
            f"zones/{ZONE}": {"instances": list(self.instances.values())},
            "zones/europe-west4-a": {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "none"}}}})

    def do_DELETE(self) -> None:  # noqa: N802
        name = self.path.rsplit("/", 1)[-1].split("?")[0]
        assert self.path.startswith(f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{name}"), self.path
        if name in self.refused:
            data = json.dumps({"error": {"code": 403, "message": f"Required 'compute.instances.delete' permission "
                                         f"for 'projects/{PROJECT}/zones/{ZONE}/instances/{name}'",
                                         "errors": [{"reason": "forbidden", "domain": "global"}]}}).encode()
            self.send_response(403)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.deleted.append(name)
        self.instances.pop(name)
        self.send({"kind": "compute#operation", "name": "operation-1", "zone": ZONE, "operationType": "delete",
                   "status": "RUNNING", "targetLink": self.path})


def gce(name: str, labels: dict[str, str]) -> dict:
    return {"kind": "compute#instance", "id": "4567", "name": name, "status": "RUNNING", "labels": labels,
            "zone": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{ZONE}"}


@pytest.fixture
def compute(monkeypatch) -> Iterator[type[ComputeApi]]:
    ttl = "sdxl-endpoint-ttl"
    ComputeApi.instances = {
        "sdxl-pr-7-vm": gce("sdxl-pr-7-vm", {"sdxl-endpoint-stack": "pr-7", ttl: "2026-03-14t12-00-00z"}),
        "sdxl-pr-9-vm": gce("sdxl-pr-9-vm", {"sdxl-endpoint-stack": "pr-9", ttl: "2026-03-15t12-00-00z"}),
        "sdxl-gcp-t4-vm": gce("sdxl-gcp-t4-vm", {"sdxl-endpoint-stack": "gcp-t4"}),
        "other": gce("other", {}),
    }
    ComputeApi.deleted = []
    ComputeApi.refused = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ComputeApi)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(sweep, "GCP_API_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setattr(sweep, "GCP_CREDENTIALS", AnonymousCredentials())
    yield ComputeApi
    httpd.shutdown()


def test_gcp_orphans_by_label_and_terminated_when_asked(compute):
    reported = sweep.sweep(gcp_projects=[PROJECT], now=lambda: NOW, known=set())
    assert [str(o) for o in reported.orphans] == [f"gcp:{PROJECT}/{ZONE}:sdxl-pr-7-vm(pr-7)"]
    assert compute.deleted == []
    later = sweep.sweep(gcp_projects=[PROJECT], terminate=True, now=lambda: NOW + timedelta(days=1), known=set())
    assert sorted(o.instance for o in later.terminated) == ["sdxl-pr-7-vm", "sdxl-pr-9-vm"]
    assert sorted(compute.deleted) == ["sdxl-pr-7-vm", "sdxl-pr-9-vm"]


def test_one_unreachable_cloud_does_not_hide_the_others_orphans(compute, monkeypatch, ec2):
    monkeypatch.setattr(sweep, "GCP_API_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    orphan = launch(ec2, "pr-7", "2026-03-14T12:00:00Z")
    found = sweep.sweep(aws_regions=["us-east-1"], gcp_projects=[PROJECT], now=lambda: NOW, known=set())
    assert [o.instance for o in found.orphans] == [orphan]
    assert found.skipped and found.skipped[0].startswith(f"gcp {PROJECT}: ")


def test_sweep_cli_writes_its_report(ec2, backend, tmp_path, monkeypatch, capsys):
    orphan = launch(ec2, "pr-7", "2026-03-14T12:00:00Z")
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "out"))
    assert ci.main(["sweep", "--aws-region", "us-east-1"], now=lambda: NOW) == 0
    assert f"orphans=aws:us-east-1:{orphan}(pr-7)\n" in (tmp_path / "out").read_text()
    assert "REAPER_TERMINATE_ORPHANS" in capsys.readouterr().err


def test_one_failed_terminate_does_not_stop_the_sweep(compute, backend, tmp_path, monkeypatch):
    compute.refused = {"sdxl-pr-7-vm"}  # listed first: before the fix its 403 ended the sweep there
    later = NOW + timedelta(days=1)
    swept = sweep.sweep(gcp_projects=[PROJECT], terminate=True, now=lambda: later, known=set())
    assert [o.instance for o in swept.terminated] == ["sdxl-pr-9-vm"] and compute.deleted == ["sdxl-pr-9-vm"]
    (failure,) = swept.failed
    assert failure.startswith(f"gcp:{PROJECT}/{ZONE}:sdxl-pr-7-vm(pr-7): Forbidden: 403")
    # the CLI reports both and fails, so the run shows red
    compute.instances["sdxl-pr-9-vm"] = gce("sdxl-pr-9-vm", {"sdxl-endpoint-stack": "pr-9",
                                                             "sdxl-endpoint-ttl": "2026-03-15t12-00-00z"})
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "out"))
    args = ["sweep", "--skip-aws", "--gcp-project", PROJECT, "--terminate"]
    assert ci.main(args, now=lambda: later) == 1
    out = (tmp_path / "out").read_text()
    assert f"terminated=gcp:{PROJECT}/{ZONE}:sdxl-pr-9-vm(pr-9)\n" in out and "failed=gcp:" in out
