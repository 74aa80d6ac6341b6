"""The stack's config: one pure `validate(values) -> Settings`, and a thin `load()` that reads the engine's.

`validate` turns plain values (as the engine passes them, or as a stack file holds them) into one
immutable `Settings`, or raises one `ConfigError` that names every bad key at once, what is allowed,
and the nearest fix. It touches no Pulumi runtime, so the preflight doctor calls it directly. Defaults
live here too: the CLI applies Pulumi.yaml's defaults, but a mocked test run sees only what it sets.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from stacks import catalog

PROJECT = "sdxl-endpoint"

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
# The root disk holds only the OS now: 0 (the default) leaves it at the GPU image's own size (the AMI's
# snapshot, the DLVM image's disk), which is never too small to boot; a size below that fails at launch.
DEFAULT_DISK_GB = 0
MIN_DISK_GB = 60
MAX_DISK_GB = 16384
# The data disk that survives instance replacement: SDXL's fp16 weights (~7 GB), Docker's data root (the
# server image with torch's CUDA 13 wheels, ~9 GB, its build cache as much again, and a second copy while
# a changed bundle builds), the torch.compile cache and Caddy's certificates.
DEFAULT_DATA_DISK_GB = 100
MIN_DATA_DISK_GB = 50
DEFAULT_IDLE_STOP_MINUTES = 30
MAX_REPLICAS = 64  # a sanity bound: each replica is a GPU billing by the hour
MAX_TARGET_REQUESTS_PER_HOUR = 100_000  # far above any single GPU's SDXL throughput
DEFAULT_AWS_REGION = "us-east-1"
DEFAULT_GCP_ZONE = "us-central1-a"
RUNPOD_ANY_REGION = "any"  # the `region` output of a RunPod stack: RunPod places the pod where the GPU is free
CLOUDS = (
    "aws",
    "gcp",
    "huggingface",
    "runpod",
    "kubernetes",
)
HOSTED_CLOUDS = ("huggingface", "runpod")  # a provider's service runs the container: no VM, zone or cluster of ours
SECRET_KEYS = ("apiToken", "hfToken", "imagePullSecret")

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
_AWS_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
_GCP_ZONE_RE = re.compile(r"^[a-z]+-[a-z]+\d-[a-z]$")
_HF_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes namespace or object name
# A label key: an optional DNS-subdomain prefix and a name (kubernetes.io, "Syntax and character set").
_LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                           r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# A user-managed service account's email: account id (6-30) @ project id (6-30).
_SERVICE_ACCOUNT_EMAIL_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]"
                                       r"\.iam\.gserviceaccount\.com$")
# An IAM managed policy's ARN (any partition, a customer's or AWS's own, with an optional path).
_POLICY_ARN_RE = re.compile(r"^arn:aws(-[a-z]+)*:iam::([0-9]{12}|aws):policy/"
                            r"([A-Za-z0-9+=,.@_-]+/)*[A-Za-z0-9+=,.@_-]{1,128}$")

# Describes a machine type the catalog does not list, from the cloud's own data: (name, region) -> facts,
# or None when the region does not sell it. A target module that can look types up provides one.
MachineLookup = Callable[[str, str], "catalog.InstanceFacts | None"]


class ConfigError(ValueError):
    """Raised once, listing every problem in the stack's config. `problems` keeps them as data (each with its fix),
    so a caller that words the header its own way (the doctor) need not cut the text apart."""

    def __init__(self, problems: Sequence[Problem], stack: str):
        self.problems, self.stack = tuple(problems), stack
        count = f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}"
        super().__init__(f"Stack '{stack}' has {count} in its config (stacks/Pulumi.{stack}.yaml):\n"
                         + render_problems(self.problems))


@dataclass(frozen=True)
class Settings:
    project: str
    stack: str
    cloud: str
    machine: catalog.Offer  # the resolved instance type (AWS) or machine type (GCP)
    spot: bool
    disk_gb: int | None  # the root disk; None: the image's own size
    model: str
    image: str | None  # a pullable image; None: the VM targets build this checkout's server
    api_token: Any | None  # a secret pulumi.Output[str] once load() has read it; None means "generate one"
    hf_token: Any | None  # a secret pulumi.Output[str], or None
    cors_origins: tuple[str, ...]
    allowed_cidrs: tuple[str, ...]
    domain: str | None
    idle_stop_minutes: int
    ssh: bool
    ttl: str | None  # RFC 3339 expiry, for the reaper
    region: str
    zone: str | None = None  # GCP only
    gcp_project: str | None = None
    min_replicas: int = 1
    max_replicas: int = 1
    data_disk_gb: int = DEFAULT_DATA_DISK_GB
    target_requests_per_hour: int | None = None  # fleets: per replica; None: from the catalog's GPU estimate
    hf_namespace: str | None = None  # Hugging Face: the user or organisation billed; None: the token's user
    runpod_cloud_type: str = catalog.RUNPOD_DEFAULT_CLOUD_TYPE  # RunPod: SECURE or COMMUNITY
    kube: KubeSettings | None = None  # Kubernetes only
    permissions_boundary: str | None = None  # AWS: the policy ARN bounding the stack's IAM roles (CI review)
    gcp_service_account: str | None = None  # GCP: an existing VM service account (CI review); None: one per stack

    @property
    def fleet(self) -> bool:
        """More than one replica may run: the target scales out behind its load balancer."""
        return self.max_replicas > 1

    @property
    def ownership(self) -> dict[str, str]:
        """What every resource is marked with: its stack, its project and, for CI stacks, its expiry.
        Each target writes these in its cloud's own form (AWS tags, GCP labels)."""
        marks = {"stack": self.stack, "project": self.project}
        if self.ttl:
            marks["ttl"] = self.ttl
        return marks

    @property
    def tags(self) -> dict[str, str]:
        """The ownership marks as AWS tags: `sdxl-endpoint:<mark>` (aws_tag_key)."""
        return {aws_tag_key(mark): value for mark, value in self.ownership.items()}


