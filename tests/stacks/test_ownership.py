"""The ownership marks the program writes are the ones the CI sweep searches by: a review stack's instance,
as the program tags (AWS) or labels (GCP) it, is found by tools/ci/sweep.py once its ttl has passed."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
from google.cloud import compute_v1
from moto import mock_aws

from tests.stacks.conftest import FAKE_AMI, FAKE_GCP_PROJECT, run_program
from tools.ci import sweep

STACK, TTL = "pr-7", "2026-03-14T12:00:00Z"
AFTER_TTL = datetime(2026, 3, 14, 15, 0, tzinfo=UTC)


def test_the_sweep_finds_an_expired_aws_instance_by_the_programs_tags():
    tags = run_program({"ttl": TTL}, stack=STACK).one("aws:ec2/instance:Instance").inputs["tags"]
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        launched = ec2.run_instances(
            ImageId=FAKE_AMI, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge",
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["Instances"][0]["InstanceId"]
        found = sweep.aws_orphans("us-east-1", set(), AFTER_TTL, client=ec2)
    assert [(o.instance, o.stack, o.expired_at) for o in found] == [
        (launched, STACK, datetime(2026, 3, 14, 12, 0, tzinfo=UTC))]


class ListedInstances:
    """Compute Engine's aggregated list as the client returns it: (scope, InstancesScopedList) pairs."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.instance = compute_v1.Instance(name="sdxl-pr-7", labels=labels)

    def aggregated_list(self, request: compute_v1.AggregatedListInstancesRequest):
        assert request.project == FAKE_GCP_PROJECT
        return [("zones/us-central1-a", compute_v1.InstancesScopedList(instances=[self.instance]))]


def test_the_sweep_finds_an_expired_gcp_instance_by_the_programs_labels():
    run = run_program({"cloud": "gcp", "gcp:project": FAKE_GCP_PROJECT, "ttl": TTL}, stack=STACK)
    labels = run.one("gcp:compute/instance:Instance").inputs["labels"]
    found = sweep.gcp_orphans(FAKE_GCP_PROJECT, set(), AFTER_TTL, client=ListedInstances(labels))
    assert [(o.instance, o.stack, o.expired_at) for o in found] == [
        ("sdxl-pr-7", STACK, datetime(2026, 3, 14, 12, 0, tzinfo=UTC))]
