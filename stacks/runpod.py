"""The RunPod Pod: this project's server image on one rented GPU, behind RunPod's HTTPS proxy.

`pulumi-runpod` was last released in 2024, so `PodProvider` is a dynamic provider (`pulumi.dynamic.
ResourceProvider`) over RunPod's official Python SDK (`runpod`), which speaks RunPod's GraphQL API
(`$RUNPOD_API_BASE_URL/graphql`, https://api.runpod.io by default): `create_pod`, `get_pods` and `terminate_pod`.
The SDK has no call that edits a pod, so an update is RunPod's REST API's `PATCH /pods/{podId}`
(https://rest.runpod.io/v1, RunPod's API reference "Update a Pod"), through `requests`.
The API key is the operator's RUNPOD_API_KEY, read when the provider runs and never stored in the state; the
server's tokens stay Pulumi secrets in the state.

- The pod runs our image with `ports="8000/http"`: RunPod's proxy serves it as https://<podId>-8000.proxy.runpod.net
  (HTTPS with no domain). That proxy (Cloudflare) closes a request after 100 s with a 524 that carries no CORS
  header, so the server's wait budget answers 429 + Retry-After and its deadline 504 before that.
- No SSH, no public IP: only the proxied HTTP port is open.
- The model cache: RunPod mounts pod volumes owned by root, and the image runs as uid 10001, whose entrypoint stops
  on a cache it cannot write. So the cache lives on the pod's container disk (`dataDiskGb` GB), which RunPod wipes
  when the pod stops: a woken pod downloads the model again (about 7 GB). See README "RunPod" for the image change
  that would let it use a volume.
- What the PATCH can set (image, variables and tokens, container disk, ports, name) changes in place: the pod keeps
  its id, so its URL. RunPod resets the pod for it ("Input for updating a Pod which will trigger a reset"): a
  restart on a wiped container disk, so the model downloads again. The GPU type, cloud type, CPU and RAM floors and
  CUDA versions are chosen when RunPod places a pod, so changing them replaces it.
- `pulumi destroy` terminates the pod: GPU and disk billing end.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
import requests

from stacks import bundle, catalog, contract, hosted
from stacks.config import MachineLookup, Settings

# No preview-time look-up: the catalog judges the GPU type; the doctor checks it against RunPod's live list.
describe_machine: MachineLookup | None = None

API_KEY_VARIABLE = "RUNPOD_API_KEY"
PROXY_URL = "https://{pod_id}-{port}.proxy.runpod.net"  # RunPod's "Expose ports" guide
PROXY_LIMIT_S = 100  # the same guide: Cloudflare closes a proxied request after 100 s (524)
# Below the proxy's limit: the wait budget refuses early (429 + Retry-After), the deadline answers 504 with CORS.
MAX_WAIT_S = 85
REQUEST_TIMEOUT_S = 95
CACHE_DIR = "/home/sdxl/.cache"  # on the container disk, writable by the image's user (uid 10001)
# The host shares its CPUs and RAM with the GPU; loading SDXL wants at least what the smallest VM targets have.
MIN_VCPUS = 4
MIN_MEMORY_GB = 16
# Creation waits until the server answers PROBE_ROUTE through the proxy: a first start pulls the image (several GB)
# and downloads the model (about 7 GB) before /ready answers 200, so the budget is Hugging Face's create budget.
# A pod that is not serving by then is terminated: it would bill while its in-image idle watcher never runs.
START_TIMEOUT_S = 30 * 60
POLL_S = 10
PROBE_TIMEOUT_S = 10  # one GET of /ready through the proxy
# RunPod's REST API (its OpenAPI document's server); PATCH {REST_URL}/pods/{podId} updates a pod.
REST_URL = "https://rest.runpod.io/v1"
REST_TIMEOUT_S = 30  # one PATCH: RunPod's own CLI (runpodctl) gives its REST calls 30 s
# After a PATCH the server that served before may answer /ready for a moment until RunPod's reset stops it; the
# wait for the new one starts once it is gone, or after this long (a change RunPod applied without a reset).
RESET_GRACE_S = 120
ERROR_BODY_CHARS = 1000  # of a refused PATCH's answer, in the error
# Chosen when RunPod places the pod on a host (create_pod): changing any of these needs a new pod.
REPLACE_ON = ("gpuTypeId", "cloudType", "minVcpuCount", "minMemoryInGb", "allowedCudaVersions")
# What PATCH /pods/{podId} sets on the same pod. `env` and `secrets` are one `env` object on the pod.
UPDATE_IN_PLACE = ("name", "imageName", "containerDiskInGb", "ports", "env", "secrets")


class RunPodError(Exception):
    """What went wrong, in words the operator can act on."""


def api_key() -> str:
    return hosted.provider_key(API_KEY_VARIABLE, "create one at https://www.console.runpod.io/user/settings (API "
                               "Keys) and export RUNPOD_API_KEY=<key>")


def client() -> Any:
    """The SDK, with the operator's key (its module-level api_key is what every call sends)."""
    import runpod

    runpod.api_key = api_key()
    return runpod


