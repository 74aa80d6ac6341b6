"""Kubernetes: the server image on an existing cluster's NVIDIA GPU nodes, through pulumi-kubernetes.

The stack creates no cluster. An explicit provider under the component talks to the kubeconfig context the stack
names (`kubeContext`; unset: the current one). In the namespace (`namespace`, or `sdxl-<stack>` created here):
- a Secret with the API and Hugging Face tokens (and, optionally, the registry credentials to pull the image);
- a PersistentVolumeClaim for the model cache, so a restarted pod does not download SDXL again;
- a Deployment of the server: one `nvidia.com/gpu`, placed only on nodes whose GPU can run SDXL (see `placement`),
  non-root with a read-only root filesystem, probes sized for a first download, a grace period covering its drain;
- a Service, exposed by an Ingress (HTTPS through cert-manager), a LoadBalancer, or not at all (`exposure`);
- an autoscaler between minReplicas and maxReplicas: KEDA on the server's queue when `kedaPrometheusUrl` names the
  Prometheus that scrapes it, else a HorizontalPodAutoscaler on CPU; and a PodDisruptionBudget.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from stacks import catalog, contract, hosted
from stacks.config import KubeSettings, Settings, k8s_mark_key

# Where in the cluster a user looks does not change the contract: this target has no preview-time machine look-up.
describe_machine = None

APP = "sdxl-endpoint"  # app.kubernetes.io/name of every object
SERVICE_PORT = 80  # the Service's port, in front of the container's hosted.SERVER_PORT
METRICS_PORT = 9464  # the server's token-free /metrics (--metrics-port), for the cluster's Prometheus only
CACHE_MOUNT = "/models"  # the image's HF_HOME; the compile cache is under it too (image/Dockerfile)
UID = contract.CONTAINER_UID  # the image's user
# SIGTERM drains: admitted work finishes within this many seconds, new work is answered 503 meanwhile. The pod's
# grace period adds uvicorn's flush (server/__main__.py, 5 s) and a margin before Kubernetes sends SIGKILL.
DRAIN_SECONDS = 120
# Before SIGTERM the pod waits this long (a preStop sleep) while the endpoints controller, kube-proxy and the
# ingress or load balancer stop sending it requests: an idle server exits within about two seconds of SIGTERM, and
# a request routed to it after that gets the proxy's 502, without CORS. The kubelet's own sleep action (beta and on
# by default since Kubernetes 1.30, GA in 1.34: KEP-3960) needs no sleep binary in the image.
PRE_STOP_SECONDS = 15
GRACE_SECONDS = PRE_STOP_SECONDS + DRAIN_SECONDS + 5 + 15
# A first start downloads SDXL (~7 GB) onto the volume and loads it: up to an hour before the startup probe gives up.
STARTUP_BUDGET_SECONDS = 3600
PROBE_PERIOD_SECONDS = 10
# The server answers 504 (with CORS) after its request timeout (contract.REQUEST_TIMEOUT_SECONDS); the ingress waits a
# little longer so that answer, not the proxy's own 504 without CORS, reaches the browser.
REQUEST_TIMEOUT_SECONDS = contract.REQUEST_TIMEOUT_SECONDS
INGRESS_TIMEOUT_SECONDS = REQUEST_TIMEOUT_SECONDS + 30
# ingress-nginx refuses bodies over 1 MiB by default; the server takes 20 MiB (server/settings.py max_body_mb).
INGRESS_BODY_LIMIT = "21m"
# The pod template carries a digest of the tokens: the server reads them from env vars at start, so without it a new
# apiToken or hfToken would change the Secret but leave the running pods on the old one.
TOKENS_DIGEST_ANNOTATION = k8s_mark_key("tokens-hmac-sha256")


def labels(settings: Settings) -> dict[str, str]:
    """What every object carries: the app, the stack and project marks (Kubernetes-style keys)."""
    marks = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": settings.stack,
             "app.kubernetes.io/managed-by": "pulumi"}
    # Label values are 63 characters of [A-Za-z0-9-_.]; the ttl's ':' is not allowed, so it goes to annotations.
    marks.update({k8s_mark_key(mark): value for mark, value in settings.ownership.items() if mark != "ttl"})
    return marks


def selector_labels(settings: Settings) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": settings.stack}


# --- placement ---------------------------------------------------------------------------------------------------


def placement(settings: Settings) -> dict[str, object]:
    """The pod's nodeSelector, affinity and tolerations.

    The affinity admits only nodes whose GPU runs SDXL, whatever labels the platform uses (catalog.k8s_gpu_terms:
    one ORed term per platform). `gpu` narrows each term to that GPU. A user's nodeSelector (judged
    by config.validate) is kept as written, on top of the affinity, which still refuses unfit nodes.
    """
    kube = _kube(settings)
    terms = catalog.k8s_gpu_terms(catalog.k8s_placement_gpu(settings.machine))
    spec: dict[str, object] = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}},
        # GPU node pools are tainted so that other pods stay off them (GKE: nvidia.com/gpu=present:NoSchedule).
        "tolerations": [{"key": catalog.K8S_GPU_TOLERATION_KEY, "operator": "Exists", "effect": "NoSchedule"}],
    }
    if kube.node_selector:
        spec["nodeSelector"] = dict(kube.node_selector)
    return spec


# --- the workload ------------------------------------------------------------------------------------------------


def server_env(settings: Settings) -> list[dict[str, str]]:
    """The server's settings; the tokens come from the Secret (envFrom), never from here."""
    env = hosted.server_env(settings, model=settings.model, request_timeout=REQUEST_TIMEOUT_SECONDS)
    env.update({
        "SDXL_METRICS_PORT": str(METRICS_PORT),
        "SDXL_SHUTDOWN_GRACE": str(DRAIN_SECONDS),
        # The root filesystem is read-only: libraries that cache under $HOME write to the scratch volume.
        "XDG_CACHE_HOME": "/tmp/cache",  # noqa: S108 - the pod's own emptyDir, not a shared host /tmp
        "TRITON_CACHE_DIR": f"{CACHE_MOUNT}/triton",
    })
    return [{"name": name, "value": value} for name, value in sorted(env.items())]


