"""Every cloud fact in one place: which machines can serve SDXL (and which cannot), their prices,
the images they boot, the quotas they count against and the names each cloud gives their GPUs.

Everything here is plain data and pure functions, so config validation, the targets and the
preflight doctor all judge a machine the same way and explain a refusal the same way.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# SDXL base in fp16 peaks at about 11.6 GiB of VRAM at batch 1; a 16 GB T4 is the smallest
# card that serves it without CPU offload. One NVIDIA (CUDA) GPU of at least this size.
SDXL_MIN_GPU_MEMORY_GB = 16

# Providers report GPU memory in MiB (a T4 is 16384 MiB), so compare in the unit they use.
_MIN_GPU_MEMORY_MIB = SDXL_MIN_GPU_MEMORY_GB * 1024

PRICES_SOURCE = (
    "approximate on-demand Linux list prices: AWS EC2 On-Demand pricing (us-east-1) and "
    "Google Cloud GPU + Compute Engine pricing (us-central1)"
)
PRICES_AS_OF = "2025-06"


# --- images the VM targets boot ---------------------------------------------------------------

# AWS Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04), x86-64: NVIDIA driver,
# Docker and the NVIDIA container toolkit preinstalled, for G4dn/G5/G6/G6e/P4/P5. Chosen
# over the "single CUDA" and PyTorch DLAMIs because our container brings its own CUDA and
# torch: the base image is smaller and boots faster. AWS publishes the current id under
# this public SSM parameter (see "Finding the ID of a DLAMI" in the DLAMI guide).
AWS_DLAMI_SSM_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"

# Deep Learning VM "base" image, CUDA 12.9 + NVIDIA driver 580 preinstalled, on Ubuntu 24.04. The host's
# CUDA toolkit is not used (the server image brings CUDA 13); its 580 driver runs CUDA 13.
# Google's Deep Learning VM image list (docs.cloud.google.com/deep-learning-vm/docs/images)
# names the current base GPU families common-cu129-ubuntu-{2204,2404}-nvidia-580; the older
# common-cu12x families without a driver suffix are deprecated. Chosen over the framework
# images (pytorch-*) because the server container brings its own CUDA and torch, and over
# ubuntu-2204 because Ubuntu 24.04 is what the AWS DLAMI runs, so the shared cloud-init
# bootstrap meets the same distro on both clouds, with the longer OS support window.
GCP_DLVM_IMAGE_PROJECT = "deeplearning-platform-release"
# The oldest NVIDIA driver branch that runs each CUDA major (later minors of a major run on it too): the
# server image is CUDA 13.0 (image/Dockerfile). The DLAMI above ships 595, the DLVM family below 580.
MIN_DRIVER_FOR_CUDA = {12: 525, 13: 580}
GCP_DLVM_IMAGE_FAMILY = "common-cu129-ubuntu-2404-nvidia-580"


# --- GPUs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    key: str  # the config value, e.g. "a10g"
    model: str  # the name providers report, e.g. "A10G"
    memory_gb: int  # per GPU


GPUS: dict[str, Gpu] = {
    g.key: g
    for g in (
        Gpu("t4", "T4", 16),
        Gpu("a10g", "A10G", 24),
        Gpu("l4", "L4", 24),
        Gpu("l40s", "L40S", 48),
        Gpu("a100", "A100", 40),
        Gpu("a100-80gb", "A100", 80),
        Gpu("h100", "H100", 80),
    )
}
GPU_CHOICES = ("t4", "a10g", "l4", "l40s", "a100", "h100")  # what `gpu:` accepts
DEFAULT_GPU = {"aws": "a10g", "gcp": "t4", "huggingface": "a10g", "runpod": "l4"}


@dataclass(frozen=True)
class GcpAccelerator:
    type: str  # what Compute Engine calls it: the guest accelerator and accelerator-types name
    quota_metric: str  # its regional quota; Spot VMs use PREEMPTIBLE_<metric> where the project has it


GCP_ACCELERATORS: dict[str, GcpAccelerator] = {
    "t4": GcpAccelerator("nvidia-tesla-t4", "NVIDIA_T4_GPUS"),
    "l4": GcpAccelerator("nvidia-l4", "NVIDIA_L4_GPUS"),
    "a100": GcpAccelerator("nvidia-tesla-a100", "NVIDIA_A100_GPUS"),
    "a100-80gb": GcpAccelerator("nvidia-a100-80gb", "NVIDIA_A100_80GB_GPUS"),
    "h100": GcpAccelerator("nvidia-h100-80gb", "NVIDIA_H100_GPUS"),
}
GCP_GLOBAL_GPU_QUOTA = "GPUS_ALL_REGIONS"  # every GPU VM also counts here, project-wide


@dataclass(frozen=True)
class AwsQuota:
    code: str  # Service Quotas code, service "ec2"
    name: str  # as the console shows it


# EC2 counts GPU instances against per-region vCPU quotas, one per family class and capacity.
AWS_GPU_QUOTAS: dict[str, dict[str, AwsQuota]] = {
    "G": {"on-demand": AwsQuota("L-DB2E81BA", "Running On-Demand G and VT instances"),
          "spot": AwsQuota("L-3819A6DF", "All G and VT Spot Instance Requests")},
    "P": {"on-demand": AwsQuota("L-417A185B", "Running On-Demand P instances"),
          "spot": AwsQuota("L-7212CCBC", "All P Spot Instance Requests")},
}


def aws_quota_class(instance_type: str) -> str | None:
    """The AWS_GPU_QUOTAS class an instance type counts against, or None for a family outside them."""
    family = aws_family(instance_type)
    if family.startswith("p"):
        return "P"
    if family.startswith(("g", "vt")):
        return "G"
    return None


def aws_quota(instance_type: str, spot: bool) -> AwsQuota | None:
    quota_class = aws_quota_class(instance_type)
    return AWS_GPU_QUOTAS[quota_class]["spot" if spot else "on-demand"] if quota_class else None


@dataclass(frozen=True)
class Offer:
    """One rentable machine shape that fits SDXL."""

    cloud: str  # "aws" | "gcp"
    name: str  # instance type or machine type
    gpu: Gpu
    gpu_count: int
    vcpus: int
    ram_gib: float
    usd_per_hour: float | None  # machine and GPU together, on demand; None when not in the catalog
    accelerator: str | None = None  # GCP: the guest accelerator to attach (N1 + T4); None when built in

    def describe(self) -> str:
        gpus = f"{self.gpu_count}x {self.gpu.model}" if self.gpu_count > 1 else self.gpu.model
        price = f"~${self.usd_per_hour:.2f}/h" if self.usd_per_hour is not None else "price not in catalog"
        return (
            f"{self.name} ({gpus} {self.gpu.memory_gb} GB, {self.vcpus} vCPU, "
            f"{self.ram_gib:g} GiB RAM, {price})"
        )


def _aws(name: str, gpu: str, count: int, vcpus: int, ram: float, price: float) -> Offer:
    return Offer("aws", name, GPUS[gpu], count, vcpus, ram, price)


def _gcp(name: str, gpu: str, vcpus: int, ram: float, price: float, attached: bool = False) -> Offer:
    accelerator = GCP_ACCELERATORS[gpu].type if attached else None
    return Offer("gcp", name, GPUS[gpu], 1, vcpus, ram, price, accelerator)


# vCPU, RAM and GPU fields match EC2's DescribeInstanceTypes (a test checks them against moto's copy).
AWS_OFFERS: dict[str, Offer] = {
    o.name: o
    for o in (
        _aws("g4dn.xlarge", "t4", 1, 4, 16, 0.526),
        _aws("g4dn.2xlarge", "t4", 1, 8, 32, 0.752),
        _aws("g4dn.4xlarge", "t4", 1, 16, 64, 1.204),
        _aws("g4dn.8xlarge", "t4", 1, 32, 128, 2.176),
        _aws("g4dn.16xlarge", "t4", 1, 64, 256, 4.352),
        _aws("g4dn.12xlarge", "t4", 4, 48, 192, 3.912),
        _aws("g5.xlarge", "a10g", 1, 4, 16, 1.006),
        _aws("g5.2xlarge", "a10g", 1, 8, 32, 1.212),
        _aws("g5.4xlarge", "a10g", 1, 16, 64, 1.624),
        _aws("g5.8xlarge", "a10g", 1, 32, 128, 2.448),
        _aws("g5.16xlarge", "a10g", 1, 64, 256, 4.096),
        _aws("g5.12xlarge", "a10g", 4, 48, 192, 5.672),
        _aws("g6.xlarge", "l4", 1, 4, 16, 0.805),
        _aws("g6.2xlarge", "l4", 1, 8, 32, 0.978),
        _aws("g6.4xlarge", "l4", 1, 16, 64, 1.323),
        _aws("g6.8xlarge", "l4", 1, 32, 128, 2.014),
        _aws("g6.16xlarge", "l4", 1, 64, 256, 3.397),
        _aws("g6.12xlarge", "l4", 4, 48, 192, 4.602),
        _aws("g6e.xlarge", "l40s", 1, 4, 32, 1.861),
        _aws("g6e.2xlarge", "l40s", 1, 8, 64, 2.242),
        _aws("g6e.4xlarge", "l40s", 1, 16, 128, 3.004),
        _aws("g6e.8xlarge", "l40s", 1, 32, 256, 4.529),
        _aws("p4d.24xlarge", "a100", 8, 96, 1152, 21.96),
        _aws("p4de.24xlarge", "a100-80gb", 8, 96, 1152, 27.45),
        _aws("p5.4xlarge", "h100", 1, 16, 256, 6.88),
        _aws("p5.48xlarge", "h100", 8, 192, 2048, 55.04),
    )
}

# GCP: T4 attaches only to N1; L4 comes built into G2; A100 into A2; H100 into A3.
GCP_OFFERS: dict[str, Offer] = {
    o.name: o
    for o in (
        _gcp("n1-standard-4", "t4", 4, 15, 0.54, attached=True),
        _gcp("n1-standard-8", "t4", 8, 30, 0.73, attached=True),
        _gcp("n1-standard-16", "t4", 16, 60, 1.11, attached=True),
        _gcp("g2-standard-4", "l4", 4, 16, 0.71),
        _gcp("g2-standard-8", "l4", 8, 32, 0.85),
        _gcp("g2-standard-12", "l4", 12, 48, 1.00),
        _gcp("g2-standard-16", "l4", 16, 64, 1.15),
        _gcp("a2-highgpu-1g", "a100", 12, 85, 3.67),
        _gcp("a2-ultragpu-1g", "a100-80gb", 12, 170, 5.07),
        _gcp("a3-highgpu-1g", "h100", 26, 234, 11.06),
    )
}

# Zones that offer each accelerator (Google's "GPU regions and zones" table). The doctor
# checks the live list; this one catches typos and obviously wrong zones at preview time.
GCP_ACCELERATOR_ZONES: dict[str, tuple[str, ...]] = {
    "t4": (
        "us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f",
        "us-east1-c", "us-east1-d", "us-east4-a", "us-east4-b", "us-east4-c",
        "us-west1-a", "us-west1-b", "us-west2-b", "us-west2-c", "us-west4-a", "us-west4-b",
        "europe-west1-b", "europe-west1-c", "europe-west1-d", "europe-west2-a", "europe-west2-b",
        "europe-west3-b", "europe-west4-a", "europe-west4-b", "europe-west4-c",
        "asia-east1-a", "asia-east1-c", "asia-northeast1-a", "asia-northeast1-c",
        "asia-south1-a", "asia-south1-b", "asia-southeast1-a", "asia-southeast1-b", "asia-southeast1-c",
        "australia-southeast1-a", "southamerica-east1-a", "southamerica-east1-c",
    ),
    "l4": (
        "us-central1-a", "us-central1-b", "us-central1-c",
        "us-east1-b", "us-east1-c", "us-east1-d", "us-east4-a", "us-east4-c",
        "us-west1-a", "us-west1-b", "us-west1-c", "us-west4-a", "us-west4-c",
        "europe-west1-b", "europe-west1-c", "europe-west2-a", "europe-west2-b",
        "europe-west3-b", "europe-west4-a", "europe-west4-b", "europe-west4-c",
        "asia-east1-a", "asia-east1-c", "asia-northeast1-a", "asia-northeast1-c",
        "asia-south1-a", "asia-south1-b", "asia-southeast1-a", "asia-southeast1-b", "asia-southeast1-c",
    ),
    "a100": ("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f", "us-east1-b",
             "us-west1-b", "us-west4-b", "europe-west4-a", "europe-west4-b", "asia-northeast1-a"),
    "a100-80gb": ("us-central1-a", "us-central1-c", "us-east4-c", "us-east5-b", "europe-west4-a"),
    "h100": ("us-central1-a", "us-central1-c", "us-east4-a", "us-east4-b", "us-east5-a",
             "us-west1-a", "us-west4-a", "europe-west4-b", "asia-northeast1-b"),
}


@dataclass(frozen=True)
class GpuFacts:
    manufacturer: str
    model: str
    count: int
    memory_mib: int  # per GPU


@dataclass(frozen=True)
class InstanceFacts:
    """What a provider says about an instance type, reduced to what SDXL cares about."""

    name: str
    vcpus: int
    ram_gib: float = 0
    architectures: tuple[str, ...] = ("x86_64",)
    gpus: tuple[GpuFacts, ...] = ()
    other_accelerators: tuple[str, ...] = ()  # Inferentia, Trainium, Gaudi ...


# Families that fail for SDXL and that EC2's API no longer describes in every region
# (previous generation or retired), so the refusal must not depend on a live look-up.
_AWS_RETIRED_FAMILIES: dict[str, dict] = {
    "p2": {"gpus": (GpuFacts("NVIDIA", "K80", 1, 12 * 1024),)},
    "g3": {"gpus": (GpuFacts("NVIDIA", "M60", 1, 8 * 1024),)},
    "g3s": {"gpus": (GpuFacts("NVIDIA", "M60", 1, 8 * 1024),)},
    "g4ad": {"gpus": (GpuFacts("AMD", "Radeon Pro V520", 1, 8 * 1024),)},
    "dl1": {"other_accelerators": ("Habana Gaudi",)},
}

_AWS_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")


# --- EC2's instance-type record -----------------------------------------------------------------

# One record, two spellings: EC2's own API (DescribeInstanceTypes, as boto3 and moto return it) and
# the Pulumi AWS provider's aws.ec2.get_instance_type (camelCase on the wire, snake_case attributes
# on the SDK's result object). The program, the doctor and the tests' mocks all read this one table.
EC2_RECORD_FIELDS: dict[str, tuple[str, str]] = {  # fact: (EC2 API path, Pulumi provider path)
    "name": ("InstanceType", "instanceType"),
    "vcpus": ("VCpuInfo.DefaultVCpus", "defaultVcpus"),
    "memory_mib": ("MemoryInfo.SizeInMiB", "memorySize"),
    "architectures": ("ProcessorInfo.SupportedArchitectures", "supportedArchitectures"),
    "gpus": ("GpuInfo.Gpus", "gpuses"),
    "inference_accelerators": ("InferenceAcceleratorInfo.Accelerators", "inferenceAccelerators"),
    "neuron_devices": ("NeuronInfo.NeuronDevices", "neuronDevices"),
}
EC2_DEVICE_FIELDS: dict[str, tuple[str, str]] = {  # each GPU, inference accelerator or Neuron device
    "manufacturer": ("Manufacturer", "manufacturer"),
    "name": ("Name", "name"),
    "count": ("Count", "count"),
    "memory_mib": ("MemoryInfo.SizeInMiB", "memorySize"),
}
EC2_SHAPES = ("ec2", "pulumi")


def _dig(record: object, path: str) -> object:
    """A field by path, from a dict (either spelling) or from the provider SDK's result object."""
    for part in path.split("."):
        if record is None:
            return None
        # The provider SDK's result objects (and their nested dicts) use the snake_case of the wire names.
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", part).lower()
        if isinstance(record, Mapping):
            record = record[part] if part in record else record.get(snake)
        else:
            record = getattr(record, snake, None)
    return record


