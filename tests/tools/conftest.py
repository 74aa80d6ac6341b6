"""An in-memory stand-in for the Pulumi Automation API, shared by the tools' tests.

The fakes stand in for the Pulumi CLI (not installed here) at the module functions tools/workspace.py
calls: `create_or_select_stack`, `select_stack` and `LocalWorkspace`. They keep what the real
self-managed backend keeps: stacks, their config and outputs, and an update history that records the
config each update ran with (what `pulumi stack history --json` returns).
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
        self.history: list[auto.UpdateSummary] = []
        self.resources = 0
        self.fail_destroy = False
        self.last_outputs: dict[str, auto.OutputValue] = {}

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

    # operations: each records the config it ran with, as the engine does
    def _record(self, kind: str, when: datetime) -> None:
        naive = when.astimezone(UTC).replace(tzinfo=None)
        config = {k: {"value": v.value, "secret": v.secret} for k, v in self.config.items()}
        self.history.insert(0, auto.UpdateSummary(kind=kind, start_time=naive, end_time=naive, message="",
                                                  environment={}, config=config, result="succeeded"))

    def outputs(self) -> dict[str, auto.OutputValue]:
        return dict(self.last_outputs)

    def up(self, on_output=None, color=None) -> FakeUpResult:
        self.backend.calls.append(("up", self.name))
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

    def destroy(self, on_output=None, color=None) -> None:
        self.backend.calls.append(("destroy", self.name))
        if self.fail_destroy:
            raise auto.CommandError(auto.CommandResult("", "error: the stack is currently locked", 255))
        self.resources = 0
        self._record("destroy", self.backend.clock())

    def info(self, show_secrets: bool = True) -> auto.UpdateSummary | None:
        assert not show_secrets, "the reaper has no reason to decrypt secrets"
        return self.history[0] if self.history else None


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

    # the patched module functions
    def create_or_select_stack(self, name, work_dir=None, opts=None):
        assert work_dir == str(presets.ROOT) and opts.secrets_provider == "passphrase"
        self.calls.append(("create_or_select_stack", name))
        return self.stacks.get(name) or self.add(name)

    def select_stack(self, name, work_dir=None, opts=None):
        assert work_dir == str(presets.ROOT)
        if name not in self.stacks:
            raise auto.StackNotFoundError(auto.CommandResult("", f"no stack named '{name}' found", 255))
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
