"""The one way the operator tools reach a stack: Pulumi's Automation API over this project's workspace.

The CI automation (tools/ci) and wake (tools/wake) both select stacks here, so they read outputs and
config the same way, with the same backend and secrets provider as `pulumi up`.
"""

from __future__ import annotations

from pulumi import automation as auto

from tools.presets import ROOT


def _options() -> auto.LocalWorkspaceOptions:
    # A self-managed backend encrypts secrets with PULUMI_CONFIG_PASSPHRASE.
    return auto.LocalWorkspaceOptions(secrets_provider="passphrase")


def select(name: str) -> auto.Stack | None:
    """The stack, or None when the backend has no stack of that name."""
    try:
        return auto.select_stack(name, work_dir=str(ROOT), opts=_options())
    except auto.StackNotFoundError:
        return None


def create_or_select(name: str) -> auto.Stack:
    return auto.create_or_select_stack(name, work_dir=str(ROOT), opts=_options())


def local() -> auto.LocalWorkspace:
    """The project's workspace, e.g. to list its stacks."""
    return auto.LocalWorkspace(work_dir=str(ROOT), secrets_provider="passphrase")


def error_lines(err: auto.CommandError, count: int = 5) -> list[str]:
    """The last lines of what the Pulumi CLI said when a command failed: where it says why."""
    lines = [line.strip().removeprefix("stderr:").strip() for line in str(err).splitlines()]
    return [line for line in lines if line and line not in ("stdout:", "stderr:")][-count:]
