"""A loopback stand-in for RunPod's GraphQL API as the official `runpod` SDK (1.12.0) uses it.

The SDK (runpod/api/graphql.py) POSTs {"query": <text>} to `$RUNPOD_API_BASE_URL/graphql` with
`Authorization: Bearer <key>`; 401 is a bad key; an answer with "errors" raises QueryError(errors[0].message).
The query texts are the SDK's (runpod/api/queries, runpod/api/mutations): the fake parses their GraphQL input
objects, so a value the SDK wrote unescaped that breaks the query fails here too. Answers take the shapes the SDK
reads: data.podFindAndDeployOnDemand, data.gpuTypes, data.myself.pods, data.podStop, data.podResume,
data.podTerminate, data.myself; pods carry `env` as "KEY=value" strings (RunPod's GraphQL guide).

`GET {base}/proxy/<podId>-<port>/ready` stands in for RunPod's HTTPS proxy in front of the server's /ready
(https://<podId>-<port>.proxy.runpod.net, RunPod's "Expose ports"): 200 once the pod runs and `model_loads`, 503
while the model loads, 502 when no container runs (`starts` off: an image that cannot be pulled or keeps exiting,
which RunPod shows as a pod without a `runtime`).

`PATCH {base}/v1/pods/<podId>` stands in for RunPod's REST API's "Update a Pod" (https://rest.runpod.io/v1, its
OpenAPI document, api-reference/openapi.json in runpod/docs): `Authorization: Bearer <key>` (401 otherwise), a
`PodUpdateInput` body (400 "Invalid input." for a field it does not define or a value of the wrong type), 404 for a
pod it does not know, 200 with the REST `Pod` (`image`, `env` as an object, `ports` as a list). The body's `env`
replaces the pod's variables whole (runpod/runpodctl #268). Every update resets the pod ("Input for updating a Pod
which will trigger a reset"): of a running pod, the server from before answers /ready for `reset_lag` more probes,
then the new one loads the model (503) for RESET_LOADING_PROBES before it answers 200.

READ_ONLY_KEY is a key created with "Read Only" permission (RunPod's "Manage API keys"): it reads, and what writes
is refused (the status and words of that refusal are this fake's; the provider reads only the status class).

`pod_keys` are the keys RunPod puts in each pod as RUNPOD_API_KEY ("Pod-scoped API key", RunPod's "Pod environment
variables"): one acts on its own pod only, so here it may stop or resume that pod and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes import bearer, loopback_server, reply_json

KEY = "rp_operator_key_for_tests"
READ_ONLY_KEY = "rp_read_only_key_for_tests"
NO_STOCK = ("There are no longer any instances available with the requested specifications. "
            "Please refresh and try again.")
NO_GPU_ON_HOST = "There are not enough free GPUs on the host machine to start this pod."

RESET_LOADING_PROBES = 2
# PodUpdateInput's fields (RunPod's OpenAPI document) and the JSON type each takes.
POD_UPDATE_INPUT = {"containerDiskInGb": int, "containerRegistryAuthId": str, "dockerEntrypoint": list,
                    "dockerStartCmd": list, "env": dict, "globalNetworking": bool, "imageName": str, "locked": bool,
                    "name": str, "ports": list, "volumeInGb": int, "volumeMountPath": str}
PORT = re.compile(r"\d+/(http|tcp)")

GPU_TYPES = [  # id, displayName, memoryInGb, securePrice, communityPrice, secure stock
    ("NVIDIA RTX A4000", "RTX A4000", 16, 0.25, 0.17, "High"),
    ("NVIDIA RTX A5000", "RTX A5000", 24, 0.27, 0.16, "None"),
    ("NVIDIA L4", "L4", 24, 0.43, 0.39, "Medium"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.34, "Low"),
    ("NVIDIA A40", "A40", 48, 0.44, 0.35, "High"),
    ("NVIDIA GeForce RTX 3070", "RTX 3070", 8, 0.13, 0.13, "High"),
]


class _Parser:
    """GraphQL input values: strings (with GraphQL's escapes), numbers, booleans, null, enums, lists, objects."""

    TOKEN = re.compile(r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+(?:\.\d+)?)|(?P<name>[A-Za-z_]\w*)'
                       r"|(?P<punct>[{}\[\]:,()]))")

    def __init__(self, text: str) -> None:
        self.tokens = []
        position = 0
        while position < len(text.rstrip()):
            match = self.TOKEN.match(text, position)
            if match is None:
                raise ValueError(f"GraphQL syntax error at {text[position:position + 30]!r}")
            self.tokens.append((match.lastgroup, match.group(match.lastgroup)))
            position = match.end()
        self.at = 0

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        token_kind, token = self.tokens[self.at]
        if (kind and token_kind != kind) or (text and token != text):
            raise ValueError(f"expected {text or kind}, got {token!r}")
        self.at += 1
        return token

    def value(self) -> Any:
        kind, token = self.tokens[self.at]
        if token == "{":
            self.take(text="{")
            result = {}
            while self.tokens[self.at][1] != "}":
                name = self.take("name")
                self.take(text=":")
                result[name] = self.value()
                if self.tokens[self.at][1] == ",":
                    self.take(text=",")
            self.take(text="}")
            return result
        if token == "[":
            self.take(text="[")
            items = []
            while self.tokens[self.at][1] != "]":
                items.append(self.value())
                if self.tokens[self.at][1] == ",":
                    self.take(text=",")
            self.take(text="]")
            return items
        self.at += 1
        if kind == "string":
            return json.loads(token)  # GraphQL's string escapes are JSON's
        if kind == "number":
            return float(token) if "." in token else int(token)
        return {"true": True, "false": False, "null": None}.get(token, token)  # an enum value stays its name


