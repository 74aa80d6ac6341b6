"""The AWS fleet: GPU instances in an Auto Scaling group behind an Application Load Balancer, with CloudFront in
front when no `domain` is configured.

A private helper of stacks/aws.py, imported by it alone. aws.py builds what both modes share (the VPC and its
internet route, the instance role and its access, the token parameters, the source bucket, the AMI) and hands it
over as `Network` and `InstanceIdentity`; everything below belongs to the fleet only (a subnet in every AZ that
offers the type, two security groups, the load balancer and its listeners, CloudFront or an ACM certificate, the
launch template, the group and its scaling policy) and would double aws.py without meaning anything to the single
instance. This module imports no target, so there is no cycle.

How a request travels: client --HTTPS--> CloudFront (its own certificate) --a VPC origin: HTTP with a secret
header, over AWS's network into the VPC--> an internal ALB in subnets with no route to the internet, which admits
only CloudFront's origin-facing addresses and answers 403 without the header --> an instance's server port, which
admits only the ALB's security group. With `domain`, the ALB itself is internet-facing, serves HTTPS with an ACM
certificate and admits `allowedCidrs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from stacks import bootstrap, bundle, catalog, contract
from stacks.config import Problems, Settings

# IMDSv2 only, with one extra hop for the container. Both modes' instances.
INSTANCE_METADATA = {"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 2}
# The header CloudFront adds to every origin request, holding a random secret the ALB demands.
ORIGIN_HEADER = "X-Origin-Verify"
# One /24 per AZ from 10.80.16.0 up, clear of the single instance's 10.80.1.0/24 in the same VPC range; the internal
# ALB's own subnets (behind CloudFront) from 10.80.48.0 up.
FIRST_SUBNET = 16
FIRST_ALB_SUBNET = 48
ALB_SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"  # AWS's recommended policy: TLS 1.3, and 1.2 for older clients
HTTP_PORT, HTTPS_PORT = contract.HTTP_PORT, contract.HTTPS_PORT
ALL_METHODS = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]


@dataclass(frozen=True)
class InstanceIdentity:
    """What every instance of the stack runs as and boots from, in both modes (built by stacks/aws.py): its IAM
    instance profile and policy, where its tokens live, the source bundle it builds (or none, for `image`), the
    GPU AMI and the API token."""

    profile: aws.iam.InstanceProfile
    access: aws.iam.RolePolicy  # instances start only once it is in place
    secrets: dict[str, str]  # variable -> SSM parameter name
    built: bundle.Bundle | None
    bucket: pulumi.Output[str] | None  # the source bucket's name
    ami: str
    api_token: pulumi.Output[str]  # secret
    bundle_upload: list[aws.s3.BucketObjectv2]  # the source bundle's upload (none for `image`)

    @property
    def boot_after(self) -> list[pulumi.Resource]:
        """What an instance needs before it boots: its role's access, and the source bundle it downloads first."""
        return [self.access, *self.bundle_upload]


@dataclass(frozen=True)
class Network:
    """The stack's own VPC with its route to the internet gateway; each mode adds its own subnets."""

    vpc: aws.ec2.Vpc
    routes: aws.ec2.RouteTable


def front_time_limit(settings: Settings, timeouts: bootstrap.ProxyTimeouts) -> float:
    """How long the front waits for an answer: CloudFront's 60 s, or, with `domain`, the ALB's idle timeout."""
    return timeouts.answer if settings.domain else catalog.CLOUDFRONT_ORIGIN_READ_TIMEOUT_MAX_S


def region_zone_ids(region: str, invoke: pulumi.InvokeOptions) -> dict[str, str]:
    """The region's available AZs (those every account has): name -> AZ id."""
    found = aws.get_availability_zones(
        state="available", filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
        region=region, opts=invoke)
    return dict(zip(found.names, found.zone_ids, strict=True))


def alb_zones(zones: list[str], zone_ids: dict[str, str], excluded_ids: frozenset[str] = frozenset()) -> list[str]:
    """An ALB needs subnets in at least two AZs: the AZs that offer the type, plus the region's next one (not an
    excluded AZ id) when only one does (instances still launch only where the type is offered)."""
    if len(zones) >= 2:
        return zones
    spare = [z for z in sorted(zone_ids) if z not in zones and zone_ids[z] not in excluded_ids]
    return sorted({*zones, *spare[: 2 - len(zones)]})


