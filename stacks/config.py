"""The one place that reads `pulumi.Config`.

`load()` turns the stack's config into one immutable `Settings`, or raises one `ConfigError`
that names every bad key at once, what is allowed, and the nearest fix. Defaults live here
too: the CLI applies Pulumi.yaml's defaults, but a mocked test run sees only what it sets.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import pulumi

from stacks import catalog

PROJECT = "sdxl-endpoint"

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_IMAGE = "ghcr.io/sdxl-endpoint/sdxl-endpoint-server:latest"
DEFAULT_DISK_GB = 100
# The DLAMI root takes ~40 GB; SDXL's fp16 weights, the container image and the compile
# cache need ~20 GB more.
MIN_DISK_GB = 60
MAX_DISK_GB = 16384
DEFAULT_IDLE_STOP_MINUTES = 30
DEFAULT_AWS_REGION = "us-east-1"
DEFAULT_GCP_REGION = "us-central1"
DEFAULT_GCP_ZONE = "us-central1-a"
CLOUDS = ("aws", "gcp")

# Every project key, as declared in Pulumi.yaml; anything else under `sdxl-endpoint:` is a typo.
KNOWN_KEYS = (
    "cloud", "gpu", "instanceType", "machineType", "spot", "diskGb", "model", "image",
    "apiToken", "hfToken", "corsOrigins", "allowedCidrs", "domain", "idleStopMinutes", "ssh", "ttl",
)

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
_AWS_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
_GCP_ZONE_RE = re.compile(r"^[a-z]+-[a-z]+\d-[a-z]$")


class ConfigError(ValueError):
    """Raised once, listing every problem in the stack's config."""


@dataclass(frozen=True)
class Settings:
    project: str
    stack: str
    cloud: str
    machine: catalog.Offer  # the resolved instance type (AWS) or machine type (GCP)
    spot: bool
    disk_gb: int
    model: str
    image: str
    api_token: pulumi.Output[str] | None  # secret; None means "generate one"
    hf_token: pulumi.Output[str] | None  # secret
    cors_origins: tuple[str, ...]
    allowed_cidrs: tuple[str, ...]
    domain: str | None
    idle_stop_minutes: int
    ssh: bool
    ttl: str | None  # RFC 3339 expiry, for the reaper
    region: str
    zone: str | None = None  # GCP only
    gcp_project: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def add(self, key: str, got: object, why: str, fix: str) -> None:
        shown = f" = {got!r}" if got is not None else ""
        self.items.append(f"{key}{shown}: {why}\n      fix: {fix}")

    def raise_if_any(self, stack: str) -> None:
        if self.items:
            count = f"{len(self.items)} problem{'s' if len(self.items) > 1 else ''}"
            body = "\n".join(f"  - {item}" for item in self.items)
            raise ConfigError(f"Stack '{stack}' has {count} in its config (stacks/Pulumi.{stack}.yaml):\n{body}")


def _get(cfg: pulumi.Config, key: str) -> str | None:
    """A plain value; Pulumi.yaml declares optional keys with default "", which means unset."""
    value = cfg.get(key)
    return value.strip() if value and value.strip() else None


def _get_secret(problems: _Problems, key: str) -> pulumi.Output[str] | None:
    # Checks presence on the raw value, so reading never logs or unwraps the secret.
    raw = pulumi.runtime.get_config(f"{PROJECT}:{key}")
    if not raw or not str(raw).strip():
        return None
    if not pulumi.runtime.is_config_secret(f"{PROJECT}:{key}"):
        # Set without --secret: the value sits in plain text in the stack file (and maybe in git).
        problems.add(key, None, "is stored in plain text in the stack's config file",
                     f"pulumi config set --secret {key} <value>  (then rotate it: it may be in git history)")
    return pulumi.Config(PROJECT).get_secret(key)


def _set(key: str, value: str) -> str:
    return f"pulumi config set {key} {value}"


def _closest(value: str, allowed: tuple[str, ...] | list[str]) -> str | None:
    match = difflib.get_close_matches(value.lower(), list(allowed), n=1, cutoff=0.5)
    return match[0] if match else None


def _all_config_keys() -> set[str]:
    # The engine passes config in PULUMI_CONFIG; tests set it through set_all_config.
    from pulumi.runtime import config as runtime_config

    return set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())


def _parse_list(raw: str | None, default: list[str]) -> list[str] | None:
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def _parse_bool(raw: str | None, default: bool) -> bool | None:
    if raw is None:
        return default
    return {"true": True, "false": False}.get(raw.strip().lower())


def _parse_int(raw: str | None, default: int) -> int | None:
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None


