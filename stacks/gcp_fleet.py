"""The GCP fleet: a regional managed instance group of GPU VMs behind Google's global external Application Load
Balancer, with a Google-managed certificate.

A private helper of stacks/gcp.py, imported by it alone. gcp.py builds what both modes share (the network, the
service account and its grants, the token secrets, the source bucket, the image, the parts of a VM's definition
that do not depend on the mode, SSH through IAP) and hands it over as `VmSpec`; everything below belongs to the
fleet only (the firewall for Google's front ends, two health checks, the instance template, the group and its
autoscaler, the backend service, URL maps, proxies, certificate, global address and forwarding rules, and Cloud
Armor for a narrowed `allowedCidrs`) and would double gcp.py without meaning anything to the single VM. This module
imports no target, so there is no cycle.

How a request travels: client --HTTPS--> Google's front end (the managed certificate) --HTTP--> a VM's server
port, which the firewall opens to Google's proxy and health-check ranges only. HTTP on port 80 redirects to HTTPS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from stacks import bootstrap, bundle, catalog, contract
from stacks.config import Settings

# Cloud Armor takes at most ten source ranges per rule.
ARMOR_RANGES_PER_RULE = 10
ARMOR_DEFAULT_RULE_PRIORITY = 2147483647  # the lowest priority: the rule every policy ends with
NAMED_PORT = "http"


@dataclass(frozen=True)
class VmSpec:
    """What every VM of the stack is, in both modes (built by stacks/gcp.py)."""

    network: gcp.compute.Network
    subnet: gcp.compute.Subnetwork
    ready: list[pulumi.Resource]  # the grants and secret versions a VM needs before it boots
    secrets: dict[str, str]  # variable -> Secret Manager secret id
    built: bundle.Bundle | None
    bucket: pulumi.Output[str] | None  # the source bucket's name
    api_token: pulumi.Output[str]  # secret
    labels: dict[str, str]
    image: str  # the DLVM image's self link
    image_disk_gb: int  # its own disk size
    names: Callable[..., str]  # (part[, limit]) -> a valid GCP name of this stack's
    network_tag: str  # what the stack's firewall rules target
    machine: dict  # machine_type, guest_accelerators, service_account, shielded_instance_config, labels
    metadata: dict[str, str]  # every metadata entry but the user data
    scheduling: dict


def armor_rules(cidrs: tuple[str, ...]) -> list[dict]:
    """Cloud Armor: allowedCidrs (ten per rule) may pass, everyone else gets 403 at Google's edge."""
    chunks = [list(cidrs[i:i + ARMOR_RANGES_PER_RULE]) for i in range(0, len(cidrs), ARMOR_RANGES_PER_RULE)]
    allow = [{"action": "allow", "priority": 1000 + index, "description": "allowedCidrs",
              "match": {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": chunk}}}
             for index, chunk in enumerate(chunks)]
    return [*allow, {"action": "deny(403)", "priority": ARMOR_DEFAULT_RULE_PRIORITY, "description": "everyone else",
                     "match": {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": ["*"]}}}]


def build(component: pulumi.ComponentResource, name: str, settings: Settings, *, child: pulumi.ResourceOptions,
          spec: VmSpec) -> dict[str, pulumi.Output]:
    """Every fleet resource, parented under `component`; returns the stack outputs (contract.fleet_outputs)."""
    zones = catalog.gcp_fleet_zones(settings.machine.gpu.key, settings.region)  # the group spans them all
    labels = spec.labels
    timeouts = bootstrap.ProxyTimeouts()
    warmup = bootstrap.first_boot_seconds(settings)

    # The server's port, from Google's front ends and health checkers only: nothing else reaches a VM.
    gcp.compute.Firewall(
        f"{name}-from-lb", name=spec.names("from-lb"), network=spec.network.id, direction="INGRESS",
        description="SDXL fleet: the server and its health checks, from Google's load balancer only",
        allows=[{"protocol": "tcp", "ports": [str(bootstrap.SERVER_PORT)]}],
        source_ranges=list(catalog.GOOGLE_FRONT_END_RANGES), target_tags=[spec.network_tag], opts=child,
    )
    # Two checks of the server's own /ready (it needs no token) on its port: the load balancer's, quick to stop
    # sending requests to a VM that is loading or draining; autohealing's, patient, so a server restart is waited
    # out and only a VM that stays broken (five minutes) is recreated.
    serving = gcp.compute.HealthCheck(
        f"{name}-health", name=spec.names("health"), check_interval_sec=10, timeout_sec=5, healthy_threshold=2,
        unhealthy_threshold=3, http_health_check={"port": bootstrap.SERVER_PORT, "request_path": contract.READY_ROUTE},
        opts=child,
    )
    healing = gcp.compute.HealthCheck(
        f"{name}-autoheal", name=spec.names("autoheal"), check_interval_sec=30, timeout_sec=10, healthy_threshold=1,
        unhealthy_threshold=10, http_health_check={"port": bootstrap.SERVER_PORT, "request_path": contract.READY_ROUTE},
        opts=child,
    )

    # A VM keeps the model, the images and the caches on its own boot disk: `diskGb` when set, else the image's
    # own size plus `dataDiskGb` of room. Encrypted at rest by Google-managed keys.
    disk_gb = settings.disk_gb or spec.image_disk_gb + settings.data_disk_gb
    front = bootstrap.FleetFront(time_limit=timeouts.answer,
                                 seconds_per_image=catalog.slowest_seconds_per_image((settings.machine,)))
    user_data = bootstrap.render_user_data(
        settings, cloud="gcp", location=settings.gcp_project, data_devices=[], secrets=spec.secrets,
        public_ip=None, built=spec.built, bucket=spec.bucket, fleet=front,
    )
    # Cattle: a preempted Spot VM is deleted, and the group creates a new one when capacity returns.
    scheduling = {**spec.scheduling, "instance_termination_action": "DELETE"} if settings.spot else spec.scheduling
    template = gcp.compute.InstanceTemplate(
        f"{name}-template",
        # Templates are immutable and the group refers to the current one: a new one (a generated name) is made
        # before the old one goes.
        name_prefix=spec.names("tpl", 37 - 1) + "-",
        description=f"SDXL fleet {settings.stack}: the same bootstrap, GPU and image as the single VM",
        **spec.machine,
        scheduling=scheduling,
        disks=[{"boot": True, "auto_delete": True, "source_image": spec.image, "disk_type": "pd-balanced",
                "disk_size_gb": disk_gb, "labels": labels}],
        # An ephemeral public address for outbound (PyPI, Docker Hub, the Hub) with no Cloud NAT to pay per VM
        # and per GB; inbound stays closed but for the firewall rule above.
        network_interfaces=[{"subnetwork": spec.subnet.id, "access_configs": [{"network_tier": "PREMIUM"}]}],
        tags=[spec.network_tag],
        metadata={**spec.metadata, "user-data": user_data},  # names where the tokens live, never the tokens
        opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
            delete_before_replace=False, depends_on=spec.ready,
            # A new image in the family must not silently roll out over the whole fleet.
            ignore_changes=["disks[0].sourceImage"],
        )),
    )
    group = gcp.compute.RegionInstanceGroupManager(
        f"{name}-group",
        name=spec.names("group"), region=settings.region, base_instance_name=spec.network_tag,
        versions=[{"name": "primary", "instance_template": template.self_link_unique}],
        distribution_policy_zones=zones,  # every zone of the region that offers the GPU, no other
        distribution_policy_target_shape="EVEN",  # what an autoscaled regional group supports (besides BALANCED)
        named_ports=[{"name": NAMED_PORT, "port": bootstrap.SERVER_PORT}],
        auto_healing_policies={"health_check": healing.id, "initial_delay_sec": bootstrap.FIRST_BOOT_GRACE_S},
        # A VM whose boot failed powers itself off (bootstrap: sdxl-idle-stop); the group recreates a VM that is
        # not running and that it did not stop (REPAIR), from the current template, so a fixed template heals it.
        instance_lifecycle_policy={"default_action_on_failure": "REPAIR", "force_update_on_repair": "YES"},
        # A changed template rolls out on its own: new VMs first (one per zone at a time, the least a regional
        # group allows), an old one goes only once its replacement is healthy, so capacity never drops.
        update_policy={
            "type": "PROACTIVE", "minimal_action": "REPLACE", "most_disruptive_allowed_action": "REPLACE",
            "replacement_method": "SUBSTITUTE", "max_surge_fixed": len(zones), "max_unavailable_fixed": 0,
            "instance_redistribution_type": "PROACTIVE", "min_ready_sec": 60,
        },
        # `pulumi up` does not wait for a first boot (12 to 25 minutes); /ready says when the fleet serves.
        wait_for_instances=False,
        opts=child,
    )
    per_hour = settings.target_requests_per_hour or catalog.target_requests_per_hour((settings.machine,))
    gcp.compute.RegionAutoscaler(
        f"{name}-autoscaler", name=spec.names("autoscaler"), region=settings.region, target=group.id,
        autoscaling_policy={
            "min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
            # A new VM's load is left out while it boots.
            "cooldown_period": warmup,
            # Scale out when the backends serve FLEET_TARGET_UTILISATION of the rate the backend service calls
            # their capacity (max_rate_per_instance below): at `per_hour` requests per VM.
            "load_balancing_utilization": {"target": catalog.FLEET_TARGET_UTILISATION},
            # Scale in one VM per ten minutes at most: a GPU's boot is long, a dip often short.
            "scale_in_control": {"max_scaled_in_replicas": {"fixed": 1}, "time_window_sec": 600},
        },
        opts=child,
    )

    narrowed = list(settings.allowed_cidrs) != ["0.0.0.0/0"]
    armor = gcp.compute.SecurityPolicy(
        f"{name}-armor", name=spec.names("armor"), description="SDXL fleet: allowedCidrs only",
        rules=armor_rules(settings.allowed_cidrs), opts=child,
    ) if narrowed else None
    backend = gcp.compute.BackendService(
        f"{name}-backend", name=spec.names("backend"), load_balancing_scheme="EXTERNAL_MANAGED",
        protocol="HTTP", port_name=NAMED_PORT, health_checks=serving.id,
        # Longer than the server's one deadline plus the upload, so the load balancer never cuts an answer the
        # server still sends; a VM that leaves finishes what it has within the same time.
        timeout_sec=int(timeouts.answer), connection_draining_timeout_sec=int(timeouts.answer),
        backends=[{"group": group.instance_group, "balancing_mode": "RATE", "capacity_scaler": 1.0,
                   "max_rate_per_instance": round(per_hour / 3600 / catalog.FLEET_TARGET_UTILISATION, 5)}],
        security_policy=armor.id if armor else None,
        opts=child,
    )
    address = gcp.compute.GlobalAddress(
        f"{name}-lb-ip", name=spec.names("lb-ip"), address_type="EXTERNAL", ip_version="IPV4", labels=labels,
        opts=child,
    )
    host = pulumi.Output.from_input(settings.domain) if settings.domain else address.address.apply(
        bootstrap.sslip_host)
    certificate = gcp.compute.ManagedSslCertificate(
        # A generated name: a new certificate (another domain) is made before the proxy lets go of the old one.
        f"{name}-certificate", managed={"domains": [host]},
        opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=False)),
    )
    urls = gcp.compute.URLMap(f"{name}-urls", name=spec.names("urls"), default_service=backend.id, opts=child)
    https_proxy = gcp.compute.TargetHttpsProxy(
        f"{name}-https-proxy", name=spec.names("https-proxy"), url_map=urls.id, ssl_certificates=[certificate.id],
        opts=child,
    )
    redirect = gcp.compute.URLMap(
        f"{name}-redirect", name=spec.names("redirect"),
        default_url_redirect={"https_redirect": True, "strip_query": False,
                              "redirect_response_code": "MOVED_PERMANENTLY_DEFAULT"},
        opts=child,
    )
    http_proxy = gcp.compute.TargetHttpProxy(f"{name}-http-proxy", name=spec.names("http-proxy"),
                                             url_map=redirect.id, opts=child)
    for part, proxy, port in (("https-rule", https_proxy, contract.HTTPS_PORT),
                              ("http-rule", http_proxy, contract.HTTP_PORT)):
        gcp.compute.GlobalForwardingRule(
            f"{name}-{part}", name=spec.names(part), target=proxy.id, ip_address=address.address,
            port_range=str(port), ip_protocol="TCP", load_balancing_scheme="EXTERNAL_MANAGED", labels=labels,
            opts=child,
        )

    dns_records = address.address.apply(lambda ip: [{
        "name": settings.domain, "type": "A", "value": ip,
        "why": "the endpoint: Google issues the certificate once the name resolves to the load balancer"}]
        if settings.domain else [])
    return contract.fleet_outputs(
        settings, endpoint=pulumi.Output.concat("https://", host), public_ip=address.address,
        api_token=spec.api_token, fleet=group.name, zones=zones,
        shell=group.name.apply(lambda group_name: shell_command(settings, group_name)),
        front_usd_per_hour=catalog.FLEET_FRONT_USD_PER_HOUR["gcp"], target_requests_per_hour=per_hour,
        replica_extra_usd_per_hour=catalog.GCP_VM_EXTERNAL_IPV4_USD_PER_HOUR,  # each VM's external address
        dns_records=dns_records,
    )


def shell_command(settings: Settings, group: str) -> str:
    """The fleet's VMs, and how to reach one: SSH through IAP with `ssh: true`, else its serial-console log."""
    listing = (f"gcloud compute instance-groups managed list-instances {group} --region {settings.region} "
               f"--project {settings.gcp_project}")
    then = ("gcloud compute ssh <instance> --zone <zone> --tunnel-through-iap" if settings.ssh
            else "gcloud compute instances get-serial-port-output <instance> --zone <zone>")
    return f"{listing}  # then: {then} --project {settings.gcp_project}"
