"""The program's shape: no import cycle, no operator tool inside it, one target module per cloud of one shape."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import tomllib
from pathlib import Path

import pulumi
import pytest
import yaml

from stacks import catalog, config
from tests.stacks.conftest import MAIN, ROOT

PROGRAM = [MAIN, *sorted((ROOT / "stacks").glob("*.py"))]
TOOLS = sorted((ROOT / "tools").rglob("*.py"))
# What an operator tool may take from the program: facts, config rules and the output contract. A target module
# (or anything only targets use) pulls in its cloud SDKs, its resources and their defaults.
# (`stacks` itself: the package, named by every `from stacks import ...`.)
SHARED_WITH_TOOLS = {"stacks", "stacks.catalog", "stacks.config", "stacks.contract"}


def module_name(path: Path) -> str:
    return "__main__" if path == MAIN else f"stacks.{path.stem}".removesuffix(".__init__")


def package_of(path: Path) -> list[str]:
    """The package a file of this repository belongs to, as `from . import` resolves it (none outside it)."""
    path, root = path.resolve(), ROOT.resolve()
    return list(path.relative_to(root).parent.parts) if path.is_relative_to(root) else []


def imported_names(nodes: list[ast.stmt] | ast.Module, package: list[str]) -> set[str]:
    """The modules (and `from m import n` names, as m.n) that these statements import, relative imports resolved."""
    found = set()
    for node in ast.walk(nodes) if isinstance(nodes, ast.Module) else nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module:
                found.add(module)
            found.update(f"{module}.{alias.name}".lstrip(".") for alias in node.names)
    return found


def imports_of(path: Path) -> set[str]:
    """Every module of this repository that `path` imports, at any depth of the file (lazy imports count)."""
    found = imported_names(ast.parse(path.read_text()), package_of(path))
    ours = ("stacks", "tools", "server", "bench", "__main__")
    return {name for name in found if name.split(".")[0] in ours}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PROGRAM}
    # `from stacks import aws` names the module stacks.aws; keep only edges to modules that exist.
    return {name: {i for i in imports_of(path) if i in modules and i != name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for child in sorted(edges.get(node, ())):
            if state.get(child) == "open":
                found.append([*trail[trail.index(child):], child])
            elif child not in state:
                visit(child, [*trail, child])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    return found


def test_cycle_finder_finds_a_cycle():
    # The check below must be able to fail.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_programs_modules():
    assert cycles(graph()) == []


def test_the_program_imports_no_operator_tool_and_nothing_imports_its_dispatcher():
    for path in PROGRAM:
        imported = imports_of(path)
        assert not [i for i in imported if i.split(".")[0] in ("tools", "server", "bench")], path
        assert "__main__" not in imported, path


def test_the_contract_imports_no_target():
    targets = set(targets_table().values())
    # The shared modules every target uses import none of them.
    for name in ("contract", "config", "catalog", "bootstrap"):
        assert not imports_of(ROOT / "stacks" / f"{name}.py") & targets, name


def targets_table() -> dict[str, str]:
    """__main__.TARGETS, read from its source: running __main__ would need a Pulumi engine."""
    tree = ast.parse(MAIN.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "TARGETS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("__main__.py has no TARGETS table")


def test_every_cloud_has_a_target_and_every_target_a_cloud():
    assert set(targets_table()) == set(config.CLOUDS)
    assert set(config.PLACEMENTS) == set(config.CLOUDS)  # and its placement rules


@pytest.mark.parametrize("cloud", config.CLOUDS)
def test_every_target_module_has_the_same_public_shape(cloud):
    module = importlib.import_module(targets_table()[cloud])
    assert issubclass(module.Endpoint, pulumi.ComponentResource)
    assert list(inspect.signature(module.Endpoint.__init__).parameters) == ["self", "name", "settings", "opts"]
    assert hasattr(module, "describe_machine")  # the preview-time look-up, or None
    assert module.describe_machine is None or callable(module.describe_machine)


def target_modules() -> set[str]:
    """Every __main__.TARGETS module and what it imports of stacks/, at any depth, but the shared modules."""
    edges, found = graph(), set()
    waiting = list(targets_table().values())
    while waiting:
        module = waiting.pop()
        if module not in found and module not in SHARED_WITH_TOOLS:
            found.add(module)
            waiting += edges.get(module, ())
    return found


def tool_imports_of_the_program(paths: list[Path]) -> dict[str, set[str]]:
    """Each file's imports of stacks/ modules beyond the shared ones, where it has any."""
    program = {module_name(p) for p in PROGRAM}
    found = {}
    for path in paths:
        beyond = {i for i in imports_of(path) if i in program} - SHARED_WITH_TOOLS
        if beyond:
            found[path.name if not path.is_relative_to(ROOT) else str(path.relative_to(ROOT))] = beyond
    return found


