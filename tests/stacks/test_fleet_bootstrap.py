"""The fleet variant of the one cloud-init bootstrap (stacks/bootstrap.py FleetFront): the same real validators as
the single instance's (`cloud-init schema`, `systemd-analyze verify`, shellcheck), AWS's 16 KB limit, and what
differs: no Caddy, no idle stop (a failed boot still powers off), no data disk, the port for the load balancer
(requests and health checks), the server's deadline, wait budget and batch size under the front's limit."""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from stacks import bootstrap, catalog
from stacks.bootstrap import FleetFront, ProxyTimeouts, render_cloud_init
from tests.stacks.test_bootstrap import (
    BIN,
    LONG_ORIGINS,
    VARIANTS,
    check_failure_units,
    cloud_init_binary,
    directives,
    files_of,
    ordered_after,
    run_tool,
    unit,
    unit_graph,
    verify_units,
)

A10G_SECONDS = catalog.GPU_THROUGHPUT["a10g"].seconds_per_image
CLOUDFRONT = FleetFront(time_limit=catalog.CLOUDFRONT_ORIGIN_READ_TIMEOUT_MAX_S, seconds_per_image=A10G_SECONDS)
BEHIND_LB = FleetFront(time_limit=ProxyTimeouts().answer,
                       seconds_per_image=catalog.GPU_THROUGHPUT["l4"].seconds_per_image)
FLEET_VARIANTS = {
    "aws-build-cloudfront": dataclasses.replace(VARIANTS["aws-build"], fleet=CLOUDFRONT, data_devices=(),
                                                public_ip=None),
    "gcp-pull-lb": dataclasses.replace(VARIANTS["gcp-pull"], fleet=BEHIND_LB, data_devices=(), public_ip=None),
    "worst-case-size": dataclasses.replace(VARIANTS["worst-case-size"], fleet=CLOUDFRONT, data_devices=(),
                                           public_ip=None, cors_origins=LONG_ORIGINS),
}


def settings_of(document: str) -> dict[str, str]:
    content = files_of(document)[bootstrap.SETTINGS_FILE]["content"]
    return dict(line.split("=", 1) for line in content.splitlines())


@pytest.mark.parametrize("name", FLEET_VARIANTS)
def test_valid_per_cloud_init_schema_and_within_awss_16_kb_once_gzipped(name: str, tmp_path: Path) -> None:
    document = render_cloud_init(FLEET_VARIANTS[name])
    packed = base64.b64decode(bootstrap.aws_user_data(document))
    assert len(packed) <= 15 * 1024 < bootstrap.USER_DATA_LIMIT_BYTES  # with headroom, as the single instance's
    (tmp_path / "user-data").write_text(document)
    checked = run_tool([cloud_init_binary(), "schema", "--config-file", str(tmp_path / "user-data")])
    assert checked.returncode == 0 and "Valid" in checked.stdout, checked.stdout + checked.stderr


@pytest.mark.parametrize("name", ["aws-build-cloudfront", "gcp-pull-lb"])
def test_units_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    files = files_of(render_cloud_init(FLEET_VARIANTS[name]))
    units = {Path(p).name: f["content"] for p, f in files.items() if p.endswith(".service")}
    assert verify_units(units, tmp_path) == []


def test_no_caddy_no_data_disk_and_every_unit_enabled() -> None:
    document = render_cloud_init(FLEET_VARIANTS["aws-build-cloudfront"])
    files = files_of(document)
    written = sorted(Path(p).stem for p in files if p.endswith(".service") and "@" not in p)
    assert written == ["sdxl-data", "sdxl-docker", "sdxl-gpu-check", "sdxl-idle-stop", "sdxl-image", "sdxl-model",
                       "sdxl-ready", "sdxl-server"]
    assert f"/etc/systemd/system/{bootstrap.FAILED_UNIT}.service" in files  # started by OnFailure=, never enabled
    assert set(written) <= set(bootstrap.UNITS)
    assert bootstrap.CADDYFILE not in files
    runcmd = yaml.safe_load(document)["runcmd"]
    assert sorted(runcmd[2][2:]) == sorted(runcmd[3][3:]) == [f"{n}.service" for n in written]


def test_every_boot_step_that_can_fail_the_boot_starts_the_failure_unit_when_it_fails() -> None:
    check_failure_units(FLEET_VARIANTS["aws-build-cloudfront"])


