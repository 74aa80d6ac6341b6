"""The AWS fleet (maxReplicas above 1), evaluated through the real `__main__.py` under Pulumi mocks, with moto's
copy of EC2's per-AZ offerings and instance-type records."""

import base64
import gzip
import json
import re

import pytest
import yaml

from stacks import aws_fleet, bootstrap, catalog, config, contract
from tests.stacks.conftest import (
    CLOUDFRONT_PREFIX_LIST_ID,
    DLAMI_ROOT_DEVICE,
    DLAMI_ROOT_GB,
    FAKE_ALB_DNS,
    FAKE_AMI,
    FAKE_CLOUDFRONT_DOMAIN,
    ROOT,
    ec2_instance_types,
    ec2_offerings,
    is_rpc_secret,
    plain_strings,
    run_program,
    unwrap_rpc_secret,
)
from tests.stacks.test_gcp_fleet import assert_readme_fleet_row

FLEET = {"maxReplicas": "4"}
COMPONENT = "sdxl-endpoint:aws:GpuEndpoint"
GROUP = "aws:autoscaling/group:Group"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
TARGETS = "aws:lb/targetGroup:TargetGroup"
BALANCER = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
RULE = "aws:lb/listenerRule:ListenerRule"
DISTRIBUTION = "aws:cloudfront/distribution:Distribution"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SUBNET = "aws:ec2/subnet:Subnet"
VPC_ORIGIN = "aws:cloudfront/vpcOrigin:VpcOrigin"
TIMEOUTS = bootstrap.ProxyTimeouts()


def fleet_run(settings=None, **kwargs):
    return run_program({**FLEET, **(settings or {})}, **kwargs)


def offering_zones(instance_type: str, region: str = "us-east-1") -> list[str]:
    return sorted(o["Location"] for o in ec2_offerings(region) if o["InstanceType"] == instance_type)


def document(run) -> str:
    """The cloud-init document every instance of the fleet boots with, as cloud-init unpacks it."""
    return gzip.decompress(base64.b64decode(run.one(TEMPLATE).inputs["userData"])).decode()


def settings_env(run) -> dict[str, str]:
    files = {f["path"]: f for f in yaml.safe_load(document(run))["write_files"]}
    return dict(line.split("=", 1) for line in files[bootstrap.SETTINGS_FILE]["content"].splitlines())


def instance_subnets(run) -> dict[str, dict]:
    """The instances' public subnets, by name (behind CloudFront the internal ALB has subnets of its own)."""
    return {r.name: r.inputs for r in run.of_type(SUBNET) if r.name.startswith("sdxl-subnet-")}


def alb_subnets(run) -> dict[str, dict]:
    return {r.name: r.inputs for r in run.of_type(SUBNET) if r.name.startswith("sdxl-alb-subnet-")}


def group_named(run, name_part: str) -> dict:
    (found,) = [r.inputs for r in run.of_type(SECURITY_GROUP) if name_part in r.name]
    return found


def secret(value):
    assert is_rpc_secret(value), "not a Pulumi secret"
    return unwrap_rpc_secret(value)


# --- the group: where it runs, on what ----------------------------------------------------------------------------

@pytest.mark.parametrize("instance_type, region", [("g5.xlarge", "us-east-1"), ("g6e.xlarge", "us-east-1"),
                                                   ("g4dn.xlarge", "eu-west-1"), ("g6.xlarge", "us-west-2")])
def test_the_group_spans_exactly_the_azs_that_offer_the_type(instance_type, region):
    run = fleet_run({"instanceType": instance_type, "aws:region": region})
    zones = offering_zones(instance_type, region)
    assert len(zones) >= 2
    subnets = instance_subnets(run)
    assert sorted(s["availabilityZone"] for s in subnets.values()) == zones
    assert run.one(GROUP).inputs["vpcZoneIdentifiers"] == [f"sdxl-subnet-{z}-id" for z in zones]
    assert run.value(run.outputs["availabilityZone"]) == ",".join(zones)
    # Public subnets (outbound without a NAT gateway), one /24 each, none overlapping.
    assert all(s["mapPublicIpOnLaunch"] is True for s in subnets.values())
    assert len({s["cidrBlock"] for s in subnets.values()}) == len(zones)
    assert not run.of_type("aws:ec2/natGateway:NatGateway") and not run.of_type("aws:ec2/eip:Eip")


def test_a_type_in_one_az_gets_a_second_subnet_for_the_alb_but_instances_stay_where_it_is_offered():
    zones = offering_zones("p5.4xlarge", "ap-northeast-1")
    assert len(zones) == 1  # moto's real offerings: the case an ALB cannot serve from one AZ
    run = fleet_run({"instanceType": "p5.4xlarge", "aws:region": "ap-northeast-1"})
    subnets = sorted(s["availabilityZone"] for s in instance_subnets(run).values())
    assert len(subnets) == 2 and zones[0] in subnets
    assert sorted(s["availabilityZone"] for s in alb_subnets(run).values()) == subnets
    assert run.one(GROUP).inputs["vpcZoneIdentifiers"] == [f"sdxl-subnet-{zones[0]}-id"]
    assert len(run.one(BALANCER).inputs["subnets"]) == 2


