"""cloud: kubernetes under mocks: every rendered object is valid Kubernetes (kubernetes-validate, strict), and the
rules hold: one GPU as a limit, placement that admits only nodes whose GPU runs SDXL, probes on /ready and /health,
a non-root read-only container, tokens only in a Secret, autoscaler bounds from the config, a PodDisruptionBudget."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.settings import Settings as ServerSettings
from stacks import catalog, config, contract
from stacks import kubernetes as k8s_target
from tests.stacks.conftest import (
    FAKE_K8S_INGRESS_HOSTNAME,
    FAKE_K8S_INGRESS_IP,
    FAKE_K8S_LB_IP,
    ROOT,
    is_rpc_secret,
    plain_strings,
    run_program,
    unwrap_rpc_secret,
)

IMAGE = "ghcr.io/sdxl-endpoint/sdxl-endpoint-server:1.0.0"
BASE = {"cloud": "kubernetes", "image": IMAGE}
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
PRESETS = ("k8s-gke-l4", "k8s-eks-a10g", "coreweave")
# Oldest minor still in the big clouds' standard support, and the newest schema kubernetes-validate ships.
SCHEMA_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
# Custom resources the cluster's add-ons define; kubernetes-validate knows only the built-in kinds.
CUSTOM_KINDS = {"ScaledObject", "BackendConfig"}


def plain(value: Any) -> Any:
    """Resource inputs with Pulumi's secret wrappers removed, as the provider sends them to the API server."""
    if is_rpc_secret(value):
        return plain(unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def manifests(run) -> list[dict[str, Any]]:
    """Every Kubernetes object the program registered, as the manifest the provider applies."""
    found = []
    for resource in run.mocks.resources:
        if resource.typ.startswith("kubernetes:") and not resource.typ.startswith("pulumi:providers"):
            found.append(plain(dict(resource.inputs)))
    return found


def of_kind(run, kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests(run) if m["kind"] == kind]


def one_kind(run, kind: str) -> dict[str, Any]:
    (found,) = of_kind(run, kind)
    return found


def pod(run) -> dict[str, Any]:
    return one_kind(run, "Deployment")["spec"]["template"]["spec"]


def server(run) -> dict[str, Any]:
    (container,) = pod(run)["containers"]
    return container


def secrets(**values: str) -> tuple[str, ...]:
    return tuple(f"sdxl-endpoint:{key}" for key in values)


# --- schema ------------------------------------------------------------------------------------------------------


CONFIGS = {
    "load balancer, one replica": {},
    "ingress with cert-manager, HPA on CPU": {"domain": "sdxl.example.com", "certIssuer": "letsencrypt-prod",
                                               "ingressClass": "nginx", "maxReplicas": 3},
    "GKE ingress, KEDA, existing namespace, pull secret": {
        "domain": "sdxl.example.com", "ingressClass": "gce", "maxReplicas": 4, "minReplicas": 2,
        "kedaPrometheusUrl": "http://prometheus-server.monitoring.svc:80", "namespace": "ml",
        "storageClass": "standard-rwx", "imagePullSecret": json.dumps({"auths": {"ghcr.io": {"auth": "dTp0"}}})},
    "internal, selector": {"exposure": "internal", "nodeSelector": ["cloud.google.com/gke-accelerator=nvidia-l4"]},
}


@pytest.mark.parametrize("extra", CONFIGS.values(), ids=CONFIGS.keys())
def test_every_object_is_valid_kubernetes_in_strict_mode(extra):
    run = run_program({**BASE, **extra}, secret_keys=secrets(apiToken="", hfToken="", imagePullSecret=""))
    objects = manifests(run)
    assert {"Secret", "PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget"} <= {
        m["kind"] for m in objects}
    checked = 0
    for manifest in objects:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        for version in SCHEMA_VERSIONS:
            # Raises ValidationError naming the field; strict also refuses fields the schema does not know.
            kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    assert checked >= 5


def test_the_schema_check_catches_a_misplaced_field():
    """The validator really reads these objects: a field in the wrong place fails it."""
    manifest = one_kind(run_program(BASE), "Deployment")
    manifest["spec"]["template"]["spec"]["containers"][0]["gpu"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, SCHEMA_VERSIONS[-1], strict=True)


# --- the workload ------------------------------------------------------------------------------------------------


def test_one_gpu_as_a_limit_and_requests_from_the_catalog():
    resources = server(run_program(BASE))["resources"]
    assert resources["limits"][catalog.K8S_GPU_RESOURCE] == "1"
    assert catalog.K8S_GPU_RESOURCE not in resources["requests"]  # GPUs go in limits only (Kubernetes docs)
    assert {k: resources["requests"][k] for k in ("cpu", "memory")} == catalog.K8S_SERVER_REQUESTS


def test_probes_ask_ready_and_health_on_the_api_port_with_room_for_a_first_download():
    container = server(run_program(BASE))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8000
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600  # SDXL's download and load
    # No probe carries the token: /health and /ready are public.
    assert "httpHeaders" not in json.dumps(container)


def test_the_container_runs_as_the_images_user_with_a_read_only_root_and_no_capabilities():
    run = run_program(BASE)
    container, spec = server(run), pod(run)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == k8s_target.UID != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["fsGroup"] == k8s_target.UID  # the cache volume is writable by the server
    assert spec["automountServiceAccountToken"] is False
    # What the server writes goes to volumes: the model cache (HF_HOME) and a scratch emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == "sdxl-endpoint-model-cache"
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_the_namespace_the_stack_creates_enforces_the_restricted_pod_security_standard():
    labels = one_kind(run_program(BASE, stack="dev"), "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    run = run_program({**BASE, "namespace": "ml"})
    assert of_kind(run, "Namespace") == []  # an existing namespace is the user's
    assert {m["metadata"]["namespace"] for m in manifests(run)} == {"ml"}


def test_every_server_setting_the_pod_sets_is_one_the_server_reads():
    """The env names are the server's own settings (SDXL_<field>), so none is silently ignored."""
    env = {e["name"]: e["value"] for e in server(run_program(BASE))["env"]}
    fields = {f"SDXL_{name.upper()}" for name in ServerSettings.model_fields}
    assert {name for name in env if name.startswith("SDXL_")} <= fields
    assert env["SDXL_METRICS_PORT"] == str(k8s_target.METRICS_PORT)
    assert env["SDXL_MODEL"] == config.DEFAULT_MODEL


def test_the_grace_period_covers_the_pre_stop_wait_and_the_servers_drain():
    run = run_program(BASE)
    env = {e["name"]: e["value"] for e in server(run)["env"]}
    # The kubelet's sleep action holds SIGTERM back while the endpoints and the proxies stop routing to the pod.
    pre_stop = server(run)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 10
    # The grace period counts from the start of preStop: it covers the wait, the drain and uvicorn's flush.
    assert pod(run)["terminationGracePeriodSeconds"] > pre_stop + float(env["SDXL_SHUTDOWN_GRACE"]) + 5


def test_tokens_are_only_in_a_secret():
    token, hf, pull = "tok-" + "a" * 40, "hf_" + "b" * 34, json.dumps({"auths": {"ghcr.io": {"auth": "c2VjcmV0"}}})
    run = run_program({**BASE, "apiToken": token, "hfToken": hf, "imagePullSecret": pull},
                      secret_keys=secrets(apiToken="", hfToken="", imagePullSecret=""))
    for resource in run.mocks.resources:
        if resource.typ != "kubernetes:core/v1:Secret":
            assert not any(token in s or hf in s or "c2VjcmV0" in s for s in plain_strings(resource.inputs)), \
                resource.typ
    tokens, registry = sorted(of_kind(run, "Secret"), key=lambda m: m["type"])
    assert tokens["stringData"] == {"SDXL_API_TOKEN": token, "HF_TOKEN": hf}
    assert registry["type"] == "kubernetes.io/dockerconfigjson" and registry["stringData"][".dockerconfigjson"] == pull
    for secret in run.of_type("kubernetes:core/v1:Secret"):
        assert is_rpc_secret(secret.inputs["stringData"])
    assert pod(run)["imagePullSecrets"] == [{"name": "sdxl-endpoint-pull"}]
    assert server(run)["envFrom"] == [{"secretRef": {"name": "sdxl-endpoint-tokens"}}]
    assert run.is_secret(run.outputs["apiToken"]) and run.value(run.outputs["apiToken"]) == token


def test_a_new_token_rolls_the_pods_without_the_token_in_any_plain_input():
    """The server reads the tokens from env vars at start: a changed Secret alone leaves the pods on the old token,
    so the pod template carries a digest of them, which changes with either token and with nothing else."""
    def template(token: str, hf: str = "hf_" + "b" * 34) -> tuple[str, dict[str, Any]]:
        run = run_program({**BASE, "apiToken": token, "hfToken": hf},
                          secret_keys=secrets(apiToken="", hfToken=""))
        for resource in run.mocks.resources:
            assert not any(token in text or hf in text for text in plain_strings(resource.inputs)), resource.typ
        (deployment,) = run.of_type(DEPLOYMENT)
        # A plain input (a secret one would hide the whole spec's diff), keyed: not the bare sha256 of the tokens,
        # which a short chosen apiToken could be guessed back from.
        assert not is_rpc_secret(deployment.inputs["spec"])
        pod_template = one_kind(run, "Deployment")["spec"]["template"]
        digest = pod_template["metadata"]["annotations"][k8s_target.TOKENS_DIGEST_ANNOTATION]
        bare = hashlib.sha256(json.dumps({"SDXL_API_TOKEN": token, "HF_TOKEN": hf}, sort_keys=True).encode())
        assert len(digest) == 64 and digest != bare.hexdigest()
        return digest, pod_template

    first_digest, first = template("tok-" + "a" * 40)
    second_digest, second = template("tok-" + "c" * 40)
    assert first != second and first_digest != second_digest
    assert template("tok-" + "a" * 40)[1] == first  # the same tokens: no rollout
    assert template("tok-" + "a" * 40, hf="hf_" + "d" * 34)[0] != first_digest  # a new Hugging Face token too


def test_the_stack_talks_to_the_named_context_through_its_own_provider():
    run = run_program({**BASE, "kubeContext": "gke_proj_us-central1_gpu"})
    provider = run.one("pulumi:providers:kubernetes")
    assert provider.inputs["context"] == "gke_proj_us-central1_gpu"
    for resource in run.mocks.resources:
        if resource.typ.startswith("kubernetes:"):
            # A provider reference is "<provider URN>::<provider id>".
            urn = run.monitor.options[(resource.typ, resource.name)]["provider"].rsplit("::", 1)[0]
            assert urn.endswith(f"pulumi:providers:kubernetes::{provider.name}"), resource.typ
    assert run.value(run.outputs["shell"]).startswith("kubectl --context gke_proj_us-central1_gpu ")
    assert run.orphans("sdxl-endpoint:kubernetes:Endpoint") == []


# --- placement ---------------------------------------------------------------------------------------------------

# Nodes as the platforms label them (stacks/catalog.py names the sources).
NODES: dict[str, dict[str, str]] = {
    "gke-l4": {catalog.K8S_LABEL_GKE: "nvidia-l4"},
    "gke-t4": {catalog.K8S_LABEL_GKE: "nvidia-tesla-t4"},
    "gke-p4": {catalog.K8S_LABEL_GKE: "nvidia-tesla-p4"},
    "gke-v100": {catalog.K8S_LABEL_GKE: "nvidia-tesla-v100"},
    "eks-auto-a10g": {catalog.K8S_LABEL_EKS_AUTO: "a10g", catalog.K8S_LABEL_EKS_AUTO_MEMORY: "22888"},
    "karpenter-g6f-l4-share": {catalog.K8S_LABEL_KARPENTER: "l4", catalog.K8S_LABEL_KARPENTER_MEMORY: "2861"},
    "karpenter-g6-l4": {catalog.K8S_LABEL_KARPENTER: "l4", catalog.K8S_LABEL_KARPENTER_MEMORY: "22888"},
    "karpenter-radeon": {catalog.K8S_LABEL_KARPENTER: "radeon-pro-v520", catalog.K8S_LABEL_KARPENTER_MEMORY: "8192"},
    "karpenter-g5g-t4g": {catalog.K8S_LABEL_KARPENTER: "t4g", catalog.K8S_LABEL_KARPENTER_MEMORY: "16384"},
    "karpenter-p4de-a100": {catalog.K8S_LABEL_KARPENTER: "a100", catalog.K8S_LABEL_KARPENTER_MEMORY: "81920"},
    "coreweave-h100": {catalog.K8S_LABEL_INSTANCE_TYPE: "gd-8xh100ib-i128",
                       catalog.K8S_LABEL_GFD_PRODUCT: "NVIDIA-H100-80GB-HBM3", catalog.K8S_LABEL_GFD_MEMORY: "81559",
                       catalog.K8S_LABEL_GFD_COMPUTE_MAJOR: "9", catalog.K8S_LABEL_GFD_COMPUTE_MINOR: "0",
                       catalog.K8S_LABEL_GFD_SHARING: "none"},
    "gfd-rtx-4090": {catalog.K8S_LABEL_GFD_PRODUCT: "NVIDIA-GeForce-RTX-4090", catalog.K8S_LABEL_GFD_MEMORY: "24564",
                     catalog.K8S_LABEL_GFD_COMPUTE_MAJOR: "8", catalog.K8S_LABEL_GFD_COMPUTE_MINOR: "9"},
    "gfd-t4": {catalog.K8S_LABEL_GFD_PRODUCT: "Tesla-T4", catalog.K8S_LABEL_GFD_MEMORY: "15360",
               catalog.K8S_LABEL_GFD_COMPUTE_MAJOR: "7", catalog.K8S_LABEL_GFD_COMPUTE_MINOR: "5"},
    "gfd-l4": {catalog.K8S_LABEL_GFD_PRODUCT: "NVIDIA-L4", catalog.K8S_LABEL_GFD_MEMORY: "23034",
               catalog.K8S_LABEL_GFD_COMPUTE_MAJOR: "8", catalog.K8S_LABEL_GFD_COMPUTE_MINOR: "9"},
    "gfd-v100": {catalog.K8S_LABEL_GFD_PRODUCT: "Tesla-V100-SXM2-16GB", catalog.K8S_LABEL_GFD_MEMORY: "16160",
                 catalog.K8S_LABEL_GFD_COMPUTE_MAJOR: "7", catalog.K8S_LABEL_GFD_COMPUTE_MINOR: "0"},
    "gfd-k80": {catalog.K8S_LABEL_GFD_PRODUCT: "Tesla-K80", catalog.K8S_LABEL_GFD_MEMORY: "11441",
                catalog.K8S_LABEL_GFD_COMPUTE_MAJOR: "3", catalog.K8S_LABEL_GFD_COMPUTE_MINOR: "7"},
    "gfd-a10g-time-sliced": {catalog.K8S_LABEL_GFD_PRODUCT: "NVIDIA-A10G-SHARED", catalog.K8S_LABEL_GFD_MEMORY: "23028",
                             catalog.K8S_LABEL_GFD_COMPUTE_MAJOR: "8", catalog.K8S_LABEL_GFD_COMPUTE_MINOR: "6",
                             catalog.K8S_LABEL_GFD_SHARING: "time-slicing"},
    # The GPU Operator time-slicing an EKS node's A10G: Karpenter's labels say a10g with EC2's memory, only GFD's
    # say the card is shared.
    "karpenter-a10g-time-sliced": {
        catalog.K8S_LABEL_KARPENTER: "a10g", catalog.K8S_LABEL_KARPENTER_MEMORY: "22888",
        catalog.K8S_LABEL_GFD_PRODUCT: "NVIDIA-A10G-SHARED", catalog.K8S_LABEL_GFD_MEMORY: "23028",
        catalog.K8S_LABEL_GFD_SHARING: "time-slicing"},
    "gke-l4-mps": {catalog.K8S_LABEL_GKE: "nvidia-l4", catalog.K8S_LABEL_GFD_SHARING: "mps"},
    # CoreWeave nodes that name their GPU only by class (no GPU Feature Discovery labels).
    "coreweave-a40-class": {catalog.K8S_LABEL_COREWEAVE: "A40"},
    "coreweave-h100-class": {catalog.K8S_LABEL_COREWEAVE: "H100_NVLINK_80GB"},
    "coreweave-rtx4000-class": {catalog.K8S_LABEL_COREWEAVE: "Quadro_RTX_4000"},
    "cpu-only": {catalog.K8S_LABEL_INSTANCE_TYPE: "m7i.xlarge"},
}


def schedulable_on(spec: dict[str, Any], labels: dict[str, str]) -> bool:
    """nodeSelector (every pair) and required node affinity (any term), judged as the doctor judges nodes."""
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return catalog.k8s_node_admits(labels, terms, spec.get("nodeSelector", {}))


@pytest.mark.parametrize(("labels", "requirement", "holds"), [
    ({"a": "x"}, {"key": "a", "operator": "In", "values": ["x", "y"]}, True),
    ({}, {"key": "a", "operator": "In", "values": ["x"]}, False),
    ({}, {"key": "a", "operator": "NotIn", "values": ["x"]}, True),  # a missing label is not in any set
    ({"a": "x"}, {"key": "a", "operator": "NotIn", "values": ["x"]}, False),
    ({"m": "23034"}, {"key": "m", "operator": "Gt", "values": ["15000"]}, True),
    ({"m": "15000"}, {"key": "m", "operator": "Gt", "values": ["15000"]}, False),
    ({"m": "lots"}, {"key": "m", "operator": "Gt", "values": ["1"]}, False),  # Gt needs an integer label
    ({}, {"key": "m", "operator": "Lt", "values": ["1"]}, False),
    ({"a": ""}, {"key": "a", "operator": "Exists"}, True),
    ({"a": ""}, {"key": "a", "operator": "DoesNotExist"}, False),
])
def test_a_requirement_is_read_with_the_schedulers_semantics(labels, requirement, holds):
    assert catalog.k8s_requirement_holds(labels, requirement) is holds


def admitted(run) -> set[str]:
    return {name for name, labels in NODES.items() if schedulable_on(pod(run), labels)}


def test_without_gpu_any_platforms_node_with_a_fitting_gpu_is_admitted_and_nothing_else():
    assert admitted(run_program(BASE)) == {
        "gke-l4", "gke-t4", "eks-auto-a10g", "karpenter-g6-l4", "karpenter-p4de-a100", "coreweave-h100",
        "gfd-rtx-4090", "gfd-t4", "gfd-l4", "coreweave-a40-class", "coreweave-h100-class"}


@pytest.mark.parametrize(("selector", "nodes"), [
    ("gpu.nvidia.com/class=A40", {"coreweave-a40-class"}),
    ("gpu.nvidia.com/class=H100_NVLINK_80GB", {"coreweave-h100-class"}),
])
def test_a_coreweave_class_selector_lands_on_nodes_that_carry_only_that_class(selector, nodes):
    assert admitted(run_program({**BASE, "nodeSelector": [selector]})) == nodes


@pytest.mark.parametrize(("gpu", "nodes"), [
    ("l4", {"gke-l4", "karpenter-g6-l4", "gfd-l4"}),  # not the fractional g6f share, whose name is l4 too
    ("a10g", {"eks-auto-a10g"}),  # not the time-sliced A10Gs, whatever other labels they carry
    ("t4", {"gke-t4", "gfd-t4"}),
    ("h100", {"coreweave-h100", "coreweave-h100-class"}),
    ("a100", {"karpenter-p4de-a100"}),
])
def test_gpu_narrows_placement_to_that_gpu_on_every_platform(gpu, nodes):
    assert admitted(run_program({**BASE, "gpu": gpu})) == nodes


@pytest.mark.parametrize(("preset", "nodes"), [
    ("k8s-gke-l4", {"gke-l4"}), ("k8s-eks-a10g", {"eks-auto-a10g"}), ("coreweave", {"coreweave-h100"})])
def test_each_preset_lands_only_on_its_platforms_gpu_nodes(preset, nodes):
    run = run_program({"image": IMAGE, "domain": "sdxl.example.com"} if preset != "k8s-eks-a10g" else {
        "image": IMAGE}, preset=preset)
    assert admitted(run) == nodes
    if preset == "k8s-gke-l4":  # GKE's own load balancer, which a stock GKE cluster has
        assert one_kind(run, "Ingress")["metadata"]["annotations"]["kubernetes.io/ingress.class"] == "gce"
        assert of_kind(run, "BackendConfig")
    assert pod(run)["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_presets_leave_image_to_the_user_and_say_how_to_set_it():
    for preset in PRESETS:
        text = (ROOT / "stacks" / f"Pulumi.{preset}.yaml").read_text()
        assert "sdxl-endpoint:image" not in yaml.safe_load(text)["config"]
        assert "config set image" in text
        with pytest.raises(Exception, match="image: required when cloud is kubernetes"):
            run_program(preset=preset)


@pytest.mark.parametrize(("selector", "reason"), [
    ("cloud.google.com/gke-accelerator=nvidia-tesla-p4", "P4 has 8 GB per GPU, below the 16 GB"),
    ("karpenter.k8s.aws/instance-gpu-name=radeon-pro-v520", "AMD Radeon Pro V520, not NVIDIA"),
    ("eks.amazonaws.com/instance-gpu-name=t4g", "Arm"),
    ("nvidia.com/gpu.product=Tesla-V100-SXM2-16GB", "predates Turing (compute capability 7.0)"),
    ("gpu.nvidia.com/class=Quadro_RTX_4000", "Quadro RTX 4000 has 8 GB"),
    ("cloud.google.com/gke-accelerator=nvidia-l4x", "GKE never sets this value"),
    ("nvidia.com/gpu.product=NVIDIA-A10G-SHARED", "-SHARED is how GPU Feature Discovery names a time-sliced"),
    ("nvidia.com/gpu.product=Tesla-T4-SHARED", "the placement keeps shared GPUs out and no node would take the pod"),
])
def test_a_selector_naming_an_unfit_gpu_fails_preview_with_the_nearest_fitting_classes(selector, reason):
    with pytest.raises(config.ConfigError) as raised:
        run_program({**BASE, "nodeSelector": [selector]}, preview=True)
    message = str(raised.value)
    assert reason in message
    label = selector.split("=")[0]
    assert "Nearest types that fit" in message
    assert f"fix: pulumi config set --path 'nodeSelector[0]' {label}=" in message


def validated(**keys: object) -> config.Settings:
    return config.validate({f"sdxl-endpoint:{k}": v for k, v in {**BASE, **keys}.items()}, stack="test")


def every_accepted_selector() -> list[tuple[str | None, str]]:
    """(gpu, nodeSelector item) for every GPU label value the catalog knows, with and without `gpu`, that preview
    accepts."""
    accepted = []
    values = [(label, value) for label, named in catalog.K8S_LABEL_VALUES.items() for value in named]
    values += [(catalog.K8S_LABEL_INSTANCE_TYPE, value) for value in catalog.K8S_INSTANCE_TYPES]
    for gpu in (None, *catalog.GPUS):
        for label, value in values:
            keys = {"nodeSelector": json.dumps([f"{label}={value}"]), **({"gpu": gpu} if gpu else {})}
            try:
                validated(**keys)
            except config.ConfigError:
                continue
            accepted.append((gpu, f"{label}={value}"))
    return accepted


def test_every_accepted_selector_renders_an_affinity_the_api_server_accepts():
    """The API server refuses an In or NotIn without values ("values must be specified when operator is In") and a
    required affinity without terms."""
    accepted = every_accepted_selector()
    assert (None, "gpu.nvidia.com/class=A40") in accepted and (None, "gpu.nvidia.com/class=RTX_A6000") in accepted
    for gpu, item in accepted:
        keys = {"nodeSelector": json.dumps([item]), **({"gpu": gpu} if gpu else {})}
        terms = k8s_target.placement(validated(**keys))["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms, (gpu, item)
        for term in terms:
            for requirement in term["matchExpressions"]:
                if requirement["operator"] in ("In", "NotIn", "Gt", "Lt"):
                    assert requirement["values"], (gpu, item, requirement)


def apply_fix(keys: dict[str, object], command: str) -> dict[str, object]:
    """A `pulumi config rm KEY` or `pulumi config set --path 'nodeSelector[0]' VALUE` applied to stack keys."""
    words = command.replace("'", "").split()
    if words[:3] == ["pulumi", "config", "rm"]:
        return {k: v for k, v in keys.items() if k != words[3]}
    assert words[:5] == ["pulumi", "config", "set", "--path", "nodeSelector[0]"], command
    return {**keys, "nodeSelector": json.dumps([words[5]])}


@pytest.mark.parametrize(("gpu", "selector"), [
    ("t4", "gpu.nvidia.com/class=A40"),  # no CoreWeave class names a T4
    ("l4", "cloud.google.com/gke-accelerator=nvidia-tesla-t4"),  # GKE has an L4 value to offer instead
    ("h100", "nvidia.com/gpu.product=NVIDIA-L4"),
])
def test_the_fix_for_a_selector_that_names_another_gpu_passes_validation(gpu, selector):
    keys = {"gpu": gpu, "nodeSelector": json.dumps([selector])}
    with pytest.raises(config.ConfigError) as raised:
        validated(**keys)
    fix = str(raised.value).split("fix: ", 1)[1].splitlines()[0]
    options = [part.split(" (")[0] for part in fix.split(", or ")]
    assert options
    for option in options:
        validated(**apply_fix(keys, option))  # raises if the suggestion is itself refused


@pytest.mark.parametrize(("gpu", "shared", "whole"), [
    (None, "Tesla-T4-SHARED", "Tesla-T4"), (None, "NVIDIA-A10G-SHARED", "NVIDIA-A10G"),
    ("a10g", "NVIDIA-A10G-SHARED", "NVIDIA-A10G"),
])
def test_a_shared_gpus_product_selector_is_refused_naming_the_unshared_one(gpu, shared, whole):
    """GFD appends -SHARED under time-slicing or MPS; the placement refuses shared GPUs, so the pod would never be
    scheduled. The fix names the same GPU unshared, and passes validation."""
    keys = {"nodeSelector": json.dumps([f"nvidia.com/gpu.product={shared}"]), **({"gpu": gpu} if gpu else {})}
    with pytest.raises(config.ConfigError) as raised:
        validated(**keys)
    fix = str(raised.value).split("fix: ", 1)[1].splitlines()[0]
    assert fix.startswith(f"pulumi config set --path 'nodeSelector[0]' nvidia.com/gpu.product={whole} (")
    settings = validated(**apply_fix(keys, fix.split(" (")[0]))
    assert settings.kube.node_selector == {"nvidia.com/gpu.product": whole}


def test_every_kubernetes_mistake_is_named_in_one_message():
    with pytest.raises(config.ConfigError) as raised:
        config.validate({f"sdxl-endpoint:{k}": v for k, v in {
            "cloud": "kubernetes", "gpu": "t4", "nodeSelector": '["cloud.google.com/gke-accelerator=nvidia-l4", "bad"]',
            "exposure": "nodeport", "certIssuer": "le", "minReplicas": 0, "idleStopMinutes": 10, "spot": "true",
            "kedaPrometheusUrl": "prometheus:9090"}.items()}, stack="dev")
    message = str(raised.value)
    for key in ("image:", "nodeSelector 'cloud.google.com/gke-accelerator=nvidia-l4'", "nodeSelector = 'bad'",
                "exposure = 'nodeport'", "minReplicas = 0", "idleStopMinutes = 10", "spot = True",
                "kedaPrometheusUrl = 'prometheus:9090'"):
        assert key in message, key
    assert message.count("fix:") == message.count("\n  - ")


def test_kubernetes_keys_under_another_cloud_are_refused():
    with pytest.raises(config.ConfigError, match="nodeSelector.*applies to cloud kubernetes, but cloud is aws"):
        config.validate({"sdxl-endpoint:nodeSelector": '["cloud.google.com/gke-accelerator=nvidia-l4"]'}, stack="d")


# --- exposure and the endpoint -----------------------------------------------------------------------------------


def test_a_load_balancer_endpoint_is_the_address_the_cloud_assigns_limited_to_allowed_cidrs():
    run = run_program({**BASE, "allowedCidrs": ["203.0.113.0/24"]})
    service = one_kind(run, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    # The Service exposes the API only; the token-free metrics port stays on the pod.
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert run.value(run.outputs["endpoint"]) == f"http://{FAKE_K8S_LB_IP}"
    assert run.value(run.outputs["publicIp"]) == FAKE_K8S_LB_IP
    assert of_kind(run, "Ingress") == []


def test_a_load_balancer_asks_eks_for_an_internet_facing_nlb_and_nothing_else_does():
    """The AWS Load Balancer Controller and EKS Auto Mode make an internal NLB unless told otherwise."""
    notes = one_kind(run_program(BASE), "Service")["metadata"]["annotations"]
    assert notes["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internet-facing"
    for other in ({"exposure": "internal"}, {"domain": "sdxl.example.com", "ingressClass": "gce"}):
        service = one_kind(run_program({**BASE, **other}), "Service")
        assert "service.beta.kubernetes.io/aws-load-balancer-scheme" not in service["metadata"].get("annotations", {})


def test_an_ingress_with_cert_manager_gives_an_https_endpoint_and_fits_long_generations_and_uploads():
    run = run_program({**BASE, "domain": "sdxl.example.com", "certIssuer": "letsencrypt-prod", "ingressClass": "nginx"})
    ingress = one_kind(run, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert ingress["spec"]["tls"] == [{"hosts": ["sdxl.example.com"], "secretName": "sdxl-endpoint-tls"}]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    env = {e["name"]: e["value"] for e in server(run)["env"]}
    # The proxy waits longer than the server's own timeout, so the server's 504 (with CORS) is what arrives.
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > float(env["SDXL_REQUEST_TIMEOUT"])
    assert float(notes["nginx.ingress.kubernetes.io/proxy-body-size"].rstrip("m")) > ServerSettings().max_body_mb
    assert one_kind(run, "Service")["spec"]["type"] == "ClusterIP"
    assert run.value(run.outputs["endpoint"]) == "https://sdxl.example.com"


@pytest.mark.parametrize(("ingress_class", "address"), [
    ("nginx", FAKE_K8S_INGRESS_IP), ("gce", FAKE_K8S_INGRESS_IP),
    ("alb", FAKE_K8S_INGRESS_HOSTNAME),  # the AWS Load Balancer Controller's ALB has a DNS name, no IP
])
def test_public_ip_is_the_address_the_ingress_controller_wrote_into_the_ingress_status(ingress_class, address):
    """The user's DNS record points at it; until `domain` resolves there, cert-manager's HTTP-01 never passes."""
    run = run_program({**BASE, "domain": "sdxl.example.com", "certIssuer": "letsencrypt-prod",
                       "ingressClass": ingress_class})
    assert run.value(run.outputs["publicIp"]) == address
    assert run.value(run.outputs["endpoint"]) == "https://sdxl.example.com"  # the domain, not the address
    # Inside the cluster only, there is no address to point a record at.
    internal = run_program({**BASE, "exposure": "internal"})
    assert internal.value(internal.outputs["publicIp"]) == ""


@pytest.mark.parametrize("gke_class", ["gce", "gce-internal"])
def test_gke_ingress_is_selected_by_annotation_not_ingress_class_name(gke_class):
    """GKE's controller "takes no action" on an Ingress with ingressClassName and no annotation (GKE docs)."""
    run = run_program({**BASE, "domain": "sdxl.example.com", "ingressClass": gke_class,
                       "certIssuer": "letsencrypt-prod"})
    ingress = one_kind(run, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["kubernetes.io/ingress.class"] == gke_class
    assert "ingressClassName" not in ingress["spec"]
    # cert-manager solves HTTP-01 on this Ingress rather than a second one (a second Google load balancer).
    assert notes["acme.cert-manager.io/http01-edit-in-place"] == "true"
    assert one_kind(run, "BackendConfig")["spec"]["timeoutSec"] > 300


def test_other_ingress_classes_are_named_by_ingress_class_name_without_gkes_annotations():
    ingress = one_kind(run_program({**BASE, "domain": "sdxl.example.com", "ingressClass": "nginx",
                                    "certIssuer": "letsencrypt-prod"}), "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert not {"kubernetes.io/ingress.class", "acme.cert-manager.io/http01-edit-in-place"} & set(
        ingress["metadata"]["annotations"])


def test_gke_ingress_gets_a_backend_config_for_its_30_second_default_timeout():
    run = run_program({**BASE, "domain": "sdxl.example.com", "ingressClass": "gce"})
    backend = one_kind(run, "BackendConfig")
    assert backend["apiVersion"] == "cloud.google.com/v1"
    assert backend["spec"]["timeoutSec"] > 300 and backend["spec"]["healthCheck"]["requestPath"] == "/ready"
    annotation = one_kind(run, "Service")["metadata"]["annotations"]["cloud.google.com/backend-config"]
    assert json.loads(annotation) == {"default": backend["metadata"]["name"]}


def test_an_internal_endpoint_is_the_services_cluster_dns_name():
    run = run_program({**BASE, "exposure": "internal", "namespace": "ml"})
    assert run.value(run.outputs["endpoint"]) == "http://sdxl-endpoint.ml.svc.cluster.local"
    assert tuple(run.outputs) == contract.OUTPUT_NAMES


# --- scaling and disruption --------------------------------------------------------------------------------------


def test_without_keda_an_hpa_on_cpu_spans_min_to_max_replicas():
    run = run_program({**BASE, "minReplicas": 2, "maxReplicas": 5, "storageClass": "standard-rwx"})
    hpa = one_kind(run, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sdxl-endpoint"}
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert of_kind(run, "ScaledObject") == []
    deployment = one_kind(run, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert run.monitor.options[(DEPLOYMENT, run.one(DEPLOYMENT).name)]["ignore_changes"] == ["spec.replicas"]
    # Several replicas on several nodes share the model cache: the claim asks for ReadWriteMany.
    assert one_kind(run, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_an_hpa_on_cpu_is_called_out_as_a_weak_signal_at_preview(caplog):
    """pulumi's MockEngine hands pulumi.log lines to Python logging at their severity."""
    caplog.set_level(logging.INFO)
    run_program({**BASE, "maxReplicas": 3, "storageClass": "standard-rwx"})
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and r.getMessage().startswith("scaling:")]
    assert len(warned) == 1 and "weak signal for a GPU server" in warned[0] and "kedaPrometheusUrl" in warned[0]
    caplog.clear()
    run_program({**BASE, "maxReplicas": 3, "kedaPrometheusUrl": "http://prometheus.monitoring.svc:9090"})
    scaling = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("scaling:")]
    assert [level for level, _ in scaling] == [logging.INFO] and "KEDA on the server's queue" in scaling[0][1]


def test_with_keda_a_scaled_object_scales_on_the_servers_queue_and_there_is_no_other_hpa():
    url = "http://prometheus-server.monitoring.svc:80"
    run = run_program({**BASE, "maxReplicas": 4, "kedaPrometheusUrl": url})
    scaled = one_kind(run, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["serverAddress"] == url
    query = trigger["metadata"]["query"]
    assert "sdxl_queue_depth" in query and 'namespace="sdxl-test"' in query
    assert of_kind(run, "HorizontalPodAutoscaler") == []  # KEDA creates and owns its own
    # Prometheus finds the pods' token-free metrics port from their annotations.
    notes = one_kind(run, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/port"] == str(k8s_target.METRICS_PORT)


def test_the_queue_metrics_keda_reads_are_the_servers_own():
    from server.metrics import Metrics

    exposed = Metrics().registry._names_to_collectors  # noqa: SLF001 - the registry's own index of names
    query = k8s_target.keda_query("ns", "sdxl-endpoint")
    for name in ("sdxl_queue_depth", "sdxl_in_flight_images"):
        assert name in query and name in exposed


def test_one_replica_has_no_autoscaler_and_recreates_rather_than_waiting_for_a_second_gpu():
    run = run_program(BASE)
    assert of_kind(run, "HorizontalPodAutoscaler") == of_kind(run, "ScaledObject") == []
    assert one_kind(run, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert one_kind(run, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_a_disruption_budget_keeps_one_pod_through_node_drains():
    pdb = one_kind(run_program({**BASE, "maxReplicas": 3}), "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"] == k8s_target.selector_labels(config.validate(
        {"sdxl-endpoint:cloud": "kubernetes", "sdxl-endpoint:image": IMAGE}, stack="test"))
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # a stuck pod never blocks a drain


def test_the_model_cache_claim_is_dataDiskGb_of_the_configured_class():  # noqa: N802
    claim = one_kind(run_program({**BASE, "dataDiskGb": 60, "storageClass": "premium-rwo"}), "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "60Gi"
    assert claim["spec"]["storageClassName"] == "premium-rwo"
    assert "storageClassName" not in one_kind(run_program(BASE), "PersistentVolumeClaim")["spec"]  # the default
