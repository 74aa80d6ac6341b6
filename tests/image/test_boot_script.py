"""The boot, run for real: image/host/sdxl-boot.sh and the rendered units' commands, by bash, with stand-ins
for docker, nvidia-smi, blkid, mkfs, mount, apt-get and systemctl on PATH, the real sdxl_cloud.py talking to
a loopback stand-in for the clouds, and a loopback server standing in for the container's /ready. Every
stand-in writes to one call log, so the order of what the boot did shows."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stacks import bootstrap
from stacks.bootstrap import BootstrapValues, SourceBundle, render_cloud_init
from tests.image import fake_cloud
from tests.image.conftest import IMAGE
from tests.image.fake_cloud import FakeCloud
from tests.image.fake_hub import FakeHub
from tests.stacks.test_bootstrap import files_of, unit

SCRIPT = IMAGE / "host" / "sdxl-boot.sh"
MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
TOKEN = "boot-test-token-0123456789"
HF_TOKEN = "hf_boot_test_hub_token"
BUCKET = "sdxl-source-20260801abcdef"

# The stand-in docker: images, tags, runtimes and its data root in a JSON state file; `run` checks the env
# file it is given holds the token (and says so without printing it).
FAKE_DOCKER = r'''
import json, os, sys
path = os.environ["FAKE_STATE"]
state = json.load(open(path))
args = sys.argv[1:]
def log(line):
    open(os.environ["FAKE_LOG"], "a").write(line + "\n")
def save():
    json.dump(state, open(path, "w"))
if args[:1] == ["--config"]:
    args = args[2:]
log("docker " + " ".join(args))
command = args[0]
if command == "image" and args[1] == "inspect":
    sys.exit(0 if args[2] in state["images"] else 1)
if command == "image" and args[1] == "ls":
    print("\n".join(i for i in state["images"] if i.startswith(args[2] + ":")))
elif command == "tag":
    state["images"].append(args[2])
elif command == "rmi":
    state["images"] = [i for i in state["images"] if i not in args[1:]]
elif command == "pull":
    if state.get("registry_down"):
        sys.exit(1)
    state["images"].append(args[-1])
elif command == "build":
    context = args[-1]
    assert os.path.exists(os.path.join(context, "image", "Dockerfile")), "no Dockerfile in the build context"
    # BuildKit keeps what each step made (the torch and CUDA layers, pip's cache mount), built or not.
    state["build_cache"] = state.get("build_cache", []) + [context]
    if state.get("build_fails"):
        save()
        sys.exit(1)
    state["images"].append(args[args.index("-t") + 1])
elif command == "builder" and args[1] == "prune":
    if "--force" not in args:
        sys.exit("WARNING! This will remove all dangling build cache. Are you sure you want to continue? [y/N]")
    state["build_cache"] = []
elif command == "login":
    password = sys.stdin.read()
    assert password and password not in " ".join(sys.argv), "the password reached the command line"
    log("docker login got a password on stdin")
elif command == "info":
    fmt = args[args.index("--format") + 1]
    if state.get("stopped"):
        sys.exit(1)
    print(json.dumps({r: {} for r in state["runtimes"]}) if "Runtimes" in fmt else state["root"])
elif command == "run":
    env = open(args[args.index("--env-file") + 1]).read()
    log("docker run: env file holds SDXL_API_TOKEN" if "SDXL_API_TOKEN=" in env else "docker run: NO TOKEN")
save()
'''


@dataclass
class Host:
    root: Path
    bin: Path
    log: Path
    cloud: FakeCloud
    state_file: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def docker(self) -> dict:
        return json.loads(self.state_file.read_text())

    def set_docker(self, **changes) -> None:
        self.state_file.write_text(json.dumps({**self.docker(), **changes}))

    def phases(self) -> list[str]:
        log = self.state / "boot-phases.log"
        return [line.split(" phase=", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []

    def status(self) -> str:
        return (self.state / "status").read_text()

    def failed(self) -> str | None:
        marker = self.run / "failed"
        return marker.read_text() if marker.exists() else None

    def fake(self, name: str, body: str, python: bool = False) -> None:
        path = self.bin / name
        if python:
            path.write_text(f"#!{sys.executable}\n{body}\n")
        else:
            path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "$FAKE_LOG"\n{body}\n')
        path.chmod(0o755)

    def environment(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/bin:/bin", "FAKE_LOG": str(self.log), "FAKE_STATE": str(self.state_file),
            "SDXL_STATE_DIR": str(self.state), "SDXL_RUN_DIR": str(self.run), "SDXL_DATA_DIR": str(self.data),
            "SDXL_ENV_FILE": str(self.run / "server.env"), "SDXL_CONSOLE": str(self.root / "console"),
            "SDXL_DOCKER_DAEMON_JSON": str(self.root / "daemon.json"), "SDXL_SYSROOT": str(self.root / "sys"),
            "SDXL_CLOUD_HELPER": str(IMAGE / "host" / "sdxl_cloud.py"), "SDXL_FAKE_CLOUD_URL": self.cloud.url,
            "SDXL_POLL_SECONDS": "0.05", "SDXL_NET_WAIT_SECONDS": "0", "SDXL_SERVER": "http://127.0.0.1:9",
            "SDXL_CACHE_UID": str(os.getuid()),  # the model fetch drops root to it
            **extra,
        }

    def boot(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], env=self.environment(**env), capture_output=True,
                              text=True, timeout=timeout)

    def console(self) -> str:
        path = self.root / "console"
        return path.read_text() if path.exists() else ""

    def reported_failures(self) -> list[str]:
        """The FAILED lines on the console: one per failure, never the same failure twice."""
        lines = self.console().splitlines()
        return [line.split(" sdxl-boot: ", 1)[1] for line in lines if " sdxl-boot: FAILED" in line]

    def assert_failed_once(self) -> None:
        """The boot's failure marker is its status, and the console says it once."""
        failed = self.failed()
        assert failed is not None, "the boot was not marked failed"
        assert self.status() == f"FAILED: {failed}"
        assert self.reported_failures() == [f"FAILED: {failed.strip()}"]

    def answer_result(self, service: str, result: str) -> None:
        """systemctl answers `show -P Result <service>` with `result`: how systemd says the unit ended."""
        self.fake("systemctl", f'[ "$*" != "show -P Result {service}" ] || echo {result}')


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    paths = tmp_path / "bin"
    paths.mkdir()
    (paths / "python3").symlink_to(sys.executable)
    log = tmp_path / "calls"
    cloud = FakeCloud(log)
    state = tmp_path / "docker.json"
    state.write_text(json.dumps({"images": [], "runtimes": ["runc", "nvidia"], "root": str(tmp_path / "data/docker")}))
    machine = Host(root=tmp_path, bin=paths, log=log, cloud=cloud, state_file=state)
    machine.fake("docker", FAKE_DOCKER, python=True)
    # sha256sum logs, then does the real work: the log shows that the bundle was checked, and when.
    machine.fake("sha256sum", '/usr/bin/sha256sum "$@"')
    machine.fake("systemctl", "")
    yield machine
    cloud.close()


