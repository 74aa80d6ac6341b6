"""Kubernetes: the checks (`check`) and the selector for the cluster's best fitting GPU (`suggest`), through the
official `kubernetes` client with the kubeconfig context the stack names (kubeContext; unset: the current one).

Read-only: it gets and lists, nothing else. What it reads, in order:
- /version (the context answers) and the nodes: which expose allocatable nvidia.com/gpu, and what GPU their labels
  name (catalog.node_gpu: GKE, EKS Auto Mode, Karpenter, GPU Feature Discovery, CoreWeave);
- whether one of them runs SDXL and matches the stack's nodeSelector and `gpu`;
- the optional components: KEDA and cert-manager (their CRDs), the stack's ClusterIssuer, IngressClasses and
  StorageClasses (the defaults by their documented annotations);
- the namespace, and whether its ResourceQuotas and LimitRanges admit maxReplicas server pods and the model cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import tools.doctor as doctor
from stacks import catalog, config
from tools.doctor import FAIL, OK, WARN, RemoteError, Report, Runner, Suggestion, Target

GPU = catalog.K8S_GPU_RESOURCE
KEDA_CRD = "scaledobjects.keda.sh"  # KEDA's ScaledObject, keda.sh/v1alpha1
CERT_MANAGER_CRD = "clusterissuers.cert-manager.io"  # cert-manager's ClusterIssuer, cert-manager.io/v1
# The resource metrics API the HorizontalPodAutoscaler reads CPU from; metrics-server registers it. EKS does not
# install metrics-server by default (an add-on to add); GKE runs it.
METRICS_API_SERVICE = "v1beta1.metrics.k8s.io"
METRICS_SERVER_FIX = ("install metrics-server (EKS: the metrics-server add-on, or kubectl apply -f "
                      "https://github.com/kubernetes-sigs/metrics-server/releases/latest/download/components.yaml), "
                      "or install KEDA and set kedaPrometheusUrl to scale on the queue")
KARPENTER_CRD = "nodepools.karpenter.sh"  # Karpenter's (and EKS Auto Mode's) NodePool, karpenter.sh/v1
# The cluster autoscaler writes its status here (its --status-config-map-name default); GKE's managed one too.
AUTOSCALER_STATUS = ("kube-system", "cluster-autoscaler-status")
EKS_AUTO_NODE = ("eks.amazonaws.com/compute-type", "auto")  # EKS user guide: "Identifies EKS Auto Mode managed nodes"
DEFAULT_INGRESS_CLASS = "ingressclass.kubernetes.io/is-default-class"
DEFAULT_STORAGE_CLASS = ("storageclass.kubernetes.io/is-default-class",
                         "storageclass.beta.kubernetes.io/is-default-class")  # the beta key is still honoured
# GKE's built-in Ingress controllers are chosen by the kubernetes.io/ingress.class annotation and have no
# IngressClass object, so their absence from the list is expected.
GIB = Decimal(1024**3)

# Where each platform's kubeconfig comes from; the fixes below quote it.
CREDENTIAL_SOURCES = ("`aws eks update-kubeconfig --name <cluster>` (EKS), `gcloud container clusters get-credentials "
                      "<cluster>` (GKE), the kubeconfig from CoreWeave's console (CKS); or point KUBECONFIG at the "
                      "file")
CREDENTIALS_FIX = f"fetch the cluster's credentials into your kubeconfig: {CREDENTIAL_SOURCES}"
REACH_FIX = ("check that `kubectl get nodes` works from here: the API server's address in the kubeconfig, VPN or "
             "private endpoint, and the cluster's authorized networks")
GPU_NODE_STEPS = ("install the NVIDIA GPU Operator (or the device plugin) and a GPU node pool (GKE: a node pool with "
                  "--accelerator type=nvidia-l4,count=1; EKS: a NodePool or node group of g6/g5 instances); on "
                  "CoreWeave CKS add a GPU Node Pool and do not install the Operator (CoreWeave runs it)")
DEVICE_PLUGIN_FIX = f"add GPU nodes with the NVIDIA device plugin: {GPU_NODE_STEPS}"
# A model cache that pods on several nodes share: a file system class, or a single replica.
SHARED_CACHE_FIX = ("pulumi config set storageClass <a ReadWriteMany class>: "
                    + "; ".join(f"{where} {name}" for where, name, _ in catalog.K8S_SHARED_STORAGE)
                    + "; or pulumi config set maxReplicas 1")
# What a fitting GPU is, from the catalog's floor (memory, compute capability) and the GPUs it lists.
FITTING_GPU = (f"an NVIDIA GPU of {catalog.SDXL_MIN_GPU_MEMORY_GB} GB or more, compute capability "
               f"{'.'.join(map(str, catalog.MIN_COMPUTE_CAPABILITY))} or newer "
               f"({', '.join(dict.fromkeys(g.model.split()[0] for g in catalog.GPUS.values()))})")


class KubernetesApi:
    """The official client on one kubeconfig context; every failure becomes a RemoteError that says what to do."""

    def __init__(self, context: str | None = None, config_file: str | None = None) -> None:
        self.context = context
        self.config_file = config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"
        self.context_name = context or "?"  # the context in use, once connect() read the kubeconfig
        self.server = "?"
        self._client: Any = None

    def connect(self) -> Any:
        if self._client is not None:
            return self._client
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            contexts, current = config.list_kube_config_contexts(self.config_file)
        except ConfigException as err:
            raise RemoteError(f"no usable kubeconfig at {self.config_file} ({err})", CREDENTIALS_FIX,
                              blocking=True) from err
        names = [c["name"] for c in contexts]
        if self.context and self.context not in names:
            raise RemoteError(f"the kubeconfig ({self.config_file}) has no context {self.context!r}; it has "
                              f"{', '.join(names) or 'none'}",
                              "`kubectl config get-contexts` lists them: pulumi config set kubeContext <name>, or "
                              f"fetch that cluster's credentials ({CREDENTIAL_SOURCES})", blocking=True)
        self.context_name = self.context or (current or {}).get("name", "?")
        configuration = client.Configuration()
        configuration.retries = 1  # a black-holed API server fails in seconds, not after urllib3's three retries
        try:
            self._client = config.new_client_from_config(self.config_file, context=self.context, persist_config=False,
                                                          client_configuration=configuration)
        except ConfigException as err:
            raise RemoteError(f"context {self.context_name}: {err}", CREDENTIALS_FIX, blocking=True) from err
        self.server = configuration.host
        return self._client

    def call(self, api: str, method: str, *args: Any, missing_ok: bool = False, **params: Any) -> Any:
        """`client.<api>(...).<method>(...)` with timeouts; None for a 404 when missing_ok."""
        import urllib3
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        endpoint = getattr(client, api)(self.connect())
        where = f"context {self.context_name} ({self.server})"
        try:
            timeouts = (doctor.CONNECT_TIMEOUT_S, doctor.READ_TIMEOUT_S)
            return getattr(endpoint, method)(*args, _request_timeout=timeouts, **params)
        except ApiException as err:
            if err.status == 404 and missing_ok:
                return None
            if err.status == 401:
                raise RemoteError(f"{where} rejected the credentials (HTTP 401)", CREDENTIALS_FIX,
                                  blocking=True) from err
            if err.status == 403:
                raise RemoteError(f"{where}: this user may not {method.replace('_', ' ')} (HTTP 403)",
                                  "ask the cluster's admin for read access (`kubectl auth can-i --list` shows "
                                  "yours)") from err
            if err.status == 0:  # the client's wrapping of a TLS failure
                raise RemoteError(f"{where}: TLS failed ({err.reason.strip()})",
                                  "refresh the kubeconfig's certificate-authority-data: " + CREDENTIALS_FIX,
                                  blocking=True) from err
            raise RemoteError(f"{where} answered HTTP {err.status} {err.reason} to {method}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            cause = getattr(err, "reason", None) or err  # MaxRetryError wraps the connection's own error
            raise RemoteError(f"cannot reach {where} ({type(cause).__name__}: {cause})", REACH_FIX,
                              blocking=True) from err


@dataclass(frozen=True)
class GpuNode:
    name: str
    labels: dict[str, str]
    gpus: int  # allocatable nvidia.com/gpu
    gpu: catalog.NodeGpu | None  # what its labels name; None: no GPU label
    cordoned: bool

    def describe(self) -> str:
        what = f"{self.gpu.model} {_gib(self.gpu)}" if self.gpu else "a GPU no label names"
        return f"{self.name}: {self.gpus} x {what}{' (cordoned)' if self.cordoned else ''}"

    def describe_with_labels(self) -> str:
        """describe(), and the GPU labels the node carries: what placement and nodeSelector can match on."""
        shown = catalog.k8s_gpu_labels(self.labels)
        labels = ", ".join(f"{key}={value}" for key, value in shown.items()) or "no GPU label"
        return f"{self.describe()} [{labels}]"


def _gib(gpu: catalog.NodeGpu) -> str:
    # Labelled memory is what the driver reports (L4: 23034 MiB), so it is shown as measured, not rounded to "24".
    return f"{gpu.memory_mib / 1024:.1f} GiB"


def _quantity(value: Any) -> Decimal:
    from kubernetes.utils import parse_quantity

    return parse_quantity(str(value))


def _annotated(meta: Any, *keys: str) -> bool:
    annotations = (meta.annotations if meta else None) or {}
    return any(str(annotations.get(key, "")).lower() == "true" for key in keys)


def _wanted_gpu(target: Target) -> str | None:
    """The catalog GPU the stack's `gpu` asks for; None when any fitting GPU will do (or a nodeSelector decides)."""
    machine = target.machine
    if machine is None or machine is catalog.K8S_ANY_GPU or not machine.name.startswith("gpu="):
        return None
    return machine.gpu.key


def check(target: Target, api: KubernetesApi, report: Report, with_suggest: bool) -> None:
    """cluster, gpu-nodes, placement, keda, metrics-server, cert-manager, ingress-class, storage-class, namespace,
    quota, limit-range; then --suggest. Once a call loses the cluster or the credentials, the rest are skipped."""
    runner = Runner(report)
    cluster: dict[str, Any] = {}

    def read_cluster() -> None:
        cluster["version"] = str(api.call("VersionApi", "get_code").git_version)
        report.add("cluster", OK, f"context {api.context_name}: {api.server}, Kubernetes {cluster['version']}")
        target.region = api.context_name  # the context in use, where the stack left it to the current one
        cluster["nodes"] = api.call("CoreV1Api", "list_node").items

    if not runner.run("cluster", read_cluster):
        return
    nodes = cluster["nodes"]
    gpu_nodes = [n for n in (_gpu_node(node) for node in nodes) if n is not None]
    kube = target.kube
    runner.run("gpu-nodes", lambda: _check_gpu_nodes(api, report, nodes, gpu_nodes))
    if kube is not None:
        if gpu_nodes:
            _check_placement(target, report, gpu_nodes)
        runner.run("keda", lambda: _check_keda(api, report, kube))
        if target.replicas > target.min_replicas and not kube.keda_prometheus_url:
            runner.run("metrics-server", lambda: _check_metrics_server(api, report))
        if kube.exposure == "ingress":
            runner.run("cert-manager", lambda: _check_cert_manager(api, report, kube))
            on_gke = catalog.K8S_GKE_VERSION_MARK in cluster["version"]
            runner.run("ingress-class", lambda: _check_ingress_class(api, report, kube, on_gke))
        # The namespace check sizes the claim with the class the storage check found (the stack's, or the default).
        used = {"storage_class": kube.storage_class}
        runner.run("storage-class", lambda: used.update(
            storage_class=_check_storage(api, report, kube, target.replicas)))
        runner.run("namespace", lambda: _check_namespace(api, report, target, used["storage_class"]))
    if with_suggest:
        report.suggestions = suggest(gpu_nodes, api.context_name, target)


