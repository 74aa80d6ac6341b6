"""A loopback stand-in for the Hugging Face APIs that `huggingface_hub` (2.4.0) calls for Inference Endpoints.

Shapes from the SDK's own source (hf_api.py, _inference_endpoints.py):
- `GET {ENDPOINT}/api/whoami-v2` -> {"type": "user", "name": ...} (whoami, _get_namespace);
- `POST {INFERENCE_ENDPOINTS_ENDPOINT}/endpoint/{namespace}` with the create payload (compute, model, name,
  provider, type) -> the endpoint; `GET|PUT|DELETE .../endpoint/{namespace}/{name}` (get, update, delete);
- an endpoint is what InferenceEndpoint._populate_from_raw reads: name, model.{repository, framework, revision,
  task}, status.{state, url, createdAt, updatedAt}, healthRoute, type; plus compute and provider as the CLI's
  `list` reads them;
- `GET .../provider/{namespace}` -> {"vendors": [{"name", "regions": [{"name", "computes": [...]}]}]}
  (list_inference_endpoints_hardware, InferenceEndpointHardware.from_raw);
- InferenceEndpoint.wait polls the endpoint until `running` with a URL, then GETs <url>/<healthRoute> until it
  answers 200; <url> is served here as our server answers it (/health alive, /ready once loaded).

The SDK is pointed here through its own settings: constants.ENDPOINT and constants.INFERENCE_ENDPOINTS_ENDPOINT.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes import bearer, loopback_server, reply_json

TOKEN = "hf_operator_token_for_tests"
USER = "sdxl-tester"
STAMP = "2026-08-01T12:00:00.000Z"


def compute(hardware_id: str, vendor: str, region: str, kind: str, size: str, *, accelerator: str = "gpu",
            gpus: int = 1, gpu_memory: int | None = 24, price: float = 1.0, status: str = "available",
            quota: tuple[int, int] = (2, 0), architecture: str = "NVIDIA A10G") -> dict[str, Any]:
    """One hardware entry as the provider listing holds it (InferenceEndpointHardware.from_raw's keys)."""
    return {"id": hardware_id, "vendor": vendor, "region": region, "accelerator": accelerator, "instanceType": kind,
            "instanceSize": size, "architecture": architecture, "numAccelerators": gpus, "numCpus": 6,
            "memoryGb": 32.0, "gpuMemoryGb": gpu_memory, "pricePerHour": price, "status": status,
            "quota": {"maxAccelerators": quota[0], "usedAccelerators": quota[1]}}


@dataclass
class FakeHuggingFace:
    base: str = ""
    endpoints: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    hardware: list[dict[str, Any]] = field(default_factory=list)
    refuse_create: tuple[int, str] | None = None  # (status, message) for the next creation
    start_as: str = "running"  # the state an endpoint reaches after initializing ("failed": it never runs)
    # Our server in the endpoint's container: /health answers 200 at once, /ready 503 for this many probes (the
    # model loading), then 200, as server/routes/ops.py does.
    loading_probes: int = 0
    # After a DELETE the endpoint is still there, being deleted, for this many GETs, and its name is taken until
    # it is gone (a create answers 409): an API that deletes in the background, as the provider must allow for.
    deleting_gets: int = 0
    deleting: dict[tuple[str, str], int] = field(default_factory=dict)

    def answer(self, method: str, path: str, body: Any, token: str | None) -> tuple[int, Any]:
        self.calls.append((method, path, body))
        if path.startswith("/endpoints/"):
            return self._container(path)  # the endpoint's own URL: what wait() probes
        if token != TOKEN:
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/whoami-v2":
            return 200, {"type": "user", "name": USER, "orgs": [{"name": "sdxl-org"}]}
        parts = path.strip("/").split("/")
        if parts[:2] == ["v2", "provider"] and method == "GET":
            vendors: dict[str, dict[str, list]] = {}
            for entry in self.hardware:
                vendors.setdefault(entry["vendor"], {}).setdefault(entry["region"], []).append(
                    {k: v for k, v in entry.items() if k not in ("vendor", "region")})
            return 200, {"vendors": [{"name": v, "regions": [{"name": r, "computes": c} for r, c in regions.items()]}
                                     for v, regions in vendors.items()]}
        if parts[:2] != ["v2", "endpoint"]:
            return 404, {"error": f"no route {path}"}
        if len(parts) == 3 and method == "POST":
            return self._create(parts[2], body)
        key = (parts[2], parts[3]) if len(parts) == 4 else None
        if key is None or key not in self.endpoints:
            return 404, {"error": "Endpoint not found"}
        if method == "GET" and key in self.deleting:
            self.deleting[key] -= 1
            if self.deleting[key] < 0:
                self._forget(key)
                return 404, {"error": "Endpoint not found"}
            view = self._view(key)  # a copy
            view["status"]["state"] = "deleting"
            return 200, view
        if method == "GET":
            return 200, self._view(key, advance=True)
        if method == "PUT":
            return self._update(key, body)
        if method == "DELETE":
            if self.deleting_gets:
                self.deleting.setdefault(key, self.deleting_gets)
            else:
                self._forget(key)
            return 200, {}
        return 405, {"error": method}

    def _forget(self, key: tuple[str, str]) -> None:
        del self.endpoints[key]
        self.secrets.pop(key, None)
        self.deleting.pop(key, None)

    def _container(self, path: str) -> tuple[int, Any]:
        route = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        if route == "/health":
            return 200, {"status": "ok"}
        if route == "/ready":
            if self.loading_probes > 0:
                self.loading_probes -= 1
                return 503, {"error": "Model is loading"}
            return 200, {"status": "ready"}
        return 401, {"error": "Missing or invalid bearer token (Authorization: Bearer <token>)"}

    def _create(self, namespace: str, payload: dict[str, Any]) -> tuple[int, Any]:
        if self.refuse_create is not None:
            status, message = self.refuse_create
            self.refuse_create = None
            return status, {"error": message}
        for section in ("compute", "model", "name", "provider", "type"):
            if section not in payload:
                return 400, {"error": f"missing {section}"}
        key = (namespace, payload["name"])
        if key in self.endpoints:
            return 409, {"error": "Endpoint name already exists"}
        model = copy.deepcopy(payload["model"])
        self.secrets[key] = model.pop("secrets", {})  # kept apart: the API does not give secrets back
        custom = model.get("image", {}).get("custom", {})
        self.endpoints[key] = {
            "name": payload["name"], "type": payload["type"], "compute": payload["compute"],
            "provider": payload["provider"], "model": {"revision": None, "task": None, **model},
            "healthRoute": custom.get("healthRoute", "/health"), "tags": payload.get("tags", []),
            "status": {"state": "pending", "createdAt": STAMP, "updatedAt": STAMP},
        }
        return 200, self._view(key)

    def _update(self, key: tuple[str, str], payload: dict[str, Any]) -> tuple[int, Any]:
        endpoint = self.endpoints[key]
        for section in ("compute", "model"):
            for name, value in (payload.get(section) or {}).items():
                if section == "model" and name == "secrets":
                    self.secrets[key] = value
                elif name == "scaling":
                    endpoint["compute"].setdefault("scaling", {}).update(value)
                else:
                    endpoint[section][name] = value
        endpoint["status"]["state"] = "updating"
        return 200, self._view(key)

    def _view(self, key: tuple[str, str], advance: bool = False) -> dict[str, Any]:
        endpoint = self.endpoints[key]
        status = endpoint["status"]
        if advance and status["state"] in ("pending", "initializing", "updating"):
            status["state"] = self.start_as
            if self.start_as == "running":
                status["url"] = f"{self.base}/endpoints/{key[1]}"
        return copy.deepcopy(endpoint)


@contextmanager
def serving(fake: FakeHuggingFace) -> Iterator[FakeHuggingFace]:
    def handle(request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length)) if length else None
        token = bearer(request)
        reply_json(request, *fake.answer(method, request.path.split("?")[0], body, token))

    with loopback_server(handle) as base:
        fake.base = base
        yield fake


@contextmanager
def sdk_pointed_at(monkeypatch, fake: FakeHuggingFace) -> Iterator[None]:
    """huggingface_hub's own settings, pointed at the fake, with the operator's token in HF_TOKEN."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", fake.base)
    monkeypatch.setattr(constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{fake.base}/v2")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs with HF_HUB_OFFLINE=1
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield
