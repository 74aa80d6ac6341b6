"""The idle auto-stop watcher (image/host/idle_stop.py): decisions on a fake clock, and what it reads
from the real server's /metrics."""

from __future__ import annotations

import httpx
import pytest

from image.host import idle_stop
from image.host.idle_stop import IdleTracker, Observation
from server.metrics import Metrics
from stacks import bootstrap
from stacks.bootstrap import render_cloud_init
from tests.image.conftest import TOKEN, LiveServer

MINUTE = 60.0
BOOT = 1_800_000_000.0  # a wall-clock time, like the server's gauge


def test_never_stops_a_slow_first_boot_before_the_server_was_ready_once() -> None:
    tracker = IdleTracker(30 * MINUTE)
    # First boot: pulling the image, downloading 6.9 GB, compiling, on a slow link.
    for minute in range(0, idle_stop.BOOT_GRACE_MINUTES, 5):
        assert not tracker.observe(BOOT + minute * MINUTE, Observation(ready=False))
    assert tracker.last_activity is None


def test_a_boot_that_never_gets_ready_stops_after_the_grace(capsys: pytest.CaptureFixture[str]) -> None:
    # A failed GPU check or a server that cannot start: the GPU must not bill until someone looks.
    clock = {"now": BOOT}
    powered_off = []

    def sleep(seconds: float) -> None:
        clock["now"] += seconds

    idle_stop.run(IdleTracker(30 * MINUTE), observe=lambda: Observation(ready=False), clock=lambda: clock["now"],
                  sleep=sleep, power_off=lambda: powered_off.append(clock["now"]))
    assert powered_off == [BOOT + idle_stop.BOOT_GRACE_MINUTES * MINUTE]
    assert "never ready in 180 min" in capsys.readouterr().out


def test_stops_after_the_idle_time_counted_from_ready() -> None:
    tracker = IdleTracker(30 * MINUTE)
    ready_at = BOOT + 12 * MINUTE
    # The gauge starts at the server's start time, before ready: it must not shorten the idle time.
    gauge = BOOT + 1 * MINUTE
    assert not tracker.observe(ready_at, Observation(ready=True, last_request=gauge))
    assert not tracker.observe(ready_at + 29 * MINUTE, Observation(ready=True, last_request=gauge))
    assert tracker.observe(ready_at + 30 * MINUTE, Observation(ready=True, last_request=gauge))


def test_a_generation_request_restarts_the_count() -> None:
    tracker = IdleTracker(30 * MINUTE)
    tracker.observe(BOOT, Observation(ready=True, last_request=BOOT))
    request_at = BOOT + 20 * MINUTE
    assert not tracker.observe(BOOT + 21 * MINUTE, Observation(ready=True, last_request=request_at))
    assert not tracker.observe(request_at + 29 * MINUTE, Observation(ready=True, last_request=request_at))
    assert tracker.observe(request_at + 30 * MINUTE, Observation(ready=True, last_request=request_at))


def test_a_long_generation_in_flight_counts_as_activity() -> None:
    tracker = IdleTracker(5 * MINUTE)
    tracker.observe(BOOT, Observation(ready=True, last_request=BOOT))
    # A request accepted at BOOT is still running (a slow GPU, a deep queue) 10 minutes later.
    assert not tracker.observe(BOOT + 10 * MINUTE, Observation(ready=True, last_request=BOOT, busy=True))
    assert not tracker.observe(BOOT + 14 * MINUTE, Observation(ready=True, last_request=BOOT))
    assert tracker.observe(BOOT + 15 * MINUTE, Observation(ready=True, last_request=BOOT))


def test_a_server_that_dies_after_ready_still_counts_down() -> None:
    tracker = IdleTracker(30 * MINUTE)
    tracker.observe(BOOT, Observation(ready=True, last_request=BOOT))
    assert not tracker.observe(BOOT + 10 * MINUTE, Observation(ready=False))  # /metrics unreachable
    assert tracker.observe(BOOT + 30 * MINUTE, Observation(ready=False))


def test_a_gauge_from_the_future_cannot_postpone_the_stop_forever() -> None:
    tracker = IdleTracker(30 * MINUTE)
    tracker.observe(BOOT, Observation(ready=True, last_request=BOOT))
    # A clock step on the host must not make the instance look busy for a day.
    tracker.observe(BOOT + 1 * MINUTE, Observation(ready=True, last_request=BOOT + 24 * 60 * MINUTE))
    assert tracker.observe(BOOT + 31 * MINUTE, Observation(ready=True, last_request=BOOT + 24 * 60 * MINUTE))