def _device(device: object, shape: int) -> dict[str, object]:
    return {fact: _dig(device, paths[shape]) for fact, paths in EC2_DEVICE_FIELDS.items()}


def instance_facts(record: object, shape: str = "ec2") -> InstanceFacts:
    """An instance-type record, in either spelling (EC2_SHAPES), reduced to what `why_unfit` judges."""
    at = EC2_SHAPES.index(shape)
    field = {fact: _dig(record, paths[at]) for fact, paths in EC2_RECORD_FIELDS.items()}
    devices = {kind: [_device(d, at) for d in field[kind] or []]
               for kind in ("gpus", "inference_accelerators", "neuron_devices")}
    return InstanceFacts(
        name=str(field["name"]),
        vcpus=int(field["vcpus"]),
        ram_gib=(field["memory_mib"] or 0) / 1024,
        architectures=tuple(field["architectures"] or ()),
        gpus=tuple(GpuFacts(g["manufacturer"], g["name"], g["count"], g["memory_mib"]) for g in devices["gpus"]),
        # Inferentia shows up as both an inference accelerator and a Neuron device.
        other_accelerators=tuple(dict.fromkeys(
            [f"{a['manufacturer']} {a['name']}" for a in devices["inference_accelerators"]]
            + [f"AWS {d['name']}" for d in devices["neuron_devices"]]
        )),
    )


def convert_ec2_record(record: Mapping, to: str = "pulumi") -> dict:
    """An EC2 API record respelled as the provider returns it (what the tests' mocks answer with)."""
    at = EC2_SHAPES.index(to)

    def place(target: dict, path: str, value: object) -> None:
        *parents, leaf = path.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value

    converted: dict = {}
    for fact, paths in EC2_RECORD_FIELDS.items():
        value = _dig(record, paths[0])
        if fact in ("gpus", "inference_accelerators", "neuron_devices"):
            items = []
            for device in value or []:
                item: dict = {}
                for device_paths in EC2_DEVICE_FIELDS.values():
                    place(item, device_paths[at], _dig(device, device_paths[0]))
                items.append(item)
            value = items
        place(converted, paths[at], value)
    return converted


# --- refusals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A machine (or GPU choice) that cannot run SDXL: what was asked, why not, what fits instead."""

    key: str  # the config key that asked for it, e.g. instanceType
    value: str  # what it asked for
    why: str
    alternatives: tuple[Offer, ...] = ()
    fix: str = ""

    @property
    def headline(self) -> str:
        return f"{self.key} '{self.value}' cannot run SDXL: {self.why}."

    @property
    def details(self) -> tuple[str, ...]:
        """The lines between the headline and the fix: what fits instead, if anything does."""
        if not self.alternatives:
            return ()
        return ("Nearest types that fit:", *(f"  - {o.describe()}" for o in self.alternatives))

    def render(self) -> str:
        """The refusal as text, for an exception raised outside config validation (which lists it as a Problem)."""
        return "\n".join([self.headline, *self.details, *([f"fix: {self.fix}"] if self.fix else [])])