def _check_origin(origin: str) -> str | None:
    """None when the origin is valid, else the origin it most likely meant."""
    if origin == "*":
        return None
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and parts.hostname and origin == f"{parts.scheme}://{parts.netloc}":
        return None
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return f"https://{origin.strip('/').split('/')[0]}"


def _check_cidr(cidr: str) -> str | None:
    """None when the CIDR is valid, else a message with the nearest valid form."""
    try:
        ipaddress.ip_network(cidr, strict=True)
        return None
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(cidr, strict=False)
        return f"host bits are set; the network is {network}"
    except ValueError:
        return "not a CIDR; write e.g. 203.0.113.0/24, or 198.51.100.7/32 for one address"


def _resolve_machine(
    problems: _Problems,
    cloud: str,
    gpu: str | None,
    explicit: str | None,
    lookup_aws_type: Callable[[str], catalog.InstanceFacts | None] | None,
) -> catalog.Offer | None:
    key = "instanceType" if cloud == "aws" else "machineType"
    try:
        if explicit is None:
            return catalog.smallest_offer(cloud, gpu or catalog.DEFAULT_GPU[cloud])
        if cloud == "gcp":
            return catalog.resolve_gcp(explicit, gpu)
        if not catalog.looks_like_aws_type(explicit):
            problems.add(key, explicit, "not an EC2 instance type name (family.size, e.g. g5.xlarge)",
                         _set(key, catalog.smallest_offer("aws", gpu or "a10g").name))
            return None
        offer = catalog.AWS_OFFERS.get(explicit)
        if offer is None:
            facts = catalog.retired_aws_facts(explicit)
            if facts is None and lookup_aws_type is not None:
                # Not in the catalog: ask the provider rather than refuse blindly.
                facts = lookup_aws_type(explicit)
                if facts is None:
                    problems.add(key, explicit, "EC2 does not offer this instance type in this region",
                                 _set(key, catalog.smallest_offer("aws", gpu or "a10g").name))
                    return None
            if facts is None:
                problems.add(key, explicit, "not in the GPU catalog, and EC2 was not asked to describe it",
                             _set(key, catalog.smallest_offer("aws", gpu or "a10g").name))
                return None
            catalog.judge_aws_type(facts)
            offer = catalog.offer_from_aws_facts(facts)
        if gpu is not None and offer.gpu.key.split("-")[0] != gpu:
            problems.add(key, explicit, f"it has a {offer.gpu.model} GPU but gpu is set to '{gpu}'",
                         f"pulumi config rm gpu, or {_set(key, catalog.smallest_offer(cloud, gpu).name)}")
            return None
        return offer
    except catalog.UnfitMachineError as err:
        reason, _, fix = str(err).rpartition("\nFix: ")
        problems.items.append(f"{reason.replace(chr(10), chr(10) + '    ')}\n      fix: {fix}")
        return None


def load(
    lookup_aws_type: Callable[[str, str], catalog.InstanceFacts | None] | None = None,
) -> Settings:
    """Read and validate the whole stack config.

    `lookup_aws_type(instance_type, region)` describes EC2 types the catalog does not list.
    """
    cfg = pulumi.Config(PROJECT)
    stack = pulumi.get_stack()
    problems = _Problems()

    _check_unknown_keys(problems)
    cloud, gpu = _read_cloud_and_gpu(cfg, problems)
    machine = _read_machine(cfg, problems, cloud, gpu, lookup_aws_type)
    spot = _read_bool(cfg, problems, "spot")
    ssh = _read_bool(cfg, problems, "ssh")
    disk_gb, idle = _read_sizes(cfg, problems)
    model, image = _read_software(cfg, problems)
    origins, cidrs, domain = _read_access(cfg, problems, cloud)
    ttl = _read_ttl(cfg, problems)
    region, zone, gcp_project = _location(problems, cloud, machine)
    api_token, hf_token = _get_secret(problems, "apiToken"), _get_secret(problems, "hfToken")
    problems.raise_if_any(stack)

    assert machine is not None and spot is not None and ssh is not None  # guaranteed by raise_if_any
    tags = {"sdxl-endpoint:stack": stack, "sdxl-endpoint:project": pulumi.get_project()}
    if ttl:
        tags["sdxl-endpoint:ttl"] = ttl
    return Settings(
        project=pulumi.get_project(), stack=stack, cloud=cloud, machine=machine, spot=spot,
        disk_gb=disk_gb, model=model, image=image,
        api_token=api_token, hf_token=hf_token,
        cors_origins=tuple(origins), domain=domain,
        # A bare address is a valid /32 (or /128); providers want the prefix written out.
        allowed_cidrs=tuple(str(ipaddress.ip_network(c)) for c in cidrs),
        idle_stop_minutes=idle, ssh=ssh, ttl=ttl, region=region, zone=zone,
        gcp_project=gcp_project, tags=tags,
    )


