"""Operations routes: health, readiness, metrics, info and the OpenAPI schema."""

from __future__ import annotations

import os
import re
import threading
import time

import httpx

from server.routes.ops import LOAD_FAILED_MESSAGE
from tests.server.helpers import FAST, TOKEN, LiveServer, auth, wait_until


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent), labels in any order."""
    for sample_labels, value in re.findall(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", text, re.MULTILINE):
        if dict(re.findall(r'(\w+)="([^"]*)"', sample_labels)) == labels:
            return float(value)
    return 0.0


def test_health_and_ready_are_public_and_everything_else_needs_the_token(make_client):
    client = make_client(api_token="s3cret")
    assert client.get("/health").json() == {"status": "ok"}
    # Load balancers, Kubernetes probes and hosted health routes cannot send the token.
    assert client.get("/ready").json() == {"status": "ready"}
    assert client.get("/ready", headers=auth("wrong")).status_code == 200  # a token is not even looked at
    for path in ("/metrics", "/info", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=auth("s3cret")).status_code == 200, path


def test_a_failed_load_tells_ready_callers_nothing_but_that_it_failed(make_client, caplog):
    secret_path = "/home/operator/models/sdxl/unet/diffusion_pytorch_model.safetensors"

    def broken() -> None:
        raise OSError(f"Error no file named {secret_path} found")

    client = make_client(loader=broken, ready=False, api_token="s3cret")
    wait_until(lambda: client.get("/ready").json()["error"] == LOAD_FAILED_MESSAGE, 30, lambda: client.get("/ready"))
    answer = client.get("/ready")
    assert answer.status_code == 503 and answer.json() == {"error": LOAD_FAILED_MESSAGE}
    assert int(answer.headers["Retry-After"]) >= 1
    assert secret_path not in answer.text and "OSError" not in answer.text
    assert client.get("/ready", headers=auth("s3cret")).json() == {"error": LOAD_FAILED_MESSAGE}  # also with it
    # The reason is in the log, and the API answers it to callers with the token.
    assert secret_path in caplog.text
    generate = client.post("/", json={"inputs": "a cat"}, headers=auth("s3cret"))
    assert generate.status_code == 503 and secret_path in generate.json()["error"]
    assert client.post("/", json={"inputs": "a cat"}).status_code == 401


# Holds a live server's model load until a file appears: imported by Python at start-up (sitecustomize) in that
# process alone, so the loading phase lasts exactly as long as the test needs it.
LOAD_GATE = """
import os, time
from server import synthetic

_build = synthetic.build


def build(*args, **kwargs):
    while not os.path.exists(os.environ["TEST_LOAD_GATE"]):
        time.sleep(0.05)
    return _build(*args, **kwargs)