def test_a_type_offered_nowhere_in_the_region_is_refused():
    with pytest.raises(config.ConfigError, match="not offered in any availability zone of us-west-1"):
        fleet_run({"instanceType": "g6e.xlarge", "aws:region": "us-west-1"})


def test_on_demand_fleet_launches_the_configured_type_with_the_same_hardening():
    run = fleet_run(preset="aws-g5")
    template = run.one(TEMPLATE).inputs
    assert template["instanceType"] == "g5.xlarge" and template["imageId"] == FAKE_AMI
    assert template["metadataOptions"] == {"httpEndpoint": "enabled", "httpTokens": "required",
                                           "httpPutResponseHopLimit": 2}  # IMDSv2 only
    (root,) = template["blockDeviceMappings"]
    assert root["deviceName"] == DLAMI_ROOT_DEVICE
    assert root["ebs"] == {"volumeSize": DLAMI_ROOT_GB + config.DEFAULT_DATA_DISK_GB, "volumeType": "gp3",
                           "encrypted": True, "deleteOnTermination": True}
    assert template["iamInstanceProfile"] == {"arn": run.state("aws:iam/instanceProfile:InstanceProfile")["arn"]}
    assert template["instanceInitiatedShutdownBehavior"] == "terminate"
    assert run.options(TEMPLATE)["ignore_changes"] == ["imageId"]  # a new DLAMI does not roll out by itself
    group = run.one(GROUP).inputs
    assert group["launchTemplate"] == {"id": "lt-0123456789abcdef0", "version": "1"}
    assert "mixedInstancesPolicy" not in group and group["capacityRebalance"] is False
    assert (group["minSize"], group["maxSize"]) == (1, 4) and "desiredCapacity" not in group


@pytest.mark.parametrize("size", [None, "60", "300"])
def test_the_root_disk_holds_the_data_the_single_instance_keeps_on_its_data_disk(size):
    run = fleet_run({"diskGb": size} if size else {"dataDiskGb": "150"})
    (root,) = run.one(TEMPLATE).inputs["blockDeviceMappings"]
    assert root["ebs"]["volumeSize"] == (int(size) if size else DLAMI_ROOT_GB + 150)
    assert not run.of_type("aws:ebs/volume:Volume") and not run.of_type("aws:ec2/volumeAttachment:VolumeAttachment")


@pytest.mark.parametrize("instance_type", sorted(o.name for o in catalog.AWS_OFFERS.values() if o.gpu_count == 1))
def test_no_cpu_only_or_small_gpu_type_appears_in_any_mixed_instances_list(instance_type):
    mix = catalog.aws_spot_mix(catalog.AWS_OFFERS[instance_type])
    assert mix[0].name == instance_type
    for offer in mix:
        # Judged from EC2's own record of the type, as moto keeps it, not from the catalog's word.
        facts = catalog.instance_facts(ec2_instance_types()[offer.name])
        assert catalog.why_unfit(facts) is None, offer.name
        assert all(g.manufacturer == "NVIDIA" and g.memory_mib >= 16 * 1024 * 0.93 for g in facts.gpus), offer.name
        assert facts.vcpus == mix[0].vcpus  # one quota class and size: the doctor's count holds


def test_spot_fleet_mixes_catalog_types_that_fit_with_capacity_rebalancing():
    run = fleet_run({"spot": "true"}, preset="aws-g5")
    group = run.one(GROUP).inputs
    assert group["capacityRebalance"] is True and "launchTemplate" not in group
    policy = group["mixedInstancesPolicy"]
    overrides = [o["instanceType"] for o in policy["launchTemplate"]["overrides"]]
    assert overrides == [o.name for o in catalog.aws_spot_mix(catalog.AWS_OFFERS["g5.xlarge"])]
    assert overrides[0] == "g5.xlarge" and "g6.xlarge" in overrides and len(overrides) >= 2
    for name in overrides:
        facts = catalog.instance_facts(ec2_instance_types()[name])
        assert catalog.why_unfit(facts) is None and facts.gpus[0].memory_mib >= 16 * 1024 * 0.93
    assert policy["launchTemplate"]["launchTemplateSpecification"] == {
        "launchTemplateId": "lt-0123456789abcdef0", "version": "1"}
    assert policy["instancesDistribution"] == {
        "onDemandBaseCapacity": 0, "onDemandPercentageAboveBaseCapacity": 0,
        "spotAllocationStrategy": "price-capacity-optimized"}
    assert "instanceMarketOptions" not in run.one(TEMPLATE).inputs  # the group asks for spot, per type


# --- health, timeouts, rollout, scaling ---------------------------------------------------------------------------

