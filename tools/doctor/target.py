"""The target: a stack file's config or the flags, resolved by the stack's own `config.validate()`.

So the doctor checks exactly the machine, GPU and location that `pulumi up` would ask for.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from stacks import catalog, config
from tools import presets
from tools.doctor import FAIL, OK, Check, RemoteError, Target


def stack_values(stack: str) -> tuple[dict[str, str], str | None]:
    """A stack file's config as the engine hands it to the program, and a note when it is missing.

    Secrets stay encrypted in the file and are left out: the doctor never needs them.
    """
    path = presets.path(stack)
    if not path.is_file():
        return {}, f"no {path.relative_to(path.parent.parent)}: checking the defaults `pulumi up` would use"
    return presets.engine_values(presets.read(stack)), None


HOSTED_CLOUDS = config.HOSTED_CLOUDS
IMAGE_NOT_CHECKED = "image.not.checked/by-the-doctor:flags"


def cloud_of(args: argparse.Namespace) -> str:
    """The explicit target's cloud: --cloud, else what the other flags imply."""
    if args.cloud:
        return args.cloud
    if getattr(args, "context", None) or getattr(args, "namespace", None):
        return "kubernetes"
    return "gcp" if args.machine_type or args.zone or args.project else "aws"


def flag_values(args: argparse.Namespace, adc_project: Callable[[], str | None]) -> dict[str, str]:
    """An explicit target as the config keys a stack would set."""
    cloud = cloud_of(args)
    values = {f"{config.PROJECT}:cloud": cloud, f"{config.PROJECT}:spot": json.dumps(bool(args.spot))}
    if args.max_replicas:
        values[f"{config.PROJECT}:maxReplicas"] = str(args.max_replicas)
    for key, value in (("gpu", args.gpu), ("instanceType", args.instance_type), ("machineType", args.machine_type)):
        if value:
            values[f"{config.PROJECT}:{key}"] = value
    if cloud == "aws":
        if args.region:
            values["aws:region"] = args.region
        return values
    if cloud == "kubernetes":
        for key, value in (("kubeContext", args.context), ("namespace", args.namespace)):
            if value:
                values[f"{config.PROJECT}:{key}"] = value
    if cloud in (*HOSTED_CLOUDS, "kubernetes"):
        # The flags name hardware, not an image: a stand-in keeps validation to the hardware (a stack's own
        # `image` is checked as `pulumi up` checks it).
        values[f"{config.PROJECT}:image"] = IMAGE_NOT_CHECKED
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
                   describe_machine: config.MachineLookup | None, report_target: Target) -> Check:
    """Validate these values as `pulumi up` would; fill in the target, or explain why not."""
    try:
        # Encrypted values are left out of `values`, so a token found here sits in plain text: reported.
        settings = config.validate(values, stack=stack or "doctor", describe_machine=describe_machine)
    except config.ConfigError as err:
        # Explicit flags are no stack file: keep the problems, not the header naming one.
        body = str(err) if stack else "the flags name an invalid target:\n" + config.render_problems(err.problems)
        return Check(name="config", status=FAIL, value=body,
                     fix="apply the fix under each problem above, then run the doctor again")
    except RemoteError as err:
        return Check(name="config", status=FAIL, value=f"could not describe the instance type: {err.why}", fix=err.fix)
    report_target.machine = settings.machine
    report_target.spot = settings.spot
    report_target.region = settings.region
    report_target.zone = settings.zone
    report_target.project = settings.gcp_project
    report_target.replicas = settings.max_replicas  # a fleet needs quota for all of them
    report_target.namespace = settings.hf_namespace
    report_target.cloud_type = settings.runpod_cloud_type
    report_target.kube = settings.kube
    report_target.data_disk_gb = settings.data_disk_gb
    report_target.min_replicas = settings.min_replicas
    return Check(name="config", status=OK, value=settings.machine.describe())