class UnfitMachineError(ValueError):
    """A machine type that cannot run SDXL; `refusal` says why and what to pick instead."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.render())
        self.refusal = refusal


def aws_family(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def looks_like_aws_type(name: str) -> bool:
    return bool(_AWS_TYPE_RE.match(name))


def _vcpus_from_size(size: str) -> int:
    """EC2 sizes follow large=2, xlarge=4, Nxlarge=4N vCPUs; good enough to rank alternatives."""
    if size == "large":
        return 2
    match = re.fullmatch(r"(\d*)xlarge", size)
    if match:
        return 4 * int(match.group(1) or 1)
    return 4


def retired_aws_facts(instance_type: str) -> InstanceFacts | None:
    family = aws_family(instance_type)
    known = _AWS_RETIRED_FAMILIES.get(family)
    if known is None:
        return None
    size = instance_type.split(".", 1)[1] if "." in instance_type else "xlarge"
    return InstanceFacts(name=instance_type, vcpus=_vcpus_from_size(size), **known)


def why_unfit(facts: InstanceFacts) -> str | None:
    """The reason this type cannot run SDXL, or None when it can."""
    floor = f"SDXL needs one NVIDIA GPU with at least {SDXL_MIN_GPU_MEMORY_GB} GB of memory"
    if "x86_64" not in facts.architectures:
        return (
            f"it is an Arm ({'/'.join(facts.architectures)}) type; the server image is built "
            "for x86-64 CUDA"
        )
    if not facts.gpus:
        if facts.other_accelerators:
            return (
                f"its accelerators ({', '.join(facts.other_accelerators)}) are not NVIDIA GPUs "
                f"and do not run CUDA; {floor}"
            )
        return f"it is CPU-only; {floor}"
    best = max(facts.gpus, key=lambda g: g.memory_mib)
    if best.manufacturer.upper() != "NVIDIA":
        return f"its GPU is an {best.manufacturer} {best.model}, not NVIDIA, so CUDA does not run on it; {floor}"
    if best.memory_mib < _MIN_GPU_MEMORY_MIB:
        return (
            f"its NVIDIA {best.model} has {best.memory_mib / 1024:.3g} GB per GPU, below the "
            f"{SDXL_MIN_GPU_MEMORY_GB} GB that SDXL base in fp16 needs"
        )
    return None


def nearest_offers(offers: dict[str, Offer], vcpus: int | None, limit: int = 3) -> list[Offer]:
    """The fitting single-GPU types closest in size to what was asked for, cheapest first on ties."""
    single = [o for o in offers.values() if o.gpu_count == 1]
    target = max(vcpus or 4, 1)
    ranked = sorted(single, key=lambda o: (abs(math.log2(o.vcpus / target)), o.usd_per_hour))
    return sorted(ranked[:limit], key=lambda o: o.usd_per_hour)


MACHINE_KEY = {"aws": "instanceType", "gcp": "machineType"}  # the config key naming a machine


def offers_on(cloud: str) -> dict[str, Offer]:
    if cloud in HOSTED_OFFERS:  # the hosted GPU providers, at the end of this file
        return HOSTED_OFFERS[cloud]
    if cloud == "kubernetes":  # a GPU class per catalog GPU: the cluster's nodes are the user's
        return K8S_OFFERS
    return AWS_OFFERS if cloud == "aws" else GCP_OFFERS


def refusal(cloud: str, name: str, reason: str, vcpus: int | None, fix: str | None = None) -> UnfitMachineError:
    key = MACHINE_KEY[cloud]
    nearest = tuple(nearest_offers(offers_on(cloud), vcpus))
    return UnfitMachineError(Refusal(key, name, reason, nearest, fix or f"pulumi config set {key} {nearest[0].name}"))


def smallest_offer(cloud: str, gpu_key: str) -> Offer:
    """The cheapest single-GPU type with this GPU: what `gpu: <key>` resolves to."""
    offers = offers_on(cloud)
    fitting = [o for o in offers.values() if o.gpu.key == gpu_key and o.gpu_count == 1]
    if not fitting:
        available = sorted({o.gpu.key for o in offers.values()} & set(GPU_CHOICES))
        raise UnfitMachineError(Refusal(
            "gpu", gpu_key, f"it is not offered on {cloud.upper()}, which offers {', '.join(available)}",
            fix=f"pulumi config set gpu {DEFAULT_GPU[cloud]}"))
    return min(fitting, key=lambda o: o.usd_per_hour)


def judge_aws_type(facts: InstanceFacts) -> None:
    """Raise UnfitMachineError with alternatives when the facts rule SDXL out."""
    reason = why_unfit(facts)
    if reason:
        raise refusal("aws", facts.name, reason, facts.vcpus)


def offer_from_aws_facts(facts: InstanceFacts) -> Offer:
    """Describe a fitting type the catalog does not list, from the provider's own data."""
    best = max(facts.gpus, key=lambda g: g.memory_mib)
    memory_gb = round(best.memory_mib / 1024)
    known = next((g for g in GPUS.values() if g.model == best.model and g.memory_gb == memory_gb), None)
    gpu = known or Gpu(best.model.lower(), best.model, memory_gb)
    return Offer("aws", facts.name, gpu, best.count, facts.vcpus, facts.ram_gib, None)


# --- GCP ------------------------------------------------------------------------------------

# Machine families that can carry a GPU here: N1 (+T4), G2 (L4), A2 (A100), A3 (H100). Any other
# family (e2, n2, c3 ...) has none.
_GCP_GPU_FAMILIES = ("n1", "g2", "a2", "a3")


def _gcp_vcpus(machine_type: str) -> int | None:
    match = re.search(r"-(\d+)(?:-lssd)?$", machine_type)
    return int(match.group(1)) if match else None


def resolve_gcp(machine_type: str, gpu_key: str | None) -> Offer:
    """Validate a GCP machine type, and the GPU asked for with it, against GCP's placement rules."""
    vcpus = _gcp_vcpus(machine_type)
    family = machine_type.split("-", 1)[0]
    offer = GCP_OFFERS.get(machine_type)
    if family == "g2" and gpu_key not in (None, "l4"):
        raise refusal("gcp", machine_type, "G2 machines come with their L4 built in; an extra "
                      f"guest accelerator ({gpu_key}) cannot be attached", vcpus,
                      fix="pulumi config rm gpu (the G2's own L4 serves SDXL)")
    if gpu_key == "t4" and family != "n1":
        raise refusal("gcp", machine_type, "the T4 attaches only to N1 machine types", vcpus)
    if offer is not None:
        if gpu_key not in (None, offer.gpu.key):
            raise refusal("gcp", machine_type, f"it comes with a {offer.gpu.model}, not the "
                          f"{GPUS[gpu_key].model} that gpu: {gpu_key} asks for", vcpus)
        return offer
    if family == "n1":
        raise refusal("gcp", machine_type, "the catalog pairs a T4 only with n1-standard-4, -8 or -16 "
                      "(smaller N1 shapes starve the pipeline of RAM)", vcpus)
    if family not in _GCP_GPU_FAMILIES:
        raise refusal("gcp", machine_type, "it has no GPU; "
                      f"SDXL needs one NVIDIA GPU with at least {SDXL_MIN_GPU_MEMORY_GB} GB", vcpus)
    raise refusal("gcp", machine_type, "it is not a GPU shape this project supports", vcpus)


# --- fleets: many GPUs behind the cloud's load balancer -------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """Seconds one GPU takes for one SDXL base image at 1024x1024, 30 steps, batch 1, in eager bf16/fp16 with
    PyTorch's SDPA attention: how the server runs without --compile."""

    seconds_per_image: float
    measured: bool  # False: an estimate until bench/ measures this GPU
    basis: str  # where the number comes from

    @property
    def images_per_hour(self) -> float:
        return 3600 / self.seconds_per_image


# The anchors (ARCHITECTURE.md "Facts worth knowing"): measured 2.27 s per image on one H200 (fp16 eager);
# published 3.31 s on an A100 (bf16 + SDPA, diffusers' "fast diffusion" write-up); published about 26.5 s on a
# T4 for 25 steps, so 31.8 s for 30. The GPUs without an anchor of their own are derived from the T4's time,
# scaled by dense FP16 tensor throughput (NVIDIA's datasheets, without sparsity: T4 65, A10 125, L4 121, L40S
# 362 TFLOPS; the A10G is AWS's variant of the A10, with its 24 GB and 600 GB/s, and its figure stands in).
# That rule is deliberately pessimistic: applied to the A100 (312 TFLOPS) it gives 6.6 s against the published
# 3.31 s, about twice too slow, because the T4 anchor is a 70 W card that throttles. A fleet sized from these
# numbers therefore scales out early rather than late; `targetRequestsPerHour` overrides them once measured.
_T4_SECONDS_PER_IMAGE = round(26.5 * 30 / 25, 1)
DENSE_FP16_TENSOR_TFLOPS = {"t4": 65, "a10g": 125, "l4": 121, "l40s": 362, "a100": 312}


def _scaled_from_t4(gpu_key: str) -> Throughput:
    seconds = round(_T4_SECONDS_PER_IMAGE * DENSE_FP16_TENSOR_TFLOPS["t4"] / DENSE_FP16_TENSOR_TFLOPS[gpu_key], 1)
    return Throughput(seconds, False, f"estimate: the T4's {_T4_SECONDS_PER_IMAGE} s x 65 / "
                                      f"{DENSE_FP16_TENSOR_TFLOPS[gpu_key]} TFLOPS (dense FP16 tensor)")


GPU_THROUGHPUT: dict[str, Throughput] = {
    "t4": Throughput(_T4_SECONDS_PER_IMAGE, False, "published: about 26.5 s for 25 steps, scaled to 30"),
    "a10g": _scaled_from_t4("a10g"),
    "l4": _scaled_from_t4("l4"),
    "l40s": _scaled_from_t4("l40s"),
    "a100": Throughput(3.31, False, "published: diffusers' fast-diffusion write-up, bf16 + SDPA, 30 steps"),
    "a100-80gb": Throughput(3.31, False, "published for the A100 40 GB; the same chip"),
    "h100": Throughput(2.5, False, "measured 2.27 s on an H200 (the same Hopper compute, more bandwidth), +10%"),
}
# Scale out when the replicas run at this share of their estimated throughput: the headroom absorbs the minutes
# a new GPU takes to boot.
FLEET_TARGET_UTILISATION = 0.8
# A spot fleet may mix in other types of the same size, whose GPU is at most this much slower than the one
# configured (estimated seconds per image): the load balancer routes by least outstanding requests, which
# absorbs a small difference, not a GPU that is twice as slow. Nor one whose on-demand price is more than
# SPOT_MIX_MAX_PRICE times the configured type's, so the fleet's price stays near what was chosen.
SPOT_MIX_MAX_SLOWDOWN = 1.25
SPOT_MIX_MAX_PRICE = 2.0


def throughput(gpu: Gpu) -> Throughput:
    """The GPU's estimated throughput; an uncatalogued GPU (a type EC2 described) is taken as slow as a T4."""
    return GPU_THROUGHPUT.get(gpu.key, GPU_THROUGHPUT["t4"])


def target_requests_per_hour(offers: tuple[Offer, ...]) -> int:
    """Generation requests per hour one replica takes before the fleet scales out, from the slowest GPU in the
    fleet's types, at FLEET_TARGET_UTILISATION."""
    slowest = max((throughput(o.gpu) for o in offers), key=lambda t: t.seconds_per_image)
    return max(1, math.floor(slowest.images_per_hour * FLEET_TARGET_UTILISATION))


def aws_spot_mix(primary: Offer) -> tuple[Offer, ...]:
    """The types a spot fleet may launch: the configured one first, then the catalog's single-GPU types of the
    same size (vCPUs, so each counts the same against the quota) with a GPU no more than SPOT_MIX_MAX_SLOWDOWN
    slower and a price no more than SPOT_MIX_MAX_PRICE higher, cheapest first. Every one comes from AWS_OFFERS,
    where only NVIDIA GPUs of 16 GB or more exist; an uncatalogued type (no price) mixes with nothing."""
    if primary.usd_per_hour is None:
        return (primary,)
    limit = throughput(primary.gpu).seconds_per_image * SPOT_MIX_MAX_SLOWDOWN
    others = [o for o in AWS_OFFERS.values()
              if o.name != primary.name and o.gpu_count == 1 and o.vcpus == primary.vcpus
              and o.gpu.memory_gb >= SDXL_MIN_GPU_MEMORY_GB and throughput(o.gpu).seconds_per_image <= limit
              and o.usd_per_hour <= primary.usd_per_hour * SPOT_MIX_MAX_PRICE]
    return (primary, *sorted(others, key=lambda o: (o.usd_per_hour, o.name)))


