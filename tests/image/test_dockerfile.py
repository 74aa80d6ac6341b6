"""image/Dockerfile and its .dockerignore, checked without Docker: lint, pins, user, labels, health, context."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.bootstrap import CADDY_IMAGE, MODEL_CACHE_DIR, SERVER_PORT
from tests.image.conftest import IMAGE, ROOT

DOCKERFILE = IMAGE / "Dockerfile"
TEXT = DOCKERFILE.read_text()
# Instructions with their continuation lines joined, comments dropped.
INSTRUCTIONS = [
    line for line in re.sub(r"\\\n\s*", " ", TEXT).splitlines() if line.strip() and not line.lstrip().startswith("#")
]


def instructions(keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in INSTRUCTIONS if line.split(None, 1)[0].upper() == keyword]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "server" / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line.strip())
        if match:
            found[match.group(1).lower()] = match.group(3)
    return found


def test_hadolint_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installs_exactly_the_servers_pinned_requirements() -> None:
    copies = instructions("COPY")
    assert "server/requirements.txt /tmp/requirements.txt" in copies
    runs = " ".join(instructions("RUN"))
    assert "pip install --no-cache-dir -r /tmp/requirements.txt" in runs
    # torch's CUDA build comes from PyTorch's index at the pin the requirements file holds (read at
    # build time, never retyped here).
    assert "grep -E '^torch==' /tmp/requirements.txt" in runs
    assert 'pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${torch_pin}"' in runs
    assert "torch" in pins()


def test_every_version_literal_in_the_dockerfile_matches_the_pins() -> None:
    known = pins()
    literals = re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"']*)", TEXT)
    for name, version in literals:
        assert known.get(name.lower()) == version, f"{name}=={version} is not server/requirements.txt's pin"


def test_cuda_12_base_and_a_matching_torch_cuda_build() -> None:
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z]+-ubuntu\d+\.\d+", TEXT)
    index = re.search(r"ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cu(\d+)", TEXT)
    assert base and index
    assert base.group(1) == "12"
    assert index.group(1) == base.group(1) + base.group(2), "torch's CUDA build must match the base image's CUDA"


def test_runs_as_a_non_root_user() -> None:
    users = instructions("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "useradd --uid 10001" in " ".join(instructions("RUN"))


def test_model_cache_and_compile_cache_on_the_models_volume() -> None:
    env = " ".join(instructions("ENV"))
    assert "HF_HOME=/models" in env
    assert "SDXL_COMPILE_CACHE_DIR=/models/torch-compile" in env
    assert instructions("VOLUME") == ['["/models"]']
    # The host side mounts its persistent-disk folder at the same path.
    assert MODEL_CACHE_DIR.startswith("/opt/")
    assert f"SDXL_PORT={SERVER_PORT}" in env


def test_healthcheck_probes_health_with_a_script_the_image_contains() -> None:
    (check,) = instructions("HEALTHCHECK")
    assert '"/app/healthcheck.py"' in check
    assert "image/healthcheck.py" in " ".join(instructions("COPY"))
    assert "/health" in (IMAGE / "healthcheck.py").read_text()


def test_entrypoint_is_the_script_that_the_tests_start() -> None:
    assert instructions("ENTRYPOINT") == ['["/app/entrypoint.sh"]']
    assert "image/entrypoint.sh" in " ".join(instructions("COPY"))
    assert (IMAGE / "entrypoint.sh").stat().st_mode & 0o111, "entrypoint.sh must be executable"


def test_oci_labels() -> None:
    labels = dict(re.findall(r"(org\.opencontainers\.image\.[a-z]+)=\"([^\"]*)\"", " ".join(instructions("LABEL"))))
    for key in ("title", "description", "source", "version", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == "${VERSION}"  # the workflow passes the tag


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:].rstrip("/") if negate else raw.rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (IMAGE / "Dockerfile.dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_build_context_keeps_secrets_and_bulk_out(ignore_patterns: list[str]) -> None:
    for path in (".pulumi-state/passphrase", ".venv/bin/python", "tests/conftest.py", ".git/config",
                 "stacks/config.py", "server/__pycache__/app.cpython-311.pyc"):
        assert _ignored(path, ignore_patterns), path


def test_build_context_has_everything_the_dockerfile_copies(ignore_patterns: list[str]) -> None:
    sources = [src for copy in instructions("COPY") if not copy.startswith("--from")
               for src in copy.split()[:-1]]
    assert sources
    for source in sources:
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] if (ROOT / source).is_dir() else [ROOT / source]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not _ignored(relative, ignore_patterns), relative


def test_caddy_image_matches_the_caddy_the_tests_validate_with() -> None:
    caddy = Path(sys.executable).parent / "caddy"
    version = subprocess.run([str(caddy), "version"], capture_output=True, text=True, timeout=30).stdout
    minor = re.match(r"v(\d+\.\d+)\.", version).group(1)
    assert CADDY_IMAGE == f"caddy:{minor}"
