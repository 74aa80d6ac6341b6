"""RunPod idle stop: inside the pod, stop the pod itself after N minutes without a generation request.

A RunPod pod bills its GPU while it runs, and the VMs' idle watcher (image/host/idle_stop.py) powers off a host,
which a pod does not have. So the image's entrypoint starts this sidecar next to the server when it runs in a
RunPod pod: RunPod sets RUNPOD_POD_ID and a pod-scoped RUNPOD_API_KEY in every pod (RunPod docs, "Pod environment
variables": "Runpod automatically sets these environment variables ... RUNPOD_API_KEY: Pod-scoped API key"). It
reads the server's activity exactly as the VM watcher does (the same IdleTracker over the server's /ready and
/metrics, on loopback, with the server's own SDXL_API_TOKEN), and when it is time it stops its own pod through
RunPod's GraphQL API: `podStop(input: {podId})`, the mutation the runpod SDK's stop_pod sends
(runpod/api/mutations/pods.py), to `$RUNPOD_API_BASE_URL/graphql` (https://api.runpod.io by default, as the SDK)
with the key as a bearer token (runpod/api/graphql.py). `make wake` resumes the pod.

Stdlib only, like the VM watcher: the server's virtualenv needs nothing more. `--minutes 0` turns off the idle
stop alone; a server that is never ready within the boot grace still stops the pod, so a broken pod stops billing.
A refused stop (network, RunPod's answer) is logged and retried at the next poll.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from image.host import idle_stop

# A stopped pod keeps its host but not its container disk: a resumed pod downloads the model again.
POD_WORDING = {**idle_stop.VM_WORDING, "stop": "stopping this pod",
               "kept": "its GPU stops billing; `make wake` resumes it on the same host, and the model downloads again",
               "where": "see the pod's logs"}
API_BASE = "https://api.runpod.io"  # the runpod SDK's default for RUNPOD_API_BASE_URL
USER_AGENT = "sdxl-endpoint-pod-idle-stop"


class StopRefused(RuntimeError):
    """RunPod did not stop the pod; the message says what it answered."""


def stop_mutation(pod_id: str) -> str:
    """The runpod SDK's podStop mutation, with the id written as a GraphQL string (JSON's escapes are GraphQL's)."""
    return f"mutation {{ podStop(input: {{podId: {json.dumps(pod_id)}}}) {{ id desiredStatus }} }}"


def stop_pod(pod_id: str, api_key: str, api_base: str = API_BASE, timeout: float = 30) -> dict:
    """Ask RunPod to stop this pod; RunPod's answer (`{id, desiredStatus}`), or StopRefused saying why."""
    request = urllib.request.Request(  # noqa: S310 - RunPod's https API, or the fake the tests point it at
        f"{api_base.rstrip('/')}/graphql", data=json.dumps({"query": stop_mutation(pod_id)}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise StopRefused(f"RunPod answered HTTP {err.code} to podStop") from err
    except (OSError, ValueError) as err:
        raise StopRefused(f"cannot reach RunPod's API ({type(err).__name__}: {err})") from err
    if answer.get("errors"):
        raise StopRefused(f"RunPod refused podStop: {answer['errors'][0].get('message', answer['errors'][0])}")
    stopped = (answer.get("data") or {}).get("podStop")
    if not stopped:
        raise StopRefused(f"RunPod's answer to podStop has no pod: {answer}")
    return stopped


def main(argv: list[str] | None = None, *, clock=time.time, sleep=time.sleep) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, required=True,
                        help="idle minutes before the pod stops; 0: never for idleness (a never-ready server "
                             "still stops it)")
    parser.add_argument("--poll-seconds", type=float, default=idle_stop.POLL_SECONDS)
    args = parser.parse_args(argv)
    pod_id, api_key = os.environ.get("RUNPOD_POD_ID", ""), os.environ.get("RUNPOD_API_KEY", "")
    if not pod_id or not api_key:
        print("pod-idle-stop: RUNPOD_POD_ID or RUNPOD_API_KEY is not set: not in a RunPod pod, nothing to do",
              file=sys.stderr)
        return 0
    api_base = os.environ.get("RUNPOD_API_BASE_URL") or API_BASE
    server = f"http://127.0.0.1:{os.environ.get('SDXL_PORT') or 8000}"
    token = os.environ.get("SDXL_API_TOKEN") or None

    def stop() -> None:
        answer = stop_pod(pod_id, api_key, api_base)
        idle_stop.console(f"RunPod is stopping pod {pod_id} ({answer.get('desiredStatus')})")

    tracker = idle_stop.IdleTracker(max(args.minutes, 0) * 60)
    while True:
        try:
            idle_stop.run(tracker, observe=lambda: idle_stop.observe_server(server, token), clock=clock,
                          sleep=sleep, power_off=stop, poll_seconds=args.poll_seconds, wording=POD_WORDING)
            return 0
        except StopRefused as err:
            # The tracker still says "stop": the next run asks again after one poll.
            idle_stop.console(f"{err}; retrying in {args.poll_seconds:g} s")
            sleep(args.poll_seconds)


if __name__ == "__main__":
    sys.exit(main())