def _graphql_text(value: str) -> str:
    """The SDK writes each value between double quotes into its GraphQL text as it is; escape it as a GraphQL
    string (JSON's escapes are GraphQL's), so a quote or backslash in a token cannot break or change the query."""
    return json.dumps(str(value))[1:-1]


def find_pod(sdk: Any, pod_id: str) -> dict[str, Any] | None:
    """The account's pod with this id, or None: get_pods lists them all, so a terminated pod is plainly absent
    (what get_pod answers for one is not documented)."""
    return next((pod for pod in sdk.get_pods() or [] if pod.get("id") == pod_id), None)


def proxy_url(pod_id: str) -> str:
    """The pod's HTTPS address: RunPod's proxy in front of the server's port."""
    return PROXY_URL.format(pod_id=pod_id, port=hosted.SERVER_PORT)


def _explain(err: Exception, doing: str) -> RunPodError:
    return RunPodError(f"{doing}: {type(err).__name__}: {err}")


def live_properties(pod: dict[str, Any], env_names: set[str]) -> dict[str, Any]:
    """The pod as get_pods describes it, in this resource's property names. Of its variables (`KEY=value` strings),
    only the server settings it was given are read back: the secrets stay as the state holds them."""
    env = dict(item.split("=", 1) for item in pod.get("env") or [] if "=" in item)
    return {
        "name": pod.get("name"), "imageName": pod.get("imageName"), "containerDiskInGb": pod.get("containerDiskInGb"),
        "ports": pod.get("ports"), "desiredStatus": pod.get("desiredStatus"), "costPerHr": pod.get("costPerHr"),
        "gpu": (pod.get("machine") or {}).get("gpuDisplayName"),
        "env": {key: value for key, value in env.items() if key in env_names},
    }


