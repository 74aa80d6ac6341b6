"""The preflight doctor against moto (AWS), botocore's Stubber where moto lacks an API, and the real
google-cloud-compute clients talking to a local fake of the Compute Engine REST API (GCP).

Nothing here may leave the machine: an autouse guard fails any test that resolves or connects to a
non-loopback address.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml
from botocore.stub import Stubber
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto import mock_aws

from stacks import catalog, config
from stacks.catalog import AWS_DLAMI_SSM_PARAMETER as DLAMI_SSM_PARAMETER
from stacks.catalog import GCP_DLVM_IMAGE_FAMILY as DLVM_IMAGE_FAMILY
from stacks.catalog import GCP_DLVM_IMAGE_PROJECT as DLVM_IMAGE_PROJECT
from tests.fakes import loopback_server, reply_json
from tests.stacks.conftest import MOTO_EC2, ROOT, ec2_offerings
from tools import doctor, presets
from tools.doctor import __main__ as cli
from tools.doctor import aws as doctor_aws
from tools.doctor import gcp as doctor_gcp
from tools.doctor import report as doctor_report
from tools.doctor import target as doctor_target

FAKE_AMI = "ami-0a1b2c3d4e5f67890"
MOTO_OFFERINGS = MOTO_EC2 / "instance_type_offerings"
PROJECT = "demo-proj"

# --- guards -------------------------------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Record (and refuse) any name lookup or connection that would leave the machine."""
    attempts: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if str(host) not in LOOPBACK:
            attempts.append(f"resolve {host}")
            raise socket.gaierror(socket.EAI_NONAME, "blocked by the test: not loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(address, tuple) and str(host) not in LOOPBACK:
            attempts.append(f"connect {address}")
            raise ConnectionRefusedError("blocked by the test: not loopback")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert attempts == [], f"the doctor tried to leave the machine: {attempts}"


def names(report: doctor.Report) -> dict[str, doctor.Check]:
    return {c.name: c for c in report.checks}


def run(argv: list[str], **apis) -> doctor.Report:
    report = cli.diagnose(cli.parse_args(argv), **apis)
    # Every report, whatever happened, is valid against the published schema.
    jsonschema.validate(doctor_report.as_json(report), doctor_report.JSON_SCHEMA)
    return report


# --- AWS: moto for EC2/STS/SSM, Stubber for Service Quotas and the Price List ------------------

QUOTA_NAMES = {"L-DB2E81BA": "Running On-Demand G and VT instances",
               "L-3819A6DF": "All G and VT Spot Instance Requests",
               "L-417A185B": "Running On-Demand P instances", "L-7212CCBC": "All P Spot Instance Requests"}


def quota_record(code: str, value: float, region: str) -> dict:
    """A GetServiceQuota answer as Service Quotas sends it."""
    return {"Quota": {
        "ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
        "QuotaArn": f"arn:aws:servicequotas:{region}:123456789012:ec2/{code}", "QuotaCode": code,
        "QuotaName": QUOTA_NAMES[code], "Value": value, "Unit": "None", "Adjustable": True, "GlobalQuota": False,
        "UsageMetric": {"MetricNamespace": "AWS/Usage", "MetricName": "ResourceCount",
                        "MetricDimensions": {"Class": "G/OnDemand", "Resource": "vCPU", "Service": "EC2",
                                             "Type": "Resource"}},
    }}


def stub_quota(api: doctor_aws.AwsApi, region: str, code: str, applied: float | None, default: float | None = None,
               times: int = 1):
    """Answer the quota look-up: the applied value, or NoSuchResource then AWS's default."""
    stub = Stubber(api.client("service-quotas", region))
    params = {"ServiceCode": "ec2", "QuotaCode": code}
    if applied is not None:
        for _ in range(times):
            stub.add_response("get_service_quota", quota_record(code, applied, region), params)
    else:
        stub.add_client_error("get_service_quota", "NoSuchResourceException", "The request failed because the "
                              "specified resource does not exist.", 400, expected_params=params)
        if default is None:
            stub.add_client_error("get_aws_default_service_quota", "AccessDeniedException",
                                  "User is not authorized to perform: servicequotas:GetAWSDefaultServiceQuota",
                                  400, expected_params=params)
        else:
            stub.add_response("get_aws_default_service_quota", quota_record(code, default, region), params)
    stub.activate()
    return stub


def stub_ami(api: doctor_aws.AwsApi, region: str) -> Stubber:
    """moto has no DLAMI parameter (and refuses to create one under /aws/): answer as SSM does."""
    stub = Stubber(api.client("ssm", region))
    stub.add_response("get_parameter", {"Parameter": {
        "Name": DLAMI_SSM_PARAMETER, "Type": "String", "Value": FAKE_AMI, "Version": 87, "DataType": "text",
        "LastModifiedDate": datetime(2026, 11, 10, tzinfo=UTC),
        "ARN": f"arn:aws:ssm:{region}::parameter{DLAMI_SSM_PARAMETER}"}}, {"Name": DLAMI_SSM_PARAMETER})
    stub.activate()
    return stub


@pytest.fixture
def aws():
    with mock_aws():
        yield doctor_aws.AwsApi()


def launch(api: doctor_aws.AwsApi, instance_type: str, region: str = "us-east-1") -> None:
    ec2 = api.client("ec2", region)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1)


