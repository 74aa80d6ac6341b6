"""cloud huggingface: the dynamic provider through the real huggingface_hub against a loopback fake of the Inference
Endpoints API (tests/fakes/huggingface_api.py), and the component through the real `__main__.py` under mocks."""

from __future__ import annotations

import ast

import pytest

from stacks import catalog, config, contract, hosted
from stacks import huggingface as hf
from tests.fakes import huggingface_api as fake_api
from tests.stacks.conftest import (
    FAKE_HF_USER,
    HF_ENDPOINT_TYPE,
    ROOT,
    is_rpc_secret,
    load_provider_in_project,
    plain_strings,
    run_program,
)

IMAGE = "ghcr.io/example/sdxl-endpoint-server:1.2.3"
TOKEN = "server-bearer-token-" + "q" * 28
COMPONENT = "sdxl-endpoint:huggingface:Endpoint"


def hf_run(settings=None, **kwargs):
    return run_program({"cloud": "huggingface", "image": IMAGE, **(settings or {})}, **kwargs)


def properties(**changes) -> dict:
    """The inputs the component gives the provider, as plain values (what the engine hands the provider)."""
    settings = config.validate({"sdxl-endpoint:cloud": "huggingface", "sdxl-endpoint:image": IMAGE}, stack="hf-a10g")
    props = hf.endpoint_properties(settings, secrets={"SDXL_API_TOKEN": TOKEN})
    return {**props, **changes}


@pytest.fixture
def api(monkeypatch):
    with fake_api.serving(fake_api.FakeHuggingFace()) as fake, fake_api.sdk_pointed_at(monkeypatch, fake):
        yield fake


def provider() -> hf.EndpointProvider:
    return hf.EndpointProvider(create_timeout_s=5, poll_s=0.01)


# --- the provider against the fake API --------------------------------------------------------------------


def test_create_sends_our_image_settings_secrets_and_scale_to_zero(api):
    created = provider().create(properties())
    key = (fake_api.USER, "sdxl-hf-a10g")
    ((method, path, payload),) = [call for call in api.calls if call[0] == "POST"]
    assert path == f"/v2/endpoint/{fake_api.USER}"  # the namespace whoami resolved
    assert payload["type"] == "public" and payload["name"] == "sdxl-hf-a10g"
    assert payload["provider"] == {"vendor": "aws", "region": "us-east-1"}
    assert payload["compute"] == {"accelerator": "gpu", "instanceType": "nvidia-a10g", "instanceSize": "x1",
                                  "scaling": {"minReplica": 0, "maxReplica": 1, "scaleToZeroTimeout": 30}}
    model = payload["model"]
    assert model["image"] == {"custom": {"url": IMAGE, "port": 8000, "healthRoute": "/ready"}}
    assert (model["framework"], model["repository"], model["task"]) == (
        "custom", "stabilityai/stable-diffusion-xl-base-1.0", "text-to-image")
    assert model["env"]["SDXL_MODEL"] == "/repository" and model["env"]["SDXL_CORS_ORIGINS"] == "*"
    assert model["secrets"] == {"SDXL_API_TOKEN": TOKEN}
    assert TOKEN not in str(model["env"])
    assert created.id == "sdxl-hf-a10g"
    assert created.outs["url"] == f"{api.base}/endpoints/sdxl-hf-a10g" and created.outs["status"] == "running"
    assert created.outs["namespace"] == fake_api.USER
    assert api.endpoints[key]["status"]["state"] == "running"


def test_create_returns_once_the_model_is_loaded_not_when_the_process_is_alive(api):
    """Hugging Face routes traffic (and the SDK's wait returns) once the health route answers 200: that must be
    the server's readiness, which stays 503 while the model loads, not its liveness."""
    api.loading_probes = 3
    provider().create(properties())
    probes = [path.rsplit("/", 1)[1] for method, path, _ in api.calls if path.startswith("/endpoints/")]
    assert probes == ["ready"] * 4  # three 503s while loading, then 200
    assert api.loading_probes == 0


def test_a_refused_creation_leaves_nothing_and_says_why(api):
    api.refuse_create = (400, "Quota exceeded for nvidia-a10g in aws/us-east-1")
    with pytest.raises(hf.HuggingFaceError, match=r"HTTP 400 .*Quota exceeded for nvidia-a10g"):
        provider().create(properties())
    assert api.endpoints == {}


def test_an_endpoint_that_fails_to_start_is_deleted_again(api):
    api.start_as = "failed"
    with pytest.raises(hf.HuggingFaceError, match="did not start .* it was deleted again"):
        provider().create(properties())
    assert api.endpoints == {}
    assert [c[0] for c in api.calls if c[1].startswith("/v2/endpoint")][-2:] == ["DELETE", "GET"]  # then gone