def test_health_checks_hit_ready_and_the_group_replaces_what_fails_them():
    run = fleet_run()
    health = run.one(TARGETS).inputs["healthCheck"]
    assert health["path"] == "/ready" and health["matcher"] == "200" and health["protocol"] == "HTTP"
    # The server's own /ready (public: a health check cannot send the token), on the port requests go to.
    assert health["port"] == str(bootstrap.SERVER_PORT) and run.one(TARGETS).inputs["port"] == bootstrap.SERVER_PORT
    group = run.one(GROUP).inputs
    assert group["healthCheckType"] == "ELB" and group["targetGroupArns"] == [run.state(TARGETS)["arn"]]
    # A first boot (a build, a 7 GB download) is not judged before it can have finished.
    assert group["healthCheckGracePeriod"] == bootstrap.FIRST_BOOT_GRACE_S >= bootstrap.FIRST_BOOT_BUILD_S
    assert "sdxl-health" not in document(run) and "8001" not in document(run)  # no health shim beside it


@pytest.mark.parametrize("settings", [{}, {"domain": "sdxl.example.com"}])
def test_timeouts_exceed_the_servers_and_its_wait_budget_stays_below_the_fronts_limit(settings):
    run = fleet_run(settings)
    request = float(settings_env(run)["SDXL_REQUEST_TIMEOUT"])
    budget = float(settings_env(run)["SDXL_MAX_WAIT_SECONDS"])
    batch = int(settings_env(run)["SDXL_MAX_BATCH"])
    # The server's own deadline: its 504 (with CORS headers) comes before any front's gateway error.
    assert request == (TIMEOUTS.request if settings else catalog.CLOUDFRONT_ORIGIN_READ_TIMEOUT_MAX_S - 5)
    # A full batch of the A10G's estimated images ends within it (3 of 16.5 s behind CloudFront).
    assert batch * catalog.GPU_THROUGHPUT["a10g"].seconds_per_image <= request
    assert batch == (bootstrap.SERVER_MAX_BATCH if settings else 3)
    balancer = run.one(BALANCER).inputs
    assert catalog.ALB_IDLE_TIMEOUT_MAX_S >= balancer["idleTimeout"] > request
    assert run.one(TARGETS).inputs["deregistrationDelay"] > request  # in-flight requests finish on the way out
    if settings:
        front = balancer["idleTimeout"]
        assert not run.of_type(DISTRIBUTION)
    else:
        front = secret(run.one(DISTRIBUTION).inputs["origins"])[0]["vpcOriginConfig"]["originReadTimeout"]
        assert front == catalog.CLOUDFRONT_ORIGIN_READ_TIMEOUT_MAX_S == 60  # no quota increase needed
    assert 0 < budget < request < front


def test_an_instance_whose_boot_failed_powers_off_and_so_ends_and_is_replaced():
    """No fleet instance bills a GPU through the 60-minute health-check grace after a failed boot step: its watcher
    powers it off (idle stop off), and a guest power-off terminates it, which the group replaces at once."""
    run = fleet_run()
    files = {f["path"]: f for f in yaml.safe_load(document(run))["write_files"]}
    watcher = files["/etc/systemd/system/sdxl-idle-stop.service"]["content"]
    assert f"ExecStart=/usr/bin/python3 {bootstrap.IDLE_SCRIPT} --minutes 0 --fleet\n" in watcher
    assert "sdxl-idle-stop.service" in yaml.safe_load(document(run))["runcmd"][2]
    assert run.one(TEMPLATE).inputs["instanceInitiatedShutdownBehavior"] == "terminate"


def test_the_readme_states_the_limits_behind_cloudfront_as_the_stack_sets_them():
    env = settings_env(fleet_run())
    per_image = catalog.GPU_THROUGHPUT["a10g"].seconds_per_image
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"deadline (`SDXL_REQUEST_TIMEOUT`) is {env['SDXL_REQUEST_TIMEOUT']} s instead of 300" in readme
    assert f"(`SDXL_MAX_WAIT_SECONDS`, {env['SDXL_MAX_WAIT_SECONDS']} s)" in readme
    assert f"(`SDXL_MAX_BATCH`: {env['SDXL_MAX_BATCH']} on an A10G" in readme
    assert (f"Long generations may still hit the {env['SDXL_REQUEST_TIMEOUT']}-second limit without a domain"
            in readme)
    assert f"`n=4` at 1024² (about {4 * per_image:.0f} s on an A10G" in readme and "For those, set `domain`" in readme


def test_a_changed_template_rolls_out_through_instance_refresh_without_dropping_capacity():
    run = fleet_run()
    refresh = run.one(GROUP).inputs["instanceRefresh"]
    assert refresh["strategy"] == "Rolling"
    assert refresh["preferences"]["minHealthyPercentage"] == 100  # never fewer healthy instances than wanted
    assert refresh["preferences"]["maxHealthyPercentage"] == 200  # launch before terminate
    assert run.one(GROUP).inputs["instanceMaintenancePolicy"] == {"minHealthyPercentage": 100,
                                                                   "maxHealthyPercentage": 200}
    # The group follows the template's latest version, so a new one is what the refresh rolls out.
    assert run.one(TEMPLATE).inputs["updateDefaultVersion"] is True
    assert run.one(GROUP).inputs["waitForCapacityTimeout"] == "0"  # `pulumi up` does not wait for first boots


