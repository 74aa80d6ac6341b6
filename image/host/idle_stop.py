"""Idle auto-stop: power the instance off after N minutes without a generation request.

Runs on the host (stdlib only: the DLAMI and Deep Learning VM images ship python3), as a systemd
service. A guest power-off stops the instance on both clouds (AWS: shutdown behaviour "stop"; GCP: a
guest shutdown leaves the VM TERMINATED), so GPU billing ends while the disk, IP and model cache stay.

What counts as activity is the server's own `sdxl_last_request_timestamp_seconds` gauge, which only
generation requests move (polls of /health, /ready and /metrics, ours included, never do), plus any image
queued or in flight, and only while the server is ready: the gauge starts at the process's start time and
/metrics answers while the model loads, so a server that restarts (or crash-loops) would otherwise look busy
forever. The clock starts only once /ready has answered 200: a first boot that is still building the image
or downloading the model is not stopped, unless it is still not ready after BOOT_GRACE_MINUTES, far beyond
any healthy boot. A boot step that failed for good (no GPU, a driver too old for the image's CUDA, a data
disk that never came, an image that cannot be built) writes FAILED_FILE, and so does one that failed any other
way (sdxl-boot's ERR trap, or sdxl-failed@ started by its unit's OnFailure=, a kill at its time limit included):
then the machine powers off after FAILED_GRACE_MINUTES, time enough to read the console, instead of billing for
the whole boot grace.

`--minutes 0` turns off the idle power-off alone: a failed boot step and a boot that is never ready still power
off, so a broken GPU never bills indefinitely, whatever idleStopMinutes says.

The watcher runs from boot on every single-instance VM, independent of every other unit (stdlib only: both GPU
images ship python3).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

SERVER = "http://127.0.0.1:8000"
ENV_FILE = "/run/sdxl-endpoint/server.env"
FAILED_FILE = "/run/sdxl-endpoint/failed"  # written by sdxl-boot when a boot step failed, however it did
POLL_SECONDS = 60
BOOT_GRACE_MINUTES = 180  # a healthy first boot (build, 6.9 GB download, warm-up) takes 10-30 minutes
FAILED_GRACE_MINUTES = 10  # long enough to read the console after a failed boot step

_SAMPLE = re.compile(r"^(sdxl_[a-z_]+)(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Observation:
    ready: bool  # /ready answered 200
    last_request: float | None = None  # the server's gauge (unix time), None if /metrics was unreadable
    busy: bool = False  # images queued or being generated right now
    failed: str | None = None  # why a boot step failed for good, if one did


class IdleTracker:
    """Decides, one observation at a time, whether the instance has been idle long enough to stop."""

    def __init__(self, idle_seconds: float, boot_grace_seconds: float = BOOT_GRACE_MINUTES * 60,
                 failed_grace_seconds: float = FAILED_GRACE_MINUTES * 60) -> None:
        self.idle_seconds = idle_seconds  # 0: never for idleness (a failed or never-ready boot still stops)
        self.boot_grace_seconds = boot_grace_seconds
        self.failed_grace_seconds = failed_grace_seconds
        self.first_seen: float | None = None  # when the watcher started watching
        self.last_activity: float | None = None  # None until the server has been ready once
        self.failed_since: float | None = None  # when a failed boot step was first seen
        self._gauge: float | None = None  # the last-request gauge as last read while ready
        self._was_ready = False  # the previous observation was ready too

    def observe(self, now: float, seen: Observation) -> bool:
        """Record one observation taken at `now`; True means: power off now."""
        if self.first_seen is None:
            self.first_seen = now
        failing = seen.failed and not seen.ready
        self.failed_since = (now if self.failed_since is None else self.failed_since) if failing else None
        if self.failed_since is not None and now - self.failed_since >= self.failed_grace_seconds:
            return True
        if not seen.ready:
            # Booting, restarting or crashed: nothing it shows counts. Before the first ready only a boot
            # that never gets there is stopped; after it, a dead server on an idle instance counts down.
            self._was_ready = False
            if self.last_activity is None:
                return now - self.first_seen >= self.boot_grace_seconds
            return self._idle_long_enough(now)
        if self.last_activity is None:
            self.last_activity = now
        if seen.busy:
            self.last_activity = now
        if seen.last_request is not None:
            if self._was_ready and self._gauge is not None and seen.last_request != self._gauge:
                # A request arrived while ready. Never later than now, so a host clock step cannot keep the
                # instance "busy" for as long as the step.
                self.last_activity = max(self.last_activity, min(seen.last_request, now))
            # The first reading of each ready spell is only a baseline: a restart resets the gauge to the
            # process's start time, which is no request.
            self._gauge = seen.last_request
        self._was_ready = True
        return self._idle_long_enough(now)

    @property
    def stops_when_idle(self) -> bool:
        return self.idle_seconds > 0

    def _idle_long_enough(self, now: float) -> bool:
        return self.stops_when_idle and now - self.last_activity >= self.idle_seconds

    def idle_for(self, now: float) -> float:
        return 0.0 if self.last_activity is None else now - self.last_activity


def parse_metrics(text: str) -> tuple[float | None, bool]:
    """(last generation request time, busy) from Prometheus text exposition."""
    values: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        values[name] = values.get(name, 0.0) + float(value)
    busy = values.get("sdxl_queue_depth", 0.0) > 0 or values.get("sdxl_in_flight_images", 0.0) > 0
    return values.get("sdxl_last_request_timestamp_seconds"), busy


def read_failure(failed_file: str) -> str | None:
    try:
        with open(failed_file, encoding="utf-8") as f:
            return f.read().strip() or "a boot step failed"
    except FileNotFoundError:
        return None


def read_token(env_file: str) -> str | None:
    """SDXL_API_TOKEN from the root-only env file, without executing it as shell."""
    try:
        with open(env_file, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep and key == "SDXL_API_TOKEN" and value:
                    return value
    except FileNotFoundError:
        pass
    return None


def _get(url: str, token: str | None) -> tuple[int, str]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the idle watcher only talks to the server on loopback, not {url}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback http, checked above
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""  # not listening yet (container starting) or restarting


def observe_server(server: str, token: str | None, failed: str | None = None) -> Observation:
    ready = _get(f"{server}/ready", token)[0] == 200
    status, text = _get(f"{server}/metrics", token)
    if status != 200:
        # /ready needs no token, /metrics does: a ready server whose activity cannot be read (no token yet, or
        # not the server's) is not counted as ready, or its requests would go unseen and it would be stopped busy.
        return Observation(ready=False, failed=failed)
    last_request, busy = parse_metrics(text)
    return Observation(ready=ready, last_request=last_request, busy=busy, failed=failed)


def console(message: str) -> None:
    """To the journal and the serial console, which both clouds show without logging in."""
    print(message, flush=True)
    try:
        with open("/dev/console", "w", encoding="utf-8") as tty:
            tty.write(f"sdxl-idle-stop: {message}\n")
    except OSError:
        pass


# What the log says when the watcher stops its machine: a VM keeps its disk; `where` says where the boot's story is.
VM_WORDING = {"stop": "powering off", "kept": "the disk, IP and model cache stay; `make wake` starts it again",
              "where": "see /var/lib/sdxl-endpoint/status", "after_failure": "fix it, then `make up` or `make wake`",
              "after_never_ready": "`make wake` retries"}
# A fleet's instance is never woken: powered off, it ends, and its group starts a fresh one from the template.
FLEET_WORDING = {**VM_WORDING, "after_failure": "the group replaces this instance; fix it, then `make up`",
                 "after_never_ready": "the group replaces this instance"}


def run(tracker: IdleTracker, observe, clock, sleep, power_off, poll_seconds: float = POLL_SECONDS,
        wording: dict[str, str] = VM_WORDING) -> None:
    """The service loop, with every side effect injected (tests pass fakes; no real sleeps)."""
    stop, kept, where = wording["stop"], wording["kept"], wording["where"]
    announced = False
    while True:
        now = clock()
        seen = observe()
        if tracker.observe(now, seen):
            if tracker.failed_since is not None:
                console(f"a boot step failed ({seen.failed}); {stop} so it stops billing "
                        f"({where}; {wording['after_failure']})")
            elif tracker.last_activity is None:
                console(f"the server was never ready in {tracker.boot_grace_seconds / 60:.0f} min: {stop} "
                        f"so a broken boot stops billing ({where}; "
                        f"{wording['after_never_ready']})")
            else:
                console(f"no generation request for {tracker.idle_for(now) / 60:.0f} min: {stop} ({kept})")
            power_off()
            return
        if tracker.last_activity is not None and not announced:
            console(f"server ready: idle auto-stop after {tracker.idle_seconds / 60:g} min without requests"
                    if tracker.stops_when_idle else "server ready: idle auto-stop is off (0 minutes)")
            announced = True
        sleep(poll_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, required=True,
                        help="idle minutes before power-off; 0: never for idleness (a failed boot still powers off)")
    parser.add_argument("--server", default=SERVER)
    parser.add_argument("--env-file", default=ENV_FILE)
    parser.add_argument("--failed-file", default=FAILED_FILE)
    parser.add_argument("--fleet", action="store_true", help="a fleet's instance: its group replaces it")
    args = parser.parse_args(argv)
    run(
        IdleTracker(max(args.minutes, 0) * 60),
        # The token is read at each poll: the server's start writes it, and a rotation changes it.
        observe=lambda: observe_server(args.server, read_token(args.env_file), read_failure(args.failed_file)),
        clock=time.time,  # wall clock: the server's gauge is wall-clock time too
        sleep=time.sleep,
        power_off=lambda: subprocess.run(["systemctl", "poweroff"], check=True),
        wording=FLEET_WORDING if args.fleet else VM_WORDING,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