def test_diff_updates_in_place_or_replaces_what_the_api_cannot_change(api):
    olds = provider().create(properties()).outs
    assert hf.EndpointProvider().diff("sdxl-hf-a10g", olds, properties()).changes is False
    # A namespace left unset means the token's user, which create recorded: no change.
    assert hf.EndpointProvider().diff("sdxl-hf-a10g", olds, properties(namespace=None)).changes is False
    bigger = hf.EndpointProvider().diff("sdxl-hf-a10g", olds, properties(instanceType="nvidia-l40s", maxReplica=3))
    assert bigger.changes is True and bigger.replaces == []
    moved = hf.EndpointProvider().diff("sdxl-hf-a10g", olds, properties(vendor="gcp", region="us-east4"))
    assert moved.replaces == ["vendor", "region"] and moved.delete_before_replace is True
    rotated = hf.EndpointProvider().diff("sdxl-hf-a10g", olds, properties(secrets={"SDXL_API_TOKEN": "new"}))
    assert rotated.changes is True and rotated.replaces == []


def test_update_changes_the_live_endpoint(api):
    olds = provider().create(properties()).outs
    news = properties(instanceType="nvidia-l4", minReplica=1, scaleToZeroTimeout=None,
                      secrets={"SDXL_API_TOKEN": "rotated-token"})
    updated = provider().update("sdxl-hf-a10g", olds, news)
    live = api.endpoints[(fake_api.USER, "sdxl-hf-a10g")]
    assert live["compute"]["instanceType"] == "nvidia-l4" and live["compute"]["scaling"]["minReplica"] == 1
    assert api.secrets[(fake_api.USER, "sdxl-hf-a10g")] == {"SDXL_API_TOKEN": "rotated-token"}
    assert updated.outs["namespace"] == fake_api.USER and updated.outs["instanceType"] == "nvidia-l4"


def test_refresh_sees_drift_and_a_deleted_endpoint(api):
    olds = provider().create(properties()).outs
    api.endpoints[(fake_api.USER, "sdxl-hf-a10g")]["compute"]["scaling"]["maxReplica"] = 4  # changed in the UI
    read = provider().read("sdxl-hf-a10g", olds)
    assert read.id == "sdxl-hf-a10g" and read.outs["maxReplica"] == 4
    assert read.outs["secrets"] == {"SDXL_API_TOKEN": TOKEN}  # not given back by the API: kept
    assert provider().diff("sdxl-hf-a10g", read.outs, properties()).changes is True  # up puts it back
    del api.endpoints[(fake_api.USER, "sdxl-hf-a10g")]
    assert provider().read("sdxl-hf-a10g", olds).id == ""


def test_turning_idle_stop_off_settles_after_refresh(api):
    olds = provider().create(properties()).outs  # idle stop on: scale to zero after 30 minutes
    news = properties(minReplica=1)
    news.pop("scaleToZeroTimeout")  # idleStopMinutes 0: the None input does not reach the provider
    updated = provider().update("sdxl-hf-a10g", olds, news)
    refreshed = provider().read("sdxl-hf-a10g", updated.outs)
    assert refreshed.outs["scaleToZeroTimeout"] == 30  # the SDK leaves an unset timeout out: the live one stays
    assert provider().diff("sdxl-hf-a10g", refreshed.outs, news).changes is False
    # With scale to zero on, a changed timeout is still a change.
    assert provider().diff("sdxl-hf-a10g", olds, properties(scaleToZeroTimeout=45)).changes is True


def test_delete_removes_it_and_an_endpoint_already_gone_is_fine(api):
    olds = provider().create(properties()).outs
    provider().delete("sdxl-hf-a10g", olds)
    assert api.endpoints == {}
    provider().delete("sdxl-hf-a10g", olds)  # already gone: nothing to do, no error
    # The first delete confirms the endpoint is gone (GET: 404); the second finds nothing to delete.
    assert [c[0] for c in api.calls if c[1] == f"/v2/endpoint/{fake_api.USER}/sdxl-hf-a10g"][-3:] == [
        "DELETE", "GET", "DELETE"]


def test_a_replacement_waits_until_the_old_endpoint_is_gone_before_taking_its_name(api):
    """delete_before_replace: the new endpoint takes the old one's name, which the API refuses (409) while the old
    one is still being deleted. delete returns only once a GET says 404, so the create that follows succeeds."""
    olds = provider().create(properties()).outs
    api.deleting_gets = 3
    provider().delete("sdxl-hf-a10g", olds)
    assert api.endpoints == {}
    gets_after_delete = [c[0] for c in api.calls if c[1] == f"/v2/endpoint/{fake_api.USER}/sdxl-hf-a10g"]
    assert gets_after_delete[-5:] == ["DELETE", "GET", "GET", "GET", "GET"]  # 3 x deleting, then 404
    assert provider().create(properties(vendor="aws", region="us-east-1")).id == "sdxl-hf-a10g"


