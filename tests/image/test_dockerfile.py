"""image/Dockerfile and its .dockerignore, checked without Docker: lint, pins, user, labels, health, context."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from stacks import bundle
from stacks.bootstrap import CADDY_IMAGE, DATA_DIR, MODEL_CACHE_DIR, SERVER_PORT
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


def test_installs_exactly_the_servers_pinned_requirements_from_pypi() -> None:
    copies = instructions("COPY")
    assert "server/requirements.txt /tmp/requirements.txt" in copies
    runs = " ".join(instructions("RUN"))
    assert "/opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt" in runs
    # torch too: PyPI's Linux wheel is the CUDA build; PyTorch's own index would need its CUDA suffix right.
    assert "--index-url" not in runs and "download.pytorch.org" not in TEXT
    assert "torch" in pins()


def test_every_version_literal_in_the_dockerfile_matches_the_pins() -> None:
    known = pins()
    literals = re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"']*)", TEXT)
    for name, version in literals:
        assert known.get(name.lower()) == version, f"{name}=={version} is not server/requirements.txt's pin"


def test_the_cuda_base_image_is_pinned_by_digest() -> None:
    reference = bundle.base_image()
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+@sha256:[0-9a-f]{64}", reference), reference
    # Both stages build on it, through the one ARG.
    assert [line for line in INSTRUCTIONS if line.startswith("FROM")] == ["FROM ${CUDA_IMAGE} AS build",
                                                                           "FROM ${CUDA_IMAGE}"]
    assert bundle.base_image_parts(reference)[0] == bundle.image_cuda_version()


def test_runs_as_a_non_root_user() -> None:
    users = instructions("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "useradd --uid 10001" in " ".join(instructions("RUN"))


def test_model_cache_and_compile_cache_on_the_models_volume() -> None:
    env = " ".join(instructions("ENV"))
    assert "HF_HOME=/models" in env
    assert "SDXL_COMPILE_CACHE_DIR=/models/torch-compile" in env
    assert instructions("VOLUME") == ['["/models"]']
    # The host side mounts its data-disk folder there.
    assert MODEL_CACHE_DIR.startswith(f"{DATA_DIR}/")
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


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    return bundle.ignore_patterns()


def test_build_context_keeps_secrets_and_bulk_out(ignore_patterns: list[str]) -> None:
    for path in (".pulumi-state/passphrase", ".venv/bin/python", "tests/conftest.py", ".git/config",
                 "stacks/config.py", "server/__pycache__/app.cpython-311.pyc"):
        assert bundle.ignored(path, ignore_patterns), path


def test_build_context_has_everything_the_dockerfile_copies(ignore_patterns: list[str]) -> None:
    sources = [src for copy in instructions("COPY") if not copy.startswith("--from")
               for src in copy.split()[:-1]]
    assert sources
    for source in sources:
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] if (ROOT / source).is_dir() else [ROOT / source]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not bundle.ignored(relative, ignore_patterns), relative


def test_caddy_image_matches_the_caddy_the_tests_validate_with() -> None:
    caddy = Path(sys.executable).parent / "caddy"
    version = subprocess.run([str(caddy), "version"], capture_output=True, text=True, timeout=30).stdout
    minor = re.match(r"v(\d+\.\d+)\.", version).group(1)
    assert CADDY_IMAGE == f"caddy:{minor}"


def test_the_pod_idle_watcher_and_what_it_imports_land_where_the_entrypoint_runs_them(
        ignore_patterns: list[str]) -> None:
    # The entrypoint starts `python -m image.pod_idle_stop` in WORKDIR, which imports image.host.idle_stop: both
    # files must be copied under WORKDIR at their module paths, and the build context must let them through.
    entrypoint = (ROOT / "image" / "entrypoint.sh").read_text()
    assert "python -m image.pod_idle_stop" in entrypoint
    assert "from image.host import idle_stop" in (ROOT / "image" / "pod_idle_stop.py").read_text()
    (workdir,) = instructions("WORKDIR")
    landed = {}
    for copy in instructions("COPY"):
        *sources, destination = copy.split()
        for source in sources:
            if not source.startswith("--"):
                landed[source] = destination.rstrip("/") + "/" + Path(source).name
    for module in ("image/pod_idle_stop.py", "image/host/idle_stop.py"):
        assert landed.get(module) == f"{workdir}/{module}", module
        assert not bundle.ignored(module, ignore_patterns), module
