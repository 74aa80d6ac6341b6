"""AWS: the checks (`check`) and the regions that offer the type (`suggest`), through boto3.

`AwsApi` wraps every call with a timeout and turns each failure into a RemoteError that says what
to do. The same three names, `check`, `suggest` and an Api class, stand in gcp.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from stacks import catalog, config
from tools.doctor import (
    CONNECT_TIMEOUT_S,
    FAIL,
    OK,
    READ_TIMEOUT_S,
    WARN,
    RemoteError,
    Report,
    Runner,
    Suggestion,
    Target,
    sort_suggestions,
)

# --suggest fans out over regions in parallel; the bound keeps it to a few seconds.
MAX_SUGGEST_REGIONS = 20
SUGGEST_WORKERS = 8

# Regions with the deepest GPU capacity, asked first when the account has more than the bound.
GPU_REGIONS = ("us-east-1", "us-east-2", "us-west-2", "us-west-1", "ca-central-1", "eu-west-1", "eu-west-2",
               "eu-central-1", "eu-north-1", "eu-west-3", "ap-northeast-1", "ap-northeast-2",
               "ap-southeast-1", "ap-southeast-2", "ap-south-1", "sa-east-1")


def quota_fix(code: str, desired: int, region: str) -> str:
    """The command that asks for more of an EC2 quota."""
    return (f"aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
            f"--desired-value {desired} --region {region}")


# --- the SDK, with timeouts --------------------------------------------------------------------


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

    def call(self, service: str, region: str, operation: str, **params) -> Any:
        """One API call; any failure becomes a RemoteError that says what to do about it."""
        return self.call_with(lambda: getattr(self.client(service, region), operation)(**params), service, region)

    def call_with(self, request, service: str, region: str) -> Any:
        """Run `request` (an SDK call, or the next page of one); any failure becomes a RemoteError."""
        from botocore import exceptions as bx

        try:
            return request()
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

    def pages(self, service: str, region: str, operation: str, max_pages: int, **params) -> Iterator[dict]:
        """The pages of a paged call through boto3's own paginator, at most `max_pages` of them; a failure on
        any page becomes a RemoteError as in `call`."""
        pages = iter(self.call(service, region, "get_paginator", operation_name=operation)
                     .paginate(**params, PaginationConfig={"MaxPages": max_pages}))
        while True:
            page = self.call_with(lambda: next(pages, None), service, region)
            if page is None:
                return
            yield page

    # -- look-ups shared by the checks and --suggest

    def offered_zones(self, instance_type: str, region: str) -> list[str]:
        found = self.call("ec2", region, "describe_instance_type_offerings", LocationType="availability-zone",
                          Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        return sorted(o["Location"] for o in found["InstanceTypeOfferings"])

    def describe_type(self, instance_type: str, region: str) -> catalog.InstanceFacts:
        """EC2's own description of a type the region offers."""
        (record,) = self.call("ec2", region, "describe_instance_types", InstanceTypes=[instance_type])["InstanceTypes"]
        return catalog.instance_facts(record)

    def instance_facts(self, instance_type: str, region: str) -> catalog.InstanceFacts | None:
        """EC2's own description of the type, or None when the region does not sell it."""
        if not self.offered_zones(instance_type, region):
            return None
        return self.describe_type(instance_type, region)

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
                            StartTime=datetime.now(UTC), MaxResults=100)["SpotPriceHistory"]
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
        # A handful of pages covers every region.
        for page in self.pages("pricing", "us-east-1", "get_products", 5, ServiceCode="AmazonEC2",
                               Filters=filters, MaxResults=100):
            for raw in page.get("PriceList", []):
                product = json.loads(raw) if isinstance(raw, str) else raw
                region = product.get("product", {}).get("attributes", {}).get("regionCode")
                for term in product.get("terms", {}).get("OnDemand", {}).values():
                    for dimension in term.get("priceDimensions", {}).values():
                        usd = float(dimension.get("pricePerUnit", {}).get("USD", 0) or 0)
                        if region and usd > 0:
                            prices[region] = usd
        return prices

    def vcpus_in_use(self, quota_class: str, spot: bool, region: str) -> int:
        """vCPUs of running or pending instances that count against the same quota."""
        used, unsized = 0, []
        for page in self.pages("ec2", region, "describe_instances", 10, MaxResults=1000, Filters=[
                {"Name": "instance-state-name", "Values": ["pending", "running"]}]):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    is_spot = instance.get("InstanceLifecycle") == "spot"
                    if catalog.aws_quota_class(instance["InstanceType"]) != quota_class or is_spot != spot:
                        continue
                    cpu = instance.get("CpuOptions")
                    if cpu:
                        used += cpu["CoreCount"] * cpu.get("ThreadsPerCore", 1)
                    else:
                        unsized.append(instance["InstanceType"])
        if unsized:  # CpuOptions is optional in the answer: size those by their type's default vCPUs
            types = sorted(set(unsized))[:100]
            records = self.call("ec2", region, "describe_instance_types", InstanceTypes=types)["InstanceTypes"]
            default = {r["InstanceType"]: r["VCpuInfo"]["DefaultVCpus"] for r in records}
            used += sum(default.get(t, 0) for t in unsized)
        return used