def test_the_target_modules_are_derived_from_the_targets_table():
    targets = target_modules()
    assert set(targets_table().values()) <= targets
    assert {"stacks.aws_fleet", "stacks.gcp_fleet"} <= targets  # reached through stacks.aws and stacks.gcp
    assert not targets & SHARED_WITH_TOOLS


def test_the_tool_check_finds_a_lazy_target_import(tmp_path):
    # The check below must be able to fail: an import inside a function counts.
    tool = tmp_path / "sweep.py"
    tool.write_text("def ttl():\n    from stacks.gcp import TTL_LABEL_FORMAT\n    return TTL_LABEL_FORMAT\n")
    assert tool_imports_of_the_program([tool]) == {"sweep.py": {"stacks.gcp"}}


def test_no_operator_tool_imports_a_target_module():
    """tools/ may take stacks.catalog, stacks.config and stacks.contract, never a target (nor what only targets
    use): the doctor, wake and the CI sweep must not load the program's cloud resources, nor break with them."""
    imported = tool_imports_of_the_program(TOOLS)
    assert imported == {}, f"tools import {imported}; target modules: {sorted(target_modules())}"


def test_a_relative_import_counts(tmp_path):
    # The cycle check must see `from . import aws` in stacks/contract.py as stacks.contract -> stacks.aws.
    assert imported_names(ast.parse("from . import aws\nfrom .gcp import Endpoint\n"), ["stacks"]) >= {
        "stacks.aws", "stacks.gcp"}
    assert imported_names(ast.parse("from .. import catalog\n"), ["tools", "doctor"]) >= {"tools.catalog"}


def test_ruff_bans_relative_imports():
    # And none is written: absolute imports name their module, for readers and for this test alike.
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "TID252" in lint["select"] and lint["flake8-tidy-imports"]["ban-relative-imports"] == "all"


# What __main__ may import before it knows the cloud: the validation. Each target is imported lazily from TARGETS,
# so a GCP stack never loads the AWS SDK (and a broken target breaks only its own stacks).
MAIN_EAGER_IMPORTS = {"stacks", "stacks.config"}


def test_main_imports_only_config_before_it_picks_the_target():
    tree = ast.parse(MAIN.read_text())
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    ours = {name for name in imported_names(top_level, []) if name.split(".")[0] in ("stacks", "tools")}
    assert ours == MAIN_EAGER_IMPORTS
    # No import hides elsewhere in the file either (inside a function or a branch).
    nested = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
              and node not in top_level]
    assert nested == []


# --- the docs say what the tree is ---------------------------------------------------------------------------

def readme_folders() -> set[str]:
    """The folders the README's "How it fits together" table names (`stacks/`, `ci/`, `.github/`...)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| folder | what lives there |"):].split("\n\n", 1)[0]
    return {name for row in table.splitlines()[2:] for name in re.findall(r"`([.\w-]+)/`", row.split("|")[1])}


def test_the_readme_table_names_every_folder_of_the_checkout():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {path.split("/", 1)[0] for path in tracked.splitlines() if "/" in path}
    assert folders <= readme_folders(), sorted(folders - readme_folders())


def test_the_readme_lists_every_step_of_adding_a_target():
    text = (ROOT / "README.md").read_text()
    step = text[text.index("A new target is one new module"):].split("\n\n", 1)[0]
    for part in ("__main__.TARGETS", "config.CLOUDS", "config.PLACEMENTS", "catalog", "DOCTORS"):
        assert part in step, part


def test_the_gpu_keys_documented_default_is_the_catalogs():
    described = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["gpu"]["description"]
    names = {"aws": "AWS", "gcp": "GCP", "huggingface": "Hugging Face", "runpod": "RunPod"}
    for cloud, gpu in catalog.DEFAULT_GPU.items():
        assert f"{gpu} on {names[cloud]}" in described, cloud
    assert "Kubernetes" in described