def _gpu_node(node: Any) -> GpuNode | None:
    allocatable = (node.status.allocatable if node.status else None) or {}
    gpus = int(_quantity(allocatable.get(GPU, 0)))
    if gpus <= 0:
        return None
    labels = dict(node.metadata.labels or {})
    return GpuNode(node.metadata.name, labels, gpus, catalog.node_gpu(labels),
                   bool(node.spec and node.spec.unschedulable))


def _provisioner(api: KubernetesApi, nodes: list[Any]) -> str | None:
    """What may create GPU nodes on demand, where the cluster shows it: EKS Auto Mode, Karpenter or a cluster
    autoscaler. GKE's node auto-provisioning is not visible from inside the cluster."""
    key, value = EKS_AUTO_NODE
    if any((n.metadata.labels or {}).get(key) == value for n in nodes):
        return "EKS Auto Mode"
    try:
        if _crd(api, KARPENTER_CRD):
            return "Karpenter (NodePool CRD)"
        namespace, name = AUTOSCALER_STATUS
        if api.call("CoreV1Api", "read_namespaced_config_map", name, namespace, missing_ok=True):
            return "a cluster autoscaler (kube-system/cluster-autoscaler-status)"
    except RemoteError as err:
        if err.blocking:  # the cluster is gone: the checks after this one are skipped
            raise
        return None  # e.g. no read access to CRDs: then nothing is known
    return None


