"""Run the real Pulumi program (`__main__.py`) under `pulumi.runtime.set_mocks`.

Provider look-ups are answered from real data where it exists: EC2 instance types and
per-AZ offerings come from moto's copy of EC2's catalog, not from hand-written fixtures.
"""

from __future__ import annotations

import functools
import gzip
import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import moto
import pulumi
import pytest
import yaml
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "__main__.py"
MOTO_EC2 = Path(moto.__file__).parent / "ec2" / "resources"
FAKE_AMI = "ami-0f1e2d3c4b5a69788"
FAKE_EIP = "203.0.113.10"
FAKE_GCP_ADDRESS = "203.0.113.20"
FAKE_GCP_PROJECT = "sdxl-test-project"


@functools.cache
def ec2_instance_types() -> dict[str, dict]:
    with gzip.open(MOTO_EC2 / "instance_types.json.gz") as f:
        return json.load(f)


@functools.cache
def ec2_offerings(region: str) -> list[dict]:
    with gzip.open(MOTO_EC2 / "instance_type_offerings" / "availability-zone" / f"{region}.json.gz") as f:
        return json.load(f)


def get_instance_type_result(instance_type: str) -> dict:
    """EC2's DescribeInstanceTypes record reshaped as aws.ec2.getInstanceType returns it."""
    record = ec2_instance_types().get(instance_type)
    if record is None:
        raise Exception(f"no EC2 Instance Type found matching criteria; instance type {instance_type!r}")
    gpus = record.get("GpuInfo", {}).get("Gpus", [])
    inference = record.get("InferenceAcceleratorInfo", {}).get("Accelerators", [])
    neuron = record.get("NeuronInfo", {}).get("NeuronDevices", [])
    return {
        "instanceType": instance_type,
        "defaultVcpus": record["VCpuInfo"]["DefaultVCpus"],
        "memorySize": record["MemoryInfo"]["SizeInMiB"],
        "supportedArchitectures": record["ProcessorInfo"]["SupportedArchitectures"],
        "gpuses": [{"count": g["Count"], "manufacturer": g["Manufacturer"], "name": g["Name"],
                    "memorySize": g["MemoryInfo"]["SizeInMiB"]} for g in gpus],
        "inferenceAccelerators": [{"count": a["Count"], "manufacturer": a["Manufacturer"], "name": a["Name"],
                                   "memorySize": a.get("MemoryInfo", {}).get("SizeInMiB", 0)} for a in inference],
        "neuronDevices": [{"count": d["Count"], "name": d["Name"], "coreCount": d["CoreInfo"]["Count"],
                           "coreVersion": d["CoreInfo"]["Version"],
                           "memorySize": d["MemoryInfo"]["SizeInMiB"]} for d in neuron],
    }


class CloudMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        state = dict(args.inputs)
        resource_id = f"{args.name}-id"
        if args.typ.startswith("aws:iam/"):
            state.setdefault("name", f"{args.name}-1a2b3c")  # what the provider's auto-naming yields
            state.setdefault("arn", f"arn:aws:iam::123456789012:{args.typ.split('/')[1].split(':')[0]}/{state['name']}")
        if args.typ == "aws:ec2/eip:Eip":
            state.update(publicIp=FAKE_EIP, allocationId="eipalloc-0123456789abcdef0")
        elif args.typ == "aws:ec2/instance:Instance":
            resource_id = "i-0123456789abcdef0"
        elif args.typ == "gcp:compute/address:Address":
            state["address"] = FAKE_GCP_ADDRESS
        elif args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{args.inputs['accountId']}@{FAKE_GCP_PROJECT}.iam.gserviceaccount.com"
            state["member"] = f"serviceAccount:{state['email']}"
        elif args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = "generated-token-" + "x" * (int(args.inputs["length"]) - 16)
        return [resource_id, state]

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args)
        if args.token == "aws:ec2/getInstanceType:getInstanceType":
            return get_instance_type_result(args.args["instanceType"])
        if args.token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            wanted = {v for f in args.args.get("filters", []) if f["name"] == "instance-type" for v in f["values"]}
            region = args.args.get("region") or "us-east-1"
            found = [o for o in ec2_offerings(region) if o["InstanceType"] in wanted]
            return {"instanceTypes": [o["InstanceType"] for o in found],
                    "locations": [o["Location"] for o in found],
                    "locationTypes": ["availability-zone"] * len(found), "id": region}
        if args.token == "aws:ssm/getParameter:getParameter":
            name = args.args["name"]
            if not name.startswith("/aws/service/deeplearning/ami/x86_64/"):
                raise Exception(f"ParameterNotFound: {name}")
            return {"name": name, "type": "String", "value": FAKE_AMI, "insecureValue": FAKE_AMI, "id": name}
        if args.token == "aws:iam/getPolicyDocument:getPolicyDocument":
            statements = args.args.get("statements", [])
            return {"json": json.dumps({"Version": "2012-10-17", "Statement": statements}), "id": "policy"}
        if args.token == "gcp:compute/getImage:getImage":
            # A family look-up answers with that family's newest image; only the DLVM project has any.
            project, family = args.args.get("project"), args.args.get("family")
            if project != "deeplearning-platform-release" or not family:
                raise Exception(f"googleapi: Error 404: image family {family!r} not found in {project!r}")
            name = f"{family}-v20260801"
            link = f"https://www.googleapis.com/compute/v1/projects/{project}/global/images/{name}"
            return {"selfLink": link, "name": name, "family": family, "project": project, "id": link}
        raise NotImplementedError(f"no mock for invoke {args.token}")