def test_zero_minutes_never_stops_a_server_that_was_ready_for_idleness() -> None:
    tracker = IdleTracker(0)
    tracker.observe(BOOT, Observation(ready=True, last_request=BOOT))
    assert not tracker.observe(BOOT + 10_000 * MINUTE, Observation(ready=True, last_request=BOOT))
    assert not tracker.observe(BOOT + 20_000 * MINUTE, Observation(ready=False))  # nor once it died: no idle clock


def test_run_loop_powers_off_once_with_a_fake_clock(capsys: pytest.CaptureFixture[str]) -> None:
    now = [BOOT]
    observations = iter([Observation(ready=False)] * 3 + [Observation(ready=True, last_request=BOOT)] * 100)
    slept: list[float] = []
    powered_off: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    idle_stop.run(IdleTracker(10 * MINUTE), observe=lambda: next(observations), clock=lambda: now[0],
                  sleep=sleep, power_off=lambda: powered_off.append(now[0]), poll_seconds=MINUTE)
    # Three polls before ready, then ten idle minutes counted from the first ready poll.
    assert powered_off == [BOOT + 13 * MINUTE]
    assert len(slept) == 13
    out = capsys.readouterr().out
    assert "idle auto-stop after 10 min" in out and "powering off" in out


class Replay:
    """The watcher's loop on a fake clock, against a scripted server: no real sleeps, every poll recorded."""

    def __init__(self, server) -> None:
        self.now = BOOT
        self.server = server  # minutes since power-on -> Observation
        self.powered_off: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        assert self.now - BOOT < 48 * 60 * MINUTE, "no power-off within 48 hours"

    def run(self, tracker: IdleTracker) -> float:
        idle_stop.run(tracker, observe=lambda: self.server((self.now - BOOT) / MINUTE), clock=lambda: self.now,
                      sleep=self.sleep, power_off=lambda: self.powered_off.append(self.now))
        return (self.powered_off[0] - BOOT) / MINUTE


def crash_loop(minute: float) -> Observation:
    """Ready at 12 min after a first boot; from 20 min on it crashes every 10 min, loads for 3 min (with
    /metrics answering and its gauge reset to the restart), then is ready again. Nobody sends a request."""
    if minute < 12:
        return Observation(ready=False, last_request=BOOT + 1 * MINUTE)
    if minute < 20:
        return Observation(ready=True, last_request=BOOT + 1 * MINUTE)
    restart = 20 + (minute - 20) // 10 * 10
    return Observation(ready=minute - restart >= 3, last_request=BOOT + restart * MINUTE)


def test_a_crash_looping_server_powers_off_after_the_idle_time(capsys: pytest.CaptureFixture[str]) -> None:
    # Each restart resets the gauge to the start time, and /metrics answers while loading: before, every
    # restart looked like a request, and a replay of 24 hours gave no power-off at all.
    stopped_at = Replay(crash_loop).run(IdleTracker(30 * MINUTE))
    assert stopped_at == 12 + 30  # counted from the first ready, as if no restart had happened
    assert "no generation request for 30 min" in capsys.readouterr().out


def test_a_request_while_ready_still_counts_between_crashes() -> None:
    def server(minute: float) -> Observation:
        seen = crash_loop(minute)
        if minute >= 37 and seen.ready:  # a request at 37 min, inside the third ready spell (33-40)
            return Observation(ready=True, last_request=BOOT + 37 * MINUTE)
        return seen
    assert Replay(server).run(IdleTracker(30 * MINUTE)) == 37 + 30


def test_a_failed_gpu_check_powers_off_after_a_short_delay_not_the_boot_grace(capsys) -> None:
    # sdxl-boot's gpu-check wrote /run/sdxl-endpoint/failed a minute in; nothing will ever be ready.
    def server(minute: float) -> Observation:
        return Observation(ready=False, failed="nvidia-smi sees no GPU" if minute >= 1 else None)

    stopped_at = Replay(server).run(IdleTracker(30 * MINUTE))
    assert stopped_at == 1 + idle_stop.FAILED_GRACE_MINUTES < idle_stop.BOOT_GRACE_MINUTES
    out = capsys.readouterr().out
    assert "a boot step failed (nvidia-smi sees no GPU)" in out and "powering off" in out


def test_zero_minutes_still_powers_off_after_a_failed_gpu_check(capsys) -> None:
    # idleStopMinutes 0 turns off the idle power-off only: a GPU that is not there must not bill indefinitely.
    def server(minute: float) -> Observation:
        return Observation(ready=False, failed="nvidia-smi sees no GPU" if minute >= 1 else None)

    assert Replay(server).run(IdleTracker(0)) == 1 + idle_stop.FAILED_GRACE_MINUTES
    assert "a boot step failed (nvidia-smi sees no GPU)" in capsys.readouterr().out


