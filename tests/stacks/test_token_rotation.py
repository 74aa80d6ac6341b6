"""Rotating `apiToken` (or `hfToken`) changes where the token lives and nothing that replaces a machine.

The program runs twice with different tokens; the machine (or the template every fleet machine is made from) must
be registered with identical inputs and options, so `pulumi up` shows no diff on it and nothing is replaced: only
the SSM parameter's value (AWS) or a new Secret Manager version (GCP) changes. A token that reached the user data
or the metadata, even hashed, would replace every machine on each rotation (userDataReplaceOnChange, GCP's
replace_on_changes on metadata, a fleet's new template version).
"""

from __future__ import annotations

import pytest

from tests.stacks.conftest import run_program, unwrap_rpc_secret

GCP = {"cloud": "gcp", "gcp:project": "my-project-123"}
OLD = {"apiToken": "old-api-token-0123456789abcdef", "hfToken": "hf_oldhubtoken0123456789"}
NEW = {"apiToken": "new-api-token-fedcba9876543210", "hfToken": "hf_newhubtoken9876543210"}

# (config, the resource every machine is made from, where the tokens live, that resource's value input)
TARGETS = {
    "aws single": ({}, "aws:ec2/instance:Instance", "aws:ssm/parameter:Parameter", "value"),
    "aws fleet": ({"maxReplicas": "3"}, "aws:ec2/launchTemplate:LaunchTemplate", "aws:ssm/parameter:Parameter",
                  "value"),
    "gcp single": (GCP, "gcp:compute/instance:Instance", "gcp:secretmanager/secretVersion:SecretVersion",
                   "secretData"),
    "gcp fleet": ({**GCP, "machineType": "g2-standard-4", "maxReplicas": "3"},
                  "gcp:compute/instanceTemplate:InstanceTemplate", "gcp:secretmanager/secretVersion:SecretVersion",
                  "secretData"),
}


def registered(run, typ: str) -> tuple[dict, dict]:
    """The machine's inputs and its resource options, as the engine would receive them (dependencies are a set to
    the engine; their order follows which output resolved first)."""
    options = run.options(typ)
    return run.one(typ).inputs, {**options, "dependencies": sorted(options["dependencies"])}


def token_values(run, typ: str, value_input: str) -> dict[str, str]:
    return {r.name: unwrap_rpc_secret(r.inputs[value_input]) for r in run.of_type(typ)}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("rotated", ["apiToken", "hfToken"])
def test_a_rotated_token_changes_its_secret_and_leaves_the_machines_alone(target: str, rotated: str) -> None:
    config, machine, store, value_input = TARGETS[target]
    before = run_program({**config, **OLD})
    after = run_program({**config, **OLD, rotated: NEW[rotated]})
    assert registered(before, machine) == registered(after, machine)  # no diff: nothing replaced or restarted
    old, new = token_values(before, store, value_input), token_values(after, store, value_input)
    assert old.keys() == new.keys() and len(old) == 2  # the same parameters/secrets: updated, not renamed
    changed = {name for name in old if old[name] != new[name]}
    assert [new[name] for name in changed] == [NEW[rotated]]
    assert sorted(old.values()) == sorted(OLD.values())