class ParentRecordingMonitor(MockMonitor):
    """The stock mock monitor, also remembering each resource's parent URN."""

    def __init__(self, mocks: CloudMocks) -> None:
        super().__init__(mocks)
        self.parents: dict[str, str] = {}

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        self.parents[response.urn] = request.parent
        return response


@dataclass
class ProgramRun:
    mocks: CloudMocks
    monitor: ParentRecordingMonitor
    namespace: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoint(self) -> pulumi.ComponentResource:
        return self.namespace["endpoint"]

    @property
    def outputs(self) -> dict[str, pulumi.Output]:
        return self.endpoint.outputs

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.mocks.resources if r.typ == typ]

    def one(self, typ: str) -> pulumi.runtime.MockResourceArgs:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, found {len(found)}"
        return found[0]

    def orphans(self, component_type: str) -> list[str]:
        """URNs of resources that are not the component or one of its descendants."""
        (component,) = [u for u in self.monitor.parents if u.split("::")[-2].endswith(component_type)]
        orphans = []
        for urn in self.monitor.parents:
            if urn.split("::")[2] == "pulumi:pulumi:Stack":
                continue  # the root; registered through the monitor only by a process's first run
            cursor = urn
            while cursor and cursor != component:
                cursor = self.monitor.parents.get(cursor, "")
            if cursor != component:
                orphans.append(urn)
        return orphans

    def value(self, output: pulumi.Output) -> Any:
        return _sync_await(output.future())

    def is_secret(self, output: pulumi.Output) -> bool:
        return _sync_await(output.is_secret())


def preset_config(stack: str) -> dict[str, str]:
    """A preset's config as the engine hands it to the program: strings, lists as JSON."""
    document = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (document.get("config") or {}).items()}


def run_program(config: dict[str, Any] | None = None, *, stack: str = "test", preset: str | None = None,
                secret_keys: tuple[str, ...] = ("sdxl-endpoint:apiToken", "sdxl-endpoint:hfToken"),
                preview: bool = False) -> ProgramRun:
    """Evaluate `__main__.py` with the given config (keys without a namespace get the project's)."""
    merged = preset_config(preset) if preset else {}
    for key, value in (config or {}).items():
        full = key if ":" in key else f"sdxl-endpoint:{key}"
        merged[full] = value if isinstance(value, str) else json.dumps(value)
    mocks = CloudMocks()
    monitor = ParentRecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="sdxl-endpoint", stack=preset or stack, preview=preview,
                             monitor=monitor)
    pulumi.runtime.set_all_config(merged, secret_keys=list(secret_keys))
    run = ProgramRun(mocks, monitor)

    def program() -> None:
        run.namespace.update(runpy.run_path(str(MAIN)))

    _sync_await(run_pulumi_func(program))
    return run


@pytest.fixture
def program():
    return run_program
