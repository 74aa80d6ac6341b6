"""GCP: the checks (`check`) and the zones that offer the GPU (`suggest`), through google-cloud-compute.

`GcpApi` loads the application-default credentials and wraps every Compute Engine call with a
timeout, turning failures into a RemoteError that says what to do. The same three names, `check`,
`suggest` and an Api class, stand in aws.py.
"""

from __future__ import annotations

from typing import Any

from stacks import catalog
from tools.doctor import (
    FAIL,
    OK,
    READ_TIMEOUT_S,
    WARN,
    RemoteError,
    Report,
    Runner,
    Suggestion,
    Target,
    sort_suggestions,
)

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# Tests point the real clients at a local fake of the Compute REST API; None is Google's endpoint.
API_ENDPOINT: str | None = None


def quota_fix(project: str, metric: str, desired: int, region: str | None) -> str:
    """The console page and the gcloud command that ask for more of a Compute Engine quota."""
    quota_id = metric.replace("_", "-") + ("-per-project-region" if region else "-per-project")
    dimensions = f" --dimensions=region={region}" if region else ""
    where = f" in {region}" if region else ""
    return (f"request {metric} >= {desired}{where} at https://console.cloud.google.com/iam-admin/quotas"
            f"?project={project} (filter: {metric}), or: gcloud quotas preferences create "
            f"--service=compute.googleapis.com --project={project} --quota-id={quota_id} "
            f"--preferred-value={desired}{dimensions} --email=YOU@example.com")


def _find_quota(quotas, metric: str):
    return next((q for q in quotas if q.metric == metric), None)


def _gpu_quota(quotas, metric: str, spot: bool):
    """(the metric a VM counts against, its quota or None): PREEMPTIBLE_<metric> for spot where granted."""
    used_metric = metric
    if spot:
        preemptible = _find_quota(quotas, f"PREEMPTIBLE_{metric}")
        if preemptible is not None and preemptible.limit > 0:
            used_metric = preemptible.metric
    return used_metric, _find_quota(quotas, used_metric)


# --- the SDK, with timeouts --------------------------------------------------------------------


