"""The GCP component, evaluated through the real `__main__.py` under Pulumi mocks."""

import hashlib
import ipaddress
import re
from datetime import UTC, datetime

import pytest
import yaml

from stacks import bootstrap, bundle, catalog, config, contract, gcp
from tests.stacks.conftest import (
    FAKE_GCP_ADDRESS,
    FAKE_GCP_PROJECT,
    ROOT,
    is_rpc_secret,
    plain_strings,
    run_program,
    unwrap_rpc_secret,
)

GCP_PRESETS = sorted(p.name.split(".")[1] for p in (ROOT / "stacks").glob("Pulumi.gcp-*.yaml")
                     if not p.name.endswith("-fleet.yaml"))  # fleets: test_gcp_fleet.py
PROJECT = {"gcp:project": "my-project-123"}
COMPONENT = "sdxl-endpoint:gcp:GpuEndpoint"
INSTANCE = "gcp:compute/instance:Instance"
FIREWALL = "gcp:compute/firewall:Firewall"
BUCKET = "gcp:storage/bucket:Bucket"
OBJECT = "gcp:storage/bucketObject:BucketObject"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
DISK = "gcp:compute/disk:Disk"
IAP = "35.235.240.0/20"
GCP_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
# Compute Engine metadata limits: 256 KB per value, 512 KB for all entries together.
METADATA_VALUE_LIMIT = 256 * 1024
METADATA_TOTAL_LIMIT = 512 * 1024


def gcp_run(settings=None, **kwargs):
    return run_program({"cloud": "gcp", **PROJECT, **(settings or {})}, **kwargs)


def metadata(run) -> dict[str, str]:
    """The instance metadata: plain, since it names where the tokens live and carries none."""
    raw = run.one(INSTANCE).inputs["metadata"]
    return unwrap_rpc_secret(raw) if is_rpc_secret(raw) else raw


def opens_port(rule: dict, port: int) -> bool:
    for allow in rule.get("allows", []):
        if allow["protocol"] in ("tcp", "all") and not allow.get("ports"):
            return True  # no ports listed means every port
        for spec in allow.get("ports", []):
            low, _, high = spec.partition("-")
            if int(low) <= port <= int(high or low):
                return True
    return False


def test_the_two_presets_exist():
    assert GCP_PRESETS == ["gcp-l4", "gcp-t4"]


@pytest.mark.parametrize("preset, machine_type, accelerators, gpu", [
    ("gcp-t4", "n1-standard-4", [{"type": "nvidia-tesla-t4", "count": 1}], "T4"),
    ("gcp-l4", "g2-standard-4", None, "L4"),
])
def test_each_preset_yields_its_machine_gpu_and_zone(preset, machine_type, accelerators, gpu):
    run = run_program(PROJECT, preset=preset)
    instance = run.one(INSTANCE).inputs
    assert instance["machineType"] == machine_type
    assert instance.get("guestAccelerators") == accelerators
    assert instance["zone"] == "us-central1-a"
    outputs = {k: run.value(v) for k, v in run.outputs.items()}
    offer = catalog.GCP_OFFERS[machine_type]
    assert outputs["instanceType"] == machine_type and outputs["gpu"] == gpu
    assert outputs["gpuMemoryGb"] == offer.gpu.memory_gb >= catalog.SDXL_MIN_GPU_MEMORY_GB
    assert outputs["hourlyCostUsd"] == offer.usd_per_hour
    assert (outputs["region"], outputs["availabilityZone"]) == ("us-central1", "us-central1-a")
    assert outputs["endpoint"] == f"https://{FAKE_GCP_ADDRESS}"
    provider = run.one("pulumi:providers:gcp").inputs
    assert (provider["project"], provider["region"], provider["zone"]) == (
        "my-project-123", "us-central1", "us-central1-a")


@pytest.mark.parametrize("preset", GCP_PRESETS)
def test_presets_leave_the_project_to_the_user_and_say_how_to_set_it(preset):
    document = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{preset}.yaml").read_text())
    assert "gcp:project" not in document["config"]
    with pytest.raises(config.ConfigError, match=r"gcp:project: required.*\n.*fix: pulumi config set gcp:project"):
        run_program(preset=preset, preview=True)