def _partition(region: str) -> str:
    return "cn" if region.startswith("cn-") else "gov" if "-gov-" in region else "iso" if "-iso" in region else "aws"


def regions_offering(api: AwsApi, instance_type: str, home: str) -> dict[str, list[str]]:
    """Enabled regions (at most MAX_SUGGEST_REGIONS, `home` first) -> the AZs offering the type."""
    listed = [r["RegionName"] for r in api.call("ec2", home, "describe_regions")["Regions"]
              if _partition(r["RegionName"]) == _partition(home)]

    def priority(region: str) -> tuple:
        known = GPU_REGIONS.index(region) if region in GPU_REGIONS else len(GPU_REGIONS)
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


# --- the checks --------------------------------------------------------------------------------


def check(target: Target, api: AwsApi, report: Report, with_suggest: bool) -> None:
    """The checks in order: credentials, offering, gpu, quota, image, spot-price (with spot).
    Then, with --suggest, the regions that offer the type."""
    region, machine = target.region or config.DEFAULT_AWS_REGION, target.machine
    try:
        who = api.call("sts", region, "get_caller_identity")
        report.add("credentials", OK, f"account {who['Account']} as {who['Arn']}")
    except RemoteError as err:
        report.add_error("credentials", err)
        return  # every other check needs a working identity
    if machine is None:
        return
    name = machine.name
    runner = Runner(report)
    offered: list[str] = []

    def offering() -> None:
        offered.extend(api.offered_zones(name, region))
        if offered:
            report.add("offering", OK, f"{region} offers {name} in {len(offered)} AZs: {', '.join(offered)}")
            return
        elsewhere = regions_offering(api, name, region)
        report.add("offering", FAIL, f"{region} does not offer {name}",
                   f"pulumi config set aws:region {next(iter(elsewhere))} "
                   f"(regions that offer {name}: {', '.join(elsewhere)})" if elsewhere
                   else f"pick another type: python -m tools.doctor --cloud aws --gpu {machine.gpu.key} --suggest")

    if not runner.run("offering", offering):
        return
    vcpus = machine.vcpus

    def gpu() -> None:
        nonlocal vcpus
        facts = api.describe_type(name, region)
        vcpus = facts.vcpus
        reason = catalog.why_unfit(facts)
        if reason:
            refusal = catalog.refusal("aws", name, reason, facts.vcpus).refusal
            report.add("gpu", FAIL, f"{name}: {reason}", refusal.fix)
            return
        best = max(facts.gpus, key=lambda g: g.memory_mib)
        report.add("gpu", OK, f"{best.count}x {best.manufacturer} {best.model}, {best.memory_mib} MiB each "
                              f"(SDXL needs {catalog.SDXL_MIN_GPU_MEMORY_GB} GB); {facts.vcpus} vCPUs")

    if offered:
        runner.run("gpu", gpu)
    runner.run("quota", lambda: _check_quota(api, report, name, vcpus, region, target.spot, target.replicas))

    def image() -> None:
        parameter = catalog.AWS_DLAMI_SSM_PARAMETER
        try:
            found = api.call("ssm", region, "get_parameter", Name=parameter)["Parameter"]
        except RemoteError as err:
            if "ParameterNotFound" in err.why:
                raise RemoteError(f"the GPU AMI is not published in {region} ({parameter})",
                                  "pick a region where it is, e.g. pulumi config set aws:region us-east-1") from err
            raise
        report.add("image", OK, f"{found['Value']} (Deep Learning Base OSS NVIDIA driver AMI, Ubuntu 24.04)")

    runner.run("image", image)
    if target.spot and offered:
        runner.run("spot-price", lambda: _check_spot_price(api, report, name, region, offered, machine))
    if with_suggest and not runner.blocked:
        report.suggestions = suggest(target, api, vcpus)