def vpc_origin_zones(zones: list[str], zone_ids: dict[str, str], instance_type: str, region: str) -> list[str]:
    """The AZs that offer the type where a CloudFront VPC origin reaches an ALB (AWS lists AZ ids it leaves out):
    behind CloudFront, instances and ALB nodes go there only, since an ALB sends nothing to targets in an AZ it is
    not enabled in. None left is refused, with the fixes."""
    served = [z for z in zones if zone_ids.get(z) not in catalog.CLOUDFRONT_VPC_ORIGIN_EXCLUDED_AZ_IDS]
    if not served:
        problems = Problems()
        problems.add("instanceType", instance_type, f"offered in {region} only in AZs that CloudFront VPC origins "
                     f"do not serve ({', '.join(zones)})", "set domain (the load balancer then serves HTTPS itself), "
                     "or pick another region or type")
        problems.raise_if_any(pulumi.get_stack())
    return served


def root_disk_gb(settings: Settings, ami: str, region: str, invoke: pulumi.InvokeOptions) -> tuple[str, int]:
    """(the AMI's root device, the fleet's root disk size). A fleet instance keeps the model, the images and the
    caches on its own disk: `diskGb` when set, else the AMI's own root size plus `dataDiskGb` of room."""
    # By its id alone: the one image the SSM parameter names, whichever account publishes it.
    image = aws.ec2.get_ami(filters=[{"name": "image-id", "values": [ami]}], region=region, opts=invoke)
    root = next(m for m in image.block_device_mappings if m.device_name == image.root_device_name)
    return image.root_device_name, settings.disk_gb or int(root.ebs["volume_size"]) + settings.data_disk_gb


