"""The Hugging Face Inference Endpoint: this project's server image on a dedicated, public endpoint.

There is no maintained Pulumi provider for Inference Endpoints, so `EndpointProvider` is a dynamic provider
(`pulumi.dynamic.ResourceProvider`) over the official `huggingface_hub` SDK: create, read, diff, update and
delete, each one SDK call against `https://api.endpoints.huggingface.cloud/v2` (huggingface_hub's
INFERENCE_ENDPOINTS_ENDPOINT). The API key is the operator's HF_TOKEN (or `hf auth login`), read when the provider
runs and never stored in the state; the server's own tokens travel as the endpoint's secrets and stay Pulumi
secrets in the state.

- `custom_image` runs our image (url, port 8000, health route), `env` carries the server's settings and `secrets`
  its tokens; `type="public"`, so our bearer token is the gate and browsers never need a Hugging Face token.
- The model: Inference Endpoints mount the endpoint's `repository` at /repository ("always load your model from
  /repository", its custom container guide), so the server loads it from there.
- Idle stop: `min_replica=0` with `scale_to_zero_timeout=idleStopMinutes`; up to `maxReplicas` replicas. A request
  to a scaled-to-zero endpoint wakes it (Hugging Face answers 503 while a replica starts).
- `pulumi destroy` deletes the endpoint, and with it every replica and their billing.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pulumi
import pulumi.dynamic as dynamic

from stacks import contract, hosted
from stacks.config import MachineLookup, Settings

# No preview-time look-up: the catalog judges the hardware; the doctor checks it against the live list.
describe_machine: MachineLookup | None = None

# Inference Endpoints mounts the endpoint's repository here (its custom container guide).
MOUNTED_MODEL = "/repository"
FRAMEWORK = "custom"  # huggingface_hub's CLI: a custom image "requires --framework custom"
TASK = "text-to-image"
ENDPOINT_TYPE = "public"  # "anyone can access your endpoint, without authentication": our token is the gate
ACCELERATOR = "gpu"
# Properties a change of which needs a new endpoint: update_inference_endpoint cannot move one, rename it, or
# change who may call it.
REPLACE_ON = ("name", "namespace", "vendor", "region", "endpointType")
# Properties update_inference_endpoint changes in place.
UPDATE_IN_PLACE = ("accelerator", "instanceType", "instanceSize", "minReplica", "maxReplica", "scaleToZeroTimeout",
                   "repository", "framework", "task", "imageUrl", "port", "healthRoute", "env", "secrets")
# Creation waits for the endpoint to run; a first start pulls the image (several GB) before anything answers.
CREATE_TIMEOUT_S = 30 * 60
POLL_S = 10
DELETE_TIMEOUT_S = 10 * 60  # how long a delete waits for the name to be free


class HuggingFaceError(Exception):
    """What went wrong, in words the operator can act on."""


def _api() -> Any:
    """The SDK client, with the operator's token: HF_TOKEN, else the one `hf auth login` stored."""
    import huggingface_hub

    token = os.environ.get("HF_TOKEN", "").strip() or huggingface_hub.get_token()
    if not token:
        raise hosted.ProviderKeyMissing(
            "no Hugging Face token: export HF_TOKEN=<a token with write access to Inference Endpoints> (or run "
            "`hf auth login`) before pulumi up, refresh or destroy")
    return huggingface_hub.HfApi(token=token)


def _explain(err: Exception, doing: str) -> HuggingFaceError:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        hint = {401: "HF_TOKEN was rejected", 403: "HF_TOKEN may not manage Inference Endpoints in this namespace",
                402: "the namespace has no payment method for Inference Endpoints"}.get(status, "")
        return HuggingFaceError(f"{doing}: HTTP {status} {err.response.text[:500]}" + (f" ({hint})" if hint else ""))
    return HuggingFaceError(f"{doing}: {type(err).__name__}: {err}")


def _is_not_found(err: Exception) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    return isinstance(err, HfHubHTTPError) and err.response is not None and err.response.status_code == 404


def _custom_image(props: dict[str, Any]) -> dict[str, Any]:
    # A flat dict with a `url`: the SDK sends it as the API's {"custom": {...}} image.
    return {"url": props["imageUrl"], "port": int(props["port"]), "healthRoute": props["healthRoute"]}