EXPOSURES = ("ingress", "loadBalancer", "internal")
NAMESPACE_MAX = 63  # a namespace name is a DNS label


@dataclass(frozen=True)
class KubeSettings:
    """Where in the cluster, and how it is reached (cloud: kubernetes)."""

    context: str | None  # the kubeconfig context; None: the current one
    namespace: str
    create_namespace: bool  # the stack owns the namespace (namespace left unset)
    node_selector: dict[str, str]
    exposure: str  # one of EXPOSURES
    ingress_class: str | None
    cert_issuer: str | None  # a cert-manager ClusterIssuer
    storage_class: str | None  # None: the cluster's default
    keda_prometheus_url: str | None  # set: scale on the queue through KEDA; unset: on CPU
    image_pull_secret: Any | None = None  # a secret pulumi.Output[str] (a .dockerconfigjson) once load() read it


# --- problems: collected, then reported once ------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    headline: str  # "<key> = '<value>': why"
    fix: str
    details: tuple[str, ...] = ()  # lines between the headline and the fix (e.g. fitting alternatives)

    def render(self) -> str:
        return "".join([self.headline, *(f"\n    {line}" for line in self.details), f"\n      fix: {self.fix}"])


@dataclass
class Problems:
    items: list[Problem] = field(default_factory=list)

    def add(self, key: str, got: object, why: str, fix: str) -> None:
        shown = f" = {got!r}" if got is not None else ""
        self.items.append(Problem(f"{key}{shown}: {why}", fix))

    def add_refusal(self, refusal: catalog.Refusal) -> None:
        self.items.append(Problem(refusal.headline, refusal.fix, refusal.details))

    def raise_if_any(self, stack: str) -> None:
        if self.items:
            raise ConfigError(self.items, stack)


def render_problems(problems: Sequence[Problem]) -> str:
    """The problems as a bulleted list, each with its fix: the body of a ConfigError, and the doctor's."""
    return "\n".join(f"  - {item.render()}" for item in problems)


def _set(key: str, value: str) -> str:
    return f"pulumi config set {key} {value}"


def _closest(value: str, allowed: Collection[str]) -> str | None:
    match = difflib.get_close_matches(value.lower(), list(allowed), n=1, cutoff=0.5)
    return match[0] if match else None


# --- the raw values, typed by pydantic -------------------------------------------------------------


def _bool_text(value: object) -> object:
    # The CLI stores booleans as "true"/"false"; anything else ("yes", "1") stays a string and fails.
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower(), value)
    return value


def _list_text(value: object) -> object:
    # A YAML list reaches the program as JSON; `pulumi config set corsOrigins "a, b"` as plain text.
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = [part.strip() for part in value.split(",") if part.strip()]
    return [parsed] if isinstance(parsed, str) else parsed


def _root_disk_size(value: int) -> int:
    if value != DEFAULT_DISK_GB and not MIN_DISK_GB <= value <= MAX_DISK_GB:
        raise ValueError("out of range")
    return value


Flag = Annotated[bool, BeforeValidator(_bool_text), Field(strict=True)]
TextList = Annotated[list[str], BeforeValidator(_list_text)]