def build(component: pulumi.ComponentResource, name: str, settings: Settings, *, tags: dict[str, str],
          child: pulumi.ResourceOptions, network: Network, identity: InstanceIdentity,
          zones: list[str]) -> dict[str, pulumi.Output]:
    """Every fleet resource, parented under `component`; returns the stack outputs (contract.fleet_outputs)."""
    invoke = pulumi.InvokeOptions(parent=component, provider=child.provider)
    timeouts = bootstrap.ProxyTimeouts()
    vpc = network.vpc
    needs_ids = not settings.domain or len(zones) < 2
    zone_ids = region_zone_ids(settings.region, invoke) if needs_ids else {}
    excluded = frozenset() if settings.domain else catalog.CLOUDFRONT_VPC_ORIGIN_EXCLUDED_AZ_IDS
    if not settings.domain:
        zones = vpc_origin_zones(zones, zone_ids, settings.machine.name, settings.region)

    # Public subnets with a public address per instance, and no NAT gateway: outbound (PyPI, Docker Hub, the
    # Hub, S3) goes straight through the internet gateway, which bills nothing by the hour, where a NAT gateway
    # bills every hour plus every GB of the image build and model download. Inbound is closed by the security
    # group below: only the load balancer reaches an instance, whatever its address.
    subnets = {}
    for index, zone in enumerate(alb_zones(zones, zone_ids, excluded)):
        subnet = aws.ec2.Subnet(
            f"{name}-subnet-{zone}", vpc_id=vpc.id, cidr_block=f"10.80.{FIRST_SUBNET + index}.0/24",
            availability_zone=zone, map_public_ip_on_launch=True, tags=tags, opts=child)
        aws.ec2.RouteTableAssociation(f"{name}-routes-{zone}", subnet_id=subnet.id,
                                      route_table_id=network.routes.id, opts=child)
        subnets[zone] = subnet
    # Behind CloudFront the ALB is internal, in subnets of its own that keep the VPC's main route table (the local
    # route alone), as AWS asks of a VPC origin ("private subnet with at least one available IPv4 address"); the
    # VPC's internet gateway, which AWS also asks for, is the one the instances use.
    alb_subnets = subnets if settings.domain else {
        zone: aws.ec2.Subnet(f"{name}-alb-subnet-{zone}", vpc_id=vpc.id,
                             cidr_block=f"10.80.{FIRST_ALB_SUBNET + index}.0/24", availability_zone=zone,
                             map_public_ip_on_launch=False, tags=tags, opts=child)
        for index, zone in enumerate(subnets)}

    if settings.domain:
        # The ALB is the front: the API and the redirect, to allowedCidrs only.
        ingress = [{"protocol": "tcp", "from_port": port, "to_port": port,
                    "cidr_blocks": [c for c in settings.allowed_cidrs if ":" not in c],
                    "ipv6_cidr_blocks": [c for c in settings.allowed_cidrs if ":" in c],
                    "description": "HTTPS API, from allowedCidrs" if port == HTTPS_PORT else "redirect to HTTPS"}
                   for port in (HTTP_PORT, HTTPS_PORT)]
    else:
        # CloudFront is the front: one rule for its origin-facing servers, which AWS documents for a VPC origin
        # (its other way, CloudFront's own "CloudFront-VPCOrigins-Service-SG", exists only once the VPC origin
        # does). A prefix list counts as many rules as its entries against the group's quota, so it is used once,
        # on the one port CloudFront calls.
        origin_facing = aws.ec2.get_managed_prefix_list(name=catalog.CLOUDFRONT_ORIGIN_FACING_PREFIX_LIST,
                                                        region=settings.region, opts=invoke)
        ingress = [{"protocol": "tcp", "from_port": HTTP_PORT, "to_port": HTTP_PORT,
                    "prefix_list_ids": [origin_facing.id], "description": "CloudFront's origin-facing servers only"}]
    alb_firewall = aws.ec2.SecurityGroup(
        f"{name}-alb-sg", vpc_id=vpc.id, description="SDXL fleet load balancer: from its front only",
        ingress=ingress,
        egress=[{"protocol": "tcp", "from_port": bootstrap.SERVER_PORT, "to_port": bootstrap.SERVER_PORT,
                 "cidr_blocks": [vpc.cidr_block], "description": "the instances' server: requests and health checks"}],
        tags=tags, opts=child,
    )
    # Instances: the server's port from the load balancer's group only; nothing else, no SSH (SSM).
    instance_firewall = aws.ec2.SecurityGroup(
        f"{name}-instance-sg", vpc_id=vpc.id, description="SDXL fleet instances: from the load balancer only",
        ingress=[{"protocol": "tcp", "from_port": bootstrap.SERVER_PORT, "to_port": bootstrap.SERVER_PORT,
                  "security_groups": [alb_firewall.id],
                  "description": "the API and its health checks, from the load balancer only"}],
        egress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"],
                 "ipv6_cidr_blocks": ["::/0"], "description": "image build, model download, SSM"}],
        tags=tags, opts=child,
    )

    targets = aws.lb.TargetGroup(
        f"{name}-targets", port=bootstrap.SERVER_PORT, protocol="HTTP", vpc_id=vpc.id, target_type="instance",
        # An instance leaving (scale-in, refresh, spot rebalance) gets no new request, and its in-flight ones
        # as long as the server's own deadline allows; ELB ends the wait early once none is left.
        deregistration_delay=int(timeouts.answer),
        # A GPU serves a few requests at a time: the least busy one gets the next.
        load_balancing_algorithm_type="least_outstanding_requests",
        # The server's own /ready on the port requests go to: it needs no token, which a health check cannot send.
        health_check={"path": contract.READY_ROUTE, "port": str(bootstrap.SERVER_PORT), "protocol": "HTTP",
                      "matcher": "200",
                      "interval": 15, "timeout": 5, "healthy_threshold": 2, "unhealthy_threshold": 3},
        tags=tags, opts=child,
    )
    balancer = aws.lb.LoadBalancer(
        # Internal behind CloudFront: private addresses only, reached through the VPC origin and nothing else.
        f"{name}-alb", load_balancer_type="application", internal=not settings.domain,
        security_groups=[alb_firewall.id], subnets=[s.id for s in alb_subnets.values()],
        # Longer than the server's one deadline plus the upload (bootstrap.ProxyTimeouts), so the ALB never cuts
        # an answer the server still sends; behind CloudFront, CloudFront's 60 s come first, so there the server's
        # own deadline is 55 s (bootstrap.FleetFront).
        idle_timeout=int(timeouts.answer), drop_invalid_header_fields=True, tags=tags, opts=child,
    )
    forward = {"type": "forward", "target_group_arn": targets.arn}
    # `routes`: what makes the ALB forward to the target group (the HTTPS listener, or the listener rule behind
    # CloudFront). Until it exists the target group belongs to no load balancer and the scaling policy's
    # ALBRequestCountPerTarget label names nothing AWS accepts; with `domain` it waits for ACM's validation.
    if settings.domain:
        endpoint, dns_records, routes = _https_listener(name, settings, balancer, forward, tags, child)
    else:
        endpoint, routes = _cloudfront(name, settings, balancer, forward, tags, child, component)
        dns_records = []

    root_device, root_gb = root_disk_gb(settings, identity.ami, settings.region, invoke)
    mix = catalog.aws_spot_mix(settings.machine) if settings.spot else (settings.machine,)
    front = bootstrap.FleetFront(time_limit=front_time_limit(settings, timeouts),
                                 seconds_per_image=catalog.slowest_seconds_per_image(mix))
    document = bootstrap.render_user_data(
        settings, cloud="aws", location=settings.region, data_devices=[], secrets=identity.secrets,
        public_ip=None, built=identity.built, bucket=identity.bucket, fleet=front,
    )
    template = aws.ec2.LaunchTemplate(
        f"{name}-template",
        description=f"SDXL fleet {settings.stack}: the same bootstrap and hardening as the single instance",
        image_id=identity.ami,
        instance_type=settings.machine.name,
        iam_instance_profile={"arn": identity.profile.arn},
        metadata_options=INSTANCE_METADATA,
        network_interfaces=[{"device_index": 0, "associate_public_ip_address": True, "delete_on_termination": True,
                             "security_groups": [instance_firewall.id]}],
        block_device_mappings=[{"device_name": root_device, "ebs": {
            "volume_size": root_gb, "volume_type": "gp3", "encrypted": True, "delete_on_termination": True}}],
        # Cattle: a guest power-off (the watcher's, after a failed boot step) ends the instance, and the group
        # replaces it at once instead of after the health-check grace.
        instance_initiated_shutdown_behavior="terminate",
        user_data=document.apply(bootstrap.aws_user_data),  # gzipped, base64: AWS takes 16 KB at most
        tag_specifications=[{"resource_type": kind, "tags": tags} for kind in ("instance", "volume")],
        update_default_version=True,
        tags=tags,
        # A new DLAMI release must not silently roll out over the whole fleet.
        opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(ignore_changes=["imageId"])),
    )
    version = {"launch_template_id": template.id, "version": template.latest_version.apply(str)}
    capacity = {"launch_template": {"id": template.id, "version": template.latest_version.apply(str)}}
    if settings.spot:
        # Spot across several types that fit (catalog.aws_spot_mix), the pools least likely to be interrupted at
        # a low price, and a replacement launched as soon as AWS signals a rebalance.
        capacity = {"mixed_instances_policy": {
            "launch_template": {"launch_template_specification": version,
                                "overrides": [{"instance_type": o.name} for o in mix]},
            "instances_distribution": {"on_demand_base_capacity": 0, "on_demand_percentage_above_base_capacity": 0,
                                       "spot_allocation_strategy": "price-capacity-optimized"}}}
    warmup = bootstrap.first_boot_seconds(settings)
    group = aws.autoscaling.Group(
        f"{name}-fleet",
        name=f"{settings.project}-{settings.stack}",
        min_size=settings.min_replicas, max_size=settings.max_replicas,
        vpc_zone_identifiers=[subnets[z].id for z in zones],  # every AZ that offers the type, no other
        target_group_arns=[targets.arn],
        # Replaced when the ALB finds it unhealthy, once a first boot has had its time.
        health_check_type="ELB", health_check_grace_period=bootstrap.FIRST_BOOT_GRACE_S,
        default_instance_warmup=warmup,
        capacity_rebalance=settings.spot,
        # A changed launch template rolls out: new instances first, an old one leaves only once a new one is
        # healthy, so serving capacity never drops (100% healthy at least, up to 200% while it rolls).
        instance_refresh={"strategy": "Rolling", "preferences": {
            "min_healthy_percentage": 100, "max_healthy_percentage": catalog.AWS_ROLLOUT_MAX_HEALTHY_PERCENT,
            "instance_warmup": str(warmup), "skip_matching": True}},
        instance_maintenance_policy={"min_healthy_percentage": 100,
                                     "max_healthy_percentage": catalog.AWS_ROLLOUT_MAX_HEALTHY_PERCENT},
        # `pulumi up` does not wait for a first boot (12 to 25 minutes); /ready says when the fleet serves.
        wait_for_capacity_timeout="0",
        tags=[{"key": k, "value": v, "propagate_at_launch": False} for k, v in tags.items()],
        opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=identity.boot_after)),
        **capacity,
    )
    per_hour = settings.target_requests_per_hour or catalog.target_requests_per_hour(mix)
    aws.autoscaling.Policy(
        f"{name}-scaling", autoscaling_group_name=group.name, policy_type="TargetTrackingScaling",
        target_tracking_configuration={
            "predefined_metric_specification": {
                "predefined_metric_type": "ALBRequestCountPerTarget",
                "resource_label": pulumi.Output.concat(balancer.arn_suffix, "/", targets.arn_suffix)},
            # The metric counts requests per target per minute.
            "target_value": round(per_hour / 60, 3)},
        # Only once the ALB routes to the target group (as AWS CDK orders it: loadBalancerAttached).
        opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[routes])),
    )

    # The ALB-hour, and with `domain` the internet-facing ALB's public address in each of its AZs (an internal ALB
    # has none, and AWS charges nothing for the VPC origin's network interface); each instance's own address.
    public_alb_addresses = len(subnets) if settings.domain else 0
    front_usd = catalog.FLEET_FRONT_USD_PER_HOUR["aws"] + public_alb_addresses * catalog.AWS_PUBLIC_IPV4_USD_PER_HOUR
    return contract.fleet_outputs(
        settings, endpoint=endpoint, public_ip=None, api_token=identity.api_token, fleet=group.name, zones=zones,
        shell=group.name.apply(lambda group_name: shell_command(settings.region, group_name)),
        front_usd_per_hour=front_usd,
        replica_extra_usd_per_hour=catalog.AWS_PUBLIC_IPV4_USD_PER_HOUR, target_requests_per_hour=per_hour,
        dns_records=dns_records,
    )