def test_gpu_alone_resolves_to_the_cheapest_gcp_shape():
    assert gcp_run().one(INSTANCE).inputs["machineType"] == "n1-standard-4"  # the GCP default GPU is t4
    l4 = gcp_run({"gpu": "l4"}).one(INSTANCE).inputs
    assert l4["machineType"] == "g2-standard-4" and "guestAccelerators" not in l4


@pytest.mark.parametrize("settings, reason, fix", [
    ({"gpu": "t4", "machineType": "n2-standard-4"}, "the T4 attaches only to N1", "machineType n1-standard-4"),
    ({"gpu": "t4", "machineType": "e2-standard-4"}, "the T4 attaches only to N1", "machineType n1-standard-4"),
    ({"gpu": "t4", "machineType": "c2-standard-8"}, "the T4 attaches only to N1", "machineType n1-standard-8"),
    ({"gpu": "t4", "machineType": "a2-highgpu-1g"}, "the T4 attaches only to N1", "machineType "),
    ({"gpu": "t4", "machineType": "g2-standard-4"}, "extra guest accelerator (t4)", "pulumi config rm gpu"),
    ({"gpu": "a100", "machineType": "g2-standard-8"}, "extra guest accelerator (a100)", "pulumi config rm gpu"),
    ({"machineType": "e2-standard-4"}, "it has no GPU", "machineType n1-standard-4"),
    ({"machineType": "n2-standard-8"}, "it has no GPU", "machineType n1-standard-8"),
    ({"machineType": "c3-standard-4"}, "it has no GPU", "machineType n1-standard-4"),
])
def test_placement_refusals_name_the_nearest_types_and_prices(settings, reason, fix):
    with pytest.raises(config.ConfigError) as refused:
        gcp_run(settings, preview=True)
    message = str(refused.value)
    assert f"machineType '{settings['machineType']}' cannot run SDXL: " in message and reason in message
    alternatives = [line.strip() for line in message.splitlines() if line.strip().startswith("- ")][1:]
    assert 2 <= len(alternatives) <= 3
    for line in alternatives:
        name = line.split()[1]
        assert name in catalog.GCP_OFFERS and f"~${catalog.GCP_OFFERS[name].usd_per_hour:.2f}/h" in line
    assert f"fix: {fix}" in message or f"fix: pulumi config set {fix}" in message


@pytest.mark.parametrize("settings, zone_hint", [
    ({"gpu": "l4", "gcp:zone": "europe-west1-d"}, "europe-west1-b"),
    ({"gpu": "t4", "gcp:zone": "us-central1-z"}, "us-central1-a"),
])
def test_zone_must_offer_the_gpu(settings, zone_hint):
    with pytest.raises(config.ConfigError, match=f"fix: pulumi config set gcp:zone {zone_hint}"):
        gcp_run(settings, preview=True)


def test_zone_from_config_drives_region_provider_and_resources():
    run = gcp_run({"gpu": "l4", "gcp:zone": "us-east4-c"})
    assert run.one("pulumi:providers:gcp").inputs["zone"] == "us-east4-c"
    assert run.one("pulumi:providers:gcp").inputs["region"] == "us-east4"
    assert run.one(INSTANCE).inputs["zone"] == "us-east4-c"
    assert run.one("gcp:compute/address:Address").inputs["region"] == "us-east4"
    assert run.one("gcp:compute/subnetwork:Subnetwork").inputs["region"] == "us-east4"
    assert run.value(run.outputs["availabilityZone"]) == "us-east4-c"
    assert all(r.provider and "providers:gcp" in r.provider for r in run.mocks.resources if r.typ.startswith("gcp:"))


