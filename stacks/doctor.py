"""Preflight doctor: will `pulumi up` get its GPU? Checked in seconds, before anything is created.

    python -m stacks.doctor --stack aws-g5                  # what `make up STACK=aws-g5` will ask for
    python -m stacks.doctor --cloud aws --gpu l4 --region us-west-2 --spot
    python -m stacks.doctor --cloud gcp --machine-type g2-standard-4 --zone us-east4-a --project my-proj
    python -m stacks.doctor --stack aws-g4dn --suggest --json

The target is resolved by the stack's own `config.load()`, so the doctor and `pulumi up` agree
on the machine, GPU and location. Then every check asks the cloud (boto3 or google-cloud-compute)
and prints one line: `ok`, `warn` or `FAIL`, the measured value, and for a FAIL the fix to run.
Exit status: 0 when nothing failed, 1 on any FAIL, 2 for a bad command line.

Every remote call has a timeout and few retries; no credentials or no network end in a FAIL
line, never a traceback or a hang. The doctor only reads: it changes nothing in either cloud.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import math
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from stacks import catalog, config

STACKS_DIR = Path(__file__).resolve().parent
OK, WARN, FAIL = "ok", "warn", "fail"
SKIP_HINT = "SKIP_DOCTOR=1 skips this preflight"

# Seconds. Long enough for a slow link, short enough that a black-holed network fails fast.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 15
# --suggest fans out over regions in parallel; the bound keeps it to a few seconds.
MAX_SUGGEST_REGIONS = 20
SUGGEST_WORKERS = 8

# --- result model --------------------------------------------------------------------------


@dataclass
class Check:
    name: str  # stable identifier, see JSON_SCHEMA
    status: str  # OK | WARN | FAIL
    value: str  # what was measured
    fix: str | None = None  # for a FAIL (and some warnings): the command or step that fixes it


@dataclass
class Suggestion:
    location: str  # AWS region or GCP zone
    zones: list[str]  # AWS: the region's AZs that offer the type; GCP: the zone itself
    machine_type: str
    usd_per_hour: float | None
    price_source: str
    quota: str  # "available" | "insufficient" | "unknown"
    quota_detail: str


@dataclass
class Target:
    """What will be deployed, as the stack's config resolves it."""

    cloud: str
    stack: str | None = None
    machine: catalog.Offer | None = None
    spot: bool = False
    region: str | None = None
    zone: str | None = None  # GCP
    project: str | None = None  # GCP
    aws_profile: str | None = None  # a stack's `aws:profile`, as the Pulumi AWS provider uses it

    def describe(self) -> str:
        what = self.machine.describe() if self.machine else "(machine not resolved)"
        where = self.zone or self.region or "?"
        if self.project:
            where += f", project {self.project}"
        capacity = "spot" if self.spot else "on demand"
        prefix = f"stack {self.stack}: " if self.stack else ""
        return f"{prefix}{self.cloud.upper()} {what} in {where}, {capacity}"

    def as_json(self) -> dict[str, Any]:
        machine = self.machine
        return {
            "cloud": self.cloud, "stack": self.stack, "spot": self.spot,
            "region": self.region, "zone": self.zone, "project": self.project,
            "machine_type": machine.name if machine else None,
            "gpu": machine.gpu.model if machine else None,
            "gpu_count": machine.gpu_count if machine else None,
            "gpu_memory_gb": machine.gpu.memory_gb if machine else None,
            "vcpus": machine.vcpus if machine else None,
            "usd_per_hour": machine.usd_per_hour if machine else None,
        }


@dataclass
class Report:
    target: Target
    checks: list[Check] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, name: str, status: str, value: str, fix: str | None = None) -> Check:
        check = Check(name, status, value, fix)
        self.checks.append(check)
        return check


class RemoteError(Exception):
    """A cloud call failed; `why` says what happened and `fix` what to do, both for people."""

    def __init__(self, why: str, fix: str | None = None, *, blocking: bool = False):
        super().__init__(why)
        self.why, self.fix = why, fix
        self.blocking = blocking  # no credentials or no network: later calls would fail the same way


# --- the target, through the stack's own config ----------------------------------------------


def stack_values(stack: str) -> tuple[dict[str, str], str | None]:
    """A stack file's config as the engine hands it to the program, and a note when it is missing.

    Secrets stay encrypted in the file and are left out: the doctor never needs them.
    """
    path = STACKS_DIR / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        return {}, f"no {path.relative_to(STACKS_DIR.parent)}: checking the defaults `pulumi up` would use"
    document = yaml.safe_load(path.read_text()) or {}
    values = {}
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            continue
        values[key] = value if isinstance(value, str) else json.dumps(value)
    return values, None


def cloud_of(args: argparse.Namespace) -> str:
    """The explicit target's cloud: --cloud, else what the other flags imply."""
    return args.cloud or ("gcp" if args.machine_type or args.zone or args.project else "aws")


def flag_values(args: argparse.Namespace, adc_project: Callable[[], str | None]) -> dict[str, str]:
    """An explicit target as the config keys a stack would set."""
    cloud = cloud_of(args)
    values = {f"{config.PROJECT}:cloud": cloud, f"{config.PROJECT}:spot": json.dumps(bool(args.spot))}
    for key, value in (("gpu", args.gpu), ("instanceType", args.instance_type), ("machineType", args.machine_type)):
        if value:
            values[f"{config.PROJECT}:{key}"] = value
    if cloud == "aws":
        if args.region:
            values["aws:region"] = args.region
        return values
    zone = args.zone
    if args.region and not zone:
        zone = _first_gcp_zone(args.region, args.gpu, args.machine_type)
    if args.region:
        values["gcp:region"] = args.region
    if zone:
        values["gcp:zone"] = zone
    project = args.project or adc_project()
    if project:
        values["gcp:project"] = project
    return values


def _first_gcp_zone(region: str, gpu: str | None, machine_type: str | None) -> str:
    """`--region` without `--zone`: the region's first zone that the catalog says has the GPU."""
    offer = catalog.GCP_OFFERS.get(machine_type or "")
    key = offer.gpu.key if offer else (gpu or catalog.DEFAULT_GPU["gcp"])
    zones = [z for z in catalog.GCP_ACCELERATOR_ZONES.get(key, ()) if z.startswith(region + "-")]
    return zones[0] if zones else f"{region}-a"


