"""The GCP fleet (maxReplicas above 1), evaluated through the real `__main__.py` under Pulumi mocks."""

import ipaddress

import pytest
import yaml

from stacks import bootstrap, catalog, config, contract, gcp_fleet
from tests.stacks.conftest import (
    FAKE_DLVM_DISK_GB,
    FAKE_GCP_ADDRESS,
    ROOT,
    is_rpc_secret,
    plain_strings,
    run_program,
    unwrap_rpc_secret,
)
from tests.stacks.test_gcp import FIREWALL, GCP_NAME_RE, PROJECT

FLEET = {"cloud": "gcp", **PROJECT, "machineType": "g2-standard-4", "maxReplicas": "4"}
COMPONENT = "sdxl-endpoint:gcp:GpuEndpoint"
GROUP = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
AUTOSCALER = "gcp:compute/regionAutoscaler:RegionAutoscaler"
BACKEND = "gcp:compute/backendService:BackendService"
HEALTH = "gcp:compute/healthCheck:HealthCheck"
RULE = "gcp:compute/globalForwardingRule:GlobalForwardingRule"
CERTIFICATE = "gcp:compute/managedSslCertificate:ManagedSslCertificate"


def fleet_run(settings=None, **kwargs):
    """The real program on an L4 fleet of up to 4 VMs, with these settings on top."""
    return run_program({**FLEET, **(settings or {})}, **kwargs)


def user_data(run) -> str:
    raw = run.one(TEMPLATE).inputs["metadata"]
    return (unwrap_rpc_secret(raw) if is_rpc_secret(raw) else raw)["user-data"]


def settings_env(run) -> dict[str, str]:
    files = {f["path"]: f for f in yaml.safe_load(user_data(run))["write_files"]}
    return dict(line.split("=", 1) for line in files[bootstrap.SETTINGS_FILE]["content"].splitlines())


def health_checks(run) -> dict[str, dict]:
    return {r.name: r.inputs for r in run.of_type(HEALTH)}


@pytest.mark.parametrize("machine_type, region", [("g2-standard-4", "us-central1"), ("n1-standard-4", "us-east4"),
                                                  ("g2-standard-8", "europe-west4")])
def test_the_group_spans_exactly_the_regions_zones_that_offer_the_gpu(machine_type, region):
    offer = catalog.GCP_OFFERS[machine_type]
    zones = [z for z in catalog.GCP_ACCELERATOR_ZONES[offer.gpu.key] if z.startswith(region + "-")]
    run = fleet_run({"machineType": machine_type, "gcp:region": region, "gcp:zone": zones[0]})
    group = run.one(GROUP).inputs
    assert group["distributionPolicyZones"] == zones and len(zones) >= 2
    assert group["region"] == region and run.value(run.outputs["availabilityZone"]) == ",".join(zones)
    # Cheaper GPU-less zones of the same region are never in it.
    every_zone_of_region = {z for zs in catalog.GCP_ACCELERATOR_ZONES.values() for z in zs if z.startswith(region)}
    assert set(group["distributionPolicyZones"]) <= every_zone_of_region