synthetic.build = build
"""


def test_a_live_servers_ready_needs_no_token_while_loading_and_once_ready_but_metrics_do(tmp_path):
    hook, gate = tmp_path / "hook", tmp_path / "load-may-finish"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LOAD_GATE)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    server = LiveServer(["--model", "tiny", "--api-token", TOKEN, "--log-level", "warning"], tmp_path / "server.log",
                        env={"PYTHONPATH": path, "TEST_LOAD_GATE": str(gate)})
    try:
        with httpx.Client(base_url=server.url, timeout=5) as http:
            def listening() -> bool:
                try:
                    return http.get("/health").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(listening, 120, server.log)
            loading = http.get("/ready")
            assert loading.status_code == 503, loading.text
            assert set(loading.json()) == {"error", "estimated_time"} and "currently loading" in loading.json()["error"]
            assert int(loading.headers["Retry-After"]) >= 1
            for path in ("/metrics", "/info"):
                assert http.get(path).status_code == 401, path
            gate.touch()
            server.wait_ready()  # without a token
            assert http.get("/ready").json() == {"status": "ready"}
            assert http.get("/metrics").status_code == 401
            assert http.get("/metrics", headers=auth()).status_code == 200
            assert http.get("/info", headers=auth()).json()["ready"] is True
    finally:
        server.stop()


def test_ready_is_503_until_loaded_and_warmed(make_client, pipelines):
    gate = threading.Event()
    client = make_client(loader=lambda: gate.wait(30) and pipelines, ready=False, warmup=True)
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["estimated_time"] > 0 and "Retry-After" in response.headers
    assert client.get("/health").status_code == 200
    gate.set()
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Warm-up ran all three tasks before readiness.
    text = client.get("/metrics").text
    for kind in ("text2img", "img2img", "inpaint"):
        assert metric(text, "sdxl_generation_seconds_count", kind=kind) == 0  # warm-up is not user work
    assert metric(text, "sdxl_ready") == 1


def test_metrics_cover_queue_in_flight_latency_images_and_errors(client):
    before = time.time()
    assert client.post("/", json={"inputs": "a cat", "parameters": FAST}).status_code == 200
    assert client.post("/", json={"inputs": "a cat", "parameters": {"width": 7}}).status_code == 422
    assert client.post("/v1/images/generations", json={"prompt": "x", "n": 2, **FAST}).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, "sdxl_queue_depth") == 0
    assert metric(text, "sdxl_in_flight_images") == 0
    assert metric(text, "sdxl_images_generated_total", kind="text2img") == 3
    assert metric(text, "sdxl_errors_total", kind="validation") == 1
    assert metric(text, "sdxl_request_duration_seconds_count", route="/") == 2
    assert metric(text, "sdxl_request_duration_seconds_count", route="/v1/images/generations") == 1
    assert metric(text, "sdxl_requests_total", route="/", method="POST", status="422") == 1
    assert metric(text, "sdxl_generation_seconds_count", kind="text2img") >= 2
    assert metric(text, "sdxl_batch_size_sum") == 3
    assert metric(text, "sdxl_last_request_timestamp_seconds") >= before


def test_unknown_routes_do_not_explode_the_route_label(client):
    assert client.get("/nope/1").status_code == 404
    assert client.get("/nope/2").status_code == 404
    assert metric(client.get("/metrics").text, "sdxl_requests_total", route="other", method="GET", status="404") == 2


def test_info_describes_model_device_versions_and_limits(client):
    info = client.get("/info").json()
    assert info["ready"] is True
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    # The suite's `tiny` runs with the test-only fault marker, and /info says so.
    assert info["pipelines"] == {"text2img": "FaultInjectingSDXLPipeline",
                                 "img2img": "FaultInjectingSDXLImg2ImgPipeline",
                                 "inpaint": "FaultInjectingSDXLInpaintPipeline"}
    assert info["default_size"] == 256
    assert info["limits"]["max_size"] == 2048 and info["limits"]["max_n"] == 4
    assert info["versions"]["diffusers"] and info["versions"]["torch"]
    assert "DPMSolverSDEScheduler" not in info["schedulers"]  # needs torchsde, not installed


def test_openapi_documents_every_route_and_the_bearer_scheme(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/", "/models/{model_id}", "/v1/images/generations", "/v1/images/edits",
                 "/health", "/ready", "/metrics", "/info"):
        assert path in paths, path
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert paths["/health"]["get"]["security"] == [] and paths["/ready"]["get"]["security"] == []
    assert paths["/metrics"]["get"].get("security") is None  # the document's default: the bearer token
    assert schema["security"] == [{"bearer": []}]
    hf = paths["/"]["post"]
    assert hf["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/HFRequest"
    assert {"image/png", "image/jpeg", "image/webp"} <= set(hf["responses"]["200"]["content"])
    assert "x-seed" in hf["responses"]["200"]["headers"]
    params = schema["components"]["schemas"]["HFParameters"]["properties"]
    for name in ("negative_prompt", "num_inference_steps", "guidance_scale", "width", "height", "seed",
                 "scheduler", "target_size", "prompt", "strength", "mask"):
        assert name in params, name
    edit = paths["/v1/images/edits"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "mask"} <= set(edit["properties"])
    assert "ImagesEditFields" in schema["components"]["schemas"]


def test_openapi_declares_path_parameters_and_every_401(client):
    schema = client.get("/openapi.json").json()
    [model_id] = schema["paths"]["/models/{model_id}"]["post"]["parameters"]
    assert (model_id["name"], model_id["in"], model_id["required"]) == ("model_id", "path", True)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path in ("/health", "/ready"):
                assert "401" not in operation["responses"]
                continue
            ref = operation["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("OpenAIError" if path.startswith("/v1/") else "HFError"), (method, path)
    generate = schema["paths"]["/v1/images/generations"]["post"]
    assert generate["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ImagesGenerateRequest")
    properties = schema["components"]["schemas"]["ImagesGenerateRequest"]["properties"]
    assert {"n", "quality", "output_format", "output_compression", "background", "stream"} <= set(properties)
