"""The one cloud-init bootstrap (stacks/bootstrap.py + image/host/): real validators on every variant
(`cloud-init schema`, shellcheck, `caddy validate`, `systemd-analyze verify`), AWS's 16 KB limit, the
units' dependencies, and its wiring into both stacks."""

from __future__ import annotations

import ast
import base64
import dataclasses
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stacks import bootstrap, bundle
from stacks.bootstrap import (
    BootstrapValues,
    LocalCaddy,
    ProxyTimeouts,
    SourceBundle,
    render_caddyfile,
    render_cloud_init,
)
from tests.stacks.conftest import FAKE_EIP, FAKE_GCP_ADDRESS, FAKE_GCP_PROJECT, FAKE_VOLUME, ROOT, run_program

BIN = Path(sys.executable).parent
SHA = "0123456789abcdef" * 4
SOURCE = SourceBundle("sdxl-source-20260801abcdef", f"bundles/{SHA}.tar", SHA)
AWS_DEVICES = (f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{FAKE_VOLUME.replace('-', '')}", "/dev/xvdf")
SECRETS = (("SDXL_API_TOKEN", "/sdxl-endpoint/aws-g5/api-token"), ("HF_TOKEN", "/sdxl-endpoint/aws-g5/hf-token"))
# A realistic worst case for the size limit: ten long origins, a long model id, a long stack name.
LONG_ORIGINS = tuple(f"https://preview-{i:02d}.my-image-app.example-company.com" for i in range(10))


def values(**overrides) -> BootstrapValues:
    base = BootstrapValues(
        model="stabilityai/stable-diffusion-xl-base-1.0", cors_origins=("https://app.example.com",),
        public_ip="203.0.113.10", cloud="aws", location="us-east-1", data_devices=AWS_DEVICES, secrets=SECRETS,
        source=SOURCE,
    )
    return dataclasses.replace(base, **overrides)


VARIANTS = {
    "aws-build": values(),
    "gcp-pull": values(cloud="gcp", location=FAKE_GCP_PROJECT, source=None,
                       image="us-central1-docker.pkg.dev/sdxl-test-project/images/sdxl-endpoint-server:1.0.0",
                       data_devices=("/dev/disk/by-id/google-sdxl-data",),
                       secrets=(("SDXL_API_TOKEN", "sdxl-gcp-t4-api-token"),)),
    "domain": values(domain="sdxl.example.com", public_ip=None),
    "no-idle-stop-no-hf-token": values(idle_stop_minutes=0, secrets=SECRETS[:1]),
    "worst-case-size": values(cors_origins=LONG_ORIGINS, model="some-organisation/a-rather-long-fine-tuned-sdxl-v2",
                              secrets=tuple((v, f"/sdxl-endpoint/a-rather-long-stack-name-for-ci-pr-12345/{n}")
                                            for v, n in (("SDXL_API_TOKEN", "api-token"), ("HF_TOKEN", "hf-token")))),
}


def files_of(document: str) -> dict[str, dict]:
    assert document.startswith("#cloud-config\n")
    return {entry["path"]: entry for entry in yaml.safe_load(document)["write_files"]}


def unit(files: dict, name: str) -> str:
    return files[f"/etc/systemd/system/{name}.service"]["content"]


def directives(text: str) -> dict[str, list[str]]:
    """A unit's directives, each with every value it is given (dependency lists split into names)."""
    found: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).extend(value.split() if key in DEPENDENCIES else [value.strip()])
    return found


DEPENDENCIES = ("Requires", "Wants", "After", "Before", "BindsTo", "PartOf", "Requisite")


def run_tool(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)


# --- validators -------------------------------------------------------------------------------------------------

def cloud_init_binary() -> str:
    cloud_init = shutil.which("cloud-init") or "/usr/bin/cloud-init"
    if not Path(cloud_init).exists():
        if os.environ.get("CI"):
            pytest.fail("cloud-init is not installed (.ci/run installs it)")
        pytest.skip("Debian's cloud-init package is not installed here (.ci/run installs it)")
    return cloud_init


@pytest.mark.parametrize("name", VARIANTS)
def test_valid_per_cloud_init_schema(name: str, tmp_path: Path) -> None:
    path = tmp_path / "user-data"
    path.write_text(render_cloud_init(VARIANTS[name]))
    result = run_tool([cloud_init_binary(), "schema", "--config-file", str(path)])
    assert result.returncode == 0 and "Valid" in result.stdout, result.stdout + result.stderr