@pytest.mark.parametrize("settings, per_hour", [
    ({}, catalog.target_requests_per_hour((catalog.AWS_OFFERS["g5.xlarge"],))),
    ({"targetRequestsPerHour": "600"}, 600),
])
def test_scaling_tracks_alb_requests_per_target_from_the_gpus_estimated_throughput(settings, per_hour):
    run = fleet_run(settings)
    policy = run.one("aws:autoscaling/policy:Policy").inputs
    assert policy["policyType"] == "TargetTrackingScaling" and policy["autoscalingGroupName"] == "sdxl-endpoint-test"
    tracking = policy["targetTrackingConfiguration"]
    label = f"{run.state(BALANCER)['arnSuffix']}/{run.state(TARGETS)['arnSuffix']}"
    assert tracking["predefinedMetricSpecification"] == {"predefinedMetricType": "ALBRequestCountPerTarget",
                                                          "resourceLabel": label}
    assert tracking["targetValue"] == pytest.approx(per_hour / 60, abs=1e-3)  # the metric is per minute
    assert run.value(run.outputs["targetRequestsPerHour"]) == per_hour
    estimate = catalog.GPU_THROUGHPUT["a10g"]
    assert per_hour < estimate.images_per_hour or settings  # the default leaves headroom below the estimate
    assert run.one(TARGETS).inputs["loadBalancingAlgorithmType"] == "least_outstanding_requests"


@pytest.mark.parametrize("settings, routing, name", [
    ({}, RULE, "sdxl-from-cloudfront"),  # behind CloudFront: the rule that forwards requests with the secret header
    ({"domain": "sdxl.example.com"}, LISTENER, "sdxl-https"),  # with `domain`: the HTTPS listener, after ACM
])
def test_the_scaling_policy_waits_until_the_alb_routes_to_the_target_group(settings, routing, name):
    """ALBRequestCountPerTarget names a target group that must already belong to the load balancer (AWS CDK adds
    the same dependency: loadBalancerAttached), and with `domain` the HTTPS listener waits for ACM's validation."""
    run = fleet_run(settings)
    (urn,) = [u for u in run.monitor.resources if u.endswith(f"{routing}::{name}")]
    assert urn in run.options("aws:autoscaling/policy:Policy")["dependencies"]


# --- who can reach what -------------------------------------------------------------------------------------------

def test_instances_accept_traffic_only_from_the_load_balancers_security_group():
    run = fleet_run()
    instances = group_named(run, "instance-sg")
    alb_group_id = "sdxl-alb-sg-id"
    # One port: the server's, for requests and health checks alike; the load balancer reaches no other.
    assert [(r["fromPort"], r["toPort"]) for r in instances["ingress"]] == [
        (bootstrap.SERVER_PORT, bootstrap.SERVER_PORT)]
    assert [(r["fromPort"], r["toPort"]) for r in group_named(run, "alb-sg")["egress"]] == [
        (bootstrap.SERVER_PORT, bootstrap.SERVER_PORT)]
    for rule in instances["ingress"]:
        assert rule["securityGroups"] == [alb_group_id] and rule["protocol"] == "tcp"
        assert not rule.get("cidrBlocks") and not rule.get("ipv6CidrBlocks") and not rule.get("prefixListIds")
    (interface,) = run.one(TEMPLATE).inputs["networkInterfaces"]
    assert interface["securityGroups"] == ["sdxl-instance-sg-id"]
    assert "vpcSecurityGroupIds" not in run.one(TEMPLATE).inputs
    # No separate rule resources that could open anything else, and no SSH anywhere.
    assert not [r for r in run.mocks.resources if "Ingress" in r.typ or "securityGroupRule" in r.typ]
    assert all(r["fromPort"] != 22 for g in run.of_type(SECURITY_GROUP) for r in g.inputs["ingress"])


def test_the_alb_is_reached_only_through_cloudfront_prefix_list_and_secret_header():
    run = fleet_run()
    # The prefix list is looked up by AWS's name for it, and is the ALB's only source.
    (lookup,) = [c.args for c in run.mocks.calls if c.token.endswith("getManagedPrefixList")]
    assert lookup["name"] == catalog.CLOUDFRONT_ORIGIN_FACING_PREFIX_LIST
    assert lookup["name"] == "com.amazonaws.global.cloudfront.origin-facing"
    (rule,) = group_named(run, "alb-sg")["ingress"]
    assert rule["prefixListIds"] == [CLOUDFRONT_PREFIX_LIST_ID] and (rule["fromPort"], rule["toPort"]) == (80, 80)
    assert not rule.get("cidrBlocks") and not rule.get("ipv6CidrBlocks") and not rule.get("securityGroups")
    # Without the header: 403. With it: the fleet.
    (listener,) = run.of_type(LISTENER)
    assert listener.inputs["port"] == 80 and listener.inputs["defaultActions"] == [{"type": "fixed-response",
        "fixedResponse": {"statusCode": "403", "contentType": "text/plain",
                          "messageBody": "Forbidden: use the endpoint URL"}}]
    forward = run.one(RULE).inputs
    assert forward["actions"] == [{"type": "forward", "targetGroupArn": run.state(TARGETS)["arn"]}]
    # Both carry the secret, so the engine keeps each whole list encrypted in the state.
    (condition,) = secret(forward["conditions"])
    header = condition["httpHeader"]
    (origin,) = secret(run.one(DISTRIBUTION).inputs["origins"])
    (custom,) = origin["customHeaders"]
    (expected,) = header["values"]
    sent = custom["value"]
    assert header["httpHeaderName"] == custom["name"] == aws_fleet.ORIGIN_HEADER
    assert sent == expected and len(sent) == 48 and sent.replace("-", "").isalnum()
    assert sent != run.value(run.outputs["apiToken"])
    generated = [r.inputs for r in run.of_type("random:index/randomPassword:RandomPassword")
                 if r.name == "sdxl-origin-secret"]
    assert generated == [{"length": 48, "special": False}]  # letters and digits only: no ALB wildcard (* ?) in it
    # The secret stays a secret everywhere it appears.
    for resource in run.mocks.resources:
        if resource.typ != "random:index/randomPassword:RandomPassword":
            assert not [s for s in plain_strings(resource.inputs) if sent in s], resource.typ
    for name, output in run.outputs.items():
        assert sent not in str(run.value(output)), name