class RawConfig(BaseModel):
    """The project's keys (one field each, as Pulumi.yaml declares them), parsed into types; the checks
    that need the catalog come after."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: str = "aws"
    gpu: str | None = None
    instanceType: str | None = None  # noqa: N815 - the config key's own spelling
    machineType: str | None = None  # noqa: N815
    spot: Flag = False
    ssh: Flag = False
    diskGb: Annotated[int, AfterValidator(_root_disk_size)] = DEFAULT_DISK_GB  # noqa: N815
    dataDiskGb: int = Field(DEFAULT_DATA_DISK_GB, ge=MIN_DATA_DISK_GB, le=MAX_DISK_GB)  # noqa: N815
    idleStopMinutes: int = Field(DEFAULT_IDLE_STOP_MINUTES, ge=0)  # noqa: N815
    model: str = Field(DEFAULT_MODEL, pattern=_HUB_ID_RE.pattern)
    image: str | None = Field(None, pattern=_IMAGE_RE.pattern)
    apiToken: str | None = None  # noqa: N815
    hfToken: str | None = None  # noqa: N815
    corsOrigins: TextList = Field(default_factory=lambda: ["*"])  # noqa: N815
    allowedCidrs: TextList = Field(default_factory=lambda: ["0.0.0.0/0"], min_length=1)  # noqa: N815
    domain: str | None = None
    ttl: str | None = None
    minReplicas: int = Field(1, ge=0, le=MAX_REPLICAS)  # noqa: N815
    maxReplicas: int = Field(1, ge=1, le=MAX_REPLICAS)  # noqa: N815
    targetRequestsPerHour: int = Field(0, ge=0, le=MAX_TARGET_REQUESTS_PER_HOUR)  # noqa: N815
    hfHardware: str | None = None  # noqa: N815
    hfNamespace: str | None = Field(None, pattern=_HF_NAMESPACE_RE.pattern)  # noqa: N815
    runpodGpuType: str | None = None  # noqa: N815
    runpodCloudType: str = catalog.RUNPOD_DEFAULT_CLOUD_TYPE  # noqa: N815
    kubeContext: str | None = None  # noqa: N815
    namespace: str | None = Field(None, pattern=_DNS_LABEL_RE.pattern)
    # label=value items: Pulumi's project config has no map type, and a list of pairs reads as a selector does.
    nodeSelector: TextList = Field(default_factory=list)  # noqa: N815
    exposure: str | None = None
    ingressClass: str | None = None  # noqa: N815
    certIssuer: str | None = None  # noqa: N815
    storageClass: str | None = None  # noqa: N815
    imagePullSecret: str | None = None  # noqa: N815
    kedaPrometheusUrl: str | None = Field(None, pattern=r"^https?://[^\s/]+")  # noqa: N815
    # CI's review stacks: the managed policy every IAM role of the stack is bounded by (ci/bootstrap/aws-oidc.sh).
    permissionsBoundary: str | None = Field(None, pattern=_POLICY_ARN_RE.pattern)  # noqa: N815
    # CI's review stacks: the VM service account the bootstrap made, used instead of one per stack (gcp-wif.sh).
    gcpServiceAccount: str | None = Field(None, pattern=_SERVICE_ACCOUNT_EMAIL_RE.pattern)  # noqa: N815


# Every project key, as declared in Pulumi.yaml; anything else under `sdxl-endpoint:` is a typo.
KNOWN_KEYS = tuple(RawConfig.model_fields)

# What a value of the wrong type or range is told, and how to fix it.
_TYPE_HELP: dict[str, tuple[str, str]] = {
    "spot": ("must be true or false", _set("spot", "false")),
    "ssh": ("must be true or false", _set("ssh", "false")),
    "diskGb": (f"must be a whole number of GB from {MIN_DISK_GB} to {MAX_DISK_GB}, or 0 for the GPU image's own "
               "root size (the model and caches live on the data disk, dataDiskGb)", "pulumi config rm diskGb"),
    "dataDiskGb": (f"must be a whole number of GB from {MIN_DATA_DISK_GB} to {MAX_DISK_GB}: SDXL's weights, the "
                   "server image with its build cache and the compile cache need the room",
                   _set("dataDiskGb", str(DEFAULT_DATA_DISK_GB))),
    "idleStopMinutes": ("must be a whole number of minutes, 0 or more (0 never stops the instance for idleness)",
                        _set("idleStopMinutes", str(DEFAULT_IDLE_STOP_MINUTES))),
    "model": ("must be a Hugging Face Hub id, organisation/name", _set("model", DEFAULT_MODEL)),
    "image": ("must be a container image reference, e.g. ghcr.io/org/name:tag", "pulumi config rm image"),
    "minReplicas": (f"must be a whole number from 0 to {MAX_REPLICAS}", _set("minReplicas", "1")),
    "maxReplicas": (f"must be a whole number from 1 to {MAX_REPLICAS}", _set("maxReplicas", "1")),
    "corsOrigins": ("must be a list of origins", "pulumi config set --path 'corsOrigins[0]' https://app.example.com"),
    "allowedCidrs": ("must be a non-empty list of CIDRs", "pulumi config set --path 'allowedCidrs[0]' 0.0.0.0/0"),
    "targetRequestsPerHour": (f"must be a whole number of requests per replica and hour, 0 to "
                              f"{MAX_TARGET_REQUESTS_PER_HOUR} (0: from the GPU's estimated throughput)",
                              "pulumi config rm targetRequestsPerHour"),
    "hfNamespace": ("must be a Hugging Face user or organisation name", "pulumi config rm hfNamespace"),
    "namespace": ("must be a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)",
                  "pulumi config rm namespace (the stack then creates sdxl-<stack>)"),
    "nodeSelector": ("must be a list of node label=value pairs",
                     "pulumi config set --path 'nodeSelector[0]' cloud.google.com/gke-accelerator=nvidia-l4"),
    "kedaPrometheusUrl": ("must be the http(s) URL of the Prometheus server KEDA queries",
                          _set("kedaPrometheusUrl", "http://prometheus-server.monitoring.svc:80")),
    "permissionsBoundary": ("must be an IAM policy ARN, arn:aws:iam::<account>:policy/<name>",
                            "pulumi config rm permissionsBoundary (CI sets it for review stacks)"),
    "gcpServiceAccount": ("must be a service account email, <name>@<project>.iam.gserviceaccount.com",
                          "pulumi config rm gcpServiceAccount (the stack then creates its own)"),
}


def _parse_raw(project_values: dict[str, object], problems: Problems) -> RawConfig:
    """The typed values; each key that fails is reported and replaced by its default."""
    try:
        return RawConfig.model_validate(project_values)
    except ValidationError as err:
        # One problem per key, however many of its list items failed.
        failed = dict.fromkeys(str(e["loc"][0]) for e in err.errors() if e["loc"])
        for key in failed:
            if key not in RawConfig.model_fields:
                guess = _closest(key, [k.lower() for k in KNOWN_KEYS])
                proper = next((k for k in KNOWN_KEYS if k.lower() == guess), None)
                problems.add(key, None, f"unknown key. Known keys: {', '.join(KNOWN_KEYS)}",
                             f"pulumi config mv {key} {proper}" if proper else f"pulumi config rm {key}")
            else:
                why, fix = _TYPE_HELP.get(key, ("must be text", f"pulumi config rm {key}"))
                problems.add(key, project_values.get(key), why, fix)
        return RawConfig.model_validate({k: v for k, v in project_values.items() if k not in failed})


# --- validation -----------------------------------------------------------------------------------


def validate(values: Mapping[str, object], *, stack: str, project: str = PROJECT,
             secret_keys: Collection[str] = (), describe_machine: MachineLookup | None = None) -> Settings:
    """Plain config values (full keys such as `sdxl-endpoint:gpu` or `aws:region`) -> Settings, or one
    ConfigError naming every problem.

    `secret_keys` are the keys the engine holds encrypted; a token outside them is refused. The tokens
    themselves are not read here: `load()` attaches them as secret Outputs. `describe_machine` describes
    AWS types the catalog does not list.
    """
    cleaned = {key: value.strip() if isinstance(value, str) else value for key, value in values.items()}
    # Pulumi.yaml declares optional keys with default "", which means unset.
    cleaned = {key: value for key, value in cleaned.items() if value not in ("", None)}
    problems = Problems()
    raw = _parse_raw({key.split(":", 1)[1]: value for key, value in cleaned.items()
                      if key.startswith(f"{PROJECT}:")}, problems)

    cloud, gpu = _check_cloud_and_gpu(raw, problems)
    _check_machine_keys(raw, problems, cloud)
    place = PLACEMENTS[cloud](raw, cleaned, gpu, problems, describe_machine)
    origins = _check_origins(raw.corsOrigins, problems)
    cidrs = _check_cidrs(raw.allowedCidrs, problems, cloud)
    domain = _check_domain(raw.domain, problems)
    _check_ttl(raw.ttl, problems)
    _check_one_cloud_keys(raw, problems, cloud)
    if raw.minReplicas > raw.maxReplicas:
        problems.add("minReplicas", raw.minReplicas, f"is above maxReplicas ({raw.maxReplicas})",
                     f"{_set('maxReplicas', str(raw.minReplicas))}, or {_set('minReplicas', str(raw.maxReplicas))}")
    for key in SECRET_KEYS:
        if f"{PROJECT}:{key}" in cleaned and f"{PROJECT}:{key}" not in secret_keys:
            # Set without --secret: the value sits in plain text in the stack file (and maybe in git).
            problems.add(key, None, "is stored in plain text in the stack's config file",
                         f"pulumi config set --secret {key} <value>  (then rotate it: it may be in git history)")
    _check_fleet(raw, problems, cloud, domain, cidrs)
    _check_vpc_origin_region(raw, problems, cloud, domain, place.region)
    problems.raise_if_any(stack)

    assert place.machine is not None  # guaranteed by raise_if_any
    return Settings(
        project=project, stack=stack, cloud=cloud, machine=place.machine, spot=raw.spot,
        disk_gb=raw.diskGb or None, model=raw.model, image=raw.image, api_token=None, hf_token=None,
        cors_origins=tuple(origins), domain=domain,
        # A bare address is a valid /32 (or /128); providers want the prefix written out.
        allowed_cidrs=tuple(str(ipaddress.ip_network(c)) for c in cidrs),
        idle_stop_minutes=raw.idleStopMinutes, ssh=raw.ssh, ttl=raw.ttl, region=place.region, zone=place.zone,
        gcp_project=place.gcp_project, min_replicas=raw.minReplicas, max_replicas=raw.maxReplicas,
        data_disk_gb=raw.dataDiskGb, target_requests_per_hour=raw.targetRequestsPerHour or None,
        hf_namespace=raw.hfNamespace, runpod_cloud_type=raw.runpodCloudType.upper(),
        kube=kube_settings(raw, stack) if cloud == "kubernetes" else None,
        permissions_boundary=raw.permissionsBoundary, gcp_service_account=raw.gcpServiceAccount,
    )


def _check_cloud_and_gpu(raw: RawConfig, problems: Problems) -> tuple[str, str | None]:
    cloud = raw.cloud.lower()
    if cloud not in CLOUDS:
        problems.add("cloud", cloud, f"not supported. Allowed: {', '.join(CLOUDS)}",
                     _set("cloud", _closest(cloud, CLOUDS) or "aws"))
        cloud = "aws"
    if raw.gpu is None:
        return cloud, None
    gpu = raw.gpu.lower()
    offered = sorted({o.gpu.key for o in catalog.offers_on(cloud).values()} & set(catalog.GPU_CHOICES))
    if gpu not in catalog.GPU_CHOICES:
        problems.add("gpu", gpu, f"unknown GPU. Allowed: {', '.join(catalog.GPU_CHOICES)}",
                     _set("gpu", _closest(gpu, catalog.GPU_CHOICES) or catalog.DEFAULT_GPU.get(cloud, "l4")))
        return cloud, None
    if gpu not in offered:
        problems.add("gpu", gpu, f"not offered on {cloud.upper()}. Allowed there: {', '.join(offered)}",
                     # The 24 GB Ampere/Ada cards AWS has map to GCP's L4, not to a pricier A100.
                     _set("gpu", "l4" if gpu in ("a10g", "l40s") and "l4" in offered else catalog.DEFAULT_GPU[cloud]))
        return cloud, None
    return cloud, gpu


def _check_machine_keys(raw: RawConfig, problems: Problems, cloud: str) -> None:
    """A machine key of another cloud (instanceType on GCP, machineType on AWS) is a mistake, not ignored."""
    own_key = catalog.MACHINE_KEY.get(cloud)
    for other_cloud, other_key in catalog.MACHINE_KEY.items():
        other = getattr(raw, other_key)
        if other_key != own_key and other is not None:
            fix = f"pulumi config mv {other_key} {own_key}" if own_key else f"pulumi config rm {other_key}"
            problems.add(other_key, other, f"applies to {other_cloud.upper()}, but cloud is {cloud}", fix)


@dataclass(frozen=True)
class Placement:
    """Where a target runs and on what: each cloud's placement rules resolve one."""

    machine: catalog.Offer | None  # None only when a problem was reported
    region: str
    zone: str | None = None
    gcp_project: str | None = None


