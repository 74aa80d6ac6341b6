"""CI's driver for throwaway per-PR stacks, through Pulumi's Automation API.

The workflows in .github/workflows call it as a small CLI:

    python -m tools.ci plan    --pr 42 --state OPEN --labels "deploy-preview,preset:aws-g5"
    python -m tools.ci create  --stack pr-42 --preset aws-g4dn
    python -m tools.ci up      --stack pr-42 --ttl 24h
    python -m tools.ci destroy --stack pr-42
    python -m tools.ci exists  --stack aws-g5   (found=true/false; any other backend error fails)
    python -m tools.ci expired [--json]         (pr-<n> stacks past their expiry)
    python -m tools.ci reap [--stack pr-42] [--budget 40m]   (destroy and remove them: tools/ci/reaper.py)
    python -m tools.ci sweep [--terminate]      (instances with an expired ttl no stack knows: sweep.py)

Only stacks named `pr-<n>` can be brought up with a TTL, destroyed or reaped here: the presets
and production stacks are deployed by deploy.yml and are out of this module's reach.

The expiry is the stack config `sdxl-endpoint:ttl` (RFC 3339, UTC), which stacks/config.py
validates and the cloud components copy into a tag on every resource. CI runners start from a
fresh checkout without the PR stack's config file, so the reaper reads the expiry back from the
history recorded in the state bucket (`pulumi stack history` keeps each operation's config).

Nothing here prints a secret: the engine masks secret outputs, and only the outputs named in
PUBLIC_OUTPUTS, never a secret one, reach stdout or $GITHUB_OUTPUT.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pulumi import automation as auto

from stacks.config import PROJECT, cloud_of, flag_of
from tools import presets, workspace

TTL_KEY = f"{PROJECT}:ttl"
SPOT_KEY = f"{PROJECT}:spot"
IMAGE_KEY = f"{PROJECT}:image"
LABEL = "deploy-preview"
PRESET_LABEL_PREFIX = "preset:"
DEFAULT_PRESET = "aws-g4dn"  # the cheapest GPU that serves SDXL (T4, ~$0.53/h)
DEFAULT_TTL = "24h"
MIN_TTL = timedelta(minutes=30)  # boot, driver check and a 7 GB model download take ~10 minutes
MAX_TTL = timedelta(days=7)
# Non-secret outputs a PR comment may show; the API token never leaves the state.
PUBLIC_OUTPUTS = ("endpoint", "gpu", "instanceType", "hourlyCostUsd", "region")

# Optional: a fixed token for PR endpoints, from a repository secret (the name, not a value).
API_TOKEN_ENV = "SDXL_API_TOKEN"  # noqa: S105
# What the review identity lets a PR stack do only with (the bootstrap scripts print both; review-env.yml passes
# them as environment variables): cloud -> (variable, config key).
#   aws: the permissions boundary every instance role must carry, or the review role may not create it;
#   gcp: the one VM service account the review account may act as, instead of one per stack.
REVIEW_IDENTITY = {
    "aws": ("AWS_REVIEW_PERMISSIONS_BOUNDARY", f"{PROJECT}:permissionsBoundary"),
    "gcp": ("GCP_REVIEW_VM_SERVICE_ACCOUNT", f"{PROJECT}:gcpServiceAccount"),
}
CLOUD_KEY = f"{PROJECT}:cloud"

_EPHEMERAL_RE = presets.EPHEMERAL_NAME
_CONFIG_KEY_RE = re.compile(r"^[a-z][a-z0-9-]*:[A-Za-z][A-Za-z0-9_]*$")
_DURATION_RE = re.compile(r"^\s*([1-9][0-9]*)\s*([mhd])\s*$")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days"}

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CiError(Exception):
    """A mistake in what CI asked for: printed as one message, exit status 2."""


class StackBusy(Exception):
    """Another job holds the stack's lock, and it may still be alive (reaper.run_clearing_stale_locks)."""


def _log(line: str) -> None:
    # Progress goes to stderr, so stdout stays the machine-readable result.
    print(line, file=sys.stderr, flush=True)


# --- names, presets, durations ------------------------------------------------------------------


def stack_for_pr(pr: int | str) -> str:
    """`pr-<n>` for a pull-request number."""
    text = str(pr).strip().lstrip("#")
    if not text.isdigit() or int(text) < 1:
        raise CiError(f"pull request number {pr!r}: must be a positive whole number, e.g. 42")
    return f"pr-{int(text)}"