def test_a_broken_document_is_caught_by_the_schema_check(tmp_path: Path) -> None:
    document = yaml.safe_load(render_cloud_init(values()))
    document["write_files"][0]["permission"] = document["write_files"][0].pop("permissions")
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + yaml.safe_dump(document))
    assert run_tool([cloud_init_binary(), "schema", "--config-file", str(path)]).returncode != 0


@pytest.mark.parametrize("name", VARIANTS)
def test_within_awss_16_kb_user_data_limit_once_gzipped(name: str) -> None:
    document = render_cloud_init(VARIANTS[name])
    packed = base64.b64decode(bootstrap.aws_user_data(document))
    assert gzip.decompress(packed).decode() == document  # what cloud-init unpacks
    assert len(packed) <= bootstrap.USER_DATA_LIMIT_BYTES == 16 * 1024
    # Headroom for growth: a bootstrap near the edge breaks the first time someone adds a line.
    assert len(packed) <= 15 * 1024, f"{len(packed)} bytes gzipped: close to AWS's 16 KB limit"
    # The same document gives the same bytes: no spurious replacement from one `pulumi up` to the next.
    assert bootstrap.aws_user_data(document) == bootstrap.aws_user_data(render_cloud_init(VARIANTS[name]))


def test_a_document_over_the_limit_is_refused_at_preview() -> None:
    noise = base64.b64encode(os.urandom(20_000)).decode()  # does not compress
    with pytest.raises(ValueError, match=r"gzipped; AWS takes at most 16384"):
        bootstrap.aws_user_data(render_cloud_init(values()) + f"# {noise}\n")


def test_embedded_shell_is_shellcheck_clean(tmp_path: Path) -> None:
    files = files_of(render_cloud_init(values()))
    scripts = [path for path, f in files.items() if f["content"].startswith(("#!/usr/bin/env bash", "#!/bin/sh"))]
    assert scripts == [bootstrap.BOOT_SCRIPT]
    target = tmp_path / "sdxl-boot"
    target.write_text(files[bootstrap.BOOT_SCRIPT]["content"])
    result = run_tool([str(BIN / "shellcheck"), "--severity=style", str(target)])
    assert result.returncode == 0, result.stdout
    # runcmd holds argv lists only: nothing there goes through a shell.
    assert all(isinstance(cmd, list) for cmd in yaml.safe_load(render_cloud_init(values()))["runcmd"])


def test_shellcheck_catches_a_planted_mistake(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    assert run_tool([str(BIN / "shellcheck"), str(script)]).returncode != 0


def test_embedded_scripts_are_the_files_in_image_host_less_their_comments() -> None:
    files = files_of(render_cloud_init(values()))
    for path, template in ((bootstrap.BOOT_SCRIPT, "sdxl-boot.sh"), (bootstrap.IDLE_SCRIPT, "idle_stop.py"),
                           (bootstrap.CLOUD_HELPER, "sdxl_cloud.py")):
        shipped, source = files[path]["content"], (bootstrap.HOST_TEMPLATES / template).read_text()
        assert shipped == bootstrap.shipped(template) and files[path]["permissions"] == "0755"
        if source.startswith("#!"):
            assert shipped.splitlines()[0] == source.splitlines()[0]  # the shebang
        if path.endswith(".py"):
            # The same program: only docstrings differ (the module's keeps its first line).
            original = ast.parse(source)
            for node in ast.walk(original):
                if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and ast.get_docstring(node):
                    node.body = node.body[1:] or [ast.Pass()]
            ours = ast.parse(shipped)
            assert ast.get_docstring(ours) == ast.get_docstring(ast.parse(source)).split("\n", 1)[0]
            ours.body = ours.body[1:]
            assert ast.dump(ours) == ast.dump(original), path
            assert not [line for line in shipped.splitlines()[1:] if line.lstrip().startswith("#")]
        else:
            # Whole comment lines go, never a command nor a line of the here-document (Python fed to python3).
            kept = iter(shipped.splitlines())
            expected = next(kept)
            dropped = []
            for line in source.splitlines():
                if line == expected:
                    expected = next(kept, None)
                else:
                    dropped.append(line)
            assert expected is None and dropped and all(line.lstrip().startswith("#") for line in dropped)
            heredoc = source.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
            assert heredoc in shipped
    # What this buys: about a quarter of AWS's 16 KB of user data, on top of gzip.
    full = sum(len(gzip.compress((bootstrap.HOST_TEMPLATES / t).read_bytes(), 9))
               for t in ("sdxl-boot.sh", "idle_stop.py", "sdxl_cloud.py"))
    ours = sum(len(gzip.compress(bootstrap.shipped(t).encode(), 9)) for t in ("sdxl-boot.sh", "idle_stop.py",
                                                                              "sdxl_cloud.py"))
    assert ours < full - 3000


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip("systemd-analyze is not installed here")
    return found


def verify_units(units: dict[str, str], tmp_path: Path) -> list[str]:
    """What `systemd-analyze verify` says about the units, less the binaries this machine lacks."""
    paths = []
    for name, text in units.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    result = run_tool([systemd_analyze(), "verify", *paths])
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.strip() and "is not executable" not in line]