# --- the data disk -------------------------------------------------------------------------------------------------

@pytest.fixture
def disk(host: Host) -> Path:
    """A stand-in block device, found under the by-id name the bootstrap gives, and the tools around it."""
    device = host.root / "dev" / "nvme1n1"
    device.parent.mkdir()
    device.write_text("")
    (host.root / "by-id").mkdir()
    (host.root / "by-id" / "nvme-Amazon_Elastic_Block_Store_vol0123").symlink_to(device)
    signatures = host.root / "signatures.json"  # what blkid finds on the device
    signatures.write_text("{}")
    host.fake("blkid", rf'''
import json, sys
found = json.load(open("{signatures}"))
value = found.get(sys.argv[sys.argv.index("-s") + 1])
open("{host.log}", "a").write("blkid " + " ".join(sys.argv[1:]) + "\n")
print(value) if value else sys.exit(2)''', python=True)
    host.fake("mkfs.ext4", f'''echo '{{"TYPE": "ext4", "UUID": "5a1e-data"}}' > {signatures}''')
    for tool in ("mount", "resize2fs", "chown"):
        host.fake(tool, "")
    host.fake("mountpoint", "exit 1")
    return signatures


def script_line(command: str) -> int:
    """The line of sdxl-boot.sh that runs `command`, which must be there once: what a failure there reports."""
    (line,) = [number for number, text in enumerate(SCRIPT.read_text().splitlines(), 1) if command in text]
    return line


def data_disk(host: Host, **env: str) -> subprocess.CompletedProcess:
    return host.boot("data-disk", str(host.root / "by-id/nvme-Amazon_Elastic_Block_Store_vol0123"), "/dev/xvdf",
                     **env)


def test_a_blank_data_disk_is_formatted_then_mounted_by_uuid(host: Host, disk: Path) -> None:
    result = data_disk(host)
    assert result.returncode == 0, result.stderr
    calls = [c for c in host.calls() if not c.startswith(("blkid", "mountpoint"))]
    device = host.root / "dev" / "nvme1n1"
    assert calls[0] == f"mkfs.ext4 -q -L sdxl-data -m 0 {device}"
    assert calls[1] == f"mount -o noatime UUID=5a1e-data {host.data}"
    assert f"resize2fs {device}" in calls and f"chown 10001:10001 {host.data}/models" in calls
    assert all((host.data / d).is_dir() for d in ("models", "docker", "caddy", "bundles"))
    assert host.phases() == [f"data-disk-ready device={device} (formatted)"]


def test_a_data_disk_with_a_filesystem_is_never_formatted(host: Host, disk: Path) -> None:
    disk.write_text(json.dumps({"TYPE": "ext4", "UUID": "0ld-d15k"}))  # a replaced instance's disk
    assert data_disk(host).returncode == 0
    assert not [c for c in host.calls() if c.startswith("mkfs")]
    assert f"mount -o noatime UUID=0ld-d15k {host.data}" in host.calls()
    assert host.phases()[0].endswith("(reused)")


def test_a_partitioned_disk_without_a_filesystem_is_refused_not_formatted(host: Host, disk: Path) -> None:
    disk.write_text(json.dumps({"PTTYPE": "gpt"}))
    result = data_disk(host)
    assert result.returncode == 1
    assert not [c for c in host.calls() if c.startswith(("mkfs", "mount "))]
    assert "partition table but no filesystem" in host.failed() and host.status().startswith("FAILED:")


def test_a_command_failing_inside_a_substitution_is_reported_once_with_its_line(host: Host, disk: Path) -> None:
    """blkid finds a filesystem but no UUID: `uuid=$(blkid ...)` fails under set -e. The ERR trap fires in the
    substitution's subshell too (set -E); only the assignment around it reports, so the console says it once."""
    disk.write_text(json.dumps({"TYPE": "ext4"}))
    result = data_disk(host)
    assert result.returncode == 1
    line = script_line("uuid=$(blkid")
    assert host.failed() == f'sdxl-boot data-disk: "uuid=$(blkid -p -s UUID -o value "$dev")" exited 2 (line {line})\n'
    host.assert_failed_once()
    assert not [c for c in host.calls() if c.startswith("mount ")]