def check_ephemeral(name: str) -> str:
    """The name itself when it is `pr-<n>`; otherwise a CiError with the nearest valid name."""
    if _EPHEMERAL_RE.match(name):
        return name
    # Only a name that is clearly a PR number in another spelling (PR-42, pr_042, #42) has a nearest.
    number = re.match(r"(?i)^\s*(?:pr)?[\s_#-]*0*([1-9][0-9]{0,9})\s*$", name)
    nearest = f"pr-{number[1]}" if number else "pr-<pull request number>"
    raise CiError(
        f"stack {name!r}: CI only manages ephemeral stacks named pr-<pull request number> "
        f"(presets and production stacks are deployed by deploy.yml).\n  fix: --stack {nearest}"
    )


def check_preset(name: str) -> str:
    known = presets.names()
    if name in known:
        return name
    nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    raise CiError(
        f"preset {name!r} does not exist. Presets: {', '.join(known)}\n"
        f"  fix: --preset {nearest[0] if nearest else DEFAULT_PRESET}"
    )


# What the CI roles (ci/bootstrap/*.sh) are set up to deploy: one VM per PR stack, on these clouds. A fleet needs
# load balancers, autoscaling, CloudFront or managed instance groups; Kubernetes and hosted targets need
# credentials; the roles grant none of these.
CI_CLOUDS = tuple(REVIEW_IDENTITY)
MAX_REPLICAS_KEY = f"{PROJECT}:maxReplicas"


def why_not_in_ci(name: str) -> str | None:
    """Why the CI roles cannot deploy this preset as a PR stack, or None when they can."""
    config = presets.read(name).config
    cloud = cloud_of(str(config.get(CLOUD_KEY, "")))
    if cloud not in CI_CLOUDS:
        return f"it deploys to {cloud}, and the CI roles deploy only to {' or '.join(CI_CLOUDS)}"
    if int(str(config.get(MAX_REPLICAS_KEY, 1)).strip() or 1) > 1:
        return ("it is a fleet (maxReplicas above 1), and the CI roles hold no load balancer, autoscaling, "
                "CDN or instance group permissions")
    return None


def ci_presets() -> list[str]:
    """The presets a PR stack may use (README, "CI environments", lists them)."""
    return [name for name in presets.names() if why_not_in_ci(name) is None]


def check_ci_preset(name: str) -> str:
    """The preset itself when it exists and the CI roles can deploy it; otherwise a CiError that says why."""
    check_preset(name)
    reason = why_not_in_ci(name)
    if reason:
        raise CiError(f"preset {name!r} cannot be a PR endpoint: {reason}.\n"
                      f"  fix: a label preset:<name> with one of {', '.join(ci_presets())}")
    return name


def preset_config(name: str) -> tuple[dict[str, auto.ConfigValue], dict[str, auto.ConfigValue]]:
    """The preset's config as (plain keys, `--path` keys for lists and maps).

    Values are rendered the way the CLI stores them (true, 100); lists and maps become path
    keys such as `sdxl-endpoint:corsOrigins[0]`, so the stack keeps the types Pulumi.yaml declares.
    """
    stack_file = presets.read(check_preset(name))
    plain: dict[str, auto.ConfigValue] = {}
    nested: dict[str, auto.ConfigValue] = {}
    for key, value in stack_file.config.items():
        if isinstance(value, (dict, list)):
            for sub_key, leaf in _flatten(key, value):
                nested[sub_key] = auto.ConfigValue(value=_scalar(leaf))
        else:
            plain[key] = auto.ConfigValue(value=_scalar(value))
    if stack_file.encrypted:
        # A preset's ciphertext is bound to that stack's salt and cannot be copied.
        raise CiError(
            f"preset {name!r} holds encrypted values ({', '.join(stack_file.encrypted)}) that cannot be copied "
            "to another stack.\n  fix: keep secrets out of presets; CI generates the API token"
        )
    plain.pop(TTL_KEY, None)  # the expiry is set by `up`, never inherited
    return plain, nested