@pytest.mark.parametrize("name", FLEET_VARIANTS)
def test_a_failed_boot_powers_the_instance_off_but_idleness_never_does(name: str) -> None:
    """Fleets have no idle stop (they shrink instead), but a failed boot step must not bill a GPU through the whole
    health-check grace: the single instance's watcher runs with idle stop off (0 minutes), whatever
    idleStopMinutes says, and powers off after a failed or never-ready boot; the group then replaces the instance."""
    variant = FLEET_VARIANTS[name]
    assert variant.idle_stop_minutes == 30  # the default is still set: a fleet ignores it
    files = files_of(render_cloud_init(variant))
    watcher = directives(unit(files, "sdxl-idle-stop"))
    assert watcher["ExecStart"] == [f"/usr/bin/python3 {bootstrap.IDLE_SCRIPT} --minutes 0 --fleet"]
    assert watcher["Restart"] == ["always"]
    assert "so the group replaces it" in watcher["Description"][0]
    assert files[bootstrap.IDLE_SCRIPT]["content"] == bootstrap.shipped("idle_stop.py")


def test_the_fleets_watcher_powers_off_after_a_failed_boot_step_and_never_for_idleness() -> None:
    """The watcher the fleet runs, driven as its unit starts it (`--minutes 0`), with the failure marker sdxl-boot
    writes: it powers off once the failed grace has passed, and an idle, ready server is never stopped."""
    from image.host import idle_stop  # the file the bootstrap writes (test above)

    (argument,) = re.findall(r"--minutes (\S+)", unit(files_of(render_cloud_init(FLEET_VARIANTS["gcp-pull-lb"])),
                                                       "sdxl-idle-stop"))
    failed = idle_stop.IdleTracker(float(argument) * 60)
    seen = idle_stop.Observation(ready=False, failed="gpu-check: no GPU")
    start = 1_800_000_000.0  # wall-clock time, as the watcher reads it
    assert not failed.observe(start, seen)
    assert not failed.observe(start + idle_stop.FAILED_GRACE_MINUTES * 60 - 60, seen)
    assert failed.observe(start + idle_stop.FAILED_GRACE_MINUTES * 60, seen)  # 10 minutes, not the 60-minute grace
    assert idle_stop.FAILED_GRACE_MINUTES * 60 < bootstrap.FIRST_BOOT_GRACE_S
    idle = idle_stop.IdleTracker(float(argument) * 60)
    assert not any(idle.observe(start + t, idle_stop.Observation(ready=True, last_request=start))
                   for t in range(0, 86400, 60))  # a day without a request
    readme = " ".join((bootstrap.HOST_TEMPLATES.parent.parent / "README.md").read_text().split())
    assert f"{idle_stop.FAILED_GRACE_MINUTES} minutes after the failure" in readme
    assert f"never ready is powered off after {idle_stop.BOOT_GRACE_MINUTES // 60} hours" in readme


def test_the_data_directory_is_on_the_instances_own_disk_with_the_single_instances_layout() -> None:
    graph = unit_graph(render_cloud_init(FLEET_VARIANTS["aws-build-cloudfront"]))
    data = graph["sdxl-data.service"]
    assert "docker.service" in data["Before"]  # Docker's data root lives in it
    assert data["ExecStart"] == [
        f"/usr/bin/install -d -m 0755 {bootstrap.DATA_DIR} {bootstrap.DATA_DIR}/docker {bootstrap.DATA_DIR}/bundles",
        f"/usr/bin/install -d -m 0755 -o 10001 -g 10001 {bootstrap.MODEL_CACHE_DIR}",
        "/usr/local/bin/sdxl-boot phase data-disk-ready device=root-disk",
    ]
    # The same user the image runs as and the boot script gives the cache to.
    script = (bootstrap.HOST_TEMPLATES / "sdxl-boot.sh").read_text()
    assert re.search(rf"^CONTAINER_UID={bootstrap.CONTAINER_UID}\b", script, re.MULTILINE)
    assert f"USER {bootstrap.CONTAINER_UID}:{bootstrap.CONTAINER_UID}" in (
        bootstrap.HOST_TEMPLATES.parent / "Dockerfile").read_text()
    for name in ("sdxl-docker.service", "sdxl-image.service", "sdxl-server.service", "sdxl-ready.service"):
        assert "sdxl-data.service" in ordered_after(graph, name), name
    assert {"sdxl-image.service", "sdxl-gpu-check.service"} <= ordered_after(graph, "sdxl-server.service")