def _check_unknown_keys(problems: _Problems) -> None:
    unknown = sorted(
        k.split(":", 1)[1] for k in _all_config_keys()
        if k.startswith(f"{PROJECT}:") and k.split(":", 1)[1] not in KNOWN_KEYS
    )
    for key in unknown:
        guess = _closest(key, [k.lower() for k in KNOWN_KEYS])
        proper = next((k for k in KNOWN_KEYS if k.lower() == guess), None)
        problems.add(key, None, f"unknown key. Known keys: {', '.join(KNOWN_KEYS)}",
                     f"pulumi config mv {key} {proper}" if proper else f"pulumi config rm {key}")


def _read_cloud_and_gpu(cfg: pulumi.Config, problems: _Problems) -> tuple[str, str | None]:
    cloud = (_get(cfg, "cloud") or "aws").lower()
    if cloud not in CLOUDS:
        problems.add("cloud", cloud, f"not supported. Allowed: {', '.join(CLOUDS)}",
                     _set("cloud", _closest(cloud, CLOUDS) or "aws"))
        cloud = "aws"

    gpu = _get(cfg, "gpu")
    if gpu is None:
        return cloud, None
    gpu = gpu.lower()
    offers = catalog.AWS_OFFERS if cloud == "aws" else catalog.GCP_OFFERS
    offered = sorted({o.gpu.key for o in offers.values()} & set(catalog.GPU_CHOICES))
    if gpu not in catalog.GPU_CHOICES:
        problems.add("gpu", gpu, f"unknown GPU. Allowed: {', '.join(catalog.GPU_CHOICES)}",
                     _set("gpu", _closest(gpu, catalog.GPU_CHOICES) or catalog.DEFAULT_GPU[cloud]))
        return cloud, None
    if gpu not in offered:
        problems.add("gpu", gpu, f"not offered on {cloud.upper()}. Allowed there: {', '.join(offered)}",
                     # The 24 GB Ampere/Ada cards AWS has map to GCP's L4, not to a pricier A100.
                     _set("gpu", "l4" if gpu in ("a10g", "l40s") and "l4" in offered else catalog.DEFAULT_GPU[cloud]))
        return cloud, None
    return cloud, gpu


def _read_machine(cfg: pulumi.Config, problems: _Problems, cloud: str, gpu: str | None,
                  lookup_aws_type: Callable[[str, str], catalog.InstanceFacts | None] | None) -> catalog.Offer | None:
    own_key, other_key = ("instanceType", "machineType") if cloud == "aws" else ("machineType", "instanceType")
    other = _get(cfg, other_key)
    if other is not None:
        problems.add(other_key, other, f"applies to {'GCP' if cloud == 'aws' else 'AWS'}, but cloud is {cloud}",
                     f"pulumi config mv {other_key} {own_key}")
    aws_region = pulumi.Config("aws").get("region") or DEFAULT_AWS_REGION
    lookup = (lambda name: lookup_aws_type(name, aws_region)) if lookup_aws_type and cloud == "aws" else None
    return _resolve_machine(problems, cloud, gpu, _get(cfg, own_key), lookup)


def _read_bool(cfg: pulumi.Config, problems: _Problems, key: str) -> bool | None:
    value = _parse_bool(_get(cfg, key), False)
    if value is None:
        problems.add(key, _get(cfg, key), "must be true or false", _set(key, "false"))
    return value


def _read_sizes(cfg: pulumi.Config, problems: _Problems) -> tuple[int, int]:
    disk_gb = _parse_int(_get(cfg, "diskGb"), DEFAULT_DISK_GB)
    if disk_gb is None or not MIN_DISK_GB <= disk_gb <= MAX_DISK_GB:
        problems.add("diskGb", _get(cfg, "diskGb"),
                     f"must be a whole number of GB from {MIN_DISK_GB} to {MAX_DISK_GB}: the GPU image, "
                     "SDXL's weights and the compile cache need the room",
                     _set("diskGb", str(DEFAULT_DISK_GB)))
    idle = _parse_int(_get(cfg, "idleStopMinutes"), DEFAULT_IDLE_STOP_MINUTES)
    if idle is None or idle < 0:
        problems.add("idleStopMinutes", _get(cfg, "idleStopMinutes"),
                     "must be a whole number of minutes, 0 or more (0 never stops the instance)",
                     _set("idleStopMinutes", str(DEFAULT_IDLE_STOP_MINUTES)))
    return disk_gb, idle