def resolve_target(values: dict[str, str], stack: str | None,
                   lookup_aws_type: Callable[[str, str], catalog.InstanceFacts | None] | None,
                   report_target: Target) -> Check:
    """Run the stack's `config.load()` on these values; fill in the target, or explain why not."""
    from pulumi.runtime import config as runtime_config
    from pulumi.runtime import settings as runtime_settings

    def load() -> config.Settings:
        # The engine would set these before running __main__.py. A copied context keeps them
        # from leaking into anything else running in this process.
        runtime_settings.configure(runtime_settings.Settings(project=config.PROJECT, stack=stack or "doctor"))
        runtime_config.set_all_config(values, secret_keys=[])
        return config.load(lookup_aws_type=lookup_aws_type)

    try:
        settings = contextvars.copy_context().run(load)
    except config.ConfigError as err:
        # Explicit flags are no stack file: keep the problems, not the header naming one.
        body = str(err) if stack else "the flags name an invalid target:\n" + str(err).split("\n", 1)[-1]
        return Check("config", FAIL, body, "apply the fix under each problem above, then run the doctor again")
    except RemoteError as err:
        return Check("config", FAIL, f"could not describe the instance type: {err.why}", err.fix)
    report_target.machine = settings.machine
    report_target.spot = settings.spot
    report_target.region = settings.region
    report_target.zone = settings.zone
    report_target.project = settings.gcp_project
    return Check("config", OK, settings.machine.describe())


# --- AWS -------------------------------------------------------------------------------------

# Quota classes that GPU instance families count against, in vCPUs per region.
# family prefix -> {capacity: (quota code, quota name)}
AWS_GPU_QUOTAS = {
    "G": {"on-demand": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
          "spot": ("L-3819A6DF", "All G and VT Spot Instance Requests")},
    "P": {"on-demand": ("L-417A185B", "Running On-Demand P instances"),
          "spot": ("L-7212CCBC", "All P Spot Instance Requests")},
}


def aws_quota_class(instance_type: str) -> str | None:
    family = catalog.aws_family(instance_type)
    if family.startswith("p"):
        return "P"
    if family.startswith(("g", "vt")):
        return "G"
    return None


def aws_quota_fix(code: str, desired: int, region: str) -> str:
    return (f"aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
            f"--desired-value {desired} --region {region}")


class AwsApi:
    """boto3 clients with timeouts, one per service and region, shared between threads."""

    def __init__(self, profile: str | None = None):
        import boto3
        from botocore.config import Config

        self._session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
        self._config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                              retries={"max_attempts": 2, "mode": "standard"})
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()  # creating clients from one session is not thread-safe

    def client(self, service: str, region: str):
        with self._lock:
            key = (service, region)
            if key not in self._clients:
                self._clients[key] = self._session.client(service, region_name=region, config=self._config)
            return self._clients[key]

    def known_regions(self) -> list[str]:
        return self._session.get_available_regions("ec2")

    def call(self, service: str, region: str, operation: str, **params) -> dict:
        """One API call; any failure becomes a RemoteError that says what to do about it."""
        from botocore import exceptions as bx

        try:
            return getattr(self.client(service, region), operation)(**params)
        except (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError,
                bx.ProfileNotFound, bx.TokenRetrievalError, bx.SSOError) as err:
            raise RemoteError(f"no usable AWS credentials ({err})",
                              "configure credentials: `aws configure`, `aws sso login`, or set AWS_PROFILE",
                              blocking=True) from err
        except (bx.ConnectionError, bx.HTTPClientError) as err:
            where = f"{service} in {region}"
            if region not in self.known_regions():
                raise RemoteError(f"cannot reach {where}: '{region}' is not a region this SDK knows",
                                  "pulumi config set aws:region us-east-1 (or another region)",
                                  blocking=True) from err
            raise RemoteError(f"cannot reach {where} ({type(err).__name__}: {err})",
                              "check the network, proxy (HTTPS_PROXY) and firewall", blocking=True) from err
        except bx.ClientError as err:
            error = err.response.get("Error", {})
            code, message = error.get("Code", "Error"), error.get("Message", "")
            if code in ("InvalidClientTokenId", "UnrecognizedClientException", "ExpiredToken",
                        "ExpiredTokenException", "SignatureDoesNotMatch", "AuthFailure"):
                raise RemoteError(f"AWS rejected the credentials ({code}: {message})",
                                  "refresh them: `aws sso login`, or `aws configure` with a valid key",
                                  blocking=True) from err
            raise RemoteError(f"{code}: {message}") from err
        except bx.BotoCoreError as err:
            raise RemoteError(f"{type(err).__name__}: {err}") from err

    # -- look-ups shared by the checks and --suggest

    def offered_zones(self, instance_type: str, region: str) -> list[str]:
        found = self.call("ec2", region, "describe_instance_type_offerings", LocationType="availability-zone",
                          Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        return sorted(o["Location"] for o in found["InstanceTypeOfferings"])

    def instance_facts(self, instance_type: str, region: str) -> catalog.InstanceFacts | None:
        """EC2's own description of the type, or None when the region does not sell it."""
        if not self.offered_zones(instance_type, region):
            return None
        (record,) = self.call("ec2", region, "describe_instance_types", InstanceTypes=[instance_type])["InstanceTypes"]
        return facts_from_record(record)

    def quota(self, code: str, region: str) -> tuple[float | None, str]:
        """The applied quota, else AWS's default (saying so), else None with the reason."""
        try:
            value = self.call("service-quotas", region, "get_service_quota", ServiceCode="ec2", QuotaCode=code)
            return float(value["Quota"]["Value"]), "applied"
        except RemoteError as err:
            if err.blocking:
                raise
            applied_error = err.why
        try:
            value = self.call("service-quotas", region, "get_aws_default_service_quota",
                              ServiceCode="ec2", QuotaCode=code)
            return float(value["Quota"]["Value"]), f"AWS default; the applied value was unreadable ({applied_error})"
        except RemoteError as err:
            if err.blocking:
                raise
            return None, f"unreadable ({applied_error}; default: {err.why})"

    def spot_prices(self, instance_type: str, region: str) -> dict[str, float]:
        """The current Linux spot price per AZ."""
        history = self.call("ec2", region, "describe_spot_price_history", InstanceTypes=[instance_type],
                            ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                            StartTime=datetime.now(timezone.utc), MaxResults=100)["SpotPriceHistory"]
        latest: dict[str, tuple[datetime, float]] = {}
        for entry in history:
            zone, when = entry["AvailabilityZone"], entry["Timestamp"]
            if zone not in latest or when > latest[zone][0]:
                latest[zone] = (when, float(entry["SpotPrice"]))
        return {zone: price for zone, (_, price) in sorted(latest.items())}

    def on_demand_prices(self, instance_type: str) -> dict[str, float]:
        """Linux on-demand $/h per region code, from the AWS Price List API (one query, all regions)."""
        filters = [{"Type": "TERM_MATCH", "Field": name, "Value": value} for name, value in (
            ("instanceType", instance_type), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
            ("preInstalledSw", "NA"), ("capacitystatus", "Used"), ("licenseModel", "No License required"))]
        prices: dict[str, float] = {}
        token = None
        for _ in range(5):  # a handful of pages covers every region; never loop without end
            page = self.call("pricing", "us-east-1", "get_products", ServiceCode="AmazonEC2", Filters=filters,
                             MaxResults=100, **({"NextToken": token} if token else {}))
            for raw in page.get("PriceList", []):
                product = json.loads(raw) if isinstance(raw, str) else raw
                region = product.get("product", {}).get("attributes", {}).get("regionCode")
                for term in product.get("terms", {}).get("OnDemand", {}).values():
                    for dimension in term.get("priceDimensions", {}).values():
                        usd = float(dimension.get("pricePerUnit", {}).get("USD", 0) or 0)
                        if region and usd > 0:
                            prices[region] = usd
            token = page.get("NextToken")
            if not token:
                break
        return prices

    def vcpus_in_use(self, quota_class: str, spot: bool, region: str) -> int:
        """vCPUs of running or pending instances that count against the same quota."""
        used, unsized, token = 0, [], None
        for _ in range(10):
            page = self.call("ec2", region, "describe_instances", MaxResults=1000, Filters=[
                {"Name": "instance-state-name", "Values": ["pending", "running"]}],
                **({"NextToken": token} if token else {}))
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    is_spot = instance.get("InstanceLifecycle") == "spot"
                    if aws_quota_class(instance["InstanceType"]) != quota_class or is_spot != spot:
                        continue
                    cpu = instance.get("CpuOptions")
                    if cpu:
                        used += cpu["CoreCount"] * cpu.get("ThreadsPerCore", 1)
                    else:
                        unsized.append(instance["InstanceType"])
            token = page.get("NextToken")
            if not token:
                break
        if unsized:  # CpuOptions is optional in the answer: size those by their type's default vCPUs
            types = sorted(set(unsized))[:100]
            records = self.call("ec2", region, "describe_instance_types", InstanceTypes=types)["InstanceTypes"]
            default = {r["InstanceType"]: r["VCpuInfo"]["DefaultVCpus"] for r in records}
            used += sum(default.get(t, 0) for t in unsized)
        return used


def facts_from_record(record: dict) -> catalog.InstanceFacts:
    """A DescribeInstanceTypes record reduced to what catalog.why_unfit judges."""
    gpus = record.get("GpuInfo", {}).get("Gpus", [])
    inference = record.get("InferenceAcceleratorInfo", {}).get("Accelerators", [])
    neuron = record.get("NeuronInfo", {}).get("NeuronDevices", [])
    return catalog.InstanceFacts(
        name=record["InstanceType"],
        vcpus=record["VCpuInfo"]["DefaultVCpus"],
        ram_gib=record["MemoryInfo"]["SizeInMiB"] / 1024,
        architectures=tuple(record["ProcessorInfo"]["SupportedArchitectures"]),
        gpus=tuple(catalog.GpuFacts(g["Manufacturer"], g["Name"], g["Count"], g["MemoryInfo"]["SizeInMiB"])
                   for g in gpus),
        other_accelerators=tuple(dict.fromkeys([f"{a['Manufacturer']} {a['Name']}" for a in inference]
                                               + [f"AWS {d['Name']}" for d in neuron])),
    )


# Regions with the deepest GPU capacity, asked first when the account has more than the bound.
AWS_GPU_REGIONS = ("us-east-1", "us-east-2", "us-west-2", "us-west-1", "ca-central-1", "eu-west-1", "eu-west-2",
                   "eu-central-1", "eu-north-1", "eu-west-3", "ap-northeast-1", "ap-northeast-2",
                   "ap-southeast-1", "ap-southeast-2", "ap-south-1", "sa-east-1")


def _partition(region: str) -> str:
    return "cn" if region.startswith("cn-") else "gov" if "-gov-" in region else "iso" if "-iso" in region else "aws"


def aws_regions_offering(api: AwsApi, instance_type: str, home: str) -> dict[str, list[str]]:
    """Enabled regions (at most MAX_SUGGEST_REGIONS, `home` first) -> the AZs offering the type."""
    listed = [r["RegionName"] for r in api.call("ec2", home, "describe_regions")["Regions"]
              if _partition(r["RegionName"]) == _partition(home)]

    def priority(region: str) -> tuple:
        known = AWS_GPU_REGIONS.index(region) if region in AWS_GPU_REGIONS else len(AWS_GPU_REGIONS)
        return (region != home, known, region)

    regions = sorted(listed, key=priority)[:MAX_SUGGEST_REGIONS]

    def zones(region: str) -> list[str]:
        try:
            return api.offered_zones(instance_type, region)
        except RemoteError:
            return []  # one unreachable or disabled region must not hide the others

    with ThreadPoolExecutor(SUGGEST_WORKERS) as pool:
        found = dict(zip(regions, pool.map(zones, regions), strict=True))
    return {region: z for region, z in found.items() if z}


def check_aws(target: Target, api: AwsApi, report: Report, suggest: bool) -> None:
    from stacks.aws import DLAMI_SSM_PARAMETER

    region, machine = target.region or config.DEFAULT_AWS_REGION, target.machine
    try:
        who = api.call("sts", region, "get_caller_identity")
        report.add("credentials", OK, f"account {who['Account']} as {who['Arn']}")
    except RemoteError as err:
        report.add("credentials", FAIL, err.why, err.fix)
        return  # every other check needs a working identity
    if machine is None:
        return
    name = machine.name

    blocked = False

    def attempt(check: str, run: Callable[[], None]) -> bool:
        """Run one check; once the network or credentials are gone, skip the rest (each would time out)."""
        nonlocal blocked
        if blocked:
            return False
        try:
            run()
            return True
        except RemoteError as err:
            report.add(check, FAIL, err.why, err.fix)
            blocked = err.blocking
            return False

    offered: list[str] = []

    def offering() -> None:
        offered.extend(api.offered_zones(name, region))
        if offered:
            report.add("offering", OK, f"{region} offers {name} in {len(offered)} AZs: {', '.join(offered)}")
            return
        elsewhere = aws_regions_offering(api, name, region)
        report.add("offering", FAIL, f"{region} does not offer {name}",
                   f"pulumi config set aws:region {next(iter(elsewhere))} "
                   f"(regions that offer {name}: {', '.join(elsewhere)})" if elsewhere
                   else f"pick another type: python -m stacks.doctor --cloud aws --gpu {machine.gpu.key} --suggest")

    if not attempt("offering", offering):
        return
    vcpus = machine.vcpus

    def gpu() -> None:
        nonlocal vcpus
        (record,) = api.call("ec2", region, "describe_instance_types", InstanceTypes=[name])["InstanceTypes"]
        facts = facts_from_record(record)
        vcpus = facts.vcpus
        reason = catalog.why_unfit(facts)
        if reason:
            better = catalog.nearest_offers(catalog.AWS_OFFERS, facts.vcpus)[0].name
            report.add("gpu", FAIL, f"{name}: {reason}", f"pulumi config set instanceType {better}")
            return
        best = max(facts.gpus, key=lambda g: g.memory_mib)
        report.add("gpu", OK, f"{best.count}x {best.manufacturer} {best.model}, {best.memory_mib} MiB each "
                              f"(SDXL needs {catalog.SDXL_MIN_GPU_MEMORY_GB} GB); {facts.vcpus} vCPUs")

    if offered:
        attempt("gpu", gpu)
    attempt("quota", lambda: check_aws_quota(api, report, name, vcpus, region, target.spot))

    def image() -> None:
        try:
            found = api.call("ssm", region, "get_parameter", Name=DLAMI_SSM_PARAMETER)["Parameter"]
        except RemoteError as err:
            if "ParameterNotFound" in err.why:
                raise RemoteError(f"the GPU AMI is not published in {region} ({DLAMI_SSM_PARAMETER})",
                                  "pick a region where it is, e.g. pulumi config set aws:region us-east-1") from err
            raise
        report.add("image", OK, f"{found['Value']} (Deep Learning Base OSS NVIDIA driver AMI, Ubuntu 24.04)")

    attempt("image", image)
    if target.spot and offered:
        attempt("spot-price", lambda: check_aws_spot(api, report, name, region, offered, machine))
    if suggest and not blocked:
        report.suggestions = suggest_aws(api, machine, target.spot, region, vcpus)


def check_aws_quota(api: AwsApi, report: Report, name: str, vcpus: int, region: str, spot: bool) -> None:
    quota_class = aws_quota_class(name)
    if quota_class is None:
        report.add("quota", WARN, f"{name} counts against no GPU quota the doctor knows; not checked")
        return
    code, title = AWS_GPU_QUOTAS[quota_class]["spot" if spot else "on-demand"]
    limit, source = api.quota(code, region)
    try:
        used, used_note = api.vcpus_in_use(quota_class, spot, region), ""
    except RemoteError as err:
        used, used_note = 0, f"; vCPUs in use unknown ({err.why})"
    needed = used + vcpus
    fix = aws_quota_fix(code, needed, region)
    label = f"{title} ({code}) in {region}"
    if limit is None:
        report.add("quota", WARN, f"{label}: {source}; {name} needs {vcpus} vCPUs",
                   f"if launching fails with VcpuLimitExceeded: {fix}")
        return
    measured = (f"{label}: {limit:g} vCPUs ({source}), {used} in use{used_note}, "
                f"{name} needs {vcpus}")
    if limit < needed:
        report.add("quota", FAIL, measured, fix)
    elif source != "applied":
        # Default values are what AWS grants eventually, not what a new account has (often 0).
        report.add("quota", WARN, measured, f"if launching fails with VcpuLimitExceeded: {fix}")
    else:
        report.add("quota", OK, measured)


def check_aws_spot(api: AwsApi, report: Report, name: str, region: str, offered: list[str],
                   machine: catalog.Offer) -> None:
    prices = {z: p for z, p in api.spot_prices(name, region).items() if z in offered}
    if not prices:
        report.add("spot-price", WARN, f"no current spot price for {name} in {region}: spot capacity may be "
                                       "unavailable there", "python -m stacks.doctor --stack ... --suggest")
        return
    on_demand = f"; on demand ~${machine.usd_per_hour:.3f}/h" if machine.usd_per_hour else ""
    listing = ", ".join(f"{z} ${p:.4f}/h" for z, p in prices.items())
    report.add("spot-price", OK, f"{listing}{on_demand}")


def suggest_aws(api: AwsApi, machine: catalog.Offer, spot: bool, home: str, vcpus: int) -> list[Suggestion]:
    try:
        regions = aws_regions_offering(api, machine.name, home)
    except RemoteError:
        return []
    quota_class = aws_quota_class(machine.name)
    on_demand: dict[str, float] = {}
    source = "AWS Price List API, Linux on demand"
    if not spot:
        try:
            on_demand = api.on_demand_prices(machine.name)
        except RemoteError as err:
            source = f"catalog list price (us-east-1, {catalog.PRICES_AS_OF}); Price List API: {err.why}"

    def one(region: str) -> Suggestion:
        zones = regions[region]
        price, price_source = on_demand.get(region), source
        if spot:
            try:
                spot_prices = [p for z, p in api.spot_prices(machine.name, region).items() if z in zones]
                price, price_source = (min(spot_prices) if spot_prices else None), "current spot, cheapest AZ"
            except RemoteError as err:
                price_source = f"spot price unavailable ({err.why})"
        elif price is None and on_demand:
            price_source = "no price for this region in the AWS Price List answer"
        elif price is None:  # no Price List at all: the catalog's one price, the same everywhere
            price = machine.usd_per_hour
        quota, detail = "unknown", "no GPU quota class"
        if quota_class:
            code, _ = AWS_GPU_QUOTAS[quota_class]["spot" if spot else "on-demand"]
            try:
                limit, how = api.quota(code, region)
            except RemoteError as err:
                limit, how = None, err.why
            if limit is None:
                detail = f"{code}: {how}"
            else:
                quota = "available" if limit >= vcpus and how == "applied" else (
                    "insufficient" if limit < vcpus else "unknown")
                detail = f"{code}: {limit:g} vCPUs{'' if how == 'applied' else ' (AWS default)'}"
        return Suggestion(region, zones, machine.name, price, price_source, quota, detail)

    with ThreadPoolExecutor(SUGGEST_WORKERS) as pool:
        found = list(pool.map(one, regions))
    return sort_suggestions(found)


def sort_suggestions(found: Iterable[Suggestion]) -> list[Suggestion]:
    """Cheapest first; among equal prices, where quota is known to be available first."""
    rank = {"available": 0, "unknown": 1, "insufficient": 2}
    return sorted(found, key=lambda s: (s.usd_per_hour if s.usd_per_hour is not None else math.inf,
                                        rank[s.quota], s.location))


# --- GCP -------------------------------------------------------------------------------------

# GPU -> (the accelerator type Compute Engine names it by, its regional quota metric).
# Spot VMs count against PREEMPTIBLE_<metric> where the project has that quota, else <metric>.
GCP_GPU_TYPES = {
    "t4": ("nvidia-tesla-t4", "NVIDIA_T4_GPUS"),
    "l4": ("nvidia-l4", "NVIDIA_L4_GPUS"),
    "a100": ("nvidia-tesla-a100", "NVIDIA_A100_GPUS"),
    "a100-80gb": ("nvidia-a100-80gb", "NVIDIA_A100_80GB_GPUS"),
    "h100": ("nvidia-h100-80gb", "NVIDIA_H100_GPUS"),
}
GCP_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# Tests point the real clients at a local fake of the Compute REST API; None is Google's endpoint.
GCP_API_ENDPOINT: str | None = None


def gcp_quota_fix(project: str, metric: str, desired: int, region: str | None) -> str:
    """The console page and the gcloud command that ask for more of a Compute Engine quota."""
    quota_id = metric.replace("_", "-") + ("-per-project-region" if region else "-per-project")
    dimensions = f" --dimensions=region={region}" if region else ""
    where = f" in {region}" if region else ""
    return (f"request {metric} >= {desired}{where} at https://console.cloud.google.com/iam-admin/quotas"
            f"?project={project} (filter: {metric}), or: gcloud quotas preferences create "
            f"--service=compute.googleapis.com --project={project} --quota-id={quota_id} "
            f"--preferred-value={desired}{dimensions} --email=YOU@example.com")


class GcpApi:
    """Application-default credentials and the Compute Engine clients, all with timeouts."""

    def __init__(self):
        self._credentials = None
        self._adc_project: str | None = None
        self._adc_error: RemoteError | None = None
        self._loaded = False
        self._clients: dict[str, Any] = {}

    def load_credentials(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import google.auth
        from google.auth import exceptions as gx

        try:
            self._credentials, self._adc_project = google.auth.default(scopes=GCP_SCOPES)
        except gx.DefaultCredentialsError as err:
            reason = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
            self._adc_error = RemoteError(f"no application-default credentials ({reason})",
                                          "gcloud auth application-default login", blocking=True)

    def adc_project(self) -> str | None:
        self.load_credentials()
        return self._adc_project

    def credentials(self):
        """Loaded and refreshed once, with a bounded token request; RemoteError when unusable."""
        self.load_credentials()
        if self._adc_error:
            raise self._adc_error
        if not self._credentials.valid:
            import google.auth.transport.requests
            from google.auth import exceptions as gx

            class BoundedRequest(google.auth.transport.requests.Request):
                def __call__(self, *args, timeout=None, **kwargs):
                    return super().__call__(*args, timeout=min(timeout or READ_TIMEOUT_S, READ_TIMEOUT_S),
                                            **kwargs)

            try:
                self._credentials.refresh(BoundedRequest())
            except gx.RefreshError as err:
                self._adc_error = RemoteError(f"Google rejected the credentials ({err})",
                                              "gcloud auth application-default login", blocking=True)
                raise self._adc_error from err
            except gx.TransportError as err:
                self._adc_error = RemoteError(f"cannot reach Google's token endpoint ({err})",
                                              "check the network, proxy (HTTPS_PROXY) and firewall",
                                              blocking=True)
                raise self._adc_error from err
        return self._credentials

    def identity(self) -> str:
        credentials = self.credentials()
        email = getattr(credentials, "service_account_email", None)
        return f"service account {email}" if email and "@" in email else "user credentials"

    def client(self, kind: str):
        if kind not in self._clients:
            from google.cloud import compute_v1

            options = {"api_endpoint": GCP_API_ENDPOINT} if GCP_API_ENDPOINT else None
            self._clients[kind] = getattr(compute_v1, kind)(credentials=self.credentials(), client_options=options)
        return self._clients[kind]

    def call(self, kind: str, method: str, **params):
        """One Compute Engine call, no retries beyond the timeout; failures become RemoteError."""
        from google.api_core import exceptions as gax
        from google.auth import exceptions as gx

        try:
            return getattr(self.client(kind), method)(**params, timeout=READ_TIMEOUT_S, retry=None)
        except gax.Forbidden as err:
            text = str(err)
            project = params.get("project", "")
            if "SERVICE_DISABLED" in text or "accessNotConfigured" in text or "has not been used" in text:
                raise RemoteError(f"the Compute Engine API is disabled in project {project}",
                                  f"gcloud services enable compute.googleapis.com --project={project}",
                                  blocking=True) from err
            raise RemoteError(f"permission denied ({err.message})",
                              f"grant your account roles/compute.viewer on project {project}") from err
        except gax.Unauthorized as err:
            raise RemoteError(f"Google rejected the credentials ({err.message})",
                              "gcloud auth application-default login", blocking=True) from err
        except gax.NotFound:
            raise
        except gax.GoogleAPICallError as err:
            raise RemoteError(f"{type(err).__name__}: {err.message}") from err
        except (gx.TransportError, gx.RefreshError, OSError) as err:  # requests' errors are OSErrors
            raise RemoteError(f"cannot reach Compute Engine ({type(err).__name__}: {err})",
                              "check the network, proxy (HTTPS_PROXY) and firewall", blocking=True) from err

    def zones_with(self, project: str, accelerator: str) -> list[str]:
        """Every zone that offers the accelerator, from one aggregated list."""
        from google.cloud import compute_v1

        request = compute_v1.AggregatedListAcceleratorTypesRequest(project=project, filter=f"name = {accelerator}")
        pages = self.call("AcceleratorTypesClient", "aggregated_list", request=request)
        zones = []
        for scope, scoped in pages:
            if any(a.name == accelerator for a in scoped.accelerator_types):
                zones.append(scope.rsplit("/", 1)[-1])
        return sorted(zones)


def _gcp_quota(quotas, metric: str):
    return next((q for q in quotas if q.metric == metric), None)


def check_gcp(target: Target, api: GcpApi, report: Report, suggest: bool) -> None:
    from google.api_core import exceptions as gax

    from stacks.gcp import DLVM_IMAGE_FAMILY, DLVM_IMAGE_PROJECT

    try:
        identity = api.identity()
        adc = api.adc_project()
        note = f"; their own project is {adc}" if adc and adc != target.project else ""
        report.add("credentials", OK, f"application-default credentials: {identity}{note}")
    except RemoteError as err:
        report.add("credentials", FAIL, err.why, err.fix)
        return
    machine, project, zone, region = target.machine, target.project, target.zone, target.region
    if machine is None or not project or not zone or not region:
        return

    try:
        project_info = api.call("ProjectsClient", "get", project=project)
        report.add("compute-api", OK, f"project {project_info.name} (number {project_info.id}) answers")
    except gax.NotFound:
        report.add("compute-api", FAIL, f"project {project} does not exist or is not visible to these credentials",
                   "pulumi config set gcp:project <your-project-id> (gcloud projects list shows them)")
        return
    except RemoteError as err:
        report.add("compute-api", FAIL, err.why, err.fix)
        return  # the remaining checks are calls to the same API

    accelerator, metric = GCP_GPU_TYPES[machine.gpu.key]
    other_zones: list[str] | None = None

    def zones_fix(what: str) -> str:
        nonlocal other_zones
        if other_zones is None:
            try:
                other_zones = api.zones_with(project, accelerator)
            except (RemoteError, gax.GoogleAPICallError):
                other_zones = list(catalog.GCP_ACCELERATOR_ZONES.get(machine.gpu.key, ()))
        near = [z for z in other_zones if z.startswith(region + "-")] or other_zones
        if not near:
            return f"no zone lists {accelerator}: choose another gpu"
        return (f"pulumi config set gcp:zone {near[0]} (and gcp:region {near[0].rsplit('-', 1)[0]}); "
                f"zones with {what}: {', '.join(near[:8])}")

    def guarded(check: str, run: Callable[[], None], missing: Callable[[], tuple[str, str]]) -> None:
        try:
            run()
        except gax.NotFound:
            why, fix = missing()
            report.add(check, FAIL, why, fix)
        except RemoteError as err:
            report.add(check, FAIL, err.why, err.fix)

    def accelerator_check() -> None:
        found = api.call("AcceleratorTypesClient", "get", project=project, zone=zone, accelerator_type=accelerator)
        report.add("accelerator", OK, f"{zone} offers {found.name} (up to {found.maximum_cards_per_instance} per VM)")

    guarded("accelerator", accelerator_check,
            lambda: (f"{zone} does not offer {accelerator}", zones_fix(accelerator)))

    def machine_check() -> None:
        found = api.call("MachineTypesClient", "get", project=project, zone=zone, machine_type=machine.name)
        built_in = ", ".join(f"{a.guest_accelerator_count}x {a.guest_accelerator_type}" for a in found.accelerators)
        extra = f", built-in {built_in}" if built_in else f", plus 1x {accelerator} attached"
        report.add("machine-type", OK, f"{found.name}: {found.guest_cpus} vCPUs, "
                                       f"{found.memory_mb / 1024:g} GB RAM{extra}")

    guarded("machine-type", machine_check,
            lambda: (f"{zone} has no machine type {machine.name}", zones_fix(accelerator)))

    needed = machine.gpu_count

    def regional_quota() -> None:
        quotas = api.call("RegionsClient", "get", project=project, region=region).quotas
        used_metric = metric
        if target.spot:
            preemptible = _gcp_quota(quotas, f"PREEMPTIBLE_{metric}")
            if preemptible is not None and preemptible.limit > 0:
                used_metric = preemptible.metric
        quota = _gcp_quota(quotas, used_metric)
        if quota is None:
            report.add("regional-quota", FAIL, f"{region} lists no {metric} quota: the region has no {accelerator}",
                       zones_fix(accelerator))
            return
        free = quota.limit - quota.usage
        measured = f"{used_metric} in {region}: limit {quota.limit:g}, in use {quota.usage:g}, {needed} needed"
        if free < needed:
            report.add("regional-quota", FAIL, measured,
                       gcp_quota_fix(project, used_metric, int(quota.usage) + needed, region))
        else:
            report.add("regional-quota", OK, measured)

    guarded("regional-quota", regional_quota, lambda: (f"region {region} not found", zones_fix(accelerator)))

    quota = _gcp_quota(project_info.quotas, "GPUS_ALL_REGIONS")
    if quota is None:
        report.add("global-quota", WARN, "the project lists no GPUS_ALL_REGIONS quota; not checked")
    else:
        measured = f"GPUS_ALL_REGIONS: limit {quota.limit:g}, in use {quota.usage:g}, {needed} needed"
        if quota.limit - quota.usage < needed:
            report.add("global-quota", FAIL, measured,
                       gcp_quota_fix(project, "GPUS_ALL_REGIONS", int(quota.usage) + needed, None))
        else:
            report.add("global-quota", OK, measured)

    def image_check() -> None:
        image = api.call("ImagesClient", "get_from_family", project=DLVM_IMAGE_PROJECT, family=DLVM_IMAGE_FAMILY)
        state = image.deprecated.state if image.deprecated else ""
        value = f"{image.name} (family {DLVM_IMAGE_FAMILY}, created {image.creation_timestamp[:10]})"
        if state in ("DEPRECATED", "OBSOLETE", "DELETED"):
            report.add("image", WARN, f"{value} is {state}",
                       "update DLVM_IMAGE_FAMILY in stacks/gcp.py to a current family")
        else:
            report.add("image", OK, value)

    guarded("image", image_check, lambda: (
        f"image family {DLVM_IMAGE_FAMILY} not found in {DLVM_IMAGE_PROJECT}",
        "update DLVM_IMAGE_FAMILY in stacks/gcp.py; current families: gcloud compute images list "
        f"--project={DLVM_IMAGE_PROJECT} --no-standard-images --filter='family~^common-cu'"))

    if suggest:
        report.suggestions = suggest_gcp(api, machine, project, target.spot)


def suggest_gcp(api: GcpApi, machine: catalog.Offer, project: str, spot: bool) -> list[Suggestion]:
    from google.api_core import exceptions as gax

    accelerator, metric = GCP_GPU_TYPES[machine.gpu.key]
    try:
        zones = api.zones_with(project, accelerator)
        regions = {r.name: r.quotas for r in api.call("RegionsClient", "list", project=project)}
    except (RemoteError, gax.GoogleAPICallError):
        return []  # suggestions are extra; the checks above already reported what failed
    price_source = f"catalog list price (us-central1, {catalog.PRICES_AS_OF}); regional prices differ"
    found = []
    for zone in zones:
        quotas = regions.get(zone.rsplit("-", 1)[0], [])
        used_metric = metric
        preemptible = _gcp_quota(quotas, f"PREEMPTIBLE_{metric}")
        if spot and preemptible is not None and preemptible.limit > 0:
            used_metric = preemptible.metric
        quota = _gcp_quota(quotas, used_metric)
        if quota is None:
            state, detail = "unknown", f"{metric}: not listed"
        else:
            free = quota.limit - quota.usage
            state = "available" if free >= machine.gpu_count else "insufficient"
            detail = f"{used_metric}: {free:g} free of {quota.limit:g}"
        found.append(Suggestion(zone, [zone], machine.name, machine.usd_per_hour, price_source, state, detail))
    return sort_suggestions(found)


# --- output ----------------------------------------------------------------------------------

# The --json document. Stable: fields are only ever added, never renamed or removed.
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sdxl-endpoint preflight doctor report",
    "type": "object",
    "required": ["schema_version", "ok", "target", "checks", "suggestions"],
    "properties": {
        "schema_version": {"const": 1},
        "ok": {"type": "boolean", "description": "false when any check failed; the exit status is then 1"},
        "target": {
            "type": "object",
            "required": ["cloud", "stack", "spot", "region", "zone", "project", "machine_type", "gpu",
                         "gpu_count", "gpu_memory_gb", "vcpus", "usd_per_hour"],
            "properties": {
                "cloud": {"enum": ["aws", "gcp"]},
                "stack": {"type": ["string", "null"]},
                "spot": {"type": "boolean"},
                "region": {"type": ["string", "null"]},
                "zone": {"type": ["string", "null"]},
                "project": {"type": ["string", "null"]},
                "machine_type": {"type": ["string", "null"]},
                "gpu": {"type": ["string", "null"]},
                "gpu_count": {"type": ["integer", "null"]},
                "gpu_memory_gb": {"type": ["integer", "null"]},
                "vcpus": {"type": ["integer", "null"]},
                "usd_per_hour": {"type": ["number", "null"]},
            },
        },
        "checks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "status", "value", "fix"],
                "additionalProperties": False,
                "properties": {
                    "name": {"enum": ["config", "credentials", "offering", "gpu", "quota", "image", "spot-price",
                                      "compute-api", "accelerator", "machine-type", "regional-quota",
                                      "global-quota"]},
                    "status": {"enum": [OK, WARN, FAIL]},
                    "value": {"type": "string"},
                    "fix": {"type": ["string", "null"]},
                },
            },
        },
        "suggestions": {
            "type": "array",
            "description": "with --suggest: where the machine is offered, cheapest first",
            "items": {
                "type": "object",
                "required": ["location", "zones", "machine_type", "usd_per_hour", "price_source", "quota",
                             "quota_detail"],
                "additionalProperties": False,
                "properties": {
                    "location": {"type": "string"},
                    "zones": {"type": "array", "items": {"type": "string"}},
                    "machine_type": {"type": "string"},
                    "usd_per_hour": {"type": ["number", "null"]},
                    "price_source": {"type": "string"},
                    "quota": {"enum": ["available", "insufficient", "unknown"]},
                    "quota_detail": {"type": "string"},
                },
            },
        },
    },
}


