"""The GCP GPU endpoint: one ComponentResource that owns every GCP resource it creates, for one VM or, with
maxReplicas above 1, a fleet (the fleet's own resources are in stacks/gcp_fleet.py; a fleet's destroy also
removes its group, template, load balancer, certificate and address).

Same contract as the AWS component (stacks/aws.py): same config, same outputs, same bootstrap.
`pulumi destroy` removes all of it: the instance, its boot and data disks, the static IP, the VPC
network, its firewall rules, the token secrets, the source bucket with its contents, and the service
account with its grants. Nothing depends on the project's `default` network, whose stock rules open
SSH to the internet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from datetime import UTC

import pulumi
import pulumi_gcp as gcp

from stacks import bootstrap, bundle, catalog, contract, gcp_fleet
from stacks.config import MachineLookup, Settings, gcp_label_key, parse_rfc3339
from stacks.gcp_fleet import VmSpec

# No preview-time look-up: the catalog lists every GCP shape this project supports.
describe_machine: MachineLookup | None = None

SUBNET_CIDR = "10.80.1.0/24"
# Google's documented source range for IAP TCP forwarding: the only way SSH ever reaches the VM.
IAP_TCP_FORWARDING_CIDR = "35.235.240.0/20"

# The service account's project-wide roles: writing logs and metrics, nothing else. Everything else it may
# do is granted on one resource each: read this stack's token secrets, this one source bundle object, and
# (for an `image` in this project's Artifact Registry) pull from that repository.
SERVICE_ACCOUNT_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")

# Secret Manager accepts only the cloud-platform scope, so IAM (above), not the scope, is the limit.
SERVICE_ACCOUNT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class GivenAccount:
    """An existing service account (config gcpServiceAccount), shaped like the created one where it is used."""

    def __init__(self, email: str) -> None:
        self.email = email
        self.member = f"serviceAccount:{email}"


_ARTIFACT_REGISTRY_IMAGE = re.compile(
    r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repository>[^/]+)/")

# GCP resource names: lowercase letter first, then [-a-z0-9], no trailing hyphen, <= 63 chars.
NAME_MAX = 63
SERVICE_ACCOUNT_ID_MAX = 30  # service account ids: 6 to 30 characters, same alphabet
LABEL_VALUE_MAX = 63  # GCP label values: [a-z0-9_-] (and some Unicode letters), <= 63 chars


def resource_name(stack: str, suffix: str, limit: int = NAME_MAX) -> str:
    """`sdxl-<stack>-<suffix>`, valid as a GCP name. A stack name that had to be altered
    (uppercase, dots, underscores) or cut to fit gets a short hash of the original, so two
    different stacks in one project never share a resource name."""
    cleaned = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", stack.lower())).strip("-")
    name = f"sdxl-{cleaned}-{suffix}" if cleaned else f"sdxl-{suffix}"
    if cleaned != stack or len(name) > limit:
        digest = hashlib.sha256(stack.encode()).hexdigest()[:6]
        room = limit - len(f"sdxl--{digest}-{suffix}")
        stem = cleaned[:room].rstrip("-")
        name = f"sdxl-{stem}-{digest}-{suffix}" if stem else f"sdxl-{digest}-{suffix}"
    return name


def label_value(value: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:LABEL_VALUE_MAX]


def ttl_label(ttl: str) -> str:
    """The RFC 3339 expiry as a label value (see catalog.GCP_TTL_LABEL_FORMAT); config.py has validated it."""
    expiry = parse_rfc3339(ttl).astimezone(UTC)
    return expiry.strftime(catalog.GCP_TTL_LABEL_FORMAT)


def labels_for(settings: Settings) -> dict[str, str]:
    """The ownership marks (stack, project, ttl) as GCP labels: ':' is not allowed in label keys."""
    return {gcp_label_key(mark): ttl_label(value) if mark == "ttl" else label_value(value)
            for mark, value in settings.ownership.items()}


def scheduling_for(spot: bool) -> dict:
    """GPU VMs cannot live-migrate, so host maintenance must TERMINATE them, spot or not."""
    if spot:
        # GCP's rules for SPOT (provider docs for scheduling.provisioning_model): preemptible
        # true, automatic_restart false, on_host_maintenance TERMINATE. STOP on preemption
        # keeps the disk and its model cache; a later start resumes where it was.
        return {
            "on_host_maintenance": "TERMINATE", "automatic_restart": False, "preemptible": True,
            "provisioning_model": "SPOT", "instance_termination_action": "STOP",
        }
    # After a maintenance termination or a host error, GCP starts the VM again by itself.
    return {"on_host_maintenance": "TERMINATE", "automatic_restart": True, "provisioning_model": "STANDARD"}


def artifact_registry_repository(image: str) -> tuple[str, str, str] | None:
    """(location, project, repository) of an Artifact Registry image, or None for another registry."""
    match = _ARTIFACT_REGISTRY_IMAGE.match(image)
    return (match["location"], match["project"], match["repository"]) if match else None


def iap_ssh_firewall(name: str, rule: str, network: gcp.compute.Network, network_tag: str,
                     child: pulumi.ResourceOptions) -> gcp.compute.Firewall:
    """With `ssh: true`: port 22 from IAP's TCP forwarding range only, to the stack's VMs only."""
    return gcp.compute.Firewall(
        f"{name}-iap-ssh", name=rule, network=network.id, direction="INGRESS",
        description="SDXL endpoint: SSH through IAP TCP forwarding only",
        allows=[{"protocol": "tcp", "ports": ["22"]}],
        source_ranges=[IAP_TCP_FORWARDING_CIDR], target_tags=[network_tag], opts=child,
    )


def shell_command(settings: Settings, instance: str) -> str:
    where = f"--zone {settings.zone} --project {settings.gcp_project}"
    if settings.ssh:
        return f"gcloud compute ssh {instance} --tunnel-through-iap {where}"
    # No SSH path exists at all; the boot log still shows how the bootstrap went.
    return (f"gcloud compute instances get-serial-port-output {instance} {where}"
            "  # SSH is off; `pulumi config set ssh true` opens it through IAP only")


class Endpoint(pulumi.ComponentResource):
    """A GPU VM serving SDXL behind a static external IP, in its own VPC network; with maxReplicas above 1, a
    regional managed instance group of them behind Google's global load balancer (stacks/gcp_fleet.py)."""

    outputs: dict[str, pulumi.Output]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sdxl-endpoint:gcp:GpuEndpoint", name, None, opts)
        labels = labels_for(settings)

        provider = gcp.Provider("gcp", project=settings.gcp_project, region=settings.region, zone=settings.zone,
                                opts=pulumi.ResourceOptions(parent=self))
        # Fixed names cannot coexist with their replacement: delete first, then create.
        child = pulumi.ResourceOptions(parent=self, provider=provider, delete_before_replace=True)
        spec = self._vm_spec(name, settings, labels, provider, child)
        if settings.fleet:
            self.outputs = gcp_fleet.build(self, name, settings, child=child, spec=spec)
        else:
            self.outputs = self._single_instance(name, settings, child, spec)
        self.register_outputs(self.outputs)

    def _vm_spec(self, name: str, settings: Settings, labels: dict[str, str], provider: gcp.Provider,
                 child: pulumi.ResourceOptions) -> VmSpec:
        """What both modes' VMs share: the network, the service account and its grants, the tokens, the source
        bundle, the image, and the parts of the VM's definition that do not depend on the mode."""
        names = {part: resource_name(settings.stack, part) for part in ("net", "subnet")}
        network = gcp.compute.Network(
            f"{name}-net", name=names["net"], auto_create_subnetworks=False,
            description="SDXL endpoint: its own network, with no default firewall rules", opts=child,
        )
        subnet = gcp.compute.Subnetwork(
            f"{name}-subnet", name=names["subnet"], network=network.id, region=settings.region,
            ip_cidr_range=SUBNET_CIDR, private_ip_google_access=True, opts=child,
        )
        # The firewall rules target this tag, so they reach the stack's VMs only.
        network_tag = resource_name(settings.stack, "vm")
        if settings.ssh:
            iap_ssh_firewall(name, resource_name(settings.stack, "iap-ssh"), network, network_tag, child)

        account: gcp.serviceaccount.Account | GivenAccount
        grants: list[pulumi.Resource]
        if settings.gcp_service_account:
            # CI's review stacks: the VM account the bootstrap made (ci/bootstrap/gcp-wif.sh), with its log and
            # metric roles granted there once; the review account may act as that account and no other.
            account, grants = GivenAccount(settings.gcp_service_account), []
        else:
            account = gcp.serviceaccount.Account(
                f"{name}-sa", account_id=resource_name(settings.stack, "sa", SERVICE_ACCOUNT_ID_MAX),
                display_name=f"SDXL endpoint {settings.stack}"[:100],  # the API caps it at 100
                description="SDXL endpoint VM: logs and metrics, its own tokens and source bundle", opts=child,
            )
            grants = [
                gcp.projects.IAMMember(
                    f"{name}-{role.rsplit('.', 1)[-1].lower()}", project=settings.gcp_project, role=role,
                    member=account.member, opts=child,
                )
                for role in SERVICE_ACCOUNT_ROLES
            ]

        token = contract.api_token(settings, parent=self)
        secrets, readable = self._tokens(name, settings, token, labels, account, child)
        built = bundle.build() if settings.image is None else None
        bucket, bundle_ready = self._source_bucket(name, settings, labels, account, child, built) if built else (
            None, [])
        registry = artifact_registry_repository(settings.image) if settings.image else None
        if registry and registry[1] == settings.gcp_project:
            # Pull rights on that repository only. One in another project grants them there (README).
            location, project, repository = registry
            grants.append(gcp.artifactregistry.RepositoryIamMember(
                f"{name}-image-reader", project=project, location=location, repository=repository,
                role="roles/artifactregistry.reader", member=account.member, opts=child,
            ))

        image = gcp.compute.get_image(family=catalog.GCP_DLVM_IMAGE_FAMILY, project=catalog.GCP_DLVM_IMAGE_PROJECT,
                                      opts=pulumi.InvokeOptions(parent=self, provider=provider))
        machine = settings.machine
        return VmSpec(
            network=network, subnet=subnet, ready=[*grants, *readable, *bundle_ready], secrets=secrets, built=built,
            bucket=bucket.name if bucket else None, api_token=token, labels=labels,
            image=image.self_link, image_disk_gb=image.disk_size_gb,
            names=lambda part, limit=NAME_MAX: resource_name(settings.stack, part, limit), network_tag=network_tag,
            machine={
                "machine_type": machine.name,
                # T4 attaches to N1 as a guest accelerator; G2 (L4), A2 and A3 have theirs built in
                # and refuse an extra one (the catalog enforces both at config time).
                "guest_accelerators": [{"type": machine.accelerator, "count": 1}] if machine.accelerator else None,
                "service_account": {"email": account.email, "scopes": list(SERVICE_ACCOUNT_SCOPES)},
                # The DLVM image is UEFI-compatible: vTPM and integrity monitoring on. Secure Boot
                # stays off because it refuses NVIDIA kernel modules that are not signed with a key
                # the VM trusts, which leaves the GPU without a driver.
                "shielded_instance_config": {
                    "enable_secure_boot": False, "enable_vtpm": True, "enable_integrity_monitoring": True,
                },
                "labels": labels,
            },
            metadata={
                # A no-op when the image already has the driver; installs it on first boot otherwise.
                "install-nvidia-driver": "True",
                # SSH (only ever through IAP) authorises through IAM, never through metadata keys.
                "enable-oslogin": "TRUE",
                "block-project-ssh-keys": "TRUE",
            },
            scheduling=scheduling_for(settings.spot),
        )

    def _single_instance(self, name: str, settings: Settings, child: pulumi.ResourceOptions,
                         spec: VmSpec) -> dict[str, pulumi.Output]:
        """One VM with its data disk and static IP; Caddy on it is the HTTPS front."""
        zone = settings.zone
        labels = spec.labels
        names = {part: resource_name(settings.stack, part) for part in ("http", "https", "ip", "vm", "data")}
        network_tag = spec.network_tag
        for port, sources in contract.ingress_sources(settings).items():
            part = "https" if port == contract.HTTPS_PORT else "http"
            gcp.compute.Firewall(
                f"{name}-{part}", name=names[part], network=spec.network.id, direction="INGRESS",
                description="SDXL endpoint: the API, from allowedCidrs" if part == "https"
                else "SDXL endpoint: redirect to HTTPS and ACME HTTP-01 only",
                allows=[{"protocol": "tcp", "ports": [str(port)]}],
                # The subnet is IPv4-only (config.py refuses an IPv6-only allowedCidrs on GCP).
                source_ranges=[c for c in sources if ipaddress.ip_network(c).version == 4],
                target_tags=[network_tag], opts=child,
            )

        # Reserved before the instance so the bootstrap can know its own public address.
        address = gcp.compute.Address(
            f"{name}-ip", name=names["ip"], region=settings.region, address_type="EXTERNAL",
            network_tier="PREMIUM", labels=labels, opts=child,
        )

        # The data disk: outlives every VM (a changed bootstrap replaces the VM, never this), so a
        # replacement finds the model, images, build cache, compile cache and certificates again.
        # Encrypted at rest by Google-managed keys, like every persistent disk.
        data = gcp.compute.Disk(
            f"{name}-data", name=names["data"], zone=zone, size=settings.data_disk_gb, type="pd-balanced",
            labels=labels, opts=child,
        )

        user_data = bootstrap.render_user_data(
            settings, cloud="gcp", location=settings.gcp_project,
            data_devices=[f"/dev/disk/by-id/google-{bootstrap.DATA_DEVICE_NAME}"], secrets=spec.secrets,
            public_ip=address.address, built=spec.built, bucket=spec.bucket,
        )
        machine = spec.machine
        instance = gcp.compute.Instance(
            f"{name}-vm",
            name=names["vm"],
            zone=zone,
            machine_type=machine["machine_type"],
            guest_accelerators=machine["guest_accelerators"],
            scheduling=spec.scheduling,
            boot_disk={
                "auto_delete": True,
                # The OS only: unset, the image's own size. Encrypted at rest by Google-managed keys.
                "initialize_params": {
                    "image": spec.image, "type": "pd-balanced", "labels": labels,
                    **({"size": settings.disk_gb} if settings.disk_gb else {}),
                },
            },
            attached_disks=[
                {"source": data.self_link, "device_name": bootstrap.DATA_DEVICE_NAME, "mode": "READ_WRITE"}],
            network_interfaces=[{
                "subnetwork": spec.subnet.id,
                "access_configs": [{"nat_ip": address.address, "network_tier": "PREMIUM"}],
            }],
            tags=[network_tag],
            service_account=machine["service_account"],
            metadata={
                "install-nvidia-driver": spec.metadata["install-nvidia-driver"],
                "user-data": user_data,  # names where the tokens live, never the tokens
                **{k: v for k, v in spec.metadata.items() if k != "install-nvidia-driver"},
            },
            shielded_instance_config=machine["shielded_instance_config"],
            labels=labels,
            # Config changes (machine type, GPU) stop and restart the VM rather than fail.
            allow_stopping_for_update=True,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=spec.ready,
                # A new image in the family must not silently replace the VM.
                ignore_changes=["bootDisk.initializeParams.image"],
                # cloud-init applies the bootstrap once per instance, so a changed one (source bundle, model,
                # corsOrigins, domain ...) takes effect only on a new VM; the data disk and static IP stay.
                replace_on_changes=["metadata"],
            )),
        )

        return contract.stack_outputs(
            settings, public_ip=address.address, api_token=spec.api_token,
            instance_id=instance.name,  # the instance name: what every gcloud command takes
            zone=zone, shell=instance.name.apply(lambda vm: shell_command(settings, vm)),
        )

    def _tokens(self, name: str, settings: Settings, token: pulumi.Output[str], labels: dict[str, str],
                account: gcp.serviceaccount.Account | GivenAccount, child: pulumi.ResourceOptions,
                ) -> tuple[dict[str, str], list[pulumi.Resource]]:
        """The tokens as Secret Manager secrets that only the VM's service account may read: their names for
        the bootstrap, and what the VM waits for."""
        values = {"SDXL_API_TOKEN": ("api-token", token)}
        if settings.hf_token is not None:
            values["HF_TOKEN"] = ("hf-token", pulumi.Output.secret(settings.hf_token))
        names, readable = {}, []
        for variable, (suffix, value) in values.items():
            secret_id = resource_name(settings.stack, suffix)
            secret = gcp.secretmanager.Secret(f"{name}-{suffix}", secret_id=secret_id, replication={"auto": {}},
                                              labels=labels, opts=child)
            # A new version before the old one goes, so the VM always finds a `latest` to read.
            version = gcp.secretmanager.SecretVersion(
                f"{name}-{suffix}-value", secret=secret.id, secret_data=value,
                opts=pulumi.ResourceOptions(parent=self, provider=child.provider),
            )
            reader = gcp.secretmanager.SecretIamMember(
                f"{name}-{suffix}-reader", secret_id=secret.id, role="roles/secretmanager.secretAccessor",
                member=account.member, opts=child,
            )
            names[variable] = secret_id
            readable += [version, reader]
        return names, readable

    def _source_bucket(self, name: str, settings: Settings, labels: dict[str, str],
                       account: gcp.serviceaccount.Account | GivenAccount, child: pulumi.ResourceOptions,
                       built: bundle.Bundle) -> tuple[gcp.storage.Bucket, list[pulumi.Resource]]:
        """A private bucket (uniform access, public access prevention) holding this checkout's source
        bundle, readable by the VM's service account for that one object; destroy empties and removes it.
        Also the upload and the grant: a VM boots only once both exist, or its first download fails."""
        bucket = gcp.storage.Bucket(
            f"{name}-source",
            # Bucket names are global: the project id (unique) and the stack make this one ours.
            name=resource_name(f"{settings.gcp_project}-{settings.stack}", "source"),
            location=settings.region, uniform_bucket_level_access=True, public_access_prevention="enforced",
            force_destroy=True, labels=labels, opts=child,
        )
        upload = gcp.storage.BucketObject(f"{name}-source-bundle", bucket=bucket.name, name=built.key,
                                 source=pulumi.FileAsset(str(built.path)), content_type="application/x-tar",
                                 opts=child)
        reader = gcp.storage.BucketIAMMember(
            f"{name}-source-reader", bucket=bucket.name, role="roles/storage.objectViewer", member=account.member,
            condition={"title": "this-source-bundle-only", "description": "The VM reads its own source bundle",
                       "expression": pulumi.Output.concat('resource.name == "projects/_/buckets/', bucket.name,
                                                          f'/objects/{built.key}"')},
            opts=child,
        )
        return bucket, [upload, reader]