@pytest.mark.parametrize("name", ["aws-build", "gcp-pull"])
def test_units_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    files = files_of(render_cloud_init(VARIANTS[name]))
    units = {Path(p).name: f["content"] for p, f in files.items() if p.endswith(".service")}
    assert verify_units(units, tmp_path) == []
    # ... which does catch a mistake.
    assert verify_units({"typo.service": "[Unit]\nRequirez=x\n[Service]\nExecStart=/bin/true\n"}, tmp_path)


# --- the units: what runs, and after what ---------------------------------------------------------------------

def test_every_unit_written_is_enabled_and_started_on_first_boot() -> None:
    for variant in (values(), values(idle_stop_minutes=0)):
        document = yaml.safe_load(render_cloud_init(variant))
        written = sorted(Path(f["path"]).name for f in document["write_files"] if f["path"].endswith(".service"))
        enable, start = document["runcmd"][2], document["runcmd"][3]
        # Less the failure template: OnFailure= starts its instances, nothing enables it (it has no [Install]).
        written.remove(f"{bootstrap.FAILED_UNIT}.service")
        assert enable[:2] == ["systemctl", "enable"] and sorted(enable[2:]) == written
        assert start[:3] == ["systemctl", "start", "--no-block"] and sorted(start[3:]) == written
        assert {Path(p).stem for p in written} <= set(bootstrap.UNITS)


ONESHOTS_THAT_FAIL_THE_BOOT = {"sdxl-data.service", "sdxl-docker.service", "sdxl-gpu-check.service",
                               "sdxl-image.service"}


def check_failure_units(variant: BootstrapValues) -> None:
    """However a boot oneshot fails (a word from sdxl-boot, a crash, systemd's kill at its TimeoutStartSec), its
    OnFailure= starts sdxl-failed@<the unit>, which marks the boot failed (tests/image/test_boot_script.py runs it).
    The model prefetch alone has none: it is never fatal, the server fetches what it left."""
    graph = unit_graph(render_cloud_init(variant))
    oneshots = {unit for unit, d in graph.items() if d.get("Type") == ["oneshot"] and "@" not in unit}
    assert oneshots == ONESHOTS_THAT_FAIL_THE_BOOT | {"sdxl-model.service"}
    for unit in ONESHOTS_THAT_FAIL_THE_BOOT:
        assert graph[unit]["OnFailure"] == [f"{bootstrap.FAILED_UNIT}%n.service"], unit  # %n: the unit's own name
    assert {unit for unit, d in graph.items() if "OnFailure" in d} == ONESHOTS_THAT_FAIL_THE_BOOT
    failed = graph[f"{bootstrap.FAILED_UNIT}.service"]
    assert failed["Type"] == ["oneshot"] and failed["ExecStart"] == [f"{bootstrap.BOOT_SCRIPT} unit-failed %i"]
    assert not {key for key in failed if key in (*DEPENDENCIES, "WantedBy", "OnFailure")}  # nothing holds it back


@pytest.mark.parametrize("name", ["aws-build", "gcp-pull"])
def test_every_boot_step_that_can_fail_the_boot_starts_the_failure_unit_when_it_fails(name: str) -> None:
    check_failure_units(VARIANTS[name])  # the fleet's: tests/stacks/test_fleet_bootstrap.py


def test_ready_survives_a_failed_server_start() -> None:
    # Requires= (or BindsTo=, PartOf=, Requisite=) on the server would cancel the watch for the whole boot
    # after one failed start, such as an early pull before AWS attaches the Elastic IP.
    ready = directives(unit(files_of(render_cloud_init(values())), "sdxl-ready"))
    for strong in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert "sdxl-server.service" not in ready.get(strong, []), strong
    assert ready["ExecStart"] == ["/usr/local/bin/sdxl-boot watch-ready stabilityai/stable-diffusion-xl-base-1.0"]


def test_the_watcher_runs_from_boot_after_nothing() -> None:
    watcher = directives(unit(files_of(render_cloud_init(values(idle_stop_minutes=45))), "sdxl-idle-stop"))
    assert not {key for key in watcher if key in DEPENDENCIES}  # a hung pull or build cannot hold it back
    assert watcher["ExecStart"] == ["/usr/bin/python3 /usr/local/lib/sdxl-endpoint/idle_stop.py --minutes 45"]
    assert watcher["Restart"] == ["always"] and watcher["WantedBy"] == ["multi-user.target"]


