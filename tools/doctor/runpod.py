"""RunPod: the checks (`check`) and the GPU types in stock now (`suggest`), through the official runpod SDK with
the operator's RUNPOD_API_KEY.

The SDK's get_user proves the key; its GraphQL transport (run_graphql_query) asks what the SDK has no function
for, with the fields RunPod documents: a GPU type's stock (`lowestPrice(input: {gpuCount, secureCloud})
{ stockStatus uninterruptablePrice }`, RunPod's GraphQL guide "Check GPU availability") and the account's
balance and spend (`clientBalance`, `currentSpendPerHr`, `spendLimit`, as `runpodctl user` shows them).
"""

from __future__ import annotations

import os
from typing import Any

from stacks import catalog
from tools.doctor import FAIL, OK, WARN, RemoteError, Report, Runner, Suggestion, Target, sort_suggestions

IN_STOCK = ("High", "Medium")
PRICE_SOURCE = "RunPod API, live (uninterruptable on-demand price)"
KEY_FIX = "create a key at https://www.console.runpod.io/user/settings (API Keys) and export RUNPOD_API_KEY=<key>"


def gpu_query(gpu_type: str | None, secure: bool) -> str:
    """One GPU type (or all) with its price and stock in the cloud type (RunPod's documented fields)."""
    selector = f'(input: {{id: "{gpu_type}"}})' if gpu_type else ""
    return (f"query {{ gpuTypes{selector} {{ id displayName memoryInGb secureCloud communityCloud securePrice "
            f"communityPrice lowestPrice(input: {{gpuCount: 1, secureCloud: {str(secure).lower()}}}) "
            "{ stockStatus uninterruptablePrice } } }")


ACCOUNT_QUERY = "query { myself { id clientBalance currentSpendPerHr spendLimit } }"


class RunPodApi:
    """The runpod SDK with the operator's key; every failure becomes a RemoteError that says what to do."""

    def call(self, what: str, *args: Any) -> Any:
        import runpod
        from runpod import error
        from runpod.api.graphql import run_graphql_query

        key = os.environ.get("RUNPOD_API_KEY", "").strip()
        if not key:
            raise RemoteError("RUNPOD_API_KEY is not set", KEY_FIX, blocking=True)
        runpod.api_key = key
        try:
            if what == "query":
                return run_graphql_query(*args)["data"]
            return getattr(runpod, what)(*args)
        except error.AuthenticationError as err:
            raise RemoteError(f"RunPod rejected the key ({err})", KEY_FIX, blocking=True) from err
        except error.QueryError as err:
            raise RemoteError(f"RunPod answered: {err}") from err
        except OSError as err:  # requests' errors are OSErrors
            raise RemoteError(f"cannot reach RunPod ({type(err).__name__}: {err})",
                              "check the network, proxy (HTTPS_PROXY) and firewall", blocking=True) from err


def check(target: Target, api: RunPodApi, report: Report, with_suggest: bool) -> None:
    """credentials, hardware (the type exists in the cloud type), availability (in stock now), spend (balance and
    spend limit); then --suggest. A refused key or a lost network skips what follows (Runner)."""
    runner = Runner(report)

    def credentials() -> None:
        user = api.call("get_user")
        report.add("credentials", OK, f"RUNPOD_API_KEY works (account {user['id']})")

    machine = target.machine
    if not runner.run("credentials", credentials) or machine is None:
        return
    secure = (target.cloud_type or catalog.RUNPOD_DEFAULT_CLOUD_TYPE) == "SECURE"
    cloud_type = "SECURE" if secure else "COMMUNITY"
    price: float | None = None

    def hardware() -> None:
        nonlocal price
        types = api.call("query", gpu_query(machine.instance_type, secure))["gpuTypes"]
        if not types:
            report.add("hardware", FAIL, f"RunPod has no GPU type {machine.instance_type!r}",
                       "python -m tools.doctor --cloud runpod --suggest lists the types in stock")
            return
        gpu = types[0]
        offered = gpu["secureCloud"] if secure else gpu["communityCloud"]
        lowest = gpu.get("lowestPrice") or {}
        price = lowest.get("uninterruptablePrice") or (gpu["securePrice"] if secure else gpu["communityPrice"])
        if not offered:
            report.add("hardware", FAIL, f"{gpu['id']} is not offered in RunPod's {cloud_type} cloud",
                       f"pulumi config set runpodCloudType {'COMMUNITY' if secure else 'SECURE'}")
            return
        report.add("hardware", OK, f"{gpu['id']}: {gpu['memoryInGb']} GB, ${price:g}/h in {cloud_type}")
        stock = lowest.get("stockStatus") or "None"
        status = OK if stock in IN_STOCK else WARN if stock == "Low" else FAIL
        report.add("availability", status, f"{gpu['id']} stock in {cloud_type}: {stock}",
                   None if status == OK else "python -m tools.doctor --stack <stack> --suggest lists GPU "
                   "types in stock now")

    def spend() -> None:
        me = api.call("query", ACCOUNT_QUERY)["myself"]
        balance, spending, limit = me["clientBalance"], me["currentSpendPerHr"], me["spendLimit"]
        measured = f"balance ${balance:.2f}, spending ${spending:g}/h of a ${limit:g}/h limit"
        hourly = price or 0
        if balance < hourly:
            # RunPod's pricing guide: an on-demand pod needs at least one hour's worth in the balance.
            report.add("spend", FAIL, f"{measured}; a pod needs one hour (${hourly:g}) in the balance",
                       "add credit: https://www.console.runpod.io/user/billing")
        elif spending + hourly > limit:
            report.add("spend", FAIL, f"{measured}; this pod would pass the limit",
                       "ask RunPod support to raise the spend limit, or stop other pods")
        else:
            report.add("spend", OK, measured)

    runner.run("hardware", hardware)
    runner.run("spend", spend)
    if with_suggest and not runner.blocked:
        report.suggestions = suggest(api, secure)


def suggest(api: RunPodApi, secure: bool) -> list[Suggestion]:
    """The catalog's fitting GPU types that RunPod has in stock now, cheapest first."""
    try:
        types = api.call("query", gpu_query(None, secure))["gpuTypes"]
    except RemoteError:
        return []  # suggestions are extra; the checks already reported what failed
    cloud_type = "SECURE" if secure else "COMMUNITY"
    found = []
    for gpu in types:
        lowest = gpu.get("lowestPrice") or {}
        stock = lowest.get("stockStatus") or "None"
        if gpu["id"] not in catalog.RUNPOD_GPUS or stock not in (*IN_STOCK, "Low"):
            continue
        found.append(Suggestion(location=cloud_type, zones=[cloud_type], machine_type=gpu["id"],
                                usd_per_hour=lowest.get("uninterruptablePrice"), price_source=PRICE_SOURCE,
                                quota="available" if stock in IN_STOCK else "unknown",
                                quota_detail=f"stock {stock}, {gpu['memoryInGb']} GB"))
    return sort_suggestions(found)