# Fronts and their time limits, in seconds.
CLOUDFRONT_ORIGIN_READ_TIMEOUT_MAX_S = 60  # the most CloudFront waits for an origin without a quota increase
ALB_IDLE_TIMEOUT_MAX_S = 4000
# CloudFront's managed policies (AWS "Use managed cache policies" / "... origin request policies"): no caching,
# and every viewer header (Authorization, Origin, the preflight's Access-Control-Request-*) but Host passed on.
CLOUDFRONT_CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
CLOUDFRONT_ALL_VIEWER_EXCEPT_HOST_HEADER = "b689b0a8-53d0-40ab-baf2-68738e2966ac"
# The AWS-managed prefix list of CloudFront's origin-facing servers (IPv4).
CLOUDFRONT_ORIGIN_FACING_PREFIX_LIST = "com.amazonaws.global.cloudfront.origin-facing"
# Where Google's load balancer proxies and health checks connect from (Google's health-check documentation).
GOOGLE_FRONT_END_RANGES = ("35.191.0.0/16", "130.211.0.0/22")
# Google's autohealing waits at most this long (initialDelaySec: 0 to 3600) before judging a new VM.
GCP_AUTOHEALING_MAX_DELAY_S = 3600

# The front's fixed hourly price, beside the GPUs (per-request and per-GB charges come on top): an ALB-hour in
# us-east-1 (CloudFront has none); Google's global forwarding rules, the first five together.
FLEET_FRONT_USD_PER_HOUR = {"aws": 0.0225, "gcp": 0.025}
# AWS bills every public IPv4 address by the hour since 2024-02: each instance's, and the ALB's in each AZ.
AWS_PUBLIC_IPV4_USD_PER_HOUR = 0.005
FLEET_FRONT_PRICES_SOURCE = ("AWS Elastic Load Balancing pricing (ALB-hour), Amazon VPC pricing (public IPv4); "
                             "Google Cloud Load Balancing pricing (forwarding rules)")
# A fleet VM's ephemeral external address counts against this regional Compute Engine quota.
GCP_IN_USE_ADDRESSES_QUOTA = "IN_USE_ADDRESSES"
# --- hosted GPU providers: Hugging Face Inference Endpoints and RunPod Pods ---------------------------------

# The config key naming a hosted provider's hardware (the VM clouds' keys are MACHINE_KEY above).
HOSTED_MACHINE_KEY = {"huggingface": "hfHardware", "runpod": "runpodGpuType"}


@dataclass(frozen=True)
class HostedOffer(Offer):
    """A hosted provider's GPU. They rent a GPU, not a machine shape: the vCPUs and RAM that come with it are
    theirs to pick (0 here), so `describe` leaves them out."""

    vendor: str = ""  # Hugging Face: the cloud the endpoint runs on (aws, gcp)
    region: str = ""  # Hugging Face: that cloud's region
    instance_type: str = ""  # Hugging Face's instanceType (nvidia-a10g); RunPod: the GPU type id (NVIDIA L4)
    instance_size: str = ""  # Hugging Face's instanceSize: x1 is one GPU

    def describe(self) -> str:
        price = (f"~${self.usd_per_hour:.2f}/h" if self.usd_per_hour is not None
                 else "priced live: python -m tools.doctor --suggest")
        where = f", {self.vendor} {self.region}" if self.vendor else ""
        return f"{self.name} ({self.gpu.model} {self.gpu.memory_gb} GB{where}, {price})"


# Hugging Face Inference Endpoints. create_inference_endpoint takes vendor, region, accelerator, instance_type and
# instance_size; list_inference_endpoints_hardware() names each combination `<vendor>-<region>-<type>-<size>`
# (its docstring: 'aws-us-east-1-nvidia-l4-x1'), the value `hfHardware` takes. Instance types and prices:
# Hugging Face's pricing page (hf-endpoints-documentation, docs/source/support/pricing.md, last changed on
# HF_PRICES_AS_OF); regions: its FAQ (AWS us-east-1 and eu-west-1, GCP us-east4, Azure eastus). The catalog
# lists one region per cloud; the doctor checks the live list, with its quotas and prices.
HF_PRICES_SOURCE = "Hugging Face Inference Endpoints pricing page (GPU instances, one replica)"
HF_PRICES_AS_OF = "2026-05-19"
HF_REGIONS = {"aws": "us-east-1", "gcp": "us-east4"}
HF_GPU_TYPES = {  # instanceType -> the GPU
    "nvidia-t4": "t4", "nvidia-l4": "l4", "nvidia-a10g": "a10g", "nvidia-l40s": "l40s",
    "nvidia-a100": "a100-80gb", "nvidia-h100": "h100",
}
HF_GPU_PRICES = {  # (vendor, instanceType) -> USD per hour for one x1 replica (one GPU)
    ("aws", "nvidia-t4"): 0.5, ("aws", "nvidia-l4"): 0.8, ("aws", "nvidia-a10g"): 1.0,
    ("aws", "nvidia-l40s"): 1.8, ("aws", "nvidia-a100"): 2.5,
    ("gcp", "nvidia-t4"): 0.5, ("gcp", "nvidia-l4"): 0.7, ("gcp", "nvidia-a100"): 3.6, ("gcp", "nvidia-h100"): 10.0,
}
# Where the pricing page lists less GPU memory than the card has: AWS's nvidia-t4 x1 is "14 GB" there (GCP's
# nvidia-t4 x1 is "16 GB"). That is what an endpoint gets, and it is below SDXL_MIN_GPU_MEMORY_GB: refused, never
# offered as a choice. The doctor judges the live list by its gpu_memory_gb the same way.
HF_LISTED_MEMORY_GB = {("aws", "nvidia-t4"): 14}
HF_CPU_TYPES = ("intel-icl", "intel-spr", "intel-xeon")  # the pricing page's CPU instances
HF_OTHER_ACCELERATORS = {"inf2": "AWS Inferentia2", "tpu": "Google TPU v5e"}  # its non-GPU accelerators
HF_ONE_GPU = "x1"
_HF_HARDWARE_RE = re.compile(
    r"^(?P<vendor>aws|gcp|azure)-(?P<region>[a-z0-9-]+?)-(?P<type>nvidia-[a-z0-9]+|intel-[a-z]+|inf2|tpu)"
    r"-(?P<size>[0-9x]+)$")


def hf_hardware_id(vendor: str, region: str, instance_type: str, instance_size: str = HF_ONE_GPU) -> str:
    return f"{vendor}-{region}-{instance_type}-{instance_size}"


def _hf_offer(vendor: str, region: str, instance_type: str, instance_size: str = HF_ONE_GPU) -> HostedOffer:
    return HostedOffer("huggingface", hf_hardware_id(vendor, region, instance_type, instance_size),
                       GPUS[HF_GPU_TYPES[instance_type]], 1, 0, 0, HF_GPU_PRICES.get((vendor, instance_type)),
                       vendor=vendor, region=region, instance_type=instance_type, instance_size=instance_size)


def hf_listed_memory_gb(vendor: str, instance_type: str) -> int:
    """The GPU memory Hugging Face gives an endpoint of this type on this cloud."""
    return HF_LISTED_MEMORY_GB.get((vendor, instance_type), GPUS[HF_GPU_TYPES[instance_type]].memory_gb)


HF_OFFERS: dict[str, HostedOffer] = {
    o.name: o for o in (_hf_offer(vendor, HF_REGIONS[vendor], kind) for vendor, kind in HF_GPU_PRICES
                        if hf_listed_memory_gb(vendor, kind) >= SDXL_MIN_GPU_MEMORY_GB)
}

# RunPod Pods. create_pod's gpu_type_id is RunPod's GPU type id; these and their memory are RunPod's
# "GPU types" reference (docs.runpod.io/references/gpu-types, table generated RUNPOD_GPU_TYPES_AS_OF): NVIDIA,
# 16 GB or more, one per pod. RunPod publishes pod prices only in its console and API (they vary with the
# cloud type and the host), so the catalog has none: the doctor shows the API's live securePrice and
# communityPrice, and the stack's hourlyCostUsd is the pod's own costPerHr.
RUNPOD_GPU_TYPES_AS_OF = "2026-02-12"
RUNPOD_PRICES_SOURCE = "RunPod's API, live (gpuTypes securePrice/communityPrice; the pod's costPerHr)"
RUNPOD_GPUS: dict[str, Gpu] = {
    "NVIDIA RTX A4000": Gpu("rtx-a4000", "RTX A4000", 16),
    "NVIDIA RTX A5000": Gpu("rtx-a5000", "RTX A5000", 24),
    "NVIDIA L4": GPUS["l4"],
    "NVIDIA GeForce RTX 4090": Gpu("rtx-4090", "RTX 4090", 24),
    "NVIDIA A40": Gpu("a40", "A40", 48),
    "NVIDIA L40S": GPUS["l40s"],
    "NVIDIA A100 80GB PCIe": GPUS["a100-80gb"],
    "NVIDIA H100 80GB HBM3": GPUS["h100"],
}
# RunPod types that cannot run SDXL, refused by name with the reason (same table).
RUNPOD_UNFIT: dict[str, GpuFacts] = {
    "NVIDIA GeForce RTX 3070": GpuFacts("NVIDIA", "RTX 3070", 1, 8 * 1024),
    "NVIDIA GeForce RTX 3080": GpuFacts("NVIDIA", "RTX 3080", 1, 10 * 1024),
    "NVIDIA GeForce RTX 3080 Ti": GpuFacts("NVIDIA", "RTX 3080 Ti", 1, 12 * 1024),
    "NVIDIA GeForce RTX 4070 Ti": GpuFacts("NVIDIA", "RTX 4070 Ti", 1, 12 * 1024),
    "NVIDIA RTX A2000": GpuFacts("NVIDIA", "RTX A2000", 1, 6 * 1024),
    "AMD Instinct MI300X OAM": GpuFacts("AMD", "Instinct MI300X", 1, 192 * 1024),
}
RUNPOD_CLOUD_TYPES = ("SECURE", "COMMUNITY")  # create_pod's cloud_type: RunPod's data centres, or hosts' own
RUNPOD_DEFAULT_CLOUD_TYPE = "SECURE"
RUNPOD_OFFERS: dict[str, HostedOffer] = {
    gpu_type: HostedOffer("runpod", gpu_type, gpu, 1, 0, 0, None, instance_type=gpu_type)
    for gpu_type, gpu in RUNPOD_GPUS.items()
}

