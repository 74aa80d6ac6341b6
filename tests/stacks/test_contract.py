"""The server facts every target relies on (port, user, probe routes, request deadline) are written once, in
stacks/contract.py, and say what the image and the server really do."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from server.app import PUBLIC_PATHS
from server.settings import Settings as ServerSettings
from stacks import bootstrap, contract, hosted, kubernetes
from tests.stacks.conftest import ROOT

DOCKERFILE = ROOT / "image" / "Dockerfile"
# Each fact's value, as a literal that must appear in no module of the program or the tools but contract.py.
FACTS = {
    "SERVER_PORT": contract.SERVER_PORT,
    "CONTAINER_UID": contract.CONTAINER_UID,
    "READY_ROUTE": contract.READY_ROUTE,
    "LIVE_ROUTE": contract.LIVE_ROUTE,
}
# 300 is a common number of seconds: only the program, which builds its fronts around the deadline, is checked.
PROGRAM_FACTS = {**FACTS, "REQUEST_TIMEOUT_SECONDS": contract.REQUEST_TIMEOUT_SECONDS}


def test_the_port_and_user_are_the_images():
    dockerfile = DOCKERFILE.read_text()
    port, uid = contract.SERVER_PORT, contract.CONTAINER_UID
    assert re.search(rf"^EXPOSE {port}$", dockerfile, re.MULTILINE)
    assert re.search(rf"\bSDXL_PORT={port}\b", dockerfile)
    assert re.search(rf"^USER {uid}:{uid}$", dockerfile, re.MULTILINE)
    assert re.search(rf"useradd --uid {uid}\b", dockerfile)


def test_the_port_and_deadline_are_the_servers_defaults():
    fields = ServerSettings.model_fields
    assert fields["port"].default == contract.SERVER_PORT
    assert fields["request_timeout"].default == contract.REQUEST_TIMEOUT_SECONDS


def test_the_probe_routes_are_public_routes_of_the_server():
    # A probe carries no token: both routes must answer without one.
    assert {contract.READY_ROUTE, contract.LIVE_ROUTE} <= PUBLIC_PATHS
    assert contract.READY_ROUTE != contract.LIVE_ROUTE


def test_the_targets_take_the_facts_from_the_contract():
    assert bootstrap.SERVER_PORT == hosted.SERVER_PORT == contract.SERVER_PORT
    assert bootstrap.CONTAINER_UID == kubernetes.UID == contract.CONTAINER_UID
    assert bootstrap.ProxyTimeouts().request == kubernetes.REQUEST_TIMEOUT_SECONDS == contract.REQUEST_TIMEOUT_SECONDS
    assert hosted.PROBE_ROUTE == contract.READY_ROUTE


def literals_of(path: Path) -> set[object]:
    return {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)}


# Every module of the program and the tools but stacks/contract.py, the one place the facts are written.
READERS = [p for p in sorted((ROOT / "stacks").glob("*.py")) + sorted((ROOT / "tools").rglob("*.py"))
           if p != ROOT / "stacks" / "contract.py"]


@pytest.mark.parametrize("path", READERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_writes_a_server_fact_again(path: Path):
    facts = PROGRAM_FACTS if path.parent.name == "stacks" else FACTS
    written = {name for name, value in facts.items() if value in literals_of(path)}
    assert not written, f"{path.relative_to(ROOT)} writes {written} as a literal: use stacks.contract"


def test_the_literal_check_finds_a_written_fact(tmp_path: Path):
    # The check above must be able to fail.
    module = tmp_path / "target.py"
    module.write_text('PROBE = {"path": "/ready", "port": 8000}\n')
    assert {contract.READY_ROUTE, contract.SERVER_PORT} <= literals_of(module)


def dict_keys_of(path: Path) -> set[str]:
    return {key.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Dict)
            for key in node.keys if isinstance(key, ast.Constant)}


@pytest.mark.parametrize("path", sorted((ROOT / "stacks").glob("*.py")), ids=lambda p: p.name)
def test_one_builder_maps_the_output_contract(path: Path):
    # What every target derives alike (the machine's GPU memory, the curl example) is mapped in contract.py only:
    # single VMs, fleets and hosted targets all call contract.contract_outputs.
    derived = {"gpuMemoryGb", "curlExample"} & dict_keys_of(path)
    assert bool(derived) == (path.name == "contract.py"), f"{path.name} builds the output contract itself"
