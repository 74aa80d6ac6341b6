"""image/host/sdxl_health.py, the fleet instance's health check, run for real: against the real server (tiny model,
started through image/entrypoint.sh), whose /ready needs the bearer token that load balancers cannot send, and
against a loopback stand-in for the states the tiny server does not stay in (loading, draining, gone)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from stacks import bootstrap
from tests.image.conftest import IMAGE, TOKEN, LiveServer, free_port, stop, wait_for

SCRIPT = IMAGE / "host" / "sdxl_health.py"


def start_shim(server: str, env_file: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--bind", "127.0.0.1", "--port", str(port),
                                "--server", server, "--env-file", str(env_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/nothing", timeout=2).status_code == 404, timeout=20, what="the health shim",
             process=process)
    return process, url


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """The env file the server's start writes (sdxl_cloud.py env-file): settings, then the token."""
    path = tmp_path / "server.env"
    path.write_text(f"SDXL_MODEL=tiny\nSDXL_CORS_ORIGINS=[\"*\"]\nSDXL_API_TOKEN={TOKEN}\n")
    return path


def test_the_real_servers_ready_reaches_the_load_balancer_without_a_header(entrypoint_server: LiveServer,
                                                                            env_file: Path) -> None:
    # What a load balancer sees without the shim: the server wants its token.
    assert httpx.get(f"{entrypoint_server.url}/ready", timeout=5).status_code == 401
    process, url = start_shim(entrypoint_server.url, env_file)
    try:
        answer = httpx.get(f"{url}/ready", timeout=10)
        assert answer.status_code == 200 and answer.text == "ready\n"
        assert TOKEN not in answer.text and TOKEN not in str(answer.headers)
        # A token that is not the server's is reported as the server reports it, never as healthy.
        env_file.write_text(env_file.read_text().replace(TOKEN, "not-the-token"))
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 401
        env_file.unlink()
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 401
        # Nothing but /ready is served: no route of the server is reachable through it.
        assert httpx.get(f"{url}/", timeout=5).status_code == 404
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 404
        assert httpx.post(f"{url}/ready", timeout=5).status_code == 501
    finally:
        stop(process)


class StandIn:
    """A loopback server whose /ready answers `status` to the right token, and remembers what it was sent."""

    def __init__(self) -> None:
        self.status = 503
        self.token = "first-token"
        self.seen: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                stand_in.seen.append(self.headers.get("Authorization", ""))
                ok = self.headers.get("Authorization") == f"Bearer {stand_in.token}"
                code = stand_in.status if ok else 401
                body = b'{"error": "Model is loading", "estimated_time": 90}' if code == 503 else b'{"status":"ready"}'
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.close()


def test_loading_draining_and_gone_are_unhealthy_and_a_rotated_token_is_read_at_the_next_check(
        stand_in: StandIn, tmp_path: Path) -> None:
    env = tmp_path / "server.env"
    env.write_text("SDXL_MODEL=tiny\nSDXL_API_TOKEN=first-token\n")
    process, url = start_shim(stand_in.url, env)
    try:
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 503  # loading (or draining)
        stand_in.status = 200
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
        # The server restarts with a rotated token: its start rewrites the file, the next check reads it.
        stand_in.token = "second-token"
        env.write_text("SDXL_MODEL=tiny\nSDXL_API_TOKEN=second-token\n")
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
        assert stand_in.seen[-1] == "Bearer second-token"
        stand_in.close()  # the container is gone, restarting or still building
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 503
    finally:
        stand_in.httpd.server_close()
        stop(process)


def test_the_shim_asks_the_server_on_loopback_only() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import sdxl_health
    finally:
        sys.path.remove(str(SCRIPT.parent))
    with pytest.raises(ValueError, match="loopback"):
        sdxl_health.server_ready("http://203.0.113.10:8000", "/nonexistent")
    # Its defaults are the instance's: the server's port and the env file the server's start writes.
    assert sdxl_health.SERVER == f"http://127.0.0.1:{bootstrap.SERVER_PORT}"
    assert sdxl_health.ENV_FILE == bootstrap.ENV_FILE