def as_json(report: Report) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "ok": report.ok,
        "target": report.target.as_json(),
        "checks": [asdict(c) for c in report.checks],
        "suggestions": [asdict(s) for s in report.suggestions],
    }


def as_text(report: Report) -> str:
    width = max((len(c.name) for c in report.checks), default=0)
    lines = [f"Preflight: {report.target.describe()}"]
    for check in report.checks:
        status = "FAIL" if check.status == FAIL else check.status
        indent = " " * (2 + 5 + 1 + width + 2)
        value = check.value.replace("\n", "\n" + indent)
        lines.append(f"  {status:<5} {check.name:<{width}}  {value}")
        if check.fix:
            lines.append(f"{indent}fix: {check.fix}")
    if report.suggestions:
        lines.append("")
        lines.append(f"Where {report.suggestions[0].machine_type} is offered, cheapest first:")
        for s in report.suggestions:
            price = f"${s.usd_per_hour:.3f}/h" if s.usd_per_hour is not None else "price n/a"
            mark = {"available": "quota ok", "insufficient": "NO QUOTA", "unknown": "quota ?"}[s.quota]
            zones = f"  [{', '.join(s.zones)}]" if s.zones != [s.location] else ""
            lines.append(f"  {s.location:<24} {price:>11}  {mark:<8} {s.quota_detail}{zones}")
        sources = dict.fromkeys(s.price_source for s in report.suggestions)
        lines.append(f"  prices: {'; '.join(sources)}")
    failed = [c for c in report.checks if c.status == FAIL]
    warned = [c for c in report.checks if c.status == WARN]
    summary = f"{len(failed)} FAIL, {len(warned)} warn, {len(report.checks) - len(failed) - len(warned)} ok"
    lines.append("")
    lines.append(f"{summary}. Fix each FAIL above before `pulumi up` ({SKIP_HINT})." if failed
                 else f"{summary}: ready for `pulumi up`.")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stacks.doctor",
        description="Preflight for `pulumi up`: credentials, GPU quota, zone offerings and images.",
        epilog="Exit status: 0 ready, 1 a check failed, 2 bad arguments. " + SKIP_HINT + " in scripts/deploy.sh.")
    parser.add_argument("--stack", help="check a stack's config (stacks/Pulumi.<STACK>.yaml)")
    parser.add_argument("--cloud", choices=config.CLOUDS, help="explicit target: the cloud")
    machine = parser.add_mutually_exclusive_group()
    machine.add_argument("--gpu", choices=catalog.GPU_CHOICES, help="GPU, resolved to the smallest type with it")
    machine.add_argument("--instance-type", help="explicit AWS instance type, e.g. g5.xlarge")
    machine.add_argument("--machine-type", help="explicit GCP machine type, e.g. g2-standard-4")
    parser.add_argument("--region", help="AWS or GCP region")
    parser.add_argument("--zone", help="GCP zone")
    parser.add_argument("--project", help="GCP project id (default: the application-default credentials' project)")
    parser.add_argument("--spot", action="store_true", help="check spot capacity: spot quota and spot prices")
    parser.add_argument("--json", action="store_true", help="print one JSON document (schema: JSON_SCHEMA)")
    parser.add_argument("--suggest", action="store_true",
                        help="list the regions (AWS) or zones (GCP) offering the GPU, by price, with quota")
    args = parser.parse_args(argv)
    explicit = [f"--{n.replace('_', '-')}" for n in ("cloud", "gpu", "instance_type", "machine_type", "region",
                                                     "zone", "project") if getattr(args, n)]
    if args.stack and explicit:
        parser.error(f"--stack reads the target from the stack; drop {', '.join(explicit)} "
                     "(or drop --stack to check an explicit target)")
    if not args.stack and not explicit:
        parser.error("give --stack NAME, or an explicit target such as --cloud aws --gpu a10g --region us-east-1")
    if (args.instance_type and cloud_of(args) == "gcp") or (args.machine_type and cloud_of(args) == "aws"):
        parser.error("--instance-type is for AWS and --machine-type for GCP")
    if (args.zone or args.project) and cloud_of(args) == "aws":
        parser.error("--zone and --project are GCP settings; AWS takes --region")
    return args


