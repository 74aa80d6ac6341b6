"""An in-memory stand-in for the Pulumi Automation API, shared by the tools' tests.

The fakes stand in for the Pulumi CLI (not installed here) at the module functions tools/workspace.py
calls: `create_or_select_stack`, `select_stack` and `LocalWorkspace`. They keep what the real
self-managed (DIY) backend keeps, as its source does (pkg/backend/diy):
  - stacks with their outputs and resource count (`pulumi stack ls --json`: resourceCount is the number
    of resources in the last checkpoint, which a killed `up` has already written);
  - an update history that records, for failed operations too, the result and the config the run used
    (backend.go: addToHistory after every non-dry-run, with `update.GetTarget().Config`);
  - lock files that never expire: an operation finding another lock fails with the CLI's own message
    (lock.go checkForLock), which the SDK raises as ConcurrentUpdateError; `pulumi cancel` deletes them all.
The config itself lives in the checkout's stack file (stacks/Pulumi.<stack>.yaml), not in the backend:
`fresh_checkout()` drops it, as a new CI runner has none.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pulumi import automation as auto

from tools import presets

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
TOKEN = "tok-3f9c2a7e5b1d4c8e9f0a6b2d7c4e1f3a"


class FakeUpResult:
    def __init__(self, outputs: dict[str, auto.OutputValue]):
        self.outputs = outputs


class FakeStack:
    def __init__(self, name: str, backend: FakeBackend):
        self.name = name
        self.backend = backend
        self.workspace = backend.workspace
        self.config: dict[str, auto.ConfigValue] = {}
        self.path_config: dict[str, auto.ConfigValue] = {}
        self.updates: list[auto.UpdateSummary] = []  # newest first, as `pulumi stack history` lists them
        self.resources = 0
        self.fail_destroy = False
        self.last_outputs: dict[str, auto.OutputValue] = {}
        self.locks: list[datetime] = []  # when each lock file under .pulumi/locks/ was written
        self.history_unreadable = False  # a history file the backend cannot parse (truncated, denied)
        self.checkpoint_unreadable = False  # a checkpoint the backend may not read: `pulumi stack select` fails

    # config, as `pulumi config` keeps it in the stack's config file
    def get_all_config(self) -> dict[str, auto.ConfigValue]:
        return dict(self.config)

    def remove_all_config(self, keys: list[str], *, path: bool = False) -> None:
        self.backend.calls.append(("remove_all_config", self.name, tuple(keys)))
        for key in keys:
            self.config.pop(key)

    def set_all_config(self, config: dict[str, auto.ConfigValue], *, path: bool = False) -> None:
        self.backend.calls.append(("set_all_config", self.name, path))
        (self.path_config if path else self.config).update(config)

    def set_config(self, key: str, value: auto.ConfigValue, *, path: bool = False) -> None:
        self.config[key] = value

    # operations: each records its result and the config it ran with, as the engine does
    def _record(self, kind: str, when: datetime, result: str = "succeeded") -> None:
        naive = when.astimezone(UTC).replace(tzinfo=None)
        config = {k: {"value": v.value, "secret": v.secret} for k, v in self.config.items()}
        self.updates.insert(0, auto.UpdateSummary(kind=kind, start_time=naive, end_time=naive, message="",
                                                  environment={}, config=config, result=result))

    def _check_locks(self) -> None:
        """The DIY backend refuses any operation while another lock file exists (lock.go checkForLock)."""
        if not self.locks:
            return
        lines = [f"error: the stack is currently locked by {len(self.locks)} lock(s). Either wait for the other "
                 "process(es) to end or delete the lock file with `pulumi cancel`."]
        for number, when in enumerate(self.locks):
            lines.append(f"  s3://sdxl-state/review/.pulumi/locks/organization/sdxl-endpoint/{self.name}/"
                         f"0c8a4e2{number}-1f3b-4d5e-9a7b-2c6d8e0f1a3b.json: created by runner@fv-az512-{number} "
                         f"(pid {2200 + number}) at {when.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}")
        # What the Automation API raises for this stderr (its errors module sorts a DIY lock into this class).
        raise auto.ConcurrentUpdateError(auto.CommandResult("", "\n".join(lines), 255))

    def outputs(self) -> dict[str, auto.OutputValue]:
        return dict(self.last_outputs)

    def up(self, on_output=None, color=None) -> FakeUpResult:
        self.backend.calls.append(("up", self.name))
        self._check_locks()
        on_output("Updating (pr stack): apiToken: [secret]")
        self.resources = 12
        self._record("update", self.backend.clock())
        self.last_outputs = {
            "endpoint": auto.OutputValue("https://203-0-113-10.sslip.io", False),
            "apiToken": auto.OutputValue(TOKEN, True),
            "gpu": auto.OutputValue("NVIDIA T4", False),
            "hourlyCostUsd": auto.OutputValue(0.526, False),
            "curlExample": auto.OutputValue("curl -H 'Authorization: Bearer ...'", False),
            "hfToken": auto.OutputValue("hf_should_never_show", True),
        }
        return FakeUpResult(self.last_outputs)

    def destroy(self, on_output=None, color=None, refresh=None) -> None:
        self.backend.calls.append(("destroy", self.name, bool(refresh)))
        self._check_locks()
        if self.fail_destroy:
            # A failed destroy is recorded too, with the config of the checkout that ran it.
            self._record("destroy", self.backend.clock(), result="failed")
            raise auto.CommandError(auto.CommandResult(
                "", "error: deleting EC2 Instance (i-0abc): operation error EC2: TerminateInstances, "
                    "https response error StatusCode: 503, RequestID: 7f1c, api error Unavailable", 255))
        self.resources = 0
        self._record("destroy", self.backend.clock())

    def cancel(self) -> None:
        """`pulumi cancel` on a DIY backend deletes every lock file of the stack (CancelCurrentUpdate)."""
        self.backend.calls.append(("cancel", self.name))
        self.locks.clear()

    def history(self, page_size: int | None = None, page: int | None = None,
                show_secrets: bool = True) -> list[auto.UpdateSummary]:
        assert not show_secrets, "the reaper has no reason to decrypt secrets"
        if self.history_unreadable:
            # The DIY backend's getHistory: `reading history file <key>: <err>`; the SDK raises CommandError.
            raise auto.CommandError(auto.CommandResult("", (
                f"error: reading history file .pulumi/history/sdxl-endpoint/{self.name}/{self.name}-1773500966"
                ".history.json: unexpected end of JSON input"), 255))
        return list(self.updates[:page_size] if page_size else self.updates)

    def info(self, show_secrets: bool = True) -> auto.UpdateSummary | None:
        last = self.history(page_size=1, show_secrets=show_secrets)
        return last[0] if last else None


class FakeWorkspace:
    def __init__(self, backend: FakeBackend):
        self.backend = backend

    def list_stacks(self) -> list[auto.StackSummary]:
        return [auto.StackSummary(name=self.backend.listed_names.get(n, n), current=False,
                                  update_in_progress=n in self.backend.busy, resource_count=s.resources)
                for n, s in self.backend.stacks.items()]

    def remove_stack(self, name: str) -> None:
        self.backend.calls.append(("remove_stack", name))
        if self.backend.stacks[name].resources:
            raise auto.CommandError(auto.CommandResult("", "error: stack still has resources", 255))
        del self.backend.stacks[name]


class FakeBackend:
    def __init__(self) -> None:
        self.stacks: dict[str, FakeStack] = {}
        self.calls: list[tuple] = []
        self.busy: set[str] = set()
        self.listed_names: dict[str, str] = {}
        self.workspace = FakeWorkspace(self)
        self.now = NOW

    def clock(self) -> datetime:
        return self.now

    def add(self, name: str) -> FakeStack:
        self.stacks[name] = FakeStack(name, self)
        return self.stacks[name]

    def fresh_checkout(self) -> None:
        """A new CI runner: the backend keeps state and history, the stack files are gone."""
        for stack in self.stacks.values():
            stack.config = {}
            stack.path_config = {}

    # the patched module functions
    def create_or_select_stack(self, name, work_dir=None, opts=None):
        assert work_dir == str(presets.ROOT) and opts.secrets_provider == "passphrase"
        self.calls.append(("create_or_select_stack", name))
        return self.stacks.get(name) or self.add(name)

    def select_stack(self, name, work_dir=None, opts=None):
        assert work_dir == str(presets.ROOT)
        if name not in self.stacks:
            raise auto.StackNotFoundError(auto.CommandResult("", f"no stack named '{name}' found", 255))
        if self.stacks[name].checkpoint_unreadable:
            # The DIY backend loading a checkpoint its credentials may not read; the SDK raises CommandError.
            raise auto.CommandError(auto.CommandResult("", (
                f"error: failed to load checkpoint: blob (key \".pulumi/stacks/sdxl-endpoint/{name}.json\") "
                "(code=PermissionDenied): AccessDenied"), 255))
        return self.stacks[name]

    def local_workspace(self, work_dir=None, secrets_provider=None):
        assert work_dir == str(presets.ROOT)
        return self.workspace


@pytest.fixture
def backend(monkeypatch) -> FakeBackend:
    fake = FakeBackend()
    monkeypatch.setattr(auto, "create_or_select_stack", fake.create_or_select_stack)
    monkeypatch.setattr(auto, "select_stack", fake.select_stack)
    monkeypatch.setattr(auto, "LocalWorkspace", fake.local_workspace)
    return fake