def _check_gpu_nodes(api: KubernetesApi, report: Report, nodes: list[Any], gpu_nodes: list[GpuNode]) -> None:
    if gpu_nodes:
        unlabelled = [n.name for n in gpu_nodes if n.gpu is None]
        value = f"{len(gpu_nodes)} of {len(nodes)} nodes expose {GPU}: " + "; ".join(
            n.describe_with_labels() for n in gpu_nodes)
        report.add("gpu-nodes", WARN if unlabelled else OK, value,
                   "label the GPU nodes: install NVIDIA GPU Feature Discovery (part of the GPU Operator), which sets "
                   f"{catalog.K8S_LABEL_GFD_PRODUCT} and {catalog.K8S_LABEL_GFD_MEMORY}" if unlabelled else None)
        return
    value = f"no node exposes {GPU} ({len(nodes)} nodes, none with allocatable GPUs)"
    provisioner = _provisioner(api, nodes)
    if provisioner:
        report.add("gpu-nodes", WARN, f"{value}; {provisioner} may create GPU nodes when the pod asks for one",
                   f"make sure a node pool it manages offers {FITTING_GPU}; otherwise: {DEVICE_PLUGIN_FIX}")
    else:
        report.add("gpu-nodes", FAIL, value, DEVICE_PLUGIN_FIX)


def _matches(node: GpuNode, selector: dict[str, str], terms: list[dict[str, object]]) -> bool:
    """Whether the scheduler would place the server pod here: the stack's own affinity terms and nodeSelector."""
    return not node.cordoned and catalog.k8s_node_admits(node.labels, terms, selector)


def _check_placement(target: Target, report: Report, gpu_nodes: list[GpuNode]) -> None:
    """Whether a GPU node runs SDXL and matches the stack's nodeSelector and `gpu`."""
    kube = target.kube
    assert kube is not None and target.machine is not None
    gpu_key = _wanted_gpu(target)
    terms = catalog.k8s_gpu_terms(catalog.k8s_placement_gpu(target.machine))
    matching = [n for n in gpu_nodes if _matches(n, kube.node_selector, terms)]
    wanted = target.machine.describe()
    if matching:
        report.add("placement", OK, f"{len(matching)} GPU node(s) match {wanted}: "
                                    + ", ".join(n.name for n in matching))
        return
    # Nodes the pod could use with another gpu or nodeSelector: any fitting, whole GPU.
    any_fitting = catalog.k8s_gpu_terms(None)
    fitting = [n for n in gpu_nodes if n.gpu is not None and _matches(n, {}, any_fitting)]
    found = "; ".join(n.describe() + _why_not(n, kube.node_selector, gpu_key) for n in gpu_nodes)
    if fitting:
        best = min(fitting, key=lambda n: n.gpu.memory_mib if n.gpu else 0)
        other = best.gpu.gpu_key if best.gpu else None
        change = (f"pulumi config set gpu {other}" if gpu_key and other
                  else "pulumi config rm nodeSelector" if kube.node_selector else None)
        fix = (f"add a node pool with {target.machine.gpu.model if gpu_key else 'the selected'} GPUs"
               + (f", or {change} to use the cluster's {best.gpu.model if best.gpu else ''}" if change else "")
               + " (python -m tools.doctor --suggest prints the selector)")
    else:
        fix = f"add a node pool with {FITTING_GPU}, whole (not time-sliced or MPS); {GPU_NODE_STEPS}"
    report.add("placement", FAIL, f"no GPU node runs SDXL and matches {wanted}; found {found}", fix)


def _why_not(node: GpuNode, selector: dict[str, str], gpu_key: str | None) -> str:
    if node.gpu is None:
        return " [no GPU label]"
    sharing = node.labels.get(catalog.K8S_LABEL_GFD_SHARING)
    if sharing in catalog.K8S_GFD_SHARED_STRATEGIES:
        return (f" [its GPU is shared ({catalog.K8S_LABEL_GFD_SHARING}={sharing}): one nvidia.com/gpu is a share of "
                "the card, and SDXL needs the whole memory]")
    unfit = catalog.k8s_fitting(node.gpu)
    if unfit:
        return f" [cannot run SDXL: {unfit}]"
    differing = [f"{k}={node.labels.get(k, '(unset)')}" for k, v in selector.items() if node.labels.get(k) != v]
    if differing:
        return f" [nodeSelector: has {', '.join(differing)}]"
    if gpu_key and not catalog.k8s_node_matches(node.gpu, gpu_key):
        return f" [not the gpu {gpu_key}]"
    return " [cordoned]" if node.cordoned else " [its labels meet none of the placement terms]"