def _flatten(prefix: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(f"{prefix}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(f"{prefix}[{index}]", item)
    else:
        yield prefix, value


def _scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def parse_duration(text: str) -> timedelta | None:
    """`30m`, `8h` or `2d`; None when it is none of these."""
    match = _DURATION_RE.match(text or "")
    return timedelta(**{_DURATION_UNITS[match[2]]: int(match[1])}) if match else None


def parse_ttl(text: str) -> timedelta:
    """`30m`, `8h` or `2d`, between MIN_TTL and MAX_TTL."""
    ttl = parse_duration(text)
    if ttl is None or not MIN_TTL <= ttl <= MAX_TTL:
        raise CiError(
            f"ttl {text!r}: must be a whole number of minutes, hours or days (30m, 8h, 2d) from "
            f"{_human(MIN_TTL)} to {_human(MAX_TTL)}: long enough to boot and load SDXL, short enough "
            f"that a forgotten GPU stops billing.\n  fix: --ttl {DEFAULT_TTL}"
        )
    return ttl


def _human(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    for unit, size in (("d", 1440), ("h", 60)):
        if minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- plan: what the review-env workflow should do for a PR -------------------------------------


@dataclass(frozen=True)
class Plan:
    action: str  # "up" or "destroy"
    stack: str
    preset: str


def plan(pr: int | str, state: str, labels: Iterable[str], default_preset: str = DEFAULT_PRESET) -> Plan:
    """Desired state from the PR's *current* state and labels, whichever event woke the workflow.

    An open PR labelled `deploy-preview` gets an endpoint; anything else gets none. A label
    `preset:<name>` picks the preset; without one, `default_preset`.
    """
    stack = stack_for_pr(pr)
    labels = [label.strip() for label in labels if label.strip()]
    if state.strip().upper() != "OPEN" or LABEL not in labels:
        # Tearing down never depends on the preset labels, so a bad one can't keep a GPU alive.
        return Plan(action="destroy", stack=stack, preset="")
    chosen = sorted({label[len(PRESET_LABEL_PREFIX):] for label in labels if label.startswith(PRESET_LABEL_PREFIX)})
    if len(chosen) > 1:
        raise CiError(f"labels pick {len(chosen)} presets ({', '.join(chosen)}): keep one preset:<name> label")
    return Plan(action="up", stack=stack, preset=check_ci_preset(chosen[0] if chosen else default_preset))


# --- the stack operations ---------------------------------------------------------------------


def parse_overrides(pairs: Iterable[str]) -> dict[str, auto.ConfigValue]:
    """`namespace:key=value` pairs CI adds to the preset (e.g. gcp:project, which presets leave out)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if key == IMAGE_KEY:
            # With `image` unset, a VM stack builds this checkout's server: the PR's own source.
            raise CiError(f"--config {key}: PR stacks build the PR's own source; a pulled image would hide the "
                          "PR's server changes.\n  fix: drop it")
        if not sep or not _CONFIG_KEY_RE.match(key) or key == TTL_KEY or not value or "\n" in value:
            raise CiError(f"--config {pair!r}: expected namespace:key=value on one line, e.g. gcp:project=my-project "
                          f"({TTL_KEY} is set by `up --ttl`)")
        overrides[key] = auto.ConfigValue(value=value)
    return overrides


def review_identity(cloud: str, environ: Mapping[str, str]) -> dict[str, auto.ConfigValue]:
    """The config key of REVIEW_IDENTITY for this cloud, from its variable when set (config validates it)."""
    variable, key = REVIEW_IDENTITY.get(cloud, ("", ""))
    value = environ.get(variable, "").strip() if variable else ""
    return {key: auto.ConfigValue(value=value)} if value else {}


def create(name: str, preset: str, overrides: Mapping[str, auto.ConfigValue] | None = None,
           api_token: str | None = None, environ: Mapping[str, str] | None = None) -> auto.Stack:
    """Create (or select) `pr-<n>` and make its config exactly the preset's, plus `overrides`.

    `api_token`, when given, becomes the secret `apiToken`; otherwise the program generates one.
    `environ` supplies the review identity's variables (REVIEW_IDENTITY) for the preset's cloud.
    """
    check_ephemeral(name)
    check_ci_preset(preset)
    plain, nested = preset_config(preset)
    plain.update(overrides or {})
    plain.update(review_identity(cloud_of(str(plain.get(CLOUD_KEY, auto.ConfigValue("")).value)), environ or {}))
    if flag_of(plain.get(SPOT_KEY, auto.ConfigValue("false")).value):  # as the program parses it
        # Spot requests carry no stack tag, so the review role (ci/bootstrap/aws-oidc.sh) may not cancel them.
        raise CiError(f"preset {preset!r} sets {SPOT_KEY}: true, and PR endpoints run on demand: the review role "
                      "cannot cancel spot requests, which carry no stack tag.\n  fix: a preset without spot, "
                      f"or --config {SPOT_KEY}=false")
    if api_token:
        plain[f"{PROJECT}:apiToken"] = auto.ConfigValue(value=api_token, secret=True)
    stack = workspace.create_or_select(name)
    # A stack re-created from another preset must not keep the old preset's keys (or list items).
    stale = sorted(set(stack.get_all_config()) - set(plain))
    if stale:
        stack.remove_all_config(stale)
    stack.set_all_config(plain)
    if nested:
        stack.set_all_config(nested, path=True)
    _log(f"stack {name}: config copied from preset {preset}")
    return stack


def public_outputs(outputs: Mapping[str, auto.OutputValue]) -> dict[str, str]:
    """The outputs a PR comment may show: listed in PUBLIC_OUTPUTS and not secret."""
    return {
        name: str(outputs[name].value)
        for name in PUBLIC_OUTPUTS
        if name in outputs and not outputs[name].secret and outputs[name].value not in (None, "")
    }


def up(name: str, ttl: timedelta, now: Clock = _utcnow) -> dict[str, str]:
    """Set the expiry to now + ttl and run `pulumi up`; returns the public outputs and `expiresAt`."""
    check_ephemeral(name)
    stack = workspace.select(name)
    if stack is None:
        raise CiError(f"stack {name!r} does not exist.\n  fix: python -m tools.ci create --stack {name}")
    from tools.ci import reaper

    expires = rfc3339(now() + ttl)
    stack.set_config(TTL_KEY, auto.ConfigValue(value=expires))
    _log(f"stack {name}: pulumi up, expires {expires}")
    results = []
    reaper.run_clearing_stale_locks(stack, lambda: results.append(stack.up(on_output=_log, color="never")), now)
    return {**public_outputs(results[-1].outputs), "expiresAt": expires}


def destroy(name: str, now: Clock = _utcnow) -> bool:
    """`pulumi destroy --refresh` (clearing stale locks), then remove the stack; False when there was none."""
    from tools.ci import reaper

    return reaper.destroy_stack(name, now)


def exists(name: str) -> bool:
    """Whether the backend has the stack. Only "no such stack" is False: access denied, a missing bucket or a
    wrong passphrase raise, so a workflow never mistakes a broken backend for one not deployed yet."""
    return workspace.select(name) is not None


# --- CLI --------------------------------------------------------------------------------------


def write_github_output(values: Mapping[str, str], path: str | None = None) -> None:
    """Append key=value lines to $GITHUB_OUTPUT (when the workflow provides one)."""
    path = path or os.environ.get("GITHUB_OUTPUT")
    if not path:
        return
    for key, value in values.items():
        if "\n" in value or "\r" in value:
            raise CiError(f"output {key!r} spans lines; refusing to write it to $GITHUB_OUTPUT")
    with open(path, "a", encoding="utf-8") as file:
        file.writelines(f"{key}={value}\n" for key, value in values.items())


def _tail(err: auto.CommandError, lines: int = 5) -> str:
    return "".join(f"\n  {line}" for line in workspace.error_lines(err, lines))


def _parser() -> argparse.ArgumentParser:
    from tools.ci import reaper  # imports this module: not at the top

    parser = argparse.ArgumentParser(prog="python -m tools.ci", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("plan", help="what review-env should do for a PR: up or destroy, and the preset")
    p.add_argument("--pr", required=True)
    p.add_argument("--state", required=True, help="OPEN, CLOSED or MERGED")
    p.add_argument("--labels", default="", help="the PR's labels, comma-separated or a JSON list")
    p.add_argument("--default-preset", default=DEFAULT_PRESET)

    p = commands.add_parser("create", help="create pr-<n> from a preset")
    p.add_argument("--stack", required=True)
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--config", action="append", default=[], metavar="NS:KEY=VALUE",
                   help="add to the preset's config, e.g. gcp:project=my-project (repeatable)")

    p = commands.add_parser("up", help="pulumi up with an expiry")
    p.add_argument("--stack", required=True)
    p.add_argument("--ttl", default=DEFAULT_TTL, help=f"30m, 8h, 2d ... (default {DEFAULT_TTL})")

    p = commands.add_parser("destroy", help="pulumi destroy, then remove the stack")
    p.add_argument("--stack", required=True)

    p = commands.add_parser("exists", help="whether the backend has a stack (found=true/false); errors fail")
    p.add_argument("--stack", required=True)

    p = commands.add_parser("expired", help="list pr-<n> stacks past their expiry")
    p.add_argument("--json", action="store_true", help="one JSON list of {stack, pr}, also as the output `stacks`")
    p.add_argument("--max", type=int, default=50, help="at most this many (the rest: output `left`)")

    p = commands.add_parser("reap", help="destroy and remove pr-<n> stacks past their expiry")
    p.add_argument("--stack", action="append", help="only this stack, if still expired (repeatable)")
    budget = _human(reaper.DEFAULT_BUDGET)
    p.add_argument("--budget", default=budget, help=f"start no destroy after this long (default {budget})")

    p = commands.add_parser("sweep", help="instances with an expired ttl that no stack knows")
    p.add_argument("--terminate", action="store_true", help="terminate them (default: only report)")
    p.add_argument("--aws-region", action="append", default=[],
                   help="AWS regions to search (repeatable; default: the presets' regions)")
    p.add_argument("--skip-aws", action="store_true", help="search no AWS region (no AWS role configured)")
    p.add_argument("--gcp-project", action="append", default=[], help="GCP projects to search (repeatable)")
    return parser


def _labels(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        return [str(label) for label in json.loads(text)]
    return text.split(",")


def main(argv: list[str] | None = None, now: Clock = _utcnow) -> int:
    args = _parser().parse_args(argv)
    status = 0
    try:
        if args.command == "plan":
            decided = plan(args.pr, args.state, _labels(args.labels), args.default_preset)
            result = {"action": decided.action, "stack": decided.stack, "preset": decided.preset}
        elif args.command == "create":
            # The token comes from the environment (a repository secret), never from argv or logs.
            create(args.stack, args.preset, parse_overrides(args.config), os.environ.get(API_TOKEN_ENV) or None,
                   os.environ)
            result = {"stack": args.stack, "preset": args.preset}
        elif args.command == "up":
            result = up(args.stack, parse_ttl(args.ttl), now)
        elif args.command == "destroy":
            result = {"destroyed": "true" if destroy(args.stack, now) else "false"}
        elif args.command == "exists":
            result = {"found": "true" if exists(args.stack) else "false"}
        elif args.command == "expired":
            return _print_expired(args.json, args.max, now)
        elif args.command == "reap":
            from tools.ci import pulls, reaper

            reaped = reaper.reap(now, stacks=args.stack, budget=reaper.parse_budget(args.budget),
                                 pull_lookup=pulls.lookup_from_env())
            result = reaped.outputs()
            status = 1 if reaped.failed or reaped.unreadable else 0  # the outputs still name what was destroyed
        else:
            from tools.ci import sweep

            regions = [] if args.skip_aws else (args.aws_region or sweep.preset_regions())
            found = sweep.sweep(aws_regions=regions,
                                gcp_projects=args.gcp_project, terminate=args.terminate, now=now)
            result = found.outputs()
            status = 1 if found.failed else 0  # the outputs still name what was terminated
    except CiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StackBusy as busy:
        # Another job's up or destroy of this PR is running: not a traceback, and not retried here.
        print(f"error: stack {getattr(args, 'stack', '')} is busy: {busy}; try again when that job ends",
              file=sys.stderr)
        return 1
    except auto.CommandError as err:
        # The engine's output was already streamed; its last lines say what failed.
        print(f"error: pulumi {args.command} failed:{_tail(err)}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    write_github_output(result)
    return status


def _print_expired(as_json: bool, limit: int, now: Clock) -> int:
    from tools.ci import pulls, reaper

    found = reaper.scan(now, pulls.lookup_from_env())
    for expiry in found.expired:
        _log(f"{expiry.stack}: expired {rfc3339(expiry.expires_at)} ({expiry.source})")
    chosen, left = found.expired[:max(limit, 0)], found.expired[max(limit, 0):]
    if left:
        _log(f"left for the next run (more than --max {limit}): {' '.join(e.stack for e in left)}")
    if found.unreadable:
        _log(f"unreadable, not reaped (the reasons are above): {' '.join(found.unreadable)}")
    # Exit 0 even so: the readable expired stacks must still be destroyed. The output `unreadable` says which
    # were skipped, and reaper.yml fails the run on it, where someone will see it.
    if not as_json:
        print("\n".join(e.stack for e in chosen))
        return 0
    stacks = json.dumps([{"stack": e.stack, "pr": e.stack.removeprefix("pr-")} for e in chosen],
                        separators=(",", ":"))
    print(stacks)
    write_github_output({"stacks": stacks, "count": str(len(chosen)), "left": " ".join(e.stack for e in left),
                         "unreadable": " ".join(found.unreadable)})
    return 0
