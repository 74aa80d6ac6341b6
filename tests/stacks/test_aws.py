"""The AWS component, evaluated through the real `__main__.py` under Pulumi mocks."""

import base64
import gzip
import hashlib
import json
import re

import pytest
import yaml

from stacks import aws, bootstrap, bundle, catalog, config, contract
from stacks.bootstrap import USER_DATA_LIMIT_BYTES
from tests.stacks.conftest import (
    FAKE_ACCOUNT,
    FAKE_AMI,
    FAKE_EIP,
    FAKE_VOLUME,
    ROOT,
    ec2_offerings,
    plain_strings,
    run_program,
)

AWS_PRESETS = sorted(p.name.split(".")[1] for p in (ROOT / "stacks").glob("Pulumi.aws-*.yaml")
                     if not p.name.endswith("-fleet.yaml"))  # fleets: test_aws_fleet.py
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how the Pulumi wire format marks a secret value
INSTANCE = "aws:ec2/instance:Instance"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
PARAMETER = "aws:ssm/parameter:Parameter"
KEY = "aws:kms/key:Key"
KEY_ARN = f"arn:aws:kms:us-east-1:{FAKE_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BUCKET = "aws:s3/bucket:Bucket"
AWS_G5_BUCKET = "sdxl-src-aws-g5-1a2b3c4"  # sdxl-src-<stack>, then the provider's "-" and 7 random hex characters
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
VOLUME = "aws:ebs/volume:Volume"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"


def secret_value(value):
    """The plaintext of a secret-marked input, failing if it was not marked secret."""
    assert isinstance(value, dict) and SECRET_SIG in value, "value is not a Pulumi secret"
    return value["value"]


def aws_document(run) -> str:
    """The cloud-init document the instance boots with, as cloud-init unpacks it."""
    return gzip.decompress(base64.b64decode(run.one(INSTANCE).inputs["userDataBase64"])).decode()


def role_policy(run) -> list[dict]:
    return json.loads(run.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])["Statement"]


def assert_nowhere_plain(run, token: str) -> None:
    for resource in run.mocks.resources:
        if resource.typ != "random:index/randomPassword:RandomPassword":
            assert not [s for s in plain_strings(resource.inputs) if token in s], resource.typ


def test_the_three_presets_exist():
    assert AWS_PRESETS == ["aws-g4dn", "aws-g5", "aws-g6"]


@pytest.mark.parametrize("preset", AWS_PRESETS)
def test_each_preset_yields_a_gpu_instance_of_its_type(preset):
    expected = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{preset}.yaml").read_text())["config"][
        "sdxl-endpoint:instanceType"]
    run = run_program(preset=preset)
    instance = run.one(INSTANCE)
    assert instance.inputs["instanceType"] == expected
    offer = catalog.AWS_OFFERS[expected]
    outputs = {k: run.value(v) for k, v in run.outputs.items()}
    assert outputs["instanceType"] == expected
    assert outputs["gpu"] == offer.gpu.model and outputs["gpuMemoryGb"] >= catalog.SDXL_MIN_GPU_MEMORY_GB
    assert outputs["hourlyCostUsd"] == offer.usd_per_hour
    assert outputs["region"] == "us-east-1"
    assert instance.inputs["ami"] == FAKE_AMI


def test_the_default_stack_is_aws_g5():
    assert (ROOT / "stacks" / "Pulumi.aws-g5.yaml").exists()
    run = run_program({})
    assert run.one(INSTANCE).inputs["instanceType"] == "g5.xlarge"


def test_outputs_follow_the_shared_contract():
    run = run_program(preset="aws-g5")
    assert tuple(run.outputs) == contract.OUTPUT_NAMES
    outputs = {k: run.value(v) for k, v in run.outputs.items()}
    assert outputs["instanceId"] == "i-0123456789abcdef0"
    assert outputs["publicIp"] == FAKE_EIP and outputs["endpoint"] == f"https://{FAKE_EIP}"
    with_domain = run_program({"domain": "sdxl.example.com"})
    assert with_domain.value(with_domain.outputs["endpoint"]) == "https://sdxl.example.com"
    assert outputs["shell"] == "aws ssm start-session --region us-east-1 --target i-0123456789abcdef0"
    assert outputs["endpoint"] in outputs["curlExample"]
    assert outputs["availabilityZone"].startswith("us-east-1")