HOSTED_OFFERS: dict[str, dict[str, HostedOffer]] = {"huggingface": HF_OFFERS, "runpod": RUNPOD_OFFERS}


def hosted_alternatives(cloud: str, vendor: str | None = None, limit: int = 3) -> tuple[HostedOffer, ...]:
    """The fitting choices to offer instead: the same vendor first, then the cheapest (smallest when unpriced)."""
    ranked = sorted(HOSTED_OFFERS[cloud].values(), key=lambda o: (
        o.vendor != vendor, o.usd_per_hour if o.usd_per_hour is not None else math.inf, o.gpu.memory_gb))
    return tuple(sorted(ranked[:limit], key=lambda o: (o.usd_per_hour or 0, o.gpu.memory_gb)))


def hosted_refusal(cloud: str, name: str, reason: str, vendor: str | None = None) -> UnfitMachineError:
    key = HOSTED_MACHINE_KEY[cloud]
    nearest = hosted_alternatives(cloud, vendor)
    return UnfitMachineError(Refusal(key, name, reason, nearest,
                                     f"pulumi config set {key} {shlex.quote(nearest[0].name)}"))


def _floor() -> str:
    return f"SDXL needs one NVIDIA GPU with at least {SDXL_MIN_GPU_MEMORY_GB} GB of memory"


def _matches_gpu(offer: Offer, gpu_key: str | None) -> bool:
    return gpu_key is None or offer.gpu.key.split("-")[0] == gpu_key


def resolve_huggingface(hardware: str, gpu_key: str | None) -> HostedOffer:
    """Judge a Hugging Face hardware id (`hfHardware`): one NVIDIA GPU of 16 GB or more; CPU instances,
    Inferentia and TPUs, multi-GPU sizes and GPUs the catalog does not know are refused with fitting choices."""
    parts = _HF_HARDWARE_RE.match(hardware)
    if parts is None:
        raise hosted_refusal("huggingface", hardware, "it is not a Hugging Face hardware id "
                             "(<vendor>-<region>-<instanceType>-<size>, as list_inference_endpoints_hardware() "
                             "names them)")
    vendor, region, kind, size = parts["vendor"], parts["region"], parts["type"], parts["size"]
    if kind in HF_CPU_TYPES:
        raise hosted_refusal("huggingface", hardware, f"it is CPU-only; {_floor()}", vendor)
    if kind in HF_OTHER_ACCELERATORS:
        raise hosted_refusal("huggingface", hardware, f"its accelerator ({HF_OTHER_ACCELERATORS[kind]}) is not an "
                             f"NVIDIA GPU and does not run CUDA; {_floor()}", vendor)
    if kind not in HF_GPU_TYPES:
        raise hosted_refusal("huggingface", hardware, f"the catalog does not know the GPU of {kind}", vendor)
    if size != HF_ONE_GPU:
        raise hosted_refusal("huggingface", hardware, f"size {size} has several GPUs and the server uses one "
                             f"(size {HF_ONE_GPU})", vendor)
    listed = hf_listed_memory_gb(vendor, kind)
    if listed < SDXL_MIN_GPU_MEMORY_GB:
        raise hosted_refusal("huggingface", hardware, f"Hugging Face gives its {kind} on {vendor} {listed} GB of GPU "
                             f"memory, below the {SDXL_MIN_GPU_MEMORY_GB} GB SDXL needs", vendor)
    offer = HF_OFFERS.get(hardware) or _hf_offer(vendor, region, kind)
    if not _matches_gpu(offer, gpu_key):
        raise hosted_refusal("huggingface", hardware, f"it has a {offer.gpu.model} GPU but gpu is set to "
                             f"'{gpu_key}'", vendor)
    return offer


def resolve_runpod(gpu_type: str, gpu_key: str | None) -> HostedOffer:
    """Judge a RunPod GPU type id (`runpodGpuType`), as `why_unfit` judges a machine."""
    if gpu_type in RUNPOD_UNFIT:
        reason = why_unfit(InstanceFacts(gpu_type, 0, gpus=(RUNPOD_UNFIT[gpu_type],)))
        raise hosted_refusal("runpod", gpu_type, reason or "it is not in the catalog")
    offer = RUNPOD_OFFERS.get(gpu_type)
    if offer is None:
        raise hosted_refusal("runpod", gpu_type, "it is not one of the catalog's RunPod GPU types (NVIDIA, "
                             f"{SDXL_MIN_GPU_MEMORY_GB} GB or more: {', '.join(RUNPOD_GPUS)})")
    if not _matches_gpu(offer, gpu_key):
        raise hosted_refusal("runpod", gpu_type, f"it is a {offer.gpu.model} but gpu is set to '{gpu_key}'")
    return offer


# --- GCP label format of the CI ttl ---------------------------------------------------------------------------
# Label values allow only [a-z0-9_-] (and some Unicode letters), <= 63 chars: no ':' or 'T'. The RFC 3339 ttl is
# stored in UTC in this reversible form, e.g. 2030-01-31T18:00:00Z -> 2030-01-31t18-00-00z: stacks/gcp.py writes
# it, the CI sweep (tools/ci/sweep.py) parses it back with datetime.strptime(value, GCP_TTL_LABEL_FORMAT).
GCP_TTL_LABEL_FORMAT = "%Y-%m-%dt%H-%M-%Sz"

# --- Kubernetes (cloud: kubernetes) ----------------------------------------------------------------
# The stack deploys into a cluster that already has NVIDIA GPU nodes. A node names its GPU through labels that
# differ by who set them; each key and value format below is from that platform's own documentation or source:
# - NVIDIA GPU Feature Discovery (the GPU Operator runs it; CoreWeave CKS runs the Operator itself): product is
#   the driver's name with spaces as dashes, case kept (k8s-device-plugin internal/lm/resource.go `sanitise`),
#   `-SHARED` appended under time-slicing; memory in MiB as the driver reports it (docs/gpu-feature-discovery:
#   "Memory of the GPU in mebibytes (MiB)", example Tesla-T4 15360); compute capability major/minor.
# - GKE: the Compute Engine accelerator type (cloud.google.com/compute/docs/gpus: nvidia-tesla-t4, nvidia-l4 ...).
# - Karpenter and EKS Auto Mode: EC2's GPU name lower-kebab-cased, memory per GPU in MiB (karpenter-provider-aws
#   pkg/providers/instancetype/types.go; EKS user guide, create-node-pool: instance-gpu-name t4, -memory 16384).
# - CoreWeave: `gpu.nvidia.com/class` (the key is on its "Advanced Label Selectors" page) and, on CKS, each node
#   pool's `node.kubernetes.io/instance-type` (e.g. gd-8xh100ib-i128, confirmed in CoreWeave's docs). The class
#   VALUES below are UNCONFIRMED: seen only in third-party code and examples (legacy CoreWeave Cloud style, A40,
#   RTX_A6000, A100_NVLINK_80GB...); current CKS clusters may carry other values. So the label is open (an unknown
#   value is not refused) and the instance type or GFD's labels are the surer selectors on CKS.
K8S_GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's resource; GPUs go in limits only
K8S_LABEL_GFD_PRODUCT = "nvidia.com/gpu.product"
K8S_LABEL_GFD_MEMORY = "nvidia.com/gpu.memory"
K8S_LABEL_GFD_COMPUTE_MAJOR = "nvidia.com/gpu.compute.major"
K8S_LABEL_GFD_COMPUTE_MINOR = "nvidia.com/gpu.compute.minor"
K8S_LABEL_GFD_SHARING = "nvidia.com/gpu.sharing-strategy"  # none, time-slicing or mps
K8S_GFD_SHARED_STRATEGIES = ("time-slicing", "mps")
K8S_LABEL_GKE = "cloud.google.com/gke-accelerator"
K8S_LABEL_EKS_AUTO = "eks.amazonaws.com/instance-gpu-name"
K8S_LABEL_EKS_AUTO_MEMORY = "eks.amazonaws.com/instance-gpu-memory"
K8S_LABEL_KARPENTER = "karpenter.k8s.aws/instance-gpu-name"
K8S_LABEL_KARPENTER_MEMORY = "karpenter.k8s.aws/instance-gpu-memory"
K8S_LABEL_COREWEAVE = "gpu.nvidia.com/class"
K8S_LABEL_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
# The labels that say which GPU a node has, with the platform that sets each (for messages).
K8S_GPU_LABELS = {
    K8S_LABEL_GFD_PRODUCT: "NVIDIA GPU Feature Discovery",
    K8S_LABEL_GKE: "GKE",
    K8S_LABEL_EKS_AUTO: "EKS Auto Mode",
    K8S_LABEL_KARPENTER: "Karpenter",
    K8S_LABEL_COREWEAVE: "CoreWeave",
}
# GFD's and EC2's memory is what the driver can use, below the marketing size (T4: 15360 MiB under GFD, 16384 in
# EC2's record; A10G 23028; L4 23034): "16 GB" is anything above this. Karpenter's fractional-GPU types
# (g6f: an L4 share of 2861 MiB) carry the full GPU's name, so placement always checks memory where it is labelled.
K8S_MIN_GPU_MEMORY_MIB = 15000
# CUDA 13 builds no code for GPUs older than Turing (compute capability 7.5): PyTorch's cu130 wheels, which the
# server image installs, support Turing, Ampere, Hopper and Blackwell (pytorch/pytorch#172352, support matrix).
MIN_COMPUTE_CAPABILITY = (7, 5)
# Taints GPU node pools carry: GKE adds nvidia.com/gpu=present:NoSchedule, EKS and CoreWeave pools use the same key
# by convention with various values; `Exists` tolerates every value.
K8S_GPU_TOLERATION_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeGpu:
    """A GPU as a node label names it."""

    model: str
    memory_mib: int  # per GPU, the marketing size
    compute: tuple[int, int]  # CUDA compute capability
    manufacturer: str = "NVIDIA"
    gpu_key: str | None = None  # the catalog's GPUS key when it runs SDXL
    arm_host: bool = False  # Karpenter's t4g: a T4 on a Graviton (Arm) host

    def facts(self) -> InstanceFacts:
        return InstanceFacts(self.model, 0, architectures=("arm64",) if self.arm_host else ("x86_64",),
                             gpus=(GpuFacts(self.manufacturer, self.model, 1, self.memory_mib),))


def _ng(model: str, gib: int, compute: tuple[int, int], gpu_key: str | None = None, **kw: object) -> NodeGpu:
    return NodeGpu(model, gib * 1024, compute, gpu_key=gpu_key, **kw)  # type: ignore[arg-type]