def _machine(cloud: str, explicit: str | None, gpu: str | None, problems: Problems,
             resolve: Callable[[str], catalog.Offer | None]) -> catalog.Offer | None:
    """The explicit machine type through `resolve`, else the smallest one with the GPU; a refusal is reported."""
    try:
        if explicit is None:
            return catalog.smallest_offer(cloud, gpu or catalog.DEFAULT_GPU[cloud])
        return resolve(explicit)
    except catalog.UnfitMachineError as err:
        problems.add_refusal(err.refusal)
        return None


def _place_aws(raw: RawConfig, values: Mapping[str, object], gpu: str | None, problems: Problems,
               describe_machine: MachineLookup | None) -> Placement:
    region = str(values.get("aws:region") or DEFAULT_AWS_REGION)
    if not _AWS_REGION_RE.match(region):
        problems.add("aws:region", region, "not an AWS region name", _set("aws:region", DEFAULT_AWS_REGION))
    machine = _machine("aws", raw.instanceType, gpu, problems,
                       lambda name: _resolve_aws_type(name, problems, gpu, describe_machine, region))
    return Placement(machine, region)


def _resolve_aws_type(name: str, problems: Problems, gpu: str | None, describe_machine: MachineLookup | None,
                      region: str | None) -> catalog.Offer | None:
    key, suggestion = "instanceType", catalog.smallest_offer("aws", gpu or "a10g").name
    if not catalog.looks_like_aws_type(name):
        problems.add(key, name, "not an EC2 instance type name (family.size, e.g. g5.xlarge)", _set(key, suggestion))
        return None
    offer = catalog.AWS_OFFERS.get(name)
    if offer is None:
        facts = catalog.retired_aws_facts(name)
        if facts is None and describe_machine is not None and region is not None:
            # Not in the catalog: ask the provider rather than refuse blindly.
            facts = describe_machine(name, region)
            if facts is None:
                problems.add(key, name, "EC2 does not offer this instance type in this region", _set(key, suggestion))
                return None
        if facts is None:
            problems.add(key, name, "not in the GPU catalog, and EC2 was not asked to describe it",
                         _set(key, suggestion))
            return None
        catalog.judge_aws_type(facts)
        offer = catalog.offer_from_aws_facts(facts)
    if gpu is not None and offer.gpu.key.split("-")[0] != gpu:
        problems.add(key, name, f"it has a {offer.gpu.model} GPU but gpu is set to '{gpu}'",
                     f"pulumi config rm gpu, or {_set(key, catalog.smallest_offer('aws', gpu).name)}")
        return None
    return offer


