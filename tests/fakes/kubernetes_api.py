"""A loopback stand-in for the Kubernetes API server, as the official `kubernetes` client (36.0.3) reads it.

Paths and shapes from the client's own source (kubernetes/client/api/*.py and the models it deserializes into,
whose required fields the client checks: VersionInfo's nine, V1NodeList.items, V1CustomResourceDefinitionSpec's
group/names/scope/versions, V1StorageClass.provisioner, V1LimitRangeItem.type ...):
- `GET /version/` (VersionApi.get_code);
- `GET /api/v1/nodes`, `/api/v1/namespaces/{name}`, `/api/v1/namespaces/{ns}/resourcequotas`, `.../limitranges`,
  `.../configmaps/{name}` (CoreV1Api);
- `GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}` (ApiextensionsV1Api);
- `GET /apis/networking.k8s.io/v1/ingressclasses`, `/apis/storage.k8s.io/v1/storageclasses`;
- `GET /apis/apiregistration.k8s.io/v1/apiservices/{name}` (ApiregistrationV1Api: metrics-server's APIService);
- `GET /apis/cert-manager.io/v1/clusterissuers/{name}` (CustomObjectsApi.get_cluster_custom_object), served only
  while the ClusterIssuer CRD is installed, as a real API server does.
A missing object is the API server's 404 Status. Requests carry the kubeconfig user's bearer token; anything but
GET is refused, so a test sees the doctor only reads.

Node fixtures carry the labels each platform documents (see stacks/catalog.py, Kubernetes section) and the
allocatable `nvidia.com/gpu` the NVIDIA device plugin reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

from tests.fakes import bearer, loopback_server, reply_json

TOKEN = "k8s-operator-token-for-tests"
STAMP = "2026-08-01T12:00:00Z"
# CRD name -> (kind, served version, scope), as each project's CRD declares it.
KNOWN_CRDS = {
    "scaledobjects.keda.sh": ("ScaledObject", "v1alpha1", "Namespaced"),
    "clusterissuers.cert-manager.io": ("ClusterIssuer", "v1", "Cluster"),
    "nodepools.karpenter.sh": ("NodePool", "v1", "Cluster"),
}


def node(name: str, labels: dict[str, str], *, gpus: int = 0, instance_type: str = "e2-standard-4",
         cpu: str = "4", memory: str = "16Gi", taints: list[dict[str, str]] | None = None,
         unschedulable: bool = False) -> dict[str, Any]:
    """A node as `kubectl get node -o json` shows it: the well-known labels, capacity and allocatable (with the
    device plugin's nvidia.com/gpu when it has GPUs), nodeInfo and a Ready condition."""
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    allocatable = {**resources, "cpu": f"{int(cpu) * 1000 - 150}m"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": STAMP, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": instance_type, **labels}},
        "spec": {"providerID": f"fake://{name}", "taints": taints or [], "unschedulable": unschedulable},
        "status": {
            "capacity": resources, "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": STAMP, "lastTransitionTime": STAMP}],
            "nodeInfo": {"architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "containerd://2.0.5",
                         "kernelVersion": "6.6.87", "kubeProxyVersion": "v1.33.2", "kubeletVersion": "v1.33.2",
                         "machineID": "m", "operatingSystem": "linux", "osImage": "Container-Optimized OS",
                         "systemUUID": "s"},
        },
    }


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def gke_l4(name: str = "gke-sdxl-l4-pool-1a2b", gfd: bool = True) -> dict[str, Any]:
    """A GKE Standard g2-standard-8 node: the Compute Engine accelerator type as its label, GKE's GPU taint; with
    the GPU Operator also GFD's product and memory (values seen on GKE g2 nodes)."""
    labels = {"cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-nodepool": "l4-pool"}
    if gfd:
        labels |= {"nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.memory": "23034",
                   "nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "9"}
    return node(name, labels, gpus=1, instance_type="g2-standard-8", cpu="8", memory="32Gi", taints=[GPU_TAINT])


def gke_t4(name: str = "gke-sdxl-t4-pool-3c4d") -> dict[str, Any]:
    return node(name, {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4", "cloud.google.com/gke-nodepool": "t4",
                       "nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": "15360"},
                gpus=1, instance_type="n1-standard-4", taints=[GPU_TAINT])


def gke_p4(name: str = "gke-sdxl-p4-pool-5e6f") -> dict[str, Any]:
    return node(name, {"cloud.google.com/gke-accelerator": "nvidia-tesla-p4"}, gpus=1, instance_type="n1-standard-4")


def eks_auto_a10g(name: str = "i-0a10g1234567890ab") -> dict[str, Any]:
    """An EKS Auto Mode g5.xlarge node: eks.amazonaws.com/* labels as the EKS user guide lists them (EC2's GPU name
    lower-cased, per-GPU memory in MiB as EC2 records it)."""
    return node(name, {"eks.amazonaws.com/compute-type": "auto", "eks.amazonaws.com/instance-gpu-name": "a10g",
                       "eks.amazonaws.com/instance-gpu-manufacturer": "nvidia",
                       "eks.amazonaws.com/instance-gpu-count": "1", "eks.amazonaws.com/instance-gpu-memory": "22888",
                       "karpenter.sh/nodepool": "gpu"}, gpus=1, instance_type="g5.xlarge")


def karpenter_l4(name: str = "ip-10-0-1-23.ec2.internal") -> dict[str, Any]:
    return node(name, {"karpenter.k8s.aws/instance-gpu-name": "l4", "karpenter.k8s.aws/instance-gpu-memory": "22888",
                       "karpenter.k8s.aws/instance-gpu-manufacturer": "nvidia", "karpenter.sh/nodepool": "gpu"},
                gpus=1, instance_type="g6.xlarge")


def coreweave_h100(name: str = "g8a1b2c") -> dict[str, Any]:
    """A CoreWeave CKS node of an H100 Node Pool: the pool's instance ID as node.kubernetes.io/instance-type, and GFD's
    labels from the GPU Operator CoreWeave runs (an H100 SXM reports 81559 MiB)."""
    return node(name, {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559",
                       "nvidia.com/gpu.count": "8", "nvidia.com/gpu.present": "true"},
                gpus=8, instance_type="gd-8xh100ib-i128", cpu="128", memory="2048Gi")


def coreweave_a40_class_only(name: str = "a40-node-1") -> dict[str, Any]:
    """A CoreWeave node that names its GPU only by gpu.nvidia.com/class (values from third-party examples)."""
    return node(name, {"gpu.nvidia.com/class": "A40"}, gpus=1, instance_type="a40-1x", cpu="8", memory="64Gi")


def gfd_a10g_time_sliced(name: str = "ip-10-0-2-34.ec2.internal") -> dict[str, Any]:
    """A g5 node whose device plugin time-slices the A10G: GFD appends -SHARED to the product and records the
    strategy (k8s-device-plugin resource.go); allocatable nvidia.com/gpu counts the replicas."""
    return node(name, {"nvidia.com/gpu.product": "NVIDIA-A10G-SHARED", "nvidia.com/gpu.memory": "23028",
                       "nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "6",
                       "nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"},
                gpus=4, instance_type="g5.xlarge")


def cpu_node(name: str, **labels: str) -> dict[str, Any]:
    return node(name, {"cloud.google.com/gke-nodepool": "default-pool", **labels})


def storage_class(name: str, default: bool = False, provisioner: str = "pd.csi.storage.gke.io") -> dict[str, Any]:
    """A StorageClass; by default of GKE's persistent disk CSI driver, as standard-rwo and premium-rwo are."""
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": annotations}, "provisioner": provisioner,
            "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"}