def _check_quota(api: AwsApi, report: Report, name: str, vcpus: int, region: str, spot: bool,
                 replicas: int = 1) -> None:
    """The vCPU quota the type counts against, for one instance or, for a fleet, `replicas` of them (maxReplicas:
    a spot fleet's other types are the same size, catalog.aws_spot_mix)."""
    quota_class, quota = catalog.aws_quota_class(name), catalog.aws_quota(name, spot)
    what = name if replicas == 1 else f"maxReplicas {replicas} x {name} ({vcpus} vCPUs each)"
    vcpus *= replicas
    if quota_class is None or quota is None:
        report.add("quota", WARN, f"{name} counts against no GPU quota the doctor knows; not checked")
        return
    code, title = quota.code, quota.name
    limit, source = api.quota(code, region)
    try:
        used, used_note = api.vcpus_in_use(quota_class, spot, region), ""
    except RemoteError as err:
        used, used_note = 0, f"; vCPUs in use unknown ({err.why})"
    needed = used + vcpus
    fix = quota_fix(code, needed, region)
    fix_if_refused = f"if launching fails with VcpuLimitExceeded: {fix}"
    label = f"{title} ({code}) in {region}"
    if limit is None:
        report.add("quota", WARN, f"{label}: {source}; {what} needs {vcpus} vCPUs", fix_if_refused)
        return
    measured = (f"{label}: {limit:g} vCPUs ({source}), {used} in use{used_note}, "
                f"{what} needs {vcpus}")
    # A rollout at maxReplicas launches replacements before the old instances leave (instance refresh).
    rollout = used + vcpus * catalog.AWS_ROLLOUT_MAX_HEALTHY_PERCENT // 100 if replicas > 1 else needed
    if limit < needed:
        report.add("quota", FAIL, measured, fix)
    elif limit < rollout:
        report.add("quota", WARN, f"{measured}; a rollout at maxReplicas starts replacements first "
                   f"({catalog.AWS_ROLLOUT_MAX_HEALTHY_PERCENT}% of the fleet) and needs {rollout - used}: it would "
                   "stall on quota until some instances leave (capacity never drops)",
                   quota_fix(code, rollout, region))
    elif source != "applied":
        # Default values are what AWS grants eventually, not what a new account has (often 0).
        report.add("quota", WARN, measured, fix_if_refused)
    else:
        report.add("quota", OK, measured)


def _check_spot_price(api: AwsApi, report: Report, name: str, region: str, offered: list[str],
                      machine: catalog.Offer) -> None:
    prices = {z: p for z, p in api.spot_prices(name, region).items() if z in offered}
    if not prices:
        report.add("spot-price", WARN, f"no current spot price for {name} in {region}: spot capacity may be "
                                       "unavailable there", "python -m tools.doctor --stack ... --suggest")
        return
    on_demand = f"; on demand ~${machine.usd_per_hour:.3f}/h" if machine.usd_per_hour else ""
    listing = ", ".join(f"{z} ${p:.4f}/h" for z, p in prices.items())
    report.add("spot-price", OK, f"{listing}{on_demand}")


# --- --suggest ---------------------------------------------------------------------------------


def suggest(target: Target, api: AwsApi, vcpus: int | None = None) -> list[Suggestion]:
    """The regions that offer the target's type, cheapest first, with their quota.

    `vcpus` is what the type needs, as EC2 describes it; by default the catalog's figure.
    """
    machine, spot = target.machine, target.spot
    home = target.region or config.DEFAULT_AWS_REGION
    vcpus = machine.vcpus if vcpus is None else vcpus
    try:
        regions = regions_offering(api, machine.name, home)
    except RemoteError:
        return []
    quota = catalog.aws_quota(machine.name, spot)
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
        state, detail = "unknown", "no GPU quota class"
        if quota is not None:
            code = quota.code
            try:
                limit, how = api.quota(code, region)
            except RemoteError as err:
                limit, how = None, err.why
            if limit is None:
                detail = f"{code}: {how}"
            else:
                state = "available" if limit >= vcpus and how == "applied" else (
                    "insufficient" if limit < vcpus else "unknown")
                detail = f"{code}: {limit:g} vCPUs{'' if how == 'applied' else ' (AWS default)'}"
        return Suggestion(location=region, zones=zones, machine_type=machine.name, usd_per_hour=price,
                          price_source=price_source, quota=state, quota_detail=detail)

    with ThreadPoolExecutor(SUGGEST_WORKERS) as pool:
        found = list(pool.map(one, regions))
    return sort_suggestions(found)