def shell_command(region: str, group: str) -> str:
    """A shell on one of the fleet's instances, through SSM Session Manager (no SSH port is ever open)."""
    first = (f"aws autoscaling describe-auto-scaling-groups --region {region} --auto-scaling-group-names {group} "
             "--query 'AutoScalingGroups[0].Instances[0].InstanceId' --output text")
    return f"aws ssm start-session --region {region} --target $({first})"


def _cloudfront(name: str, settings: Settings, balancer: aws.lb.LoadBalancer, forward: dict, tags: dict[str, str],
                child: pulumi.ResourceOptions, component: pulumi.ComponentResource,
                ) -> tuple[pulumi.Output[str], aws.lb.ListenerRule]:
    """CloudFront in front of the internal ALB through a VPC origin: https://<id>.cloudfront.net with CloudFront's
    certificate, no caching, every method and viewer header passed on. The ALB forwards only requests that carry
    the secret header (defence in depth: the VPC origin already keeps everyone else out). Returns the endpoint and
    the listener rule that forwards to the target group."""
    generated = random.RandomPassword(
        f"{name}-origin-secret", length=48, special=False,  # letters and digits: no ALB wildcard (* ?) in it
        opts=pulumi.ResourceOptions(parent=component))
    secret = pulumi.Output.secret(generated.result)  # mocked runs don't apply the provider's secret marking
    listener = aws.lb.Listener(
        f"{name}-http", load_balancer_arn=balancer.arn, port=HTTP_PORT, protocol="HTTP",
        default_actions=[{"type": "fixed-response", "fixed_response": {
            "status_code": "403", "content_type": "text/plain", "message_body": "Forbidden: use the endpoint URL"}}],
        tags=tags, opts=child,
    )
    from_cloudfront = aws.lb.ListenerRule(
        f"{name}-from-cloudfront", listener_arn=listener.arn, priority=1, actions=[forward],
        conditions=[{"http_header": {"http_header_name": ORIGIN_HEADER, "values": [secret]}}],
        tags=tags, opts=child,
    )
    # CloudFront's way into the VPC: a network interface of its own in the ALB's subnets, over AWS's network. HTTP:
    # the ALB has no certificate of its own without a domain (ACM issues none for elb.amazonaws.com); the provider
    # wants the HTTPS port and TLS versions all the same. Deploying takes up to 15 minutes (AWS).
    vpc_origin = aws.cloudfront.VpcOrigin(
        f"{name}-vpc-origin",
        vpc_origin_endpoint_config={
            "name": f"{settings.project}-{settings.stack}", "arn": balancer.arn,
            "http_port": HTTP_PORT, "https_port": HTTPS_PORT, "origin_protocol_policy": "http-only",
            "origin_ssl_protocols": {"items": ["TLSv1.2"], "quantity": 1}},
        tags=tags, opts=child,
    )
    distribution = aws.cloudfront.Distribution(
        f"{name}-cdn",
        comment=f"SDXL fleet {settings.stack}",
        enabled=True, is_ipv6_enabled=True, http_version="http2and3", price_class="PriceClass_All",
        origins=[{
            "origin_id": "alb", "domain_name": balancer.dns_name,
            "vpc_origin_config": {
                "vpc_origin_id": vpc_origin.id,
                # The most CloudFront waits without a quota increase; the server's wait budget stays below it.
                "origin_read_timeout": catalog.CLOUDFRONT_ORIGIN_READ_TIMEOUT_MAX_S,
            },
            "custom_headers": [{"name": ORIGIN_HEADER, "value": secret}],
        }],
        default_cache_behavior={
            "target_origin_id": "alb", "viewer_protocol_policy": "redirect-to-https",
            "allowed_methods": ALL_METHODS, "cached_methods": ["GET", "HEAD"], "compress": False,
            "cache_policy_id": catalog.CLOUDFRONT_CACHING_DISABLED,
            "origin_request_policy_id": catalog.CLOUDFRONT_ALL_VIEWER_EXCEPT_HOST_HEADER,
        },
        restrictions={"geo_restriction": {"restriction_type": "none"}},
        viewer_certificate={"cloudfront_default_certificate": True},
        tags=tags, opts=child,
    )
    return pulumi.Output.concat("https://", distribution.domain_name), from_cloudfront


