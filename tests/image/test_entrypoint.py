"""image/entrypoint.sh and image/healthcheck.py, outside a container (Docker cannot run here)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.image.conftest import IMAGE, ROOT, TOKEN, LiveServer


def test_entrypoint_starts_the_server_with_tiny(entrypoint_server: LiveServer) -> None:
    # The fixture only returns once /ready said 200 through the process the entrypoint exec'd into.
    info = httpx.get(f"{entrypoint_server.url}/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert info["model"] == "tiny"
    assert info["ready"] is True
    assert entrypoint_server.process.poll() is None
    # `exec`: the server itself is the process (PID 1 in the container), so it gets docker's SIGTERM.
    cmdline = open(f"/proc/{entrypoint_server.process.pid}/cmdline", "rb").read().split(b"\0")
    assert b"-m" in cmdline and b"server" in cmdline


def test_healthcheck_passes_against_the_running_server(entrypoint_server: LiveServer) -> None:
    env = {**os.environ, "SDXL_PORT": str(entrypoint_server.port)}
    result = subprocess.run([sys.executable, str(IMAGE / "healthcheck.py")], env=env, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_listens(entrypoint_server: LiveServer) -> None:
    env = {**os.environ, "SDXL_PORT": "9"}  # discard: nothing answers HTTP there
    result = subprocess.run([sys.executable, str(IMAGE / "healthcheck.py")], env=env, capture_output=True, timeout=10)
    assert result.returncode == 1
    assert b"healthcheck:" in result.stderr


def test_entrypoint_refuses_an_unwritable_model_cache(tmp_path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {**os.environ, "HF_HOME": str(blocker / "models"), "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"}
    result = subprocess.run(["sh", str(IMAGE / "entrypoint.sh")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=10)
    assert result.returncode == 78
    assert "is not writable" in result.stderr and "chown -R" in result.stderr
