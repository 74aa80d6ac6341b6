""".github/workflows/image.yml publishes the server image, for stacks that set `image` (by default each
instance builds its own, stacks/bundle.py). The generic linters
(schema, zizmor, pins) run on every workflow in tests/github/test_workflows.py; this checks what is
specific to publishing the image."""

from __future__ import annotations

import yaml

from stacks import bundle
from tests.image.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "image.yml"


def document() -> dict:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    loaded["on"] = loaded.pop(True)  # PyYAML reads the bare key `on` as True
    return loaded


def step(uses: str) -> dict:
    (job,) = document()["jobs"].values()
    (found,) = [s for s in job["steps"] if s.get("uses", "").startswith(uses + "@")]
    return found


def test_runs_on_main_and_version_tags_only() -> None:
    assert document()["on"] == {"push": {"branches": ["main"], "tags": ["v*"]}}


def test_least_privilege() -> None:
    doc = document()
    assert doc["permissions"] == {}
    (job,) = doc["jobs"].values()
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    assert step("actions/checkout")["with"]["persist-credentials"] is False
    assert step("docker/login-action")["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"


def test_builds_the_dockerfile_with_its_dockerignore_from_the_repository_root() -> None:
    build = step("docker/build-push-action")["with"]
    assert build["context"] == "."
    assert (ROOT / build["file"]).is_file()
    # BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile in preference to ./.dockerignore.
    assert (ROOT / f"{build['file']}.dockerignore").is_file()
    assert build["push"] is True
    assert "VERSION=${{ steps.meta.outputs.version }}" in build["build-args"]
    assert "REVISION=${{ github.sha }}" in build["build-args"]


def test_tags_carry_the_version_and_the_git_sha_under_the_name_instances_build() -> None:
    meta = step("docker/metadata-action")["with"]
    tags = meta["tags"].split()
    assert "type=semver,pattern={{version}}" in tags
    assert "type=sha,format=long" in tags
    assert "type=raw,value=latest,enable={{is_default_branch}}" in tags
    assert meta["images"].startswith("ghcr.io/${{ github.repository_owner }}/")
    # One name for the image, whether an instance builds it or CI publishes it.
    assert meta["images"].rsplit("/", 1)[1] == bundle.IMAGE_NAME