def test_cloudfront_passes_every_method_and_header_and_caches_nothing():
    run = fleet_run()
    cdn = run.one(DISTRIBUTION).inputs
    cdn = {**cdn, "origins": secret(cdn["origins"])}
    behavior = cdn["defaultCacheBehavior"]
    assert behavior["cachePolicyId"] == "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"  # CachingDisabled
    assert behavior["originRequestPolicyId"] == "b689b0a8-53d0-40ab-baf2-68738e2966ac"  # AllViewerExceptHostHeader
    assert sorted(behavior["allowedMethods"]) == sorted(["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"])
    assert behavior["viewerProtocolPolicy"] == "redirect-to-https" and "forwardedValues" not in behavior
    (origin,) = cdn["origins"]
    assert origin["domainName"] == FAKE_ALB_DNS and origin["originId"] == behavior["targetOriginId"]
    assert cdn["viewerCertificate"] == {"cloudfrontDefaultCertificate": True}
    assert run.value(run.outputs["endpoint"]) == f"https://{FAKE_CLOUDFRONT_DOMAIN}"
    assert run.value(run.outputs["dnsRecords"]) == []


def test_without_a_domain_cloudfront_reaches_an_internal_alb_through_a_vpc_origin():
    run = fleet_run()
    balancer = run.one(BALANCER).inputs
    assert balancer["internal"] is True and balancer["loadBalancerType"] == "application"
    # A VPC origin names the ALB by its ARN; CloudFront's origin uses it, with no public custom origin left.
    (vpc_origin,) = run.of_type(VPC_ORIGIN)
    endpoint = vpc_origin.inputs["vpcOriginEndpointConfig"]
    assert endpoint["arn"] == run.state(BALANCER)["arn"]
    assert (endpoint["httpPort"], endpoint["httpsPort"]) == (80, 443)
    assert endpoint["originProtocolPolicy"] == "http-only"  # the ALB has no certificate without a domain
    assert endpoint["originSslProtocols"] == {"items": ["TLSv1.2"], "quantity": 1}
    (origin,) = secret(run.one(DISTRIBUTION).inputs["origins"])
    assert "customOriginConfig" not in origin and origin["domainName"] == FAKE_ALB_DNS
    assert origin["vpcOriginConfig"] == {"vpcOriginId": f"{vpc_origin.name}-id", "originReadTimeout": 60}
    # The ALB's own subnets: one per AZ of the instances, no public addresses, and no route table of the stack
    # (the VPC's main one: the local route only), as AWS asks of a VPC origin.
    own = alb_subnets(run)
    assert balancer["subnets"] == [f"{name}-id" for name in own]
    assert sorted(s["availabilityZone"] for s in own.values()) == sorted(
        s["availabilityZone"] for s in instance_subnets(run).values())
    assert all(s["mapPublicIpOnLaunch"] is False for s in own.values())
    associated = {r.inputs["subnetId"] for r in run.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")}
    assert not associated & {f"{name}-id" for name in own}
    assert {f"{name}-id" for name in instance_subnets(run)} <= associated
    # The VPC keeps an internet gateway (AWS requires one for a VPC origin; the instances use it to reach out).
    assert run.of_type("aws:ec2/internetGateway:InternetGateway")


def test_with_a_domain_the_alb_stays_internet_facing_and_there_is_no_vpc_origin():
    run = fleet_run({"domain": "sdxl.example.com"})
    assert run.one(BALANCER).inputs["internal"] is False
    assert not run.of_type(VPC_ORIGIN) and not alb_subnets(run)
    assert run.one(BALANCER).inputs["subnets"] == [f"{name}-id" for name in instance_subnets(run)]


def test_behind_cloudfront_the_fleet_keeps_out_of_azs_vpc_origins_do_not_serve():
    """moto's us-east-1e is AZ id use1-az3, which AWS's VPC origin table leaves out of us-east-1: neither an ALB
    node nor an instance goes there behind CloudFront (an ALB sends nothing to targets in an AZ it is not in)."""
    zones = offering_zones("p5.4xlarge", "us-east-1")
    assert "us-east-1e" in zones and len(zones) >= 3
    served = [z for z in zones if z != "us-east-1e"]
    run = fleet_run({"instanceType": "p5.4xlarge"})
    assert run.one(GROUP).inputs["vpcZoneIdentifiers"] == [f"sdxl-subnet-{z}-id" for z in served]
    assert sorted(s["availabilityZone"] for s in alb_subnets(run).values()) == served
    # With a domain there is no VPC origin, and the group spans every AZ that offers the type.
    run = fleet_run({"instanceType": "p5.4xlarge", "domain": "sdxl.example.com"})
    assert run.one(GROUP).inputs["vpcZoneIdentifiers"] == [f"sdxl-subnet-{z}-id" for z in zones]


def test_the_vpc_origin_zones_refuse_a_type_offered_only_where_vpc_origins_do_not_serve():
    ids = {"us-east-1a": "use1-az6", "us-east-1e": "use1-az3"}
    assert aws_fleet.vpc_origin_zones(["us-east-1a", "us-east-1e"], ids, "g5.xlarge", "us-east-1") == ["us-east-1a"]
    with pytest.raises(config.ConfigError, match="only in AZs that CloudFront VPC origins do not serve"):
        aws_fleet.vpc_origin_zones(["us-east-1e"], ids, "g5.xlarge", "us-east-1")
    # The ALB's second AZ, for a type offered in one, is never an excluded one either.
    assert aws_fleet.alb_zones(["us-east-1a"], {"us-east-1a": "use1-az6", "us-east-1b": "use1-az3",
                                                "us-east-1c": "use1-az2"},
                               catalog.CLOUDFRONT_VPC_ORIGIN_EXCLUDED_AZ_IDS) == ["us-east-1a", "us-east-1c"]


def test_a_region_without_vpc_origins_is_refused_for_a_fleet_without_a_domain():
    assert "ap-southeast-6" not in catalog.CLOUDFRONT_VPC_ORIGIN_REGIONS  # not in AWS's table
    assert {"us-east-1", "eu-west-1", "us-west-2", "ap-northeast-1"} <= catalog.CLOUDFRONT_VPC_ORIGIN_REGIONS
    with pytest.raises(config.ConfigError) as refused:
        fleet_run({"aws:region": "ap-southeast-6"}, preview=True)
    assert re.search(r"aws:region = 'ap-southeast-6': an AWS fleet without a domain is reached through a CloudFront "
                     r"VPC origin.*\n.*fix: pulumi config set aws:region us-east-1, or pulumi config set domain",
                     str(refused.value)), str(refused.value)
    # A single instance there, or a fleet with a domain, is not concerned.
    for settings in ({"maxReplicas": "1"}, {"domain": "sdxl.example.com"}):
        values = {"sdxl-endpoint:cloud": "aws", "sdxl-endpoint:maxReplicas": "4", "aws:region": "ap-southeast-6",
                  **{f"sdxl-endpoint:{k}": v for k, v in settings.items()}}
        assert config.validate(values, stack="t", project="sdxl-endpoint").region == "ap-southeast-6"


def test_the_readme_says_what_the_hop_from_cloudfront_to_the_alb_is_now():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "plain HTTP over the internet" not in readme and "this stack does not build one yet" not in readme
    assert "CloudFront reaches an internal ALB through a VPC origin" in readme
    assert "never crosses the internet" in readme


def test_with_a_domain_the_alb_serves_https_with_an_acm_certificate_and_no_cloudfront():
    run = fleet_run({"domain": "sdxl.example.com", "allowedCidrs": ["203.0.113.0/24", "2001:db8::/32"]})
    assert not run.of_type(DISTRIBUTION) and not run.of_type(RULE)
    assert not [c for c in run.mocks.calls if c.token.endswith("getManagedPrefixList")]
    certificate = run.one("aws:acm/certificate:Certificate").inputs
    assert (certificate["domainName"], certificate["validationMethod"]) == ("sdxl.example.com", "DNS")
    validation = run.one("aws:acm/certificateValidation:CertificateValidation").inputs
    listeners = {r.inputs["port"]: r.inputs for r in run.of_type(LISTENER)}
    assert listeners[443]["protocol"] == "HTTPS" and listeners[443]["certificateArn"] == validation["certificateArn"]
    assert listeners[443]["sslPolicy"] == aws_fleet.ALB_SSL_POLICY
    assert listeners[443]["defaultActions"] == [{"type": "forward", "targetGroupArn": run.state(TARGETS)["arn"]}]
    assert listeners[80]["defaultActions"][0]["redirect"] == {"protocol": "HTTPS", "port": "443",
                                                              "statusCode": "HTTP_301"}
    ingress = {r["fromPort"]: r for r in group_named(run, "alb-sg")["ingress"]}
    assert sorted(ingress) == [80, 443]
    assert ingress[443]["cidrBlocks"] == ["203.0.113.0/24"] and ingress[443]["ipv6CidrBlocks"] == ["2001:db8::/32"]
    assert run.value(run.outputs["endpoint"]) == "https://sdxl.example.com"
    records = run.value(run.outputs["dnsRecords"])
    assert [r["type"] for r in records] == ["CNAME", "CNAME"]
    assert records[0]["name"].startswith("_") and records[0]["value"].endswith(".acm-validations.aws.")
    assert records[1] == {"name": "sdxl.example.com", "type": "CNAME", "value": FAKE_ALB_DNS,
                          "why": "the endpoint (at a zone apex, a Route 53 alias record instead)"}


# --- the bootstrap every instance boots with ----------------------------------------------------------------------

def test_the_instances_boot_the_fleet_variant_within_the_16_kb_limit():
    run = fleet_run({"apiToken": "t" * 64, "hfToken": "hf_" + "x" * 40,
                     "corsOrigins": [f"https://app{i}.example.com" for i in range(20)]})
    packed = base64.b64decode(run.one(TEMPLATE).inputs["userData"])
    assert len(packed) < bootstrap.USER_DATA_LIMIT_BYTES
    text = document(run)
    files = {f["path"] for f in yaml.safe_load(text)["write_files"]}
    assert bootstrap.CADDYFILE not in files and bootstrap.IDLE_SCRIPT in files  # the watcher, for a failed boot
    assert "ExecStart=/usr/local/bin/sdxl-boot data-disk" not in text
    assert sorted(f for f in files if f.startswith(bootstrap.HOST_LIB)) == sorted(
        [bootstrap.CLOUD_HELPER, bootstrap.IDLE_SCRIPT])  # no health shim
    assert "t" * 64 not in text and "hf_" + "x" * 40 not in text  # names of parameters, never tokens
    assert "SDXL_API_TOKEN=/sdxl-endpoint/test/api-token HF_TOKEN=/sdxl-endpoint/test/hf-token" in text


def test_the_fleet_reads_the_same_bundle_from_the_same_private_bucket_as_the_role_allows():
    run = fleet_run()
    key = run.one("aws:s3/bucketObjectv2:BucketObjectv2").inputs["key"]
    bucket = run.state("aws:s3/bucket:Bucket")["bucket"]
    assert f"sdxl-boot build aws us-east-1 {bucket} {key}" in document(run)
    statements = {s["sid"]: s for s in json.loads(run.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])[
        "Statement"]}
    assert statements["ReadItsSourceBundle"]["resources"] == [f"arn:aws:s3:::{bucket}/{key}"]
    assert run.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs["restrictPublicBuckets"] is True
    # The group launches only once the bundle its instances download first is there, and their role may read it.
    assert {run.urn("aws:s3/bucketObjectv2:BucketObjectv2"), run.urn("aws:iam/rolePolicy:RolePolicy")} <= set(
        run.options(GROUP)["dependencies"])