_T4, _A10G, _L4 = _ng("T4", 16, (7, 5), "t4"), _ng("A10G", 24, (8, 6), "a10g"), _ng("L4", 24, (8, 9), "l4")
_L40S, _H100 = _ng("L40S", 48, (8, 9), "l40s"), _ng("H100", 80, (9, 0), "h100")
_A100, _A100_80 = _ng("A100", 40, (8, 0), "a100"), _ng("A100", 80, (8, 0), "a100-80gb")
_V100, _P100 = _ng("V100", 16, (7, 0)), _ng("P100", 16, (6, 0))
_P4, _K80 = _ng("P4", 8, (6, 1)), _ng("K80", 12, (3, 7))
# Which GPU each label value names. Karpenter and EKS Auto Mode write `a100` for the 40 and 80 GB parts alike: the
# memory label tells them apart, so the name alone stands for the smaller one here.
K8S_LABEL_VALUES: dict[str, dict[str, NodeGpu]] = {
    K8S_LABEL_GKE: {
        "nvidia-tesla-t4": _T4, "nvidia-l4": _L4, "nvidia-tesla-a100": _A100, "nvidia-a100-80gb": _A100_80,
        "nvidia-h100-80gb": _H100, "nvidia-h100-mega-80gb": _H100,
        "nvidia-tesla-v100": _V100, "nvidia-tesla-p100": _P100, "nvidia-tesla-p4": _P4, "nvidia-tesla-k80": _K80,
    },
    **{label: {
        "t4": _T4, "a10g": _A10G, "l4": _L4, "l40s": _L40S, "a100": _A100, "h100": _H100, "v100": _V100,
        "t4g": _ng("T4G", 16, (7, 5), arm_host=True),
        "radeon-pro-v520": _ng("Radeon Pro V520", 8, (0, 0), manufacturer="AMD"),
    } for label in (K8S_LABEL_EKS_AUTO, K8S_LABEL_KARPENTER)},
    K8S_LABEL_GFD_PRODUCT: {
        "Tesla-T4": _T4, "NVIDIA-A10G": _A10G, "NVIDIA-A10": _ng("A10", 24, (8, 6), "a10g"), "NVIDIA-L4": _L4,
        "NVIDIA-L40S": _L40S, "NVIDIA-A100-SXM4-40GB": _A100, "NVIDIA-A100-PCIE-40GB": _A100,
        "NVIDIA-A100-SXM4-80GB": _A100_80, "NVIDIA-A100-80GB-PCIe": _A100_80, "NVIDIA-H100-80GB-HBM3": _H100,
        "Tesla-V100-SXM2-16GB": _V100, "Tesla-V100-PCIE-16GB": _V100, "Tesla-P100-PCIE-16GB": _P100,
        "Tesla-P4": _P4, "Tesla-K80": _K80,
    },
    K8S_LABEL_COREWEAVE: {
        "A40": _ng("A40", 48, (8, 6)), "RTX_A6000": _ng("RTX A6000", 48, (8, 6)),
        "A100_PCIE_40GB": _A100, "A100_PCIE_80GB": _A100_80, "A100_NVLINK_80GB": _A100_80,
        "H100_NVLINK_80GB": _H100, "H100_PCIE_80GB": _H100, "Quadro_RTX_4000": _ng("Quadro RTX 4000", 8, (7, 5)),
    },
}
# GPU Feature Discovery's product names are open-ended (every card the driver knows): a value not listed above is
# judged on the node by its memory and compute labels instead of being refused. The cloud labels are closed sets.
K8S_OPEN_LABELS = (K8S_LABEL_GFD_PRODUCT, K8S_LABEL_COREWEAVE)
# CoreWeave CKS node pools' instance types (docs.coreweave.com: NodePool instanceType) -> the GPU each node has.
K8S_INSTANCE_TYPES: dict[str, NodeGpu] = {"gd-8xh100ib-i128": _H100}
# The server's CPU and memory requests: sized for the smallest SDXL nodes (g4dn/g5/g6.xlarge and g2-standard-4:
# 4 vCPU, 16 GiB; GKE's n1-standard-4 + T4 leaves about 12 GiB allocatable) minus their daemon sets. Loading the
# fp16 pipeline peaks near 9 GiB of host memory; the limit leaves room above the request, not above the node.
K8S_SERVER_REQUESTS = {"cpu": "3", "memory": "10Gi"}
K8S_SERVER_LIMITS = {"memory": "14Gi"}
# Scaling on CPU when there is no KEDA: a generating replica keeps about one core busy (the Python thread that
# feeds the GPU), a quarter of its 4-core node; an idle one almost none. A weak signal, so the stack says so.
K8S_CPU_TARGET_UTILISATION = 25
# KEDA: queued plus running images per replica before scaling out (the server batches up to 4 at once).
K8S_QUEUE_TARGET_PER_REPLICA = 2


def k8s_fitting(gpu: NodeGpu) -> str | None:
    """Why a node with this GPU cannot run the server image, or None when it can."""
    reason = why_unfit(gpu.facts())
    if reason is None and gpu.compute < MIN_COMPUTE_CAPABILITY:
        major, minor = MIN_COMPUTE_CAPABILITY
        reason = (f"its NVIDIA {gpu.model} predates Turing (compute capability {gpu.compute[0]}.{gpu.compute[1]}); "
                  f"the server image's CUDA 13 PyTorch runs on {major}.{minor} (T4) and newer")
    return reason


def k8s_values_for(label: str, gpu_key: str | None) -> tuple[str, ...]:
    """The values of `label` that name a fitting GPU (that GPU only, when gpu_key is set)."""
    return tuple(value for value, gpu in K8S_LABEL_VALUES.get(label, {}).items()
                 if k8s_fitting(gpu) is None and (gpu_key is None or _same_gpu(gpu.gpu_key, gpu_key)))


def _same_gpu(have: str | None, want: str) -> bool:
    # `gpu: a100` admits either A100; `a100-80gb` is how the catalog names the larger one.
    return have is not None and have.split("-")[0] == want.split("-")[0]


@dataclass(frozen=True)
class K8sGpuClass(Offer):
    """What the Kubernetes target asks the scheduler for: a GPU named by a node label, or `gpu:` on any platform.
    The cluster's nodes are the user's, so there is no machine shape or price here."""

    selector: tuple[tuple[str, str], ...] = ()  # the user's nodeSelector, when it named the GPU
    any_gpu: bool = False  # `gpu` unset: every GPU that runs the image will do

    def describe(self) -> str:
        if self.any_gpu:
            return (f"any node with an NVIDIA GPU of {SDXL_MIN_GPU_MEMORY_GB} GB or more, compute capability "
                    f"{MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer")
        where = ", ".join(f"{k}={v}" for k, v in self.selector) or f"any node with an {self.gpu.model}"
        return f"{where} ({self.gpu.model} {self.gpu.memory_gb} GB)"


# `gpu` left unset: any NVIDIA GPU that runs the server image; the smallest (a T4) stands in for estimates.
K8S_ANY_GPU = K8sGpuClass("kubernetes", "gpu=any", GPUS["t4"], 1, 0, 0, None, any_gpu=True)
K8S_OFFERS: dict[str, K8sGpuClass] = {
    key: K8sGpuClass("kubernetes", f"gpu={key}", gpu, 1, 0, 0, None) for key, gpu in GPUS.items()
}


def k8s_alternatives(label: str, wanted_gib: int = SDXL_MIN_GPU_MEMORY_GB, limit: int = 3) -> tuple[K8sGpuClass, ...]:
    """The fitting values of `label` nearest in memory to what was asked for, smallest first."""
    fitting = [(value, gpu) for value, gpu in K8S_LABEL_VALUES.get(label, {}).items() if k8s_fitting(gpu) is None]
    ranked = sorted(fitting, key=lambda item: (abs(math.log2(item[1].memory_mib / 1024 / max(wanted_gib, 1))),
                                               item[1].memory_mib))[:limit]
    return tuple(K8sGpuClass("kubernetes", f"{label}={value}", _gpu_of(gpu), 1, 0, 0, None, selector=((label, value),))
                 for value, gpu in sorted(ranked, key=lambda item: item[1].memory_mib))