def _check_origins(origins: list[str], problems: Problems) -> list[str]:
    """Browser origins: scheme://host[:port], nothing more."""
    for origin in origins:
        nearest = _nearest_origin(origin)
        if nearest:
            problems.add("corsOrigins", origin,
                         "an origin is scheme://host[:port], with no path and no trailing slash", f"use {nearest}")
    return origins


def _nearest_origin(origin: str) -> str | None:
    """None when the origin is valid, else the origin it most likely meant."""
    if origin == "*":
        return None
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and parts.hostname and origin == f"{parts.scheme}://{parts.netloc}":
        return None
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return f"https://{origin.strip('/').split('/')[0]}"


def _check_cidrs(cidrs: list[str], problems: Problems, cloud: str) -> list[str]:
    """Who may reach the API: networks written as networks."""
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=True)
            continue
        except ValueError:
            pass
        try:
            network = ipaddress.ip_network(cidr, strict=False)
            problems.add("allowedCidrs", cidr, f"host bits are set; the network is {network}", f"use {network}")
        except ValueError:
            problems.add("allowedCidrs", cidr, "not a CIDR; write e.g. 203.0.113.0/24, or 198.51.100.7/32 for one "
                         "address", "use 203.0.113.0/24")
    if cloud == "gcp" and cidrs and all(":" in c for c in cidrs):
        # The GCP subnet is IPv4-only, so IPv6 ranges could never reach the VM.
        problems.add("allowedCidrs", cidrs, "the GCP endpoint has an IPv4 address only, so IPv6 ranges "
                     "can never reach it",
                     "pulumi config set --path 'allowedCidrs[0]' 203.0.113.0/24 (your IPv4 range)")
    return cidrs


def _check_domain(domain: str | None, problems: Problems) -> str | None:
    if domain is None:
        return None
    domain = domain.lower()
    if not _HOSTNAME_RE.match(domain):
        bare = urlsplit(domain).hostname if "//" in domain else domain.rstrip("/").rstrip(".")
        problems.add("domain", domain, "must be a DNS name you control, without scheme or path",
                     _set("domain", bare if bare and _HOSTNAME_RE.match(bare) else "sdxl.example.com"))
    return domain


