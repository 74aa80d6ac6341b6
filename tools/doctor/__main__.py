"""`python -m tools.doctor`: the command line. `diagnose` is one whole run, without printing."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from stacks import catalog, config
from tools.doctor import FAIL, WARN, Check, Report, Target
from tools.doctor import aws as aws_cloud
from tools.doctor import gcp as gcp_cloud
from tools.doctor import huggingface as hf_cloud
from tools.doctor import kubernetes as kube_cloud
from tools.doctor import runpod as runpod_cloud
from tools.doctor.report import SKIP_HINT, as_json, as_text
from tools.doctor.target import cloud_of, flag_values, resolve_target, stack_values

# Each cloud's checks: a module with check(target, api, report, with_suggest). A new target adds its doctor here.
DOCTORS = {"aws": aws_cloud, "gcp": gcp_cloud, "huggingface": hf_cloud, "runpod": runpod_cloud,
           "kubernetes": kube_cloud}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.doctor",
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
    parser.add_argument("--context", help="Kubernetes: the kubeconfig context (default: the current one)")
    parser.add_argument("--namespace", help="Kubernetes: the namespace (default: the stack's own, sdxl-doctor)")
    parser.add_argument("--spot", action="store_true", help="check spot capacity: spot quota and spot prices")
    parser.add_argument("--max-replicas", type=int, metavar="N",
                        help="check a fleet of up to N instances: quota for all of them (a stack's maxReplicas)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (schema: JSON_SCHEMA)")
    parser.add_argument("--suggest", action="store_true",
                        help="list the regions (AWS) or zones (GCP) offering the GPU, by price, with quota; hosted: "
                        "the fitting hardware available now, with live prices; Kubernetes: the nodeSelector for each "
                        "fitting GPU the cluster has")
    args = parser.parse_args(argv)
    explicit = [f"--{n.replace('_', '-')}" for n in ("cloud", "gpu", "instance_type", "machine_type", "region",
                                                     "zone", "project", "context", "namespace") if getattr(args, n)]
    if args.stack and explicit:
        parser.error(f"--stack reads the target from the stack; drop {', '.join(explicit)} "
                     "(or drop --stack to check an explicit target)")
    if not args.stack and not explicit:
        parser.error("give --stack NAME, or an explicit target such as --cloud aws --gpu a10g --region us-east-1")
    if (args.instance_type and cloud_of(args) == "gcp") or (args.machine_type and cloud_of(args) == "aws"):
        parser.error("--instance-type is for AWS and --machine-type for GCP")
    if (args.zone or args.project) and cloud_of(args) == "aws":
        parser.error("--zone and --project are GCP settings; AWS takes --region")
    if (args.context or args.namespace) and cloud_of(args) != "kubernetes":
        parser.error("--context and --namespace are Kubernetes settings (--cloud kubernetes)")
    if cloud_of(args) == "kubernetes" and (args.instance_type or args.machine_type or args.region or args.zone
                                           or args.project or args.spot):
        parser.error("a Kubernetes target takes --gpu, --context, --namespace and --max-replicas; the cluster's "
                     "nodes decide the rest")
    return args


def diagnose(args: argparse.Namespace, aws: aws_cloud.AwsApi | None = None,
             gcp: gcp_cloud.GcpApi | None = None, huggingface: hf_cloud.HuggingFaceApi | None = None,
             runpod: runpod_cloud.RunPodApi | None = None,
             kubernetes: kube_cloud.KubernetesApi | None = None) -> Report:
    """Run every check for the target the arguments name; never raises for a cloud's failure."""
    gcp = gcp or gcp_cloud.GcpApi()
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
            notes.append(Check(name="config", status=WARN, value=missing))
        if args.spot:
            values[f"{config.PROJECT}:spot"] = "true"
        if args.max_replicas:
            values[f"{config.PROJECT}:maxReplicas"] = str(args.max_replicas)
    else:
        values = flag_values(args, gcp.adc_project)
    # A bad cloud falls back to aws here, and validation (resolve_target) then reports it.
    cloud = config.cloud_of(values.get(f"{config.PROJECT}:cloud"))
    cloud = cloud if cloud in DOCTORS else "aws"
    target = Target(cloud=cloud, stack=args.stack, aws_profile=values.get("aws:profile"))
    report = Report(target, checks=notes)

    describe_machine = None
    if cloud == "aws":
        try:
            aws = aws or aws_cloud.AwsApi(target.aws_profile)
        except Exception as err:  # noqa: BLE001 - e.g. a profile that isn't in ~/.aws/config
            report.add("credentials", FAIL, f"cannot set up the AWS SDK ({type(err).__name__}: {err})",
                       "check AWS_PROFILE / aws:profile and ~/.aws/config")
            return report
        # Validation describes types the catalog does not list through the SDK, as `pulumi up` would.
        describe_machine = aws.instance_facts
    check = resolve_target(values, args.stack, describe_machine, target)
    if cloud == "gcp" and check.status == FAIL and "gcp:project" in check.value and gcp.adc_project():
        check.fix = f"{check.fix}; your application-default credentials' project is {gcp.adc_project()}"
    report.checks.append(check)
    api = {"aws": lambda: aws, "gcp": lambda: gcp,
           "huggingface": lambda: huggingface or hf_cloud.HuggingFaceApi(),
           "runpod": lambda: runpod or runpod_cloud.RunPodApi(),
           "kubernetes": lambda: kubernetes or kube_cloud.KubernetesApi(
               values.get(f"{config.PROJECT}:kubeContext") or None)}[cloud]()
    DOCTORS[cloud].check(target, api, report, args.suggest)
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