def _read_software(cfg: pulumi.Config, problems: _Problems) -> tuple[str, str]:
    model = _get(cfg, "model") or DEFAULT_MODEL
    if not _HUB_ID_RE.match(model):
        problems.add("model", model, "must be a Hugging Face Hub id, organisation/name",
                     _set("model", DEFAULT_MODEL))
    image = _get(cfg, "image") or DEFAULT_IMAGE
    if not _IMAGE_RE.match(image):
        problems.add("image", image, "must be a container image reference, e.g. ghcr.io/org/name:tag",
                     _set("image", DEFAULT_IMAGE))
    return model, image


def _read_access(cfg: pulumi.Config, problems: _Problems, cloud: str) -> tuple[list[str], list[str], str | None]:
    """Who may call the endpoint: browser origins, source networks, and the name it answers on."""
    origins = _parse_list(_get(cfg, "corsOrigins"), ["*"])
    if origins is None:
        problems.add("corsOrigins", _get(cfg, "corsOrigins"), "must be a list of origins",
                     "pulumi config set --path 'corsOrigins[0]' https://app.example.com")
        origins = []
    for origin in origins:
        nearest = _check_origin(origin)
        if nearest:
            problems.add("corsOrigins", origin,
                         "an origin is scheme://host[:port], with no path and no trailing slash",
                         f"use {nearest}")

    cidrs = _parse_list(_get(cfg, "allowedCidrs"), ["0.0.0.0/0"])
    if not cidrs:
        problems.add("allowedCidrs", _get(cfg, "allowedCidrs"), "must be a non-empty list of CIDRs",
                     "pulumi config set --path 'allowedCidrs[0]' 0.0.0.0/0")
        cidrs = []
    for cidr in cidrs:
        why = _check_cidr(cidr)
        if why:
            network = why.rsplit(" ", 1)[-1] if why.startswith("host") else "203.0.113.0/24"
            problems.add("allowedCidrs", cidr, why, f"use {network}")
    if cloud == "gcp" and cidrs and all(":" in c for c in cidrs):
        # The GCP subnet is IPv4-only, so IPv6 ranges could never reach the VM.
        problems.add("allowedCidrs", cidrs, "the GCP endpoint has an IPv4 address only, so IPv6 ranges "
                     "can never reach it",
                     "pulumi config set --path 'allowedCidrs[0]' 203.0.113.0/24 (your IPv4 range)")

    domain = _get(cfg, "domain")
    if domain is not None:
        domain = domain.lower()
        bare = urlsplit(domain).hostname if "//" in domain else domain.rstrip("/").rstrip(".")
        if not _HOSTNAME_RE.match(domain):
            problems.add("domain", domain, "must be a DNS name you control, without scheme or path",
                         _set("domain", bare if bare and _HOSTNAME_RE.match(bare) else "sdxl.example.com"))
    return origins, cidrs, domain


def parse_rfc3339(text: str) -> datetime | None:
    """The `ttl` format: an RFC 3339 time with a zone, or None (a time without one is ambiguous).

    stacks/ci.py's reaper reads recorded expiries back with it; `_read_ttl` validates by the same rule.
    """
    try:
        # datetime.fromisoformat reads "Z" only from Python 3.11; the README promises 3.10.
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None
    return moment if moment.tzinfo else None


def _read_ttl(cfg: pulumi.Config, problems: _Problems) -> str | None:
    ttl = _get(cfg, "ttl")
    if ttl is not None and parse_rfc3339(ttl) is None:
        problems.add("ttl", ttl, "must be an RFC 3339 time with a zone, when the stack may be destroyed",
                     _set("ttl", "2030-01-31T18:00:00Z"))
    return ttl


def _location(problems: _Problems, cloud: str, machine: catalog.Offer | None) -> tuple[str, str | None, str | None]:
    if cloud == "aws":
        region = pulumi.Config("aws").get("region") or DEFAULT_AWS_REGION
        if not _AWS_REGION_RE.match(region):
            problems.add("aws:region", region, "not an AWS region name", _set("aws:region", DEFAULT_AWS_REGION))
        return region, None, None

    gcp = pulumi.Config("gcp")
    project = gcp.get("project")
    if not project:
        problems.add("gcp:project", None, "required when cloud is gcp", _set("gcp:project", "<your-project-id>"))
    zone = gcp.get("zone") or DEFAULT_GCP_ZONE
    region = gcp.get("region") or zone.rsplit("-", 1)[0]
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
    return region, zone, project
