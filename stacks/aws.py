"""The AWS GPU endpoint: one ComponentResource that owns every AWS resource it creates, for one instance or,
with maxReplicas above 1, a fleet (the fleet's own resources are in stacks/aws_fleet.py).

`pulumi destroy` removes all of it: the instance and its data disk, the Elastic IP, the network, the IAM
role, the token parameters (their KMS key is scheduled for deletion, after AWS's 7-day minimum) and the
source bucket with its contents (for a fleet: the group and its instances, the load balancer, CloudFront or
the certificate too). Nothing depends on a default VPC existing.
"""

from __future__ import annotations

import re

import pulumi
import pulumi_aws as aws

from stacks import aws_fleet, bootstrap, bundle, catalog, contract
from stacks.aws_fleet import INSTANCE_METADATA, InstanceIdentity, Network
from stacks.config import Problems, Settings, stack_dns_label

VPC_CIDR = "10.80.0.0/16"
SUBNET_CIDR = "10.80.1.0/24"
# Where the data volume is attached. Nitro instances (every supported GPU type) show EBS volumes as NVMe
# devices named in discovery order, so the instance finds it by its volume id, which EBS puts in the NVMe
# serial (udev: /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<id>); Xen types see /dev/sdf as xvdf.
DATA_DEVICE = "/dev/sdf"
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<repository>[^:@]+)")


# The source bucket's Pulumi name: `sdxl-src-<stack>`. Pulumi's AWS provider names the bucket after it plus "-" and 7
# random hex characters, lowercased, and refuses a name that would exceed S3's 63 characters
# (pulumi-aws resources.go: AutoNameTransform("bucket", 63, strings.ToLower)). The stack in the name is what lets
# ci/bootstrap/aws-oidc.sh confine the review role to `sdxl-src-pr-*` buckets: S3 buckets take no tag condition.
SOURCE_BUCKET_PREFIX = "sdxl-src-"
SOURCE_BUCKET_NAME_MAX = 63 - len("-1a2b3c4")


def source_bucket_name(stack: str) -> str:
    """`sdxl-src-<stack>` when the stack name is already a short lowercase label (every `pr-<n>` is). Any other name
    is cleaned and cut as config.stack_dns_label does, with its short hash FIRST (`sdxl-src-<hash>-<stem>`): only a
    stack literally named `pr-...`, whose resources also carry the tag the review role needs, ever gets a bucket in
    the review role's reach; `PR-1` or `pr_1` does not."""
    # At this limit `sdxl-<stack>` fits exactly when SOURCE_BUCKET_PREFIX + stack does; stack_dns_label returns it
    # unchanged when the name needs neither cleaning nor cutting, and otherwise appends its hash.
    label = stack_dns_label(stack, SOURCE_BUCKET_NAME_MAX - len(SOURCE_BUCKET_PREFIX) + len("sdxl-"))
    if label == "sdxl-" + stack:
        return SOURCE_BUCKET_PREFIX + stack
    stem, _, digest = label.removeprefix("sdxl-").rpartition("-")
    return f"{SOURCE_BUCKET_PREFIX}{digest}-{stem}" if stem else f"{SOURCE_BUCKET_PREFIX}{digest}"


def data_devices(volume_id: str) -> list[str]:
    """Where the instance looks for its data volume, first match wins."""
    return [f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}", "/dev/xvdf"]


def ecr_repository_arn(image: str) -> str | None:
    """The ECR repository an image reference points at, or None for any other registry."""
    match = _ECR_IMAGE.match(image)
    if not match:
        return None
    return f"arn:aws:ecr:{match['region']}:{match['account']}:repository/{match['repository']}"


def offered_zones(instance_type: str, region: str) -> list[str]:
    """The region's AZs that offer the type, by name; empty for a type EC2 doesn't sell there."""
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[{"name": "instance-type", "values": [instance_type]}],
        region=region,
    )
    return sorted(offerings.locations)


def describe_machine(instance_type: str, region: str) -> catalog.InstanceFacts | None:
    """EC2's own description of a type (GPU maker, memory, count), or None if the region has no such type.

    The preview-time look-up config validation uses for types the catalog does not list.
    """
    # Ask for offerings first: describing an unknown type fails the whole deployment.
    if not offered_zones(instance_type, region):
        return None
    return catalog.instance_facts(aws.ec2.get_instance_type(instance_type=instance_type, region=region), "pulumi")