def ordered_after(units: dict[str, dict[str, list[str]]], name: str) -> set[str]:
    """Every unit `name` waits for, directly or not (After=, and the other side's Before=)."""
    before = {u: set(d.get("Before", [])) for u, d in units.items()}
    waits, todo = set(), [name]
    while todo:
        current = todo.pop()
        direct = set(units.get(current, {}).get("After", [])) | {u for u, b in before.items() if current in b}
        todo += [u for u in direct - waits]
        waits |= direct
    return waits


def unit_graph(document: str) -> dict[str, dict[str, list[str]]]:
    return {Path(p).name: directives(f["content"]) for p, f in files_of(document).items() if p.endswith(".service")}


def test_independent_steps_overlap() -> None:
    for variant in (values(), VARIANTS["gcp-pull"]):
        graph = unit_graph(render_cloud_init(variant))
        # The GPU check and the image build or pull wait for neither each other nor the server.
        assert "sdxl-gpu-check.service" not in ordered_after(graph, "sdxl-image.service")
        assert "sdxl-image.service" not in ordered_after(graph, "sdxl-gpu-check.service")
        # Caddy fetches its certificates while the image builds.
        assert not {"sdxl-server.service", "sdxl-image.service"} & ordered_after(graph, "sdxl-caddy.service")
        # The server waits for both, and for its data disk.
        assert {"sdxl-image.service", "sdxl-gpu-check.service", "sdxl-data.service"} <= ordered_after(
            graph, "sdxl-server.service")
        # The model download waits for the data disk (the Hub cache) only: not for Docker, the image or the GPU.
        assert ordered_after(graph, "sdxl-model.service") & {u for u in graph if u.startswith("sdxl-")} == {
            "sdxl-data.service"}
        assert not {"sdxl-model.service"} & ordered_after(graph, "sdxl-server.service")  # the server fetches the rest


def seconds(timespan: str) -> int:
    """A systemd time span as this project writes them (45min, 2h, 90s)."""
    number, unit_name = re.fullmatch(r"(\d+)(s|min|h)", timespan).groups()
    return int(number) * {"s": 1, "min": 60, "h": 3600}[unit_name]


def test_units_that_pull_or_build_outlast_sdxl_boots_own_limits() -> None:
    """A unit's start limit must leave sdxl-boot time to retry and then take its fallback (the copy on disk, the
    previous image); systemd's 90 s default would kill Caddy's first pull outright."""
    script = (bootstrap.HOST_TEMPLATES / "sdxl-boot.sh").read_text()
    limit = {name: int(value) for name, value in re.findall(r"^(\w+)=\$\{SDXL_\w+:-(\d+)\}", script, re.MULTILINE)}
    retried_pull = limit["NET_WAIT"] + limit["PULL_LIMIT"]  # the last try may start just before the deadline
    for variant in (values(), VARIANTS["gcp-pull"]):
        graph = unit_graph(render_cloud_init(variant))
        assert seconds(graph["sdxl-caddy.service"]["TimeoutStartSec"][0]) > retried_pull
        image_step = max(retried_pull, limit["NET_WAIT"] + limit["BUILD_LIMIT"])  # fetch the bundle, then build
        assert seconds(graph["sdxl-image.service"]["TimeoutStartSec"][0]) > image_step
        assert seconds(graph["sdxl-model.service"]["TimeoutStartSec"][0]) > limit["NET_WAIT"] + limit["MODEL_LIMIT"]
        # The GPU check says why it failed before systemd kills it: its last try may start at the deadline, each
        # nvidia-smi is stopped after SMI_LIMIT and killed 10 s later, and the CUDA version is one more call.
        gpu_check = limit["GPU_WAIT"] + 2 * (limit["SMI_LIMIT"] + 10)
        assert seconds(graph["sdxl-gpu-check.service"]["TimeoutStartSec"][0]) > gpu_check
    assert 0 < limit["SMI_LIMIT"] <= 120  # bounded: a healthy nvidia-smi answers in seconds
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"each call is stopped after {limit['SMI_LIMIT']} s" in readme