def probes() -> dict[str, object]:
    """startup -> readiness and liveness. /health answers as soon as the process serves (while the model downloads);
    /ready only once it can generate, and 503 while draining, so the Service stops sending it work."""
    def get(path: str) -> dict[str, object]:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": PROBE_PERIOD_SECONDS, "timeoutSeconds": 5}

    return {
        "startupProbe": {**get(contract.LIVE_ROUTE),
                         "failureThreshold": STARTUP_BUDGET_SECONDS // PROBE_PERIOD_SECONDS},
        "readinessProbe": {**get(contract.READY_ROUTE), "failureThreshold": 1, "successThreshold": 1},
        # A generation holds the GPU, not the event loop: /health stays quick, so three misses mean a stuck server.
        "livenessProbe": {**get(contract.LIVE_ROUTE), "periodSeconds": 20, "failureThreshold": 3},
    }


def container(settings: Settings, secret_name: pulumi.Input[str]) -> dict[str, object]:
    return {
        "name": "server",
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": hosted.SERVER_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "env": server_env(settings),
        "envFrom": [{"secretRef": {"name": secret_name}}],
        "resources": {
            "requests": dict(catalog.K8S_SERVER_REQUESTS),
            "limits": {**catalog.K8S_SERVER_LIMITS, catalog.K8S_GPU_RESOURCE: "1"},
        },
        **probes(),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": UID, "runAsGroup": UID, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "model-cache", "mountPath": CACHE_MOUNT},
                         {"name": "scratch", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir of the pod
    }


def pod_spec(settings: Settings, *, secret_name: pulumi.Input[str], cache_claim: pulumi.Input[str],
             pull_secret: pulumi.Input[str] | None) -> dict[str, object]:
    spec: dict[str, object] = {
        "containers": [container(settings, secret_name)],
        # fsGroup makes the cache volume writable by the server's group; only on a root mismatch, so a large cache
        # is not walked at every start.
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "automountServiceAccountToken": False,  # the server never talks to the Kubernetes API
        "enableServiceLinks": False,
        "volumes": [{"name": "model-cache", "persistentVolumeClaim": {"claimName": cache_claim}},
                    {"name": "scratch", "emptyDir": {"sizeLimit": "2Gi"}}],
        **placement(settings),
    }
    if pull_secret is not None:
        spec["imagePullSecrets"] = [{"name": pull_secret}]
    return spec


def strategy(settings: Settings) -> dict[str, object]:
    """One replica: Recreate, since a second pod would need a second GPU and the cache volume may attach to one
    node only. Several: replace one pod at a time without a surge pod, which would wait for a spare GPU."""
    if settings.max_replicas == 1:
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def cache_access_mode(settings: Settings) -> str:
    """Replicas on several nodes share the cache only through a ReadWriteMany class (Filestore, EFS, CoreWeave's
    shared storage); one replica needs ReadWriteOnce, which every class offers."""
    return "ReadWriteMany" if settings.max_replicas > 1 else "ReadWriteOnce"


def tokens_digest(secrets: pulumi.Output[dict[str, str]], key: pulumi.Input[str]) -> pulumi.Output[str]:
    """HMAC-SHA256 of the Secret's values under `key`, computed inside apply so the tokens never leave the secret
    Output. The key (random, kept encrypted in the stack's state) is what lets the digest be a plain input: a bare
    sha256 of a short apiToken a user chose could be guessed back by anyone who reads Deployments. A secret
    annotation would not do: the SDK then sends the Deployment's whole `spec` as one secret value, which hides every
    change to it in `pulumi preview --diff`."""
    def digest(args: list) -> str:
        secret_key, values = args
        return hmac.new(str(secret_key).encode(), json.dumps(values, sort_keys=True).encode(),
                        hashlib.sha256).hexdigest()

    return pulumi.Output.unsecret(pulumi.Output.all(key, secrets).apply(digest))


# --- exposure ----------------------------------------------------------------------------------------------------


def service_spec(settings: Settings) -> dict[str, object]:
    kube = _kube(settings)
    spec: dict[str, object] = {
        "type": "LoadBalancer" if kube.exposure == "loadBalancer" else "ClusterIP",
        "selector": selector_labels(settings),
        # Only the API: the token-free metrics port stays on the pod, for the cluster's Prometheus.
        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    if kube.exposure == "loadBalancer" and list(settings.allowed_cidrs) != list(contract.ANYWHERE):
        spec["loadBalancerSourceRanges"] = list(settings.allowed_cidrs)
    return spec


def service_annotations(settings: Settings) -> dict[str, str]:
    """A LoadBalancer is the endpoint users call, so it faces the internet; on EKS that takes an annotation (the AWS
    Load Balancer Controller and Auto Mode make an internal NLB by default). allowedCidrs still limits clients."""
    if _kube(settings).exposure != "loadBalancer":
        return {}
    key, value = catalog.K8S_AWS_LB_SCHEME_ANNOTATION
    return {key: value}


def ingress_annotations(settings: Settings) -> dict[str, str]:
    kube = _kube(settings)
    notes = {
        # ingress-nginx (documented annotations; other controllers ignore them): long generations and image uploads.
        "nginx.ingress.kubernetes.io/proxy-read-timeout": str(INGRESS_TIMEOUT_SECONDS),
        "nginx.ingress.kubernetes.io/proxy-send-timeout": str(INGRESS_TIMEOUT_SECONDS),
        "nginx.ingress.kubernetes.io/proxy-body-size": INGRESS_BODY_LIMIT,
    }
    if is_gke_ingress(settings):
        notes[catalog.K8S_GKE_INGRESS_ANNOTATION] = str(kube.ingress_class)
    if kube.cert_issuer:
        # cert-manager's ingress-shim issues the certificate into the tls secret named below.
        notes["cert-manager.io/cluster-issuer"] = kube.cert_issuer
        if is_gke_ingress(settings):
            # A Google load balancer per Ingress: cert-manager answers the HTTP-01 challenge through this Ingress
            # rather than a second one (and a second load balancer with another address); cert-manager's docs say
            # it is for compatibility with ingress-gce.
            notes["acme.cert-manager.io/http01-edit-in-place"] = "true"
    return notes


def is_gke_ingress(settings: Settings) -> bool:
    """GKE's own controller serves the Ingress: it is selected by annotation, and its 30 s backend timeout is raised
    by a BackendConfig."""
    kube = _kube(settings)
    return kube.exposure == "ingress" and kube.ingress_class in catalog.K8S_GKE_INGRESS_CLASSES


def ingress_spec(settings: Settings, service_name: pulumi.Input[str]) -> dict[str, object]:
    kube = _kube(settings)
    spec: dict[str, object] = {
        "rules": [{"host": settings.domain, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": service_name, "port": {"name": "http"}}}}]}}],
    }
    if kube.ingress_class and not is_gke_ingress(settings):  # GKE's class goes in the annotation instead
        spec["ingressClassName"] = kube.ingress_class
    if kube.cert_issuer:
        spec["tls"] = [{"hosts": [settings.domain], "secretName": f"{APP}-tls"}]
    return spec


def endpoint_url(settings: Settings, service: k8s.core.v1.Service, namespace: pulumi.Input[str]) -> pulumi.Output[str]:
    """The URL the user will call: the Ingress's host (https when cert-manager issues its certificate), the load
    balancer's address, or the Service's cluster DNS name."""
    kube = _kube(settings)
    if kube.exposure == "ingress":
        scheme = "https" if url_is_https(settings) else "http"
        return pulumi.Output.from_input(f"{scheme}://{settings.domain}")
    if kube.exposure == "internal":
        return pulumi.Output.concat("http://", service.metadata.name, ".", namespace, ".svc.cluster.local")
    return load_balancer_address(service).apply(
        lambda address: (f"http://[{address}]" if ":" in address else f"http://{address}") if address else "")


def load_balancer_address(front: k8s.core.v1.Service | k8s.networking.v1.Ingress) -> pulumi.Output[str]:
    """The address a controller wrote into a LoadBalancer Service's or an Ingress's status (the same
    status.loadBalancer.ingress list: an IP, or a DNS name such as an AWS load balancer's); "" until it is assigned
    (preview). `pulumi up` waits for it before it finishes: pulumi-kubernetes' await logic holds a Service of type
    LoadBalancer, and an Ingress, until that list has an entry."""
    def first(status: object) -> str:
        points = (getattr(getattr(status, "load_balancer", None), "ingress", None) or []) if status else []
        return next((p.ip or p.hostname for p in points if getattr(p, "ip", None) or getattr(p, "hostname", None)),
                    "")

    return front.status.apply(first)


# --- scaling -----------------------------------------------------------------------------------------------------


def keda_query(namespace: str, deployment: str) -> str:
    """Images queued and running across the Deployment's pods, as the cluster's Prometheus scraped them."""
    match = f'namespace="{namespace}",pod=~"{deployment}-.*"'
    return f"sum(sdxl_queue_depth{{{match}}}) + sum(sdxl_in_flight_images{{{match}}})"


def scaled_object_spec(settings: Settings, deployment: str, namespace: str) -> dict[str, object]:
    kube = _kube(settings)
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicaCount": settings.min_replicas,
        "maxReplicaCount": settings.max_replicas,
        "pollingInterval": 15,
        # KEDA creates and owns the HorizontalPodAutoscaler (keda-hpa-<name>); there must be no other one.
        "triggers": [{"type": "prometheus", "metadata": {
            "serverAddress": kube.keda_prometheus_url,
            "query": keda_query(namespace, deployment),
            # AverageValue: replicas = ceil(queued and running images / this).
            "threshold": str(catalog.K8S_QUEUE_TARGET_PER_REPLICA),
        }}],
    }


def hpa_spec(settings: Settings, deployment: str) -> dict[str, object]:
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicas": settings.min_replicas,
        "maxReplicas": settings.max_replicas,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": catalog.K8S_CPU_TARGET_UTILISATION}}}],
        # A new GPU pod takes minutes to be useful: scale out at once, in slowly.
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
    }


def scaling_note(settings: Settings) -> str:
    kube = _kube(settings)
    if settings.max_replicas == settings.min_replicas:
        return f"fixed at {settings.min_replicas} replica(s) (minReplicas = maxReplicas)"
    if kube.keda_prometheus_url:
        return (f"KEDA on the server's queue ({catalog.K8S_QUEUE_TARGET_PER_REPLICA} images per replica), "
                f"{settings.min_replicas}-{settings.max_replicas} replicas")
    return (f"HorizontalPodAutoscaler on CPU ({catalog.K8S_CPU_TARGET_UTILISATION}% of the request), "
            f"{settings.min_replicas}-{settings.max_replicas} replicas: a weak signal for a GPU server. Install KEDA "
            "and set kedaPrometheusUrl to scale on the queue")


def _kube(settings: Settings) -> KubeSettings:
    assert settings.kube is not None, "config.validate sets kube for cloud kubernetes"
    return settings.kube


# --- the component -----------------------------------------------------------------------------------------------


class Endpoint(pulumi.ComponentResource):
    """The SDXL server as a Deployment in an existing cluster."""

    outputs: dict[str, pulumi.Output]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sdxl-endpoint:kubernetes:Endpoint", name, None, opts)
        kube = _kube(settings)
        provider = k8s.Provider(f"{name}-cluster", context=kube.context, opts=pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        namespace = self._namespace(name, settings, child)
        in_namespace = pulumi.ResourceOptions(depends_on=[namespace] if namespace else [])
        ns_opts = pulumi.ResourceOptions.merge(child, in_namespace)
        ns_name = kube.namespace
        meta: dict[str, object] = {"namespace": ns_name, "labels": labels(settings)}
        if settings.ttl:
            meta["annotations"] = {k8s_mark_key("ttl"): settings.ttl}

        token = contract.api_token(settings, parent=self)
        secret_values = hosted.server_secrets(settings, token)
        digest_key = random.RandomPassword(f"{name}-tokens-digest-key", length=64, special=False,
                                           opts=pulumi.ResourceOptions(parent=self))
        tokens = k8s.core.v1.Secret(f"{name}-tokens", metadata={**meta, "name": f"{APP}-tokens"}, type="Opaque",
                                    string_data=secret_values,
                                    opts=pulumi.ResourceOptions.merge(ns_opts, pulumi.ResourceOptions(
                                        additional_secret_outputs=["data", "stringData"])))
        pull_secret = None
        if kube.image_pull_secret is not None:
            pull = k8s.core.v1.Secret(
                f"{name}-pull", metadata={**meta, "name": f"{APP}-pull"}, type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": pulumi.Output.secret(kube.image_pull_secret)},
                opts=pulumi.ResourceOptions.merge(ns_opts, pulumi.ResourceOptions(
                    additional_secret_outputs=["data", "stringData"])))
            pull_secret = pull.metadata.name
        cache = k8s.core.v1.PersistentVolumeClaim(f"{name}-cache", metadata={
            **meta, "name": f"{APP}-model-cache",
            # A claim of a WaitForFirstConsumer class stays Pending until the pod that mounts it is scheduled, and the
            # pod waits for the claim's name: do not wait for Bound (pulumi-kubernetes#895). The Deployment's own
            # rollout wait covers the volume.
            "annotations": {**meta.get("annotations", {}), "pulumi.com/skipAwait": "true"},
        }, spec={
            "accessModes": [cache_access_mode(settings)],
            "resources": {"requests": {"storage": f"{settings.data_disk_gb}Gi"}},
            **({"storageClassName": kube.storage_class} if kube.storage_class else {}),
        }, opts=ns_opts)

        autoscaled = settings.max_replicas > settings.min_replicas
        deployment_name = APP
        deployment = k8s.apps.v1.Deployment(f"{name}-server", metadata={**meta, "name": deployment_name}, spec={
            "replicas": settings.min_replicas,
            "selector": {"matchLabels": selector_labels(settings)},
            "strategy": strategy(settings),
            "template": {
                "metadata": {"labels": labels(settings), "annotations": {
                    # Annotation-based discovery (the Prometheus Helm chart's default scrape config).
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                    # A token change rolls the pods, which read the tokens only at start.
                    TOKENS_DIGEST_ANNOTATION: tokens_digest(secret_values, digest_key.result)}},
                "spec": pod_spec(settings, secret_name=tokens.metadata.name, cache_claim=cache.metadata.name,
                                 pull_secret=pull_secret),
            },
        }, opts=pulumi.ResourceOptions.merge(ns_opts, pulumi.ResourceOptions(
            # The autoscaler owns the replica count once it runs; the first image download can outlast the
            # provider's default 10-minute wait for rollout.
            ignore_changes=["spec.replicas"] if autoscaled else None, custom_timeouts=pulumi.CustomTimeouts(
                create=f"{STARTUP_BUDGET_SECONDS // 60 + 10}m", update=f"{STARTUP_BUDGET_SECONDS // 60 + 10}m"))))

        service_meta = dict(meta, name=APP)
        if is_gke_ingress(settings):
            backend_name = f"{APP}-backend"
            backend = k8s.apiextensions.CustomResource(
                f"{name}-backend", api_version="cloud.google.com/v1", kind="BackendConfig",
                metadata={**meta, "name": backend_name},
                spec={"timeoutSec": INGRESS_TIMEOUT_SECONDS,
                      "healthCheck": {"requestPath": contract.READY_ROUTE, "port": hosted.SERVER_PORT, "type": "HTTP"}},
                opts=ns_opts)
            service_meta["annotations"] = {"cloud.google.com/backend-config": json.dumps({"default": backend_name})}
            ns_opts = pulumi.ResourceOptions.merge(ns_opts, pulumi.ResourceOptions(depends_on=[backend]))
        service_meta["annotations"] = {**service_meta.get("annotations", {}), **service_annotations(settings)}
        service = k8s.core.v1.Service(f"{name}-service", metadata=service_meta, spec=service_spec(settings),
                                      opts=ns_opts)
        # The address the user's DNS record points at: the Ingress's own (its controller's load balancer), or the
        # LoadBalancer Service's. cert-manager's HTTP-01 challenge passes only once `domain` resolves to it.
        public_ip: pulumi.Input[str] = ""
        if kube.exposure == "ingress":
            ingress = k8s.networking.v1.Ingress(f"{name}-ingress", metadata={
                **meta, "name": APP, "annotations": ingress_annotations(settings)},
                spec=ingress_spec(settings, service.metadata.name), opts=ns_opts)
            public_ip = load_balancer_address(ingress)
        elif kube.exposure == "loadBalancer":
            public_ip = load_balancer_address(service)

        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", metadata={**meta, "name": APP}, spec={
            # Node drains (upgrades, scale-in) keep one pod serving; a pod that is not ready may always be evicted,
            # so a stuck one never blocks a drain.
            "minAvailable": 1, "selector": {"matchLabels": selector_labels(settings)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow"}, opts=ns_opts)
        after_deployment = pulumi.ResourceOptions.merge(ns_opts, pulumi.ResourceOptions(depends_on=[deployment]))
        if autoscaled and kube.keda_prometheus_url:
            k8s.apiextensions.CustomResource(f"{name}-scaler", api_version="keda.sh/v1alpha1", kind="ScaledObject",
                                             metadata={**meta, "name": APP},
                                             spec=scaled_object_spec(settings, deployment_name, ns_name),
                                             opts=after_deployment)
        elif autoscaled:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(f"{name}-hpa", metadata={**meta, "name": APP},
                                                       spec=hpa_spec(settings, deployment_name), opts=after_deployment)
        note = scaling_note(settings)
        (pulumi.log.warn if autoscaled and not kube.keda_prometheus_url else pulumi.log.info)(
            f"scaling: {note}", resource=self)
        url = endpoint_url(settings, service, ns_name)
        if not url_is_https(settings):
            pulumi.log.warn("the endpoint is plain http: a browser app served over https cannot call it (mixed "
                            "content). Set domain and certIssuer (exposure ingress) for https.", resource=self)
        context = f"--context {kube.context} " if kube.context else ""
        shell = f"kubectl {context}-n {ns_name} logs -f deployment/{deployment_name}"
        self.outputs = hosted.hosted_outputs(
            settings, endpoint=url, api_token=token, instance_id=f"{ns_name}/deployment/{deployment_name}",
            shell=shell, public_ip=public_ip)
        self.register_outputs(self.outputs)

    @staticmethod
    def _namespace(name: str, settings: Settings, opts: pulumi.ResourceOptions) -> k8s.core.v1.Namespace | None:
        kube = _kube(settings)
        if not kube.create_namespace:
            return None
        # Pod Security Admission: the namespace accepts only pods that meet the `restricted` standard, as ours does.
        security = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
        return k8s.core.v1.Namespace(f"{name}-namespace", metadata={
            "name": kube.namespace, "labels": {**labels(settings), **security}}, opts=opts)


def url_is_https(settings: Settings) -> bool:
    kube = _kube(settings)
    return kube.exposure == "ingress" and bool(kube.cert_issuer)