# --- outputs, ownership, config -----------------------------------------------------------------------------------

def test_outputs_keep_the_contract_and_add_the_fleets():
    run = fleet_run({"minReplicas": "2"})
    assert tuple(run.outputs) == contract.OUTPUT_NAMES + contract.FLEET_OUTPUT_NAMES
    outputs = {k: run.value(v) for k, v in run.outputs.items()}
    offer = catalog.AWS_OFFERS["g5.xlarge"]
    # The ALB-hour (an internal ALB has no public address, a VPC origin no hourly price), and each instance's
    # address (public IPv4 bills by the hour).
    address = catalog.AWS_PUBLIC_IPV4_USD_PER_HOUR
    front = catalog.FLEET_FRONT_USD_PER_HOUR["aws"]
    assert outputs["hourlyCostUsd"] == pytest.approx(2 * (offer.usd_per_hour + address) + front)
    assert outputs["hourlyCostUsdAtMax"] == pytest.approx(4 * (offer.usd_per_hour + address) + front)
    assert (outputs["minReplicas"], outputs["maxReplicas"]) == (2, 4)
    assert outputs["fleet"] == outputs["instanceId"] == run.one(GROUP).inputs["name"] == "sdxl-endpoint-test"
    assert outputs["publicIp"] is None and outputs["gpu"] == "A10G" and outputs["instanceType"] == "g5.xlarge"
    assert outputs["endpoint"] in outputs["curlExample"]
    assert outputs["shell"].startswith("aws ssm start-session --region us-east-1 --target $(aws autoscaling "
                                       "describe-auto-scaling-groups --region us-east-1 --auto-scaling-group-names "
                                       "sdxl-endpoint-test ")
    assert run.is_secret(run.outputs["apiToken"]) and len(outputs["apiToken"]) == 48