def test_the_model_fetch_takes_what_the_server_loads_and_the_hub_token_only_when_set() -> None:
    from server.settings import Settings as ServerSettings

    script = (bootstrap.HOST_TEMPLATES / "sdxl-boot.sh").read_text()
    fields = ServerSettings.model_fields
    # The server's defaults: revision None is the Hub's main branch; the fp16 weights.
    assert re.search(r"^MODEL_REVISION=main MODEL_VARIANT=(\w+)", script, re.MULTILINE)[1] == fields["variant"].default
    assert fields["revision"].default is None and "SDXL_REVISION" not in bootstrap.server_settings(values())
    command = directives(unit(files_of(render_cloud_init(values())), "sdxl-model"))["ExecStart"]
    assert command == ["/usr/local/bin/sdxl-boot model-download aws us-east-1 stabilityai/stable-diffusion-xl-base-1.0"
                       " HF_TOKEN=/sdxl-endpoint/aws-g5/hf-token"]
    without = values(secrets=SECRETS[:1])
    command = directives(unit(files_of(render_cloud_init(without)), "sdxl-model"))["ExecStart"]
    assert command == ["/usr/local/bin/sdxl-boot model-download aws us-east-1 stabilityai/stable-diffusion-xl-base-1.0"]


def test_the_data_disk_comes_before_docker_and_everything_that_uses_it() -> None:
    graph = unit_graph(render_cloud_init(values()))
    assert "docker.service" in graph["sdxl-data.service"]["Before"]  # Docker's data root lives on it
    for name in ("sdxl-docker.service", "sdxl-image.service", "sdxl-server.service", "sdxl-caddy.service",
                 "sdxl-ready.service"):
        assert "sdxl-data.service" in ordered_after(graph, name), name
    data = graph["sdxl-data.service"]["ExecStart"][0]
    assert data == f"/usr/local/bin/sdxl-boot data-disk {' '.join(AWS_DEVICES)}"


def test_the_server_reads_its_tokens_at_each_start_and_runs_the_image_the_boot_made() -> None:
    files = files_of(render_cloud_init(values()))
    server = directives(unit(files, "sdxl-server"))
    env_file, pre_docker = server["ExecStartPre"]
    assert env_file == (f"/usr/bin/python3 {bootstrap.CLOUD_HELPER} env-file {bootstrap.SETTINGS_FILE} "
                        f"{bootstrap.ENV_FILE} aws us-east-1 SDXL_API_TOKEN=/sdxl-endpoint/aws-g5/api-token "
                        "HF_TOKEN=/sdxl-endpoint/aws-g5/hf-token")
    assert bootstrap.ENV_FILE.startswith("/run/")  # in memory: the tokens never reach a disk
    assert pre_docker == "-/usr/bin/docker rm --force sdxl-server"
    (run,) = server["ExecStart"]
    assert run.startswith("/usr/bin/docker run --rm --name sdxl-server --gpus all ")
    assert f"--env-file {bootstrap.ENV_FILE}" in run
    assert f"--volume {bootstrap.MODEL_CACHE_DIR}:/models" in run and bootstrap.MODEL_CACHE_DIR.startswith(
        bootstrap.DATA_DIR)
    assert f"--publish 127.0.0.1:{bootstrap.SERVER_PORT}:{bootstrap.SERVER_PORT}" in run  # Caddy is the way in
    assert run.endswith(f" {bootstrap.SERVER_IMAGE}")
    assert server["Restart"] == ["always"]
    assert set(server["Requires"]) == {"sdxl-image.service", "sdxl-gpu-check.service"}  # no GPU, no server


def test_the_image_step_builds_the_bundle_or_pulls_the_image() -> None:
    build = directives(unit(files_of(render_cloud_init(values())), "sdxl-image"))
    assert build["ExecStart"] == [f"/usr/local/bin/sdxl-boot build aws us-east-1 {SOURCE.bucket} {SOURCE.key} {SHA}"]
    pull = directives(unit(files_of(render_cloud_init(VARIANTS["gcp-pull"])), "sdxl-image"))
    assert pull["ExecStart"] == [f"/usr/local/bin/sdxl-boot pull-server {VARIANTS['gcp-pull'].image} gcp"]
    gpu = directives(unit(files_of(render_cloud_init(values())), "sdxl-gpu-check"))
    assert gpu["ExecStart"] == [f"/usr/local/bin/sdxl-boot gpu-check {bundle.image_cuda_version()}"]
    with pytest.raises(ValueError, match="exactly one"):
        values(image="ghcr.io/o/server:1")
    with pytest.raises(ValueError, match="exactly one"):
        values(source=None)


