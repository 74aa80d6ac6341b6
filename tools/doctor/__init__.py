"""Preflight doctor: will `pulumi up` get its GPU? Checked in seconds, before anything is created.

    python -m tools.doctor --stack aws-g5                  # what `make up STACK=aws-g5` will ask for
    python -m tools.doctor --cloud aws --gpu l4 --region us-west-2 --spot
    python -m tools.doctor --cloud gcp --machine-type g2-standard-4 --zone us-east4-a --project my-proj
    python -m tools.doctor --stack aws-g4dn --suggest --json

The target is resolved by the stack's own `config.validate()`, so the doctor and `pulumi up` agree
on the machine, GPU and location. Then every check asks the cloud (boto3 or google-cloud-compute)
and prints one line: `ok`, `warn` or `FAIL`, the measured value, and for a FAIL the fix to run.
Exit status: 0 when nothing failed, 1 on any FAIL, 2 for a bad command line.

Every remote call has a timeout and few retries; no credentials or no network end in a FAIL
line, never a traceback or a hang. The doctor only reads: it changes nothing in either cloud.

The package, in the order a run goes through it:

    __main__.py  the command line: parse_args, diagnose (one run), main
    target.py    the target from a stack file (tools/presets.py) or flags, resolved by stacks/config.py
    aws.py       AwsApi (boto3 with timeouts), check(), suggest()
    gcp.py       GcpApi (google-cloud-compute with timeouts), check(), suggest()
    report.py    as_text, as_json and the JSON_SCHEMA of --json, generated from the models here

This file holds what they share: the result models, the timeouts, and `Runner`, which skips the
remaining checks once one has lost the network or the credentials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from stacks import catalog, config

OK, WARN, FAIL = "ok", "warn", "fail"
Status = Literal["ok", "warn", "fail"]
CloudName = Literal[config.CLOUDS]  # the same tuple `cloud:` is validated against
# Stable identifiers of the checks, in the order a run may add them (the --json schema lists them).
CheckName = Literal["config", "credentials", "offering", "gpu", "quota", "image", "spot-price", "compute-api",
                    "accelerator", "machine-type", "regional-quota", "global-quota",
                    "hardware", "availability", "spend",
                    "cluster", "gpu-nodes", "placement", "keda", "cert-manager", "ingress-class", "storage-class",
                    "namespace", "limit-range",
                    "metrics-server"]

# Seconds. Long enough for a slow link, short enough that a black-holed network fails fast.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 15


class _Model(BaseModel):
    # Unknown fields are refused; in the --json schema every field is listed as present (nullable ones
    # may be null), which is what the document promises.
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class Check(_Model):
    name: CheckName
    status: Status
    value: str  # what was measured
    fix: str | None = None  # for a FAIL (and some warnings): the command or step that fixes it


class Suggestion(_Model):
    location: str  # AWS region or GCP zone
    zones: list[str]  # AWS: the region's AZs that offer the type; GCP: the zone itself
    machine_type: str
    usd_per_hour: float | None
    price_source: str
    quota: Literal["available", "insufficient", "unknown"]
    quota_detail: str
    command: str | None = None  # Kubernetes: the `pulumi config set` that selects this GPU


def sort_suggestions(found: Iterable[Suggestion]) -> list[Suggestion]:
    """Cheapest first; among equal prices, where quota is known to be available first."""
    rank = {"available": 0, "unknown": 1, "insufficient": 2}
    return sorted(found, key=lambda s: (s.usd_per_hour if s.usd_per_hour is not None else math.inf,
                                        rank[s.quota], s.location))


class TargetDocument(_Model):
    """The target as the --json document shows it."""

    cloud: CloudName
    stack: str | None
    spot: bool
    region: str | None
    zone: str | None
    project: str | None
    machine_type: str | None
    gpu: str | None
    gpu_count: int | None
    gpu_memory_gb: int | None
    vcpus: int | None
    usd_per_hour: float | None


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
    replicas: int = 1  # the most instances it may run: maxReplicas, above 1 for a fleet
    namespace: str | None = None  # Hugging Face: hfNamespace (None: the token's user)
    cloud_type: str | None = None  # RunPod: SECURE or COMMUNITY
    kube: config.KubeSettings | None = None  # Kubernetes: namespace, nodeSelector, exposure and classes
    data_disk_gb: int = config.DEFAULT_DATA_DISK_GB  # Kubernetes: the model cache's claim
    min_replicas: int = 1  # Kubernetes: below maxReplicas, an autoscaler runs

    def describe(self) -> str:
        what = self.machine.describe() if self.machine else "(machine not resolved)"
        if self.cloud == "kubernetes":
            namespace = f", namespace {self.kube.namespace}" if self.kube else ""
            prefix = f"stack {self.stack}: " if self.stack else ""
            return (f"{prefix}KUBERNETES {what} in context {self.region or 'current-context'}{namespace}, "
                    f"up to {self.replicas} pod(s)")
        where = self.zone or self.region or "?"
        if self.project:
            where += f", project {self.project}"
        capacity = "spot" if self.spot else "on demand"
        prefix = f"stack {self.stack}: " if self.stack else ""
        fleet = f", a fleet of up to {self.replicas}" if self.replicas > 1 else ""
        return f"{prefix}{self.cloud.upper()} {what} in {where}, {capacity}{fleet}"

    def document(self) -> TargetDocument:
        machine = self.machine
        return TargetDocument(
            cloud=self.cloud, stack=self.stack, spot=self.spot, region=self.region, zone=self.zone,
            project=self.project, machine_type=machine.name if machine else None,
            gpu=machine.gpu.model if machine else None, gpu_count=machine.gpu_count if machine else None,
            gpu_memory_gb=machine.gpu.memory_gb if machine else None, vcpus=machine.vcpus if machine else None,
            usd_per_hour=machine.usd_per_hour if machine else None,
        )


class RemoteError(Exception):
    """A cloud call failed; `why` says what happened and `fix` what to do, both for people."""

    def __init__(self, why: str, fix: str | None = None, *, blocking: bool = False):
        super().__init__(why)
        self.why, self.fix = why, fix
        self.blocking = blocking  # no credentials or no network: later calls would fail the same way


@dataclass
class Report:
    target: Target
    checks: list[Check] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, name: str, status: str, value: str, fix: str | None = None) -> Check:
        check = Check(name=name, status=status, value=value, fix=fix)
        self.checks.append(check)
        return check

    def add_error(self, name: str, err: RemoteError) -> Check:
        """A check that a failed cloud call ended: a FAIL line with the call's own explanation and fix."""
        return self.add(name, FAIL, err.why, err.fix)


class Runner:
    """Runs a cloud's checks one by one. A failed cloud call becomes that check's FAIL line; once one has
    lost the network or the credentials (`RemoteError.blocking`), the rest are skipped, since each would
    only time out the same way."""

    def __init__(self, report: Report, not_found: type[BaseException] | tuple[type[BaseException], ...] = ()):
        self.report = report
        self.not_found = not_found  # the SDK's "no such thing" error, answered by `missing`
        self.blocked = False

    def run(self, name: str, check: Callable[[], Any],
            missing: Callable[[], tuple[str, str]] | None = None) -> bool:
        """True when the check ran to its end (whatever it reported)."""
        if self.blocked:
            return False
        try:
            check()
            return True
        except RemoteError as err:
            self.report.add_error(name, err)
            self.blocked = err.blocking
        except Exception as err:
            if missing is None or not self.not_found or not isinstance(err, self.not_found):
                raise
            why, fix = missing()
            self.report.add(name, FAIL, why, fix)
        return False
