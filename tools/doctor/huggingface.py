"""Hugging Face Inference Endpoints: the checks (`check`) and the hardware available now (`suggest`), through
huggingface_hub with the operator's HF_TOKEN (or `hf auth login`).

The API exposes the namespace's accelerator quota per hardware (list_inference_endpoints_hardware), not its spend:
the `quota` check is that; there is no spend check.
"""

from __future__ import annotations

from typing import Any

from stacks import catalog
from tools.doctor import FAIL, OK, WARN, RemoteError, Report, Runner, Suggestion, Target, sort_suggestions

QUOTA_FIX = "ask Hugging Face for quota on this hardware: https://endpoints.huggingface.co/contact"
USABLE = ("available", "low_availability")  # of the statuses InferenceEndpointHardware documents
PRICE_SOURCE = "Hugging Face API, live (list_inference_endpoints_hardware)"


class HuggingFaceApi:
    """huggingface_hub with the operator's token; every failure becomes a RemoteError that says what to do."""

    def __init__(self) -> None:
        self._api: Any = None

    def api(self) -> Any:
        if self._api is None:
            import os

            import huggingface_hub

            token = os.environ.get("HF_TOKEN", "").strip() or huggingface_hub.get_token()
            if not token:
                raise RemoteError("no Hugging Face token", "export HF_TOKEN=<a token with write access to Inference "
                                  "Endpoints>, or run `hf auth login`", blocking=True)
            self._api = huggingface_hub.HfApi(token=token)
        return self._api

    def call(self, method: str, **params: Any) -> Any:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return getattr(self.api(), method)(**params)
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status == 401:
                raise RemoteError("Hugging Face rejected the token (HTTP 401)", "export HF_TOKEN=<a valid token> "
                                  "(HF_TOKEN takes precedence over `hf auth login`)", blocking=True) from err
            raise RemoteError(f"Hugging Face answered HTTP {status}: {err}") from err
        except OSError as err:  # httpx's transport errors are OSErrors
            raise RemoteError(f"cannot reach Hugging Face ({type(err).__name__}: {err})",
                              "check the network, proxy (HTTPS_PROXY) and firewall", blocking=True) from err


def _fits(hw: Any) -> bool:
    # The live memory, not the card's: Hugging Face lists AWS's T4 with 14 GB (catalog.HF_LISTED_MEMORY_GB).
    return (hw.accelerator == "gpu" and hw.instance_type in catalog.HF_GPU_TYPES
            and hw.instance_size == catalog.HF_ONE_GPU
            and (hw.gpu_memory_gb or 0) >= catalog.SDXL_MIN_GPU_MEMORY_GB)


def _free(hw: Any) -> int:
    return hw.max_accelerators - hw.used_accelerators


def check(target: Target, api: HuggingFaceApi, report: Report, with_suggest: bool) -> None:
    """credentials, hardware (listed), availability (usable now), quota (accelerators free); then --suggest. A
    rejected token or a lost network skips what follows (Runner)."""
    runner = Runner(report)
    namespace = target.namespace or ""
    hardware: list[Any] = []

    def credentials() -> None:
        nonlocal namespace
        user = api.call("whoami")
        namespace = namespace or user["name"]
        report.add("credentials", OK, f"token of {user['name']}; endpoints go to namespace {namespace}")

    def listed() -> None:
        hardware.extend(api.call("list_inference_endpoints_hardware", namespace=namespace))
        _judge(target, namespace, hardware, report)

    if not runner.run("credentials", credentials) or target.machine is None:
        return
    if runner.run("hardware", listed) and with_suggest:
        report.suggestions = suggest(hardware, target.replicas)


def _judge(target: Target, namespace: str, hardware: list[Any], report: Report) -> None:
    """hardware, availability and quota, from the namespace's live hardware list."""
    wanted = target.machine.name
    found = next((hw for hw in hardware if hw.id == wanted), None)
    if found is None:
        same_gpu = [hw.id for hw in hardware if hw.instance_type == target.machine.instance_type and _fits(hw)]
        report.add("hardware", FAIL, f"Hugging Face lists no {wanted} for {namespace}",
                   f"pulumi config set hfHardware {same_gpu[0]}" if same_gpu
                   else "python -m tools.doctor --cloud huggingface --suggest lists what there is")
        return
    report.add("hardware", OK, f"{found.id}: {found.architecture}, {found.gpu_memory_gb} GB, "
                               f"${found.price_per_hour:g}/h")
    if found.status in USABLE:
        report.add("availability", OK if found.status == "available" else WARN, f"{found.id} is {found.status}")
    else:
        report.add("availability", FAIL, f"{found.id} is {found.status}",
                   "pick hardware that is available now: python -m tools.doctor --stack <stack> --suggest")
    needed = _needed(found, target.replicas)
    per_replica = (f" ({target.replicas} replicas x {found.num_accelerators})" if target.replicas > 1 else "")
    measured = (f"{namespace}: {found.used_accelerators} of {found.max_accelerators} {found.instance_type} in "
                f"use, {needed} needed{per_replica}")
    if _free(found) >= needed:
        report.add("quota", OK, measured)
    else:
        report.add("quota", FAIL, measured, QUOTA_FIX)


def _needed(hw: Any, replicas: int) -> int:
    """An endpoint may scale up to maxReplicas replicas, each on accelerators of its own."""
    return hw.num_accelerators * replicas


def suggest(hardware: list[Any], replicas: int = 1) -> list[Suggestion]:
    """Every fitting hardware id that is usable now, cheapest first, with the namespace's quota for `replicas`."""
    found = [Suggestion(location=f"{hw.vendor} {hw.region}", zones=[hw.region], machine_type=hw.id,
                        usd_per_hour=hw.price_per_hour, price_source=PRICE_SOURCE,
                        quota="available" if _free(hw) >= _needed(hw, replicas) else "insufficient",
                        quota_detail=f"{_free(hw)} of {hw.max_accelerators} {hw.instance_type} free")
             for hw in hardware if _fits(hw) and hw.status in USABLE]
    return sort_suggestions(found)