def _crd(api: KubernetesApi, name: str) -> bool:
    return api.call("ApiextensionsV1Api", "read_custom_resource_definition", name, missing_ok=True) is not None


def _check_keda(api: KubernetesApi, report: Report, kube: config.KubeSettings) -> None:
    installed = _crd(api, KEDA_CRD)
    if installed and kube.keda_prometheus_url:
        report.add("keda", OK, f"KEDA installed ({KEDA_CRD}): scales on the queue through {kube.keda_prometheus_url}")
    elif installed:
        report.add("keda", WARN, "KEDA installed, but kedaPrometheusUrl is unset: scales on CPU",
                   "pulumi config set kedaPrometheusUrl http://<prometheus>.<namespace>.svc:9090 to scale on the queue")
    elif kube.keda_prometheus_url:
        report.add("keda", FAIL, f"kedaPrometheusUrl is set, but the cluster has no KEDA (no CRD {KEDA_CRD})",
                   "install KEDA (https://keda.sh/docs/latest/deploy/), or pulumi config rm kedaPrometheusUrl to "
                   "scale on CPU")
    else:
        report.add("keda", WARN, f"no KEDA (no CRD {KEDA_CRD}): scales on CPU",
                   "install KEDA and set kedaPrometheusUrl to scale on the queue")


def _check_metrics_server(api: KubernetesApi, report: Report) -> None:
    """The HorizontalPodAutoscaler on CPU reads the resource metrics API: without it, it never scales."""
    service = api.call("ApiregistrationV1Api", "read_api_service", METRICS_API_SERVICE, missing_ok=True)
    if service is None:
        report.add("metrics-server", WARN, f"the HorizontalPodAutoscaler scales on CPU, but the cluster serves no "
                                           f"resource metrics (no APIService {METRICS_API_SERVICE})",
                   METRICS_SERVER_FIX)
        return
    conditions = (service.status.conditions if service.status else None) or []
    available = next((c for c in conditions if c.type == "Available"), None)
    if available is not None and available.status != "True":
        report.add("metrics-server", WARN, f"APIService {METRICS_API_SERVICE} is not Available: "
                                           f"{available.message or available.reason}",
                   f"kubectl describe apiservice {METRICS_API_SERVICE}")
        return
    report.add("metrics-server", OK, f"APIService {METRICS_API_SERVICE} serves the CPU the autoscaler reads")


def _check_cert_manager(api: KubernetesApi, report: Report, kube: config.KubeSettings) -> None:
    installed = _crd(api, CERT_MANAGER_CRD)
    if kube.cert_issuer is None:
        report.add("cert-manager", OK if not installed else WARN,
                   "certIssuer unset: the stack requests no certificate, so the endpoint is http://<domain>"
                   if not installed
                   else "cert-manager installed, but certIssuer is unset: no certificate is requested",
                   None if not installed else "kubectl get clusterissuers; pulumi config set certIssuer <name>")
        return
    if not installed:
        report.add("cert-manager", FAIL, f"certIssuer is {kube.cert_issuer}, but the cluster has no cert-manager "
                                         f"(no CRD {CERT_MANAGER_CRD})",
                   "install cert-manager (https://cert-manager.io/docs/installation/) and a ClusterIssuer, or "
                   "pulumi config rm certIssuer")
        return
    issuer = api.call("CustomObjectsApi", "get_cluster_custom_object", "cert-manager.io", "v1", "clusterissuers",
                      kube.cert_issuer, missing_ok=True)
    if issuer is None:
        report.add("cert-manager", FAIL, f"no ClusterIssuer {kube.cert_issuer!r}",
                   "kubectl get clusterissuers lists them: pulumi config set certIssuer <name>, or create it "
                   "(https://cert-manager.io/docs/configuration/acme/)")
        return
    conditions = (issuer.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), {})
    if ready.get("status") == "True":
        report.add("cert-manager", OK, f"ClusterIssuer {kube.cert_issuer} is Ready")
    else:
        report.add("cert-manager", WARN, f"ClusterIssuer {kube.cert_issuer} is not Ready: "
                                         f"{ready.get('message') or 'no Ready condition yet'}",
                   f"kubectl describe clusterissuer {kube.cert_issuer}")