def test_a_data_disk_that_never_appears_fails_the_boot(host: Host) -> None:
    result = host.boot("data-disk", str(host.root / "by-id/absent"), SDXL_DISK_WAIT_SECONDS="0")
    assert result.returncode == 1
    assert "did not appear in 0 s" in host.failed() and "FAILED" in host.console()


# --- Docker and the NVIDIA container toolkit -------------------------------------------------------------------

@pytest.fixture
def apt(host: Host) -> Path:
    """apt-get, curl and gpg stand-ins; installing nvidia-container-toolkit brings its nvidia-ctk."""
    (host.root / "sys/etc/apt/sources.list.d").mkdir(parents=True)
    (host.root / "sys/usr/share/keyrings").mkdir(parents=True)
    (host.root / "sys/etc/os-release").write_text("NAME=Ubuntu\nVERSION_CODENAME=noble\n")
    later = Host(**{**host.__dict__, "bin": host.root / "later"})  # what the package brings
    later.bin.mkdir()
    later.fake("nvidia-ctk", f"""import json, sys
open("{host.log}", "a").write("nvidia-ctk " + " ".join(sys.argv[1:]) + "\\n")
state = json.load(open("{host.state_file}"))
state["runtimes"].append("nvidia")
json.dump(state, open("{host.state_file}", "w"))""", python=True)
    host.fake("apt-get", f'case "$*" in *nvidia-container-toolkit*) mv {later.bin}/nvidia-ctk {host.bin}/;; esac')
    host.fake("curl", 'case "$*" in *.list*) echo "deb https://nvidia.github.io/libnvidia-container/stable/deb/'
                      '\\$(ARCH) /";; *) for a; do [ "$p" = -o ] && echo key > "$a"; p=$a; done;; esac')
    host.fake("gpg", 'for a; do [ "$p" = -o ] && echo dearmored > "$a"; p=$a; done')
    host.fake("dpkg", "echo amd64")
    return host.root / "sys"


def test_a_missing_toolkit_is_installed_from_nvidias_repository_and_docker_restarted(host: Host, apt: Path) -> None:
    host.set_docker(runtimes=["runc"], root="/var/lib/docker")
    (host.root / "daemon.json").write_text(json.dumps({"log-driver": "journald"}))
    result = host.boot("docker-setup")
    assert result.returncode == 0, result.stderr + result.stdout
    calls = host.calls()
    install = calls.index("apt-get install -y -qq --no-install-recommends nvidia-container-toolkit")
    assert calls.index("nvidia-ctk runtime configure --runtime=docker") > install
    assert calls.index("systemctl restart docker") > install
    listing = (apt / "etc/apt/sources.list.d/nvidia-container-toolkit.list").read_text()
    assert listing.startswith("deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://")
    assert (apt / "usr/share/keyrings/nvidia-container-toolkit-keyring.gpg").read_text() == "dearmored\n"
    daemon = json.loads((host.root / "daemon.json").read_text())
    assert daemon == {"log-driver": "journald", "data-root": f"{host.data}/docker",
                      "features": {"containerd-snapshotter": False}}  # kept what was there
    assert host.phases() == ["toolkit-installed packages=nvidia-container-toolkit"]


def test_missing_docker_is_installed_from_dockers_repository(host: Host, apt: Path) -> None:
    (host.bin / "docker").rename(host.root / "docker-later")
    host.fake("apt-get", f'case "$*" in *docker-ce*) mv {host.root}/docker-later {host.bin}/docker;; esac')
    host.fake("nvidia-ctk", "")
    result = host.boot("docker-setup")
    assert result.returncode == 0, result.stderr
    assert ("apt-get install -y -qq --no-install-recommends docker-ce docker-ce-cli containerd.io "
            "docker-buildx-plugin") in host.calls()
    assert (apt / "etc/apt/sources.list.d/docker.list").read_text() == (
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble "
        "stable\n")
    assert host.phases() == ["toolkit-installed packages=docker-ce"]


def test_a_ready_docker_is_left_alone(host: Host) -> None:
    host.fake("nvidia-ctk", "")
    assert host.boot("docker-setup").returncode == 0
    assert not [c for c in host.calls() if c.startswith(("apt-get", "systemctl", "nvidia-ctk"))]
    assert host.phases() == []


def test_a_toolkit_that_cannot_be_installed_fails_the_boot(host: Host, apt: Path) -> None:
    host.fake("apt-get", "exit 100")
    result = host.boot("docker-setup")
    assert result.returncode == 1 and "could not install the NVIDIA container toolkit" in host.failed()
    host.assert_failed_once()  # fail() exits: the trap stays quiet


@pytest.mark.parametrize(("tool", "reported"), [
    ("systemctl", "systemctl restart docker"),
    ("nvidia-ctk", "nvidia-ctk runtime configure --runtime=docker > /dev/null"),  # as bash prints its redirection
])
def test_a_command_that_fails_under_set_e_fails_the_boot_naming_itself(host: Host, tool: str, reported: str) -> None:
    """Before the ERR trap, set -e ended docker-setup here without a word: no marker, the status still
    "checking Docker", and the idle watcher waited out its whole boot grace with the GPU billing."""
    host.set_docker(runtimes=["runc"], root="/var/lib/docker")  # so the runtime is configured and Docker restarted
    host.fake("nvidia-ctk", "")
    host.fake(tool, "exit 1")
    result = host.boot("docker-setup")
    assert result.returncode == 1
    line = script_line(" ".join(reported.split()[:3]))
    assert host.failed() == f'sdxl-boot docker-setup: "{reported}" exited 1 (line {line})\n'
    host.assert_failed_once()