def test_aws_preset_passes_every_check_with_moto_region_data(aws):
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 8)
    stub_ami(aws, "us-east-1")
    report = run(["--stack", "aws-g5"], aws=aws)
    checks = names(report)
    assert [c.name for c in report.checks] == ["config", "credentials", "offering", "gpu", "quota", "image"]
    assert all(c.status == doctor.OK for c in report.checks), doctor_report.as_text(report)
    zones = sorted(o["Location"] for o in ec2_offerings("us-east-1") if o["InstanceType"] == "g5.xlarge")
    assert checks["offering"].value == f"us-east-1 offers g5.xlarge in {len(zones)} AZs: {', '.join(zones)}"
    assert "account 123456789012" in checks["credentials"].value
    assert "1x NVIDIA A10G, 22888 MiB" in checks["gpu"].value
    assert "L-DB2E81BA" in checks["quota"].value and "8 vCPUs (applied), 0 in use" in checks["quota"].value
    assert FAKE_AMI in checks["image"].value
    assert report.target.machine == catalog.AWS_OFFERS["g5.xlarge"] and report.ok


def test_zero_gpu_quota_fails_with_the_exact_increase_command(aws, monkeypatch):
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 0)
    stub_ami(aws, "us-east-1")
    report = run(["--stack", "aws-g4dn"], aws=aws)
    quota = names(report)["quota"]
    assert quota.status == doctor.FAIL and "0 vCPUs (applied)" in quota.value
    assert quota.fix == ("aws service-quotas request-service-quota-increase --service-code ec2 "
                         "--quota-code L-DB2E81BA --desired-value 4 --region us-east-1")
    assert not report.ok


def test_running_gpu_instances_count_against_the_quota(aws):
    launch(aws, "g5.xlarge")  # 4 vCPUs already in use; CpuOptions absent in moto's answer
    launch(aws, "t3.micro")  # another quota class: not counted
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 4)
    stub_ami(aws, "us-east-1")
    quota = names(run(["--stack", "aws-g6"], aws=aws))["quota"]
    assert quota.status == doctor.FAIL and "4 in use" in quota.value
    assert quota.fix.endswith("--quota-code L-DB2E81BA --desired-value 8 --region us-east-1")


def test_spot_checks_the_spot_quota_and_prices_every_offering_az(aws):
    stub_quota(aws, "us-east-1", "L-3819A6DF", 4)  # Stubber also checks the code asked for
    stub_ami(aws, "us-east-1")
    report = run(["--cloud", "aws", "--gpu", "t4", "--region", "us-east-1", "--spot"], aws=aws)
    checks = names(report)
    assert report.target.spot and report.target.machine.name == "g4dn.xlarge"
    assert checks["quota"].status == doctor.OK and "All G and VT Spot Instance Requests" in checks["quota"].value
    zones = sorted(o["Location"] for o in ec2_offerings("us-east-1") if o["InstanceType"] == "g4dn.xlarge")
    assert checks["spot-price"].status == doctor.OK
    assert [part.split(" ")[0] for part in checks["spot-price"].value.split("; ")[0].split(", ")] == zones


def test_p_family_uses_the_p_quota(aws):
    stub_quota(aws, "us-east-1", "L-417A185B", 0)
    stub_ami(aws, "us-east-1")
    quota = names(run(["--cloud", "aws", "--gpu", "h100", "--region", "us-east-1"], aws=aws))["quota"]
    assert quota.status == doctor.FAIL
    assert quota.fix.endswith("--quota-code L-417A185B --desired-value 16 --region us-east-1")


def test_unreadable_applied_quota_falls_back_to_the_default_and_says_so(aws):
    stub_quota(aws, "us-east-1", "L-DB2E81BA", None, default=64)
    stub_ami(aws, "us-east-1")
    quota = names(run(["--stack", "aws-g5"], aws=aws))["quota"]
    # A default is not what a new account has: a warning that still carries the command.
    assert quota.status == doctor.WARN and "64 vCPUs (AWS default; the applied value was unreadable" in quota.value
    assert "NoSuchResourceException" in quota.value
    assert quota.fix.endswith("--quota-code L-DB2E81BA --desired-value 4 --region us-east-1")


def test_no_readable_quota_at_all_is_a_warning_with_the_command(aws):
    stub_quota(aws, "us-east-1", "L-DB2E81BA", None, default=None)
    stub_ami(aws, "us-east-1")
    quota = names(run(["--stack", "aws-g5"], aws=aws))["quota"]
    assert quota.status == doctor.WARN and "AccessDeniedException" in quota.value
    assert "request-service-quota-increase" in quota.fix


def test_region_without_the_type_fails_and_names_regions_that_offer_it(aws, monkeypatch):
    monkeypatch.setattr(doctor_aws, "MAX_SUGGEST_REGIONS", 6)  # the big GPU regions come first within the bound
    assert not [o for o in ec2_offerings("us-west-1") if o["InstanceType"] == "g5.xlarge"]
    stub_quota(aws, "us-west-1", "L-DB2E81BA", 8)
    stub_ami(aws, "us-west-1")
    report = run(["--cloud", "aws", "--instance-type", "g5.xlarge", "--region", "us-west-1"], aws=aws)
    offering = names(report)["offering"]
    assert offering.status == doctor.FAIL and offering.value == "us-west-1 does not offer g5.xlarge"
    listed = offering.fix.split("regions that offer g5.xlarge: ")[1].rstrip(")").split(", ")
    assert listed and all(any(o["InstanceType"] == "g5.xlarge" for o in ec2_offerings(r)) for r in listed)
    assert {"us-east-1", "us-east-2", "us-west-2"} <= set(listed)
    assert offering.fix.startswith(f"pulumi config set aws:region {listed[0]} ")
    assert "gpu" not in names(report) and not report.ok


def test_missing_gpu_ami_fails_with_another_region(aws):
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 8)  # moto's SSM has no DLAMI parameter: ParameterNotFound
    image = names(run(["--stack", "aws-g5"], aws=aws))["image"]
    assert image.status == doctor.FAIL and DLAMI_SSM_PARAMETER in image.value
    assert image.fix.startswith("pick a region where it is")