def live_properties(raw: dict[str, Any]) -> dict[str, Any]:
    """The endpoint as the API describes it, in this resource's property names (secrets are not read back)."""
    compute, model, provider = raw.get("compute") or {}, raw.get("model") or {}, raw.get("provider") or {}
    scaling = compute.get("scaling") or {}
    image = (model.get("image") or {}).get("custom") or {}
    status = raw.get("status") or {}
    return {
        "name": raw.get("name"), "vendor": provider.get("vendor"), "region": provider.get("region"),
        "accelerator": compute.get("accelerator"), "instanceType": compute.get("instanceType"),
        "instanceSize": compute.get("instanceSize"), "minReplica": scaling.get("minReplica"),
        "maxReplica": scaling.get("maxReplica"), "scaleToZeroTimeout": scaling.get("scaleToZeroTimeout"),
        "repository": model.get("repository"), "framework": model.get("framework"), "task": model.get("task"),
        "imageUrl": image.get("url"), "port": image.get("port"), "healthRoute": image.get("healthRoute"),
        "env": model.get("env") or {}, "endpointType": raw.get("type"),
        "url": status.get("url"), "status": status.get("state"),
    }


class EndpointProvider(dynamic.ResourceProvider):
    """Create, read, diff, update and delete one Inference Endpoint through huggingface_hub."""

    def __init__(self, create_timeout_s: float = CREATE_TIMEOUT_S, poll_s: float = POLL_S) -> None:
        super().__init__()
        self.create_timeout_s = create_timeout_s
        self.poll_s = poll_s

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        api = _api()
        namespace = props.get("namespace") or api.whoami()["name"]
        name = props["name"]
        try:
            endpoint = api.create_inference_endpoint(
                name, namespace=namespace, repository=props["repository"], framework=props["framework"],
                task=props["task"], accelerator=props["accelerator"], vendor=props["vendor"], region=props["region"],
                instance_type=props["instanceType"], instance_size=props["instanceSize"],
                min_replica=int(props["minReplica"]), max_replica=int(props["maxReplica"]),
                scale_to_zero_timeout=props.get("scaleToZeroTimeout"), custom_image=_custom_image(props),
                env=dict(props["env"]), secrets=dict(props["secrets"]), type=props["endpointType"],
                tags=list(props.get("tags") or []),
            )
        except Exception as err:  # noqa: BLE001 - the API refused: nothing was created
            raise _explain(err, f"creating Inference Endpoint {namespace}/{name}") from err
        try:
            endpoint.wait(timeout=self.create_timeout_s, refresh_every=self.poll_s)
        except Exception as err:  # noqa: BLE001 - failed or never ran: remove it, so nothing is left behind
            self._delete(api, name, namespace)
            raise HuggingFaceError(
                f"Inference Endpoint {namespace}/{name} did not start ({err}); it was deleted again. Its logs are "
                "under Logs on https://endpoints.huggingface.co/endpoints until then; check that `image` can be "
                "pulled without credentials") from err
        return dynamic.CreateResult(name, {**props, "namespace": namespace, "url": endpoint.url,
                                           "status": endpoint.status})

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        api = _api()
        try:
            endpoint = api.get_inference_endpoint(id_, namespace=props.get("namespace"))
        except Exception as err:  # noqa: BLE001
            if _is_not_found(err):
                return dynamic.ReadResult("", {})  # deleted outside Pulumi: refresh drops it
            raise _explain(err, f"reading Inference Endpoint {id_}") from err
        live = {key: value for key, value in live_properties(endpoint.raw).items() if value is not None}
        # The API does not give secrets back: keep the ones the state holds.
        return dynamic.ReadResult(id_, {**props, **live})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = [key for key in (*REPLACE_ON, *UPDATE_IN_PLACE) if _differs(olds.get(key), news.get(key))]
        # Idle stop turned off (minReplica > 0, no timeout): update_inference_endpoint leaves an unset timeout out,
        # so the live endpoint keeps its old one and refresh reads it back. It scales nothing to zero while
        # minReplica > 0, so it is no change to make.
        if "scaleToZeroTimeout" in changed and news.get("scaleToZeroTimeout") is None and _replicas_kept(news):
            changed.remove("scaleToZeroTimeout")
        # A namespace left unset means "the token's user", which create resolved and recorded.
        if "namespace" in changed and news.get("namespace") is None:
            changed.remove("namespace")
        replaces = [key for key in changed if key in REPLACE_ON]
        # The name is fixed, so the old endpoint must go before its replacement can take the name.
        return dynamic.DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        api = _api()
        namespace = olds.get("namespace")
        try:
            endpoint = api.update_inference_endpoint(
                id_, namespace=namespace, accelerator=news["accelerator"], instance_type=news["instanceType"],
                instance_size=news["instanceSize"], min_replica=int(news["minReplica"]),
                max_replica=int(news["maxReplica"]), scale_to_zero_timeout=news.get("scaleToZeroTimeout"),
                repository=news["repository"], framework=news["framework"], task=news["task"],
                custom_image=_custom_image(news), env=dict(news["env"]), secrets=dict(news["secrets"]),
            )
        except Exception as err:  # noqa: BLE001
            raise _explain(err, f"updating Inference Endpoint {namespace}/{id_}") from err
        return dynamic.UpdateResult({**news, "namespace": namespace, "url": endpoint.url or olds.get("url"),
                                     "status": endpoint.status})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        self._delete(_api(), id_, props.get("namespace"))

    def _delete(self, api: Any, name: str, namespace: str | None) -> None:
        """Delete the endpoint and return once it is gone. A replacement (delete_before_replace) takes the same
        name next, which the API refuses while the old endpoint still exists; nothing documents whether deletion
        finishes before the DELETE answers, so wait for a 404 rather than assume it."""
        try:
            api.delete_inference_endpoint(name, namespace=namespace)
        except Exception as err:  # noqa: BLE001
            if not _is_not_found(err):  # already gone is what delete wants
                raise _explain(err, f"deleting Inference Endpoint {namespace}/{name}") from err
            return
        deadline = time.monotonic() + DELETE_TIMEOUT_S
        while True:
            try:
                api.get_inference_endpoint(name, namespace=namespace)
            except Exception as err:  # noqa: BLE001
                if _is_not_found(err):
                    return
                raise _explain(err, f"waiting for Inference Endpoint {namespace}/{name} to be deleted") from err
            if time.monotonic() + self.poll_s > deadline:
                raise HuggingFaceError(f"Inference Endpoint {namespace}/{name} was still being deleted after "
                                       f"{DELETE_TIMEOUT_S} s; check https://endpoints.huggingface.co/endpoints, "
                                       "then run the command again")
            time.sleep(self.poll_s)


