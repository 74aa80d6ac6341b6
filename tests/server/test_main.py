"""`python -m server` as a process: flags, graceful SIGTERM drain, and exit on a model that cannot load."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.settings import Settings
from tests.server.helpers import FAULT, REPO, LiveServer
from tests.server.test_routes_ops import metric


def test_help_lists_every_setting_as_a_flag():
    result = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in result.stdout, name


def test_sigterm_finishes_in_flight_work_then_exits(tmp_path):
    server = LiveServer(["--model", "tiny", "--fault-marker", FAULT, "--shutdown-grace", "20",
                         "--max-batch", "1"], tmp_path / "server.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http, ThreadPoolExecutor(2) as pool:
            slow = {"inputs": f"{FAULT}:stall", "parameters": {"num_inference_steps": 6}}
            running = pool.submit(http.post, "/", json=slow)
            queued = pool.submit(httpx.post, f"{server.url}/", json={"inputs": "queued",
                                                                    "parameters": {"num_inference_steps": 2}},
                                 timeout=60)
            deadline = time.monotonic() + 30
            while True:  # one running, one waiting in the queue
                text = http.get("/metrics").text
                if metric(text, "sdxl_in_flight_images") == 1 and metric(text, "sdxl_queue_depth") == 1:
                    break
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            assert running.result().status_code == 200
            assert queued.result().status_code == 200
        # Gone: the listening socket closed at SIGTERM, the process after the drain.
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=2)
    finally:
        server.stop()


def test_a_model_that_cannot_load_exits_non_zero(tmp_path):
    server = LiveServer(["--model", "no-such-org/no-such-model"], tmp_path / "server.log",
                        env={"HF_HUB_OFFLINE": "1"})
    try:
        assert server.proc.wait(120) == 1, server.log()
        assert "failed to load" in server.log()
    finally:
        server.stop()
