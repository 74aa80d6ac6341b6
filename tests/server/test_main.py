"""`python -m server` as a process: flags, graceful SIGTERM drain, and exit on a model that cannot load."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.settings import Settings
from tests.server.helpers import FAULT, REPO, LiveServer, free_port, serving, wait_until
from tests.server.test_routes_ops import metric


def test_help_lists_every_setting_as_a_flag():
    result = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in result.stdout, name


def wait_for_metrics(http: httpx.Client, server: LiveServer, **expected: float) -> None:
    def reached() -> bool:
        text = http.get("/metrics").text
        return all(metric(text, name) == value for name, value in expected.items())

    wait_until(reached, 30, server.log)


def stall(pool: ThreadPoolExecutor, server: LiveServer, steps: int):
    """A request that takes about 0.2 s per step, in the background."""
    body = {"inputs": f"{FAULT}:stall", "parameters": {"num_inference_steps": steps}}
    return pool.submit(httpx.post, f"{server.url}/", json=body, timeout=60)


def test_sigterm_drains_answering_503_to_new_work_while_in_flight_work_finishes(tmp_path):
    args = ["--model", "tiny", "--fault-marker", FAULT, "--shutdown-grace", "20", "--max-batch", "1"]
    with serving(args, tmp_path / "server.log") as server, ThreadPoolExecutor(2) as pool, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        running = stall(pool, server, 10)  # ~2 s
        queued = pool.submit(http.post, "/", json={"inputs": "queued", "parameters": {"num_inference_steps": 2}})
        wait_for_metrics(http, server, sdxl_in_flight_images=1, sdxl_queue_depth=1)
        server.proc.send_signal(signal.SIGTERM)
        # Still listening: readiness and new work are answered, not refused, on new connections too.
        ready = httpx.get(f"{server.url}/ready", headers={"Connection": "close"})
        assert ready.status_code == 503 and "shutting down" in ready.json()["error"]
        late = httpx.post(f"{server.url}/", json={"inputs": "late"},
                          headers={"Origin": "https://app.example", "Connection": "close"})
        assert late.status_code == 503, late.text
        assert late.headers["access-control-allow-origin"] == "*"
        # A short hint (another replica, or the restarted server, answers soon), not the 20 s grace.
        assert 1 <= int(late.headers["retry-after"]) <= 5 and "shutting down" in late.json()["error"]
        late_openai = http.post("/v1/images/generations", json={"prompt": "late"})
        assert late_openai.status_code == 503 and late_openai.json()["error"]["code"] == "draining"
        assert metric(http.get("/metrics").text, "sdxl_ready") == 0
        assert not running.done()  # all of that happened during the drain
        assert running.result().status_code == 200
        assert queued.result().status_code == 200
        # Then gone, on its own, with status 0.
        assert server.proc.wait(30) == 0, server.log()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=2)
        assert "drained" in server.log()


def test_an_idle_server_keeps_answering_503_for_the_minimum_drain_then_exits(tmp_path):
    """Without --drain-min-seconds an idle server exits about 2 s after SIGTERM: too soon for a load balancer's
    health checks to see /ready fail. With it, fresh connections get 503 + Retry-After + CORS until then."""
    args = ["--model", "tiny", "--no-warmup", "--shutdown-grace", "20", "--drain-min-seconds", "5"]
    with serving(args, tmp_path / "server.log") as server:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(3)  # past the ~2 s an idle server used to take to exit
        late = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "late"}, timeout=10,
                          headers={"Origin": "https://app.example", "Connection": "close"})
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining", late.text
        assert late.headers["access-control-allow-origin"] == "*" and late.headers["retry-after"] == "5"
        assert httpx.get(f"{server.url}/ready", headers={"Connection": "close"}, timeout=10).status_code == 503
        assert server.proc.poll() is None
        assert server.proc.wait(15) == 0, server.log()
        assert 5 <= time.monotonic() - started < 12, server.log()


def test_the_minimum_drain_may_not_exceed_the_grace():
    with pytest.raises(ValueError, match="drain_min_seconds"):
        Settings(model="tiny", shutdown_grace=10, drain_min_seconds=11)


def test_work_left_when_the_grace_ends_is_answered_503_and_the_server_exits(tmp_path):
    args = ["--model", "tiny", "--fault-marker", FAULT, "--shutdown-grace", "1"]
    with serving(args, tmp_path / "server.log") as server, ThreadPoolExecutor(1) as pool, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        running = stall(pool, server, 100)  # ~20 s
        wait_for_metrics(http, server, sdxl_in_flight_images=1)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        answer = running.result()
        assert answer.status_code == 503 and "shutting down" in answer.json()["error"]
        assert time.monotonic() - started < 5
        assert server.proc.wait(15) == 0, server.log()


def test_a_model_that_cannot_load_exits_non_zero(tmp_path):
    server = LiveServer(["--model", "no-such-org/no-such-model"], tmp_path / "server.log",
                        env={"HF_HUB_OFFLINE": "1"})
    try:
        assert server.proc.wait(120) == 1, server.log()
        assert "failed to load" in server.log()
    finally:
        server.stop()


def test_forwarded_client_address_is_used_only_from_allowed_proxies(tmp_path):
    """One server trusting 127.0.0.2 only: the same header from 127.0.0.2 and from 127.0.0.1 (both loopback)."""
    server = LiveServer(["--model", "tiny", "--no-warmup", "--forwarded-allow-ips", "127.0.0.2"],
                        tmp_path / "server.log")
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"{server.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, 60, server.log)
        for source, forwarded in (("127.0.0.2", "203.0.113.7"), ("127.0.0.1", "198.51.100.9")):
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(base_url=server.url, transport=transport, timeout=5) as http:
                assert http.get("/health", headers={"X-Forwarded-For": forwarded}).status_code == 200
        server.stop()
        access = [line for line in server.log().splitlines() if '"GET /health HTTP/1.1" 200' in line]
        assert len(access) >= 3, server.log()  # the wait above, then the two under test
        access = access[-2:]
        assert "203.0.113.7" in access[0]  # from the trusted proxy: the forwarded client
        assert "127.0.0.1" in access[1] and "198.51.100.9" not in access[1]  # from anyone else: ignored
    finally:
        server.stop()


def test_metrics_port_serves_the_apps_metrics_without_the_token_while_the_api_port_keeps_asking(tmp_path):
    """The listener an in-cluster Prometheus scrapes (Kubernetes target): no token there, the API port unchanged."""
    port = free_port()
    server = LiveServer(["--model", "tiny", "--no-warmup", "--api-token", "s3cret", "--metrics-port", str(port)],
                        tmp_path / "server.log")
    headers = {"Authorization": "Bearer s3cret"}
    try:
        server.wait_ready(headers)
        assert httpx.post(f"{server.url}/", json={"inputs": "a cat", "parameters": {"num_inference_steps": 2}},
                          headers=headers, timeout=60).status_code == 200
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scraped.status_code == 200
        # The same registry as the app's: the image just generated is counted there.
        assert sum(float(v) for v in re.findall(r"^sdxl_images_generated_total\{.*\} (\S+)$", scraped.text, re.M)) == 1
        assert metric(scraped.text, "sdxl_ready") == 1
        assert httpx.get(f"{server.url}/metrics", timeout=5).status_code == 401
    finally:
        server.stop()
