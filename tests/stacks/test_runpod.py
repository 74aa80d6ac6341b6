"""cloud runpod: the dynamic provider through the official `runpod` SDK against a loopback fake of RunPod's GraphQL
API (tests/fakes/runpod_api.py), and the component through the real `__main__.py` under mocks."""

from __future__ import annotations

import json

import pytest
import requests

from stacks import bundle, catalog, config, contract, hosted
from stacks import runpod as rp
from tests.fakes import runpod_api as fake_api
from tests.stacks.conftest import (
    FAKE_POD_COST,
    FAKE_POD_ID,
    ROOT,
    RUNPOD_POD_TYPE,
    is_rpc_secret,
    load_provider_in_project,
    plain_strings,
    run_program,
)

IMAGE = "ghcr.io/example/sdxl-endpoint-server:1.2.3"
# A configured token may hold any character; the SDK writes values into its GraphQL text unescaped.
TOKEN = 'tok"en\\with-quote' + "z" * 20
COMPONENT = "sdxl-endpoint:runpod:Endpoint"


def runpod_run(settings=None, **kwargs):
    return run_program({"cloud": "runpod", "image": IMAGE, **(settings or {})}, **kwargs)


def properties(config_values: dict | None = None, **changes) -> dict:
    """The pod's inputs for the runpod-l4 stack with IMAGE (and `config_values`, keys without the project)."""
    values = {"cloud": "runpod", "image": IMAGE, **(config_values or {})}
    settings = config.validate({f"{config.PROJECT}:{key}": value for key, value in values.items()},
                               stack="runpod-l4")
    return {**rp.pod_properties(settings, secrets={"SDXL_API_TOKEN": TOKEN}), **changes}


@pytest.fixture
def api(monkeypatch):
    with fake_api.serving(fake_api.FakeRunPod(), monkeypatch) as fake:
        yield fake


def provider(api: fake_api.FakeRunPod) -> rp.PodProvider:
    """The provider with short budgets, probing the fake's stand-in for RunPod's proxy, updating through its REST
    API."""
    return rp.PodProvider(start_timeout_s=0.5, poll_s=0.01, proxy_url=api.proxy_url, rest_url=api.rest_url,
                          reset_grace_s=0.5)


# --- the provider against the fake API --------------------------------------------------------------------


def test_create_asks_for_one_gpu_our_image_the_port_and_the_settings(api):
    created = provider(api).create(properties())
    (spec,) = api.created
    assert api.calls[:2] == ["gpuType", "create"]  # the SDK checks the GPU type exists first
    assert (spec["gpuTypeId"], spec["cloudType"], spec["gpuCount"]) == ("NVIDIA L4", "SECURE", 1)
    assert (spec["imageName"], spec["name"], spec["ports"]) == (IMAGE, "sdxl-runpod-l4", "8000/http")
    assert spec["supportPublicIp"] is False and "startSsh" not in spec  # no SSH, no public IP
    assert (spec["volumeInGb"], spec["containerDiskInGb"]) == (0, config.DEFAULT_DATA_DISK_GB)
    assert (spec["minVcpuCount"], spec["minMemoryInGb"]) == (rp.MIN_VCPUS, rp.MIN_MEMORY_GB)
    assert spec["allowedCudaVersions"] == ["13.0"] == [bundle.image_cuda_version()]  # hosts whose driver runs it
    env = {item["key"]: item["value"] for item in spec["env"]}
    assert env["SDXL_API_TOKEN"] == TOKEN  # quotes and backslashes arrive intact, the query intact
    assert env["SDXL_MAX_WAIT_SECONDS"] == "85" and float(env["SDXL_MAX_WAIT_SECONDS"]) < rp.PROXY_LIMIT_S
    assert int(env["SDXL_REQUEST_TIMEOUT"]) < rp.PROXY_LIMIT_S
    assert env["HF_HOME"] == "/home/sdxl/.cache/huggingface" and env["SDXL_MODEL"].startswith("stabilityai/")
    pod_id = created.id
    assert created.outs["url"] == f"https://{pod_id}-8000.proxy.runpod.net"
    assert created.outs["costPerHr"] == 0.43 and created.outs["desiredStatus"] == "RUNNING"