# --- the GPU and its driver ------------------------------------------------------------------------------------

def nvidia_smi(host: Host, cuda: str) -> None:
    host.fake("nvidia-smi", f'''if [ "$1" = --query-gpu=name,memory.total ]; then echo "NVIDIA A10G, 23028 MiB"
else echo "| NVIDIA-SMI 580.95.05    Driver Version: 580.95.05    CUDA Version: {cuda}     |"; fi''')


HUNG = "exec sleep 300"  # exec: the process timeout stops is the one that hangs


@pytest.mark.parametrize("hangs", ["on every call", "after listing the GPU"])
def test_a_hung_nvidia_smi_is_stopped_and_fails_the_boot(host: Host, hangs: str) -> None:
    """A broken driver can hang nvidia-smi. Each call is bounded: the step fails, with the marker the idle watcher
    reads, instead of waiting for systemd to kill the unit at its TimeoutStartSec (which wrote nothing)."""
    if hangs == "on every call":
        host.fake("nvidia-smi", HUNG)
    else:
        listed = '[ "$1" != --query-gpu=name,memory.total ] || { echo "NVIDIA A10G, 23028 MiB"; exit; }'
        host.fake("nvidia-smi", f"{listed}\n{HUNG}")
    result = host.boot("gpu-check", "13.0", SDXL_SMI_SECONDS="1", SDXL_GPU_WAIT_SECONDS="0", timeout=20)
    assert result.returncode == 1
    assert "nvidia-smi did not answer within 1 s" in host.failed()
    assert host.failed().startswith("nvidia-smi sees no GPU" if hangs == "on every call" else
                                    "nvidia-smi listed the GPU, then failed")
    host.assert_failed_once()
    assert host.phases() == []


def test_gpu_check_records_the_driver_phase(host: Host) -> None:
    nvidia_smi(host, "13.0")
    result = host.boot("gpu-check", "13.0")
    assert result.returncode == 0, result.stderr
    assert host.phases() == ['driver-ok gpu="NVIDIA A10G, 23028 MiB" cuda=13.0']
    assert host.status() == "driver ok\n"
    line = (host.state / "boot-phases.log").read_text()
    assert " boot=" in line and " uptime=" in line  # seconds since power-on: comparable across boots
    assert "phase driver-ok" in host.console()
    nvidia_smi(host, "13.2")  # a newer minor than the image's runs it too
    assert host.boot("gpu-check", "13.0").returncode == 0


def test_a_driver_too_old_for_the_images_cuda_fails_with_both_versions(host: Host) -> None:
    nvidia_smi(host, "12.9")
    result = host.boot("gpu-check", "13.0")
    assert result.returncode == 1
    message = "the NVIDIA driver supports CUDA 12.9, but the server image needs CUDA 13.0"
    assert message in host.failed() and message in host.status() and message in host.console()
    host.assert_failed_once()
    assert host.phases() == []


@pytest.mark.parametrize("nvidia_smi_body", [
    "echo 'NVIDIA-SMI has failed because it couldn'\"'\"'t communicate with the NVIDIA driver.'; exit 9",
    None,  # not installed at all
])
def test_gpu_check_fails_loudly_to_console_and_status_file(host: Host, nvidia_smi_body: str | None) -> None:
    if nvidia_smi_body:
        host.fake("nvidia-smi", nvidia_smi_body)
    result = host.boot("gpu-check", "13.0", SDXL_GPU_WAIT_SECONDS="0")
    assert result.returncode == 1
    assert host.status().startswith("FAILED: nvidia-smi sees no GPU")
    assert "FAILED" in host.console() and "The server will not start" in host.console()
    assert ("communicate with the NVIDIA driver" if nvidia_smi_body else "not found") in host.console()
    assert host.failed().startswith("nvidia-smi sees no GPU")  # the idle watcher powers off soon after
    assert host.phases() == []


# --- building from the source bundle, then running: through the rendered units ------------------------------

