"""The source bundle (stacks/bundle.py): the same checkout gives the same bytes, it holds exactly what
image/Dockerfile needs, and nothing that must not leave the laptop."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from stacks import bundle
from tests.stacks.conftest import ROOT


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the files the bundle reads from, plus things that must stay out of it."""
    root = tmp_path / "repo"
    for relative in bundle.context_files(ROOT):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, root / relative)
    for secret in (".pulumi-state/passphrase", "tests/conftest.py", ".venv/bin/python", "stacks/config.py",
                   "server/__pycache__/app.cpython-311.pyc", ".git/config", "image/host/sdxl-boot.sh"):
        (root / secret).parent.mkdir(parents=True, exist_ok=True)
        (root / secret).write_text("must not travel\n")
    return root


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as archive:
        return {m.name: m for m in archive.getmembers()}


def test_the_same_checkout_gives_the_same_bytes_whatever_the_clock_or_owner(checkout: Path, tmp_path: Path) -> None:
    first = bundle.build(checkout, tmp_path / "a")
    for relative in first.files:
        os.utime(checkout / relative, (1_000_000_000, 1_000_000_000))  # a fresh clone has other times
    second = bundle.build(checkout, tmp_path / "b")
    assert first.sha256 == second.sha256 == hashlib.sha256(second.path.read_bytes()).hexdigest()
    assert first.path.read_bytes() == second.path.read_bytes()
    for info in members(second.path).values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
        assert info.isreg() and info.mode in (0o644, 0o755)


def test_a_changed_source_file_changes_the_hash(checkout: Path, tmp_path: Path) -> None:
    before = bundle.build(checkout, tmp_path / "a")
    (checkout / "server" / "app.py").write_text((checkout / "server" / "app.py").read_text() + "\n# changed\n")
    after = bundle.build(checkout, tmp_path / "b")
    assert after.sha256 != before.sha256
    assert after.key == f"bundles/{after.sha256}.tar" and after.image_tag.endswith(f":{after.sha256}")


def test_it_holds_the_build_context_the_dockerfile_and_nothing_else(checkout: Path, tmp_path: Path) -> None:
    built = bundle.build(checkout, tmp_path / "out")
    names = set(members(built.path))
    assert names == set(built.files)
    assert {bundle.DOCKERFILE, bundle.DOCKERIGNORE, "server/requirements.txt", "server/app.py",
            "image/entrypoint.sh", "image/healthcheck.py", "image/pod_idle_stop.py"} <= names
    # Of the host's files only the idle logic, which RunPod's in-pod idle stop (image/pod_idle_stop.py) reuses.
    assert not [n for n in names if n.startswith((".pulumi-state", "tests/", ".venv", "stacks/", ".git", "image/host"))
                and n != "image/host/idle_stop.py" or "__pycache__" in n]
    # What the Dockerfile copies is all there, so `docker build` on the unpacked bundle has its context.
    text = (checkout / bundle.DOCKERFILE).read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert any(n == source or n.startswith(source) for n in names), source
    assert members(built.path)["image/entrypoint.sh"].mode == 0o755  # the image's ENTRYPOINT


def test_the_real_checkout_bundles_and_is_written_once(tmp_path: Path) -> None:
    built = bundle.build(ROOT, tmp_path)
    again = bundle.build(ROOT, tmp_path)
    assert built == again and list(tmp_path.iterdir()) == [built.path]
    with tarfile.open(fileobj=io.BytesIO(built.path.read_bytes())) as archive:
        assert archive.extractfile("server/requirements.txt").read() == (ROOT / "server/requirements.txt").read_bytes()


def test_a_symbolic_link_is_refused_rather_than_packed(checkout: Path, tmp_path: Path) -> None:
    (checkout / "server" / "link.py").symlink_to(checkout / "server" / "app.py")
    with pytest.raises(ValueError, match="symbolic link"):
        bundle.build(checkout, tmp_path / "out")


@pytest.mark.parametrize("path, expected", [
    ("server/app.py", False), ("server/routes/hf.py", False), ("image/entrypoint.sh", False),
    ("image/host/sdxl-boot.sh", True), ("server/__pycache__/x.pyc", True), ("server/x.pyc", True),
    (".pulumi-state/passphrase", True), ("tests/conftest.py", True), ("image/Dockerfile", True),
])
def test_dockerignore_rule(path: str, expected: bool) -> None:
    assert bundle.ignored(path, bundle.ignore_patterns()) is expected


def test_the_base_images_cuda_is_read_from_the_dockerfile() -> None:
    assert bundle.base_image_parts("nvidia/cuda:13.0.2-base-ubuntu24.04@sha256:" + "a" * 64) == ("13.0", "24.04")
    assert bundle.base_image_parts("nvidia/cuda:12.8.1-runtime-ubuntu22.04") == ("12.8", "22.04")
    with pytest.raises(ValueError, match="not an nvidia/cuda"):
        bundle.base_image_parts("ubuntu:24.04")
    assert bundle.image_cuda_version() == bundle.base_image_parts(bundle.base_image())[0]