def operation_input(query: str, operation: str) -> dict[str, Any]:
    """The `input: {...}` argument of the named field in the query text, parsed."""
    start = query.index(f"{operation}(")
    parser = _Parser(query[start + len(operation):])
    parser.take(text="(")
    parser.take(text="input")
    parser.take(text=":")
    return parser.value()


@dataclass
class FakeRunPod:
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # the operation of each query, in order
    created: list[dict[str, Any]] = field(default_factory=list)  # each creation's parsed input
    no_stock: bool = False
    host_has_gpu: bool = True
    balance: float = 25.0
    spend_limit: float = 80.0
    pod_keys: dict[str, str] = field(default_factory=dict)  # a pod-scoped key -> the pod it belongs to
    starts: bool = True  # off: the container never runs (no `runtime`), as with an image RunPod cannot pull
    model_loads: bool = True  # off: /ready answers 503 forever
    base: str = ""  # the loopback URL, once serving
    probes: list[str] = field(default_factory=list)  # the proxy paths GET asked for
    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # each PATCH's pod id and body
    refuse_patch: str | None = None  # set: every PATCH answers 400 with this, and the body it got
    reset_lag: int = 1  # probes for which the server from before a PATCH still answers /ready
    resetting: dict[str, int] = field(default_factory=dict)  # pod id -> probes left until its reset is over
    _next: int = 0

    @property
    def rest_url(self) -> str:
        """The provider's REST API base URL, pointed here."""
        return f"{self.base}/v1"

    @property
    def proxy_url(self) -> str:
        """The provider's proxy URL template, pointed here."""
        return f"{self.base}/proxy/{{pod_id}}-{{port}}"

    def probe(self, path: str) -> int:
        self.probes.append(path)
        pod_id, _, rest = path.removeprefix("/proxy/").partition("-")
        pod = self.pods.get(pod_id)
        if pod is None or not rest.endswith("/ready"):
            return 404
        old_server_up = self._old_server_up(pod_id)
        left = self.resetting.pop(pod_id, 0) - 1
        if left > 0:
            self.resetting[pod_id] = left
        if old_server_up:
            return 200
        if self._view(pod)["runtime"] is None:
            return 502
        return 200 if self.model_loads and pod_id not in self.resetting else 503

    def _old_server_up(self, pod_id: str) -> bool:
        return self.resetting.get(pod_id, 0) > RESET_LOADING_PROBES

    def update(self, pod_id: str, body: Any, key: str | None) -> tuple[int, Any]:
        """PATCH /v1/pods/<podId>."""
        if key in self.pod_keys:
            return 403, {"error": "This API key is scoped to another pod."}
        if key == READ_ONLY_KEY:
            return 403, {"error": "This API key has read-only access."}
        if key != KEY:
            return 401, {"error": "Unauthorized"}
        pod = self.pods.get(pod_id)
        if pod is None:
            return 404, {"error": "Pod not found."}
        self.patches.append((pod_id, body))
        if not self._valid_update(body):
            return 400, {"error": "Invalid input."}
        if self.refuse_patch:
            return 400, {"error": self.refuse_patch, "input": body}
        for name in ("name", "imageName", "containerDiskInGb"):
            pod[name] = body.get(name, pod[name])
        if "ports" in body:
            pod["ports"] = ",".join(body["ports"])
        if "env" in body:
            pod["env"] = [f"{key}={value}" for key, value in body["env"].items()]
        if pod["desiredStatus"] == "RUNNING":  # a stopped pod takes the settings when it is started
            self.resetting[pod_id] = self.reset_lag + RESET_LOADING_PROBES
        env = dict(item.split("=", 1) for item in pod["env"])
        return 200, {"id": pod_id, "name": pod["name"], "image": pod["imageName"], "env": env,
                     "ports": pod["ports"].split(","), "containerDiskInGb": pod["containerDiskInGb"],
                     "desiredStatus": pod["desiredStatus"], "costPerHr": str(pod["costPerHr"])}

    @staticmethod
    def _valid_update(body: Any) -> bool:
        if not isinstance(body, dict) or not body.keys() <= POD_UPDATE_INPUT.keys():
            return False
        for name, value in body.items():
            wanted = POD_UPDATE_INPUT[name]
            # JSON's true is not an integer, though Python's bool is an int.
            if not isinstance(value, wanted) or (isinstance(value, bool) and wanted is not bool):
                return False
        env, ports = body.get("env", {}), body.get("ports", [])
        return (all(isinstance(value, str) for value in env.values()) and len(body.get("name", "")) <= 191
                and all(isinstance(port, str) and PORT.fullmatch(port) for port in ports))

    def answer(self, query: str, key: str | None) -> tuple[int, Any]:
        if key in self.pod_keys:
            return self._answer_for_pod(self.pod_keys[key], query)
        if key == READ_ONLY_KEY and query.lstrip().startswith("mutation"):
            return 200, {"errors": [{"message": "This API key has read-only access."}]}
        if key not in (KEY, READ_ONLY_KEY):
            return 401, {"errors": [{"message": "Unauthorized"}]}
        if "podFindAndDeployOnDemand(" in query:
            return 200, self._create(operation_input(query, "podFindAndDeployOnDemand"))
        for operation in ("podStop", "podResume", "podTerminate"):
            if f"{operation}(" in query:
                self.calls.append(operation)
                return 200, getattr(self, f"_{operation}")(operation_input(query, operation))
        if "gpuTypes(" in query:
            self.calls.append("gpuType")
            wanted = operation_input(query, "gpuTypes")["id"]
            secure_only = "secureCloud: true" in query
            return 200, {"data": {"gpuTypes": [self._gpu(row, secure_only) for row in GPU_TYPES if row[0] == wanted]}}
        if "gpuTypes" in query:
            self.calls.append("gpuTypes")
            secure_only = "secureCloud: true" in query
            return 200, {"data": {"gpuTypes": [self._gpu(row, secure_only) for row in GPU_TYPES]}}
        if "pods" in query and "myself" in query:
            self.calls.append("pods")
            return 200, {"data": {"myself": {"pods": [self._view(pod) for pod in self.pods.values()]}}}
        if "myself" in query:
            self.calls.append("myself")
            return 200, {"data": {"myself": {"id": "user_abc123", "pubKey": None, "networkVolumes": [],
                                             "clientBalance": self.balance, "currentSpendPerHr": 0.0,
                                             "spendLimit": self.spend_limit}}}
        return 200, {"errors": [{"message": f"the fake does not know this query: {query[:80]}"}]}

    @staticmethod
    def _gpu(row: tuple, secure_only: bool) -> dict[str, Any]:
        gpu_id, display, memory, secure, community, stock = row
        return {"id": gpu_id, "displayName": display, "manufacturer": "NVIDIA", "memoryInGb": memory,
                "secureCloud": True, "communityCloud": True, "securePrice": secure, "communityPrice": community,
                "maxGpuCount": 8, "lowestPrice": {"minimumBidPrice": community / 2,
                                                  "uninterruptablePrice": secure if secure_only else community,
                                                  "stockStatus": stock}}

    def _create(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        self.created.append(spec)
        if self.no_stock:
            return {"errors": [{"message": NO_STOCK}]}
        self._next += 1
        pod_id = f"pod{self._next:04d}xyz"
        env = [f"{item['key']}={item['value']}" for item in spec.get("env", [])]
        price = next(row[3] if spec["cloudType"] == "SECURE" else row[4] for row in GPU_TYPES
                     if row[0] == spec["gpuTypeId"])
        self.pods[pod_id] = {"id": pod_id, "name": spec["name"], "imageName": spec["imageName"], "env": env,
                             "gpuCount": spec["gpuCount"], "containerDiskInGb": spec["containerDiskInGb"],
                             "volumeInGb": spec.get("volumeInGb", 0), "ports": spec.get("ports"),
                             "desiredStatus": "RUNNING", "costPerHr": price, "machineId": "m-1",
                             "machine": {"gpuDisplayName": spec["gpuTypeId"].removeprefix("NVIDIA ")}}
        return {"data": {"podFindAndDeployOnDemand": {"id": pod_id, "imageName": spec["imageName"], "env": env,
                                                      "machineId": "m-1", "machine": {"podHostId": f"{pod_id}-1"}}}}

    def _view(self, pod: dict[str, Any]) -> dict[str, Any]:
        running = pod["desiredStatus"] == "RUNNING" and (self.starts or self._old_server_up(pod["id"]))
        return {**pod, "runtime": {"ports": []} if running else None}

    def _answer_for_pod(self, own: str, query: str) -> tuple[int, Any]:
        for operation in ("podStop", "podResume"):
            if f"{operation}(" in query and operation_input(query, operation).get("podId") == own:
                self.calls.append(operation)
                return 200, getattr(self, f"_{operation}")(operation_input(query, operation))
        return 200, {"errors": [{"message": "This API key is scoped to another pod."}]}

    def _podStop(self, spec: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        pod = self.pods.get(spec["podId"])
        if pod is None:
            return {"errors": [{"message": "Pod not found"}]}
        pod["desiredStatus"] = "EXITED"
        return {"data": {"podStop": {"id": pod["id"], "desiredStatus": "EXITED"}}}

    def _podResume(self, spec: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        pod = self.pods.get(spec["podId"])
        if pod is None:
            return {"errors": [{"message": "Pod not found"}]}
        if not self.host_has_gpu:
            return {"errors": [{"message": NO_GPU_ON_HOST}]}
        pod["desiredStatus"] = "RUNNING"
        return {"data": {"podResume": {"id": pod["id"], "desiredStatus": "RUNNING", "imageName": pod["imageName"],
                                       "env": pod["env"], "machineId": "m-1", "machine": {"podHostId": "h"}}}}

    def _podTerminate(self, spec: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        if self.pods.pop(spec["podId"], None) is None:
            return {"errors": [{"message": "Pod not found"}]}
        return {"data": {"podTerminate": None}}


def _json_body(request: BaseHTTPRequestHandler) -> Any:
    return json.loads(request.rfile.read(int(request.headers.get("Content-Length") or 0)))


@contextmanager
def serving(fake: FakeRunPod, monkeypatch) -> Iterator[FakeRunPod]:
    """The fake on loopback, and the SDK pointed at it through its own setting (RUNPOD_API_BASE_URL)."""

    def handle(request: BaseHTTPRequestHandler, method: str) -> None:
        if method == "GET" and request.path.startswith("/proxy/"):
            reply_json(request, fake.probe(request.path), {})
            return
        if method == "PATCH" and request.path.startswith("/v1/pods/"):
            reply_json(request, *fake.update(request.path.removeprefix("/v1/pods/"), _json_body(request),
                                             bearer(request)))
            return
        if method != "POST" or request.path != "/graphql":
            reply_json(request, 404, {"errors": [{"message": "not found"}]})
            return
        reply_json(request, *fake.answer(_json_body(request)["query"], bearer(request)))

    with loopback_server(handle) as base:
        fake.base = base
        monkeypatch.setenv("RUNPOD_API_BASE_URL", base)
        monkeypatch.setenv("RUNPOD_API_KEY", KEY)
        yield fake
