"""The reaper: destroys the `pr-<n>` stacks whose time is up, and never loses one.

What a self-managed (DIY) backend keeps, and so what the expiry is read from (pkg/backend/diy):
  - every operation that ran, failed ones included, with the config that run used. CI runners start from a
    fresh checkout without stacks/Pulumi.pr-<n>.yaml, so a destroy run by the reaper records no ttl;
    the expiry is therefore the newest *valid* ttl anywhere in the history, not the last entry's;
  - a checkpoint with the resources, written while an `up` runs: an `up` killed before its end leaves
    resources and no history at all;
  - lock files that never expire. A job that was cancelled, timed out, or outlived its one-hour OIDC
    credentials leaves its lock behind, and every later operation fails with "currently locked".

So a stack is expired when its newest ttl has passed, and at once when its last operation failed, when
it has resources and no ttl, or when its pull request is closed or no longer labelled (pulls.py: the destroy
review-env.yml queued for that can be cancelled by a newer pending run). A lock older than STALE_LOCK
belongs to no live job (none runs longer, and its credentials would have expired): `pulumi cancel` deletes
it before `destroy --refresh`.

The reaper re-reads each stack's expiry right before destroying it (a push may have renewed it meanwhile;
reaper.yml runs each destroy in review-env's concurrency group for that PR), and says what it left for the next
run. Reaping many stacks in one process (`reap` by hand) it works within a time budget; reaper.yml runs one
stack per job, and there its --max, max-parallel and timeout-minutes bound a run (README).

A stack whose state or history cannot be read (a corrupt checkpoint, a denied object) is reported as unreadable
and skipped: one broken stack must not keep every other expired GPU billing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pulumi import automation as auto

from stacks.config import parse_rfc3339
from tools import workspace
from tools.ci import (
    TTL_KEY,
    CiError,
    Clock,
    StackBusy,
    _log,
    _tail,
    _utcnow,
    check_ephemeral,
    presets,
    pulls,
    rfc3339,
)

# The longest a job holding a pr-<n> lock can live: review-env.yml's and reaper.yml's timeout-minutes, which
# is also the OIDC credentials' lifetime (role-duration-seconds 3600). tests/github checks they agree.
STALE_LOCK = timedelta(minutes=60)
# For `reap` of many stacks in one process: start no destroy after this long. One GPU stack's destroy takes a
# few minutes, rarely 15, so the last one started still ends within an hour.
DEFAULT_BUDGET = timedelta(minutes=40)
# `created by runner@host (pid 1234) at 2026-03-14T12:09:26Z`: one line per lock in the CLI's error.
_LOCK_LINE = re.compile(r"created by \S+ \(pid \d+\) at (\S+)")


@dataclass(frozen=True)
class Expiry:
    stack: str
    expires_at: datetime
    source: str  # why: "ttl", or what made it expire at once


def _when(entry: auto.UpdateSummary) -> datetime:
    return (entry.end_time or entry.start_time).replace(tzinfo=UTC)


def newest_ttl(history: list[auto.UpdateSummary]) -> datetime | None:
    """The ttl of the newest history entry that recorded a valid one (history is newest first)."""
    for entry in history:
        value = entry.config.get(TTL_KEY)
        moment = parse_rfc3339(str(value.value)) if value is not None and not value.secret else None
        if moment is not None:
            return moment
    return None


def expiry_of(name: str, history: list[auto.UpdateSummary], resources: int | None,
              now: datetime) -> Expiry | None:
    """When the stack expires, or None when it never held anything (created, never deployed)."""
    if history and history[0].result == "failed":
        return Expiry(name, now, f"its last {history[0].kind} failed at {rfc3339(_when(history[0]))}")
    ttl = newest_ttl(history)
    if ttl is not None:
        return Expiry(name, ttl, "ttl")
    if resources:
        return Expiry(name, now, f"{resources} resources and no ttl recorded")
    if history:
        return Expiry(name, now, "no resources and no ttl recorded")  # a destroyed stack that was never removed
    return None


def _summaries() -> dict[str, auto.StackSummary]:
    """The backend's pr-<n> stacks by short name (DIY backends may list organization/project/name)."""
    found = {}
    for summary in workspace.local().list_stacks():
        name = summary.name.rsplit("/", 1)[-1]
        if presets.EPHEMERAL_NAME.match(name):
            found[name] = summary
    return found


class StackUnreadable(Exception):
    """The backend could not select the stack or list its history; the message ends with the CLI's last lines."""


def read_expiry(name: str, summary: auto.StackSummary | None, now: datetime,
                pull_lookup: pulls.PullLookup | None = None) -> Expiry | None:
    try:
        stack = workspace.select(name)
        if stack is None:
            return None
        history = stack.history(show_secrets=False)
    except auto.CommandError as err:
        raise StackUnreadable(f"stack {name}: could not read its state or history:{_tail(err)}") from err
    expiry = expiry_of(name, history, summary.resource_count if summary else None, now)
    if expiry is not None and expiry.expires_at > now:
        unwanted = pulls.why_unwanted(pull_lookup, int(name.removeprefix("pr-")))
        if unwanted:
            return Expiry(name, now, unwanted)
    return expiry


@dataclass
class Scan:
    expired: list[Expiry] = field(default_factory=list)  # oldest first
    unreadable: list[str] = field(default_factory=list)  # stacks whose expiry could not be read (logged why)