def test_a_delete_that_never_finishes_says_so(api):
    olds = provider().create(properties()).outs
    api.deleting_gets = 10_000
    slow = hf.EndpointProvider(create_timeout_s=5, poll_s=0.01)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf, "DELETE_TIMEOUT_S", 0.05)
        with pytest.raises(hf.HuggingFaceError, match="still being deleted"):
            slow.delete("sdxl-hf-a10g", olds)


def test_a_rejected_token_is_explained(api, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(hf.HuggingFaceError, match="HTTP 401 .*HF_TOKEN was rejected"):
        provider().create(properties(namespace="sdxl-org"))


def test_no_token_at_all_says_how_to_set_one(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hosted.ProviderKeyMissing, match="export HF_TOKEN="):
        provider().delete("sdxl-hf-a10g", properties())


def test_the_provider_carries_no_key_and_loads_where_the_engine_runs_it(monkeypatch):
    """Pulumi stores the provider pickled (dill) in the state and runs it in its own process, started in the
    project's directory: it must load there by reference, and hold no API key."""
    monkeypatch.setenv("HF_TOKEN", fake_api.TOKEN)
    stored, loaded = load_provider_in_project(run_program({"image": IMAGE}, preset="hf-a10g"), HF_ENDPOINT_TYPE)
    assert fake_api.TOKEN.encode() not in stored
    assert loaded == ["stacks.huggingface", "EndpointProvider"]


# --- the program under mocks ------------------------------------------------------------------------------


def test_the_preset_evaluates_to_the_output_contract():
    run = run_program({"image": IMAGE}, preset="hf-a10g")
    outputs = {name: run.value(output) for name, output in run.outputs.items()}
    assert tuple(outputs) == contract.OUTPUT_NAMES
    offer = catalog.HF_OFFERS["aws-us-east-1-nvidia-a10g-x1"]
    assert outputs["endpoint"] == "https://sdxl-hf-a10g.us-east-1.aws.endpoints.huggingface.cloud"
    assert (outputs["instanceType"], outputs["gpu"], outputs["gpuMemoryGb"]) == (offer.name, "A10G", 24)
    assert outputs["hourlyCostUsd"] == offer.usd_per_hour == 1.0
    assert (outputs["region"], outputs["availabilityZone"], outputs["publicIp"]) == ("us-east-1", "", "")
    assert outputs["instanceId"] == "sdxl-hf-a10g"
    assert outputs["curlExample"].startswith(f"curl -sS --fail-with-body {outputs['endpoint']}/ ")
    assert "endpoints.huggingface.co" in outputs["shell"]
    assert run.is_secret(run.outputs["apiToken"])
    assert run.orphans(COMPONENT) == []


def test_the_tokens_are_secrets_and_appear_nowhere_in_plain_inputs():
    run = hf_run({"apiToken": "configured-token-0123456789", "hfToken": "hf_gated_model_token"})
    endpoint = run.one(HF_ENDPOINT_TYPE).inputs
    assert is_rpc_secret(endpoint["secrets"])
    plain = list(plain_strings(endpoint))
    assert not [s for s in plain if "configured-token" in s or "hf_gated" in s]
    assert run.value(run.outputs["apiToken"]) == "configured-token-0123456789"
    assert run.is_secret(run.outputs["apiToken"])


def test_scale_to_zero_follows_idle_stop_minutes_and_replicas():
    inputs = hf_run({"idleStopMinutes": "15", "maxReplicas": "3"}).one(HF_ENDPOINT_TYPE).inputs
    assert (inputs["minReplica"], inputs["maxReplica"], inputs["scaleToZeroTimeout"]) == (0, 3, 15)
    always = hf_run({"idleStopMinutes": "0", "minReplicas": "2", "maxReplicas": "2"}).one(HF_ENDPOINT_TYPE).inputs
    assert (always["minReplica"], always["maxReplica"], "scaleToZeroTimeout" in always) == (2, 2, False)


def test_namespace_and_hardware_come_from_config():
    inputs = hf_run({"hfNamespace": "my-org", "hfHardware": "gcp-us-east4-nvidia-l4-x1"}).one(HF_ENDPOINT_TYPE).inputs
    assert (inputs["namespace"], inputs["vendor"], inputs["region"], inputs["instanceType"]) == (
        "my-org", "gcp", "us-east4", "nvidia-l4")
    assert hf_run({"gpu": "t4"}).one(HF_ENDPOINT_TYPE).inputs["instanceType"] == "nvidia-t4"


def test_without_an_image_preview_stops_with_the_fix():
    with pytest.raises(config.ConfigError, match=r"image: required when cloud is huggingface.*\n.*fix: publish "
                       r"the server image with \.github/workflows/image\.yml.*docker build -f image/Dockerfile"):
        run_program({"cloud": "huggingface"}, preview=True)


@pytest.mark.parametrize("hardware, why", [
    ("aws-us-east-1-intel-spr-x2", "it is CPU-only"),
    ("aws-us-east-1-inf2-x1", "AWS Inferentia2) is not an NVIDIA GPU"),
    ("aws-us-east-1-nvidia-a10g-x4", "size x4 has several GPUs"),
])
def test_cpu_and_non_nvidia_hardware_is_refused_with_priced_alternatives(hardware, why):
    with pytest.raises(config.ConfigError) as refused:
        hf_run({"hfHardware": hardware}, preview=True)
    message = str(refused.value)
    assert f"hfHardware '{hardware}' cannot run SDXL: " in message and why in message
    alternatives = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- aws-")
                    or line.strip().startswith("- gcp-")]
    assert len(alternatives) == 3
    for line in alternatives:
        offer = catalog.HF_OFFERS[line.split()[0]]
        assert f"~${offer.usd_per_hour:.2f}/h" in line and offer.gpu.memory_gb >= catalog.SDXL_MIN_GPU_MEMORY_GB
    assert "fix: pulumi config set hfHardware aws-us-east-1-nvidia-l4-x1" in message