@pytest.mark.parametrize("instance_type, reason", [
    ("c5.xlarge", "CPU-only"), ("m6i.large", "CPU-only"), ("t3.medium", "CPU-only"), ("r7i.large", "CPU-only"),
    ("g4ad.xlarge", "AMD"), ("inf1.xlarge", "Inferentia"), ("inf2.xlarge", "Inferentia2"),
    ("trn1.2xlarge", "Trainium"), ("dl1.24xlarge", "Gaudi"),
    ("g5g.xlarge", "Arm"), ("c7g.large", "Arm"),
    ("p2.xlarge", "K80 has 12 GB"), ("g3.4xlarge", "M60 has 8 GB"),
])
def test_unfit_types_are_refused_at_preview_before_any_resource(instance_type, reason):
    with pytest.raises(config.ConfigError) as refused:
        run_program({"instanceType": instance_type}, preview=True)
    message = str(refused.value)
    assert f"instanceType '{instance_type}' cannot run SDXL" in message and reason in message
    assert "Nearest types that fit:" in message and "fix: pulumi config set instanceType " in message


def test_refusal_creates_nothing():
    from tests.stacks import conftest

    created = []
    original = conftest.CloudMocks.new_resource
    conftest.CloudMocks.new_resource = lambda self, args: (created.append(args.typ), original(self, args))[1]
    try:
        with pytest.raises(config.ConfigError):
            run_program({"instanceType": "c5.xlarge", "diskGb": "20"}, preview=True)
    finally:
        conftest.CloudMocks.new_resource = original
    assert created == []


def test_uncatalogued_nvidia_type_is_checked_against_ec2_and_accepted():
    run = run_program({"instanceType": "p3dn.24xlarge"})
    assert run.one(INSTANCE).inputs["instanceType"] == "p3dn.24xlarge"
    assert run.value(run.outputs["gpu"]) == "V100"
    looked_up = [c.args["instanceType"] for c in run.mocks.calls if c.token.endswith("getInstanceType")]
    assert looked_up == ["p3dn.24xlarge"]


def test_catalogued_types_need_no_description_lookup():
    run = run_program(preset="aws-g5")
    assert not [c for c in run.mocks.calls if c.token.endswith("getInstanceType")]


def test_subnet_sits_in_an_az_that_offers_the_type():
    # g6e.xlarge is offered in only some us-east-1 zones; the first of those, by name, is used.
    run = run_program({"instanceType": "g6e.xlarge"})
    offered = sorted(o["Location"] for o in ec2_offerings("us-east-1") if o["InstanceType"] == "g6e.xlarge")
    subnet = run.one("aws:ec2/subnet:Subnet")
    assert subnet.inputs["availabilityZone"] == offered[0]
    assert run.value(run.outputs["availabilityZone"]) == offered[0]


def test_type_not_offered_in_region_fails_with_a_fix():
    with pytest.raises(config.ConfigError, match="not offered in any availability zone of us-west-1"):
        run_program({"instanceType": "g6e.xlarge", "aws:region": "us-west-1"})


def test_own_network_and_no_default_vpc():
    run = run_program(preset="aws-g5")
    assert run.one("aws:ec2/vpc:Vpc").inputs["cidrBlock"] == aws.VPC_CIDR
    routes = run.one("aws:ec2/routeTable:RouteTable").inputs["routes"]
    assert routes == [{"cidrBlock": "0.0.0.0/0", "gatewayId": "sdxl-igw-id"}]
    run.one("aws:ec2/routeTableAssociation:RouteTableAssociation")
    assert not [c for c in run.mocks.calls if "getVpc" in c.token or "getSubnet" in c.token]