def _https_listener(name: str, settings: Settings, balancer: aws.lb.LoadBalancer, forward: dict,
                    tags: dict[str, str], child: pulumi.ResourceOptions,
                    ) -> tuple[str, pulumi.Output[list[dict[str, str]]], aws.lb.Listener]:
    """With `domain`: an ACM certificate validated through DNS, HTTPS on the ALB, HTTP redirected to it. The
    records to create (validation, and the domain itself) are logged while `pulumi up` waits, and exported.
    Returns the endpoint, the records and the HTTPS listener (the one that forwards to the target group)."""
    certificate = aws.acm.Certificate(f"{name}-certificate", domain_name=settings.domain, validation_method="DNS",
                                      tags=tags, opts=child)
    records = pulumi.Output.all(certificate.domain_validation_options, balancer.dns_name).apply(
        lambda args: dns_records(settings.domain, args[0], args[1]))
    records.apply(lambda found: [pulumi.log.info(
        f"create DNS record {r['name']} {r['type']} {r['value']} ({r['why']})", resource=certificate)
        for r in found])
    # Waits (up to 75 minutes) until ACM sees the validation record: the HTTPS listener needs an issued certificate.
    validated = aws.acm.CertificateValidation(f"{name}-certificate-validation",
                                              certificate_arn=certificate.arn, opts=child)
    https = aws.lb.Listener(
        f"{name}-https", load_balancer_arn=balancer.arn, port=HTTPS_PORT, protocol="HTTPS",
        ssl_policy=ALB_SSL_POLICY, certificate_arn=validated.certificate_arn, default_actions=[forward],
        tags=tags, opts=child,
    )
    aws.lb.Listener(
        f"{name}-http", load_balancer_arn=balancer.arn, port=HTTP_PORT, protocol="HTTP",
        default_actions=[{"type": "redirect", "redirect": {
            "protocol": "HTTPS", "port": str(HTTPS_PORT), "status_code": "HTTP_301"}}],
        tags=tags, opts=child,
    )
    return f"https://{settings.domain}", records, https


def dns_records(domain: str, validation: list, balancer_dns: str) -> list[dict[str, str]]:
    """What the domain's DNS must hold: ACM's validation record(s), then the domain pointing at the ALB."""
    found = [{"name": option["resource_record_name"], "type": option["resource_record_type"],
              "value": option["resource_record_value"], "why": "ACM certificate validation"}
             for option in validation or []]
    found.append({"name": domain, "type": "CNAME", "value": balancer_dns,
                  "why": "the endpoint (at a zone apex, a Route 53 alias record instead)"})
    return found
