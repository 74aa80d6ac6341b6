"""The AWS GPU endpoint: one ComponentResource that owns every AWS resource it creates.

`pulumi destroy` removes all of it: the instance, its disk, the Elastic IP, the network
and the IAM role. Nothing depends on a default VPC existing.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from stacks import bootstrap, catalog, contract
from stacks.config import ConfigError, Settings

VPC_CIDR = "10.80.0.0/16"
SUBNET_CIDR = "10.80.1.0/24"


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


def availability_zone_for(instance_type: str, region: str) -> str:
    """The first AZ (by name) that offers the type; GPU types are missing from many AZs."""
    zones = offered_zones(instance_type, region)
    if not zones:
        raise ConfigError(
            f"instanceType {instance_type} is not offered in any availability zone of {region}.\n"
            f"      fix: pick another region (pulumi config set aws:region us-east-1) or run "
            f"`python -m tools.doctor --cloud aws --instance-type {instance_type} --suggest`"
        )
    return zones[0]


class Endpoint(pulumi.ComponentResource):
    """A GPU instance serving SDXL behind an Elastic IP, in its own VPC."""

    outputs: dict[str, pulumi.Output]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sdxl-endpoint:aws:GpuEndpoint", name, None, opts)
        machine = settings.machine
        tags = {**settings.tags, "Name": f"{settings.project}-{settings.stack}"}

        provider = aws.Provider("aws", region=settings.region, opts=pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        zone = availability_zone_for(machine.name, settings.region)

        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=VPC_CIDR, enable_dns_hostnames=True,
                          enable_dns_support=True, tags=tags, opts=child)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=child)
        subnet = aws.ec2.Subnet(f"{name}-subnet", vpc_id=vpc.id, cidr_block=SUBNET_CIDR,
                                availability_zone=zone, tags=tags, opts=child)
        routes = aws.ec2.RouteTable(
            f"{name}-routes", vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}], tags=tags, opts=child,
        )
        aws.ec2.RouteTableAssociation(f"{name}-routes-assoc", subnet_id=subnet.id,
                                      route_table_id=routes.id, opts=child)

        # HTTP(S) only: operators get a shell through SSM Session Manager, never SSH.
        firewall = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=vpc.id, description="SDXL endpoint: HTTP and HTTPS only",
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

        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=aws.iam.get_policy_document_output(statements=[{
                "actions": ["sts:AssumeRole"],
                "principals": [{"type": "Service", "identifiers": ["ec2.amazonaws.com"]}],
            }], opts=pulumi.InvokeOptions(parent=self, provider=provider)).json,
            description="SDXL endpoint instance: SSM Session Manager only", tags=tags, opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-ssm", role=role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore", opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)

        # Allocated before the instance so the bootstrap can know its own public address.
        address = aws.ec2.Eip(f"{name}-eip", domain="vpc", tags=tags, opts=child)

        ami = aws.ssm.get_parameter(name=catalog.AWS_DLAMI_SSM_PARAMETER, region=settings.region,
                                    opts=pulumi.InvokeOptions(parent=self, provider=provider))
        token = contract.api_token(settings, parent=self)
        user_data = bootstrap.render_secret_user_data(settings, token, public_ip=address.public_ip)

        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=ami.insecure_value,
            instance_type=machine.name,
            subnet_id=subnet.id,
            vpc_security_group_ids=[firewall.id],
            iam_instance_profile=profile.name,
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",  # IMDSv2 only
                "http_put_response_hop_limit": 2,  # one extra hop for the container
            },
            root_block_device={
                "volume_type": "gp3", "volume_size": settings.disk_gb, "encrypted": True,
                "delete_on_termination": True, "tags": tags,
            },
            # A guest `poweroff` (the idle watcher) stops the instance and its GPU billing,
            # keeping the disk and the model cache.
            instance_initiated_shutdown_behavior="stop",
            instance_market_options={
                "market_type": "spot",
                "spot_options": {"instance_interruption_behavior": "stop", "spot_instance_type": "persistent"},
            } if settings.spot else None,
            user_data=user_data,
            # cloud-init applies the bootstrap once per instance, so a changed one (image, model,
            # corsOrigins, domain ...) takes effect only on a new instance; the Elastic IP stays.
            user_data_replace_on_change=True,
            tags=tags,
            # A new DLAMI release must not silently replace the instance and its model cache.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(ignore_changes=["ami"])),
        )
        aws.ec2.EipAssociation(f"{name}-eip-assoc", allocation_id=address.allocation_id,
                               instance_id=instance.id, opts=child)

        self.outputs = contract.stack_outputs(
            settings, public_ip=address.public_ip, api_token=token, instance_id=instance.id, zone=zone,
            shell=pulumi.Output.concat("aws ssm start-session --region ", settings.region, " --target ", instance.id),
        )
        self.register_outputs(self.outputs)
