"""image/pod_idle_stop.py: a RunPod pod stops itself when idle, through RunPod's GraphQL API (the loopback fake
that parses the runpod SDK's queries), and image/entrypoint.sh starts it in a pod only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from image import pod_idle_stop
from image.host.idle_stop import Observation
from tests.fakes import runpod_api as fake_api
from tests.image.conftest import IMAGE, ROOT, TOKEN, LiveServer

POD = "pod0idle42xyz"
POD_KEY = "rp_pod_scoped_key_of_pod0idle42xyz"


@pytest.fixture
def runpod(monkeypatch):
    fake = fake_api.FakeRunPod(pod_keys={POD_KEY: POD})
    fake.pods[POD] = {"id": POD, "name": "sdxl-runpod-l4", "imageName": "img", "env": [], "gpuCount": 1,
                      "containerDiskInGb": 100, "volumeInGb": 0, "ports": "8000/http", "desiredStatus": "RUNNING",
                      "costPerHr": 0.43, "machine": {"gpuDisplayName": "L4"}}
    with fake_api.serving(fake, monkeypatch) as served:
        yield served


def test_stops_its_own_pod_with_the_pod_scoped_key(runpod) -> None:
    answer = pod_idle_stop.stop_pod(POD, POD_KEY, os.environ["RUNPOD_API_BASE_URL"])
    assert answer == {"id": POD, "desiredStatus": "EXITED"}
    assert runpod.pods[POD]["desiredStatus"] == "EXITED" and runpod.calls == ["podStop"]


def test_the_mutation_is_the_sdks_and_escapes_the_id() -> None:
    from runpod.api.mutations.pods import generate_pod_stop_mutation

    assert fake_api.operation_input(pod_idle_stop.stop_mutation(POD), "podStop") == \
        fake_api.operation_input(generate_pod_stop_mutation(POD), "podStop") == {"podId": POD}
    tricky = 'x") { id } podTerminate(input: {podId: "y'
    assert fake_api.operation_input(pod_idle_stop.stop_mutation(tricky), "podStop") == {"podId": tricky}


@pytest.mark.parametrize(("pod", "key", "why"), [
    ("another-pod", POD_KEY, "RunPod refused podStop: This API key is scoped to another pod."),
    (POD, "not-a-key", "RunPod answered HTTP 401 to podStop"),
])
def test_a_refused_stop_says_what_runpod_answered(runpod, pod: str, key: str, why: str) -> None:
    with pytest.raises(pod_idle_stop.StopRefused, match=why):
        pod_idle_stop.stop_pod(pod, key, os.environ["RUNPOD_API_BASE_URL"])
    assert runpod.pods[POD]["desiredStatus"] == "RUNNING"


def test_an_unreachable_api_is_a_refused_stop() -> None:
    with pytest.raises(pod_idle_stop.StopRefused, match="cannot reach RunPod's API"):
        pod_idle_stop.stop_pod(POD, POD_KEY, "http://127.0.0.1:9", timeout=2)


def test_outside_a_pod_it_does_nothing(monkeypatch, capsys) -> None:
    monkeypatch.delenv("RUNPOD_POD_ID", raising=False)
    monkeypatch.setenv("RUNPOD_API_KEY", POD_KEY)
    assert pod_idle_stop.main(["--minutes", "1"], sleep=pytest.fail) == 0
    assert "not in a RunPod pod" in capsys.readouterr().err


def test_a_refused_stop_is_retried_at_the_next_poll(runpod, monkeypatch) -> None:
    """Idle from the first ready poll; the first stop is refused (RunPod unreachable), the next one stops the pod."""
    monkeypatch.setenv("RUNPOD_POD_ID", POD)
    monkeypatch.setenv("RUNPOD_API_KEY", POD_KEY)
    ready = Observation(ready=True, last_request=1000.0)
    monkeypatch.setattr(pod_idle_stop.idle_stop, "observe_server", lambda server, token: ready)
    real_stop, tries = pod_idle_stop.stop_pod, []

    def flaky_stop(pod_id: str, api_key: str, api_base: str) -> dict:
        tries.append(api_base)
        return real_stop(pod_id, api_key, "http://127.0.0.1:9" if len(tries) == 1 else api_base, timeout=2)

    monkeypatch.setattr(pod_idle_stop, "stop_pod", flaky_stop)
    now, slept = [5000.0], []

    def sleep(seconds: float) -> None:
        assert len(slept) < 10, "never stopped"
        slept.append(seconds)
        now[0] += seconds

    code = pod_idle_stop.main(["--minutes", "1", "--poll-seconds", "30"], clock=lambda: now[0], sleep=sleep)
    assert code == 0 and len(tries) == 2
    assert runpod.pods[POD]["desiredStatus"] == "EXITED" and runpod.calls == ["podStop"]
    assert slept == [30, 30, 30]  # two polls to the idle minute, one after the refusal


def test_against_the_live_server_an_idle_pod_stops_itself(entrypoint_server: LiveServer, runpod) -> None:
    """The sidecar as the entrypoint starts it, watching the real server: ready, no request, stopped."""
    env = {**os.environ, "RUNPOD_POD_ID": POD, "RUNPOD_API_KEY": POD_KEY, "SDXL_API_TOKEN": TOKEN,
           "SDXL_PORT": str(entrypoint_server.port)}
    result = subprocess.run([sys.executable, "-m", "image.pod_idle_stop", "--minutes", "0.02", "--poll-seconds",
                             "0.3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"RunPod is stopping pod {POD} (EXITED)" in result.stdout
    # The pod's own wording: its container disk does not stay, unlike a VM's.
    assert "stopping this pod (its GPU stops billing" in result.stdout and "powering off" not in result.stdout
    assert runpod.pods[POD]["desiredStatus"] == "EXITED"


def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A `python` on PATH that records each start: its arguments, and whether it got RunPod's key."""
    bin_dir, log = tmp_path / "bin", tmp_path / "starts.log"
    bin_dir.mkdir()
    script = bin_dir / "python"
    script.write_text(f'#!/bin/sh\necho "$* key=${{RUNPOD_API_KEY:-none}}" >> {log}\n')
    script.chmod(0o755)
    return bin_dir, log


@pytest.mark.parametrize("in_pod", [True, False])
def test_the_entrypoint_starts_the_sidecar_in_a_pod_only_and_keeps_the_key_from_the_server(
        tmp_path: Path, in_pod: bool) -> None:
    bin_dir, log = fake_python(tmp_path)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HF_HOME": str(tmp_path / "models"), "SDXL_IDLE_STOP_MINUTES": "15"}
    if in_pod:
        env |= {"RUNPOD_POD_ID": POD, "RUNPOD_API_KEY": POD_KEY}
    result = subprocess.run(["sh", str(IMAGE / "entrypoint.sh"), "--compile"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    for _ in range(50):  # the sidecar starts in the background
        starts = sorted(log.read_text().splitlines()) if log.exists() else []
        if len(starts) == (2 if in_pod else 1):
            break
        subprocess.run(["sleep", "0.1"], check=True)
    expected = ["-m server --compile key=none"]
    if in_pod:
        expected.append(f"-m image.pod_idle_stop --minutes 15 key={POD_KEY}")
    assert starts == sorted(expected)