def parse_rfc3339(text: str) -> datetime | None:
    """The `ttl` format: an RFC 3339 time with a zone, or None (a time without one is ambiguous).

    The CI reaper (tools/ci) reads recorded expiries back with it; validation uses the same rule.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        return None
    return moment if moment.tzinfo else None


def _check_ttl(ttl: str | None, problems: Problems) -> None:
    if ttl is not None and parse_rfc3339(ttl) is None:
        problems.add("ttl", ttl, "must be an RFC 3339 time with a zone, when the stack may be destroyed",
                     _set("ttl", "2030-01-31T18:00:00Z"))


def _place_gcp(raw: RawConfig, values: Mapping[str, object], gpu: str | None, problems: Problems,
               describe_machine: MachineLookup | None) -> Placement:
    machine = _machine("gcp", raw.machineType, gpu, problems, lambda name: catalog.resolve_gcp(name, gpu))
    project = values.get("gcp:project")
    if not project:
        problems.add("gcp:project", None, "required when cloud is gcp", _set("gcp:project", "<your-project-id>"))
    zone = str(values.get("gcp:zone") or DEFAULT_GCP_ZONE)
    region = str(values.get("gcp:region") or zone.rsplit("-", 1)[0])
    if not _GCP_ZONE_RE.match(zone):
        problems.add("gcp:zone", zone, "not a GCP zone name", _set("gcp:zone", DEFAULT_GCP_ZONE))
    elif not zone.startswith(region + "-"):
        problems.add("gcp:region", region, f"zone {zone} is not in this region",
                     _set("gcp:region", zone.rsplit("-", 1)[0]))
    elif machine is not None:
        zones = catalog.GCP_ACCELERATOR_ZONES.get(machine.gpu.key, ())
        if zone not in zones:
            in_region = [z for z in zones if z.startswith(region + "-")]
            problems.add("gcp:zone", zone, f"does not offer the {machine.gpu.model}. Zones that do: "
                         f"{', '.join(in_region or zones[:6])}",
                         _set("gcp:zone", (in_region or zones)[0]))
    return Placement(machine, region, zone, str(project) if project else None)


def _check_fleet(raw: RawConfig, problems: Problems, cloud: str, domain: str | None, cidrs: list[str]) -> None:
    """Fleet mode of the VM clouds (maxReplicas 2 or more) and the keys that only make sense with or without it.
    Other targets scale with their own engine and check their own keys."""
    if cloud not in catalog.MACHINE_KEY or raw.maxReplicas < 2:
        if raw.targetRequestsPerHour:
            problems.add("targetRequestsPerHour", raw.targetRequestsPerHour,
                         "applies to AWS and GCP fleets only (maxReplicas 2 or more)",
                         "pulumi config rm targetRequestsPerHour, or pulumi config set maxReplicas 2")
        if cloud in catalog.MACHINE_KEY and raw.minReplicas < 1:
            # maxReplicas 1 is the single instance, which would silently keep running with minReplicas 0.
            problems.add("minReplicas", raw.minReplicas, "a single instance (maxReplicas 1) does not scale to zero "
                         "by minReplicas; idleStopMinutes powers it off when idle instead",
                         "pulumi config rm minReplicas, or pulumi config set maxReplicas 2 and "
                         "pulumi config set minReplicas 1 for a fleet")
        return
    # The CLI passes Pulumi.yaml's default (30) as if it were set, so only another value counts as asking.
    if raw.idleStopMinutes != DEFAULT_IDLE_STOP_MINUTES:
        problems.add("idleStopMinutes", raw.idleStopMinutes, "does not apply to a fleet, which shrinks to "
                     "minReplicas when idle instead of powering off", "pulumi config rm idleStopMinutes")
    if raw.minReplicas < 1:
        problems.add("minReplicas", raw.minReplicas, "a fleet keeps at least one replica: the load balancer's "
                     "request rate per replica drives its scaling, and with no replica nothing is measured, so "
                     "it would never scale out again", _set("minReplicas", "1"))
    if cloud == "aws" and domain is None and list(cidrs) != ["0.0.0.0/0"]:
        problems.add("allowedCidrs", cidrs, "an AWS fleet without a domain is reached through CloudFront, so its "
                     "load balancer sees CloudFront's addresses, never your clients'",
                     f"{_set('domain', 'sdxl.example.com')} (the load balancer then filters allowedCidrs "
                     "itself), or pulumi config rm allowedCidrs")


def _check_vpc_origin_region(raw: RawConfig, problems: Problems, cloud: str, domain: str | None,
                             region: str) -> None:
    """An AWS fleet without `domain` is reached through a CloudFront VPC origin, which AWS offers in some regions
    only (catalog.CLOUDFRONT_VPC_ORIGIN_REGIONS)."""
    if cloud != "aws" or raw.maxReplicas < 2 or domain is not None or region in catalog.CLOUDFRONT_VPC_ORIGIN_REGIONS:
        return
    problems.add("aws:region", region, "an AWS fleet without a domain is reached through a CloudFront VPC origin, "
                 "which AWS does not offer in this region",
                 f"{_set('aws:region', DEFAULT_AWS_REGION)}, or {_set('domain', 'sdxl.example.com')} (the load "
                 "balancer then serves HTTPS itself, without CloudFront)")


# --- the hosted GPU providers (Hugging Face Inference Endpoints, RunPod Pods) ----------------------

# Keys that mean something on one cloud only: set with another, they would silently do nothing.
_ONE_CLOUD_KEYS = {"hfHardware": "huggingface", "hfNamespace": "huggingface", "runpodGpuType": "runpod",
                   **dict.fromkeys(("kubeContext", "namespace", "nodeSelector", "exposure", "ingressClass",
                                    "certIssuer", "storageClass", "imagePullSecret", "kedaPrometheusUrl"),
                                   "kubernetes"),
                   "permissionsBoundary": "aws", "gcpServiceAccount": "gcp"}  # CI's review identities
IMAGE_FIX = ("publish the server image with .github/workflows/image.yml (ghcr.io/<owner>/sdxl-endpoint-server, "
             "made public), or `docker build -f image/Dockerfile -t <registry>/<name>:<tag> .` and push it; then "
             "pulumi config set image <that reference>")


def _check_one_cloud_keys(raw: RawConfig, problems: Problems, cloud: str) -> None:
    for key, owner in _ONE_CLOUD_KEYS.items():
        if getattr(raw, key) not in (None, []) and cloud != owner:
            problems.add(key, getattr(raw, key), f"applies to cloud {owner}, but cloud is {cloud}",
                         f"pulumi config rm {key}")
    if cloud != "runpod" and raw.runpodCloudType.upper() != catalog.RUNPOD_DEFAULT_CLOUD_TYPE:
        problems.add("runpodCloudType", raw.runpodCloudType, f"applies to cloud runpod, but cloud is {cloud}",
                     "pulumi config rm runpodCloudType")


def _check_hosted_common(raw: RawConfig, problems: Problems, cloud: str) -> None:
    """What every hosted target needs (a pullable image) and what it cannot do: the provider owns the front and
    the machine, so a key that would restrict or shape them is refused rather than silently ignored."""
    _require_image(raw, problems, cloud, "the provider")
    if list(raw.allowedCidrs) != ["0.0.0.0/0"]:
        problems.add("allowedCidrs", raw.allowedCidrs, f"{cloud}'s public front cannot be limited to networks; "
                     "the bearer token (apiToken) is the gate", "pulumi config rm allowedCidrs")
    _refuse_inapplicable(raw, problems, cloud, (
        ("domain", "the endpoint keeps the provider's own HTTPS name"), ("spot", "the endpoint runs on demand"),
        ("ssh", "there is no SSH into the container"), ("diskGb", "the provider sizes the container's disk")))


def _require_image(raw: RawConfig, problems: Problems, cloud: str, puller: str) -> None:
    """The targets that pull a published image: nothing builds one where they run."""
    if raw.image is None:
        problems.add("image", None, f"required when cloud is {cloud}: {puller} pulls the server image, nothing "
                     "builds it there", IMAGE_FIX)


def _refuse_inapplicable(raw: RawConfig, problems: Problems, cloud: str, reasons: Sequence[tuple[str, str]]) -> None:
    """Keys this cloud cannot honour, each with why: refused when set rather than silently ignored."""
    for key, why in reasons:
        if getattr(raw, key) not in (None, False, DEFAULT_DISK_GB):
            problems.add(key, getattr(raw, key), f"does not apply to cloud {cloud}: {why}", f"pulumi config rm {key}")


def _place_huggingface(raw: RawConfig, values: Mapping[str, object], gpu: str | None, problems: Problems,
                       describe_machine: MachineLookup | None) -> Placement:
    _check_hosted_common(raw, problems, "huggingface")
    if raw.dataDiskGb != DEFAULT_DATA_DISK_GB:
        problems.add("dataDiskGb", raw.dataDiskGb, "does not apply to cloud huggingface: the endpoint mounts the "
                     "model itself", "pulumi config rm dataDiskGb")
    if raw.idleStopMinutes > 0 and raw.minReplicas > 1:
        problems.add("minReplicas", raw.minReplicas, f"keeps {raw.minReplicas} replicas running, but "
                     f"idleStopMinutes ({raw.idleStopMinutes}) scales the endpoint to zero",
                     f"{_set('minReplicas', '1')}, or {_set('idleStopMinutes', '0')} to keep them")
    if raw.idleStopMinutes == 0 and raw.minReplicas == 0:
        problems.add("minReplicas", 0, "scaling to zero needs idleStopMinutes: the minutes without a request "
                     "before Hugging Face scales the endpoint down", _set("idleStopMinutes", str(
                         DEFAULT_IDLE_STOP_MINUTES)))
    machine = _machine("huggingface", raw.hfHardware, gpu, problems,
                       lambda name: catalog.resolve_huggingface(name, gpu))
    return Placement(machine, machine.region if isinstance(machine, catalog.HostedOffer) else "")


def _place_runpod(raw: RawConfig, values: Mapping[str, object], gpu: str | None, problems: Problems,
                  describe_machine: MachineLookup | None) -> Placement:
    _check_hosted_common(raw, problems, "runpod")
    if raw.maxReplicas != 1 or raw.minReplicas != 1:
        problems.add("maxReplicas" if raw.maxReplicas != 1 else "minReplicas",
                     raw.maxReplicas if raw.maxReplicas != 1 else raw.minReplicas,
                     "a RunPod pod is one GPU (idleStopMinutes stops it when idle)",
                     "pulumi config rm minReplicas; pulumi config rm maxReplicas")
    if raw.runpodCloudType.upper() not in catalog.RUNPOD_CLOUD_TYPES:
        problems.add("runpodCloudType", raw.runpodCloudType, f"must be one of {', '.join(catalog.RUNPOD_CLOUD_TYPES)}"
                     " (RunPod's own data centres, or community hosts)",
                     _set("runpodCloudType", catalog.RUNPOD_DEFAULT_CLOUD_TYPE))
    machine = _machine("runpod", raw.runpodGpuType, gpu, problems, lambda name: catalog.resolve_runpod(name, gpu))
    # RunPod picks the data centre that has the GPU free; the pod does not choose one.
    return Placement(machine, RUNPOD_ANY_REGION)


def _place_kubernetes(raw: RawConfig, values: Mapping[str, object], gpu: str | None, problems: Problems,
                      describe_machine: MachineLookup | None) -> Placement:
    """An existing cluster: a pullable image, a GPU the scheduler can be asked for, and how the endpoint is reached.
    The cluster's nodes are the user's: machine keys, spot, SSH and the root disk do not apply."""
    _require_image(raw, problems, "kubernetes", "the cluster")
    _refuse_inapplicable(raw, problems, "kubernetes", (
        ("spot", "the node pool decides"), ("ssh", "there is no SSH into a pod (kubectl exec instead)"),
        ("diskGb", "the node pool sizes its disks; the model cache is a volume of dataDiskGb")))
    if raw.idleStopMinutes != DEFAULT_IDLE_STOP_MINUTES:
        problems.add("idleStopMinutes", raw.idleStopMinutes, "does not apply to cloud kubernetes: the Deployment "
                     "keeps minReplicas pods; the cluster autoscaler removes idle GPU nodes",
                     "pulumi config rm idleStopMinutes")
    if raw.minReplicas < 1:
        problems.add("minReplicas", raw.minReplicas, "the Kubernetes target keeps at least one pod: the autoscaler "
                     "measures the running pods, so with none it would never scale out again", _set("minReplicas", "1"))
    _check_exposure(raw, problems)
    _check_pull_secret(values.get(f"{PROJECT}:imagePullSecret"), problems)
    selector = node_selector(raw.nodeSelector)
    for item in raw.nodeSelector:
        label, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not _LABEL_KEY_RE.match(label) or not _LABEL_VALUE_RE.match(value):
            problems.add("nodeSelector", item, "not a node label=value pair (a Kubernetes label key, '=', its value)",
                         "pulumi config set --path 'nodeSelector[0]' cloud.google.com/gke-accelerator=nvidia-l4")
    try:
        machine: catalog.Offer = catalog.k8s_selector_placement(selector, gpu)
    except catalog.UnfitMachineError as err:
        problems.add_refusal(err.refusal)
        machine = catalog.K8S_OFFERS["t4"]  # reported above; keeps the other checks going
    return Placement(machine, raw.kubeContext or "current-context")


def _check_pull_secret(value: object, problems: Problems) -> None:
    """imagePullSecret is a .dockerconfigjson document (`kubectl create secret docker-registry --dry-run=client -o
    jsonpath='{.data.\\.dockerconfigjson}' | base64 -d` prints one). Its value is never echoed: it holds credentials."""
    if value is None:
        return
    try:
        document = json.loads(str(value))
    except json.JSONDecodeError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("auths"), dict):
        problems.add("imagePullSecret", None, "must be a .dockerconfigjson document: {\"auths\": {\"<registry>\": "
                     "{\"auth\": \"<base64 user:token>\"}}}",
                     "pulumi config set --secret imagePullSecret \"$(cat ~/.docker/config.json)\" (a file holding "
                     "only that registry's auths), or pulumi config rm imagePullSecret for a public image")


def _exposure(raw: RawConfig) -> str:
    """`exposure` as set, else an Ingress when there is a domain to serve, else a LoadBalancer Service."""
    return raw.exposure or ("ingress" if raw.domain else "loadBalancer")


def _check_exposure(raw: RawConfig, problems: Problems) -> None:
    """How the endpoint is reached: an Ingress (a domain, HTTPS through cert-manager), a LoadBalancer Service, or
    inside the cluster only. Keys that only one of them uses are refused with the others."""
    exposure = _exposure(raw)
    if exposure not in EXPOSURES:
        problems.add("exposure", exposure, f"must be one of {', '.join(EXPOSURES)}",
                     _set("exposure", _closest(exposure, [e.lower() for e in EXPOSURES]) or "loadBalancer"))
        return
    if exposure == "ingress" and not raw.domain:
        problems.add("domain", None, "an Ingress needs the host name it serves (and cert-manager its certificate)",
                     f"{_set('domain', 'sdxl.example.com')}, or {_set('exposure', 'loadBalancer')}")
    for key in ("ingressClass", "certIssuer"):
        if getattr(raw, key) is not None and exposure != "ingress":
            problems.add(key, getattr(raw, key), f"applies to exposure ingress, but exposure is {exposure}",
                         f"pulumi config rm {key}, or {_set('exposure', 'ingress')}")
    if exposure != "ingress" and raw.domain and raw.exposure:
        problems.add("domain", raw.domain, f"is served only by exposure ingress, but exposure is {exposure}",
                     f"pulumi config rm domain, or {_set('exposure', 'ingress')}")
    if list(raw.allowedCidrs) != ["0.0.0.0/0"] and exposure != "loadBalancer":
        problems.add("allowedCidrs", raw.allowedCidrs, f"is enforced by a LoadBalancer Service's source ranges; with "
                     f"exposure {exposure}, restrict clients in your ingress controller instead",
                     "pulumi config rm allowedCidrs, or pulumi config set exposure loadBalancer")


def node_selector(items: Collection[str]) -> dict[str, str]:
    """`label=value` items as a nodeSelector map."""
    pairs = (item.partition("=") for item in items)
    return {label.strip(): value.strip() for label, sep, value in pairs if sep}


def kube_settings(raw: RawConfig, stack: str) -> KubeSettings:
    """The cluster-side settings of a validated kubernetes config."""
    return KubeSettings(
        context=raw.kubeContext, namespace=raw.namespace or stack_dns_label(stack, NAMESPACE_MAX),
        create_namespace=raw.namespace is None, node_selector=node_selector(raw.nodeSelector),
        exposure=_exposure(raw), ingress_class=raw.ingressClass,
        cert_issuer=raw.certIssuer, storage_class=raw.storageClass, keda_prometheus_url=raw.kedaPrometheusUrl)


def stack_dns_label(stack: str, limit: int) -> str:
    """`sdxl-<stack>` as a lowercase DNS label of at most `limit` characters (an endpoint, a pod, a namespace); a
    stack name that had to be altered or cut gets a short hash of the original, so two stacks never share one."""
    cleaned = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", stack.lower())).strip("-")
    name = f"sdxl-{cleaned}"
    if cleaned != stack or len(name) > limit:
        digest = hashlib.sha256(stack.encode()).hexdigest()[:6]
        stem = cleaned[:limit - len("sdxl--") - len(digest)].rstrip("-")
        name = f"sdxl-{stem}-{digest}" if stem else f"sdxl-{digest}"
    return name


# Each cloud's placement rules, by `cloud` (the same keys as CLOUDS and __main__.TARGETS).
PLACEMENTS: dict[str, Callable[..., Placement]] = {
    "aws": _place_aws,
    "gcp": _place_gcp,
    "huggingface": _place_huggingface,
    "runpod": _place_runpod,
    "kubernetes": _place_kubernetes,
}


# --- the thin loader: the engine's config -> validate ---------------------------------------------


def configured_cloud() -> str:
    """The `cloud` key as set (lower-cased), so `__main__` can import only that target; validate() judges it."""
    import pulumi

    return cloud_of(pulumi.Config(PROJECT).get("cloud"))


def load(describe_machine: MachineLookup | None = None) -> Settings:
    """Validate the config the engine handed this program; the tokens come back as secret Outputs."""
    import pulumi

    # The language host passes the whole config, and which keys are secret, in these two documented
    # variables (pulumi.runtime.get_config_env / get_config_secret_keys_env).
    values = pulumi.runtime.get_config_env()
    secret_keys = pulumi.runtime.get_config_secret_keys_env()
    settings = validate(values, stack=pulumi.get_stack(), project=pulumi.get_project(), secret_keys=secret_keys,
                        describe_machine=describe_machine)
    cfg = pulumi.Config(PROJECT)

    def secret(key: str) -> Any | None:
        raw = values.get(f"{PROJECT}:{key}")
        return cfg.get_secret(key) if isinstance(raw, str) and raw.strip() else None

    kube = settings.kube and dataclasses.replace(settings.kube, image_pull_secret=secret("imagePullSecret"))
    return dataclasses.replace(settings, api_token=secret("apiToken"), hf_token=secret("hfToken"), kube=kube)


# --- ownership marks, as each cloud spells their keys --------------------------------------------------------
# Settings.ownership's marks (stack, project, ttl) are written by the targets and read back by the CI sweep
# (tools/ci/sweep.py), which finds orphans by these keys: both take them from here.


def aws_tag_key(mark: str) -> str:
    """An ownership mark as an AWS tag key: `sdxl-endpoint:<mark>`."""
    return f"{PROJECT}:{mark}"


def gcp_label_key(mark: str) -> str:
    """An ownership mark as a GCP label key: `sdxl-endpoint-<mark>` (':' is not allowed in label keys)."""
    return f"{PROJECT}-{mark}"


def k8s_mark_key(mark: str) -> str:
    """An ownership mark as a Kubernetes label or annotation key: `sdxl-endpoint.io/<mark>`."""
    return f"{PROJECT}.io/{mark}"


# --- single keys read as validate() reads them, for the operator tools ------------------------------------------


def cloud_of(value: str | None) -> str:
    """The `cloud` key's value as the program picks its target: trimmed, lower-cased, `aws` when unset."""
    return (value or "").strip().lower() or "aws"


def flag_of(value: object) -> bool | None:
    """A set true/false key (spot, ssh) parsed by the same rules as RawConfig; None for a value validate() refuses
    (an empty value is no value: validate() takes the default)."""
    try:
        return TypeAdapter(Flag).validate_python(value)
    except ValidationError:
        return None
