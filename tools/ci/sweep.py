"""The reaper's last sweep: GPU instances whose ttl tag has passed and whose pr-<n> stack no longer exists.

A stack removed by hand with `pulumi stack rm --force`, or state lost with a deleted bucket prefix, leaves its
instance billing with nothing to destroy it. Every resource a CI stack creates carries its stack and ttl
(AWS tags `sdxl-endpoint:stack` / `sdxl-endpoint:ttl`; GCP labels `sdxl-endpoint-stack` / `sdxl-endpoint-ttl`,
the ttl in catalog.GCP_TTL_LABEL_FORMAT). The sweep reports each such instance, and terminates it only
when asked to (reaper.yml: the repository variable REAPER_TERMINATE_ORPHANS). Only `pr-<n>` instances are
ever considered: production's are out of reach here, and out of the review role's too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from stacks import catalog
from stacks.config import aws_tag_key, gcp_label_key, parse_rfc3339
from tools.ci import Clock, _log, _utcnow, presets

AWS_STACK_TAG, AWS_TTL_TAG = aws_tag_key("stack"), aws_tag_key("ttl")
GCP_STACK_LABEL, GCP_TTL_LABEL = gcp_label_key("stack"), gcp_label_key("ttl")
# Instances that still bill (running) or hold disks (stopped); terminated ones are gone within the hour.
AWS_LIVE_STATES = ["pending", "running", "stopping", "stopped"]
# Compute Engine's endpoint and credentials (None: Google's, and Application Default Credentials); tests
# point them at a loopback stand-in.
GCP_API_ENDPOINT: str | None = None
GCP_CREDENTIALS = None


@dataclass(frozen=True)
class Orphan:
    cloud: str
    where: str  # AWS region, or GCP project/zone
    instance: str
    stack: str
    expired_at: datetime

    def __str__(self) -> str:
        return f"{self.cloud}:{self.where}:{self.instance}({self.stack})"


@dataclass
class Swept:
    orphans: list[Orphan] = field(default_factory=list)
    terminated: list[Orphan] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # clouds that could not be searched, and why
    failed: list[str] = field(default_factory=list)  # orphans whose terminate failed, and why

    def outputs(self) -> dict[str, str]:
        return {"orphans": " ".join(map(str, self.orphans)), "terminated": " ".join(map(str, self.terminated)),
                "skipped": "; ".join(self.skipped), "failed": "; ".join(self.failed)}


def preset_regions() -> list[str]:
    """The AWS regions the presets deploy to: where review stacks run."""
    regions = {presets.read(name).config.get("aws:region") for name in presets.names()}
    return sorted(r for r in regions if isinstance(r, str) and r)


def _orphan(cloud: str, where: str, instance: str, stack: str | None, expiry: datetime | None,
            known: set[str], now: datetime) -> Orphan | None:
    if not stack or not presets.EPHEMERAL_NAME.match(stack) or stack in known or expiry is None or expiry > now:
        return None
    return Orphan(cloud, where, instance, stack, expiry)


def aws_orphans(region: str, known: set[str], now: datetime, client=None) -> list[Orphan]:
    import boto3

    ec2 = client or boto3.client("ec2", region_name=region)
    found = []
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": "tag-key", "Values": [AWS_TTL_TAG]}, {"Name": "instance-state-name", "Values": AWS_LIVE_STATES}])
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                orphan = _orphan("aws", region, instance["InstanceId"], tags.get(AWS_STACK_TAG),
                                 parse_rfc3339(tags.get(AWS_TTL_TAG, "")), known, now)
                if orphan:
                    found.append(orphan)
    return found


def _gcp_ttl(label: str | None) -> datetime | None:
    try:
        return datetime.strptime(label or "", catalog.GCP_TTL_LABEL_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _gcp_client():
    from google.cloud import compute_v1

    options = {"api_endpoint": GCP_API_ENDPOINT} if GCP_API_ENDPOINT else None
    return compute_v1.InstancesClient(credentials=GCP_CREDENTIALS, transport="rest", client_options=options)


def gcp_orphans(project: str, known: set[str], now: datetime, client=None) -> list[Orphan]:
    from google.cloud import compute_v1

    client = client or _gcp_client()
    found = []
    request = compute_v1.AggregatedListInstancesRequest(project=project)
    for scope, listed in client.aggregated_list(request=request):
        zone = scope.removeprefix("zones/")
        for instance in listed.instances:
            labels = dict(instance.labels)
            if GCP_TTL_LABEL not in labels:
                continue
            orphan = _orphan("gcp", f"{project}/{zone}", instance.name, labels.get(GCP_STACK_LABEL),
                             _gcp_ttl(labels.get(GCP_TTL_LABEL)), known, now)
            if orphan:
                found.append(orphan)
    return found


def terminate_orphan(orphan: Orphan, aws_client=None, gcp_client=None) -> None:
    if orphan.cloud == "aws":
        import boto3

        ec2 = aws_client or boto3.client("ec2", region_name=orphan.where)
        ec2.terminate_instances(InstanceIds=[orphan.instance])
    else:
        project, zone = orphan.where.split("/", 1)
        (gcp_client or _gcp_client()).delete(project=project, zone=zone, instance=orphan.instance)


def sweep(aws_regions: Iterable[str] = (), gcp_projects: Iterable[str] = (), terminate: bool = False,
          now: Clock = _utcnow, known: set[str] | None = None) -> Swept:
    """Find (and with terminate=True, terminate) the orphans in these regions and projects."""
    from tools.ci import reaper

    moment = now()
    known = set(reaper._summaries()) if known is None else known
    result = Swept()
    searches = [("aws", region, aws_orphans) for region in aws_regions]
    searches += [("gcp", project, gcp_orphans) for project in gcp_projects]
    for cloud, where, search in searches:
        try:
            result.orphans += search(where, known, moment)
        except Exception as err:  # noqa: BLE001 - one cloud's failure must not hide the other's orphans
            result.skipped.append(f"{cloud} {where}: {type(err).__name__}: {err}")
            _log(f"sweep: {cloud} {where} not searched: {err}")
    for orphan in result.orphans:
        age = moment - orphan.expired_at
        _log(f"sweep: orphan {orphan}: ttl passed {int(age.total_seconds() // 60)} min ago and no stack knows it")
        if terminate:
            try:
                terminate_orphan(orphan)
            except Exception as err:  # noqa: BLE001 - one refusal must not keep the other orphans running
                result.failed.append(f"{orphan}: {type(err).__name__}: {err}")
                _log(f"sweep: could not terminate {orphan}: {err}")
                continue
            result.terminated.append(orphan)
            _log(f"sweep: terminated {orphan}")
    if result.orphans and not terminate:
        _log("sweep: reported only; set the repository variable REAPER_TERMINATE_ORPHANS=true to terminate them")
    return result