def test_uncatalogued_types_are_judged_from_ec2s_own_description(aws):
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 64)
    stub_ami(aws, "us-east-1")
    fits = run(["--cloud", "aws", "--instance-type", "g6e.12xlarge", "--region", "us-east-1"], aws=aws)
    assert names(fits)["config"].status == doctor.OK and fits.target.machine.gpu.model == "L40S"
    arm = names(run(["--cloud", "aws", "--instance-type", "g5g.xlarge", "--region", "us-east-1"], aws=aws))
    assert arm["config"].status == doctor.FAIL and "Arm" in arm["config"].value
    assert "offering" not in arm  # nothing to check without a machine that fits


def test_cpu_only_type_fails_config_with_the_catalogs_alternatives(aws):
    report = run(["--cloud", "aws", "--instance-type", "c5.xlarge", "--region", "us-east-1"], aws=aws)
    check = names(report)["config"]
    assert check.status == doctor.FAIL and "CPU-only" in check.value
    assert "pulumi config set instanceType g4dn.xlarge" in check.value
    assert check.value.startswith("the flags name an invalid target:")


def price_list_entry(instance_type: str, region: str, usd: str) -> str:
    """One GetProducts PriceList item, a JSON string as the Price List API returns it."""
    sku = f"SKU{abs(hash((instance_type, region))) % 10**8:08d}"
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": {
            "instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux", "tenancy": "Shared",
            "preInstalledSw": "NA", "capacitystatus": "Used", "licenseModel": "No License required",
            "vcpu": "4", "gpu": "1", "memory": "16 GiB", "servicecode": "AmazonEC2"}},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {f"{sku}.JRTCKXETXF": {
            "offerTermCode": "JRTCKXETXF", "sku": sku, "effectiveDate": "2026-11-01T00:00:00Z", "termAttributes": {},
            "priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7", "unit": "Hrs", "beginRange": "0", "endRange": "Inf",
                "description": f"${usd} per On Demand Linux {instance_type} Instance Hour", "appliesTo": [],
                "pricePerUnit": {"USD": usd}}}}}},
        "version": "20261120000000", "publicationDate": "2026-11-20T00:00:00Z"})