def _named_or_default(report: Report, check: str, kind: str, key: str, classes: list[Any], wanted: str | None,
                      default_keys: tuple[str, ...], none_fix: str, unset_why: str,
                      judge: Callable[[Any], tuple[str, str] | None] | None = None) -> str | None:
    """An IngressClass or StorageClass: the stack's (`key`) exists, or else the cluster marks one as its default;
    and `judge` (why not, fix), when given, does not refuse it. Returns the class that will be used, or None."""
    names = [c.metadata.name for c in classes]
    listed = ", ".join(names) or "none"
    fix = f"pulumi config set {key} {names[0]}" if names else none_fix
    if wanted:
        if wanted not in names:
            report.add(check, FAIL, f"no {kind} {wanted!r} (the cluster has {listed})", fix)
            return wanted
        chosen, value = wanted, f"{kind} {wanted} exists"
    else:
        default = [c.metadata.name for c in classes if _annotated(c.metadata, *default_keys)]
        if not default:
            report.add(check, FAIL, f"{key} unset and no {kind} is the default (the cluster has {listed})", fix)
            return None
        chosen, value = default[0], f"{key} unset: the cluster's default {default[0]} {unset_why}"
    refused = judge(classes[names.index(chosen)]) if judge else None
    if refused:
        why, refused_fix = refused
        report.add(check, FAIL, f"{value}, but {why}", refused_fix)
    else:
        report.add(check, OK, value)
    return chosen


def _check_ingress_class(api: KubernetesApi, report: Report, kube: config.KubeSettings, on_gke: bool) -> None:
    """The Ingress's controller. GKE's own (gce, gce-internal) is chosen by annotation and has no IngressClass
    object, so it is judged by the cluster being GKE, never by an IngressClass that happens to carry its name."""
    if kube.ingress_class in catalog.K8S_GKE_INGRESS_CLASSES:
        if on_gke:
            report.add("ingress-class", OK, f"{kube.ingress_class}: GKE's built-in Ingress controller (selected by "
                                            f"the {catalog.K8S_GKE_INGRESS_ANNOTATION} annotation)")
        else:
            report.add("ingress-class", FAIL, f"ingressClass {kube.ingress_class} is GKE's built-in controller, but "
                                              "this cluster is not GKE (its version names no -gke. build)",
                       "pulumi config set ingressClass <the cluster's IngressClass> (kubectl get ingressclass)")
        return
    classes = api.call("NetworkingV1Api", "list_ingress_class").items
    if on_gke and not kube.ingress_class and not any(_annotated(c.metadata, DEFAULT_INGRESS_CLASS) for c in classes):
        report.add("ingress-class", WARN, "ingressClass unset on GKE: GKE's controller serves the Ingress with its "
                                          "30 s backend timeout, which cuts long generations",
                   "pulumi config set ingressClass gce (the stack then raises the timeout with a BackendConfig)")
        return
    _named_or_default(report, "ingress-class", "IngressClass", "ingressClass", classes, kube.ingress_class,
                      (DEFAULT_INGRESS_CLASS,), "install an ingress controller (e.g. ingress-nginx), or pulumi config "
                      "set exposure loadBalancer", "serves the Ingress")


def _check_storage(api: KubernetesApi, report: Report, kube: config.KubeSettings, replicas: int) -> str | None:
    """The model cache's StorageClass: the stack's, or the cluster's default (without one the claim stays Pending);
    with more than one replica, one whose volumes several nodes can mount. Returns the class used."""
    return _named_or_default(report, "storage-class", "StorageClass", "storageClass",
                             api.call("StorageV1Api", "list_storage_class").items, kube.storage_class,
                             DEFAULT_STORAGE_CLASS, "install a CSI driver with a StorageClass", "holds the model cache",
                             judge=lambda storage_class: _cannot_share(storage_class, replicas))


def _cannot_share(storage_class: Any, replicas: int) -> tuple[str, str] | None:
    """Why a class cannot hold the cache of `replicas` pods (the claim asks ReadWriteMany above one), and the fix."""
    if replicas <= 1:
        return None
    storage = catalog.K8S_BLOCK_ONLY_PROVISIONERS.get(storage_class.provisioner)
    if storage is None:
        return None
    return (f"its provisioner {storage_class.provisioner} ({storage}) attaches a volume to one node at a time: "
            f"maxReplicas {replicas} asks the model cache for ReadWriteMany, which it cannot give, so the claim never "
            "binds and the pods stay Pending", SHARED_CACHE_FIX)


