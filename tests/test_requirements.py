"""`make up` and `make wake` run in the venv scripts/deploy.sh builds from requirements.txt alone (not the dev
extras, not the server's): everything the program and the operator tools import must be pinned there."""

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"stacks", "tools", "__main__"}


def third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    return modules - set(sys.stdlib_module_names) - OURS


def test_everything_the_program_and_the_tools_import_is_pinned_in_requirements_txt():
    pinned = {line.split("==")[0].split("[")[0].lower().replace("_", "-")
              for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    distributions = packages_distributions()
    files = [ROOT / "__main__.py", *sorted((ROOT / "stacks").rglob("*.py")), *sorted((ROOT / "tools").rglob("*.py"))]
    assert len(files) > 10
    missing = []
    for path in files:
        for module in sorted(third_party_imports(path)):
            names = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
            if not names & pinned:
                missing.append(f"{path.relative_to(ROOT)} imports {module} ({', '.join(sorted(names)) or '?'})")
    assert missing == [], "requirements.txt does not pin:\n" + "\n".join(missing)