def test_suggest_lists_offering_regions_by_price_with_quota_marks(aws):
    regions = sorted(p.name.removesuffix(".json.gz") for p in (MOTO_OFFERINGS / "availability-zone").iterdir())
    offering = [r for r in regions if not r.startswith(("cn-", "us-gov-"))
                and any(o["InstanceType"] == "g5.xlarge" for o in ec2_offerings(r))]
    prices = {"us-east-1": "1.0060000000", "us-east-2": "1.0060000000", "us-west-2": "1.0060000000",
              "eu-west-1": "1.1230000000", "ap-northeast-1": "1.4590000000"}
    pricing = Stubber(aws.client("pricing", "us-east-1"))
    pricing.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [
        price_list_entry("g5.xlarge", r, usd) for r, usd in prices.items()]}, {
        "ServiceCode": "AmazonEC2", "MaxResults": 100, "Filters": [
            {"Type": "TERM_MATCH", "Field": "instanceType", "Value": "g5.xlarge"},
            {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
            {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
            {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
            {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
            {"Type": "TERM_MATCH", "Field": "licenseModel", "Value": "No License required"}]})
    pricing.activate()
    for region in offering:
        if region != "us-east-1":
            stub_quota(aws, region, "L-DB2E81BA", 8 if region == "us-east-2" else None, default=64)
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 0, times=2)  # asked by the quota check and by --suggest
    stub_ami(aws, "us-east-1")
    report = run(["--stack", "aws-g5", "--suggest"], aws=aws)
    rows = {s.location: s for s in report.suggestions}
    # Only regions that offer the type, no more than the bound, and the big GPU regions asked first.
    assert set(rows) <= set(offering) and len(rows) <= doctor_aws.MAX_SUGGEST_REGIONS
    assert {"us-east-1", "us-east-2", "us-west-2", "eu-west-1", "ap-northeast-1"} <= set(rows)
    assert all(any(o["InstanceType"] == "g5.xlarge" for o in ec2_offerings(r)) for r in rows)
    ordered = [s.usd_per_hour if s.usd_per_hour is not None else math.inf for s in report.suggestions]
    assert ordered == sorted(ordered)  # cheapest first, regions the Price List did not price last
    assert rows["ap-south-1"].usd_per_hour is None and "no price for this region" in rows["ap-south-1"].price_source
    assert rows["us-east-2"].quota == "available" and rows["us-east-1"].quota == "insufficient"
    assert rows["eu-west-1"].usd_per_hour == pytest.approx(1.123) and rows["eu-west-1"].quota == "unknown"
    assert "AWS Price List API" in rows["eu-west-1"].price_source
    # Among the $1.006 regions, known quota comes first, a known shortfall last.
    cheapest = [s.location for s in report.suggestions if s.usd_per_hour == pytest.approx(1.006)]
    assert cheapest[0] == "us-east-2" and cheapest[-1] == "us-east-1"
    text = doctor_report.as_text(report)
    assert "Where g5.xlarge is offered, cheapest first:" in text and "NO QUOTA" in text


def test_suggest_without_the_price_list_uses_spot_prices_or_the_catalog(aws, monkeypatch):
    monkeypatch.setattr(doctor_aws, "MAX_SUGGEST_REGIONS", 3)  # us-east-1, us-east-2, us-west-2
    for region in ("us-east-1", "us-east-2", "us-west-2"):  # the home region: by the check and by --suggest
        stub_quota(aws, region, "L-3819A6DF", 8, times=2 if region == "us-east-1" else 1)
    spot = run(["--cloud", "aws", "--gpu", "t4", "--region", "us-east-1", "--spot", "--suggest"], aws=aws)
    assert [s.location for s in spot.suggestions] == ["us-east-1", "us-east-2", "us-west-2"]
    assert all(s.price_source == "current spot, cheapest AZ" and s.quota == "available" for s in spot.suggestions)
    pricing = Stubber(aws.client("pricing", "us-east-1"))
    pricing.add_client_error("get_products", "AccessDeniedException", "not authorized to perform: "
                             "pricing:GetProducts", 400)
    pricing.activate()
    for region in ("us-east-1", "us-east-2", "us-west-2"):
        stub_quota(aws, region, "L-DB2E81BA", 8, times=2 if region == "us-east-1" else 1)
    listed = run(["--cloud", "aws", "--gpu", "t4", "--region", "us-east-1", "--suggest"], aws=aws).suggestions
    assert {s.usd_per_hour for s in listed} == {catalog.AWS_OFFERS["g4dn.xlarge"].usd_per_hour}
    assert "AccessDeniedException" in listed[0].price_source


def test_expired_credentials_fail_with_the_refresh_fix(aws):
    stub = Stubber(aws.client("sts", "us-east-1"))
    stub.add_client_error("get_caller_identity", "ExpiredToken", "The security token included in the request "
                          "is expired", 403)
    stub.activate()
    report = run(["--stack", "aws-g5"], aws=aws)
    assert [c.name for c in report.checks] == ["config", "credentials"]  # nothing else can be asked
    credentials = names(report)["credentials"]
    assert credentials.status == doctor.FAIL and "ExpiredToken" in credentials.value
    assert "aws sso login" in credentials.fix


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No cloud credentials anywhere the SDKs look, metadata services pointed at a closed loopback port."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_")) or name in ("GCLOUD_PROJECT",):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty"
    empty.write_text("")
    (tmp_path / "gcloud").mkdir()
    for name, value in {
        "AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9", "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_CONFIG_FILE": str(empty), "GOOGLE_APPLICATION_CREDENTIALS": str(empty),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "HOME": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_aws_without_credentials_is_one_quick_fail_line(no_credentials, capsys, loopback_only):
    started = time.monotonic()
    status = cli.main(["--stack", "aws-g5"])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert status == 1 and elapsed < 5
    assert "  FAIL  credentials  no usable AWS credentials" in out
    assert "fix: configure credentials: `aws configure`" in out and "Traceback" not in out


@pytest.mark.parametrize("key_file", ["empty", "unset"])
def test_gcp_without_credentials_is_one_quick_fail_line(no_credentials, capsys, monkeypatch, key_file):
    if key_file == "unset":  # google-auth then asks the metadata server: GCE_METADATA_IP, a closed loopback port
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    started = time.monotonic()
    status = cli.main(["--cloud", "gcp", "--gpu", "t4", "--zone", "us-central1-a", "--project", PROJECT,
                          "--json"])
    elapsed = time.monotonic() - started
    document = json.loads(capsys.readouterr().out)
    jsonschema.validate(document, doctor_report.JSON_SCHEMA)
    assert status == 1 and elapsed < 8 and document["ok"] is False
    (credentials,) = [c for c in document["checks"] if c["name"] == "credentials"]
    assert credentials["status"] == "fail" and "no application-default credentials" in credentials["value"]
    assert credentials["fix"] == "gcloud auth application-default login"


def test_unreachable_aws_is_a_fail_line_not_a_hang(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: connection refused
    started = time.monotonic()
    report = run(["--stack", "aws-g5"])
    assert time.monotonic() - started < 10
    credentials = names(report)["credentials"]
    assert credentials.status == doctor.FAIL and credentials.value.startswith("cannot reach sts in us-east-1")
    assert "check the network" in credentials.fix


def test_every_cloud_has_its_own_doctor():
    # A cloud without one would silently get another cloud's checks at `make up`.
    assert set(cli.DOCTORS) == set(config.CLOUDS)
    assert all(callable(module.check) for module in cli.DOCTORS.values())
    assert len(set(cli.DOCTORS.values())) == len(cli.DOCTORS)


def test_module_entry_point_exit_codes(no_credentials):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tools.doctor", "--stack", "aws-g4dn"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "FAIL  credentials" in done.stdout and "Traceback" not in done.stderr
    usage = subprocess.run([sys.executable, "-m", "tools.doctor"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "give --stack NAME" in usage.stderr


def test_exit_status_is_zero_when_nothing_fails(aws, monkeypatch, capsys):
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 8)
    stub_ami(aws, "us-east-1")
    monkeypatch.setattr(doctor_aws, "AwsApi", lambda profile=None: aws)
    assert cli.main(["--stack", "aws-g5", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True and document["target"]["machine_type"] == "g5.xlarge"
    assert document["target"]["stack"] == "aws-g5" and document["suggestions"] == []


@pytest.mark.parametrize("argv, message", [
    (["--stack", "aws-g5", "--region", "us-west-2"], "--stack reads the target from the stack"),
    (["--cloud", "gcp", "--instance-type", "g5.xlarge"], "--instance-type is for AWS"),
    (["--cloud", "aws", "--gpu", "t4", "--zone", "us-central1-a"], "--zone and --project are GCP settings"),
    (["--gpu", "t4", "--instance-type", "g4dn.xlarge"], "not allowed with argument"),
    (["--gpu", "k80"], "invalid choice"),
])
def test_bad_command_lines_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def write_stack(tmp_path, monkeypatch, config: dict[str, object]) -> str:
    """A stack file `Pulumi.mine.yaml` as `pulumi config set` writes one (keys without a namespace are the
    project's), in a stacks folder of its own; returns the stack name."""
    monkeypatch.setattr(presets, "STACKS_DIR", tmp_path)
    keys = {key if ":" in key else f"sdxl-endpoint:{key}": value for key, value in config.items()}
    (tmp_path / "Pulumi.mine.yaml").write_text(yaml.safe_dump({"config": keys}))
    return "mine"


def test_stack_file_secrets_are_never_read(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "STACKS_DIR", tmp_path)
    (tmp_path / "Pulumi.mine.yaml").write_text(
        "config:\n  aws:region: eu-west-1\n  sdxl-endpoint:spot: true\n  sdxl-endpoint:corsOrigins: ['https://a.example']\n"
        "  sdxl-endpoint:apiToken:\n    secure: v1:abcdefgh:ijklmnop\n")
    values, note = doctor_target.stack_values("mine")
    assert note is None
    assert values == {"aws:region": "eu-west-1", "sdxl-endpoint:spot": "true",
                      "sdxl-endpoint:corsOrigins": '["https://a.example"]'}
    assert doctor_target.stack_values("absent") == ({}, f"no {tmp_path.name}/Pulumi.absent.yaml: checking the defaults "
                                                 "`pulumi up` would use")


# --- GCP: the real google-cloud-compute clients against a local Compute Engine REST fake -----------

T4_ZONES = ("us-central1-a", "us-central1-b", "us-central1-c", "us-east1-c", "us-east4-b")
L4_ZONES = ("us-central1-a", "us-east4-a", "europe-west4-b")


class FakeCompute:
    """Answers the Compute Engine v1 REST paths the doctor reads, with payloads shaped as Google's."""

    def __init__(self):
        self.accelerators = {"nvidia-tesla-t4": list(T4_ZONES), "nvidia-l4": list(L4_ZONES)}
        self.region_quotas = {
            "us-central1": {"NVIDIA_T4_GPUS": (1, 0), "PREEMPTIBLE_NVIDIA_T4_GPUS": (0, 0), "NVIDIA_L4_GPUS": (1, 0),
                            "CPUS": (24, 0)},
            "us-east1": {"NVIDIA_T4_GPUS": (0, 0), "CPUS": (24, 0)},
            "us-east4": {"NVIDIA_T4_GPUS": (4, 1), "NVIDIA_L4_GPUS": (0, 0), "CPUS": (24, 0)},
            "europe-west4": {"NVIDIA_L4_GPUS": (2, 0), "CPUS": (24, 0)},
        }
        self.project_quotas = {"GPUS_ALL_REGIONS": (1, 0), "CPUS_ALL_REGIONS": (32, 0)}
        self.image_state: str | None = None
        self.disabled = False
        self.requests: list[str] = []

    @staticmethod
    def not_found(path: str) -> tuple[int, dict]:
        resource = path.split("/compute/v1/", 1)[-1]
        message = f"The resource '{resource}' was not found"
        return 404, {"error": {"code": 404, "message": message,
                               "errors": [{"message": message, "domain": "global", "reason": "notFound"}]}}

    def quotas(self, table: dict) -> list[dict]:
        return [{"metric": m, "limit": float(limit), "usage": float(usage)} for m, (limit, usage) in table.items()]

    def region(self, name: str) -> dict:
        return {"kind": "compute#region", "id": str(1000 + len(name)), "name": name, "status": "UP",
                "zones": [f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{name}-a"],
                "quotas": self.quotas(self.region_quotas[name])}

    def answer(self, method: str, path: str, query: dict) -> tuple[int, dict]:
        self.requests.append(f"{method} {path}")
        if method == "POST" and path == "/token":
            return 200, {"access_token": "ya29.c.fake-token", "expires_in": 3599, "token_type": "Bearer"}
        base = f"/compute/v1/projects/{PROJECT}"
        if self.disabled and path.startswith(base):
            message = ("Compute Engine API has not been used in project 123456789012 before or it is disabled. "
                       "Enable it by visiting https://console.developers.google.com/apis/api/compute.googleapis.com/"
                       "overview?project=123456789012 then retry.")
            return 403, {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED",
                                   "errors": [{"message": message, "domain": "usageLimits",
                                               "reason": "accessNotConfigured"}],
                                   "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                                "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
                                                "metadata": {"service": "compute.googleapis.com",
                                                             "consumer": "projects/123456789012"}}]}}
        parts = path.removeprefix(base).strip("/").split("/")
        if path == base:
            return 200, {"kind": "compute#project", "id": "123456789012", "name": PROJECT,
                         "quotas": self.quotas(self.project_quotas),
                         "defaultServiceAccount": "123456789012-compute@developer.gserviceaccount.com"}
        if parts[:2] == ["aggregated", "acceleratorTypes"]:
            wanted = query.get("filter", [""])[0].split("=")[-1].strip()
            items = {}
            for zone in sorted({z for zones in self.accelerators.values() for z in zones}):
                listed = [self.accelerator(a, zone) for a, zones in self.accelerators.items()
                          if zone in zones and a == wanted]
                items[f"zones/{zone}"] = {"acceleratorTypes": listed} if listed else {"warning": {
                    "code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/x' on this page.",
                    "data": [{"key": "scope", "value": f"zones/{zone}"}]}}
            return 200, {"kind": "compute#acceleratorTypeAggregatedList", "id": f"projects/{PROJECT}/aggregated/"
                         "acceleratorTypes", "items": items}
        if len(parts) == 4 and parts[0] == "zones" and parts[2] == "acceleratorTypes":
            zone, name = parts[1], parts[3]
            if zone in self.accelerators.get(name, ()):
                return 200, self.accelerator(name, zone)
            return self.not_found(path)
        if len(parts) == 4 and parts[0] == "zones" and parts[2] == "machineTypes":
            zone, name = parts[1], parts[3]
            offer = catalog.GCP_OFFERS.get(name)
            if offer is None or (name.startswith("g2-") and zone not in self.accelerators["nvidia-l4"]):
                return self.not_found(path)
            body = {"kind": "compute#machineType", "id": "3004", "name": name, "zone": zone,
                    "guestCpus": offer.vcpus, "memoryMb": int(offer.ram_gib * 1024), "isSharedCpu": False,
                    "maximumPersistentDisks": 128, "maximumPersistentDisksSizeGb": "263168",
                    "description": f"{offer.vcpus} vCPUs, {offer.ram_gib:g} GB RAM"}
            if offer.accelerator is None:
                body["accelerators"] = [{"guestAcceleratorType": catalog.GCP_ACCELERATORS[offer.gpu.key].type,
                                         "guestAcceleratorCount": 1}]
            return 200, body
        if parts == ["regions"]:
            return 200, {"kind": "compute#regionList", "id": f"projects/{PROJECT}/regions",
                         "items": [self.region(name) for name in sorted(self.region_quotas)]}
        if len(parts) == 2 and parts[0] == "regions" and parts[1] in self.region_quotas:
            return 200, self.region(parts[1])
        image_base = f"/compute/v1/projects/{DLVM_IMAGE_PROJECT}/global/images/family/"
        if path == image_base + DLVM_IMAGE_FAMILY:
            name = f"{DLVM_IMAGE_FAMILY}-v20261105"
            body = {"kind": "compute#image", "id": "8237459834", "name": name, "family": DLVM_IMAGE_FAMILY,
                    "creationTimestamp": "2026-11-05T11:22:33.444-08:00", "status": "READY",
                    "diskSizeGb": "50", "architecture": "X86_64",
                    "selfLink": f"https://www.googleapis.com/compute/v1/projects/{DLVM_IMAGE_PROJECT}/global/images/"
                                f"{name}"}
            if self.image_state:
                body["deprecated"] = {"state": self.image_state, "replacement": "newer"}
            return 200, body
        return self.not_found(path)

    @staticmethod
    def accelerator(name: str, zone: str) -> dict:
        return {"kind": "compute#acceleratorType", "id": "10002", "name": name, "zone": zone,
                "description": {"nvidia-tesla-t4": "NVIDIA T4", "nvidia-l4": "NVIDIA L4"}[name],
                "maximumCardsPerInstance": 4 if name == "nvidia-tesla-t4" else 8,
                "selfLink": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{zone}/"
                            f"acceleratorTypes/{name}"}


@pytest.fixture
def compute(monkeypatch, tmp_path):
    """A local Compute Engine + OAuth token endpoint, and a service-account key that points at it."""
    fake = FakeCompute()

    def handle(request: BaseHTTPRequestHandler, method: str) -> None:
        request.rfile.read(int(request.headers.get("content-length") or 0))
        url = urlsplit(request.path)
        status, body = fake.answer(method, url.path, parse_qs(url.query))
        reply_json(request, status, body, content_type="application/json; charset=UTF-8")

    with loopback_server(handle) as endpoint:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        key_file = tmp_path / "sa.json"
        key_file.write_text(json.dumps({
            "type": "service_account", "project_id": PROJECT, "private_key_id": "0123456789abcdef",
            "private_key": pem, "client_email": f"deployer@{PROJECT}.iam.gserviceaccount.com",
            "client_id": "109876543210987654321", "token_uri": f"{endpoint}/token",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth"}))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        monkeypatch.setattr(doctor_gcp, "API_ENDPOINT", endpoint)
        yield fake


def gcp(*extra: str) -> list[str]:
    return ["--cloud", "gcp", "--project", PROJECT, *extra]


def test_gcp_t4_passes_every_check(compute):
    report = run(gcp("--gpu", "t4", "--zone", "us-central1-a"))
    checks = names(report)
    assert [c.name for c in report.checks] == ["config", "credentials", "compute-api", "accelerator",
                                               "machine-type", "regional-quota", "global-quota", "image"]
    assert all(c.status == doctor.OK for c in report.checks), doctor_report.as_text(report)
    assert f"service account deployer@{PROJECT}.iam.gserviceaccount.com" in checks["credentials"].value
    assert checks["accelerator"].value == "us-central1-a offers nvidia-tesla-t4 (up to 4 per VM)"
    assert checks["machine-type"].value == "n1-standard-4: 4 vCPUs, 15 GB RAM, plus 1x nvidia-tesla-t4 attached"
    assert checks["regional-quota"].value == "NVIDIA_T4_GPUS in us-central1: limit 1, in use 0, 1 needed"
    assert checks["image"].value.startswith(f"{DLVM_IMAGE_FAMILY}-v20261105 (family {DLVM_IMAGE_FAMILY}")
    assert "POST /token" in compute.requests  # the credentials were really exchanged for a token


def test_gcp_l4_machine_has_its_gpu_built_in(compute):
    checks = names(run(gcp("--machine-type", "g2-standard-4", "--zone", "us-central1-a")))
    assert checks["machine-type"].value == "g2-standard-4: 4 vCPUs, 16 GB RAM, built-in 1x nvidia-l4"
    assert checks["regional-quota"].value.startswith("NVIDIA_L4_GPUS in us-central1")


def test_gcp_zero_regional_quota_fails_with_console_and_gcloud_fix(compute):
    compute.region_quotas["us-central1"]["NVIDIA_T4_GPUS"] = (0, 0)
    report = run(gcp("--gpu", "t4", "--zone", "us-central1-a"))
    quota = names(report)["regional-quota"]
    assert quota.status == doctor.FAIL and not report.ok
    assert f"https://console.cloud.google.com/iam-admin/quotas?project={PROJECT}" in quota.fix
    assert quota.fix.endswith(
        f"gcloud quotas preferences create --service=compute.googleapis.com --project={PROJECT} "
        "--quota-id=NVIDIA-T4-GPUS-per-project-region --preferred-value=1 --dimensions=region=us-central1 "
        "--email=YOU@example.com")


def test_gcp_zero_global_gpu_quota_fails(compute):
    compute.project_quotas["GPUS_ALL_REGIONS"] = (0, 0)
    quota = names(run(gcp("--gpu", "t4", "--zone", "us-central1-a")))["global-quota"]
    assert quota.status == doctor.FAIL and quota.value.startswith("GPUS_ALL_REGIONS: limit 0")
    assert "--quota-id=GPUS-ALL-REGIONS-per-project --preferred-value=1 --email" in quota.fix
    assert "--dimensions" not in quota.fix


def test_gcp_spot_uses_preemptible_quota_only_when_granted(compute):
    quota = names(run(gcp("--gpu", "t4", "--zone", "us-central1-a", "--spot")))["regional-quota"]
    assert quota.value.startswith("NVIDIA_T4_GPUS in us-central1")  # PREEMPTIBLE limit 0: the regular quota
    compute.region_quotas["us-central1"]["PREEMPTIBLE_NVIDIA_T4_GPUS"] = (2, 0)
    quota = names(run(gcp("--gpu", "t4", "--zone", "us-central1-a", "--spot")))["regional-quota"]
    assert quota.status == doctor.OK and quota.value.startswith("PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1")


def test_gcp_zone_without_the_accelerator_names_zones_that_have_it(compute):
    compute.accelerators["nvidia-tesla-t4"].remove("us-central1-a")  # the live list differs from the catalog
    report = run(gcp("--gpu", "t4", "--zone", "us-central1-a"))
    accelerator = names(report)["accelerator"]
    assert accelerator.status == doctor.FAIL and accelerator.value == "us-central1-a does not offer nvidia-tesla-t4"
    assert accelerator.fix == ("pulumi config set gcp:zone us-central1-b (and gcp:region us-central1); "
                               "zones with nvidia-tesla-t4: us-central1-b, us-central1-c")


def test_gcp_disabled_compute_api_fails_with_the_enable_command(compute):
    compute.disabled = True
    report = run(gcp("--gpu", "t4", "--zone", "us-central1-a"))
    api = names(report)["compute-api"]
    assert api.status == doctor.FAIL and api.fix == f"gcloud services enable compute.googleapis.com --project={PROJECT}"
    assert report.checks[-1].name == "compute-api"  # the rest would only repeat it


def test_gcp_image_family_missing_or_deprecated(compute, monkeypatch):
    compute.image_state = "DEPRECATED"
    image = names(run(gcp("--gpu", "t4", "--zone", "us-central1-a")))["image"]
    assert image.status == doctor.WARN and image.value.endswith("is DEPRECATED")
    monkeypatch.setattr(catalog, "GCP_DLVM_IMAGE_FAMILY", "common-cu999-retired")
    image = names(run(gcp("--gpu", "t4", "--zone", "us-central1-a")))["image"]
    assert image.status == doctor.FAIL and "common-cu999-retired not found" in image.value
    assert "gcloud compute images list --project=deeplearning-platform-release" in image.fix


def test_gcp_preset_without_project_points_at_the_credentials_project(compute):
    report = run(["--stack", "gcp-t4"])
    config_check = names(report)["config"]
    assert config_check.status == doctor.FAIL and "gcp:project" in config_check.value
    assert config_check.fix.endswith(f"your application-default credentials' project is {PROJECT}")


def test_gcp_region_flag_picks_a_zone_with_the_gpu(compute):
    report = run(gcp("--gpu", "l4", "--region", "europe-west4"))
    assert report.target.zone == "europe-west4-a" and names(report)["config"].status == doctor.OK
    # The catalog lists europe-west4-a for the L4; this project's live list does not: the check says so.
    assert names(report)["accelerator"].fix.startswith("pulumi config set gcp:zone europe-west4-b")


def test_gcp_suggest_lists_zones_with_quota_marks(compute):
    report = run(gcp("--gpu", "t4", "--zone", "us-central1-a", "--suggest"))
    rows = [(s.location, s.quota) for s in report.suggestions]
    assert {z for z, _ in rows} == set(T4_ZONES)
    assert rows[:3] == [("us-central1-a", "available"), ("us-central1-b", "available"),
                        ("us-central1-c", "available")]
    assert dict(rows)["us-east4-b"] == "available" and dict(rows)["us-east1-c"] == "insufficient"
    assert [s.location for s in report.suggestions][-1] == "us-east1-c"  # equal prices: shortfalls last
    assert all(s.usd_per_hour == catalog.GCP_OFFERS["n1-standard-4"].usd_per_hour for s in report.suggestions)


def test_gcp_unreachable_token_endpoint_is_a_fail_line(compute, tmp_path, monkeypatch):
    key = json.loads(Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
    key["token_uri"] = "http://127.0.0.1:9/token"  # nothing listens there
    moved = tmp_path / "offline.json"
    moved.write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(moved))
    started = time.monotonic()
    credentials = names(run(gcp("--gpu", "t4", "--zone", "us-central1-a")))["credentials"]
    assert time.monotonic() - started < 10
    assert credentials.status == doctor.FAIL and "cannot reach Google's token endpoint" in credentials.value


def test_gcp_gpu_names_match_the_catalog():
    for offer in catalog.GCP_OFFERS.values():
        gpu = catalog.GCP_ACCELERATORS[offer.gpu.key]
        assert offer.accelerator in (None, gpu.type) and gpu.quota_metric.endswith("_GPUS")


def test_text_output_has_one_line_per_check_and_a_fix_under_each_fail():
    report = doctor.Report(doctor.Target(cloud="aws", stack="aws-g5", machine=catalog.AWS_OFFERS["g5.xlarge"],
                                         region="us-east-1"))
    report.add("credentials", doctor.OK, "account 123456789012 as arn:aws:iam::123456789012:user/dev")
    report.add("quota", doctor.FAIL, "0 vCPUs", doctor_aws.quota_fix("L-DB2E81BA", 4, "us-east-1"))
    lines = doctor_report.as_text(report).splitlines()
    assert lines[1] == "  ok    credentials  account 123456789012 as arn:aws:iam::123456789012:user/dev"
    assert lines[2] == "  FAIL  quota        0 vCPUs"
    assert lines[3].strip().startswith("fix: aws service-quotas request-service-quota-increase")
    assert lines[-1].startswith("1 FAIL, 0 warn, 1 ok.") and "SKIP_DOCTOR=1" in lines[-1]


# --- fleets: quota for maxReplicas instances, not one ------------------------------------------------------------


def test_an_aws_fleet_needs_quota_for_max_replicas_instances(aws):
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 8)  # enough for one g5.xlarge, or two, not four
    stub_ami(aws, "us-east-1")
    report = run(["--stack", "aws-g5-fleet"], aws=aws)
    quota = names(report)["quota"]
    assert report.target.replicas == 4 and "a fleet of up to 4" in report.target.describe()
    assert quota.status == doctor.FAIL
    assert "maxReplicas 4 x g5.xlarge (4 vCPUs each) needs 16" in quota.value
    assert quota.fix == ("aws service-quotas request-service-quota-increase --service-code ec2 "
                         "--quota-code L-DB2E81BA --desired-value 16 --region us-east-1")


def test_an_aws_spot_fleet_counts_against_the_spot_quota(aws):
    stub_quota(aws, "us-east-1", "L-3819A6DF", 32)
    stub_ami(aws, "us-east-1")
    report = run(["--cloud", "aws", "--gpu", "a10g", "--region", "us-east-1", "--spot", "--max-replicas", "4"],
                 aws=aws)
    quota = names(report)["quota"]
    assert quota.status == doctor.OK and "All G and VT Spot Instance Requests" in quota.value
    assert "needs 16" in quota.value


def test_an_aws_fleet_with_quota_for_max_replicas_only_is_warned_that_rollouts_would_stall(aws):
    # 16 vCPUs fit four g5.xlarge, but an instance refresh at four launches up to four more before any leaves.
    stub_quota(aws, "us-east-1", "L-DB2E81BA", 16)
    stub_ami(aws, "us-east-1")
    report = run(["--stack", "aws-g5-fleet"], aws=aws)
    quota = names(report)["quota"]
    assert quota.status == doctor.WARN and report.ok
    assert "a rollout at maxReplicas starts replacements first (200% of the fleet) and needs 32" in quota.value
    assert quota.fix.endswith("--quota-code L-DB2E81BA --desired-value 32 --region us-east-1")


def test_a_gcp_fleet_needs_gpus_and_addresses_for_max_replicas_vms(compute):
    compute.region_quotas["us-central1"].update(NVIDIA_L4_GPUS=(4, 1), IN_USE_ADDRESSES=(8, 6))
    compute.project_quotas["GPUS_ALL_REGIONS"] = (8, 1)
    report = run(gcp("--machine-type", "g2-standard-4", "--zone", "us-central1-a", "--max-replicas", "4"))
    regional = [c for c in report.checks if c.name == "regional-quota"]
    gpus, addresses = regional
    assert gpus.status == doctor.FAIL and gpus.value == "NVIDIA_L4_GPUS in us-central1: limit 4, in use 1, 4 needed"
    assert "--quota-id=NVIDIA-L4-GPUS-per-project-region --preferred-value=5" in gpus.fix
    assert addresses.status == doctor.FAIL and "IN_USE_ADDRESSES in us-central1: limit 8, in use 6, 4 needed" in (
        addresses.value)
    assert "--quota-id=IN-USE-ADDRESSES-per-project-region --preferred-value=10" in addresses.fix
    assert names(report)["global-quota"].status == doctor.OK
    # Quota for maxReplicas only: a rollout, one new VM per zone of the region that offers the L4 first, would stall.
    compute.region_quotas["us-central1"].update(NVIDIA_L4_GPUS=(5, 1), IN_USE_ADDRESSES=(16, 6))
    gpus = [c for c in run(gcp("--machine-type", "g2-standard-4", "--zone", "us-central1-a", "--max-replicas",
                               "4")).checks if c.name == "regional-quota"][0]
    surge = len([z for z in catalog.GCP_ACCELERATOR_ZONES["l4"] if z.startswith("us-central1-")])
    assert gpus.status == doctor.WARN and f"starts one VM per zone first and needs {4 + surge}" in gpus.value
    assert f"--preferred-value={1 + 4 + surge}" in gpus.fix
    # One VM: no address check, as before.
    single = [c for c in run(gcp("--machine-type", "g2-standard-4", "--zone", "us-central1-a")).checks
              if c.name == "regional-quota"]
    assert len(single) == 1