def test_every_resource_is_a_descendant_of_the_component():
    for settings in ({"spot": "true"}, {"domain": "sdxl.example.com"}):
        run = fleet_run(settings)
        assert len(run.monitor.get_registered_resources()) >= 30
        assert run.orphans(COMPONENT) == []
        assert all(r.provider and "providers:aws" in r.provider for r in run.mocks.resources
                   if r.typ.startswith("aws:"))


def test_tags_mark_every_taggable_resource_and_what_instances_launch():
    run = fleet_run({"ttl": "2030-01-31T18:00:00Z"}, stack="pr-7")
    for typ in (GROUP, TEMPLATE, TARGETS, BALANCER, DISTRIBUTION, SECURITY_GROUP, SUBNET):
        for resource in run.of_type(typ):
            tags = resource.inputs["tags"]
            tags = {t["key"]: t["value"] for t in tags} if isinstance(tags, list) else tags
            assert tags["sdxl-endpoint:stack"] == "pr-7" and tags["sdxl-endpoint:ttl"] == "2030-01-31T18:00:00Z", typ
    launched = {s["resourceType"]: s["tags"] for s in run.one(TEMPLATE).inputs["tagSpecifications"]}
    assert set(launched) == {"instance", "volume"} and launched["instance"]["sdxl-endpoint:stack"] == "pr-7"


