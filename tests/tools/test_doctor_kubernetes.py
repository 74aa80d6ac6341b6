"""The preflight doctor's Kubernetes mode: the official `kubernetes` client, through a kubeconfig written here, against
the loopback fake of the API server (tests/fakes/kubernetes_api.py). Nothing leaves the machine: the loopback guard
of test_doctor.py applies, and the fake refuses anything but GET."""

from __future__ import annotations

import json
import socket

import pytest

from stacks import config
from tests.fakes import kubernetes_api as k8s
from tests.tools.test_doctor import (
    loopback_only,  # noqa: F401 - the autouse guard
    run,  # run() also validates the --json document's schema
    write_stack,
)
from tests.tools.test_doctor_hosted import checks
from tools.doctor import FAIL, OK, WARN
from tools.doctor import __main__ as cli
from tools.doctor import kubernetes as kube_doctor
from tools.doctor import report as doctor_report


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    fake = k8s.FakeCluster()
    with k8s.serving(fake):
        monkeypatch.setenv("KUBECONFIG", str(k8s.write_kubeconfig(tmp_path / "kubeconfig", fake.base,
                                                                    ("fake-gke", "fake-eks"))))
        yield fake
    assert {method for method, _ in fake.calls} <= {"GET"}, "the doctor only reads"


def stack(tmp_path, monkeypatch, **keys: str) -> str:
    """A kubernetes stack file with these keys (nodeSelector given as a map, written as its label=value list), as
    `pulumi config set` writes one."""
    listed = {key: [f"{label}={v}" for label, v in value.items()] if isinstance(value, dict) else value
              for key, value in keys.items()}
    return write_stack(tmp_path, monkeypatch, {"cloud": "kubernetes", "image": "ghcr.io/o/sdxl:1", **listed})


# --- no cluster ---------------------------------------------------------------------------------------------