def zones_for(instance_type: str, region: str) -> list[str]:
    """Every AZ of the region that offers the type, by name; a type offered nowhere there is refused."""
    zones = offered_zones(instance_type, region)
    if not zones:
        problems = Problems()
        problems.add("instanceType", instance_type, f"not offered in any availability zone of {region}",
                     "pick another region (pulumi config set aws:region us-east-1) or run "
                     f"`python -m tools.doctor --cloud aws --instance-type {instance_type} --suggest`")
        problems.raise_if_any(pulumi.get_stack())
    return zones


class Endpoint(pulumi.ComponentResource):
    """A GPU instance serving SDXL behind an Elastic IP, in its own VPC; with maxReplicas above 1, a fleet of them
    behind an Application Load Balancer (stacks/aws_fleet.py)."""

    outputs: dict[str, pulumi.Output]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sdxl-endpoint:aws:GpuEndpoint", name, None, opts)
        tags = {**settings.tags, "Name": f"{settings.project}-{settings.stack}"}

        provider = aws.Provider("aws", region=settings.region, opts=pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        zones = zones_for(settings.machine.name, settings.region)

        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=VPC_CIDR, enable_dns_hostnames=True,
                          enable_dns_support=True, tags=tags, opts=child)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=child)
        routes = aws.ec2.RouteTable(
            f"{name}-routes", vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}], tags=tags, opts=child,
        )
        network = Network(vpc, routes)
        identity = self._identity(name, settings, tags, provider, child)
        if settings.fleet:
            self.outputs = aws_fleet.build(self, name, settings, tags=tags, child=child, network=network,
                                           identity=identity, zones=zones)
        else:
            self.outputs = self._single_instance(name, settings, tags, child, network, identity, zones[0])
        self.register_outputs(self.outputs)

    def _single_instance(self, name: str, settings: Settings, tags: dict[str, str], child: pulumi.ResourceOptions,
                         network: Network, identity: InstanceIdentity, zone: str) -> dict[str, pulumi.Output]:
        """One instance with its data disk and Elastic IP; Caddy on it is the HTTPS front."""
        machine = settings.machine
        subnet = aws.ec2.Subnet(f"{name}-subnet", vpc_id=network.vpc.id, cidr_block=SUBNET_CIDR,
                                availability_zone=zone, tags=tags, opts=child)
        aws.ec2.RouteTableAssociation(f"{name}-routes-assoc", subnet_id=subnet.id,
                                      route_table_id=network.routes.id, opts=child)

        # HTTP(S) only: operators get a shell through SSM Session Manager, never SSH.
        firewall = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=network.vpc.id, description="SDXL endpoint: HTTP and HTTPS only",
            ingress=[
                {"protocol": "tcp", "from_port": port, "to_port": port,
                 "cidr_blocks": [c for c in sources if ":" not in c],
                 "ipv6_cidr_blocks": [c for c in sources if ":" in c],
                 "description": "API, from allowedCidrs" if port == contract.HTTPS_PORT
                 else "redirect to HTTPS and ACME HTTP-01 only"}
                for port, sources in contract.ingress_sources(settings).items()
            ],
            egress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"],
                     "ipv6_cidr_blocks": ["::/0"], "description": "image pulls, model download, ACME"}],
            tags=tags, opts=child,
        )

        # Allocated before the instance so the bootstrap can know its own public address.
        address = aws.ec2.Eip(f"{name}-eip", domain="vpc", tags=tags, opts=child)

        # The data disk: outlives every instance (a changed bootstrap replaces the instance, never this), so
        # a replacement finds the model, images, build cache, compile cache and certificates again. Its tags are
        # exactly the instance's volume_tags: the provider reads those back from EVERY volume attached to the
        # instance, this one too, and a difference (another Name) would be rewritten on each update, both ways.
        data = aws.ebs.Volume(
            f"{name}-data", availability_zone=zone, size=settings.data_disk_gb, type="gp3", encrypted=True,
            tags=tags, opts=child,
        )

        document = bootstrap.render_user_data(
            settings, cloud="aws", location=settings.region, data_devices=data.id.apply(data_devices),
            secrets=identity.secrets, public_ip=address.public_ip, built=identity.built, bucket=identity.bucket,
        )

        # The root disk holds the OS only: unset, it is the AMI's own size.
        root_size = {"volume_size": settings.disk_gb} if settings.disk_gb else {}
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=identity.ami,
            instance_type=machine.name,
            subnet_id=subnet.id,
            vpc_security_group_ids=[firewall.id],
            iam_instance_profile=identity.profile.name,
            metadata_options=INSTANCE_METADATA,
            root_block_device={"volume_type": "gp3", "encrypted": True, "delete_on_termination": True, **root_size},
            # The root volume's tags go in RunInstances itself (a TagSpecification), so EC2 authorizes them as
            # tagging on creation (ec2:CreateAction RunInstances); root_block_device.tags would instead tag the
            # volume in a CreateTags call after launch, and CI's review role would need to tag volumes it does not
            # own yet (ci/bootstrap/aws-oidc.sh).
            volume_tags=tags,
            # A guest `poweroff` (the idle watcher) stops the instance and its GPU billing,
            # keeping the disks and the model cache.
            instance_initiated_shutdown_behavior="stop",
            instance_market_options={
                "market_type": "spot",
                "spot_options": {"instance_interruption_behavior": "stop", "spot_instance_type": "persistent"},
            } if settings.spot else None,
            # Gzipped: cloud-init unpacks it, and AWS takes 16 KB at most.
            user_data_base64=document.apply(bootstrap.aws_user_data),
            # cloud-init applies the bootstrap once per instance, so a changed one (source bundle, model,
            # corsOrigins, domain ...) takes effect only on a new instance; the data disk and Elastic IP stay.
            user_data_replace_on_change=True,
            tags=tags,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                # It boots only once its role may read what it needs and its source bundle is there to read.
                depends_on=identity.boot_after,
                # A new DLAMI release must not silently replace the instance.
                ignore_changes=["ami"],
                # Delete the old instance first: a replacement must never need two GPU instances at once (the
                # account's vCPU quota is often sized for one), and nothing is gained by overlap, since the
                # data volume and the Elastic IP have to move to the new instance anyway.
                delete_before_replace=True,
            )),
        )
        aws.ec2.VolumeAttachment(
            f"{name}-data-attach", device_name=DATA_DEVICE, volume_id=data.id, instance_id=instance.id,
            # On replacement the volume moves: it is detached (from a stopped instance, cleanly) before the
            # new instance attaches it; a volume has one attachment at a time.
            stop_instance_before_detaching=True,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True)),
        )
        # Released from the old instance before the new one takes the address.
        aws.ec2.EipAssociation(
            f"{name}-eip-assoc", allocation_id=address.allocation_id, instance_id=instance.id,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True)))

        return contract.stack_outputs(
            settings, public_ip=address.public_ip, api_token=identity.api_token, instance_id=instance.id,
            zone=zone,
            shell=pulumi.Output.concat("aws ssm start-session --region ", settings.region, " --target ", instance.id),
        )

    def _identity(self, name: str, settings: Settings, tags: dict[str, str], provider: aws.Provider,
                  child: pulumi.ResourceOptions) -> InstanceIdentity:
        """The role every instance runs as, with exactly the access it needs; its tokens; its source bundle."""
        invoke = pulumi.InvokeOptions(parent=self, provider=provider)
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=aws.iam.get_policy_document_output(statements=[{
                "actions": ["sts:AssumeRole"],
                "principals": [{"type": "Service", "identifiers": ["ec2.amazonaws.com"]}],
            }], opts=invoke).json,
            description="SDXL endpoint instance: SSM Session Manager, its own tokens and source bundle",
            # CI's review role may create roles only with this boundary (ci/bootstrap/aws-oidc.sh).
            permissions_boundary=settings.permissions_boundary,
            tags=tags, opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-ssm", role=role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore", opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)

        token = contract.api_token(settings, parent=self)
        secrets, parameter_arns, key = self._tokens(name, settings, token, tags, child)
        built = bundle.build() if settings.image is None else None
        bucket, upload = self._source_bucket(name, settings.stack, tags, child, built) if built else (None, [])

        # Exactly these parameters and this bundle; ECR pulls from the configured image's repository only.
        statements = [
            {"sid": "ReadItsTokens", "actions": ["ssm:GetParameter"], "resources": parameter_arns},
            # AmazonSSMManagedInstanceCore (Session Manager) allows ssm:GetParameter(s) on every parameter.
            # (The typed form, so that not_resources reaches the provider under its wire name notResources.)
            aws.iam.GetPolicyDocumentStatementArgs(
                sid="NoOtherParameters", effect="Deny", not_resources=parameter_arns,
                actions=["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath",
                         "ssm:GetParameterHistory"]),
            {"sid": "DecryptThemThroughSsm", "actions": ["kms:Decrypt"], "resources": [key.arn],
             "conditions": [{"test": "StringEquals", "variable": "kms:ViaService",
                             "values": [f"ssm.{settings.region}.amazonaws.com"]}]},
        ]
        if bucket is not None and built is not None:
            statements.append({"sid": "ReadItsSourceBundle", "actions": ["s3:GetObject"],
                               "resources": [pulumi.Output.concat(bucket.arn, "/", built.key)]})
        repository = ecr_repository_arn(settings.image) if settings.image else None
        if repository:
            statements += [
                {"sid": "EcrLogin", "actions": ["ecr:GetAuthorizationToken"], "resources": ["*"]},  # no narrower form
                {"sid": "PullTheImage", "resources": [repository],
                 "actions": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]},
            ]
        access = aws.iam.RolePolicy(
            f"{name}-access", role=role.id,
            policy=aws.iam.get_policy_document_output(statements=statements, opts=invoke).json,
            opts=child,
        )
        ami = aws.ssm.get_parameter(name=catalog.AWS_DLAMI_SSM_PARAMETER, region=settings.region, opts=invoke)
        return InstanceIdentity(profile=profile, access=access, secrets=secrets, built=built,
                                bucket=bucket.bucket if bucket else None, ami=ami.insecure_value, api_token=token,
                                bundle_upload=upload)

    def _tokens(self, name: str, settings: Settings, token: pulumi.Output[str], tags: dict[str, str],
                child: pulumi.ResourceOptions) -> tuple[dict[str, str], list[pulumi.Output[str]], aws.kms.Key]:
        """The tokens as SSM SecureString parameters under a path of this stack, encrypted with a key of
        their own: SSM's default key lets every principal of the account decrypt, and read-only roles
        commonly hold ssm:GetParameter. Only the instance role is granted this key."""
        key = aws.kms.Key(
            f"{name}-tokens", description=f"SDXL endpoint {settings.stack}: its API and Hub tokens",
            enable_key_rotation=True, deletion_window_in_days=7, tags=tags, opts=child,
        )
        # A fixed name cannot coexist with its replacement: delete first.
        replaceable = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True))
        values = {"SDXL_API_TOKEN": ("api-token", token)}
        if settings.hf_token is not None:
            values["HF_TOKEN"] = ("hf-token", pulumi.Output.secret(settings.hf_token))
        names, arns = {}, []
        for variable, (suffix, value) in values.items():
            parameter = aws.ssm.Parameter(
                f"{name}-{suffix}", name=f"/{settings.project}/{settings.stack}/{suffix}", type="SecureString",
                value=value, key_id=key.arn, description=f"SDXL endpoint {settings.stack}: {variable}",
                tags=tags, opts=replaceable,
            )
            names[variable] = f"/{settings.project}/{settings.stack}/{suffix}"
            arns.append(parameter.arn)
        return names, arns, key

    def _source_bucket(self, name: str, stack: str, tags: dict[str, str], child: pulumi.ResourceOptions,
                       built: bundle.Bundle) -> tuple[aws.s3.Bucket, list[aws.s3.BucketObjectv2]]:
        """A private, encrypted bucket holding this checkout's source bundle; destroy empties and removes it.
        Also the upload: an instance boots only once it exists, or its first download fails."""
        # Named for its stack (source_bucket_name), so CI's review role can reach PR stacks' buckets and no other.
        bucket = aws.s3.Bucket(source_bucket_name(stack), force_destroy=True, tags=tags, opts=child)
        settings = [
            aws.s3.BucketPublicAccessBlock(
                f"{name}-source-private", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
                ignore_public_acls=True, restrict_public_buckets=True, opts=child),
            aws.s3.BucketOwnershipControls(
                f"{name}-source-owner", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"},
                opts=child),
            aws.s3.BucketServerSideEncryptionConfiguration(
                f"{name}-source-encryption", bucket=bucket.id,
                rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}], opts=child),
        ]
        upload = aws.s3.BucketObjectv2(
            f"{name}-source-bundle", bucket=bucket.id, key=built.key, source=pulumi.FileAsset(str(built.path)),
            content_type="application/x-tar", tags=tags,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=settings)),
        )
        return bucket, [upload]