@pytest.mark.parametrize("preset", GCP_PRESETS)
@pytest.mark.parametrize("spot", ["false", "true"])
def test_host_maintenance_always_terminates(preset, spot):
    scheduling = run_program({**PROJECT, "spot": spot}, preset=preset).one(INSTANCE).inputs["scheduling"]
    assert scheduling["onHostMaintenance"] == "TERMINATE"
    if spot == "true":
        # What GCP demands of a SPOT VM, and a stop (not a delete) on preemption.
        assert scheduling["provisioningModel"] == "SPOT" and scheduling["preemptible"] is True
        assert scheduling["automaticRestart"] is False
        assert scheduling["instanceTerminationAction"] == "STOP"
    else:
        assert scheduling["provisioningModel"] == "STANDARD" and scheduling["automaticRestart"] is True
        assert "preemptible" not in scheduling and "instanceTerminationAction" not in scheduling


@pytest.mark.parametrize("ssh", ["false", "true"])
@pytest.mark.parametrize("cidrs", [None, ["0.0.0.0/0"], ["203.0.113.0/24", "198.51.100.7/32"],
                                   ["0.0.0.0/0", "2001:db8::/32"]])
def test_no_port_22_from_the_internet_in_any_configuration(ssh, cidrs):
    run = gcp_run({"ssh": ssh, **({"allowedCidrs": cidrs} if cidrs else {})})
    rules = [r.inputs for r in run.of_type(FIREWALL)]
    assert all(rule["direction"] == "INGRESS" for rule in rules)
    for rule in rules:
        if opens_port(rule, 22):
            assert rule["sourceRanges"] == [IAP]
        assert "0.0.0.0/0" not in rule["sourceRanges"] or not opens_port(rule, 22)
    api = [rule for rule in rules if opens_port(rule, 443)]
    assert len(api) == 1 and [a["ports"] for a in api[0]["allows"]] == [["443"]]
    expected = [c for c in (cidrs or ["0.0.0.0/0"]) if ipaddress.ip_network(c).version == 4]
    assert api[0]["sourceRanges"] == expected
    # Port 80 only redirects and answers ACME challenges, so Let's Encrypt must always reach it.
    redirect = [rule for rule in rules if opens_port(rule, 80)]
    assert len(redirect) == 1 and [a["ports"] for a in redirect[0]["allows"]] == [["80"]]
    assert redirect[0]["sourceRanges"] == ["0.0.0.0/0"]
    # Every rule targets the endpoint's VM only.
    tags = run.one(INSTANCE).inputs["tags"]
    assert all(rule["targetTags"] == tags for rule in rules)


def test_ssh_on_opens_22_to_iap_only_and_shell_tunnels_through_it():
    run = gcp_run({"ssh": "true"}, stack="dev")
    ssh_rules = [r.inputs for r in run.of_type(FIREWALL) if opens_port(r.inputs, 22)]
    assert len(ssh_rules) == 1
    assert ssh_rules[0]["sourceRanges"] == [IAP] and ssh_rules[0]["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    assert run.value(run.outputs["shell"]) == (
        "gcloud compute ssh sdxl-dev-vm --tunnel-through-iap --zone us-central1-a --project my-project-123")
    assert metadata(run)["enable-oslogin"] == "TRUE" and metadata(run)["block-project-ssh-keys"] == "TRUE"


def test_ssh_off_opens_no_22_and_shell_points_at_the_serial_log():
    run = gcp_run(stack="dev")
    assert not [r for r in run.of_type(FIREWALL) if opens_port(r.inputs, 22)]
    shell = run.value(run.outputs["shell"])
    assert shell.startswith("gcloud compute instances get-serial-port-output sdxl-dev-vm "
                            "--zone us-central1-a --project my-project-123")
    assert "ssh true" in shell


def test_ipv6_only_cidrs_are_refused_with_a_fix():
    with pytest.raises(config.ConfigError, match=r"IPv4 address only.*\n.*fix: pulumi config set --path"):
        gcp_run({"allowedCidrs": ["2001:db8::/32"]})


def test_own_network_with_no_auto_subnets():
    run = gcp_run()
    network = run.one("gcp:compute/network:Network").inputs
    assert network["autoCreateSubnetworks"] is False
    subnet = run.one("gcp:compute/subnetwork:Subnetwork").inputs
    assert subnet["ipCidrRange"] == gcp.SUBNET_CIDR and subnet["network"] == "sdxl-net-id"
    assert run.one(INSTANCE).inputs["networkInterfaces"][0]["subnetwork"] == "sdxl-subnet-id"