def test_caddy_keeps_its_certificates_on_the_data_disk() -> None:
    caddy = directives(unit(files_of(render_cloud_init(values())), "sdxl-caddy"))
    (run,) = caddy["ExecStart"]
    assert bootstrap.CADDY_IMAGE in run and "--network host" in run and caddy["Restart"] == ["always"]
    assert f"--volume {bootstrap.CADDY_DATA_DIR}:/data" in run and bootstrap.CADDY_DATA_DIR.startswith(
        bootstrap.DATA_DIR)
    assert caddy["ExecStartPre"][0] == f"/usr/local/bin/sdxl-boot pull {bootstrap.CADDY_IMAGE}"


def test_no_template_placeholder_is_left() -> None:
    for variant in VARIANTS.values():
        files = files_of(render_cloud_init(variant))
        assert "${" not in "".join(f["content"] for p, f in files.items() if p.endswith(".service")), variant


def test_idle_stop_minutes_reach_the_watcher_and_zero_still_installs_it_for_failed_boots() -> None:
    files = files_of(render_cloud_init(values(idle_stop_minutes=45)))
    assert "idle_stop.py --minutes 45" in unit(files, "sdxl-idle-stop")
    assert directives(unit(files, "sdxl-idle-stop"))["Description"] == [
        "SDXL endpoint: power off after 45 min without a generation request, or after a failed or never-ready boot"]
    # 0 turns off the idle power-off alone: the watcher still stops a failed GPU check or a boot never ready.
    off = files_of(render_cloud_init(values(idle_stop_minutes=0)))
    watcher = directives(unit(off, "sdxl-idle-stop"))
    assert watcher["ExecStart"] == [f"/usr/bin/python3 {bootstrap.IDLE_SCRIPT} --minutes 0"]
    assert watcher["Description"] == [
        "SDXL endpoint: power off after a failed or never-ready boot (idle auto-stop off)"]
    assert watcher["Restart"] == ["always"] and not {key for key in watcher if key in DEPENDENCIES}
    assert off[bootstrap.IDLE_SCRIPT]["content"] == bootstrap.shipped("idle_stop.py")
    runcmd = yaml.safe_load(render_cloud_init(values(idle_stop_minutes=0)))["runcmd"]
    assert "sdxl-idle-stop.service" in runcmd[2] and "sdxl-idle-stop.service" in runcmd[3]  # enabled, started


def test_systemd_specifiers_in_values_are_escaped() -> None:
    files = files_of(render_cloud_init(values(model="org/model%n")))
    assert "watch-ready org/model%%n" in unit(files, "sdxl-ready")


# --- settings, and no secret anywhere ------------------------------------------------------------------------

def test_settings_hold_no_token_and_trust_the_proxy() -> None:
    files = files_of(render_cloud_init(values()))
    settings = files[bootstrap.SETTINGS_FILE]
    assert settings["permissions"] == "0644"
    lines = dict(line.split("=", 1) for line in settings["content"].splitlines())
    assert not {"SDXL_API_TOKEN", "HF_TOKEN"} & set(lines)
    assert json.loads(lines["SDXL_CORS_ORIGINS"]) == ["https://app.example.com"]
    assert lines["HF_HOME"] == "/models" and lines["SDXL_COMPILE_CACHE_DIR"].startswith("/models/")
    # Client addresses: the only peer is Caddy, through Docker's bridge, on a loopback-only port.
    assert lines["SDXL_FORWARDED_ALLOW_IPS"] == "*"
    assert float(lines["SDXL_REQUEST_TIMEOUT"]) == ProxyTimeouts().request


def test_a_line_break_cannot_smuggle_a_variable_into_the_settings() -> None:
    with pytest.raises(ValueError, match="line break"):
        render_cloud_init(values(model="org/model\nSDXL_HOST=evil"))


# --- Caddy -------------------------------------------------------------------------------------------------------

ORIGINS = ("https://app.example.com",)
CADDY_VARIANTS = {
    "domain": dict(public_ip="203.0.113.10", domain="sdxl.example.com", cors_origins=ORIGINS),
    "ip-with-sslip-fallback": dict(public_ip="203.0.113.10", domain=None, cors_origins=LONG_ORIGINS),
    "local-test": dict(public_ip="127.0.0.1", domain=None, local=LocalCaddy(http_port=18080, https_port=18443),
                       cors_origins=ORIGINS),
    "any-origin": dict(public_ip="203.0.113.10", domain=None, cors_origins=("*",)),
    "no-origin": dict(public_ip="203.0.113.10", domain=None, cors_origins=()),
}