def diagnose(args: argparse.Namespace, aws: AwsApi | None = None, gcp: GcpApi | None = None) -> Report:
    """Run every check for the target the arguments name; never raises for a cloud's failure."""
    gcp = gcp or GcpApi()
    notes: list[Check] = []
    if args.stack:
        try:
            values, missing = stack_values(args.stack)
        except (OSError, yaml.YAMLError) as err:
            report = Report(Target(cloud="aws", stack=args.stack))
            report.add("config", FAIL, f"cannot read stacks/Pulumi.{args.stack}.yaml: {err}",
                       "fix the file's YAML (pulumi config set rewrites it cleanly)")
            return report
        if missing:
            notes.append(Check("config", WARN, missing))
        if args.spot:
            values[f"{config.PROJECT}:spot"] = "true"
    else:
        values = flag_values(args, gcp.adc_project)
    cloud = values.get(f"{config.PROJECT}:cloud", "aws").strip().lower()
    cloud = cloud if cloud in config.CLOUDS else "aws"
    target = Target(cloud=cloud, stack=args.stack, aws_profile=values.get("aws:profile"))
    report = Report(target, checks=notes)

    if cloud == "aws":
        try:
            aws = aws or AwsApi(target.aws_profile)
        except Exception as err:  # noqa: BLE001 - e.g. a profile that isn't in ~/.aws/config
            report.add("credentials", FAIL, f"cannot set up the AWS SDK ({type(err).__name__}: {err})",
                       "check AWS_PROFILE / aws:profile and ~/.aws/config")
            return report
        report.checks.append(resolve_target(values, args.stack, aws.instance_facts, target))
        check_aws(target, aws, report, args.suggest)
    else:
        check = resolve_target(values, args.stack, None, target)
        if check.status == FAIL and "gcp:project" in check.value and gcp.adc_project():
            check.fix = f"{check.fix}; your application-default credentials' project is {gcp.adc_project()}"
        report.checks.append(check)
        check_gcp(target, gcp, report, args.suggest)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = diagnose(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(as_json(report), indent=2) if args.json else as_text(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