def test_static_ip_is_reserved_before_the_instance_and_attached():
    run = gcp_run()
    types = [r.typ for r in run.mocks.resources]
    assert types.index("gcp:compute/address:Address") < types.index(INSTANCE)
    address = run.one("gcp:compute/address:Address").inputs
    assert address["addressType"] == "EXTERNAL"
    access = run.one(INSTANCE).inputs["networkInterfaces"][0]["accessConfigs"]
    assert access == [{"natIp": FAKE_GCP_ADDRESS, "networkTier": "PREMIUM"}]


def test_service_account_reads_only_its_tokens_and_its_bundle():
    run = gcp_run(stack="dev")
    account = run.one("gcp:serviceaccount/account:Account").inputs
    member = f"serviceAccount:{account['accountId']}@sdxl-test-project.iam.gserviceaccount.com"
    grants = [r.inputs for r in run.of_type("gcp:projects/iAMMember:IAMMember")]
    assert sorted(g["role"] for g in grants) == ["roles/logging.logWriter", "roles/monitoring.metricWriter"]
    assert all(g["member"] == member and g["project"] == "my-project-123" for g in grants)
    # Everything else on one resource each: its token secret...
    (reader,) = [r.inputs for r in run.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")]
    assert reader == {"secretId": f"projects/{FAKE_GCP_PROJECT}/secrets/sdxl-dev-api-token",
                      "role": "roles/secretmanager.secretAccessor", "member": member}
    # ...and its one source bundle object, by an IAM condition on the object's name.
    (bucket_reader,) = [r.inputs for r in run.of_type(BUCKET_MEMBER)]
    bucket, key = run.one(BUCKET).inputs["name"], run.one(OBJECT).inputs["name"]
    assert (bucket_reader["bucket"], bucket_reader["role"], bucket_reader["member"]) == (
        bucket, "roles/storage.objectViewer", member)
    assert bucket_reader["condition"]["expression"] == f'resource.name == "projects/_/buckets/{bucket}/objects/{key}"'
    assert not [r for r in run.mocks.resources if "IAMBinding" in r.typ or "IAMPolicy" in r.typ]
    service_account = run.one(INSTANCE).inputs["serviceAccount"]
    assert service_account["email"] == member.split(":", 1)[1]
    # Secret Manager takes only the cloud-platform scope; IAM above is the limit.
    assert service_account["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]


@pytest.mark.parametrize("disk", [None, "60", "500"])
def test_boot_disk_is_a_dlvm_image_on_pd_balanced_at_its_own_size_unless_set(disk):
    run = gcp_run({"diskGb": disk} if disk else {})
    params = run.one(INSTANCE).inputs["bootDisk"]["initializeParams"]
    assert params["type"] == "pd-balanced" and params.get("size") == (int(disk) if disk else None)
    (lookup,) = [c.args for c in run.mocks.calls if c.token == "gcp:compute/getImage:getImage"]
    assert lookup == {"family": catalog.GCP_DLVM_IMAGE_FAMILY, "project": "deeplearning-platform-release"}
    assert params["image"].endswith(f"/projects/deeplearning-platform-release/global/images/"
                                    f"{catalog.GCP_DLVM_IMAGE_FAMILY}-v20260801")


def test_the_dlvm_familys_driver_runs_the_images_cuda():
    # The family names its driver branch; the image's CUDA major needs at least the catalog's minimum.
    driver = int(re.fullmatch(r"common-cu\d+-ubuntu-\d{4}-nvidia-(\d+)", catalog.GCP_DLVM_IMAGE_FAMILY).group(1))
    cuda_major = int(bundle.image_cuda_version().split(".")[0])
    assert driver >= catalog.MIN_DRIVER_FOR_CUDA[cuda_major]


def test_driver_metadata_and_shielded_vm():
    run = gcp_run()
    assert metadata(run)["install-nvidia-driver"] == "True"
    shielded = run.one(INSTANCE).inputs["shieldedInstanceConfig"]
    assert shielded == {"enableVtpm": True, "enableIntegrityMonitoring": True, "enableSecureBoot": False}


def test_labels_carry_stack_project_and_a_valid_ttl():
    run = gcp_run({"ttl": "2030-01-31T19:30:00+01:00"}, stack="PR-42_feature")
    labels = run.one(INSTANCE).inputs["labels"]
    assert labels == {"sdxl-endpoint-stack": "pr-42_feature", "sdxl-endpoint-project": "sdxl-endpoint",
                      "sdxl-endpoint-ttl": "2030-01-31t18-30-00z"}
    assert all(LABEL_RE.match(v) and re.match(r"^[a-z][a-z0-9_-]{0,62}$", k) for k, v in labels.items())
    expiry = datetime.strptime(labels["sdxl-endpoint-ttl"], catalog.GCP_TTL_LABEL_FORMAT).replace(tzinfo=UTC)
    assert expiry == datetime.fromisoformat("2030-01-31T19:30:00+01:00")
    assert run.one("gcp:compute/address:Address").inputs["labels"] == labels
    assert run.one(INSTANCE).inputs["bootDisk"]["initializeParams"]["labels"] == labels
    assert "sdxl-endpoint-ttl" not in gcp_run().one(INSTANCE).inputs["labels"]


@pytest.mark.parametrize("stack", ["dev", "Feature_Branch.v2", "pr-1234-" + "very-long-branch-name-" * 4])
def test_resource_names_are_valid_gcp_names(stack):
    run = gcp_run({"ssh": "true"}, stack=stack)
    names = [r.inputs["name"] for r in run.mocks.resources if r.typ.startswith(("gcp:compute/", "gcp:storage/bucket:"))
             and "name" in r.inputs]
    assert len(names) == 9 and len(set(names)) == 9
    assert all(GCP_NAME_RE.match(n) and len(n) <= 63 for n in names), names
    assert not [n for n in names if "google" in n or n.startswith("goog")]  # refused in bucket names
    account_id = run.one("gcp:serviceaccount/account:Account").inputs["accountId"]
    assert GCP_NAME_RE.match(account_id) and 6 <= len(account_id) <= 30
    secret_id = run.one("gcp:secretmanager/secret:Secret").inputs["secretId"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,255}", secret_id)


def test_stacks_differing_only_in_case_or_punctuation_get_different_names():
    names = {gcp.resource_name(s, "vm") for s in ("dev", "Dev", "dev.", "d-ev", "d_ev")}
    assert len(names) == 5
    assert gcp.resource_name("dev", "vm") == "sdxl-dev-vm"


def test_generated_token_is_secret_in_outputs_and_its_secret_and_nowhere_plain():
    run = gcp_run({"ssh": "true", "spot": "true"}, stack="dev")
    token = run.value(run.outputs["apiToken"])
    assert run.is_secret(run.outputs["apiToken"]) and len(token) == 48
    (secret,) = [r.inputs for r in run.of_type("gcp:secretmanager/secret:Secret")]
    assert secret["secretId"] == "sdxl-dev-api-token" and secret["replication"] == {"auto": {}}
    (version,) = [r.inputs for r in run.of_type("gcp:secretmanager/secretVersion:SecretVersion")]
    assert is_rpc_secret(version["secretData"]) and unwrap_rpc_secret(version["secretData"]) == token
    user_data = metadata(run)["user-data"]
    assert token not in user_data and "gcp my-project-123 SDXL_API_TOKEN=sdxl-dev-api-token" in user_data
    for name, output in run.outputs.items():
        if name != "apiToken":
            assert token not in str(run.value(output)), name
    for resource in run.mocks.resources:
        if resource.typ != "random:index/randomPassword:RandomPassword":
            assert not [s for s in plain_strings(resource.inputs) if token in s], resource.typ


def test_configured_tokens_stay_secret():
    run = gcp_run({"apiToken": "configured-token-0123456789", "hfToken": "hf_abcdefghijklmnop"}, stack="dev")
    assert not run.of_type("random:index/randomPassword:RandomPassword")
    assert run.value(run.outputs["apiToken"]) == "configured-token-0123456789"
    assert run.is_secret(run.outputs["apiToken"])
    versions = [unwrap_rpc_secret(r.inputs["secretData"])
                for r in run.of_type("gcp:secretmanager/secretVersion:SecretVersion")]
    assert sorted(versions) == ["configured-token-0123456789", "hf_abcdefghijklmnop"]
    user_data = metadata(run)["user-data"]
    assert "SDXL_API_TOKEN=sdxl-dev-api-token HF_TOKEN=sdxl-dev-hf-token" in user_data
    for resource in run.mocks.resources:
        plain = " ".join(plain_strings(resource.inputs))
        assert "configured-token" not in plain and "hf_abcdefghijklmnop" not in plain, resource.typ


def test_metadata_stays_within_gcp_limits():
    run = gcp_run({
        "apiToken": "t" * 64, "hfToken": "hf_" + "x" * 40, "ssh": "true",
        "corsOrigins": [f"https://app{i}.example.com" for i in range(50)],
    })
    entries = metadata(run)
    assert entries["user-data"].startswith("#cloud-config\n")
    sizes = {key: len(key.encode()) + len(value.encode()) for key, value in entries.items()}
    assert max(len(value.encode()) for value in entries.values()) <= METADATA_VALUE_LIMIT
    assert sum(sizes.values()) <= METADATA_TOTAL_LIMIT


def test_every_resource_is_a_descendant_of_the_component():
    run = gcp_run({"ssh": "true", "spot": "true"})
    assert len(run.monitor.get_registered_resources()) >= 12
    assert run.orphans(COMPONENT) == []


def test_outputs_are_the_same_names_as_aws():
    gcp_outputs = tuple(gcp_run().outputs)
    aws_outputs = tuple(run_program({}).outputs)
    assert gcp_outputs == aws_outputs == contract.OUTPUT_NAMES



# --- the source bundle, its bucket and the data disk --------------------------------------------------------------

def test_the_source_bucket_is_private_and_destroy_empties_it():
    bucket = gcp_run(stack="dev").one(BUCKET).inputs
    assert bucket["uniformBucketLevelAccess"] is True  # IAM only, no object ACLs
    assert bucket["publicAccessPrevention"] == "enforced"
    assert bucket["forceDestroy"] is True and bucket["location"] == "us-central1"
    # Bucket names are global: the project id makes it this project's.
    assert bucket["name"] == gcp.resource_name("my-project-123-dev", "source")


def test_the_uploaded_bundle_is_this_checkouts_source_and_the_vm_checks_the_same_hash():
    run = gcp_run()
    uploaded = run.one(OBJECT).inputs
    digest = hashlib.sha256(open(uploaded["source"].path, "rb").read()).hexdigest()
    assert digest == bundle.build().sha256 and uploaded["name"] == f"bundles/{digest}.tar"
    assert f"sdxl-boot build gcp my-project-123 {uploaded['bucket']} bundles/{digest}.tar {digest}" in (
        metadata(run)["user-data"])
    # The VM boots only once the bundle it downloads is there and its account may read it.
    assert {run.urn(OBJECT), run.urn(BUCKET_MEMBER)} <= set(run.options(INSTANCE)["dependencies"])


def test_an_artifact_registry_image_of_the_project_is_pulled_with_rights_on_that_repository_only():
    image = "us-central1-docker.pkg.dev/my-project-123/images/sdxl-endpoint-server:1.0.0"
    run = gcp_run({"image": image})
    assert not run.of_type(BUCKET) and f"sdxl-boot pull-server {image} gcp" in metadata(run)["user-data"]
    (grant,) = [r.inputs for r in run.of_type("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")]
    assert (grant["project"], grant["location"], grant["repository"], grant["role"]) == (
        "my-project-123", "us-central1", "images", "roles/artifactregistry.reader")
    # Another project's registry grants its own reader; a public registry needs none.
    for other in ("us-central1-docker.pkg.dev/someone-else/images/x:1", "ghcr.io/me/x:1"):
        assert not gcp_run({"image": other}).of_type("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")


@pytest.mark.parametrize("size", [None, "250"])
def test_the_data_disk_is_its_own_disk_attached_under_a_stable_device_name(size):
    run = gcp_run({"dataDiskGb": size} if size else {}, stack="dev")
    disk = run.one(DISK).inputs
    assert (disk["name"], disk["zone"], disk["type"]) == ("sdxl-dev-data", "us-central1-a", "pd-balanced")
    assert disk["size"] == int(size or config.DEFAULT_DATA_DISK_GB)
    assert run.options(DISK)["retain_on_delete"] is False  # `pulumi destroy` deletes it
    attached = run.one(INSTANCE).inputs["attachedDisks"]
    assert attached == [{"source": run.state(DISK)["selfLink"], "deviceName": bootstrap.DATA_DEVICE_NAME,
                         "mode": "READ_WRITE"}]
    assert "sdxl-boot data-disk /dev/disk/by-id/google-sdxl-data" in metadata(run)["user-data"]


def test_a_changed_bootstrap_replaces_the_vm_but_not_the_data_disk():
    before = gcp_run(stack="dev")
    after = gcp_run({"model": "some-org/another-sdxl", "corsOrigins": ["https://app.example.com"]}, stack="dev")
    assert metadata(before)["user-data"] != metadata(after)["user-data"]
    assert after.options(INSTANCE)["replace_on_changes"] == ["metadata"]  # the VM is replaced...
    # ...the old one deleted first (a fixed name, and one GPU's quota), which frees the data disk for the new one.
    assert after.options(INSTANCE)["delete_before_replace"] is True
    assert before.one(DISK).inputs == after.one(DISK).inputs  # ...its data disk sees no change at all
    assert not after.options(DISK)["replace_on_changes"]


# --- CI review stacks: the bootstrap's VM service account instead of one per stack ----------------------

REVIEW_VM_ACCOUNT = "sdxl-review-vm@my-project-123.iam.gserviceaccount.com"


def test_given_service_account_runs_the_vm_and_no_account_or_project_grant_is_created():
    run = gcp_run({"gcpServiceAccount": REVIEW_VM_ACCOUNT}, stack="pr-42")
    assert run.of_type("gcp:serviceaccount/account:Account") == []
    # the project-level log/metric grants are the bootstrap's: a PR stack's destroy must not remove them
    assert run.of_type("gcp:projects/iAMMember:IAMMember") == []
    assert run.one(INSTANCE).inputs["serviceAccount"]["email"] == REVIEW_VM_ACCOUNT
    # its own secrets and source bundle are still granted to it, one by one
    readers = run.of_type("gcp:secretmanager/secretIamMember:SecretIamMember") + run.of_type(BUCKET_MEMBER)
    assert readers and all(r.inputs["member"] == f"serviceAccount:{REVIEW_VM_ACCOUNT}" for r in readers)


def test_without_the_key_the_stack_creates_its_own_account():
    run = gcp_run()
    (account,) = run.of_type("gcp:serviceaccount/account:Account")
    assert len(run.of_type("gcp:projects/iAMMember:IAMMember")) == len(gcp.SERVICE_ACCOUNT_ROLES)


@pytest.mark.parametrize("config_values, said", [
    ({"gcpServiceAccount": "sdxl-review-vm"}, "must be a service account email"),
    ({"gcpServiceAccount": "123-compute@developer.gserviceaccount.com"}, "must be a service account email"),
    ({"cloud": "aws", "gcpServiceAccount": REVIEW_VM_ACCOUNT}, "applies to cloud gcp, but cloud is aws"),
])
def test_bad_service_account_fails_at_preview_naming_the_key(config_values, said):
    with pytest.raises(config.ConfigError, match=said) as refused:
        gcp_run(config_values, preview=True)
    assert "gcpServiceAccount" in str(refused.value)