def test_the_template_has_the_same_gpu_scheduling_image_and_bootstrap_as_the_single_vm():
    fleet = fleet_run({"gpu": "t4", "machineType": "n1-standard-4"}).one(TEMPLATE).inputs
    single = run_program({"cloud": "gcp", **PROJECT, "machineType": "n1-standard-4"}).one(
        "gcp:compute/instance:Instance").inputs
    assert fleet["machineType"] == single["machineType"] == "n1-standard-4"
    assert fleet["guestAccelerators"] == single["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 1}]
    assert fleet["scheduling"] == single["scheduling"]  # TERMINATE on host maintenance
    assert fleet["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert fleet["serviceAccount"] == single["serviceAccount"]
    assert fleet["shieldedInstanceConfig"] == single["shieldedInstanceConfig"]
    (disk,) = fleet["disks"]
    assert disk["sourceImage"] == single["bootDisk"]["initializeParams"]["image"]  # the DLVM family's image
    assert disk["boot"] is True and disk["autoDelete"] is True and disk["diskType"] == "pd-balanced"
    assert disk["diskSizeGb"] == FAKE_DLVM_DISK_GB + config.DEFAULT_DATA_DISK_GB  # the data on its own disk
    metadata = fleet["metadata"]
    assert metadata["install-nvidia-driver"] == "True" and metadata["enable-oslogin"] == "TRUE"
    assert metadata["block-project-ssh-keys"] == "TRUE"


def test_spot_vms_of_a_fleet_are_deleted_on_preemption_and_recreated_by_the_group():
    scheduling = fleet_run({"spot": "true"}).one(TEMPLATE).inputs["scheduling"]
    assert scheduling["provisioningModel"] == "SPOT" and scheduling["onHostMaintenance"] == "TERMINATE"
    assert scheduling["instanceTerminationAction"] == "DELETE"


def test_the_template_is_replaced_before_its_predecessor_goes_and_a_new_image_does_not_roll_out():
    run = fleet_run()
    template = run.one(TEMPLATE).inputs
    assert "name" not in template and template["namePrefix"].endswith("-") and len(template["namePrefix"]) <= 37
    options = run.options(TEMPLATE)
    assert options["delete_before_replace"] is False and options["ignore_changes"] == ["disks[0].sourceImage"]
    assert run.one(GROUP).inputs["versions"] == [{"name": "primary",
                                                  "instanceTemplate": run.state(TEMPLATE)["selfLinkUnique"]}]


def test_a_vm_whose_boot_failed_powers_off_and_the_group_recreates_it_from_the_current_template():
    """A guest power-off leaves the VM TERMINATED, not deleted; a MIG repairs (recreates) a VM that is not running
    and that it did not stop, unless told to do nothing, and `force_update_on_repair` builds it from the current
    template, so a fixed template heals the fleet."""
    run = fleet_run()
    document = yaml.safe_load(user_data(run))
    watcher = {f["path"]: f for f in document["write_files"]}["/etc/systemd/system/sdxl-idle-stop.service"]
    assert f"ExecStart=/usr/bin/python3 {bootstrap.IDLE_SCRIPT} --minutes 0 --fleet\n" in watcher["content"]
    assert "sdxl-idle-stop.service" in document["runcmd"][2]
    assert run.one(GROUP).inputs["instanceLifecyclePolicy"] == {"defaultActionOnFailure": "REPAIR",
                                                                 "forceUpdateOnRepair": "YES"}


def test_autohealing_and_the_load_balancer_check_ready_and_a_first_boot_has_its_time():
    run = fleet_run()
    checks = health_checks(run)
    assert {c["httpHealthCheck"]["requestPath"] for c in checks.values()} == {"/ready"}
    # The server's own /ready (public: a health check cannot send the token), on the port the backend serves.
    assert {c["httpHealthCheck"]["port"] for c in checks.values()} == {bootstrap.SERVER_PORT}
    assert run.one(GROUP).inputs["namedPorts"] == [{"name": gcp_fleet.NAMED_PORT, "port": bootstrap.SERVER_PORT}]
    healing = run.one(GROUP).inputs["autoHealingPolicies"]
    assert healing["healthCheck"] == "sdxl-autoheal-id"
    assert bootstrap.FIRST_BOOT_BUILD_S < healing["initialDelaySec"] <= catalog.GCP_AUTOHEALING_MAX_DELAY_S
    # Autohealing waits out a server restart; the load balancer stops sending within half a minute.
    patience = checks["sdxl-autoheal"]["checkIntervalSec"] * checks["sdxl-autoheal"]["unhealthyThreshold"]
    assert patience >= 300
    serving = checks["sdxl-health"]
    assert serving["checkIntervalSec"] * serving["unhealthyThreshold"] <= 30
    assert run.one(BACKEND).inputs["healthChecks"] == "sdxl-health-id"


def test_a_changed_template_rolls_out_proactively_without_dropping_capacity():
    run = fleet_run()
    policy = run.one(GROUP).inputs["updatePolicy"]
    zones = run.one(GROUP).inputs["distributionPolicyZones"]
    assert (policy["type"], policy["minimalAction"], policy["replacementMethod"]) == ("PROACTIVE", "REPLACE",
                                                                                     "SUBSTITUTE")
    assert policy["maxUnavailableFixed"] == 0  # an old VM goes only once its replacement serves
    assert policy["maxSurgeFixed"] == len(zones)  # a regional group's fixed surge: 0 or at least its zones


@pytest.mark.parametrize("settings, per_hour", [
    ({}, catalog.target_requests_per_hour((catalog.GCP_OFFERS["g2-standard-4"],))),
    ({"targetRequestsPerHour": "360"}, 360),
])
def test_the_autoscaler_works_between_min_and_max_on_lb_utilisation_with_a_rate_from_the_catalog(settings, per_hour):
    run = fleet_run({"minReplicas": "2", **settings})
    policy = run.one(AUTOSCALER).inputs["autoscalingPolicy"]
    assert (policy["minReplicas"], policy["maxReplicas"]) == (2, 4)
    assert policy["loadBalancingUtilization"] == {"target": catalog.FLEET_TARGET_UTILISATION}
    assert policy["cooldownPeriod"] == bootstrap.FIRST_BOOT_BUILD_S
    assert run.one(AUTOSCALER).inputs["target"] == "sdxl-group-id"
    (backend,) = run.one(BACKEND).inputs["backends"]
    assert backend["balancingMode"] == "RATE" and backend["group"] == run.state(GROUP)["instanceGroup"]
    # It scales out when a VM serves per_hour requests: the utilisation target of its stated capacity.
    scale_out_rps = backend["maxRatePerInstance"] * policy["loadBalancingUtilization"]["target"]
    assert scale_out_rps * 3600 == pytest.approx(per_hour, rel=1e-3)
    assert run.value(run.outputs["targetRequestsPerHour"]) == per_hour


def test_the_load_balancer_waits_longer_than_the_server_and_the_wait_budget_stays_below_it():
    run = fleet_run()
    backend = run.one(BACKEND).inputs
    env = settings_env(run)
    request, budget = float(env["SDXL_REQUEST_TIMEOUT"]), float(env["SDXL_MAX_WAIT_SECONDS"])
    assert backend["loadBalancingScheme"] == "EXTERNAL_MANAGED" and backend["protocol"] == "HTTP"
    assert backend["timeoutSec"] > request == bootstrap.ProxyTimeouts().request
    assert backend["connectionDrainingTimeoutSec"] > request  # a VM that leaves finishes its requests
    assert 0 < budget < backend["timeoutSec"] and budget < request
    assert backend["portName"] == "http" and run.one(GROUP).inputs["namedPorts"] == [
        {"name": "http", "port": bootstrap.SERVER_PORT}]


def test_https_with_a_managed_certificate_for_the_lbs_own_address_and_http_redirects():
    run = fleet_run()
    (certificate,) = run.of_type(CERTIFICATE)
    host = f"{FAKE_GCP_ADDRESS.replace('.', '-')}.sslip.io"
    assert certificate.inputs["managed"] == {"domains": [host]} and "name" not in certificate.inputs
    assert run.value(run.outputs["endpoint"]) == f"https://{host}"
    assert run.value(run.outputs["publicIp"]) == FAKE_GCP_ADDRESS
    rules = {r.inputs["portRange"]: r.inputs for r in run.of_type(RULE)}
    assert sorted(rules) == ["443", "80"]
    assert all(r["loadBalancingScheme"] == "EXTERNAL_MANAGED" and r["ipAddress"] == FAKE_GCP_ADDRESS
               for r in rules.values())
    https = run.one("gcp:compute/targetHttpsProxy:TargetHttpsProxy").inputs
    assert rules["443"]["target"] == "sdxl-https-proxy-id" and https["sslCertificates"] == ["sdxl-certificate-id"]
    assert rules["80"]["target"] == "sdxl-http-proxy-id"
    maps = {r.name: r.inputs for r in run.of_type("gcp:compute/uRLMap:URLMap")}
    assert maps["sdxl-urls"]["defaultService"] == "sdxl-backend-id"
    assert maps["sdxl-redirect"]["defaultUrlRedirect"]["httpsRedirect"] is True
    assert run.value(run.outputs["dnsRecords"]) == []


def test_with_a_domain_the_certificate_is_for_it_and_its_a_record_is_an_output():
    run = fleet_run({"domain": "sdxl.example.com"})
    assert run.one(CERTIFICATE).inputs["managed"] == {"domains": ["sdxl.example.com"]}
    assert run.value(run.outputs["endpoint"]) == "https://sdxl.example.com"
    (record,) = run.value(run.outputs["dnsRecords"])
    assert (record["name"], record["type"], record["value"]) == ("sdxl.example.com", "A", FAKE_GCP_ADDRESS)


@pytest.mark.parametrize("ssh", ["false", "true"])
def test_vms_are_reached_only_from_googles_front_ends_on_the_servers_port(ssh):
    run = fleet_run({"ssh": ssh})
    rules = [r.inputs for r in run.of_type(FIREWALL)]
    tags = run.one(TEMPLATE).inputs["tags"]
    for rule in rules:
        assert rule["direction"] == "INGRESS" and rule["targetTags"] == tags
        if rule["allows"] == [{"protocol": "tcp", "ports": ["22"]}]:
            assert ssh == "true" and rule["sourceRanges"] == ["35.235.240.0/20"]  # IAP's TCP forwarding only
            continue
        assert sorted(rule["sourceRanges"]) == sorted(["35.191.0.0/16", "130.211.0.0/22"])
        assert rule["allows"] == [{"protocol": "tcp", "ports": [str(bootstrap.SERVER_PORT)]}]  # requests, checks
    assert len(rules) == (2 if ssh == "true" else 1)
    # No rule admits the internet, and nothing opens 80/443 on the VMs themselves.
    assert not [r for r in rules if "0.0.0.0/0" in r["sourceRanges"]]
    assert not run.of_type("gcp:compute/address:Address") and not run.of_type("gcp:compute/instance:Instance")


def test_a_narrowed_allowed_cidrs_becomes_a_cloud_armor_policy_that_denies_everyone_else():
    cidrs = [f"198.51.{i}.0/24" for i in range(12)]
    run = fleet_run({"allowedCidrs": cidrs})
    policy = run.one("gcp:compute/securityPolicy:SecurityPolicy").inputs
    allowed = [r for r in policy["rules"] if r["action"] == "allow"]
    assert [len(r["match"]["config"]["srcIpRanges"]) for r in allowed] == [10, 2]  # ten ranges per rule at most
    assert sum((r["match"]["config"]["srcIpRanges"] for r in allowed), []) == cidrs
    (last,) = [r for r in policy["rules"] if r["priority"] == gcp_fleet.ARMOR_DEFAULT_RULE_PRIORITY]
    assert last["action"] == "deny(403)" and last["match"]["config"]["srcIpRanges"] == ["*"]
    assert run.one(BACKEND).inputs["securityPolicy"] == "sdxl-armor-id"
    assert "securityPolicy" not in fleet_run().one(BACKEND).inputs
    assert all(ipaddress.ip_network(c) for c in cidrs)


def test_outputs_keep_the_contract_and_add_the_fleets():
    run = fleet_run(stack="dev")
    assert tuple(run.outputs) == contract.OUTPUT_NAMES + contract.FLEET_OUTPUT_NAMES
    outputs = {k: run.value(v) for k, v in run.outputs.items()}
    offer = catalog.GCP_OFFERS["g2-standard-4"]
    front = catalog.FLEET_FRONT_USD_PER_HOUR["gcp"]
    per_vm = offer.usd_per_hour + catalog.GCP_VM_EXTERNAL_IPV4_USD_PER_HOUR  # each VM's external IPv4, as on AWS
    assert outputs["hourlyCostUsd"] == pytest.approx(per_vm + front)
    assert outputs["hourlyCostUsdAtMax"] == pytest.approx(4 * per_vm + front)
    assert outputs["fleet"] == outputs["instanceId"] == "sdxl-dev-group"
    assert outputs["shell"].startswith("gcloud compute instance-groups managed list-instances sdxl-dev-group "
                                       "--region us-central1 --project my-project-123")
    assert run.is_secret(run.outputs["apiToken"])
    token = outputs["apiToken"]
    assert token not in user_data(run)
    for resource in run.mocks.resources:
        if resource.typ != "random:index/randomPassword:RandomPassword":
            assert not [s for s in plain_strings(resource.inputs) if token in s], resource.typ


@pytest.mark.parametrize("stack", ["dev", "Feature_Branch.v2", "pr-1234-" + "very-long-branch-name-" * 4])
def test_every_resource_name_is_a_valid_gcp_name(stack):
    run = fleet_run({"ssh": "true", "allowedCidrs": ["203.0.113.0/24"]}, stack=stack)
    names = [r.inputs["name"] for r in run.mocks.resources if r.typ.startswith("gcp:compute/") and "name" in r.inputs]
    assert len(names) == len(set(names)) >= 14
    assert all(GCP_NAME_RE.match(n) and len(n) <= 63 for n in names), names
    prefix = run.one(TEMPLATE).inputs["namePrefix"]
    assert GCP_NAME_RE.match(prefix.rstrip("-")) and len(prefix) <= 37


def test_every_resource_is_a_descendant_of_the_component():
    run = fleet_run({"ssh": "true", "spot": "true", "allowedCidrs": ["203.0.113.0/24"]})
    assert len(run.monitor.get_registered_resources()) >= 25
    assert run.orphans(COMPONENT) == []
    assert all(r.provider and "providers:gcp" in r.provider for r in run.mocks.resources if r.typ.startswith("gcp:"))


def test_the_vms_boot_the_fleet_variant():
    text = user_data(fleet_run())
    files = {f["path"] for f in yaml.safe_load(text)["write_files"]}
    assert bootstrap.CADDYFILE not in files and bootstrap.IDLE_SCRIPT in files  # the watcher, for a failed boot
    assert sorted(f for f in files if f.startswith(bootstrap.HOST_LIB)) == sorted(
        [bootstrap.CLOUD_HELPER, bootstrap.IDLE_SCRIPT])  # no health shim
    assert "sdxl-health.service" not in text and "8001" not in text
    assert "ExecStart=/usr/local/bin/sdxl-boot data-disk" not in text
    assert "gcp my-project-123 SDXL_API_TOKEN=sdxl-test-api-token" in text


def test_the_preset_is_an_l4_fleet_that_leaves_the_project_to_the_user():
    text = (ROOT / "stacks" / "Pulumi.gcp-l4-fleet.yaml").read_text()
    preset = yaml.safe_load(text)["config"]
    assert "gcp:project" not in preset and preset["sdxl-endpoint:machineType"] == "g2-standard-4"
    assert (preset["sdxl-endpoint:minReplicas"], preset["sdxl-endpoint:maxReplicas"]) == (1, 4)
    with pytest.raises(config.ConfigError, match=r"gcp:project: required"):
        run_program(preset="gcp-l4-fleet", preview=True)
    run = run_program(PROJECT, preset="gcp-l4-fleet")
    outputs = {k: run.value(v) for k, v in run.outputs.items()}
    assert f"~${outputs['hourlyCostUsd']:.2f}/h at rest" in text
    assert f"~${outputs['hourlyCostUsdAtMax']:.2f}/h at 4" in text
    assert_readme_fleet_row("gcp-l4-fleet", outputs, catalog.GCP_OFFERS["g2-standard-4"])


def assert_readme_fleet_row(preset: str, outputs: dict, offer: catalog.Offer) -> None:
    """The README's presets row for a fleet carries the stack's own prices, from the catalog, as the hosted
    presets' rows do (the price column's date is the table's note: catalog.PRICES_AS_OF)."""
    readme = (ROOT / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{preset}` |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    maximum = outputs["maxReplicas"]
    assert cells[2:5] == [f"{outputs['minReplicas']} to {maximum} x {offer.name}", f"NVIDIA {offer.gpu.model}",
                          f"{offer.gpu.memory_gb} GB"]
    assert cells[5] == f"{outputs['hourlyCostUsd']:.2f} at rest, {outputs['hourlyCostUsdAtMax']:.2f} at {maximum}"
    assert f"Prices are approximate list prices as of {catalog.PRICES_AS_OF}" in readme


def test_fleet_config_mistakes_are_refused_with_a_fix():
    with pytest.raises(config.ConfigError) as refused:
        fleet_run({"idleStopMinutes": "10", "minReplicas": "0"}, preview=True)
    message = str(refused.value)
    assert "has 2 problems" in message and "idleStopMinutes = 10: does not apply to a fleet" in message
    assert "minReplicas = 0: a fleet keeps at least one replica" in message


def test_the_readme_says_how_to_watch_the_managed_certificate_with_the_apis_own_field_names_and_states():
    """The gcloud --format paths are the SslCertificate resource's JSON names, and the states the README names are
    the API's, both read from Google's own compute client; without a domain, the fallback is to set one."""
    import json
    import re

    from google.cloud import compute_v1

    managed = compute_v1.SslCertificateManagedSslCertificate
    described = json.loads(compute_v1.SslCertificate.to_json(compute_v1.SslCertificate(
        managed=managed(domains=["203-0-113-10.sslip.io"], status="ACTIVE",
                        domain_status={"203-0-113-10.sslip.io": "ACTIVE"}))))
    readme = " ".join((ROOT / "README.md").read_text().split())
    paths = set()
    for fmt in re.findall(r"gcloud compute ssl-certificates (?:list|describe) [^`]*--format='\w+\(([^)]*)\)'", readme):
        paths |= {p.strip() for p in fmt.split(",")}
    assert {"managed.status", "managed.domainStatus"} <= paths
    for path in paths - {"name"}:
        value = described
        for part in path.split("."):
            value = value[part]  # a KeyError is a field the API does not have
    states = set(re.findall(r"`(PROVISIONING[A-Z_]*|ACTIVE)`", readme))
    assert {"PROVISIONING", "ACTIVE"} <= states <= {s.name for s in managed.Status}
    assert "set `domain` to a name of your own" in readme
