"""image/host/sdxl-boot.sh, run for real by bash with stand-ins for nvidia-smi and docker on PATH,
and a loopback HTTP server standing in for the container's /ready."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.image.conftest import IMAGE

SCRIPT = IMAGE / "host" / "sdxl-boot.sh"
MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
TOKEN = "boot-test-token"


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("state", "cache", "bin")}
    paths["bin"].mkdir()
    paths["console"] = tmp_path / "console"
    paths["env"] = tmp_path / "server.env"
    paths["env"].write_text(f"SDXL_MODEL={MODEL}\nSDXL_API_TOKEN={TOKEN}\nHF_TOKEN=hf_x\n")
    return paths


def fake(host: dict[str, Path], name: str, body: str) -> None:
    path = host["bin"] / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def boot(host: dict[str, Path], *args: str, server: str = "http://127.0.0.1:9", **env: str):
    environment = {
        "PATH": f"{host['bin']}:/usr/bin:/bin",
        "SDXL_STATE_DIR": str(host["state"]), "SDXL_CACHE_DIR": str(host["cache"]),
        "SDXL_ENV_FILE": str(host["env"]), "SDXL_CONSOLE": str(host["console"]), "SDXL_SERVER": server,
        **env,
    }
    return subprocess.run(["bash", str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=30)


def phases(host: dict[str, Path]) -> list[str]:
    log = host["state"] / "boot-phases.log"
    return [line.split(" phase=", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


def test_gpu_check_records_the_driver_phase(host) -> None:
    fake(host, "nvidia-smi", 'echo "NVIDIA A10G, 23028 MiB"')
    result = boot(host, "gpu-check")
    assert result.returncode == 0, result.stderr
    assert phases(host) == ['driver-ok gpu="NVIDIA A10G, 23028 MiB"']
    assert (host["state"] / "status").read_text() == "driver ok\n"
    line = (host["state"] / "boot-phases.log").read_text()
    assert " boot=" in line and " uptime=" in line  # seconds since power-on: comparable across boots
    assert "phase driver-ok" in host["console"].read_text()


@pytest.mark.parametrize("nvidia_smi", [
    "echo 'NVIDIA-SMI has failed because it couldn'\"'\"'t communicate with the NVIDIA driver.'; exit 9",
    None,  # not installed at all
])
def test_gpu_check_fails_loudly_to_console_and_status_file(host, nvidia_smi) -> None:
    if nvidia_smi:
        fake(host, "nvidia-smi", nvidia_smi)
    result = boot(host, "gpu-check", SDXL_GPU_WAIT_SECONDS="0")
    assert result.returncode == 1
    status = (host["state"] / "status").read_text()
    assert status.startswith("FAILED: nvidia-smi sees no GPU")
    console = host["console"].read_text()
    assert "FAILED" in console and "The server will not start" in console
    assert ("communicate with the NVIDIA driver" if nvidia_smi else "not found") in console
    assert phases(host) == []


def test_pull_records_the_image_phase(host) -> None:
    fake(host, "docker", 'echo "docker $*" >> "$(dirname "$0")/calls"')
    assert boot(host, "pull", "ghcr.io/o/server:1", "image-pulled").returncode == 0
    assert phases(host) == ["image-pulled image=ghcr.io/o/server:1"]
    assert (host["bin"] / "calls").read_text() == "docker pull --quiet ghcr.io/o/server:1\n"


def test_pull_falls_back_to_the_copy_on_disk_when_the_registry_is_down(host) -> None:
    fake(host, "docker", '[ "$1" = image ] && exit 0; echo "registry unreachable" >&2; exit 1')
    assert boot(host, "pull", "ghcr.io/o/server:1", "image-pulled").returncode == 0
    assert phases(host) == ["image-pulled image=ghcr.io/o/server:1 (local copy)"]


def test_pull_fails_without_registry_or_local_copy(host) -> None:
    fake(host, "docker", "exit 1")
    assert boot(host, "pull", "ghcr.io/o/server:1", "image-pulled").returncode == 1
    assert (host["state"] / "status").read_text().startswith("FAILED: cannot pull ghcr.io/o/server:1")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the container's uid needs root, as on the instance")
def test_prepare_gives_the_cache_to_the_containers_user(host) -> None:
    assert boot(host, "prepare").returncode == 0
    assert host["cache"].stat().st_uid == 10001


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


def test_watch_ready_records_download_then_ready(host, ready_server: ReadyServer) -> None:
    model_dir = host["cache"] / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0"
    (model_dir / "snapshots" / "abc123").mkdir(parents=True)
    (model_dir / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    (model_dir / "blobs").mkdir()
    partial = model_dir / "blobs" / "0f3e.incomplete"  # the UNet, still downloading
    partial.write_text("")

    def progress(polls: int) -> None:
        if polls == 3:
            partial.rename(model_dir / "blobs" / "0f3e")  # download finished; loading and warm-up follow
        if polls == 6:
            ready_server.ready.set()

    ready_server.on_poll = progress
    result = boot(host, "watch-ready", MODEL, server=ready_server.url, SDXL_POLL_SECONDS="0.05")
    assert result.returncode == 0, result.stderr
    assert phases(host) == [f"model-downloaded model={MODEL}", "server-ready"]
    assert (host["state"] / "status").read_text() == "ready\n"
    assert TOKEN not in host["console"].read_text() + result.stdout + result.stderr


def test_watch_ready_on_a_later_boot_finds_the_model_cached(host, ready_server: ReadyServer) -> None:
    ready_server.ready.set()
    result = boot(host, "watch-ready", MODEL, server=ready_server.url, SDXL_POLL_SECONDS="0.05")
    assert result.returncode == 0
    # No cache folder here (the server found it elsewhere): still recorded, in order, once ready.
    assert phases(host) == [f"model-downloaded model={MODEL}", "server-ready"]


def test_watch_ready_for_a_built_in_model_has_nothing_to_download(host, ready_server: ReadyServer) -> None:
    ready_server.ready.set()
    assert boot(host, "watch-ready", "tiny", server=ready_server.url, SDXL_POLL_SECONDS="0.05").returncode == 0
    assert phases(host) == ["server-ready"]


def test_usage_error() -> None:
    result = subprocess.run(["bash", str(SCRIPT), "bogus"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "usage:" in result.stderr