def scan(now: Clock = _utcnow, pull_lookup: pulls.PullLookup | None = None) -> Scan:
    """Every pr-<n> stack of this project whose expiry has passed, and those that could not be read."""
    moment = now()
    result = Scan()
    for name, summary in _summaries().items():
        try:
            expiry = read_expiry(name, summary, moment, pull_lookup)
        except StackUnreadable as err:
            _log(f"{err}\n  left alone; the other stacks are still reaped")
            result.unreadable.append(name)
            continue
        if expiry is None:
            _log(f"stack {name}: never deployed, nothing bills")
        elif expiry.expires_at <= moment:
            result.expired.append(expiry)
    result.expired.sort(key=lambda e: (e.expires_at, e.stack))
    return result


def lock_times(err: auto.CommandError) -> list[datetime]:
    """When each lock named in a "currently locked" error was taken (the CLI prints them in RFC 3339)."""
    return [moment for text in _LOCK_LINE.findall(str(err)) if (moment := parse_rfc3339(text)) is not None]


def run_clearing_stale_locks(stack: auto.Stack, operation: Callable[[], object], now: Clock = _utcnow) -> None:
    """Run the operation; if it meets only locks older than STALE_LOCK, `pulumi cancel` them and run it again."""
    try:
        operation()
        return
    except auto.ConcurrentUpdateError as err:
        taken = lock_times(err)
        moment = now()
        if not taken or any(moment - when < STALE_LOCK for when in taken):
            newest = rfc3339(max(taken)) if taken else "an unknown time"
            raise StackBusy(f"locked since {newest} by a job that may still be running") from err
        _log(f"stack {stack.name}: clearing {len(taken)} lock(s) older than {STALE_LOCK} "
             f"(taken {', '.join(rfc3339(t) for t in taken)}): pulumi cancel")
    stack.cancel()
    operation()


def destroy_stack(name: str, now: Clock = _utcnow) -> bool:
    """`pulumi destroy --refresh` (clearing stale locks), then remove the stack; False when there is none.

    --refresh first reads what still exists, so resources deleted by hand or half-created by a killed
    `up` do not fail the destroy.
    """
    check_ephemeral(name)
    stack = workspace.select(name)
    if stack is None:
        _log(f"stack {name}: does not exist, nothing to destroy")
        return False
    _log(f"stack {name}: pulumi destroy --refresh")
    run_clearing_stale_locks(stack, lambda: stack.destroy(on_output=_log, color="never", refresh=True), now)
    # Never --force: removal must fail if anything is still there, so nothing is orphaned.
    stack.workspace.remove_stack(name)
    _log(f"stack {name}: removed")
    return True


@dataclass
class Reaped:
    destroyed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # locked by a job that may be alive: next run
    left: list[str] = field(default_factory=list)  # not started: the budget was spent
    unreadable: list[str] = field(default_factory=list)  # state or history unreadable: never destroyed blind

    def outputs(self) -> dict[str, str]:
        return {key: " ".join(value) for key, value in vars(self).items()}


def reap(now: Clock = _utcnow, *, stacks: list[str] | None = None, budget: timedelta = DEFAULT_BUDGET,
         elapsed: Callable[[], float] | None = None, pull_lookup: pulls.PullLookup | None = None) -> Reaped:
    """Destroy the expired stacks (or only `stacks`, when given) while the budget lasts.

    Each expiry is read again right before its destroy: the candidates may be minutes old.
    """
    started = time.monotonic()
    spent = elapsed or (lambda: time.monotonic() - started)
    result = Reaped()
    if stacks is not None:
        candidates = [check_ephemeral(s) for s in stacks]
    else:
        found = scan(now, pull_lookup)
        candidates, result.unreadable = [e.stack for e in found.expired], found.unreadable
    for index, name in enumerate(candidates):
        if spent() >= budget.total_seconds():
            result.left = candidates[index:]
            _log(f"budget of {budget} spent: left for the next run: {' '.join(result.left)}")
            break
        moment = now()
        try:
            expiry = read_expiry(name, _summaries().get(name), moment, pull_lookup)
        except StackUnreadable as err:
            _log(f"{err}\n  not destroyed")
            result.unreadable.append(name)
            continue
        if expiry is None or expiry.expires_at > moment:
            until = f"until {rfc3339(expiry.expires_at)}" if expiry else "never deployed"
            _log(f"stack {name}: not expired any more ({until}); left alone")
            continue
        _log(f"stack {name}: expired {rfc3339(expiry.expires_at)} ({expiry.source})")
        try:
            destroy_stack(name, now)
            result.destroyed.append(name)
        except StackBusy as busy:
            _log(f"stack {name}: {busy}; left for the next run")
            result.busy.append(name)
        except auto.CommandError as err:
            _log(f"stack {name}: destroy failed:{_tail(err)}")
            result.failed.append(name)
    return result


def parse_budget(text: str) -> timedelta:
    from tools.ci import parse_duration

    budget = parse_duration(text)
    if budget is None or not timedelta(minutes=1) <= budget <= timedelta(hours=6):
        raise CiError(f"budget {text!r}: a whole number of minutes or hours (40m, 2h) from 1m to 6h.\n"
                      "  fix: --budget 40m")
    return budget