def _check_namespace(api: KubernetesApi, report: Report, target: Target, storage_class: str | None) -> None:
    kube = target.kube
    assert kube is not None
    namespace = api.call("CoreV1Api", "read_namespace", kube.namespace, missing_ok=True)
    if namespace is None:
        if kube.create_namespace:
            report.add("namespace", OK, f"{kube.namespace} does not exist yet: the stack creates it")
        else:
            report.add("namespace", FAIL, f"namespace {kube.namespace} does not exist",
                       f"kubectl create namespace {kube.namespace}, or pulumi config rm namespace (the stack then "
                       "creates its own)")
        return
    phase = namespace.status.phase if namespace.status else None
    if phase == "Terminating":
        report.add("namespace", FAIL, f"namespace {kube.namespace} is being deleted",
                   "wait until `kubectl get namespace` no longer lists it, or pick another namespace")
        return
    report.add("namespace", OK, f"{kube.namespace} exists")
    needs = pod_needs(target, storage_class)
    quotas = api.call("CoreV1Api", "list_namespaced_resource_quota", kube.namespace).items
    _check_quotas(report, kube.namespace, quotas, needs)
    ranges = api.call("CoreV1Api", "list_namespaced_limit_range", kube.namespace).items
    _check_limit_ranges(report, kube.namespace, ranges, target.data_disk_gb)


def pod_needs(target: Target, storage_class: str | None) -> dict[str, Decimal]:
    """What the stack asks of a namespace quota: maxReplicas server pods (catalog requests, 1 GPU each), one
    model-cache claim of dataDiskGb, and a LoadBalancer Service when exposed that way."""
    replicas = Decimal(target.replicas)
    cpu, memory = (_quantity(catalog.K8S_SERVER_REQUESTS[k]) for k in ("cpu", "memory"))
    memory_limit = _quantity(catalog.K8S_SERVER_LIMITS["memory"])
    storage = Decimal(target.data_disk_gb) * GIB
    needs = {"pods": replicas, "cpu": cpu * replicas, "requests.cpu": cpu * replicas,
             "memory": memory * replicas, "requests.memory": memory * replicas,
             "limits.memory": memory_limit * replicas, f"requests.{GPU}": replicas, f"limits.{GPU}": replicas,
             "persistentvolumeclaims": Decimal(1), "requests.storage": storage}
    if storage_class:
        needs[f"{storage_class}.storageclass.storage.k8s.io/requests.storage"] = storage
        needs[f"{storage_class}.storageclass.storage.k8s.io/persistentvolumeclaims"] = Decimal(1)
    if target.kube is not None and target.kube.exposure == "loadBalancer":
        needs["services.loadbalancers"] = Decimal(1)
    return needs


def _show(resource: str, amount: Decimal) -> str:
    if "memory" in resource or "storage" in resource:
        return f"{amount / GIB:g}Gi"
    return f"{amount:g}"


def _check_quotas(report: Report, namespace: str, quotas: list[Any], needs: dict[str, Decimal]) -> None:
    short: list[str] = []
    for quota in quotas:
        status = quota.status
        hard = (status.hard if status and status.hard else None) or (quota.spec.hard if quota.spec else None) or {}
        used = (status.used if status else None) or {}
        for resource, limit in hard.items():
            free = _quantity(limit) - _quantity(used.get(resource, 0))
            if resource == "limits.cpu" and "cpu" not in catalog.K8S_SERVER_LIMITS:
                short.append(f"{quota.metadata.name}: limits.cpu is capped, and the server sets no CPU limit (the "
                             "quota then refuses its pods unless a LimitRange gives a default)")
            elif resource in needs and free < needs[resource]:
                short.append(f"{quota.metadata.name}: {resource} has {_show(resource, free)} free of "
                             f"{_show(resource, _quantity(limit))}, the stack needs {_show(resource, needs[resource])}")
    if not quotas:
        report.add("quota", OK, f"no ResourceQuota in {namespace}")
    elif short:
        report.add("quota", FAIL, "; ".join(short),
                   f"ask the cluster's admin to raise the quota (kubectl describe resourcequota -n {namespace}), or "
                   "lower maxReplicas / dataDiskGb")
    else:
        report.add("quota", OK, f"{len(quotas)} ResourceQuota(s) in {namespace} admit {needs['pods']:g} pod(s) and "
                                "the model cache")