def adapted(caddyfile: str, tmp_path: Path) -> dict:
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "PATH": "/usr/bin:/bin"}
    result = run_tool([str(BIN / "caddy"), "validate", "--config", str(path), "--adapter", "caddyfile"], env=env)
    assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, result.stderr
    result = run_tool([str(BIN / "caddy"), "adapt", "--config", str(path), "--adapter", "caddyfile"], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def proxies(server: dict) -> list[dict]:
    return [h for route in server["routes"] for sub in route["handle"] for r in sub.get("routes", [])
            for h in r["handle"] if h.get("handler") == "reverse_proxy"]


@pytest.mark.parametrize("name", CADDY_VARIANTS)
def test_caddyfile_is_valid_and_its_timeouts_outlast_the_servers_deadline(name: str, tmp_path: Path) -> None:
    config = adapted(render_caddyfile(**CADDY_VARIANTS[name]), tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    t = ProxyTimeouts()
    # In nanoseconds in Caddy's JSON. Both clocks start with the request: the upload, then the server's whole
    # deadline, then a margin for the answer, and one more to pass it on (tests/image/test_caddy_deadline.py).
    assert server["read_timeout"] == t.upload * 1e9
    assert server["write_timeout"] == t.write * 1e9 > t.answer * 1e9 >= (t.upload + t.request + 30) * 1e9
    assert proxies(server)
    for proxy in proxies(server):
        transport = proxy["transport"]
        assert transport["response_header_timeout"] == transport["read_timeout"] == t.answer * 1e9
        assert [u["dial"] for u in proxy["upstreams"]] == [f"127.0.0.1:{bootstrap.SERVER_PORT}"]
    # HTTP/1.1 and HTTP/2 only: no Alt-Svc pointing browsers at a UDP port no firewall opens.
    assert server["protocols"] == ["h1", "h2"]
    # Automatic HTTPS with its HTTP->HTTPS redirect left on.
    assert "automatic_https" not in server or not server["automatic_https"].get("disable_redirects")


def test_caddy_validate_rejects_a_broken_caddyfile(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    caddyfile = render_caddyfile("203.0.113.10", None, cors_origins=ORIGINS)
    path.write_text(caddyfile.replace("profile shortlived", "profile"))
    result = run_tool([str(BIN / "caddy"), "validate", "--config", str(path), "--adapter", "caddyfile"],
                      env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0


def test_without_a_domain_the_ip_gets_a_shortlived_le_certificate_over_http_01(tmp_path: Path) -> None:
    config = adapted(render_caddyfile("203.0.113.10", None, cors_origins=ORIGINS), tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    hosts = [host for route in server["routes"] for m in route.get("match", []) for host in m.get("host", [])]
    assert sorted(hosts) == ["203-0-113-10.sslip.io", "203.0.113.10"]
    policies = config["apps"]["tls"]["automation"]["policies"]
    ip_policy = next(p for p in policies if "203.0.113.10" in p.get("subjects", []))
    (issuer,) = ip_policy["issuers"]
    assert (issuer["module"], issuer.get("profile")) == ("acme", "shortlived")
    # TLS-ALPN-01 comes on 443, which allowedCidrs may close to Let's Encrypt; HTTP-01 on 80 stays.
    assert issuer["challenges"] == {"tls-alpn": {"disabled": True}}
    # The sslip.io fallback orders its own certificate: over HTTP-01 only as well, with Caddy's default profile.
    sslip_policy = next(p for p in policies if "203-0-113-10.sslip.io" in p.get("subjects", []))
    assert [(i["module"], i.get("profile"), i.get("challenges")) for i in sslip_policy["issuers"]] == [
        ("acme", None, {"tls-alpn": {"disabled": True}})]
    assert "default_sni" in render_caddyfile("203.0.113.10", None, cors_origins=ORIGINS)


def test_with_a_domain_only_the_domain_is_served(tmp_path: Path) -> None:
    config = adapted(render_caddyfile("203.0.113.10", "sdxl.example.com", cors_origins=ORIGINS), tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    hosts = [host for route in server["routes"] for m in route.get("match", []) for host in m.get("host", [])]
    assert hosts == ["sdxl.example.com"]
    assert "shortlived" not in json.dumps(config)  # the domain gets Let's Encrypt's default profile...
    # ...over HTTP-01 only: TLS-ALPN-01 would come on 443, which allowedCidrs may close to Let's Encrypt.
    (policy,) = [p for p in config["apps"]["tls"]["automation"]["policies"] if p.get("subjects")]
    assert policy["subjects"] == ["sdxl.example.com"]
    assert [(i["module"], i.get("ca"), i.get("challenges")) for i in policy["issuers"]] == [
        ("acme", None, {"tls-alpn": {"disabled": True}})]  # no `ca`: Let's Encrypt's production directory


def test_no_domain_and_no_ip_is_refused() -> None:
    with pytest.raises(ValueError, match="public IP"):
        render_caddyfile(None, None, cors_origins=ORIGINS)


def error_routes(server: dict) -> list[dict]:
    """Every route under the server's error handling, however deeply nested."""
    found, todo = [], list(server["errors"]["routes"])
    while todo:
        route = todo.pop()
        found.append(route)
        todo += [r for h in route.get("handle", []) for r in h.get("routes", [])]
    return found


@pytest.mark.parametrize("name", CADDY_VARIANTS)
def test_caddys_own_errors_allow_the_servers_origins(name: str, tmp_path: Path) -> None:
    """The origins Caddy's error answers allow are the server's (corsOrigins); behaviour: tests/image/
    test_front_while_down.py."""
    origins = CADDY_VARIANTS[name]["cors_origins"]
    config = adapted(render_caddyfile(**CADDY_VARIANTS[name]), tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    routes = error_routes(server)
    matchers = [m for r in routes for m in r.get("match", [])]
    statuses = sorted(m["expression"] for m in matchers if "error.status_code" in str(m.get("expression")))
    assert statuses == sorted(["{http.error.status_code} in [502, 503]", "{http.error.status_code} in [504]"] * (
        len(proxies(server))))  # a pair per site
    # The matcher that grants Access-Control-Allow-Origin (in each site's two answers): the listed origins, any
    # ("*"), or none at all.
    allowed = [m["header"]["Origin"] for m in matchers if "Origin" in m.get("header", {})] + [
        m["expression"]["expr"] for m in matchers if isinstance(m.get("expression"), dict)]
    want = ["*"] if "*" in origins else list(origins) if origins else "false"
    assert allowed == [want] * 2 * len(proxies(server))


def test_an_origin_that_is_not_one_stays_out_of_the_caddyfile() -> None:
    with pytest.raises(ValueError, match="corsOrigins"):
        render_caddyfile("203.0.113.10", None, cors_origins=("https://app.example.com {\n\trespond 200",))


def test_sslip_host() -> None:
    assert bootstrap.sslip_host("203.0.113.10") == "203-0-113-10.sslip.io"


# --- wiring into the stacks, through the real program under mocks ---------------------------------------------

def aws_document(run) -> str:
    return gzip.decompress(base64.b64decode(run.one("aws:ec2/instance:Instance").inputs["userDataBase64"])).decode()


def test_aws_endpoint_is_https_on_the_elastic_ip_and_the_bootstrap_knows_it() -> None:
    run = run_program(preset="aws-g5")
    assert run.value(run.outputs["endpoint"]) == f"https://{FAKE_EIP}"
    files = files_of(aws_document(run))
    caddyfile = files[bootstrap.CADDYFILE]["content"]
    assert f"https://{FAKE_EIP} {{" in caddyfile and f"default_sni {FAKE_EIP}" in caddyfile
    assert "\t\theader Origin *\n" in caddyfile  # corsOrigins' default, as the server has it
    assert "idle_stop.py --minutes 30" in unit(files, "sdxl-idle-stop")  # the config default


def test_aws_endpoint_with_a_domain() -> None:
    run = run_program({"domain": "sdxl.example.com", "idleStopMinutes": "0",
                       "corsOrigins": ["https://app.example.com", "http://localhost:5173"]}, preset="aws-g5")
    assert run.value(run.outputs["endpoint"]) == "https://sdxl.example.com"
    assert run.value(run.outputs["curlExample"]).startswith("curl -sS --fail-with-body https://sdxl.example.com/ ")
    files = files_of(aws_document(run))
    assert "https://sdxl.example.com {" in files[bootstrap.CADDYFILE]["content"]
    # Caddy's own error answers allow the origins the server allows.
    assert "\t\theader Origin https://app.example.com\n\t\theader Origin http://localhost:5173\n" in files[
        bootstrap.CADDYFILE]["content"]
    assert 'SDXL_CORS_ORIGINS=["https://app.example.com","http://localhost:5173"]' in files[bootstrap.SETTINGS_FILE][
        "content"]
    assert "idle_stop.py --minutes 0" in unit(files, "sdxl-idle-stop")  # for a failed boot, never for idleness


def test_gcp_endpoint_is_https_on_its_static_address() -> None:
    run = run_program({"gcp:project": FAKE_GCP_PROJECT}, preset="gcp-t4")
    assert run.value(run.outputs["endpoint"]) == f"https://{FAKE_GCP_ADDRESS}"
    files = files_of(run.one("gcp:compute/instance:Instance").inputs["metadata"]["user-data"])
    assert f"https://{FAKE_GCP_ADDRESS} {{" in files[bootstrap.CADDYFILE]["content"]