def small_bundle() -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, text in (("image/Dockerfile", "FROM scratch\n"), ("server/app.py", "print('app')\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text.encode()))
    data = raw.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def values_for(cloud: str, sha: str, **overrides) -> BootstrapValues:
    aws = cloud == "aws"
    return replace(BootstrapValues(
        model=MODEL, cors_origins=("*",), public_ip="203.0.113.10", cloud=cloud,
        location="us-east-1" if aws else "sdxl-test-project", data_devices=("/dev/xvdf",),
        secrets=(("SDXL_API_TOKEN", "/sdxl-endpoint/dev/api-token" if aws else "sdxl-dev-api-token"),
                 ("HF_TOKEN", "/sdxl-endpoint/dev/hf-token" if aws else "sdxl-dev-hf-token")),
        source=SourceBundle(BUCKET, f"bundles/{sha}.tar", sha),
    ), **overrides)


def store_secrets(host: Host, values: BootstrapValues) -> None:
    for variable, name in values.secrets:
        value = TOKEN if variable == "SDXL_API_TOKEN" else HF_TOKEN
        if values.cloud == "aws":
            host.cloud.parameters[name] = value
        else:
            host.cloud.secrets[f"projects/{values.location}/secrets/{name}"] = value


def run_unit(host: Host, document: str, name: str) -> None:
    """Run a rendered unit's ExecStartPre and ExecStart lines, in order, as systemd would (a leading `-`
    lets a line fail; %n, %i and %% resolved), with the instance's paths mapped onto this test's stand-ins.
    `name` may be a template's instance, such as sdxl-failed@sdxl-data.service: its file is sdxl-failed@.service."""
    files = files_of(document)
    template, at, instance = name.partition("@")
    specifiers = {"n": f"{name}.service", "i": instance, "%": "%"}
    (host.root / "settings.env").write_text(files[bootstrap.SETTINGS_FILE]["content"])
    paths = {
        bootstrap.BOOT_SCRIPT: f"bash {SCRIPT}", "/usr/bin/python3": sys.executable, "/usr/bin/docker": "docker",
        bootstrap.CLOUD_HELPER: str(IMAGE / "host" / "sdxl_cloud.py"),
        bootstrap.SETTINGS_FILE: str(host.root / "settings.env"),
        bootstrap.ENV_FILE: str(host.run / "server.env"), bootstrap.MODEL_CACHE_DIR: str(host.data / "models"),
    }
    lines = re.sub(r"\\\n\s*", " ", unit(files, f"{template}{at}")).splitlines()
    lines = [re.sub(r"%(.)", lambda m: specifiers[m[1]], line) for line in lines if line.startswith("Exec")]
    commands = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStartPre=")]
    commands += [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    for command in commands:
        may_fail = command.startswith("-")
        for instance_path, here in sorted(paths.items(), key=lambda p: -len(p[0])):
            command = command.replace(instance_path, here)
        result = subprocess.run(["bash", "-c", command.lstrip("-")], env=host.environment(), capture_output=True,
                                text=True, timeout=60)
        assert may_fail or result.returncode == 0, f"{name}: {command}\n{result.stdout}{result.stderr}"


def index(calls: list[str], prefix: str) -> int:
    found = [i for i, call in enumerate(calls) if call.startswith(prefix)]
    assert found, f"nothing starting {prefix!r} in {calls}"
    return found[0]


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_first_boot_fetches_the_bundle_checks_it_builds_then_runs(host: Host, cloud: str) -> None:
    data, sha = small_bundle()
    host.cloud.objects[f"{BUCKET}/bundles/{sha}.tar"] = data
    values = values_for(cloud, sha)
    store_secrets(host, values)
    document = render_cloud_init(values)
    run_unit(host, document, "sdxl-image")
    run_unit(host, document, "sdxl-server")
    calls = host.calls()
    fetch = index(calls, f"cloud GET {BUCKET}.s3.us-east-1.amazonaws.com/bundles/{sha}.tar" if cloud == "aws"
                  else f"cloud GET storage.googleapis.com/storage/v1/b/{BUCKET}/o/bundles%2F{sha}.tar")
    verify = index(calls, "sha256sum ")
    build = index(calls, f"docker build --quiet -f {host.data}/bundles/build.")
    tag = index(calls, f"docker tag sdxl-endpoint-server:{sha} sdxl-endpoint-server:current")
    token = index(calls, "cloud POST ssm.us-east-1.amazonaws.com/ AmazonSSM.GetParameter" if cloud == "aws" else
                  "cloud GET secretmanager.googleapis.com/v1/projects/sdxl-test-project/secrets/sdxl-dev-api-token")
    run = index(calls, "docker run --rm --name sdxl-server --gpus all")
    assert fetch < verify < build < tag < token < run
    assert calls[run].endswith(" sdxl-endpoint-server:current")
    assert calls[run + 1] == "docker run: env file holds SDXL_API_TOKEN"
    assert host.phases() == [f"image-built image=sdxl-endpoint-server:{sha}"]
    assert (host.run / "server.env").read_text().endswith(f"SDXL_API_TOKEN={TOKEN}\nHF_TOKEN={HF_TOKEN}\n")
    assert not list((host.data / "bundles").iterdir())  # the bundle and its unpacked copy are gone once built
    assert TOKEN not in host.log.read_text() + host.console()


def test_a_later_boot_reuses_the_image_built_from_the_same_bundle(host: Host) -> None:
    _, sha = small_bundle()
    host.set_docker(images=[f"sdxl-endpoint-server:{sha}"])
    run_unit(host, render_cloud_init(values_for("aws", sha)), "sdxl-image")
    assert not [c for c in host.calls() if c.startswith(("cloud", "docker build"))]
    assert host.phases() == [f"image-built image=sdxl-endpoint-server:{sha} (built on an earlier boot)"]


def test_a_bundle_whose_hash_does_not_match_is_never_built(host: Host) -> None:
    data, sha = small_bundle()
    host.cloud.objects[f"{BUCKET}/bundles/{sha}.tar"] = data + b"tampered"
    result = host.boot("build", "aws", "us-east-1", BUCKET, f"bundles/{sha}.tar", sha)
    assert result.returncode == 1
    assert not [c for c in host.calls() if c.startswith("docker build")]
    got = hashlib.sha256(data + b"tampered").hexdigest()
    assert host.failed() == f"the source bundle's sha256 is {got}, not {sha}: refusing to build it\n"
    assert host.status().startswith("FAILED: the source bundle's sha256")
    assert not list((host.data / "bundles").glob("*"))  # the download is not kept


def test_a_superseded_server_image_is_pruned_after_a_build(host: Host) -> None:
    data, sha = small_bundle()
    host.cloud.objects[f"{BUCKET}/bundles/{sha}.tar"] = data
    host.set_docker(images=["sdxl-endpoint-server:0ld", "sdxl-endpoint-server:current"])
    assert host.boot("build", "aws", "us-east-1", BUCKET, f"bundles/{sha}.tar", sha).returncode == 0
    assert "docker rmi sdxl-endpoint-server:0ld" in host.calls()
    assert "docker image prune --force" in host.calls()  # dangling layers of what was replaced
    assert set(host.docker()["images"]) == {f"sdxl-endpoint-server:{sha}", "sdxl-endpoint-server:current"}


def test_the_build_cache_is_pruned_after_a_successful_build_once_the_old_images_are_gone(host: Host) -> None:
    """BuildKit's cache (several GB) would stay on the data disk forever; pruned only once the new image is served
    and the superseded one removed, so the cache that backed the old image is no longer shared with any image."""
    data, sha = small_bundle()
    host.cloud.objects[f"{BUCKET}/bundles/{sha}.tar"] = data
    host.set_docker(images=["sdxl-endpoint-server:0ld", "sdxl-endpoint-server:current"], build_cache=["0ld"])
    assert host.boot("build", "aws", "us-east-1", BUCKET, f"bundles/{sha}.tar", sha).returncode == 0
    calls = host.calls()
    prune = index(calls, "docker builder prune")
    assert calls[prune] == "docker builder prune --force"  # no prompt: nobody is there to answer it
    assert index(calls, "docker tag ") < index(calls, "docker rmi sdxl-endpoint-server:0ld") < prune
    assert host.docker()["build_cache"] == []
    assert f"sdxl-endpoint-server:{sha}" in host.docker()["images"]


@pytest.mark.parametrize("how", ["build_fails", "built_on_an_earlier_boot", "pulled"])
def test_the_build_cache_is_kept_unless_a_build_succeeded(host: Host, how: str) -> None:
    """A failed (or timed-out) build keeps its cache: the next boot's build resumes from it."""
    data, sha = small_bundle()
    host.cloud.objects[f"{BUCKET}/bundles/{sha}.tar"] = data
    host.set_docker(images=["sdxl-endpoint-server:current"], build_cache=["earlier"])
    if how == "pulled":
        assert host.boot("pull-server", "ghcr.io/o/server:1", "gcp").returncode == 0
    else:
        if how == "build_fails":
            host.set_docker(build_fails=True)
        else:
            host.set_docker(images=[f"sdxl-endpoint-server:{sha}"])
        assert host.boot("build", "aws", "us-east-1", BUCKET, f"bundles/{sha}.tar", sha).returncode == 0
    assert not [c for c in host.calls() if c.startswith("docker builder")]
    assert host.docker()["build_cache"][0] == "earlier"


@pytest.mark.parametrize("broken", ["build_fails", "no_bundle"])
def test_a_failed_build_keeps_the_previous_image_or_fails_the_boot(host: Host, broken: str) -> None:
    data, sha = small_bundle()
    if broken == "build_fails":
        host.cloud.objects[f"{BUCKET}/bundles/{sha}.tar"] = data
        host.set_docker(build_fails=True)
    args = ("build", "aws", "us-east-1", BUCKET, f"bundles/{sha}.tar", sha)
    failed = host.boot(*args)
    assert failed.returncode == 1 and "no earlier server image is on the data disk" in host.failed()
    (host.run / "failed").unlink()
    host.set_docker(images=["sdxl-endpoint-server:current"])
    kept = host.boot(*args)
    assert kept.returncode == 0 and host.failed() is None
    assert host.phases()[-1] == "image-kept image=sdxl-endpoint-server:current"


@pytest.mark.parametrize("earlier_image", [True, False])
def test_a_build_runs_under_a_time_limit_and_falls_back_when_it_runs_past(host: Host, earlier_image: bool) -> None:
    data, sha = small_bundle()
    host.cloud.objects[f"{BUCKET}/bundles/{sha}.tar"] = data
    if earlier_image:
        host.set_docker(images=["sdxl-endpoint-server:current"])
    # coreutils' timeout answers 124 when it had to stop the command: here the build always runs past its limit.
    host.fake("timeout", '[ "$2 $3" != "docker build" ] || exit 124; shift; exec "$@"')
    result = host.boot("build", "aws", "us-east-1", BUCKET, f"bundles/{sha}.tar", sha, SDXL_BUILD_SECONDS="42")
    assert [c for c in host.calls() if c.startswith("timeout 42 docker build --quiet -f ")]
    assert f"sdxl-endpoint-server:{sha}" not in host.docker()["images"]
    if earlier_image:  # the documented fallback: the previous server image on the data disk
        assert result.returncode == 0 and host.failed() is None
        assert host.phases() == ["image-kept image=sdxl-endpoint-server:current"]
    else:  # nothing to fall back to: the boot fails, and the idle watcher powers off soon
        assert result.returncode == 1
        assert host.failed() == ("docker build failed or ran past 42 s, and no earlier server image is on the "
                                 "data disk\n")


# --- pulling ---------------------------------------------------------------------------------------------------

def test_an_ecr_image_is_pulled_logged_in_as_the_instance(host: Host) -> None:
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/sdxl-endpoint-server:1.0.0"
    result = host.boot("pull-server", image, "aws")
    assert result.returncode == 0, result.stderr
    calls = host.calls()
    login = index(calls, "docker login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com")
    token = index(calls, "cloud POST api.ecr.us-east-1.amazonaws.com/")  # piped into the login: either logs first
    pull = index(calls, f"docker pull --quiet {image}")
    assert max(token, login) < pull and "docker login got a password on stdin" in calls[login:pull]
    assert fake_cloud.ECR_PASSWORD not in host.log.read_text().replace("docker login got a password on stdin", "")
    assert host.phases() == [f"image-pulled image={image}"]
    assert "sdxl-endpoint-server:current" in host.docker()["images"]


def test_a_public_image_is_pulled_without_a_login(host: Host) -> None:
    assert host.boot("pull-server", "ghcr.io/o/server:1", "gcp").returncode == 0
    assert not [c for c in host.calls() if "login" in c or c.startswith("cloud")]
    assert "docker pull --quiet ghcr.io/o/server:1" in host.calls()


def test_pull_falls_back_to_the_copy_on_disk_when_the_registry_is_down(host: Host) -> None:
    host.set_docker(images=["ghcr.io/o/server:1"], registry_down=True)
    assert host.boot("pull-server", "ghcr.io/o/server:1", "aws").returncode == 0
    assert host.phases() == ["image-pulled image=ghcr.io/o/server:1 (local copy)"]
    assert len([c for c in host.calls() if c.startswith("docker pull")]) == 1  # one try: a copy is there


def test_pull_fails_without_registry_or_local_copy(host: Host) -> None:
    host.set_docker(registry_down=True)
    result = host.boot("pull", "caddy:2.11", SDXL_NET_WAIT_SECONDS="0")
    assert result.returncode == 1
    assert host.status().startswith("FAILED: cannot pull caddy:2.11")


def test_caddys_pull_keeps_the_copy_on_disk(host: Host) -> None:
    host.set_docker(images=["caddy:2.11"], registry_down=True)
    assert host.boot("pull", "caddy:2.11").returncode == 0 and host.failed() is None


def test_a_pull_runs_under_a_time_limit(host: Host) -> None:
    host.fake("timeout", 'echo "timeout $*" >> "$FAKE_LOG"; shift; exec "$@"')
    assert host.boot("pull", "caddy:2.11", SDXL_PULL_SECONDS="42").returncode == 0
    assert [c for c in host.calls() if c.startswith("timeout 42 docker")]


# --- model downloaded, server ready ----------------------------------------------------------------------------

def test_the_model_is_fetched_beside_the_image_and_its_phase_recorded_once(host: Host,
                                                                        ready_server: ReadyServer) -> None:
    with FakeHub() as hub:
        hub.token = HF_TOKEN
        host.cloud.parameters["/sdxl-endpoint/dev/hf-token"] = HF_TOKEN
        document = render_cloud_init(values_for("aws", "0" * 64))
        model_unit = unit(files_of(document), "sdxl-model")
        command = re.search(r"^ExecStart=\S+ (.*)$", model_unit, re.MULTILINE)[1].split()
        assert command == ["model-download", "aws", "us-east-1", MODEL, "HF_TOKEN=/sdxl-endpoint/dev/hf-token"]
        result = host.boot(*command, HF_ENDPOINT=hub.url, SDXL_CACHE_DIR=str(host.data / "models"))
        assert result.returncode == 0, result.stderr
        assert host.phases() == [f"model-downloaded model={MODEL}"]
        # The server's watch sees the model too, and records nothing twice.
        (host.run / "server.env").write_text(f"SDXL_API_TOKEN={TOKEN}\n")
        ready_server.ready.set()
        assert host.boot("watch-ready", MODEL, SDXL_SERVER=ready_server.url,
                         SDXL_CACHE_DIR=str(host.data / "models")).returncode == 0
        assert host.phases() == [f"model-downloaded model={MODEL}", "server-ready"]
        # Once on disk, a later boot asks the Hub nothing.
        asked = len(hub.requests)
        assert host.boot(*command, HF_ENDPOINT=hub.url, SDXL_CACHE_DIR=str(host.data / "models")).returncode == 0
        assert len(hub.requests) == asked
    assert HF_TOKEN not in host.log.read_text() + host.console()


def test_a_failed_model_fetch_is_not_fatal(host: Host) -> None:
    result = host.boot("model-download", "gcp", "sdxl-test-project", MODEL, HF_ENDPOINT="http://127.0.0.1:9",
                       SDXL_CACHE_DIR=str(host.data / "models"))
    assert result.returncode == 0 and host.failed() is None and host.phases() == []
    assert "the server downloads what is missing" in host.console()
    # A built-in model or a local folder: nothing to fetch, no Hub call.
    assert host.boot("model-download", "aws", "us-east-1", "tiny", HF_ENDPOINT="http://127.0.0.1:9").returncode == 0
    assert "fetching" not in host.console().split("missing")[-1]

def test_only_the_boots_own_steps_report_a_failure_the_trap_caught(host: Host) -> None:
    # The ready watcher and the model prefetch record phases; a phase that cannot be written ends that step (its
    # unit retries or gives up) without marking the boot failed, which would power the VM off.
    (host.state / "boot-phases.log").mkdir(parents=True)
    assert host.boot("phase", "server-ready").returncode != 0 and host.failed() is None


class ReadyServer:
    """/ready: 503 until `ready` is set, 401 without the right token; counts polls."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.polls = 0
        self.on_poll = lambda polls: None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.polls += 1
                outer.on_poll(outer.polls)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    code = 401
                else:
                    code = 200 if outer.ready.is_set() and self.path == "/ready" else 503
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def ready_server() -> Iterator[ReadyServer]:
    server = ReadyServer()
    yield server
    server.httpd.shutdown()


def test_watch_ready_records_download_then_ready_reading_the_token_once_written(host: Host,
                                                                                 ready_server: ReadyServer) -> None:
    model_dir = host.data / "models" / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0"
    (model_dir / "snapshots" / "abc123").mkdir(parents=True)
    (model_dir / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    (model_dir / "blobs").mkdir()
    partial = model_dir / "blobs" / "0f3e.incomplete"  # the UNet, still downloading
    partial.write_text("")

    def progress(polls: int) -> None:
        if polls == 2:  # the server's start writes the env file only now
            host.run.mkdir(exist_ok=True)
            (host.run / "server.env").write_text(f"SDXL_MODEL={MODEL}\nSDXL_API_TOKEN={TOKEN}\n")
        if polls == 3:
            partial.rename(model_dir / "blobs" / "0f3e")  # download finished; loading and warm-up follow
        if polls == 6:
            ready_server.ready.set()

    ready_server.on_poll = progress
    result = host.boot("watch-ready", MODEL, SDXL_SERVER=ready_server.url)
    assert result.returncode == 0, result.stderr
    assert host.phases() == [f"model-downloaded model={MODEL}", "server-ready"]
    assert host.status() == "ready\n"
    assert TOKEN not in host.console() + result.stdout + result.stderr


def test_watch_ready_for_a_built_in_model_has_nothing_to_download(host: Host, ready_server: ReadyServer) -> None:
    host.run.mkdir()
    (host.run / "server.env").write_text(f"SDXL_API_TOKEN={TOKEN}\n")
    ready_server.ready.set()
    assert host.boot("watch-ready", "tiny", SDXL_SERVER=ready_server.url).returncode == 0
    assert host.phases() == ["server-ready"]


def test_a_failure_stays_the_status_until_the_next_boot(host: Host) -> None:
    host.run.mkdir()
    (host.run / "failed").write_text("the data disk did not appear\n")
    host.state.mkdir()
    (host.state / "status").write_text("FAILED: the data disk did not appear\n")
    host.fake("nvidia-smi", 'echo "NVIDIA A10G, 23028 MiB"; echo "CUDA Version: 13.0"')
    assert host.boot("gpu-check", "13.0").returncode == 0
    assert host.status() == "FAILED: the data disk did not appear\n"  # a later step does not hide it


def on_failure(document: str, step: str) -> str:
    """The unit systemd starts when `step` fails: its OnFailure=, %n resolved (sdxl-failed@sdxl-data.service)."""
    (started,) = re.findall(r"^OnFailure=(\S+)$", unit(files_of(document), step), re.MULTILINE)
    return started.replace("%n", f"{step}.service").removesuffix(".service")


@pytest.mark.parametrize(("step", "result", "said"), [
    ("sdxl-data", "timeout", "timeout"), ("sdxl-docker", "exit-code", "exit-code"),
    ("sdxl-gpu-check", "signal", "signal"), ("sdxl-image", "timeout", "timeout"),
    ("sdxl-image", "success", "dependency"),  # never ran: a unit it requires failed, which fires OnFailure= too
])
def test_a_step_that_failed_without_a_word_is_marked_failed_by_its_on_failure_unit(host: Host, step: str,
                                                                                   result: str, said: str) -> None:
    """Killed by systemd at its TimeoutStartSec (or crashed), a step writes nothing: its OnFailure= unit, run here as
    the rendered template says, marks the boot failed with the unit's name and systemd's Result for it."""
    host.answer_result(f"{step}.service", result)
    document = render_cloud_init(values_for("aws", "0" * 64))
    run_unit(host, document, on_failure(document, step))  # exits 0: the failure unit itself never fails
    assert f"systemctl show -P Result {step}.service" in host.calls()
    assert host.failed() == f"{step}.service failed ({said}): see journalctl -u {step}.service\n"
    host.assert_failed_once()


def test_the_on_failure_unit_keeps_the_words_of_a_step_that_said_why(host: Host) -> None:
    nvidia_smi(host, "12.9")
    assert host.boot("gpu-check", "13.0").returncode == 1  # fail(): the marker and status say why
    said = host.failed()
    host.answer_result("sdxl-gpu-check.service", "exit-code")
    document = render_cloud_init(values_for("aws", "0" * 64))
    run_unit(host, document, on_failure(document, "sdxl-gpu-check"))
    assert host.failed() == said
    host.assert_failed_once()  # said once, by the step
    assert "sdxl-boot: sdxl-gpu-check.service failed (exit-code)" in host.console()


def test_usage_error() -> None:
    result = subprocess.run(["bash", str(SCRIPT), "bogus"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_every_command_the_units_run_exists() -> None:
    documents = [render_cloud_init(values_for("aws", "0" * 64)),
                 render_cloud_init(values_for("aws", "0" * 64, source=None, image="ghcr.io/o/s:1"))]
    units = "".join(f["content"] for document in documents for f in files_of(document).values()
                    if f["path"].endswith(".service"))
    commands = set(re.findall(rf"{bootstrap.BOOT_SCRIPT} ([a-z-]+)", units))
    usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=10).stderr
    assert len(commands) == 9 and all(f"{command}|" in usage or f"{command} " in usage for command in commands), (
        commands, usage)


def test_the_units_find_what_the_bootstrap_writes_without_overrides() -> None:
    # The units run sdxl-boot with no environment: its defaults must be the paths the bootstrap writes, or the
    # instance silently watches a file nobody writes (the tests above set every path explicitly).
    from image.host import idle_stop

    defaults = dict(re.findall(r"^\w+=\$\{(SDXL_\w+):-([^}]*)\}", SCRIPT.read_text(), re.MULTILINE))
    assert defaults["SDXL_ENV_FILE"] == bootstrap.ENV_FILE == idle_stop.ENV_FILE
    assert defaults["SDXL_DATA_DIR"] == bootstrap.DATA_DIR
    assert defaults["SDXL_CACHE_DIR"].replace("$DATA", defaults["SDXL_DATA_DIR"]) == bootstrap.MODEL_CACHE_DIR
    assert defaults["SDXL_CLOUD_HELPER"] == bootstrap.CLOUD_HELPER
    assert defaults["SDXL_SERVER"] == idle_stop.SERVER == f"http://127.0.0.1:{bootstrap.SERVER_PORT}"
    assert f"{defaults['SDXL_RUN_DIR']}/failed" == idle_stop.FAILED_FILE