def test_the_preset_is_a_fleet_of_g5_with_its_prices_in_its_comment():
    text = (ROOT / "stacks" / "Pulumi.aws-g5-fleet.yaml").read_text()
    preset = yaml.safe_load(text)["config"]
    assert preset["sdxl-endpoint:instanceType"] == "g5.xlarge"
    assert (preset["sdxl-endpoint:minReplicas"], preset["sdxl-endpoint:maxReplicas"]) == (1, 4)
    run = run_program(preset="aws-g5-fleet")
    outputs = {k: run.value(v) for k, v in run.outputs.items()}
    assert f"~${outputs['hourlyCostUsd']:.2f}/h at rest" in text
    assert f"~${outputs['hourlyCostUsdAtMax']:.2f}/h at 4" in text
    assert_readme_fleet_row("aws-g5-fleet", outputs, catalog.AWS_OFFERS["g5.xlarge"])


def test_the_readme_states_each_gpus_target_from_the_catalog():
    readme = " ".join((ROOT / "README.md").read_text().split())
    per_hour = {key: catalog.target_requests_per_hour(
        (next(o for o in catalog.AWS_OFFERS.values() if o.gpu.key == key),)) for key in ("a10g", "l4", "t4")}
    assert (f"about {per_hour['a10g']} requests per hour per A10G, {per_hour['l4']} per L4, {per_hour['t4']} per T4"
            in readme)


@pytest.mark.parametrize("settings, pattern", [
    ({"idleStopMinutes": "45"}, r"idleStopMinutes = 45: does not apply to a fleet.*\n.*fix: pulumi config rm "
                                r"idleStopMinutes"),
    ({"idleStopMinutes": "0"}, r"idleStopMinutes = 0: does not apply to a fleet"),
    ({"minReplicas": "0"}, r"minReplicas = 0: a fleet keeps at least one replica.*\n.*fix: pulumi config set "
                           r"minReplicas 1"),
    ({"allowedCidrs": ["203.0.113.0/24"]}, r"allowedCidrs = \['203.0.113.0/24'\]: an AWS fleet without a domain is "
                                           r"reached through CloudFront.*\n.*fix: pulumi config set domain"),
    ({"targetRequestsPerHour": "-1"}, r"targetRequestsPerHour = '-1': must be a whole number"),
])
def test_fleet_config_mistakes_are_refused_with_a_fix(settings, pattern):
    with pytest.raises(config.ConfigError) as refused:
        fleet_run(settings, preview=True)
    import re

    assert re.search(pattern, str(refused.value)), str(refused.value)


@pytest.mark.parametrize("settings", [{"cloud": "aws"}, {"cloud": "gcp", "gcp:project": "my-project-123"}])
def test_min_replicas_zero_on_a_single_instance_is_refused_not_ignored(settings):
    """maxReplicas 1 is the single instance: minReplicas 0 would be silently ignored (it never scales to zero by
    it; idleStopMinutes does), so it is refused with both ways out."""
    with pytest.raises(config.ConfigError) as refused:
        run_program({**settings, "minReplicas": "0", "maxReplicas": "1"}, preview=True)
    assert ("minReplicas = 0: a single instance (maxReplicas 1) does not scale to zero by minReplicas; "
            "idleStopMinutes powers it off when idle instead") in str(refused.value)
    assert ("fix: pulumi config rm minReplicas, or pulumi config set maxReplicas 2 and pulumi config set "
            "minReplicas 1 for a fleet") in str(refused.value)
    assert not run_program({**settings, "minReplicas": "1", "maxReplicas": "1"}).namespace["settings"].fleet


def test_the_default_idle_stop_does_not_count_as_asking_for_one_and_single_stacks_refuse_fleet_keys():
    # The CLI passes Pulumi.yaml's default (30) as if it were set.
    assert fleet_run({"idleStopMinutes": "30"}).namespace["settings"].fleet
    with pytest.raises(config.ConfigError, match=r"targetRequestsPerHour = 100: applies to AWS and GCP fleets only"):
        run_program({"targetRequestsPerHour": "100"}, preview=True)
    # A fixed size above 1 is a fleet too.
    assert fleet_run({"minReplicas": "3", "maxReplicas": "3"}).one(GROUP).inputs["minSize"] == 3