def _changed(keys: Iterable[str], olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
    return [key for key in keys if olds.get(key) != news.get(key)]


def patch_body(olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
    """The PATCH /pods/{podId} body for what changed, in the REST API's names and types. The pod's `env` is one
    object that the PATCH replaces whole (runpodctl's "pod update --env replaces all env vars", runpod/runpodctl
    #268), so a change to either the settings or the tokens sends both."""
    changed = set(_changed(UPDATE_IN_PLACE, olds, news))
    body: dict[str, Any] = {}
    if "name" in changed:
        body["name"] = news["name"]
    if "imageName" in changed:
        body["imageName"] = news["imageName"]
    if "containerDiskInGb" in changed:
        body["containerDiskInGb"] = int(news["containerDiskInGb"])
    if "ports" in changed:
        body["ports"] = news["ports"].split(",")  # create_pod's "8000/http" string; the REST API takes a list
    if changed & {"env", "secrets"}:
        body["env"] = {**news["env"], **news["secrets"]}
    return body


class PodProvider(dynamic.ResourceProvider):
    """Create, read, diff, update and delete one RunPod Pod through the `runpod` SDK, and RunPod's REST API for
    updates (what it cannot set replaces the pod: REPLACE_ON).

    `proxy_url` is where the pod's port is reached (RunPod's proxy) and `rest_url` RunPod's REST API; the tests
    point both at their loopback fake."""

    def __init__(self, start_timeout_s: float = START_TIMEOUT_S, poll_s: float = POLL_S,
                 proxy_url: str = PROXY_URL, rest_url: str = REST_URL, reset_grace_s: float = RESET_GRACE_S) -> None:
        super().__init__()
        self.start_timeout_s = start_timeout_s
        self.poll_s = poll_s
        self.proxy_url = proxy_url
        self.rest_url = rest_url
        self.reset_grace_s = reset_grace_s

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        sdk = client()
        variables = {**props["env"], **props["secrets"]}
        try:
            pod = sdk.create_pod(
                name=_graphql_text(props["name"]), image_name=_graphql_text(props["imageName"]),
                gpu_type_id=_graphql_text(props["gpuTypeId"]), cloud_type=props["cloudType"], gpu_count=1,
                support_public_ip=False, start_ssh=False, volume_in_gb=0,
                container_disk_in_gb=int(props["containerDiskInGb"]), min_vcpu_count=int(props["minVcpuCount"]),
                min_memory_in_gb=int(props["minMemoryInGb"]), ports=props["ports"],
                allowed_cuda_versions=[_graphql_text(version) for version in props["allowedCudaVersions"]],
                env={key: _graphql_text(value) for key, value in variables.items()},
            )
        except Exception as err:  # noqa: BLE001 - RunPod refused (no GPU free, no credit): nothing was created
            raise _explain(err, f"creating a {props['cloudType']} pod with one {props['gpuTypeId']}") from err
        pod_id = pod["id"]
        try:
            live = self._wait_until_serving(sdk, pod_id)
        except Exception as err:  # noqa: BLE001 - a pod that does not serve bills for nothing: remove it
            self._terminate(sdk, pod_id)
            raise RunPodError(
                f"pod {pod_id} did not serve {hosted.PROBE_ROUTE} within {self.start_timeout_s:g} s ({err}); it was "
                "terminated again. Check that `image` can be pulled without credentials (a public image) and runs "
                "on this GPU; its logs stay under Pods, Logs on https://www.console.runpod.io/pods for a while"
            ) from err
        return dynamic.CreateResult(pod_id, _outputs(props, pod_id, live))

    def _ready_url(self, pod_id: str) -> str:
        return self.proxy_url.format(pod_id=pod_id, port=hosted.SERVER_PORT) + hosted.PROBE_ROUTE

    def _wait_until_serving(self, sdk: Any, pod_id: str) -> dict[str, Any]:
        """The pod, once RunPod reports its container running (a `runtime`) and /ready answers 200 through the
        proxy (the model is loaded); TimeoutError saying what it last saw when that takes longer than the budget."""
        deadline = time.monotonic() + self.start_timeout_s
        ready_url = self._ready_url(pod_id)
        while True:
            pod = find_pod(sdk, pod_id)
            if pod is None:
                raise RunPodError("the pod is gone from the account")
            if not pod.get("runtime"):
                seen = (f"RunPod reports no running container (desiredStatus {pod.get('desiredStatus')}): the image "
                        "is still being pulled, cannot be pulled, or its container keeps exiting")
            else:
                status = _probe(ready_url)
                if status == 200:
                    return pod
                seen = f"the container runs but {hosted.PROBE_ROUTE} answered {status} (503: the model is loading)"
            if time.monotonic() + self.poll_s > deadline:
                raise TimeoutError(seen)
            time.sleep(self.poll_s)

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        sdk = client()
        try:
            pod = find_pod(sdk, id_)
        except Exception as err:  # noqa: BLE001
            raise _explain(err, f"reading pod {id_}") from err
        if not pod:
            return dynamic.ReadResult("", {})  # terminated outside Pulumi: refresh drops it
        live = live_properties(pod, set(props.get("env") or {}))
        return dynamic.ReadResult(id_, {**props, **{k: v for k, v in live.items() if v is not None}})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        replaces = _changed(REPLACE_ON, olds, news)
        changes = bool(replaces or _changed(UPDATE_IN_PLACE, olds, news))
        # One GPU at a time: the old pod goes before its replacement is placed (and billed).
        return dynamic.DiffResult(changes=changes, replaces=replaces, delete_before_replace=True)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        """PATCH what changed, then wait as create does for /ready through the proxy. A failure never terminates
        the pod: it keeps its id, so its URL."""
        body = patch_body(olds, news)  # never empty: diff reports an update only when one of its keys changed
        fields = ", ".join(body)
        sdk = client()
        try:
            was_running = (find_pod(sdk, id_) or {}).get("desiredStatus") == "RUNNING"
        except Exception as err:  # noqa: BLE001
            raise _explain(err, f"reading pod {id_} before updating it (nothing was changed)") from err
        self._patch(id_, body, secrets=news["secrets"].values())
        try:
            if not was_running:
                # Stopped (its idle stop): no server to wait for, unless the update started it. Waking it (make
                # wake) starts it with the new settings.
                pod = find_pod(sdk, id_) or {}
                if pod.get("desiredStatus") != "RUNNING":
                    return dynamic.UpdateResult(_outputs(news, id_, pod))
            self._wait_for_reset(sdk, id_)
            live = self._wait_until_serving(sdk, id_)
        except Exception as err:  # noqa: BLE001 - the pod took the change: keep it, say how to go on
            raise RunPodError(
                f"pod {id_} took the update ({fields}) but did not serve {hosted.PROBE_ROUTE} within "
                f"{self.start_timeout_s:g} s ({err}). It was not terminated and keeps its id and endpoint URL; its "
                f"logs are under Pods, {id_}, Logs on https://www.console.runpod.io/pods. Fix the cause (an `image` "
                "RunPod cannot pull without credentials, or one that does not run) and run `pulumi up` again; to go "
                "back to the previous settings, run `pulumi refresh` first, so Pulumi sees what the pod has now"
            ) from err
        return dynamic.UpdateResult(_outputs(news, id_, live))

    def _patch(self, pod_id: str, body: dict[str, Any], secrets: Iterable[str]) -> None:
        """PATCH /pods/{podId} with the operator's key; RunPodError saying what to do when RunPod refuses (the
        answer with any token in it blanked out, since errors reach Pulumi's logs)."""
        url = f"{self.rest_url}/pods/{pod_id}"
        doing = f"updating pod {pod_id} ({', '.join(body)})"
        try:
            response = requests.patch(url, json=body, headers={"Authorization": f"Bearer {api_key()}"},
                                      timeout=REST_TIMEOUT_S)
        except requests.RequestException as err:
            raise RunPodError(f"{doing}: no answer from {url} ({type(err).__name__}): whether the pod took the "
                              "change is unknown. Run `pulumi refresh`, then `pulumi up` again") from err
        if response.ok:
            return
        answer = response.text
        for secret in secrets:  # as it is, and as a JSON string holds it
            for written in (str(secret), _graphql_text(secret)):
                answer = answer.replace(written, "[secret]")
        answer = answer[:ERROR_BODY_CHARS]
        raise RunPodError(f"{doing}: RunPod answered HTTP {response.status_code}: {answer}. "
                          f"{_after_refusal(response.status_code)}")

    def _wait_for_reset(self, sdk: Any, pod_id: str) -> None:
        """Until the server that served before the PATCH is gone (no running container, or /ready not 200), for
        at most reset_grace_s: without this, the wait that follows could take the old server's 200 for the new."""
        deadline = time.monotonic() + self.reset_grace_s
        ready_url = self._ready_url(pod_id)
        while time.monotonic() < deadline:
            pod = find_pod(sdk, pod_id)
            if pod is None or not pod.get("runtime") or _probe(ready_url) != 200:
                return
            time.sleep(self.poll_s)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        self._terminate(client(), id_)

    @staticmethod
    def _terminate(sdk: Any, pod_id: str) -> None:
        try:
            if find_pod(sdk, pod_id):  # already terminated is what delete wants
                sdk.terminate_pod(pod_id)
        except Exception as err:  # noqa: BLE001
            raise _explain(err, f"terminating pod {pod_id}") from err


def _outputs(props: dict[str, Any], pod_id: str, live: dict[str, Any]) -> dict[str, Any]:
    """The resource's state: its inputs, and what the serving pod says (the URL follows from the id alone)."""
    return {**props, "podId": pod_id, "url": proxy_url(pod_id), "costPerHr": live.get("costPerHr"),
            "desiredStatus": live.get("desiredStatus")}


def _after_refusal(status: int) -> str:
    """What a refused PATCH leaves, and what to do."""
    if status == 404:
        return ("The pod is gone from the account: `pulumi refresh` drops it from the state, and `pulumi up` then "
                "creates a new one (with a new endpoint URL)")
    kept = "The pod was not changed: it keeps its id, endpoint URL and previous settings. "
    if status in (401, 403):
        return kept + f"Check that {API_KEY_VARIABLE} is a key of the account that owns the pod, with write access"
    return kept + "Check the changed values against RunPod's answer, then run `pulumi up` again"


def _probe(url: str) -> int | str:
    """The HTTP status a GET of `url` answers, or why there was none (the probe carries no token: /ready is public)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310 - an https URL we built
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError) as err:
        return f"no answer ({err})"


class Pod(dynamic.Resource, module="runpod", name="Pod"):
    """One RunPod Pod (Pulumi type pulumi-python:dynamic/runpod:Pod)."""

    url: pulumi.Output[str]
    costPerHr: pulumi.Output[float]  # noqa: N815 - the API's name

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outputs = {"podId": None, "url": None, "costPerHr": None, "desiredStatus": None}
        super().__init__(PodProvider(), name, {**props, **outputs}, pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["secrets"])))


def pod_properties(settings: Settings, secrets: pulumi.Output[dict[str, str]]) -> dict[str, Any]:
    """The pod's inputs, from the validated settings (the GPU type is a catalog.HostedOffer)."""
    env = hosted.server_env(settings, model=settings.model, request_timeout=REQUEST_TIMEOUT_S,
                            max_wait_seconds=MAX_WAIT_S, cache_dir=CACHE_DIR)
    # For the image's idle stop (image/pod_idle_stop.py, started by its entrypoint): RunPod itself sets
    # RUNPOD_POD_ID and a pod-scoped RUNPOD_API_KEY in every pod, with which the pod stops itself.
    env["SDXL_IDLE_STOP_MINUTES"] = str(settings.idle_stop_minutes)
    return {
        "name": hosted.endpoint_name(settings.stack),
        "imageName": settings.image,
        "gpuTypeId": settings.machine.instance_type,
        "cloudType": settings.runpod_cloud_type,
        "containerDiskInGb": settings.data_disk_gb,
        "minVcpuCount": MIN_VCPUS,
        "minMemoryInGb": MIN_MEMORY_GB,
        "ports": f"{hosted.SERVER_PORT}/http",
        # Only hosts whose driver runs the image's CUDA: elsewhere its container cannot start.
        "allowedCudaVersions": catalog.runpod_cuda_versions(bundle.image_cuda_version()),
        "env": env,
        "secrets": secrets,
    }


class Endpoint(pulumi.ComponentResource):
    """The SDXL server on a RunPod Pod."""

    outputs: dict[str, pulumi.Output]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sdxl-endpoint:runpod:Endpoint", name, None, opts)
        token = contract.api_token(settings, parent=self)
        pod = Pod(f"{name}-pod", pod_properties(settings, hosted.server_secrets(settings, token)),
                  pulumi.ResourceOptions(parent=self))
        shell = pod.id.apply(lambda pod_id: f"no SSH into the pod: its logs are under Pods, {pod_id}, Logs on "
                             "https://www.console.runpod.io/pods")
        self.outputs = hosted.hosted_outputs(settings, endpoint=pod.url, api_token=token, instance_id=pod.id,
                                             shell=shell, hourly_cost=pod.costPerHr)
        self.register_outputs(self.outputs)