def _gpu_of(node_gpu: NodeGpu) -> Gpu:
    return GPUS.get(node_gpu.gpu_key or "", Gpu(node_gpu.model.lower(), node_gpu.model, node_gpu.memory_mib // 1024))


def judge_node_selector(selector: Mapping[str, str], gpu_key: str | None) -> K8sGpuClass | None:
    """Judge a user's nodeSelector: the GPU it names, None when it names none (placement by `gpu` then applies),
    or UnfitMachineError for a GPU that cannot run SDXL, a value the platform never sets, or another `gpu`."""
    for label, value in selector.items():
        if label == K8S_LABEL_GFD_PRODUCT and value.endswith(K8S_GFD_SHARED_SUFFIX):
            raise UnfitMachineError(k8s_shared_product_refusal(value))
        named = K8S_LABEL_VALUES.get(label, {}).get(value) or (
            K8S_INSTANCE_TYPES.get(value) if label == K8S_LABEL_INSTANCE_TYPE else None)
        if named is None and label in K8S_GPU_LABELS and label not in K8S_OPEN_LABELS:
            known = ", ".join(K8S_LABEL_VALUES[label])
            raise UnfitMachineError(Refusal(
                "nodeSelector", f"{label}={value}", f"{K8S_GPU_LABELS[label]} never sets this value (it sets "
                f"{known})", k8s_alternatives(label), _selector_fix(label, k8s_alternatives(label))))
        if named is None:
            continue
        alternatives = k8s_alternatives(label if label in K8S_LABEL_VALUES else K8S_LABEL_GFD_PRODUCT,
                                        named.memory_mib // 1024)
        reason = k8s_fitting(named)
        fix = None
        if reason is None and gpu_key is not None and not _same_gpu(named.gpu_key, gpu_key):
            reason = f"it names an {named.model}, but gpu is set to '{gpu_key}'"
            wanted = k8s_values_for(label, gpu_key)
            alternatives = tuple(a for a in k8s_alternatives(label, limit=99) if a.selector[0][1] in wanted)[:3]
            if not alternatives:
                # No value of this label names that GPU: a selector of another GPU would be refused the same way.
                fix = (f"pulumi config rm gpu (the nodeSelector then picks the {named.model}), or pulumi config rm "
                       f"nodeSelector (gpu {gpu_key} then places the pod on any platform)")
        if reason is not None:
            raise UnfitMachineError(Refusal("nodeSelector", f"{label}={value}", reason, alternatives,
                                            fix or _selector_fix(label, alternatives)))
        return K8sGpuClass("kubernetes", f"{label}={value}", _gpu_of(named), 1, 0, 0, None,
                           selector=tuple(sorted(selector.items())))
    return None


def _selector_fix(label: str, alternatives: tuple[K8sGpuClass, ...]) -> str:
    if not alternatives:
        return "pulumi config rm nodeSelector (then gpu: picks the GPU on any platform)"
    label, value = alternatives[0].selector[0]
    return f"pulumi config set --path 'nodeSelector[0]' {label}={value}"


def node_gpu(labels: Mapping[str, str]) -> NodeGpu | None:
    """The GPU a node's labels describe, or None when they name none: GFD's memory and compute labels where present
    (exact, whatever the card), else the first platform label the catalog knows, else a CoreWeave CKS instance
    type."""
    named = next((K8S_LABEL_VALUES[label][labels[label]] for label in K8S_GPU_LABELS
                  if labels.get(label) in K8S_LABEL_VALUES.get(label, {})), None) or K8S_INSTANCE_TYPES.get(
        labels.get(K8S_LABEL_INSTANCE_TYPE, ""))
    memory = next((labels[key] for key in (K8S_LABEL_GFD_MEMORY, K8S_LABEL_KARPENTER_MEMORY, K8S_LABEL_EKS_AUTO_MEMORY)
                   if str(labels.get(key, "")).isdigit()), None)
    major, minor = labels.get(K8S_LABEL_GFD_COMPUTE_MAJOR, ""), labels.get(K8S_LABEL_GFD_COMPUTE_MINOR, "")
    if memory is None:
        return named
    compute = (int(major), int(minor or 0)) if major.isdigit() else (named.compute if named else (0, 0))
    model = named.model if named else labels.get(K8S_LABEL_GFD_PRODUCT, "unknown NVIDIA GPU")
    # Labelled memory is the usable part (T4: 15360): count anything above K8S_MIN_GPU_MEMORY_MIB as 16 GB.
    mib = max(int(memory), SDXL_MIN_GPU_MEMORY_GB * 1024) if int(memory) > K8S_MIN_GPU_MEMORY_MIB else int(memory)
    return NodeGpu(model, mib, compute, named.manufacturer if named else "NVIDIA",
                   named.gpu_key if named else None, named.arm_host if named else False)


# --- Kubernetes: what the doctor reads off a live cluster -----------------------------------------------------
# The labels a node's GPU is best selected by, most specific first: the platform's own label (what its node
# autoscaler provisions from), then GPU Feature Discovery's product, then CoreWeave's class and CKS's instance type.
K8S_SELECTOR_LABELS = (K8S_LABEL_GKE, K8S_LABEL_EKS_AUTO, K8S_LABEL_KARPENTER, K8S_LABEL_GFD_PRODUCT,
                       K8S_LABEL_COREWEAVE, K8S_LABEL_INSTANCE_TYPE)


def k8s_node_matches(gpu: NodeGpu, gpu_key: str | None) -> bool:
    """Whether a node's GPU runs SDXL and is the one `gpu:` asks for (any fitting one when gpu is unset)."""
    return k8s_fitting(gpu) is None and (gpu_key is None or _same_gpu(gpu.gpu_key, gpu_key))


# --- Kubernetes: GKE's Ingress ------------------------------------------------------------------------------------
# GKE's own Ingress controllers (external and internal Application Load Balancer) have no IngressClass object and
# pick an Ingress up only by the kubernetes.io/ingress.class annotation: with spec.ingressClassName set and no
# annotation, GKE "takes no action" (cloud.google.com/kubernetes-engine/docs/concepts/ingress, "GKE Ingress
# controller behavior", GKE 1.18 and later).
K8S_GKE_INGRESS_CLASSES = ("gce", "gce-internal")
K8S_GKE_INGRESS_ANNOTATION = "kubernetes.io/ingress.class"
# GKE's API server reports its build as v<major>.<minor>.<patch>-gke.<n> (e.g. v1.28.5-gke.1200).
K8S_GKE_VERSION_MARK = "-gke."

# --- Kubernetes: a public LoadBalancer Service on EKS ---------------------------------------------------------------
# The AWS Load Balancer Controller provisions an internal NLB unless the Service says otherwise ("Since the v2.2.0
# release, the LBC provisions an internal NLB by default. To create an internet-facing NLB, the following annotation
# is required", kubernetes-sigs.github.io/aws-load-balancer-controller, guide/service/nlb); EKS Auto Mode reads the
# same annotation (EKS user guide, auto-configure-nlb). Other clouds' controllers ignore the aws- keys.
K8S_AWS_LB_SCHEME_ANNOTATION = ("service.beta.kubernetes.io/aws-load-balancer-scheme", "internet-facing")


# --- Kubernetes: the GPU placement terms, and how a node's labels meet them -------------------------------------
# One function renders the pod's required node affinity (stacks/kubernetes.py) and one judges a node against it
# (the doctor, and the placement tests), so what the doctor calls a fitting node is where the scheduler puts the pod.

def k8s_placement_gpu(machine: Offer | None) -> str | None:
    """The catalog GPU the placement terms narrow to: the GPU `gpu` or a nodeSelector names, when the catalog
    lists it; None (any fitting GPU) for `gpu` unset or a GPU outside the catalog."""
    if not isinstance(machine, K8sGpuClass) or machine.any_gpu or machine.gpu.key not in GPUS:
        return None
    return machine.gpu.key


def k8s_gpu_terms(gpu_key: str | None) -> list[dict[str, object]]:
    """nodeSelectorTerms (ORed, one or more per platform) that admit a node with a fitting GPU (that GPU only, when
    gpu_key is set).

    Every In names at least one value: the API server refuses an empty one ("values must be specified when operator
    is In"). A GPU outside the catalog (a nodeSelector naming CoreWeave's A40) has no label values to narrow by, so
    the terms admit any fitting GPU and the nodeSelector picks that one."""
    if gpu_key not in GPUS:
        gpu_key = None
    terms: list[dict[str, object]] = []  # each keeps shared GPUs out (_k8s_term)
    # Labels that name the GPU by themselves. CoreWeave's class label says nothing about memory left.
    for label in (K8S_LABEL_GKE, K8S_LABEL_COREWEAVE):
        values = k8s_values_for(label, gpu_key)
        if values:
            terms.append(_k8s_term((label, "In", values)))
    instance_types = tuple(name for name, gpu in K8S_INSTANCE_TYPES.items() if k8s_node_matches(gpu, gpu_key))
    if instance_types:
        terms.append(_k8s_term((K8S_LABEL_INSTANCE_TYPE, "In", instance_types)))
    for name_label, memory_label in ((K8S_LABEL_EKS_AUTO, K8S_LABEL_EKS_AUTO_MEMORY),
                                     (K8S_LABEL_KARPENTER, K8S_LABEL_KARPENTER_MEMORY)):
        names = k8s_values_for(name_label, gpu_key)
        if names:
            # The memory also keeps fractional GPUs (g6f: a share of an L4, named l4) out.
            terms.append(_k8s_term((name_label, "In", names), (memory_label, "Gt", (_k8s_memory_floor(gpu_key),))))
    memory = (K8S_LABEL_GFD_MEMORY, "Gt", (str(K8S_MIN_GPU_MEMORY_MIB),))
    if gpu_key is not None:
        products = k8s_values_for(K8S_LABEL_GFD_PRODUCT, gpu_key)
        if products:
            terms.append(_k8s_term((K8S_LABEL_GFD_PRODUCT, "In", products), memory))
        return terms or k8s_gpu_terms(None)  # no label names that GPU: any fitting one, never no term at all
    # Any card GFD describes with enough memory and a compute capability of 7.5 or more: major 8 and up, or 7.5+.
    major, minor = MIN_COMPUTE_CAPABILITY
    terms.append(_k8s_term(memory, (K8S_LABEL_GFD_COMPUTE_MAJOR, "Gt", (str(major),))))
    terms.append(_k8s_term(memory, (K8S_LABEL_GFD_COMPUTE_MAJOR, "In", (str(major),)),
                           (K8S_LABEL_GFD_COMPUTE_MINOR, "Gt", (str(minor - 1),))))
    return terms


def _k8s_memory_floor(gpu_key: str | None) -> str:
    """The GPU memory label's lower bound: the 16 GB floor, or just under the larger A100 when that is asked for."""
    if gpu_key == "a100-80gb":
        return str(GPUS["a100"].memory_gb * 1024)
    return str(K8S_MIN_GPU_MEMORY_MIB)


def _k8s_term(*requirements: tuple[str, str, tuple[str, ...]]) -> dict[str, object]:
    """One affinity term: these requirements, and never a shared GPU. Under time-slicing or MPS, `nvidia.com/gpu: 1`
    is a share of a card that other pods use too (GFD then sets sharing-strategy and appends -SHARED to the product),
    and SDXL needs the memory. The GPU Operator that does the sharing runs on GKE, EKS and CoreWeave nodes too, whose
    own labels say nothing of it; NotIn holds where GFD sets no strategy."""
    whole = (K8S_LABEL_GFD_SHARING, "NotIn", K8S_GFD_SHARED_STRATEGIES)
    return {"matchExpressions": [{"key": key, "operator": op, "values": list(values)}
                                 for key, op, values in (*requirements, whole)]}


def k8s_requirement_holds(labels: Mapping[str, str], requirement: Mapping[str, Any]) -> bool:
    """One matchExpressions item against a node's labels, as the scheduler reads it (k8s.io/component-helpers
    nodeaffinity: Gt and Lt compare integers, a missing label fails them; NotIn and DoesNotExist hold without it)."""
    key, op, values = requirement["key"], requirement["operator"], list(requirement.get("values") or [])
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        try:
            have, bound = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > bound if op == "Gt" else have < bound
    raise ValueError(f"unknown node selector operator {op!r}")


def k8s_node_admits(labels: Mapping[str, str], terms: Sequence[Mapping[str, Any]],
                    node_selector: Mapping[str, str] | None = None) -> bool:
    """Whether a node with these labels takes the pod: every nodeSelector pair, and any one term whose every
    requirement holds."""
    if any(labels.get(key) != value for key, value in (node_selector or {}).items()):
        return False
    return any(all(k8s_requirement_holds(labels, r) for r in term["matchExpressions"]) for term in terms)


# --- RunPod: the host CUDA versions a pod may land on ---------------------------------------------------------
# create_pod's allowed_cuda_versions (the SDK sends GraphQL `allowedCudaVersions: ["13.0"]`; RunPod's REST
# "Create a new Pod" reference shows the same field as "major.minor" strings, e.g. "12.8"). Left out, RunPod places
# a pod on any host, including drivers too old for the image (MIN_DRIVER_FOR_CUDA), where the container never
# starts. These are the values RunPod's API lists (its CudaVersion enum, as of RUNPOD_GPU_TYPES_AS_OF): a later
# 13.x RunPod adds is not asked for until it is added here, which costs capacity, never a wrong host.
RUNPOD_CUDA_VERSIONS = ("11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9",
                        "13.0")


def runpod_cuda_versions(image_cuda: str) -> list[str]:
    """The host CUDA versions that run an image built on CUDA `image_cuda` ("13.0"): the same major, that minor or
    later (a driver runs every minor of its CUDA major up to its own)."""
    major, minor = (int(part) for part in image_cuda.split(".")[:2])
    fitting = []
    for version in RUNPOD_CUDA_VERSIONS:
        host_major, host_minor = (int(part) for part in version.split("."))
        if host_major == major and host_minor >= minor:
            fitting.append(version)
    return fitting


# --- fleets: the slowest GPU a fleet may run ---------------------------------------------------------------------


def slowest_seconds_per_image(offers: tuple[Offer, ...]) -> float:
    """The estimated seconds per image (GPU_THROUGHPUT) of the slowest GPU among a fleet's types: what sizes its
    batches under a front with a time limit (bootstrap.FleetFront)."""
    return max(throughput(o.gpu).seconds_per_image for o in offers)


# --- fleets: what each GCP fleet VM bills beside its machine ------------------------------------------------------
# Each fleet VM has an ephemeral external IPv4 address for its outbound traffic (no Cloud NAT), which Google bills
# by the hour while in use, as AWS bills each instance's public IPv4 (AWS_PUBLIC_IPV4_USD_PER_HOUR): on a standard
# VM; a Spot VM's costs half, and hourlyCostUsd is the on-demand price.
GCP_VM_EXTERNAL_IPV4_USD_PER_HOUR = 0.005
GCP_VM_EXTERNAL_IPV4_PRICE_SOURCE = ("Google Cloud VPC network pricing, IP addresses: in use on a standard VM "
                                     "$0.005/h, on a Spot or preemptible VM $0.0025/h (read 2026-10-16, as quoted "
                                     "from that page by a third-party cost write-up)")


# --- fleets: CloudFront VPC origins (an AWS fleet without `domain`) -----------------------------------------------
# AWS CloudFront Developer Guide, "Restrict access with VPC origins" (private-content-vpc-origins, read 2026-11-28):
# CloudFront reaches an internal ALB through a service-managed network interface in the ALB's subnet, over AWS's
# network; the VPC needs an internet gateway (only to mark it as reachable, not for routing) and the subnet one
# free IPv4 address (no charge for it). Only these commercial regions, and not their listed AZs (by AZ id, which
# differ from the account's AZ names): an ALB node or target there would be left out.
CLOUDFRONT_VPC_ORIGIN_REGIONS = frozenset({
    "us-east-2", "us-east-1", "us-west-1", "us-west-2", "af-south-1", "ap-east-1", "ap-south-1", "ap-south-2",
    "ap-southeast-3", "ap-southeast-4", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1",
    "ap-northeast-2", "ap-southeast-7", "ap-southeast-5", "ap-east-2", "ca-central-1", "ca-west-1", "eu-central-1",
    "eu-west-1", "eu-west-2", "eu-south-1", "eu-west-3", "eu-south-2", "eu-north-1", "eu-central-2", "il-central-1",
    "me-south-1", "me-central-1", "sa-east-1", "mx-central-1",
})
CLOUDFRONT_VPC_ORIGIN_EXCLUDED_AZ_IDS = frozenset({"use1-az3", "usw1-az2", "apne1-az3", "cac1-az3"})


# --- fleets: what a rollout starts beyond the wanted capacity ----------------------------------------------------
# A changed template rolls out new instances before old ones leave, so capacity never drops, and the doctor sizes
# quota for it. AWS instance refresh (and instance maintenance) may run up to this percentage of the wanted capacity;
# GCP's rolling replace surges one VM per zone the group spans (gcp_fleet_zones).
AWS_ROLLOUT_MAX_HEALTHY_PERCENT = 200


def gcp_fleet_zones(gpu_key: str, region: str) -> list[str]:
    """The zones of a region that offer the GPU (GCP_ACCELERATOR_ZONES): a GCP fleet's group spans them all."""
    return [z for z in GCP_ACCELERATOR_ZONES.get(gpu_key, ()) if z.startswith(region + "-")]


# --- Kubernetes: StorageClasses that cannot share the model cache between nodes -------------------------------
# With maxReplicas above 1 the model cache claim asks ReadWriteMany (stacks/kubernetes.py cache_access_mode), so pods
# on several nodes mount it at once. Block storage attaches a volume to one node at a time: these provisioners offer
# no ReadWriteMany filesystem volume, so the claim never binds and the pods stay Pending. Sources: the Kubernetes CSI
# docs' driver table (kubernetes-csi/docs book/src/drivers.md: ebs.csi.aws.com, pd.csi.storage.gke.io and
# disk.csi.azure.com "Read/Write Single Pod"; EBS io2 Multi-Attach is for raw block volumes, not a filesystem) and
# kubernetes.io's access-mode table for the in-tree plugins (AWSElasticBlockStore and AzureDisk ReadWriteOnce only,
# GCEPersistentDisk ReadWriteOnce and ReadOnlyMany). GKE's default classes (standard-rwo, premium-rwo, standard) and
# EKS's (gp2, gp3 of the EBS CSI driver or Auto Mode) are of these provisioners.
K8S_BLOCK_ONLY_PROVISIONERS = {
    "pd.csi.storage.gke.io": "Compute Engine persistent disk",
    "kubernetes.io/gce-pd": "Compute Engine persistent disk, in-tree",
    "ebs.csi.aws.com": "Amazon EBS",
    "kubernetes.io/aws-ebs": "Amazon EBS, in-tree",
    "disk.csi.azure.com": "Azure Disk",
    "kubernetes.io/azure-disk": "Azure Disk, in-tree",
}
# What shares the cache instead, per platform: a file system class (platform, class, provisioner). GKE's Filestore
# CSI driver is a cluster add-on (GcpFilestoreCsiDriverConfig) and brings the standard-rwx class; EFS needs its CSI
# driver and a StorageClass of the user's own naming a file system (aws-efs-csi-driver: provisioningMode efs-ap,
# fileSystemId); AKS ships azurefile-csi (Microsoft's AKS docs: built-in Azure Files classes).
K8S_SHARED_STORAGE = (
    ("GKE", "standard-rwx (Filestore; enable the Filestore CSI driver add-on)", "filestore.csi.storage.gke.io"),
    ("EKS", "an EFS class of yours (the EFS CSI driver)", "efs.csi.aws.com"),
    ("AKS", "azurefile-csi", "file.csi.azure.com"),
)

# --- Kubernetes: a nodeSelector naming a shared GPU --------------------------------------------------------------
# GPU Feature Discovery appends -SHARED to the product label of a GPU the device plugin time-slices or shares by MPS
# (k8s-device-plugin internal/lm/resource.go getProductName; its README: "nvidia.com/<resource-name>.product =
# <product name>-SHARED" with renameByDefault=false, the default). The placement terms keep shared GPUs out
# (k8s_gpu_terms: sharing-strategy NotIn time-slicing, mps), so a selector on such a value matches no node the pod
# may use: it would stay Pending. The same card, unshared, carries the name without the suffix.
K8S_GFD_SHARED_SUFFIX = "-SHARED"


def k8s_shared_product_refusal(value: str) -> Refusal:
    """A nodeSelector on a shared GPU's product label: the unshared name is the fix."""
    whole = value.removesuffix(K8S_GFD_SHARED_SUFFIX)
    known = K8S_LABEL_VALUES[K8S_LABEL_GFD_PRODUCT].get(whole)
    alternatives = k8s_alternatives(K8S_LABEL_GFD_PRODUCT, known.memory_mib // 1024 if known else
                                    SDXL_MIN_GPU_MEMORY_GB)
    why = (f"{K8S_GFD_SHARED_SUFFIX} is how GPU Feature Discovery names a time-sliced or MPS-shared GPU: one "
           "nvidia.com/gpu there is a share of a card other pods use too, and SDXL needs the whole memory, so the "
           "placement keeps shared GPUs out and no node would take the pod")
    unfit = k8s_fitting(known) if known else None
    if unfit:  # the whole card is no way out either
        return Refusal("nodeSelector", f"{K8S_LABEL_GFD_PRODUCT}={value}", f"{why}; and {unfit}", alternatives,
                       _selector_fix(K8S_LABEL_GFD_PRODUCT, alternatives))
    return Refusal("nodeSelector", f"{K8S_LABEL_GFD_PRODUCT}={value}", why, alternatives,
                   f"pulumi config set --path 'nodeSelector[0]' {K8S_LABEL_GFD_PRODUCT}={whole} (the same GPU, "
                   "on a node pool whose device plugin does not share it)")


def k8s_selector_placement(selector: Mapping[str, str], gpu_key: str | None) -> K8sGpuClass:
    """What the stack asks the scheduler for with this nodeSelector and `gpu` (as config.validate places it), or
    UnfitMachineError."""
    judged = judge_node_selector(selector, gpu_key)
    if judged is not None:
        return judged
    return K8S_OFFERS[gpu_key] if gpu_key else K8S_ANY_GPU


# --- Kubernetes: the labels that describe a node's GPU ----------------------------------------------------------
# What the doctor shows of each GPU node: every label above that names the GPU, its memory, compute capability or
# sharing, and a CKS instance type the catalog knows (other instance types say nothing of a GPU).
K8S_GPU_LABEL_KEYS = (K8S_LABEL_GKE, K8S_LABEL_EKS_AUTO, K8S_LABEL_EKS_AUTO_MEMORY, K8S_LABEL_KARPENTER,
                      K8S_LABEL_KARPENTER_MEMORY, K8S_LABEL_GFD_PRODUCT, K8S_LABEL_GFD_MEMORY,
                      K8S_LABEL_GFD_COMPUTE_MAJOR, K8S_LABEL_GFD_COMPUTE_MINOR, K8S_LABEL_GFD_SHARING,
                      K8S_LABEL_COREWEAVE)


def k8s_gpu_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The GPU labels a node carries, in K8S_GPU_LABEL_KEYS order."""
    shown = {key: labels[key] for key in K8S_GPU_LABEL_KEYS if key in labels}
    if labels.get(K8S_LABEL_INSTANCE_TYPE) in K8S_INSTANCE_TYPES:
        shown[K8S_LABEL_INSTANCE_TYPE] = labels[K8S_LABEL_INSTANCE_TYPE]
    return shown