@pytest.mark.parametrize("cidrs", [None, ["203.0.113.0/24", "2001:db8::/32"]])
def test_security_group_opens_exactly_80_and_443(cidrs):
    run = run_program({"allowedCidrs": cidrs} if cidrs else {})
    group = run.one(SECURITY_GROUP)
    ingress = group.inputs["ingress"]
    assert sorted((r["fromPort"], r["toPort"], r["protocol"]) for r in ingress) == [(80, 80, "tcp"), (443, 443, "tcp")]
    sources = {r["fromPort"]: r.get("cidrBlocks", []) + r.get("ipv6CidrBlocks", []) for r in ingress}
    # The API (443) is limited to allowedCidrs; 80 only redirects and answers ACME challenges.
    assert sources == {443: cidrs or ["0.0.0.0/0"], 80: ["0.0.0.0/0"]}
    # No separate rule resources that could open anything else, and no SSH anywhere.
    assert not [r for r in run.mocks.resources if "Ingress" in r.typ or "securityGroupRule" in r.typ]
    assert all(r["fromPort"] != 22 for r in ingress)


def test_shell_is_ssm_session_manager_and_the_role_reads_only_its_tokens_and_bundle():
    run = run_program(preset="aws-g5")
    attachment = run.one("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert attachment.inputs["policyArn"] == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    assert '"ec2.amazonaws.com"' in run.one("aws:iam/role:Role").inputs["assumeRolePolicy"]
    assert run.one(INSTANCE).inputs["iamInstanceProfile"]
    statements = {s["sid"]: s for s in role_policy(run)}
    assert set(statements) == {"ReadItsTokens", "NoOtherParameters", "DecryptThemThroughSsm", "ReadItsSourceBundle"}
    own = [f"arn:aws:ssm:us-east-1:{FAKE_ACCOUNT}:parameter/sdxl-endpoint/aws-g5/api-token"]
    assert statements["ReadItsTokens"]["actions"] == ["ssm:GetParameter"]
    assert statements["ReadItsTokens"]["resources"] == own
    # The Session Manager policy allows ssm:GetParameter(s) on every parameter: denied but for its own.
    deny = statements["NoOtherParameters"]
    assert deny["effect"] == "Deny" and deny["notResources"] == own and "ssm:GetParameters" in deny["actions"]
    decrypt = statements["DecryptThemThroughSsm"]
    assert decrypt["actions"] == ["kms:Decrypt"] and decrypt["resources"] == [KEY_ARN]
    assert decrypt["conditions"] == [{"test": "StringEquals", "variable": "kms:ViaService",
                                      "values": ["ssm.us-east-1.amazonaws.com"]}]
    key = run.one(OBJECT).inputs["key"]
    assert statements["ReadItsSourceBundle"] == {"sid": "ReadItsSourceBundle", "actions": ["s3:GetObject"],
                                                 "resources": [f"{run.state(BUCKET)['arn']}/{key}"]}
    assert not [s for s in statements.values()
                if "*" in s.get("resources", []) or any("*" in a for a in s["actions"])]


def test_imdsv2_is_required_with_a_hop_for_the_container():
    options = run_program(preset="aws-g5").one(INSTANCE).inputs["metadataOptions"]
    assert options["httpTokens"] == "required"
    assert options["httpPutResponseHopLimit"] == 2
    assert options["httpEndpoint"] == "enabled"


@pytest.mark.parametrize("disk", [None, "60", "500"])
def test_root_volume_is_encrypted_gp3_and_the_amis_own_size_unless_set(disk):
    run = run_program({"diskGb": disk} if disk else {})
    root = run.one(INSTANCE).inputs["rootBlockDevice"]
    assert root["encrypted"] is True and root["volumeType"] == "gp3" and root["deleteOnTermination"] is True
    # The OS only: unset leaves the AMI's snapshot size, which can never be too small to launch.
    assert root.get("volumeSize") == (int(disk) if disk else None)


def test_the_root_volume_is_tagged_in_runinstances_and_the_data_volume_alike():
    """volume_tags go into RunInstances as a TagSpecification, which EC2 authorizes as tagging on creation (CI's review
    role may not tag volumes otherwise); root_block_device.tags would be a CreateTags call after launch. The provider
    reads volume_tags back from every attached volume, so the data volume's tags must be exactly the same."""
    run = run_program({"ttl": "2030-01-31T18:00:00Z"}, stack="pr-42")
    instance = run.one(INSTANCE).inputs
    assert "tags" not in instance["rootBlockDevice"]
    assert instance["volumeTags"] == instance["tags"]
    assert instance["volumeTags"]["sdxl-endpoint:stack"] == "pr-42"
    assert instance["volumeTags"]["sdxl-endpoint:ttl"] == "2030-01-31T18:00:00Z"
    assert run.one(VOLUME).inputs["tags"] == instance["volumeTags"]


def test_guest_shutdown_stops_and_on_demand_by_default():
    instance = run_program(preset="aws-g5").one(INSTANCE).inputs
    assert instance["instanceInitiatedShutdownBehavior"] == "stop"
    # A changed bootstrap must reach the machine: cloud-init applies it once per instance.
    assert instance["userDataReplaceOnChange"] is True
    assert "instanceMarketOptions" not in instance


def test_spot_interruption_stops_so_the_disk_survives():
    options = run_program({"spot": "true"}).one(INSTANCE).inputs["instanceMarketOptions"]
    assert options["marketType"] == "spot"
    assert options["spotOptions"] == {"instanceInterruptionBehavior": "stop", "spotInstanceType": "persistent"}


def test_elastic_ip_is_allocated_and_attached():
    run = run_program(preset="aws-g5")
    assert run.one("aws:ec2/eip:Eip").inputs["domain"] == "vpc"
    association = run.one("aws:ec2/eipAssociation:EipAssociation").inputs
    assert association["instanceId"] == "i-0123456789abcdef0"


def test_tags_name_stack_project_and_ttl():
    run = run_program({"ttl": "2030-01-31T18:00:00Z"}, stack="pr-42")
    for typ in (INSTANCE, "aws:ec2/vpc:Vpc", SECURITY_GROUP, "aws:ec2/eip:Eip"):
        tags = run.one(typ).inputs["tags"]
        assert tags["sdxl-endpoint:stack"] == "pr-42"
        assert tags["sdxl-endpoint:project"] == "sdxl-endpoint"
        assert tags["sdxl-endpoint:ttl"] == "2030-01-31T18:00:00Z"
    assert "sdxl-endpoint:ttl" not in run_program({}).one(INSTANCE).inputs["tags"]


def test_generated_token_is_secret_in_outputs_and_its_parameter_and_nowhere_plain():
    run = run_program(preset="aws-g5")
    token = run.value(run.outputs["apiToken"])
    assert run.is_secret(run.outputs["apiToken"])
    assert len(token) == 48
    (parameter,) = [p.inputs for p in run.of_type(PARAMETER)]
    assert (parameter["name"], parameter["type"]) == ("/sdxl-endpoint/aws-g5/api-token", "SecureString")
    assert secret_value(parameter["value"]) == token and parameter["keyId"] == KEY_ARN
    assert token not in aws_document(run) and "/sdxl-endpoint/aws-g5/api-token" in aws_document(run)
    # Only the token is secret; the rest of the outputs stay readable, and none contains it.
    for name, output in run.outputs.items():
        if name != "apiToken":
            assert token not in str(run.value(output)), name
    assert_nowhere_plain(run, token)


def test_configured_tokens_are_used_and_stay_secret():
    run = run_program({"apiToken": "configured-token-0123456789", "hfToken": "hf_abcdefghijklmnop"}, stack="dev")
    assert not run.of_type("random:index/randomPassword:RandomPassword")
    assert run.value(run.outputs["apiToken"]) == "configured-token-0123456789"
    assert run.is_secret(run.outputs["apiToken"])
    parameters = {p.inputs["name"]: p.inputs for p in run.of_type(PARAMETER)}
    assert set(parameters) == {"/sdxl-endpoint/dev/api-token", "/sdxl-endpoint/dev/hf-token"}
    assert secret_value(parameters["/sdxl-endpoint/dev/hf-token"]["value"]) == "hf_abcdefghijklmnop"
    document = aws_document(run)
    assert "SDXL_API_TOKEN=/sdxl-endpoint/dev/api-token HF_TOKEN=/sdxl-endpoint/dev/hf-token" in document
    for token in ("configured-token-0123456789", "hf_abcdefghijklmnop"):
        assert token not in document and token not in run.value(run.outputs["curlExample"])
        assert_nowhere_plain(run, token)
    statements = {s["sid"]: s for s in role_policy(run)}
    assert sorted(statements["ReadItsTokens"]["resources"]) == [
        f"arn:aws:ssm:us-east-1:{FAKE_ACCOUNT}:parameter/sdxl-endpoint/dev/{n}" for n in ("api-token", "hf-token")]


def test_user_data_is_under_the_16_kb_limit():
    run = run_program({
        "apiToken": "t" * 64, "hfToken": "hf_" + "x" * 40,
        "corsOrigins": [f"https://app{i}.example.com" for i in range(20)],
    })
    packed = base64.b64decode(run.one(INSTANCE).inputs["userDataBase64"])
    assert len(packed) < USER_DATA_LIMIT_BYTES == 16 * 1024


def test_every_resource_is_a_descendant_of_the_component():
    run = run_program({"spot": "true"})
    assert len(run.monitor.get_registered_resources()) >= 14
    assert run.orphans("sdxl-endpoint:aws:GpuEndpoint") == []


def test_region_comes_from_config_and_drives_the_provider():
    run = run_program({"aws:region": "us-west-2", "instanceType": "g5.xlarge"})
    assert run.one("pulumi:providers:aws").inputs["region"] == "us-west-2"
    assert run.value(run.outputs["availabilityZone"]).startswith("us-west-2")
    assert all(r.provider and "providers:aws" in r.provider for r in run.mocks.resources
               if r.typ.startswith("aws:"))


# --- the source bundle, its bucket and the data disk --------------------------------------------------------------

def test_the_source_bucket_is_private_encrypted_owner_enforced_and_destroy_empties_it():
    run = run_program(preset="aws-g5")
    bucket = run.one(BUCKET)
    assert bucket.inputs["forceDestroy"] is True  # `pulumi destroy` removes it with its contents
    block = run.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
    assert block == {"bucket": AWS_G5_BUCKET, "blockPublicAcls": True, "blockPublicPolicy": True,
                     "ignorePublicAcls": True, "restrictPublicBuckets": True}
    owner = run.one("aws:s3/bucketOwnershipControls:BucketOwnershipControls").inputs
    assert owner["rule"] == {"objectOwnership": "BucketOwnerEnforced"}  # no ACL can share an object
    encryption = run.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert encryption.inputs["rules"] == [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]
    assert not run.of_type("aws:s3/bucketPolicy:BucketPolicy") and not run.of_type("aws:s3/bucketAcl:BucketAcl")


# What S3 accepts (its bucket naming rules, without dots, which these names never use): 3 to 63 characters.
S3_BUCKET_NAME = r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"


@pytest.mark.parametrize("stack, expected", [
    ("pr-42", "sdxl-src-pr-42-1a2b3c4"),  # ci/bootstrap/aws-oidc.sh confines the review role to sdxl-src-pr-*
    ("pr-1234567890", "sdxl-src-pr-1234567890-1a2b3c4"),  # the longest pr-<n> CI makes: never cut
    ("aws-g5", AWS_G5_BUCKET),
    ("PR-42", "sdxl-src-b6788e-pr-42-1a2b3c4"),  # not a pr-* stack to IAM (its tag is PR-42): out of review's reach
    ("pr_42", "sdxl-src-2f13b9-pr-42-1a2b3c4"),
    ("Production.EU-West_" + "x" * 70, None),  # the longest names still fit, with their hash
])
def test_the_source_bucket_is_named_for_its_stack_within_s3s_limit(stack, expected):
    run = run_program({}, stack=stack)
    name = run.state(BUCKET)["bucket"]
    assert re.match(S3_BUCKET_NAME, name) and name.startswith("sdxl-src-"), name
    assert name == (expected or name)
    assert name.startswith("sdxl-src-pr-") == stack.startswith("pr-")
    assert f"sdxl-boot build aws us-east-1 {name} bundles/" in aws_document(run)
    if expected is None:
        assert len(name) == 63 and aws.source_bucket_name(stack) != aws.source_bucket_name(stack + "y")


def test_the_uploaded_bundle_is_this_checkouts_source_and_the_instance_checks_the_same_hash():
    run = run_program(preset="aws-g5")
    uploaded = run.one(OBJECT).inputs
    path = uploaded["source"].path  # a FileAsset, as the engine gets it
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert digest == bundle.build().sha256  # content-addressed: the same checkout, the same object
    assert uploaded["key"] == f"bundles/{digest}.tar" and uploaded["bucket"] == AWS_G5_BUCKET
    assert f"sdxl-boot build aws us-east-1 {AWS_G5_BUCKET} bundles/{digest}.tar {digest}" in (
        aws_document(run))
    assert run.options(OBJECT)["dependencies"]  # uploaded once the bucket's protections exist
    # The instance boots only once the bundle it downloads is there, and its role may read it.
    assert {run.urn(OBJECT), run.urn("aws:iam/rolePolicy:RolePolicy")} <= set(run.options(INSTANCE)["dependencies"])


def test_a_configured_image_is_pulled_and_needs_no_bucket():
    run = run_program({"image": "ghcr.io/me/sdxl-endpoint-server:1.0.0"})
    assert not run.of_type(BUCKET) and not run.of_type(OBJECT)
    assert "sdxl-boot pull-server ghcr.io/me/sdxl-endpoint-server:1.0.0 aws" in aws_document(run)
    assert {s["sid"] for s in role_policy(run)} == {"ReadItsTokens", "NoOtherParameters", "DecryptThemThroughSsm"}


def test_an_ecr_image_of_the_account_is_pulled_with_rights_on_that_repository_only():
    image = f"{FAKE_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/team/sdxl-endpoint-server:1.0.0"
    statements = {s["sid"]: s for s in role_policy(run_program({"image": image}))}
    assert statements["PullTheImage"]["resources"] == [
        f"arn:aws:ecr:us-east-1:{FAKE_ACCOUNT}:repository/team/sdxl-endpoint-server"]
    assert sorted(statements["PullTheImage"]["actions"]) == [
        "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    # The login token has no narrower resource; alone it grants no image.
    assert statements["EcrLogin"] == {"sid": "EcrLogin", "actions": ["ecr:GetAuthorizationToken"], "resources": ["*"]}
    assert aws.ecr_repository_arn("ghcr.io/o/server:1") is None
    assert aws.ecr_repository_arn(f"{FAKE_ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/x@sha256:{'a' * 64}") == (
        f"arn:aws:ecr:eu-west-1:{FAKE_ACCOUNT}:repository/x")


def test_the_token_key_rotates_and_parameters_can_be_replaced():
    run = run_program(preset="aws-g5")
    key = run.one(KEY).inputs
    assert key["enableKeyRotation"] is True and key["deletionWindowInDays"] == 7
    assert "policy" not in key  # the account's default: IAM decides, and only the instance role is granted
    assert run.options(PARAMETER)["delete_before_replace"] is True  # a fixed name cannot exist twice


@pytest.mark.parametrize("size", [None, "250"])
def test_the_data_disk_is_its_own_encrypted_volume_in_the_instances_zone(size):
    run = run_program({"dataDiskGb": size} if size else {})
    volume = run.one(VOLUME).inputs
    assert volume["encrypted"] is True and volume["type"] == "gp3"
    assert volume["size"] == int(size or config.DEFAULT_DATA_DISK_GB)
    assert volume["availabilityZone"] == run.one("aws:ec2/subnet:Subnet").inputs["availabilityZone"]
    assert run.options(VOLUME)["retain_on_delete"] is False  # `pulumi destroy` deletes it
    attachment = run.one(ATTACHMENT).inputs
    assert attachment == {"deviceName": aws.DATA_DEVICE, "volumeId": FAKE_VOLUME, "instanceId": "i-0123456789abcdef0",
                          "stopInstanceBeforeDetaching": True}
    # On replacement the volume moves: detach from the old instance, then attach to the new one.
    assert run.options(ATTACHMENT)["delete_before_replace"] is True
    assert f"sdxl-boot data-disk {' '.join(aws.data_devices(FAKE_VOLUME))}" in aws_document(run)
    assert aws.data_devices(FAKE_VOLUME)[0] == "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"


def test_a_changed_bootstrap_replaces_the_instance_but_not_the_data_disk():
    before = run_program(preset="aws-g5")
    after = run_program({"model": "some-org/another-sdxl", "corsOrigins": ["https://app.example.com"]},
                        preset="aws-g5")
    assert aws_document(before) != aws_document(after)
    assert after.one(INSTANCE).inputs["userDataReplaceOnChange"] is True  # the instance is replaced...
    # ...old one first, so a replacement never holds two GPU instances (or twice the vCPU quota) at once; the
    # volume attachment and the address association depend on it, so they are released before it goes.
    assert after.options(INSTANCE)["delete_before_replace"] is True
    assert after.options(ATTACHMENT)["delete_before_replace"] is True
    assert after.options("aws:ec2/eipAssociation:EipAssociation")["delete_before_replace"] is True
    assert before.one(VOLUME).inputs == after.one(VOLUME).inputs  # ...its data disk sees no change at all
    assert before.options(VOLUME) == after.options(VOLUME)
    assert not after.options(VOLUME)["replace_on_changes"] and not after.options(VOLUME)["delete_before_replace"]
    assert bootstrap.DATA_DIR in aws_document(after)


# --- CI review stacks: the instance role under the review role's permissions boundary -----------------

REVIEW_BOUNDARY = f"arn:aws:iam::{FAKE_ACCOUNT}:policy/gha-sdxl-endpoint-review-boundary"


def test_permissions_boundary_is_set_on_the_instance_role():
    # ci/bootstrap/aws-oidc.sh lets the review role create a role only with exactly this boundary
    role = run_program({"permissionsBoundary": REVIEW_BOUNDARY}, stack="pr-42").one("aws:iam/role:Role")
    assert role.inputs["permissionsBoundary"] == REVIEW_BOUNDARY


def test_no_permissions_boundary_unless_configured():
    role = run_program(preset="aws-g5").one("aws:iam/role:Role")
    assert not role.inputs.get("permissionsBoundary")


@pytest.mark.parametrize("config_values, said", [
    ({"permissionsBoundary": "gha-sdxl-endpoint-review-boundary"}, "must be an IAM policy ARN"),
    ({"permissionsBoundary": f"arn:aws:iam::{FAKE_ACCOUNT}:role/sdxl-role-x"}, "must be an IAM policy ARN"),
    ({"cloud": "gcp", "gcp:project": "my-project-123", "permissionsBoundary": REVIEW_BOUNDARY},
     "applies to cloud aws"),
])
def test_bad_permissions_boundary_fails_at_preview_naming_the_key(config_values, said):
    with pytest.raises(config.ConfigError, match=said) as refused:
        run_program(config_values, preview=True)
    assert "permissionsBoundary" in str(refused.value)