def test_zero_minutes_still_stops_a_boot_that_never_gets_ready(capsys) -> None:
    assert Replay(lambda minute: Observation(ready=False)).run(IdleTracker(0)) == idle_stop.BOOT_GRACE_MINUTES
    assert "never ready in 180 min" in capsys.readouterr().out


def test_zero_minutes_never_powers_off_a_crash_looping_server_once_it_was_ready(capsys) -> None:
    replay = Replay(crash_loop)
    with pytest.raises(AssertionError, match="no power-off within 48 hours"):
        replay.run(IdleTracker(0))
    assert replay.powered_off == []
    assert "idle auto-stop is off (0 minutes)" in capsys.readouterr().out


def test_the_rendered_zero_minute_unit_runs_the_watcher_that_powers_off_a_failed_boot(tmp_path, monkeypatch) -> None:
    """The unit idleStopMinutes 0 renders, run as systemd would (its ExecStart arguments), on a fake clock: the
    watcher does not exit at once, as it did, and powers a failed boot off."""
    from tests.stacks.test_bootstrap import directives, files_of, unit, values

    (command,) = directives(unit(files_of(render_cloud_init(values(idle_stop_minutes=0))), "sdxl-idle-stop"))[
        "ExecStart"]
    python, script, *args = command.split()
    assert (python, script, args) == ("/usr/bin/python3", bootstrap.IDLE_SCRIPT, ["--minutes", "0"])
    failed_file = tmp_path / "failed"
    failed_file.write_text("the NVIDIA driver supports CUDA 12.9, but the server image needs CUDA 13.0\n")
    clock = {"now": BOOT}
    powered_off: list[tuple[float, list[str]]] = []
    monkeypatch.setattr(idle_stop.time, "time", lambda: clock["now"])
    monkeypatch.setattr(idle_stop.time, "sleep", lambda seconds: clock.update(now=clock["now"] + seconds))
    monkeypatch.setattr(idle_stop.subprocess, "run", lambda argv, check: powered_off.append((clock["now"], argv)))
    # Port 9 (discard) on loopback: nothing answers, as before the server container has started.
    assert idle_stop.main([*args, "--server", "http://127.0.0.1:9", "--env-file", str(tmp_path / "none.env"),
                           "--failed-file", str(failed_file)]) == 0
    assert powered_off == [(BOOT + idle_stop.FAILED_GRACE_MINUTES * MINUTE, ["systemctl", "poweroff"])]


def test_a_fleets_rendered_unit_says_the_group_replaces_the_instance(tmp_path, monkeypatch, capsys) -> None:
    """A fleet's instance is never woken (`make wake` refuses fleets): its watcher's console line says what happens
    instead, and the failed boot still powers off after the short grace."""
    from tests.stacks.test_bootstrap import directives, files_of, unit
    from tests.stacks.test_fleet_bootstrap import FLEET_VARIANTS

    (command,) = directives(unit(files_of(render_cloud_init(FLEET_VARIANTS["gcp-pull-lb"])), "sdxl-idle-stop"))[
        "ExecStart"]
    _, _, *args = command.split()
    assert args == ["--minutes", "0", "--fleet"]
    failed_file = tmp_path / "failed"
    failed_file.write_text("gpu-check: no GPU\n")
    clock = {"now": BOOT}
    powered_off: list[float] = []
    monkeypatch.setattr(idle_stop.time, "time", lambda: clock["now"])
    monkeypatch.setattr(idle_stop.time, "sleep", lambda seconds: clock.update(now=clock["now"] + seconds))
    monkeypatch.setattr(idle_stop.subprocess, "run", lambda argv, check: powered_off.append(clock["now"]))
    assert idle_stop.main([*args, "--server", "http://127.0.0.1:9", "--env-file", str(tmp_path / "none.env"),
                           "--failed-file", str(failed_file)]) == 0
    assert powered_off == [BOOT + idle_stop.FAILED_GRACE_MINUTES * MINUTE]
    out = capsys.readouterr().out
    assert "the group replaces this instance" in out and "make wake" not in out


def test_a_failure_first_seen_at_clock_zero_still_counts() -> None:
    tracker = IdleTracker(0)
    failing = Observation(ready=False, failed="gpu-check: no GPU")
    assert not tracker.observe(0.0, failing)
    assert tracker.observe(idle_stop.FAILED_GRACE_MINUTES * MINUTE, failing)