def test_the_t4_hugging_face_gives_14_gb_on_aws_is_refused_and_never_offered():
    with pytest.raises(config.ConfigError) as refused:
        hf_run({"hfHardware": "aws-us-east-1-nvidia-t4-x1"}, preview=True)
    message = str(refused.value)
    assert "gives its nvidia-t4 on aws 14 GB of GPU memory, below the 16 GB SDXL needs" in message
    assert "fix: pulumi config set hfHardware aws-us-east-1-nvidia-l4-x1" in message
    assert "- aws-us-east-1-nvidia-t4-x1" not in message
    assert "aws-us-east-1-nvidia-t4-x1" not in catalog.HF_OFFERS
    # Google's T4 on Hugging Face has its 16 GB: `gpu: t4` lands there.
    assert hf_run({"hfHardware": "gcp-us-east4-nvidia-t4-x1"}).one(HF_ENDPOINT_TYPE).inputs["vendor"] == "gcp"


def test_keys_a_hosted_endpoint_cannot_honour_are_refused():
    with pytest.raises(config.ConfigError) as refused:
        hf_run({"allowedCidrs": ["203.0.113.0/24"], "domain": "sdxl.example.com", "spot": "true",
                "minReplicas": "0", "idleStopMinutes": "0", "runpodGpuType": "NVIDIA L4"}, preview=True)
    message = str(refused.value)
    for key in ("allowedCidrs", "domain", "spot", "minReplicas", "runpodGpuType"):
        assert f"  - {key}" in message, key


def test_the_probe_route_is_one_the_server_answers_without_a_token():
    """Hugging Face's readiness probe sends no bearer token: the route must be public in the server."""
    tree = ast.parse((ROOT / "server" / "app.py").read_text())
    public = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "PUBLIC_PATHS" for t in node.targets))
    assert hosted.PROBE_ROUTE in ast.unparse(public)
    assert properties()["healthRoute"] == hosted.PROBE_ROUTE


def test_the_deployment_pulls_no_secret_through_provider_state(api):
    created = provider().create(properties())
    assert fake_api.TOKEN not in str(created.outs)  # the operator's key is never an output
    assert created.outs["secrets"] == {"SDXL_API_TOKEN": TOKEN}  # kept for diffs; secret through the resource


def test_the_dynamic_resource_keeps_its_secrets_secret_in_the_state():
    run = hf_run()
    # The engine applies additionalSecretOutputs to the provider's outputs (mocks do not: the input is secret too).
    assert run.options(HF_ENDPOINT_TYPE)["additional_secret_outputs"] == ["secrets"]
    assert is_rpc_secret(run.one(HF_ENDPOINT_TYPE).inputs["secrets"])
    assert run.state(HF_ENDPOINT_TYPE)["namespace"] == FAKE_HF_USER


def test_the_readme_presets_row_carries_the_catalogs_price_and_date():
    (row,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `hf-a10g` |")]
    offer = catalog.HF_OFFERS[catalog.hf_hardware_id("aws", "us-east-1", "nvidia-a10g")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2:5] == [offer.name, f"NVIDIA {offer.gpu.model}", f"{offer.gpu.memory_gb} GB"]
    assert cells[5].startswith(f"{offer.usd_per_hour:.2f} ") and catalog.HF_PRICES_AS_OF in cells[5]