def _check_limit_ranges(report: Report, namespace: str, ranges: list[Any], data_disk_gb: int) -> None:
    asks = {"cpu": _quantity(catalog.K8S_SERVER_REQUESTS["cpu"]),
            "memory": max(_quantity(catalog.K8S_SERVER_REQUESTS["memory"]),
                          _quantity(catalog.K8S_SERVER_LIMITS["memory"])), GPU: Decimal(1)}
    storage = Decimal(data_disk_gb) * GIB
    below: list[str] = []
    for limit_range in ranges:
        for item in (limit_range.spec.limits if limit_range.spec else None) or []:
            maximum = item.max or {}
            wanted = {"storage": storage} if item.type == "PersistentVolumeClaim" else asks
            for resource, amount in wanted.items():
                if resource in maximum and _quantity(maximum[resource]) < amount:
                    below.append(f"{limit_range.metadata.name}: {item.type} max {resource} {maximum[resource]}, the "
                                 f"stack needs {_show(resource, amount)}")
            if item.type == "PersistentVolumeClaim" and "storage" in (item.min or {}) and \
                    _quantity(item.min["storage"]) > storage:
                below.append(f"{limit_range.metadata.name}: PersistentVolumeClaim min storage {item.min['storage']}, "
                             f"the model cache asks {data_disk_gb}Gi")
    if below:
        report.add("limit-range", FAIL, "; ".join(below),
                   f"ask the cluster's admin to raise the LimitRange (kubectl describe limitrange -n {namespace}), or "
                   "pick a namespace without it")
    elif ranges:
        report.add("limit-range", OK, f"{len(ranges)} LimitRange(s) in {namespace} admit the server pod")


# --- --suggest --------------------------------------------------------------------------------------------------


def _selector_for(node: GpuNode) -> tuple[str, str] | None:
    """The most specific label the node carries that names its GPU."""
    for label in catalog.K8S_SELECTOR_LABELS:
        if label in node.labels:
            return label, node.labels[label]
    return None


def _placed_with(node: GpuNode, selector: tuple[str, str], gpu_key: str | None) -> bool:
    """Whether the stack, given this nodeSelector (and `gpu`, kept where the node has that GPU), passes preview and
    its pod lands on this node: the same catalog judgement and placement terms as the Deployment's."""
    keep = gpu_key if gpu_key and catalog.k8s_node_matches(node.gpu, gpu_key) else None
    try:
        asked = catalog.k8s_selector_placement(dict([selector]), keep)
    except catalog.UnfitMachineError:  # e.g. a time-sliced GPU's -SHARED product name
        return False
    terms = catalog.k8s_gpu_terms(catalog.k8s_placement_gpu(asked))
    return _matches(node, dict([selector]), terms)


def suggest(gpu_nodes: list[GpuNode], context: str, target: Target) -> list[Suggestion]:
    """One nodeSelector per fitting GPU the cluster has, smallest GPU first, with the command that sets it. A node
    counts only where the selector would really place the pod (not a shared GPU, whatever its memory)."""
    gpu_key = _wanted_gpu(target)
    groups: dict[tuple[str, str], list[GpuNode]] = {}
    for node in gpu_nodes:
        selector = _selector_for(node)
        if node.gpu is not None and catalog.k8s_fitting(node.gpu) is None and selector and \
                _placed_with(node, selector, gpu_key):
            groups.setdefault(selector, []).append(node)
    found = []
    for (label, value), nodes in sorted(groups.items(), key=lambda item: (item[1][0].gpu.memory_mib, item[0])):
        gpu = nodes[0].gpu
        assert gpu is not None
        command = f"pulumi config set --path 'nodeSelector[0]' {label}={value}"
        if gpu_key and not catalog.k8s_node_matches(gpu, gpu_key):
            command = f"pulumi config rm gpu && {command}"
        gpus = sum(n.gpus for n in nodes)
        found.append(Suggestion(location=f"context {context}", zones=[n.name for n in nodes],
                                machine_type=f"{label}={value}", usd_per_hour=None,
                                price_source="the cluster's own nodes (no price)", quota="unknown",
                                quota_detail=f"{gpu.model} {_gib(gpu)}, {gpus} GPU(s) on "
                                             f"{len(nodes)} node(s)", command=command))
    return found