def filestore_class(name: str = "standard-rwx") -> dict[str, Any]:
    """GKE's Filestore class (the Filestore CSI driver add-on brings it): NFS volumes that many nodes mount."""
    return {**storage_class(name, provisioner="filestore.csi.storage.gke.io"), "volumeBindingMode": "Immediate"}


def ingress_class(name: str, default: bool = False) -> dict[str, Any]:
    annotations = {"ingressclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": name, "annotations": annotations}, "spec": {"controller": "k8s.io/ingress-nginx"}}


def resource_quota(name: str, hard: dict[str, str], used: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name},
            "spec": {"hard": hard}, "status": {"hard": hard, "used": used or dict.fromkeys(hard, "0")}}


def limit_range(name: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": name}, "spec": {"limits": list(items)}}


def cluster_issuer(name: str, ready: bool = True) -> dict[str, Any]:
    return {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": name},
            "spec": {"acme": {"server": "https://acme-v02.api.letsencrypt.org/directory"}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "message": "The ACME account was registered" if ready
                                       else "Failed to register ACME account"}]}}


def _status_404(what: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound",
            "message": f"{what} not found", "code": 404}


def _list(kind: str, items: list[dict[str, Any]], api_version: str = "v1") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}


@dataclass
class FakeCluster:
    base: str = ""
    git_version: str = "v1.33.2-gke.1043000"
    nodes: list[dict[str, Any]] = field(default_factory=list)
    namespaces: dict[str, str] = field(default_factory=lambda: {"default": "Active", "kube-system": "Active"})
    quotas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    limit_ranges: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    crds: set[str] = field(default_factory=set)
    ingress_classes: list[dict[str, Any]] = field(default_factory=list)
    storage_classes: list[dict[str, Any]] = field(default_factory=lambda: [storage_class("standard-rwo", True)])
    cluster_issuers: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_maps: set[tuple[str, str]] = field(default_factory=set)
    api_services: dict[str, bool] = field(default_factory=dict)  # name -> Available
    drop_after: str | None = None  # once this path is answered, the server goes away (connections closed unanswered)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def answer(self, method: str, path: str, token: str | None) -> tuple[int, Any] | None:
        """(status, body), or None: no answer at all (the server has gone away)."""
        if self.drop_after is not None and (method, self.drop_after) in self.calls:
            self.calls.append((method, path))
            return None
        self.calls.append((method, path))
        if token != TOKEN:
            return 401, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized",
                         "message": "Unauthorized", "code": 401}
        if method != "GET":
            return 405, {"kind": "Status", "status": "Failure", "reason": "MethodNotAllowed", "code": 405}
        parts = path.strip("/").split("/")
        if parts == ["version"]:
            major, minor = self.git_version.lstrip("v").split(".")[:2]
            return 200, {"major": major, "minor": minor, "gitVersion": self.git_version, "gitCommit": "0" * 40,
                         "gitTreeState": "clean", "buildDate": STAMP, "goVersion": "go1.24.4", "compiler": "gc",
                         "platform": "linux/amd64"}
        if parts == ["api", "v1", "nodes"]:
            return 200, _list("NodeList", self.nodes)
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 4:
            return self._namespaced(parts[3], parts[4:])
        if parts[:4] == ["apis", "apiextensions.k8s.io", "v1", "customresourcedefinitions"] and len(parts) == 5:
            return self._crd(parts[4])
        if parts[:4] == ["apis", "apiregistration.k8s.io", "v1", "apiservices"] and len(parts) == 5:
            return self._api_service(parts[4])
        if parts == ["apis", "networking.k8s.io", "v1", "ingressclasses"]:
            return 200, _list("IngressClassList", self.ingress_classes, "networking.k8s.io/v1")
        if parts == ["apis", "storage.k8s.io", "v1", "storageclasses"]:
            return 200, _list("StorageClassList", self.storage_classes, "storage.k8s.io/v1")
        if parts[:4] == ["apis", "cert-manager.io", "v1", "clusterissuers"] and len(parts) == 5 and \
                "clusterissuers.cert-manager.io" in self.crds:
            issuer = self.cluster_issuers.get(parts[4])
            return (200, issuer) if issuer else (404, _status_404(f'clusterissuers.cert-manager.io "{parts[4]}"'))
        return 404, _status_404("the server could not find the requested resource")

    def _namespaced(self, namespace: str, rest: list[str]) -> tuple[int, Any]:
        if namespace not in self.namespaces:
            return 404, _status_404(f'namespaces "{namespace}"')
        if not rest:
            return 200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace},
                         "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": self.namespaces[namespace]}}
        if rest == ["resourcequotas"]:
            return 200, _list("ResourceQuotaList", self.quotas.get(namespace, []))
        if rest == ["limitranges"]:
            return 200, _list("LimitRangeList", self.limit_ranges.get(namespace, []))
        if len(rest) == 2 and rest[0] == "configmaps" and (namespace, rest[1]) in self.config_maps:
            return 200, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": rest[1]},
                         "data": {"status": "Cluster-autoscaler status: Healthy"}}
        return 404, _status_404("/".join(rest))

    def _api_service(self, name: str) -> tuple[int, Any]:
        if name not in self.api_services:
            return 404, _status_404(f'apiservices.apiregistration.k8s.io "{name}"')
        available = self.api_services[name]
        version, group = name.split(".", 1)
        return 200, {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                     "metadata": {"name": name, "creationTimestamp": STAMP},
                     "spec": {"group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
                              "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443}},
                     "status": {"conditions": [{"type": "Available", "status": str(available),
                                                "lastTransitionTime": STAMP,
                                                "reason": "Passed" if available else "FailedDiscoveryCheck",
                                                "message": "all checks passed" if available else
                                                "failing or missing response from https://10.0.0.9:10250"}]}}

    def _crd(self, name: str) -> tuple[int, Any]:
        if name not in self.crds:
            return 404, _status_404(f'customresourcedefinitions.apiextensions.k8s.io "{name}"')
        plural, group = name.split(".", 1)
        kind, version, scope = KNOWN_CRDS[name]
        return 200, {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                     "metadata": {"name": name},
                     "spec": {"group": group, "scope": scope,
                              "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                                        "listKind": f"{kind}List"},
                              "versions": [{"name": version, "served": True, "storage": True}]}}


@contextmanager
def serving(fake: FakeCluster) -> Iterator[FakeCluster]:
    def handle(request: BaseHTTPRequestHandler, method: str) -> None:
        token = bearer(request)
        answer = fake.answer(method, request.path.split("?")[0], token)
        if answer is None:
            request.close_connection = True  # the client sees its connection closed without a response
            return
        reply_json(request, *answer)

    with loopback_server(handle) as base:
        fake.base = base
        yield fake


def write_kubeconfig(path: Path, server: str, contexts: tuple[str, ...] = ("fake-gke",),
                     token: str = TOKEN) -> Path:
    """A kubeconfig as `gcloud container clusters get-credentials` or `aws eks update-kubeconfig` leave one, with
    a static token user (the client's `user.token`), every context on the one fake cluster; the first is current."""
    document = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "fake", "user": "operator"}} for name in contexts],
        "current-context": contexts[0],
    }
    path.write_text(yaml.safe_dump(document))
    return path