@pytest.mark.parametrize("name", FLEET_VARIANTS)
def test_the_server_port_alone_is_published_for_the_load_balancer_and_its_health_checks(name: str) -> None:
    from server.app import PUBLIC_PATHS

    document = render_cloud_init(FLEET_VARIANTS[name])
    files = files_of(document)
    (run,) = directives(unit(files, "sdxl-server"))["ExecStart"]
    assert f"--publish 0.0.0.0:{bootstrap.SERVER_PORT}:{bootstrap.SERVER_PORT}" in run
    assert run.count("--publish") == 1
    assert "the firewall admits the load balancer only" in unit(files, "sdxl-server")
    # The load balancers' health checks ask the server's own /ready, which needs no token (they cannot send one):
    # no host service answers them on a port of its own.
    assert "/ready" in PUBLIC_PATHS
    assert [p for p in files if p.startswith(bootstrap.HOST_LIB)] == [bootstrap.CLOUD_HELPER, bootstrap.IDLE_SCRIPT]
    assert "sdxl-health" not in document and "8001" not in document


def test_embedded_shell_is_the_same_shellcheck_clean_boot_script(tmp_path: Path) -> None:
    files = files_of(render_cloud_init(FLEET_VARIANTS["aws-build-cloudfront"]))
    script = files[bootstrap.BOOT_SCRIPT]["content"]
    assert script == bootstrap.shipped("sdxl-boot.sh")
    target = tmp_path / "sdxl-boot"
    target.write_text(script)
    assert run_tool([str(BIN / "shellcheck"), "--severity=style", str(target)]).returncode == 0
    # Every sdxl-boot command the fleet's units run is one the script knows.
    units = "".join(f["content"] for p, f in files.items() if p.endswith(".service"))
    usage = run_tool(["bash", str(target)]).stderr
    commands = set(re.findall(rf"{bootstrap.BOOT_SCRIPT} ([a-z-]+)", units))
    assert commands and all(f"{c}|" in usage or f"{c} " in usage for c in commands), commands


@pytest.mark.parametrize("front, deadline, budget, batch", [
    # Behind CloudFront (60 s): the server's own 504 at 55 s, its 429 beyond 45 s of estimated wait, and batches
    # of 3 A10G images (16.5 s each, estimated) so merged requests finish within the deadline.
    (CLOUDFRONT, 55.0, 45.0, 3),
    # Behind a load balancer whose timeout the stack sets above the server's: the server's usual deadline.
    (BEHIND_LB, ProxyTimeouts().request, ProxyTimeouts().request - 10, bootstrap.SERVER_MAX_BATCH),
])
def test_the_server_answers_before_the_fronts_limit(front: FleetFront, deadline: float, budget: float,
                                                    batch: int) -> None:
    variant = dataclasses.replace(FLEET_VARIANTS["aws-build-cloudfront"], fleet=front)
    settings = settings_of(render_cloud_init(variant))
    assert float(settings["SDXL_REQUEST_TIMEOUT"]) == deadline < front.time_limit
    assert float(settings["SDXL_MAX_WAIT_SECONDS"]) == budget < deadline
    assert int(settings["SDXL_MAX_BATCH"]) == batch
    assert batch * front.seconds_per_image <= deadline or batch == 1  # a full batch ends before the deadline
    assert settings["SDXL_FORWARDED_ALLOW_IPS"] == "*"  # the firewall admits the load balancer alone
    single = settings_of(render_cloud_init(VARIANTS["aws-build"]))  # single: Caddy's timeouts, no budget
    assert "SDXL_MAX_WAIT_SECONDS" not in single and "SDXL_MAX_BATCH" not in single
    assert float(single["SDXL_REQUEST_TIMEOUT"]) == ProxyTimeouts().request


def test_a_gpu_too_slow_for_two_images_in_the_deadline_still_batches_one() -> None:
    slow = FleetFront(time_limit=60, seconds_per_image=catalog.GPU_THROUGHPUT["t4"].seconds_per_image)
    assert slow.max_batch(ProxyTimeouts()) == 1


def test_the_fleets_batch_cap_never_exceeds_the_servers_default() -> None:
    from server.settings import Settings as ServerSettings

    assert ServerSettings.model_fields["max_batch"].default == bootstrap.SERVER_MAX_BATCH


def test_the_server_reads_the_fleets_settings_as_they_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings file goes to the container through `docker --env-file`: the server's own settings class reads
    each variable as the fleet writes it, the wait budget included."""
    from server.settings import Settings as ServerSettings

    settings = settings_of(render_cloud_init(FLEET_VARIANTS["aws-build-cloudfront"]))
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    parsed = ServerSettings()
    assert parsed.max_wait_seconds == 45 < parsed.request_timeout == 55 < CLOUDFRONT.time_limit
    assert parsed.max_batch == 3
    assert parsed.port == bootstrap.SERVER_PORT and parsed.cors_origins == list(VARIANTS["aws-build"].cors_origins)
