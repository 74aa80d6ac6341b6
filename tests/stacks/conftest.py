"""Run the real Pulumi program (`__main__.py`) under `pulumi.runtime.set_mocks`.

Provider look-ups are answered from real data where it exists: EC2 instance types and
per-AZ offerings come from moto's copy of EC2's catalog, not from hand-written fixtures.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import json
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import moto
import pulumi
import pytest
from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend
from pulumi.runtime.mocks import MockMonitor

# The mocks hand a resource's inputs over in the engine's wire form, secrets wrapped in its secret sentinel;
# Pulumi has no public reader for that form, so its own (pulumi.runtime.rpc) is used, from here only.
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from stacks import catalog
from tests.fakes import huggingface_api
from tools import presets

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "__main__.py"
MOTO_EC2 = Path(moto.__file__).parent / "ec2" / "resources"
FAKE_AMI = "ami-0f1e2d3c4b5a69788"
FAKE_EIP = "203.0.113.10"
FAKE_GCP_ADDRESS = "203.0.113.20"
FAKE_GCP_PROJECT = "sdxl-test-project"
FAKE_ACCOUNT = "123456789012"
FAKE_VOLUME = "vol-0123456789abcdef0"
# CloudFront's origin-facing prefix list as us-east-1 names it (its id differs by region).
CLOUDFRONT_PREFIX_LIST_ID = "pl-3b927c52"
# The DLAMI's root device, as moto's copy of EC2's AMI records gives Ubuntu DLAMIs, and a stand-in snapshot size.
DLAMI_ROOT_DEVICE = "/dev/sda1"
DLAMI_ROOT_GB = 75
FAKE_DLVM_DISK_GB = 50
FAKE_ALB_DNS = "sdxl-alb-1234567890.us-east-1.elb.amazonaws.com"
FAKE_CLOUDFRONT_DOMAIN = "d111111abcdef8.cloudfront.net"
# The hosted targets' dynamic resources (pulumi-python:dynamic/<module>:<name>) and what their providers return.
HF_ENDPOINT_TYPE = "pulumi-python:dynamic/huggingface:InferenceEndpoint"
RUNPOD_POD_TYPE = "pulumi-python:dynamic/runpod:Pod"
FAKE_HF_USER = huggingface_api.USER  # the account the HF fake answers whoami with
FAKE_POD_ID = "x1y2z3pod4567"
FAKE_POD_COST = 0.43
FAKE_K8S_LB_IP = "203.0.113.30"  # what a cloud's load balancer controller writes into a LoadBalancer Service's status
# What an ingress controller writes into an Ingress's status: its load balancer's IP (ingress-nginx behind a cloud
# load balancer, GKE's gce), or a DNS name where the load balancer has one (the AWS Load Balancer Controller's ALB).
FAKE_K8S_INGRESS_IP = "203.0.113.40"
FAKE_K8S_INGRESS_HOSTNAME = "k8s-sdxl-sdxlendp-0123456789-1234567890.us-east-1.elb.amazonaws.com"


@functools.cache
def ec2_instance_types() -> dict[str, dict]:
    with gzip.open(MOTO_EC2 / "instance_types.json.gz") as f:
        return json.load(f)


@functools.cache
def ec2_offerings(region: str) -> list[dict]:
    with gzip.open(MOTO_EC2 / "instance_type_offerings" / "availability-zone" / f"{region}.json.gz") as f:
        return json.load(f)


def get_instance_type_result(instance_type: str) -> dict:
    """EC2's DescribeInstanceTypes record, as aws.ec2.getInstanceType returns it (the catalog's one mapping)."""
    record = ec2_instance_types().get(instance_type)
    if record is None:
        raise Exception(f"no EC2 Instance Type found matching criteria; instance type {instance_type!r}")
    return catalog.convert_ec2_record(record, to="pulumi")


class CloudMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []
        # What each resource's "cloud" answered, by (type, name): its inputs plus what the provider assigns.
        self.states: dict[tuple[str, str], dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        resource_id, state = self.answer(args)
        self.states[(args.typ, args.name)] = state
        return [resource_id, state]

    def answer(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        state = dict(args.inputs)
        resource_id = f"{args.name}-id"
        region = "us-east-1"
        if args.typ.startswith("aws:iam/"):
            state.setdefault("name", f"{args.name}-1a2b3c")  # what the provider's auto-naming yields
            kind = args.typ.split("/")[1].split(":")[0]
            state.setdefault("arn", f"arn:aws:iam::{FAKE_ACCOUNT}:{kind}/{state['name']}")
        if args.typ == "aws:s3/bucket:Bucket":
            resource_id = state.setdefault("bucket", aws_bucket_autoname(args.name))
            state["arn"] = f"arn:aws:s3:::{resource_id}"
        elif args.typ == "aws:ssm/parameter:Parameter":
            state["arn"] = f"arn:aws:ssm:{region}:{FAKE_ACCOUNT}:parameter{args.inputs['name']}"
        elif args.typ == "aws:kms/key:Key":
            resource_id = "1234abcd-12ab-34cd-56ef-1234567890ab"
            state["arn"] = f"arn:aws:kms:{region}:{FAKE_ACCOUNT}:key/{resource_id}"
        elif args.typ == "aws:ebs/volume:Volume":
            resource_id = FAKE_VOLUME
        elif args.typ == "gcp:compute/disk:Disk":
            state["selfLink"] = (f"https://www.googleapis.com/compute/v1/projects/{FAKE_GCP_PROJECT}/zones/"
                                 f"{args.inputs['zone']}/disks/{args.inputs['name']}")
        elif args.typ == "gcp:secretmanager/secret:Secret":
            resource_id = f"projects/{FAKE_GCP_PROJECT}/secrets/{args.inputs['secretId']}"
        resource_id, state = fleet_state(args, resource_id, state, region)
        if args.typ == "aws:ec2/eip:Eip":
            state.update(publicIp=FAKE_EIP, allocationId="eipalloc-0123456789abcdef0")
        elif args.typ == "aws:ec2/instance:Instance":
            resource_id = "i-0123456789abcdef0"
        elif args.typ == "gcp:compute/address:Address":
            state["address"] = FAKE_GCP_ADDRESS
        elif args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{args.inputs['accountId']}@{FAKE_GCP_PROJECT}.iam.gserviceaccount.com"
            state["member"] = f"serviceAccount:{state['email']}"
        elif args.typ == HF_ENDPOINT_TYPE:
            # What create records: the endpoint's name as its id, its URL and state, the namespace it resolved.
            resource_id = args.inputs["name"]
            state.update(url=f"https://{resource_id}.{args.inputs['region']}.{args.inputs['vendor']}"
                             ".endpoints.huggingface.cloud", status="running",
                         namespace=args.inputs.get("namespace") or FAKE_HF_USER)
        elif args.typ == RUNPOD_POD_TYPE:
            resource_id = FAKE_POD_ID
            state.update(podId=FAKE_POD_ID, url=f"https://{FAKE_POD_ID}-8000.proxy.runpod.net",
                         costPerHr=FAKE_POD_COST, desiredStatus="RUNNING")
        elif args.typ == "kubernetes:core/v1:Service" and args.inputs["spec"].get("type") == "LoadBalancer":
            state["status"] = {"loadBalancer": {"ingress": [{"ip": FAKE_K8S_LB_IP}]}}
        elif args.typ == "kubernetes:networking.k8s.io/v1:Ingress":
            point = ({"hostname": FAKE_K8S_INGRESS_HOSTNAME} if args.inputs["spec"].get("ingressClassName") == "alb"
                     else {"ip": FAKE_K8S_INGRESS_IP})
            state["status"] = {"loadBalancer": {"ingress": [point]}}
        elif args.typ == "random:index/randomPassword:RandomPassword":
            # Each password its own value (the API token's as before), as the provider's random bytes would be.
            stem = "generated-token-" if args.name == "api-token" else f"generated-{args.name}-"
            state["result"] = (stem + "x" * int(args.inputs["length"]))[: int(args.inputs["length"])]
        return resource_id, state

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
        if args.token == "aws:ec2/getManagedPrefixList:getManagedPrefixList":
            if args.args.get("name") != "com.amazonaws.global.cloudfront.origin-facing":
                raise Exception(f"no managed prefix list named {args.args.get('name')!r}")
            return {"id": CLOUDFRONT_PREFIX_LIST_ID, "name": args.args["name"], "addressFamily": "IPv4",
                    "ownerId": "AWS", "maxEntries": 55}
        if args.token == "aws:ec2/getAmi:getAmi":
            (image,) = [v for f in args.args["filters"] if f["name"] == "image-id" for v in f["values"]]
            return {"id": image, "imageId": image, "rootDeviceName": DLAMI_ROOT_DEVICE, "architecture": "x86_64",
                    "blockDeviceMappings": [{"deviceName": DLAMI_ROOT_DEVICE, "noDevice": "", "virtualName": "",
                                             "ebs": {"volume_size": str(DLAMI_ROOT_GB), "volume_type": "gp3",
                                                     "encrypted": "false", "delete_on_termination": "true"}}]}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            region = args.args.get("region") or "us-east-1"
            names = [z.name for z in RegionsAndZonesBackend.zones[region]]
            return {"names": names, "zoneIds": [z.zone_id for z in RegionsAndZonesBackend.zones[region]],
                    "id": region, "state": "available"}
        if args.token == "gcp:compute/getImage:getImage":
            # A family look-up answers with that family's newest image; only the DLVM project has any.
            project, family = args.args.get("project"), args.args.get("family")
            if project != "deeplearning-platform-release" or not family:
                raise Exception(f"googleapi: Error 404: image family {family!r} not found in {project!r}")
            name = f"{family}-v20260801"
            link = f"https://www.googleapis.com/compute/v1/projects/{project}/global/images/{name}"
            return {"selfLink": link, "name": name, "family": family, "project": project, "id": link,
                    "diskSizeGb": FAKE_DLVM_DISK_GB}
        raise NotImplementedError(f"no mock for invoke {args.token}")


def aws_bucket_autoname(name: str) -> str:
    """The AWS provider's name for a bucket given none: pulumi-aws declares AutoNameTransform("bucket", 63,
    strings.ToLower), i.e. the lowercased resource name, "-" and 7 random hex characters, and the engine refuses
    the resource when that exceeds 63 (pulumi's resource.NewUniqueName, whose message this repeats)."""
    prefix = f"{name.lower()}-"
    if len(prefix) + 7 > 63:
        raise ValueError(f"could not make instance of 'aws:s3/bucket:Bucket': name '{prefix}' plus 7 random chars "
                         "is longer than maximum length 63")
    return f"{prefix}1a2b3c4"


def fleet_state(args: pulumi.runtime.MockResourceArgs, resource_id: str, state: dict, region: str) -> tuple[str, dict]:
    """What the clouds assign to the fleets' resources (ARNs, DNS names, instance groups), as the providers name it."""
    arn = f"arn:aws:elasticloadbalancing:{region}:{FAKE_ACCOUNT}"
    if args.typ == "aws:lb/loadBalancer:LoadBalancer":
        suffix = f"app/{args.name}/50dc6c495c0c9188"
        state.update(arn=f"{arn}:loadbalancer/{suffix}", arnSuffix=suffix, dnsName=FAKE_ALB_DNS)
    elif args.typ == "aws:lb/targetGroup:TargetGroup":
        suffix = f"targetgroup/{args.name}/73e2d6bc24d8a067"
        state.update(arn=f"{arn}:{suffix}", arnSuffix=suffix)
    elif args.typ in ("aws:lb/listener:Listener", "aws:lb/listenerRule:ListenerRule"):
        state["arn"] = f"{arn}:listener/app/sdxl-alb/50dc6c495c0c9188/{args.name}"
    elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
        resource_id = "lt-0123456789abcdef0"
        state.update(latestVersion=1, arn=f"arn:aws:ec2:{region}:{FAKE_ACCOUNT}:launch-template/{resource_id}")
    elif args.typ == "aws:cloudfront/distribution:Distribution":
        state.update(domainName=FAKE_CLOUDFRONT_DOMAIN, arn=f"arn:aws:cloudfront::{FAKE_ACCOUNT}:distribution/E1")
    elif args.typ == "aws:acm/certificate:Certificate":
        state.update(arn=f"arn:aws:acm:{region}:{FAKE_ACCOUNT}:certificate/{args.name}", domainValidationOptions=[{
            "domainName": args.inputs["domainName"], "resourceRecordType": "CNAME",
            "resourceRecordName": f"_3f1e2d.{args.inputs['domainName']}.",
            "resourceRecordValue": "_9a8b7c.xlfgrmvvlj.acm-validations.aws."}])
    elif args.typ == "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager":
        state["instanceGroup"] = (f"https://www.googleapis.com/compute/v1/projects/{FAKE_GCP_PROJECT}/regions/"
                                  f"{args.inputs['region']}/instanceGroups/{args.inputs['name']}")
    elif args.typ == "gcp:compute/globalAddress:GlobalAddress":
        state["address"] = FAKE_GCP_ADDRESS
    elif args.typ == "gcp:compute/instanceTemplate:InstanceTemplate":
        state["selfLinkUnique"] = (f"https://www.googleapis.com/compute/v1/projects/{FAKE_GCP_PROJECT}/global/"
                                   f"instanceTemplates/{args.name}?uniqueId=1234567890")
    return resource_id, state


class RecordingMonitor(MockMonitor):
    """The mock monitor, also keeping each resource's options (what MockResourceArgs leaves out).

    Kept on purpose, as set_mocks' `monitor` argument: Pulumi 3.272 has no public way to see a resource's options
    under mocks. Transforms would (register_resource_transform, ResourceTransformArgs.opts), but the mock monitor
    records them without running them (pulumi/runtime/mocks.py, Mocks.register_transform); the legacy stack
    transformations run before the SDK resolves the inherited provider and adds the inputs' dependencies, which
    the tests check. The registered URNs (parent types, for `orphans`) come from its get_registered_resources.
    """

    def __init__(self, mocks: CloudMocks) -> None:
        super().__init__(mocks)
        self.options: dict[tuple[str, str], dict[str, Any]] = {}

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method's name
        self.options[(request.type, request.name)] = {
            "delete_before_replace": request.deleteBeforeReplace, "replace_on_changes": list(request.replaceOnChanges),
            "ignore_changes": list(request.ignoreChanges), "retain_on_delete": request.retainOnDelete,
            "protect": request.protect, "dependencies": list(request.dependencies),
            "additional_secret_outputs": list(request.additionalSecretOutputs), "provider": request.provider,
        }
        return super().RegisterResource(request)


@dataclass
class ProgramRun:
    mocks: CloudMocks
    monitor: RecordingMonitor
    namespace: dict[str, Any] = field(default_factory=dict)
    # Every stack output, resolved while the program ran: id(output) -> (value, is secret).
    resolved: dict[int, tuple[Any, bool]] = field(default_factory=dict)

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

    def options(self, typ: str) -> dict[str, Any]:
        """The resource options the one resource of `typ` was registered with."""
        return self.monitor.options[(typ, self.one(typ).name)]

    def urn(self, typ: str) -> str:
        """The URN of the one resource of `typ`: what another resource's dependencies name."""
        name = self.one(typ).name
        (urn,) = [u for u in self.monitor.get_registered_resources() if u.endswith(f"{typ}::{name}")]
        return urn

    def state(self, typ: str) -> dict[str, Any]:
        """What the mocks answered for the one resource of `typ`: its inputs plus what the cloud assigns."""
        return self.mocks.states[(typ, self.one(typ).name)]

    def orphans(self, component_type: str) -> list[str]:
        """URNs of resources registered outside the component: the root stack is their direct parent.

        The mock monitor writes each URN's type as `<parent type>$<type>`, as the engine does."""
        urns = list(self.monitor.get_registered_resources())
        components = [u for u in urns if u.split("::")[2] == f"pulumi:pulumi:Stack${component_type}"]
        assert len(components) == 1, f"expected one {component_type} under the stack, found {components}"
        return [u for u in urns if u.split("::")[2].startswith("pulumi:pulumi:Stack$") and u not in components]

    def value(self, output: pulumi.Output) -> Any:
        return self.resolved[id(output)][0]

    def is_secret(self, output: pulumi.Output) -> bool:
        return self.resolved[id(output)][1]


def load_provider_in_project(run: ProgramRun, typ: str) -> tuple[bytes, list[str]]:
    """The dynamic resource's provider as the program stored it (its `__provider` input: dill, base64, which the SDK
    writes itself), and what a fresh Python started in the project's directory, as the engine starts its dynamic
    provider host, loads from it: module, class."""
    stored = run.one(typ).inputs["__provider"]
    serialized = unwrap_rpc_secret(stored) if is_rpc_secret(stored) else stored
    loaded = subprocess.run(
        [sys.executable, "-c", "import base64, sys, dill; p = dill.loads(base64.b64decode(sys.stdin.read())); "
         "print(type(p).__module__, type(p).__name__)"],
        input=serialized, capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    return base64.b64decode(serialized), loaded.stdout.split()


def plain_strings(value):
    """Every scalar in resource inputs that is not inside a secret."""
    if is_rpc_secret(value):
        return
    if isinstance(value, dict):
        for item in value.values():
            yield from plain_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from plain_strings(item)
    else:
        yield str(value)


def engine_config(config: dict[str, Any] | None, preset: str | None) -> dict[str, str]:
    """The config as the engine hands it to the program: full keys, strings, lists and maps as JSON."""
    merged = presets.engine_values(presets.read(preset)) if preset else {}
    for key, value in (config or {}).items():
        full = key if ":" in key else f"sdxl-endpoint:{key}"
        merged[full] = value if isinstance(value, str) else json.dumps(value)
    return merged


def run_program(config: dict[str, Any] | None = None, *, stack: str = "test", preset: str | None = None,
                secret_keys: tuple[str, ...] = ("sdxl-endpoint:apiToken", "sdxl-endpoint:hfToken"),
                preview: bool = False) -> ProgramRun:
    """Evaluate `__main__.py` with the given config (keys without a namespace get the project's).

    Only Pulumi's public testing API: the config arrives as the language host passes it (PULUMI_CONFIG and
    PULUMI_CONFIG_SECRET_KEYS), `set_mocks` answers the resources and invokes, and `pulumi.runtime.test`
    runs the program and waits for every output.
    """
    mocks = CloudMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="sdxl-endpoint", stack=preset or stack, preview=preview, monitor=monitor)
    run = ProgramRun(mocks, monitor)
    environment = {"PULUMI_CONFIG": json.dumps(engine_config(config, preset)),
                   "PULUMI_CONFIG_SECRET_KEYS": json.dumps(list(secret_keys))}
    saved = {name: os.environ.get(name) for name in environment}

    async def resolve(outputs: dict[str, pulumi.Output]) -> None:
        for output in outputs.values():
            run.resolved[id(output)] = (await output.future(), await output.is_secret())

    @pulumi.runtime.test
    def evaluate():
        # What the language host does before it runs a program.
        pulumi.runtime.set_all_config(pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env())
        run.namespace.update(runpy.run_path(str(MAIN)))
        return pulumi.Output.from_input(asyncio.ensure_future(resolve(run.outputs)))

    os.environ.update(environment)
    try:
        evaluate()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return run


@pytest.fixture
def program():
    return run_program