def _replicas_kept(props: dict[str, Any]) -> bool:
    minimum = props.get("minReplica")
    return isinstance(minimum, int | float) and minimum > 0


def _differs(old: Any, new: Any) -> bool:
    # An unknown value (preview of a value computed later) may differ; numbers may come back as floats.
    if isinstance(old, int | float) and isinstance(new, int | float):
        return float(old) != float(new)
    return old != new


class InferenceEndpoint(dynamic.Resource, module="huggingface", name="InferenceEndpoint"):
    """One Inference Endpoint (Pulumi type pulumi-python:dynamic/huggingface:InferenceEndpoint)."""

    url: pulumi.Output[str]
    status: pulumi.Output[str]
    namespace: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(EndpointProvider(), name, {**props, "url": None, "status": None}, pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["secrets"])))


def endpoint_properties(settings: Settings, secrets: pulumi.Output[dict[str, str]]) -> dict[str, Any]:
    """The endpoint's inputs, from the validated settings (the hardware is a catalog.HostedOffer)."""
    machine = settings.machine
    idle = settings.idle_stop_minutes
    return {
        "name": hosted.endpoint_name(settings.stack),
        "namespace": settings.hf_namespace,
        "repository": settings.model,
        "framework": FRAMEWORK,
        "task": TASK,
        "accelerator": ACCELERATOR,
        "vendor": machine.vendor,
        "region": machine.region,
        "instanceType": machine.instance_type,
        "instanceSize": machine.instance_size,
        # Scale to zero after idleStopMinutes without a request; 0 keeps minReplicas running.
        "minReplica": 0 if idle > 0 else max(settings.min_replicas, 1),
        "maxReplica": settings.max_replicas,
        "scaleToZeroTimeout": idle if idle > 0 else None,
        "imageUrl": settings.image,
        "port": hosted.SERVER_PORT,
        "healthRoute": hosted.PROBE_ROUTE,
        # Hugging Face documents no time limit on its front, so no wait budget is set (the server's
        # request_timeout still bounds each request).
        "env": hosted.server_env(settings, model=MOUNTED_MODEL),
        "secrets": secrets,
        "endpointType": ENDPOINT_TYPE,
        "tags": ["sdxl-endpoint", hosted.endpoint_name(settings.stack)],
    }


class Endpoint(pulumi.ComponentResource):
    """The SDXL server on a Hugging Face Inference Endpoint."""

    outputs: dict[str, pulumi.Output]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sdxl-endpoint:huggingface:Endpoint", name, None, opts)
        token = contract.api_token(settings, parent=self)
        endpoint = InferenceEndpoint(f"{name}-endpoint", endpoint_properties(settings, hosted.server_secrets(
            settings, token)), pulumi.ResourceOptions(parent=self))
        shell = pulumi.Output.concat(
            "no shell into an Inference Endpoint: its logs are under Logs of endpoint ", endpoint.id,
            " on https://endpoints.huggingface.co/endpoints")
        self.outputs = hosted.hosted_outputs(settings, endpoint=endpoint.url, api_token=token,
                                             instance_id=endpoint.id, shell=shell)
        self.register_outputs(self.outputs)