class GcpApi:
    """Application-default credentials and the Compute Engine clients, all with timeouts."""

    def __init__(self):
        self._credentials = None
        self._adc_project: str | None = None
        self._adc_error: RemoteError | None = None
        self._loaded = False
        self._clients: dict[str, Any] = {}

    def load_credentials(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import google.auth
        from google.auth import exceptions as gx

        try:
            self._credentials, self._adc_project = google.auth.default(scopes=SCOPES)
        except gx.DefaultCredentialsError as err:
            reason = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
            self._adc_error = RemoteError(f"no application-default credentials ({reason})",
                                          "gcloud auth application-default login", blocking=True)

    def adc_project(self) -> str | None:
        self.load_credentials()
        return self._adc_project

    def credentials(self):
        """Loaded and refreshed once, with a bounded token request; RemoteError when unusable."""
        self.load_credentials()
        if self._adc_error:
            raise self._adc_error
        if not self._credentials.valid:
            import google.auth.transport.requests
            from google.auth import exceptions as gx

            class BoundedRequest(google.auth.transport.requests.Request):
                def __call__(self, *args, timeout=None, **kwargs):
                    return super().__call__(*args, timeout=min(timeout or READ_TIMEOUT_S, READ_TIMEOUT_S),
                                            **kwargs)

            try:
                self._credentials.refresh(BoundedRequest())
            except gx.RefreshError as err:
                self._adc_error = RemoteError(f"Google rejected the credentials ({err})",
                                              "gcloud auth application-default login", blocking=True)
                raise self._adc_error from err
            except gx.TransportError as err:
                self._adc_error = RemoteError(f"cannot reach Google's token endpoint ({err})",
                                              "check the network, proxy (HTTPS_PROXY) and firewall",
                                              blocking=True)
                raise self._adc_error from err
        return self._credentials

    def identity(self) -> str:
        credentials = self.credentials()
        email = getattr(credentials, "service_account_email", None)
        return f"service account {email}" if email and "@" in email else "user credentials"

    def client(self, kind: str):
        if kind not in self._clients:
            from google.cloud import compute_v1

            options = {"api_endpoint": API_ENDPOINT} if API_ENDPOINT else None
            self._clients[kind] = getattr(compute_v1, kind)(credentials=self.credentials(), client_options=options)
        return self._clients[kind]

    def call(self, kind: str, method: str, **params):
        """One Compute Engine call, no retries beyond the timeout; failures become RemoteError."""
        from google.api_core import exceptions as gax
        from google.auth import exceptions as gx

        try:
            return getattr(self.client(kind), method)(**params, timeout=READ_TIMEOUT_S, retry=None)
        except gax.Forbidden as err:
            text = str(err)
            project = params.get("project", "")
            if "SERVICE_DISABLED" in text or "accessNotConfigured" in text or "has not been used" in text:
                raise RemoteError(f"the Compute Engine API is disabled in project {project}",
                                  f"gcloud services enable compute.googleapis.com --project={project}",
                                  blocking=True) from err
            raise RemoteError(f"permission denied ({err.message})",
                              f"grant your account roles/compute.viewer on project {project}") from err
        except gax.Unauthorized as err:
            raise RemoteError(f"Google rejected the credentials ({err.message})",
                              "gcloud auth application-default login", blocking=True) from err
        except gax.NotFound:
            raise
        except gax.GoogleAPICallError as err:
            raise RemoteError(f"{type(err).__name__}: {err.message}") from err
        except (gx.TransportError, gx.RefreshError, OSError) as err:  # requests' errors are OSErrors
            raise RemoteError(f"cannot reach Compute Engine ({type(err).__name__}: {err})",
                              "check the network, proxy (HTTPS_PROXY) and firewall", blocking=True) from err

    def zones_with(self, project: str, accelerator: str) -> list[str]:
        """Every zone that offers the accelerator, from one aggregated list."""
        from google.cloud import compute_v1

        request = compute_v1.AggregatedListAcceleratorTypesRequest(project=project, filter=f"name = {accelerator}")
        pages = self.call("AcceleratorTypesClient", "aggregated_list", request=request)
        zones = []
        for scope, scoped in pages:
            if any(a.name == accelerator for a in scoped.accelerator_types):
                zones.append(scope.rsplit("/", 1)[-1])
        return sorted(zones)


# --- the checks --------------------------------------------------------------------------------


def _check_addresses(report: Report, project: str, region: str, quotas, replicas: int) -> None:
    """A fleet's VMs each hold an ephemeral external address (their way out, without Cloud NAT), which counts
    against the region's IN_USE_ADDRESSES."""
    quota = _find_quota(quotas, catalog.GCP_IN_USE_ADDRESSES_QUOTA)
    if quota is None:
        return
    measured = (f"{catalog.GCP_IN_USE_ADDRESSES_QUOTA} in {region}: limit {quota.limit:g}, in use {quota.usage:g}, "
                f"{replicas} needed (one per VM of the fleet)")
    if quota.limit - quota.usage < replicas:
        report.add("regional-quota", FAIL, measured,
                   quota_fix(project, catalog.GCP_IN_USE_ADDRESSES_QUOTA, int(quota.usage) + replicas, region))
    else:
        report.add("regional-quota", OK, measured)


def check(target: Target, api: GcpApi, report: Report, with_suggest: bool) -> None:
    """The checks in order: credentials, compute-api, accelerator, machine-type, regional-quota,
    global-quota, image. Then, with --suggest, the zones that offer the GPU."""
    from google.api_core import exceptions as gax

    try:
        identity = api.identity()
        adc = api.adc_project()
        note = f"; their own project is {adc}" if adc and adc != target.project else ""
        report.add("credentials", OK, f"application-default credentials: {identity}{note}")
    except RemoteError as err:
        report.add_error("credentials", err)
        return
    machine, project, zone, region = target.machine, target.project, target.zone, target.region
    if machine is None or not project or not zone or not region:
        return

    try:
        project_info = api.call("ProjectsClient", "get", project=project)
        report.add("compute-api", OK, f"project {project_info.name} (number {project_info.id}) answers")
    except gax.NotFound:
        report.add("compute-api", FAIL, f"project {project} does not exist or is not visible to these credentials",
                   "pulumi config set gcp:project <your-project-id> (gcloud projects list shows them)")
        return
    except RemoteError as err:
        report.add_error("compute-api", err)
        return  # the remaining checks are calls to the same API

    gpu = catalog.GCP_ACCELERATORS[machine.gpu.key]
    accelerator, metric = gpu.type, gpu.quota_metric
    other_zones: list[str] | None = None

    def zones_fix(what: str) -> str:
        nonlocal other_zones
        if other_zones is None:
            try:
                other_zones = api.zones_with(project, accelerator)
            except (RemoteError, gax.GoogleAPICallError):
                other_zones = list(catalog.GCP_ACCELERATOR_ZONES.get(machine.gpu.key, ()))
        near = [z for z in other_zones if z.startswith(region + "-")] or other_zones
        if not near:
            return f"no zone lists {accelerator}: choose another gpu"
        return (f"pulumi config set gcp:zone {near[0]} (and gcp:region {near[0].rsplit('-', 1)[0]}); "
                f"zones with {what}: {', '.join(near[:8])}")

    # Compute Engine answers NotFound for a zone, machine type, region or image that does not exist.
    runner = Runner(report, not_found=gax.NotFound)

    def accelerator_check() -> None:
        found = api.call("AcceleratorTypesClient", "get", project=project, zone=zone, accelerator_type=accelerator)
        report.add("accelerator", OK, f"{zone} offers {found.name} (up to {found.maximum_cards_per_instance} per VM)")

    runner.run("accelerator", accelerator_check,
            lambda: (f"{zone} does not offer {accelerator}", zones_fix(accelerator)))

    def machine_check() -> None:
        found = api.call("MachineTypesClient", "get", project=project, zone=zone, machine_type=machine.name)
        built_in = ", ".join(f"{a.guest_accelerator_count}x {a.guest_accelerator_type}" for a in found.accelerators)
        extra = f", built-in {built_in}" if built_in else f", plus 1x {accelerator} attached"
        report.add("machine-type", OK, f"{found.name}: {found.guest_cpus} vCPUs, "
                                       f"{found.memory_mb / 1024:g} GB RAM{extra}")

    runner.run("machine-type", machine_check,
            lambda: (f"{zone} has no machine type {machine.name}", zones_fix(accelerator)))

    # A fleet needs a GPU, and an external address for its downloads, for each of its maxReplicas VMs.
    needed = machine.gpu_count * target.replicas

    def regional_quota() -> None:
        quotas = api.call("RegionsClient", "get", project=project, region=region).quotas
        used_metric, quota = _gpu_quota(quotas, metric, target.spot)
        if quota is None:
            report.add("regional-quota", FAIL, f"{region} lists no {metric} quota: the region has no {accelerator}",
                       zones_fix(accelerator))
            return
        free = quota.limit - quota.usage
        measured = f"{used_metric} in {region}: limit {quota.limit:g}, in use {quota.usage:g}, {needed} needed"
        # A rollout at maxReplicas starts one new VM per zone before an old one leaves.
        surge = machine.gpu_count * len(catalog.gcp_fleet_zones(machine.gpu.key, region)) if target.replicas > 1 else 0
        if free < needed:
            report.add("regional-quota", FAIL, measured,
                       quota_fix(project, used_metric, int(quota.usage) + needed, region))
        elif free < needed + surge:
            report.add("regional-quota", WARN, f"{measured}; a rollout at maxReplicas starts one VM per zone first "
                       f"and needs {needed + surge}: it would stall on quota until some VMs leave (capacity never "
                       "drops)", quota_fix(project, used_metric, int(quota.usage) + needed + surge, region))
        else:
            report.add("regional-quota", OK, measured)
        if target.replicas > 1:
            _check_addresses(report, project, region, quotas, target.replicas)

    runner.run("regional-quota", regional_quota, lambda: (f"region {region} not found", zones_fix(accelerator)))

    global_metric = catalog.GCP_GLOBAL_GPU_QUOTA
    quota = _find_quota(project_info.quotas, global_metric)
    if quota is None:
        report.add("global-quota", WARN, f"the project lists no {global_metric} quota; not checked")
    else:
        measured = f"{global_metric}: limit {quota.limit:g}, in use {quota.usage:g}, {needed} needed"
        if quota.limit - quota.usage < needed:
            report.add("global-quota", FAIL, measured,
                       quota_fix(project, global_metric, int(quota.usage) + needed, None))
        else:
            report.add("global-quota", OK, measured)

    def image_check() -> None:
        image = api.call("ImagesClient", "get_from_family", project=catalog.GCP_DLVM_IMAGE_PROJECT,
                         family=catalog.GCP_DLVM_IMAGE_FAMILY)
        state = image.deprecated.state if image.deprecated else ""
        value = f"{image.name} (family {catalog.GCP_DLVM_IMAGE_FAMILY}, created {image.creation_timestamp[:10]})"
        if state in ("DEPRECATED", "OBSOLETE", "DELETED"):
            report.add("image", WARN, f"{value} is {state}",
                       "update GCP_DLVM_IMAGE_FAMILY in stacks/catalog.py to a current family")
        else:
            report.add("image", OK, value)

    runner.run("image", image_check, lambda: (
        f"image family {catalog.GCP_DLVM_IMAGE_FAMILY} not found in {catalog.GCP_DLVM_IMAGE_PROJECT}",
        "update GCP_DLVM_IMAGE_FAMILY in stacks/catalog.py; current families: gcloud compute images list "
        f"--project={catalog.GCP_DLVM_IMAGE_PROJECT} --no-standard-images --filter='family~^common-cu'"))

    if with_suggest:
        report.suggestions = suggest(target, api)


# --- --suggest ---------------------------------------------------------------------------------


def suggest(target: Target, api: GcpApi) -> list[Suggestion]:
    """Every zone that offers the target's GPU, with its regional quota; priced from the catalog."""
    from google.api_core import exceptions as gax

    machine, project = target.machine, target.project
    gpu = catalog.GCP_ACCELERATORS[machine.gpu.key]
    accelerator, metric = gpu.type, gpu.quota_metric
    try:
        zones = api.zones_with(project, accelerator)
        regions = {r.name: r.quotas for r in api.call("RegionsClient", "list", project=project)}
    except (RemoteError, gax.GoogleAPICallError):
        return []  # suggestions are extra; the checks already reported what failed
    price_source = f"catalog list price (us-central1, {catalog.PRICES_AS_OF}); regional prices differ"
    found = []
    for zone in zones:
        used_metric, quota = _gpu_quota(regions.get(zone.rsplit("-", 1)[0], []), metric, target.spot)
        if quota is None:
            state, detail = "unknown", f"{metric}: not listed"
        else:
            free = quota.limit - quota.usage
            state = "available" if free >= machine.gpu_count else "insufficient"
            detail = f"{used_metric}: {free:g} free of {quota.limit:g}"
        found.append(Suggestion(location=zone, zones=[zone], machine_type=machine.name,
                                usd_per_hour=machine.usd_per_hour, price_source=price_source, quota=state,
                                quota_detail=detail))
    return sort_suggestions(found)