def test_no_kubeconfig_is_one_blocking_fail_with_the_credentials_command(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    report = run(["--cloud", "kubernetes", "--gpu", "l4"])
    assert [c.name for c in report.checks] == ["config", "cluster"]
    status, value, fix = checks(report)["cluster"]
    assert status == FAIL and "no usable kubeconfig" in value
    assert "gcloud container clusters get-credentials" in fix and "aws eks update-kubeconfig" in fix
    assert not report.ok


def test_a_context_the_kubeconfig_lacks_fails_naming_the_ones_it_has(cluster, tmp_path, monkeypatch):
    report = run(["--stack", stack(tmp_path, monkeypatch, kubeContext="prod-cluster")])
    status, value, fix = checks(report)["cluster"]
    assert status == FAIL and "no context 'prod-cluster'" in value and "fake-gke, fake-eks" in value
    assert fix.startswith("`kubectl config get-contexts`") and "pulumi config set kubeContext" in fix
    assert cluster.calls == []  # nothing was asked of any server


def test_an_unreachable_api_server_fails_fast_with_the_reach_fix(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("KUBECONFIG", str(k8s.write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}")))
    report = run(["--cloud", "kubernetes", "--context", "fake-gke"])
    assert [c.name for c in report.checks] == ["config", "cluster"]
    status, value, fix = checks(report)["cluster"]
    assert status == FAIL and value.startswith(f"cannot reach context fake-gke (http://127.0.0.1:{port})")
    assert fix == kube_doctor.REACH_FIX


def test_a_cluster_that_drops_after_listing_nodes_is_one_fail_and_the_rest_skipped(cluster, tmp_path, monkeypatch):
    """Each later call would wait out its own timeout the same way: the shared Runner stops after the first."""
    cluster.nodes = [k8s.gke_l4()]
    cluster.drop_after = "/api/v1/nodes"
    name = stack(tmp_path, monkeypatch, exposure="ingress", domain="sdxl.example.com", certIssuer="letsencrypt",
                 maxReplicas="3", storageClass="standard-rwo")
    report = run(["--stack", name])
    failed = [c for c in report.checks if c.status == FAIL]
    assert [c.name for c in failed] == ["keda"] and failed[0].value.startswith("cannot reach context")
    assert failed[0].fix == kube_doctor.REACH_FIX
    assert not {"metrics-server", "cert-manager", "ingress-class", "storage-class", "namespace"} & set(checks(report))
    after = cluster.calls[cluster.calls.index(("GET", "/api/v1/nodes")) + 1:]
    assert len(after) <= 2  # the one failed call (and its single retry), nothing after it


def test_a_rejected_token_is_a_credentials_fail(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(k8s.write_kubeconfig(tmp_path / "kc", cluster.base, token="expired")))
    status, value, fix = checks(run(["--cloud", "kubernetes"]))["cluster"]
    assert status == FAIL and "rejected the credentials (HTTP 401)" in value and "get-credentials" in fix


# --- GPU nodes and placement ---------------------------------------------------------------------------------


def test_a_cpu_only_cluster_fails_no_node_exposes_the_gpu_resource(cluster):
    cluster.nodes = [k8s.cpu_node("gke-default-1"), k8s.cpu_node("gke-default-2")]
    report = run(["--cloud", "kubernetes"])
    status, value, fix = checks(report)["gpu-nodes"]
    assert status == FAIL and value.startswith("no node exposes nvidia.com/gpu (2 nodes")
    assert "NVIDIA GPU Operator" in fix and "CoreWeave CKS" in fix and "do not install the Operator" in fix
    assert "placement" not in checks(report) and not report.ok


@pytest.mark.parametrize("setup, provisioner", [
    (lambda c: c.nodes.append(k8s.node("auto-1", {"eks.amazonaws.com/compute-type": "auto"},
                                       instance_type="c6a.large")), "EKS Auto Mode"),
    (lambda c: c.crds.add("nodepools.karpenter.sh"), "Karpenter"),
    (lambda c: c.config_maps.add(("kube-system", "cluster-autoscaler-status")), "a cluster autoscaler"),
])
def test_no_gpu_node_but_a_node_provisioner_is_a_warning(cluster, setup, provisioner):
    cluster.nodes = [k8s.cpu_node("cpu-1")]
    setup(cluster)
    status, value, _ = checks(run(["--cloud", "kubernetes", "--gpu", "l4"]))["gpu-nodes"]
    assert status == WARN and provisioner in value


@pytest.mark.parametrize("gpu", ["l4", "a10g"])
def test_a_t4_only_cluster_fails_a_stack_that_asks_for_24_gb(cluster, gpu):
    cluster.nodes = [k8s.cpu_node("cpu-1"), k8s.gke_t4()]
    report = run(["--cloud", "kubernetes", "--gpu", gpu])
    found = checks(report)
    assert found["gpu-nodes"][0] == OK and "gke-sdxl-t4-pool-3c4d: 1 x T4 16.0 GiB" in found["gpu-nodes"][1]
    status, value, fix = found["placement"]
    assert status == FAIL and "no GPU node runs SDXL and matches" in value
    assert f"[not the gpu {gpu}]" in value and "T4 16.0 GiB" in value
    assert "add a node pool with" in fix and "pulumi config set gpu t4" in fix
    assert not report.ok


def test_gpu_nodes_shows_the_gpu_labels_each_node_carries(cluster):
    """What placement and a nodeSelector can match on: the platform's GPU labels and GFD's, not the node's others."""
    cluster.nodes = [k8s.gke_l4(gfd=False), k8s.gfd_a10g_time_sliced(), k8s.node("bare-gpu-1", {}, gpus=1),
                     k8s.cpu_node("cpu-1")]
    status, value, fix = checks(run(["--cloud", "kubernetes"]))["gpu-nodes"]
    assert status == WARN and "install NVIDIA GPU Feature Discovery" in fix  # the bare node names no GPU
    assert value == (
        "3 of 4 nodes expose nvidia.com/gpu: "
        "gke-sdxl-l4-pool-1a2b: 1 x L4 24.0 GiB [cloud.google.com/gke-accelerator=nvidia-l4]; "
        "ip-10-0-2-34.ec2.internal: 4 x NVIDIA-A10G-SHARED 22.5 GiB [nvidia.com/gpu.product=NVIDIA-A10G-SHARED, "
        "nvidia.com/gpu.memory=23028, nvidia.com/gpu.compute.major=8, nvidia.com/gpu.compute.minor=6, "
        "nvidia.com/gpu.sharing-strategy=time-slicing]; "
        "bare-gpu-1: 1 x a GPU no label names [no GPU label]")


def test_gpus_that_cannot_run_sdxl_are_named_with_the_reason(cluster):
    cluster.nodes = [k8s.gke_p4()]
    status, value, fix = checks(run(["--cloud", "kubernetes"]))["placement"]
    assert status == FAIL and "P4 8.0 GiB [cannot run SDXL:" in value and "16 GB or more" in fix


def test_a_coreweave_node_named_only_by_its_class_is_where_the_pod_goes(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.coreweave_a40_class_only()]
    report = run(["--stack", stack(tmp_path, monkeypatch, nodeSelector={"gpu.nvidia.com/class": "A40"})])
    status, value, _ = checks(report)["placement"]
    assert status == OK and "a40-node-1" in value
    assert checks(run(["--cloud", "kubernetes"]))["placement"][0] == OK  # gpu unset: any fitting GPU, A40 too


def test_a_time_sliced_gpu_is_not_reported_as_a_fit(cluster):
    """GFD marks a shared card; the pod's affinity keeps out of it, so the doctor must not call it a match."""
    cluster.nodes = [k8s.gfd_a10g_time_sliced()]
    report = run(["--cloud", "kubernetes", "--gpu", "a10g"])
    status, value, fix = checks(report)["placement"]
    assert status == FAIL and "its GPU is shared (nvidia.com/gpu.sharing-strategy=time-slicing)" in value
    assert "pulumi config set gpu" not in fix  # the cluster's A10G is no way out
    assert not report.ok
    assert checks(run(["--cloud", "kubernetes"]))["placement"][0] == FAIL  # nor with gpu unset


def test_gke_l4_nodes_fit_the_gke_selector(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.cpu_node("cpu-1"), k8s.gke_l4(gfd=False), k8s.gke_t4()]
    report = run(["--stack", stack(tmp_path, monkeypatch,
                                   nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-l4"})])
    found = checks(report)
    assert found["placement"] == (OK, "1 GPU node(s) match cloud.google.com/gke-accelerator=nvidia-l4 (L4 24 GB): "
                                      "gke-sdxl-l4-pool-1a2b", None)
    assert report.ok


def test_eks_auto_mode_a10g_nodes_fit_gpu_a10g(cluster):
    cluster.nodes = [k8s.eks_auto_a10g(), k8s.karpenter_l4()]
    found = checks(run(["--cloud", "kubernetes", "--gpu", "a10g", "--context", "fake-eks"]))
    assert found["cluster"][1].startswith("context fake-eks:")
    assert "i-0a10g1234567890ab: 1 x A10G 22.4 GiB" in found["gpu-nodes"][1]  # EC2's 22888 MiB
    assert found["placement"][0] == OK and found["placement"][1].endswith(": i-0a10g1234567890ab")


def test_coreweave_h100_nodes_fit_by_instance_type_or_gfd_product(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.coreweave_h100(), k8s.cpu_node("cpu-1")]
    for selector in ({"node.kubernetes.io/instance-type": "gd-8xh100ib-i128"},
                     {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}):
        found = checks(run(["--stack", stack(tmp_path, monkeypatch, nodeSelector=selector)]))
        assert found["gpu-nodes"] == (OK, "1 of 2 nodes expose nvidia.com/gpu: g8a1b2c: 8 x H100 79.6 GiB "
                                          "[nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3, nvidia.com/gpu.memory=81559, "
                                          "node.kubernetes.io/instance-type=gd-8xh100ib-i128]", None)
        assert found["placement"][0] == OK and found["placement"][1].endswith(": g8a1b2c")


def test_a_selector_no_node_carries_fails_naming_what_the_nodes_have(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    found = checks(run(["--stack", stack(tmp_path, monkeypatch, nodeSelector={"cloud.google.com/gke-nodepool":
                                                                               "gpu-pool"})]))
    status, value, fix = found["placement"]
    assert status == FAIL and "[nodeSelector: has cloud.google.com/gke-nodepool=l4-pool]" in value
    assert "pulumi config rm nodeSelector" in fix


def test_cordoned_gpu_nodes_do_not_count(cluster):
    cluster.nodes = [k8s.gke_l4(), k8s.karpenter_l4()]
    cluster.nodes[0]["spec"]["unschedulable"] = True
    cluster.nodes[1]["spec"]["unschedulable"] = True
    status, value, _ = checks(run(["--cloud", "kubernetes", "--gpu", "l4"]))["placement"]
    assert status == FAIL and value.count("(cordoned)") == 2


# --- optional components ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("installed, url, status, words", [
    (True, "http://prometheus.monitoring.svc:9090", OK, "scales on the queue"),
    (True, None, WARN, "kedaPrometheusUrl is unset: scales on CPU"),
    (False, None, WARN, "no KEDA (no CRD scaledobjects.keda.sh): scales on CPU"),
    (False, "http://prometheus.monitoring.svc:9090", FAIL, "the cluster has no KEDA"),
])
def test_keda(cluster, tmp_path, monkeypatch, installed, url, status, words):
    cluster.nodes = [k8s.gke_l4()]
    if installed:
        cluster.crds.add("scaledobjects.keda.sh")
    keys = {"kedaPrometheusUrl": url} if url else {}
    found = checks(run(["--stack", stack(tmp_path, monkeypatch, **keys)]))
    assert found["keda"][0] == status and words in found["keda"][1]


def test_an_hpa_on_cpu_without_metrics_server_is_a_warning(cluster, tmp_path, monkeypatch):
    """EKS installs no metrics-server: the HorizontalPodAutoscaler then sees no CPU and never scales."""
    cluster.nodes = [k8s.eks_auto_a10g()]
    cluster.git_version = "v1.33.5-eks-3025e55"
    name = stack(tmp_path, monkeypatch, maxReplicas="3", storageClass="standard-rwo")
    status, value, fix = checks(run(["--stack", name]))["metrics-server"]
    assert status == WARN and "no APIService v1beta1.metrics.k8s.io" in value and "metrics-server add-on" in fix
    cluster.api_services["v1beta1.metrics.k8s.io"] = False
    status, value, _ = checks(run(["--stack", name]))["metrics-server"]
    assert status == WARN and "is not Available: failing or missing response" in value
    cluster.api_services["v1beta1.metrics.k8s.io"] = True
    assert checks(run(["--stack", name]))["metrics-server"][0] == OK
    # One replica (no autoscaler), or KEDA on the queue: the resource metrics are not asked for.
    assert "metrics-server" not in checks(run(["--stack", stack(tmp_path, monkeypatch)]))
    keda = stack(tmp_path, monkeypatch, maxReplicas="3", kedaPrometheusUrl="http://prometheus.monitoring.svc:9090")
    assert "metrics-server" not in checks(run(["--stack", keda]))


def ingress_stack(tmp_path, monkeypatch, **keys: str) -> str:
    return stack(tmp_path, monkeypatch, exposure="ingress", domain="sdxl.example.com", **keys)


def test_a_cert_issuer_the_cluster_lacks_fails(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    cluster.ingress_classes = [k8s.ingress_class("nginx", default=True)]
    name = ingress_stack(tmp_path, monkeypatch, certIssuer="letsencrypt-prod")
    status, value, fix = checks(run(["--stack", name]))["cert-manager"]
    assert status == FAIL and "no cert-manager (no CRD clusterissuers.cert-manager.io)" in value
    cluster.crds.add("clusterissuers.cert-manager.io")
    cluster.cluster_issuers["letsencrypt-staging"] = k8s.cluster_issuer("letsencrypt-staging")
    status, value, fix = checks(run(["--stack", name]))["cert-manager"]
    assert (status, value) == (FAIL, "no ClusterIssuer 'letsencrypt-prod'")
    assert fix.startswith("kubectl get clusterissuers lists them: pulumi config set certIssuer <name>")
    cluster.cluster_issuers["letsencrypt-prod"] = k8s.cluster_issuer("letsencrypt-prod")
    assert checks(run(["--stack", name]))["cert-manager"] == (OK, "ClusterIssuer letsencrypt-prod is Ready", None)
    cluster.cluster_issuers["letsencrypt-prod"] = k8s.cluster_issuer("letsencrypt-prod", ready=False)
    status, value, _ = checks(run(["--stack", name]))["cert-manager"]
    assert status == WARN and "Failed to register ACME account" in value


def test_ingress_class_named_default_or_missing(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    cluster.git_version = "v1.33.5-eks-3025e55"
    cluster.ingress_classes = [k8s.ingress_class("nginx"), k8s.ingress_class("traefik")]
    found = checks(run(["--stack", ingress_stack(tmp_path, monkeypatch)]))
    assert found["ingress-class"][0] == FAIL and "no IngressClass is the default (the cluster has nginx, traefik)" in \
        found["ingress-class"][1]
    assert found["ingress-class"][2] == "pulumi config set ingressClass nginx"
    found = checks(run(["--stack", ingress_stack(tmp_path, monkeypatch, ingressClass="haproxy")]))
    assert found["ingress-class"][0] == FAIL and "no IngressClass 'haproxy'" in found["ingress-class"][1]
    cluster.ingress_classes[1] = k8s.ingress_class("traefik", default=True)
    found = checks(run(["--stack", ingress_stack(tmp_path, monkeypatch)]))
    assert found["ingress-class"] == (OK, "ingressClass unset: the cluster's default traefik serves the Ingress",
                                      None)


@pytest.mark.parametrize("gke_class", ["gce", "gce-internal"])
def test_gkes_own_ingress_is_judged_by_the_cluster_being_gke_not_by_an_ingress_class_object(
        cluster, tmp_path, monkeypatch, gke_class):
    cluster.nodes = [k8s.gke_l4()]
    name = ingress_stack(tmp_path, monkeypatch, ingressClass=gke_class)
    status, value, _ = checks(run(["--stack", name]))["ingress-class"]
    assert status == OK and "GKE's built-in" in value and "kubernetes.io/ingress.class annotation" in value
    # Elsewhere an IngressClass that happens to be called gce does not make GKE's controller appear.
    cluster.git_version = "v1.33.5-eks-3025e55"
    cluster.ingress_classes = [k8s.ingress_class(gke_class, default=True)]
    status, value, fix = checks(run(["--stack", name]))["ingress-class"]
    assert status == FAIL and "this cluster is not GKE" in value and "kubectl get ingressclass" in fix


def test_an_unset_ingress_class_on_gke_without_a_default_points_at_gce(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    status, value, fix = checks(run(["--stack", ingress_stack(tmp_path, monkeypatch)]))["ingress-class"]
    assert status == WARN and "30 s backend timeout" in value and fix.startswith("pulumi config set ingressClass gce")
    cluster.ingress_classes = [k8s.ingress_class("nginx", default=True)]  # a default class serves it instead
    assert checks(run(["--stack", ingress_stack(tmp_path, monkeypatch)]))["ingress-class"][0] == OK


def test_load_balancer_exposure_skips_ingress_checks(cluster):
    cluster.nodes = [k8s.gke_l4()]
    found = checks(run(["--cloud", "kubernetes"]))
    assert "ingress-class" not in found and "cert-manager" not in found


def test_storage_class_default_named_or_missing(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    cluster.storage_classes = [k8s.storage_class("premium-rwo"), k8s.storage_class("standard")]
    status, value, fix = checks(run(["--cloud", "kubernetes"]))["storage-class"]
    assert (status, value, fix) == (FAIL, "storageClass unset and no StorageClass is the default (the cluster has "
                                          "premium-rwo, standard)", "pulumi config set storageClass premium-rwo")
    found = checks(run(["--stack", stack(tmp_path, monkeypatch, storageClass="premium-rwo")]))
    assert found["storage-class"] == (OK, "StorageClass premium-rwo exists", None)
    found = checks(run(["--stack", stack(tmp_path, monkeypatch, storageClass="gp3")]))
    assert found["storage-class"][0] == FAIL and "no StorageClass 'gp3'" in found["storage-class"][1]


def test_a_block_storage_class_fails_several_replicas_that_share_the_model_cache(cluster, tmp_path, monkeypatch):
    """Above one replica the claim asks ReadWriteMany; GKE's default standard-rwo (persistent disk) cannot give it,
    so the claim would stay Pending and every pod with it."""
    cluster.nodes = [k8s.gke_l4()]
    status, value, fix = checks(run(["--stack", stack(tmp_path, monkeypatch, maxReplicas="3")]))["storage-class"]
    assert status == FAIL
    assert value.startswith("storageClass unset: the cluster's default standard-rwo holds the model cache, but its "
                            "provisioner pd.csi.storage.gke.io")
    assert "maxReplicas 3 asks the model cache for ReadWriteMany" in value
    assert fix.startswith("pulumi config set storageClass <a ReadWriteMany class>: GKE standard-rwx (Filestore")
    assert "EFS" in fix and fix.endswith("or pulumi config set maxReplicas 1")
    # EKS's gp3 (the EBS CSI driver), named by the stack, is refused the same way.
    cluster.storage_classes.append(k8s.storage_class("gp3", provisioner="ebs.csi.aws.com"))
    status, value, _ = checks(run(["--stack", stack(tmp_path, monkeypatch, maxReplicas="2",
                                                    storageClass="gp3")]))["storage-class"]
    assert status == FAIL and "ebs.csi.aws.com (Amazon EBS)" in value


def test_a_filestore_class_or_one_replica_passes_the_storage_check(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    cluster.storage_classes.append(k8s.filestore_class())
    found = checks(run(["--stack", stack(tmp_path, monkeypatch, maxReplicas="3", storageClass="standard-rwx")]))
    assert found["storage-class"] == (OK, "StorageClass standard-rwx exists", None)
    # One replica: the claim asks ReadWriteOnce, which the default persistent disk gives.
    found = checks(run(["--stack", stack(tmp_path, monkeypatch, maxReplicas="1")]))
    assert found["storage-class"] == (OK, "storageClass unset: the cluster's default standard-rwo holds the model "
                                          "cache", None)


# --- namespace, quotas and limit ranges ------------------------------------------------------------------------


def test_a_named_namespace_that_does_not_exist_fails_and_the_stacks_own_is_created(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    found = checks(run(["--stack", stack(tmp_path, monkeypatch, namespace="ml-serving")]))
    assert found["namespace"][0] == FAIL and found["namespace"][2].startswith("kubectl create namespace ml-serving")
    found = checks(run(["--stack", stack(tmp_path, monkeypatch)]))
    assert found["namespace"] == (OK, "sdxl-mine does not exist yet: the stack creates it", None)


def test_a_quota_without_room_for_max_replicas_gpus_fails_naming_the_shortfall(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    cluster.namespaces["ml-serving"] = "Active"
    cluster.quotas["ml-serving"] = [
        k8s.resource_quota("gpu-quota", {"requests.nvidia.com/gpu": "2", "requests.memory": "64Gi", "pods": "10"},
                           {"requests.nvidia.com/gpu": "1", "requests.memory": "10Gi", "pods": "1"}),
        k8s.resource_quota("storage", {"requests.storage": "500Gi", "persistentvolumeclaims": "5"}),
    ]
    name = stack(tmp_path, monkeypatch, namespace="ml-serving", maxReplicas="3")
    status, value, fix = checks(run(["--stack", name]))["quota"]
    assert status == FAIL
    assert value == "gpu-quota: requests.nvidia.com/gpu has 1 free of 2, the stack needs 3"
    assert "kubectl describe resourcequota -n ml-serving" in fix
    name = stack(tmp_path, monkeypatch, namespace="ml-serving", maxReplicas="3", dataDiskGb="600")
    value = checks(run(["--stack", name]))["quota"][1]
    assert "storage: requests.storage has 500Gi free of 500Gi, the stack needs 600Gi" in value
    name = stack(tmp_path, monkeypatch, namespace="ml-serving", maxReplicas="1")
    assert checks(run(["--stack", name]))["quota"][0] == OK


def test_a_cpu_limit_quota_refuses_a_pod_without_a_cpu_limit(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    cluster.namespaces["ml-serving"] = "Active"
    cluster.quotas["ml-serving"] = [k8s.resource_quota("compute", {"limits.cpu": "64"})]
    status, value, _ = checks(run(["--stack", stack(tmp_path, monkeypatch, namespace="ml-serving")]))["quota"]
    assert status == FAIL and "limits.cpu is capped, and the server sets no CPU limit" in value


def test_limit_ranges_below_the_pods_needs_fail(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.gke_l4()]
    cluster.namespaces["ml-serving"] = "Active"
    cluster.limit_ranges["ml-serving"] = [
        k8s.limit_range("small", {"type": "Container", "max": {"memory": "8Gi", "cpu": "4"}},
                        {"type": "PersistentVolumeClaim", "max": {"storage": "50Gi"}})]
    status, value, _ = checks(run(["--stack", stack(tmp_path, monkeypatch, namespace="ml-serving")]))["limit-range"]
    assert status == FAIL
    assert value == ("small: Container max memory 8Gi, the stack needs 14Gi; small: PersistentVolumeClaim max storage "
                     "50Gi, the stack needs 100Gi")
    cluster.limit_ranges["ml-serving"] = [k8s.limit_range("roomy", {"type": "Container", "max": {"memory": "64Gi"}})]
    found = checks(run(["--stack", stack(tmp_path, monkeypatch, namespace="ml-serving")]))
    assert found["limit-range"] == (OK, "1 LimitRange(s) in ml-serving admit the server pod", None)


def test_a_fully_ready_cluster_passes_every_check(cluster, tmp_path, monkeypatch):
    cluster.nodes = [k8s.cpu_node("cpu-1"), k8s.gke_l4()]
    cluster.crds |= {"scaledobjects.keda.sh", "clusterissuers.cert-manager.io"}
    cluster.cluster_issuers["letsencrypt"] = k8s.cluster_issuer("letsencrypt")
    cluster.ingress_classes = [k8s.ingress_class("nginx", default=True)]
    cluster.namespaces["ml-serving"] = "Active"
    cluster.quotas["ml-serving"] = [k8s.resource_quota("gpu", {"requests.nvidia.com/gpu": "4", "pods": "20"})]
    cluster.storage_classes.append(k8s.filestore_class())  # two replicas share the model cache
    name = ingress_stack(tmp_path, monkeypatch, namespace="ml-serving", certIssuer="letsencrypt", gpu="l4",
                         kedaPrometheusUrl="http://prometheus.monitoring.svc:9090", maxReplicas="2",
                         storageClass="standard-rwx")
    report = run(["--stack", name])
    assert [(c.name, c.status) for c in report.checks] == [
        ("config", OK), ("cluster", OK), ("gpu-nodes", OK), ("placement", OK), ("keda", OK), ("cert-manager", OK),
        ("ingress-class", OK), ("storage-class", OK), ("namespace", OK), ("quota", OK)]
    assert doctor_report.as_text(report).startswith(
        "Preflight: stack mine: KUBERNETES any node with an L4 (L4 24 GB) in context fake-gke, namespace ml-serving, "
        "up to 2 pod(s)")


# --- --suggest ----------------------------------------------------------------------------------------------


def test_suggest_prints_a_selector_per_fitting_gpu_smallest_first_that_the_stack_accepts(cluster):
    cluster.nodes = [k8s.coreweave_h100(), k8s.gke_l4(), k8s.gke_l4("gke-sdxl-l4-pool-9z"), k8s.eks_auto_a10g(),
                     k8s.karpenter_l4(), k8s.gke_p4(), k8s.gfd_a10g_time_sliced(), k8s.cpu_node("cpu-1")]
    report = run(["--cloud", "kubernetes", "--gpu", "l4", "--suggest"])
    assert [(s.machine_type, s.zones) for s in report.suggestions] == [
        ("eks.amazonaws.com/instance-gpu-name=a10g", ["i-0a10g1234567890ab"]),  # 22888 MiB
        ("karpenter.k8s.aws/instance-gpu-name=l4", ["ip-10-0-1-23.ec2.internal"]),  # 22888 MiB
        ("cloud.google.com/gke-accelerator=nvidia-l4", ["gke-sdxl-l4-pool-1a2b", "gke-sdxl-l4-pool-9z"]),  # 23034
        ("nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3", ["g8a1b2c"]),
    ]  # no P4 (cannot run SDXL), no time-sliced A10G (the placement keeps shared GPUs out), no CPU node
    commands = [s.command for s in report.suggestions]
    assert commands[2] == "pulumi config set --path 'nodeSelector[0]' cloud.google.com/gke-accelerator=nvidia-l4"
    assert commands[0].startswith("pulumi config rm gpu && ")  # an A10G is not the gpu l4 the stack asks for
    text = doctor_report.as_text(report)
    assert "The cluster's GPUs that run SDXL, smallest first" in text and commands[3] in text
    # Each suggested selector passes the stack's own validation, as `pulumi preview` would run it.
    for s in report.suggestions:
        label, value = s.machine_type.split("=", 1)
        gpu = {} if s.command.startswith("pulumi config rm gpu") else {"sdxl-endpoint:gpu": "l4"}
        settings = config.validate({"sdxl-endpoint:cloud": "kubernetes", "sdxl-endpoint:image": "ghcr.io/o/s:1",
                                    "sdxl-endpoint:nodeSelector": json.dumps([f"{label}={value}"]), **gpu},
                                   stack="s")
        assert settings.kube.node_selector == {label: value}


@pytest.mark.parametrize("gpu", [None, "a10g"])
def test_suggest_never_offers_a_time_sliced_gpu_whose_selector_the_placement_refuses(cluster, gpu):
    """Its memory and compute fit, but the -SHARED product selects a share of a card: preview refuses it, and the
    placement terms keep the pod off it."""
    cluster.nodes = [k8s.gfd_a10g_time_sliced()]
    report = run(["--cloud", "kubernetes", *(["--gpu", gpu] if gpu else []), "--suggest"])
    assert report.suggestions == []
    cluster.nodes.append(k8s.eks_auto_a10g())  # a whole A10G next to it is offered
    report = run(["--cloud", "kubernetes", *(["--gpu", gpu] if gpu else []), "--suggest"])
    assert [(s.machine_type, s.zones) for s in report.suggestions] == [
        ("eks.amazonaws.com/instance-gpu-name=a10g", ["i-0a10g1234567890ab"])]


def test_context_and_namespace_flags_are_kubernetes_only():
    with pytest.raises(SystemExit):
        cli.parse_args(["--cloud", "aws", "--context", "x"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--cloud", "kubernetes", "--region", "us-east-1"])
    assert cli.parse_args(["--context", "x"]).context == "x"  # --context alone implies kubernetes