def test_create_returns_only_once_the_server_is_ready_through_the_proxy(api):
    created = provider(api).create(properties())
    assert api.probes[-1] == f"/proxy/{created.id}-8000/ready"
    assert api.pods[created.id]["desiredStatus"] == "RUNNING"


@pytest.mark.parametrize("switch, seen", [
    ("starts", "no running container"),  # an image RunPod cannot pull, or a container that keeps exiting
    ("model_loads", "/ready answered 503"),
])
def test_a_pod_that_never_serves_is_terminated_and_explained(api, switch, seen):
    setattr(api, switch, False)
    with pytest.raises(rp.RunPodError, match=rf"did not serve /ready within 0.5 s \(.*{seen}.*\); it was "
                       r"terminated again\. Check that `image` can be pulled without credentials"):
        provider(api).create(properties())
    assert api.pods == {} and api.calls.count("podTerminate") == 1


def test_no_capacity_is_a_failed_creation_that_leaves_nothing(api):
    api.no_stock = True
    with pytest.raises(rp.RunPodError, match="no longer any instances available"):
        provider(api).create(properties())
    assert api.pods == {}


def test_a_refused_key_is_explained(api, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong")
    with pytest.raises(rp.RunPodError, match="AuthenticationError: Unauthorized request"):
        provider(api).create(properties())
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(hosted.ProviderKeyMissing, match="export RUNPOD_API_KEY="):
        provider(api).delete("pod0001xyz", properties())


@pytest.mark.parametrize("change", [
    {"gpuTypeId": "NVIDIA A40"}, {"cloudType": "COMMUNITY"}, {"minVcpuCount": 8}, {"minMemoryInGb": 32},
    {"allowedCudaVersions": ["12.8"]},
])
def test_diff_replaces_the_pod_for_what_only_placement_sets(api, change):
    olds = provider(api).create(properties()).outs
    assert provider(api).diff("p", olds, properties()).changes is False
    replaced = provider(api).diff("p", olds, properties(**change))
    assert (replaced.changes, replaced.replaces, replaced.delete_before_replace) == (True, list(change), True)
    # With an in-place change beside it, the pod is still replaced, for the placement alone.
    mixed = provider(api).diff("p", olds, properties(**change, imageName=IMAGE + "-2"))
    assert (mixed.changes, mixed.replaces) == (True, list(change))


NEW_TOKEN = 'new"tok\\en' + "y" * 20


@pytest.mark.parametrize("config_values, change, sent", [
    ({"image": IMAGE + "-2"}, {}, {"imageName": IMAGE + "-2"}),
    ({"corsOrigins": "https://app.example"}, {}, {"env"}),
    ({}, {"secrets": {"SDXL_API_TOKEN": NEW_TOKEN}}, {"env"}),  # a rotated token
    ({"dataDiskGb": "80"}, {}, {"containerDiskInGb": 80}),
    ({}, {"ports": "8000/http,8001/http"}, {"ports": ["8000/http", "8001/http"]}),
    ({}, {"name": "sdxl-renamed"}, {"name": "sdxl-renamed"}),
])
def test_diff_updates_in_place_what_the_patch_sets_and_sends_only_that(api, config_values, change, sent):
    created = provider(api).create(properties())
    news = properties(config_values, **change)
    diff = provider(api).diff(created.id, created.outs, news)
    assert (diff.changes, diff.replaces) == (True, [])
    updated = provider(api).update(created.id, created.outs, news)
    ((pod_id, body),) = api.patches
    assert pod_id == created.id and set(body) == set(sent)
    if isinstance(sent, dict):
        assert body == sent
    else:  # the variables go whole: the PATCH replaces the pod's env
        assert body["env"] == {**news["env"], **news["secrets"]}
    assert updated.outs["podId"] == created.id and updated.outs["url"] == created.outs["url"]
    assert provider(api).diff(created.id, updated.outs, news).changes is False


def test_an_image_settings_and_token_change_keeps_the_pod_and_waits_for_its_new_server(api):
    created = provider(api).create(properties())
    news = properties({"image": IMAGE + "-2", "corsOrigins": "https://app.example"},
                      secrets={"SDXL_API_TOKEN": NEW_TOKEN})
    updated = provider(api).update(created.id, created.outs, news)
    assert list(api.pods) == [created.id] and api.calls.count("create") == 1 and "podTerminate" not in api.calls
    assert updated.outs["url"] == f"https://{created.id}-8000.proxy.runpod.net" == created.outs["url"]
    pod = api.pods[created.id]
    env = dict(item.split("=", 1) for item in pod["env"])
    assert pod["imageName"] == IMAGE + "-2"
    assert env["SDXL_API_TOKEN"] == NEW_TOKEN and env["SDXL_CORS_ORIGINS"] == "https://app.example"
    assert env["SDXL_MAX_WAIT_SECONDS"] == "85"  # the settings that did not change go again: env is replaced whole
    # The server from before answered /ready once after the PATCH; update waited for the reset one.
    assert api.resetting == {} and api.probes[-1] == f"/proxy/{created.id}-8000/ready"
    assert updated.outs["secrets"] == {"SDXL_API_TOKEN": NEW_TOKEN} and updated.outs["costPerHr"] == 0.43


@pytest.mark.parametrize("setup, said", [
    (lambda api, monkeypatch: setattr(api, "refuse_patch", "containerDiskInGb is above what the host has free"),
     r"RunPod answered HTTP 400: .*containerDiskInGb is above what the host has free.*\[secret\].*The pod was not "
     r"changed: it keeps its id, endpoint URL and previous settings\. Check the changed values"),
    (lambda api, monkeypatch: monkeypatch.setenv("RUNPOD_API_KEY", fake_api.READ_ONLY_KEY),
     r"RunPod answered HTTP 403: .*The pod was not changed.*Check that RUNPOD_API_KEY is a key of the account that "
     r"owns the pod, with write access"),
])
def test_a_refused_update_says_why_and_leaves_the_pod(api, monkeypatch, setup, said):
    created = provider(api).create(properties())
    setup(api, monkeypatch)
    news = properties({"image": IMAGE + "-2"}, secrets={"SDXL_API_TOKEN": NEW_TOKEN})
    with pytest.raises(rp.RunPodError, match=rf"updating pod {created.id} \(imageName, env\): {said}") as refused:
        provider(api).update(created.id, created.outs, news)
    # An answer that echoes the body has the tokens blanked out, as they are and JSON-escaped.
    assert NEW_TOKEN not in str(refused.value) and json.dumps(NEW_TOKEN)[1:-1] not in str(refused.value)
    assert list(api.pods) == [created.id] and api.pods[created.id]["imageName"] == IMAGE
    assert "podTerminate" not in api.calls


def test_a_stopped_pod_takes_the_update_without_a_wait_for_a_server(api):
    created = provider(api).create(properties())
    api.pods[created.id]["desiredStatus"] = "EXITED"  # its idle stop
    probes = len(api.probes)
    updated = provider(api).update(created.id, created.outs, properties({"image": IMAGE + "-2"}))
    assert api.pods[created.id]["imageName"] == IMAGE + "-2" and len(api.probes) == probes
    assert (updated.outs["podId"], updated.outs["desiredStatus"]) == (created.id, "EXITED")


def test_the_fake_patch_refuses_what_runpods_update_input_does_not_take(api):
    """What makes the provider's accepted PATCHes above mean something: a body off RunPod's PodUpdateInput fails."""
    created = provider(api).create(properties())
    url = f"{api.rest_url}/pods/{created.id}"
    operator = {"Authorization": f"Bearer {fake_api.KEY}"}
    api.pod_keys["rp_pod_scoped"] = created.id
    for body, key, status in [
        ({"ports": "8000/http"}, operator, 400),  # a list, not create_pod's string
        ({"gpuTypeId": "NVIDIA A40"}, operator, 400),  # not a field the update takes
        ({"containerDiskInGb": True}, operator, 400),
        ({"name": "x"}, {"Authorization": "Bearer rp_pod_scoped"}, 403),
        ({"name": "x"}, {}, 401),
    ]:
        assert requests.patch(url, json=body, headers=key, timeout=5).status_code == status, body
    assert api.pods[created.id]["name"] == "sdxl-runpod-l4"


def test_an_update_with_a_refused_key_changes_nothing(api, monkeypatch):
    created = provider(api).create(properties())
    monkeypatch.setenv("RUNPOD_API_KEY", "rp_someone_else")
    with pytest.raises(rp.RunPodError, match=rf"reading pod {created.id} before updating it \(nothing was changed\): "
                       "AuthenticationError"):
        provider(api).update(created.id, created.outs, properties({"image": IMAGE + "-2"}))
    assert api.patches == [] and api.pods[created.id]["imageName"] == IMAGE


def test_updating_a_pod_gone_from_the_account_says_to_refresh(api):
    created = provider(api).create(properties())
    del api.pods[created.id]
    with pytest.raises(rp.RunPodError, match=r"HTTP 404: .*The pod is gone from the account: `pulumi refresh` drops"):
        provider(api).update(created.id, created.outs, properties({"image": IMAGE + "-2"}))


def test_an_update_that_never_serves_is_explained_and_the_pod_kept(api):
    created = provider(api).create(properties())
    api.starts = False  # the new image cannot be pulled, or its container keeps exiting
    with pytest.raises(rp.RunPodError, match=rf"pod {created.id} took the update \(imageName\) but did not serve "
                       r"/ready within 0\.5 s \(.*no running container.*\)\. It was not terminated and keeps its id "
                       r"and endpoint URL.*run `pulumi refresh` first"):
        provider(api).update(created.id, created.outs, properties({"image": IMAGE + "-2"}))
    assert list(api.pods) == [created.id] and "podTerminate" not in api.calls


def test_refresh_sees_drift_and_a_terminated_pod(api):
    created = provider(api).create(properties())
    pod = api.pods[created.id]
    pod["imageName"] = "someone/else:latest"
    pod["env"] = [item for item in pod["env"] if not item.startswith("SDXL_CORS_ORIGINS=")] + ["EXTRA=1"]
    read = provider(api).read(created.id, created.outs)
    assert read.id == created.id and read.outs["imageName"] == "someone/else:latest"
    assert "SDXL_CORS_ORIGINS" not in read.outs["env"] and "EXTRA" not in read.outs["env"]
    assert read.outs["secrets"] == {"SDXL_API_TOKEN": TOKEN}  # not read back from the pod's variables
    drift = provider(api).diff(created.id, read.outs, properties())
    assert (drift.changes, drift.replaces) == (True, [])  # an update puts the image and settings back
    del api.pods[created.id]
    assert provider(api).read(created.id, created.outs).id == ""


def test_delete_terminates_and_a_pod_already_gone_is_fine(api):
    created = provider(api).create(properties())
    provider(api).delete(created.id, created.outs)
    assert api.pods == {} and api.calls.count("podTerminate") == 1
    provider(api).delete(created.id, created.outs)  # already terminated: nothing to do, no error
    assert api.calls.count("podTerminate") == 1


def test_the_provider_carries_no_key_and_loads_where_the_engine_runs_it(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", fake_api.KEY)
    stored, loaded = load_provider_in_project(run_program({"image": IMAGE}, preset="runpod-l4"), RUNPOD_POD_TYPE)
    assert fake_api.KEY.encode() not in stored
    assert loaded == ["stacks.runpod", "PodProvider"]


# --- the program under mocks ------------------------------------------------------------------------------


def test_the_preset_evaluates_to_the_output_contract():
    run = run_program({"image": IMAGE}, preset="runpod-l4")
    outputs = {name: run.value(output) for name, output in run.outputs.items()}
    assert tuple(outputs) == contract.OUTPUT_NAMES
    assert outputs["endpoint"] == f"https://{FAKE_POD_ID}-8000.proxy.runpod.net"
    assert (outputs["instanceType"], outputs["gpu"], outputs["gpuMemoryGb"]) == ("NVIDIA L4", "L4", 24)
    assert outputs["hourlyCostUsd"] == FAKE_POD_COST  # the pod's own rate: RunPod prices live
    assert (outputs["region"], outputs["availabilityZone"], outputs["publicIp"]) == ("any", "", "")
    assert outputs["instanceId"] == FAKE_POD_ID and FAKE_POD_ID in outputs["shell"]
    assert run.is_secret(run.outputs["apiToken"])
    assert run.orphans(COMPONENT) == []
    inputs = run.one(RUNPOD_POD_TYPE).inputs
    assert (inputs["cloudType"], inputs["gpuTypeId"]) == ("SECURE", "NVIDIA L4")


def test_the_tokens_are_secrets_and_appear_nowhere_in_plain_inputs():
    run = runpod_run({"apiToken": "configured-token-0123456789", "hfToken": "hf_gated_model_token"})
    pod = run.one(RUNPOD_POD_TYPE).inputs
    assert is_rpc_secret(pod["secrets"])
    assert not [s for s in plain_strings(pod) if "configured-token" in s or "hf_gated" in s]
    assert run.options(RUNPOD_POD_TYPE)["additional_secret_outputs"] == ["secrets"]


def test_without_an_image_preview_stops_with_the_fix():
    with pytest.raises(config.ConfigError, match=r"image: required when cloud is runpod.*\n.*fix: publish"):
        run_program({}, preset="runpod-l4", preview=True)


@pytest.mark.parametrize("gpu_type, why", [
    ("NVIDIA GeForce RTX 3070", "has 8 GB per GPU, below the 16 GB"),
    ("AMD Instinct MI300X OAM", "not NVIDIA, so CUDA does not run on it"),
    ("NVIDIA GeForce GTX 1080", "not one of the catalog's RunPod GPU types"),
])
def test_small_and_non_nvidia_gpus_are_refused_with_fitting_ones(gpu_type, why):
    with pytest.raises(config.ConfigError) as refused:
        runpod_run({"runpodGpuType": gpu_type}, preview=True)
    message = str(refused.value)
    assert f"runpodGpuType '{gpu_type}' cannot run SDXL: " in message and why in message
    assert "- NVIDIA RTX A4000 (RTX A4000 16 GB, priced live" in message
    assert "fix: pulumi config set runpodGpuType 'NVIDIA RTX A4000'" in message


def test_gpu_and_cloud_type_choices():
    inputs = runpod_run({"gpu": "l40s", "runpodCloudType": "community"}).one(RUNPOD_POD_TYPE).inputs
    assert (inputs["gpuTypeId"], inputs["cloudType"]) == ("NVIDIA L40S", "COMMUNITY")
    for gpu_type in catalog.RUNPOD_GPUS:  # every catalogued type is accepted
        assert runpod_run({"runpodGpuType": gpu_type}).one(RUNPOD_POD_TYPE).inputs["gpuTypeId"] == gpu_type
    with pytest.raises(config.ConfigError, match=r"gpu = 't4': not offered on RUNPOD"):
        runpod_run({"gpu": "t4"}, preview=True)
    with pytest.raises(config.ConfigError, match=r"runpodCloudType = 'SPOT': must be one of SECURE, COMMUNITY"):
        runpod_run({"runpodCloudType": "SPOT"}, preview=True)


def test_a_pod_is_one_gpu_and_hosted_keys_stay_with_their_cloud():
    with pytest.raises(config.ConfigError, match=r"maxReplicas = 2: a RunPod pod is one GPU"):
        runpod_run({"maxReplicas": "2"}, preview=True)
    with pytest.raises(config.ConfigError, match=r"runpodGpuType = 'NVIDIA L4': applies to cloud runpod, but cloud "
                       r"is aws\n.*fix: pulumi config rm runpodGpuType"):
        run_program({"runpodGpuType": "NVIDIA L4"}, preview=True)


def test_idle_minutes_reach_the_pod_for_its_watcher():
    env = runpod_run({"idleStopMinutes": "12"}).one(RUNPOD_POD_TYPE).inputs["env"]
    assert env["SDXL_IDLE_STOP_MINUTES"] == "12"


def test_hosts_are_asked_for_the_image_cuda_major_from_its_minor_on():
    assert catalog.runpod_cuda_versions("13.0") == ["13.0"]
    assert catalog.runpod_cuda_versions("12.6") == ["12.6", "12.7", "12.8", "12.9"]  # not 13.x: another major
    assert "11.8" not in catalog.runpod_cuda_versions("12.0")


def test_the_readme_presets_row_says_where_the_price_comes_from():
    (row,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `runpod-l4` |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    offer = catalog.RUNPOD_OFFERS["NVIDIA L4"]
    assert cells[2:5] == [offer.name, f"NVIDIA {offer.gpu.model}", f"{offer.gpu.memory_gb} GB"]
    assert offer.usd_per_hour is None and "--suggest" in cells[5] and "hourlyCostUsd" in cells[5]