def test_a_failure_that_clears_does_not_power_off() -> None:
    tracker = IdleTracker(30 * MINUTE)
    assert not tracker.observe(BOOT, Observation(ready=False, failed="cannot pull"))
    assert not tracker.observe(BOOT + 5 * MINUTE, Observation(ready=False))  # the next boot step got further
    assert not tracker.observe(BOOT + 12 * MINUTE, Observation(ready=False, failed="cannot pull"))
    assert tracker.observe(BOOT + 22 * MINUTE, Observation(ready=False, failed="cannot pull"))


def test_a_ready_server_is_not_stopped_for_a_stale_failure_marker() -> None:
    tracker = IdleTracker(30 * MINUTE)
    for minute in range(0, 25):
        assert not tracker.observe(BOOT + minute * MINUTE, Observation(ready=True, last_request=BOOT, failed="x"))


def test_the_watcher_reads_the_token_and_the_failure_at_every_poll(tmp_path, monkeypatch) -> None:
    env_file, failed_file = tmp_path / "server.env", tmp_path / "failed"
    seen: list[tuple[str | None, str | None]] = []
    monkeypatch.setattr(idle_stop, "observe_server",
                        lambda server, token, failed: seen.append((token, failed)) or Observation(ready=False))
    polls = iter(range(2))

    def sleep(seconds: float) -> None:
        poll = next(polls)
        if poll == 0:
            env_file.write_text("SDXL_API_TOKEN=written-at-server-start\n")
        if poll == 1:
            failed_file.write_text("the data disk did not appear\n")
            env_file.write_text("SDXL_API_TOKEN=rotated\n")

    monkeypatch.setattr(idle_stop.time, "sleep", sleep)
    with pytest.raises(StopIteration):
        idle_stop.main(["--minutes", "30", "--env-file", str(env_file), "--failed-file", str(failed_file)])
    assert seen == [(None, None), ("written-at-server-start", None), ("rotated", "the data disk did not appear")]


def test_parses_the_real_servers_metrics() -> None:
    metrics = Metrics()
    metrics.last_request.set(BOOT + 42)
    metrics.requests.labels(route="/", method="POST", status="200").inc()
    assert idle_stop.parse_metrics(metrics.render().decode()) == (BOOT + 42, False)
    metrics.in_flight.set(1)
    assert idle_stop.parse_metrics(metrics.render().decode()) == (BOOT + 42, True)
    metrics.in_flight.set(0)
    metrics.queue_depth.set(3)
    assert idle_stop.parse_metrics(metrics.render().decode())[1] is True


def test_reads_only_the_api_token_from_the_env_file(tmp_path) -> None:
    env_file = tmp_path / "server.env"
    env_file.write_text("SDXL_MODEL=tiny\nSDXL_API_TOKEN=abc=def\nHF_TOKEN=hf_secret\n")
    assert idle_stop.read_token(str(env_file)) == "abc=def"
    assert idle_stop.read_token(str(tmp_path / "missing.env")) is None


def test_refuses_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        idle_stop.observe_server("http://169.254.169.254", None)


def test_polls_do_not_count_but_a_generation_does(entrypoint_server: LiveServer) -> None:
    """Against the live server: the watcher's own polls (and /health, /info) leave the gauge alone."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = idle_stop.observe_server(entrypoint_server.url, TOKEN)
    assert first.ready and first.last_request is not None and not first.busy
    for path in ("/health", "/ready", "/metrics", "/info"):
        httpx.get(f"{entrypoint_server.url}{path}", headers=auth)
    assert idle_stop.observe_server(entrypoint_server.url, TOKEN).last_request == first.last_request

    response = httpx.post(f"{entrypoint_server.url}/", headers={**auth, "Accept": "image/png"}, timeout=60,
                          json={"inputs": "a lighthouse", "parameters": {"width": 64, "height": 64,
                                                                          "num_inference_steps": 2}})
    assert response.status_code == 200, response.text
    after = idle_stop.observe_server(entrypoint_server.url, TOKEN)
    assert after.last_request > first.last_request


def test_without_the_token_it_sees_nothing_and_so_never_starts_counting(entrypoint_server: LiveServer) -> None:
    # /ready answers without the token, /metrics does not: a watcher that cannot see the requests must not count
    # the server as ready (it would power off a busy instance once the idle time passed).
    assert httpx.get(f"{entrypoint_server.url}/ready", timeout=10).status_code == 200
    assert httpx.get(f"{entrypoint_server.url}/metrics", timeout=10).status_code == 401
    assert idle_stop.observe_server(entrypoint_server.url, None) == Observation(ready=False)
    assert idle_stop.observe_server(entrypoint_server.url, "not-the-token") == Observation(ready=False)
