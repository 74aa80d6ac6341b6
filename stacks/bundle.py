"""The server's source bundle: exactly what image/Dockerfile needs to build, packed so that the same
checkout always gives the same bytes, and named by their sha256.

With `image` unset, the VM targets upload this bundle to a private bucket and each instance builds the
image from it (image/host/sdxl-boot.sh), so a first endpoint needs no registry, no Docker on the laptop
and no CI run. The hash is the object key, the image tag on the instance and what the instance checks
the download against.

Also here: the facts the bootstrap reads from the Dockerfile (the base image's CUDA version).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = "image/Dockerfile"
DOCKERIGNORE = "image/Dockerfile.dockerignore"
# Where `pulumi up` writes the bundle it uploads; git ignores it (.gitignore).
BUILD_DIR = ROOT / ".build" / "bundles"
# The image's name: the local tag an instance builds, and the name CI publishes under.
IMAGE_NAME = "sdxl-endpoint-server"

_CUDA_IMAGE_ARG = re.compile(r"^ARG CUDA_IMAGE=(\S+)$", re.MULTILINE)
_CUDA_TAG = re.compile(r"^nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-[a-z]+-ubuntu(\d+\.\d+)(?:@sha256:[0-9a-f]{64})?$")


@dataclass(frozen=True)
class Bundle:
    sha256: str
    path: Path  # the packed bundle on this machine
    files: tuple[str, ...]  # repository-relative paths, in archive order

    @property
    def key(self) -> str:
        """The object name in the stack's bucket: content-addressed, so a change is a new object."""
        return f"bundles/{self.sha256}.tar"

    @property
    def image_tag(self) -> str:
        return f"{IMAGE_NAME}:{self.sha256}"


# --- what the build context holds: Docker's .dockerignore rule ---------------------------------------


def ignore_patterns(root: Path = ROOT) -> list[str]:
    lines = (root / DOCKERIGNORE).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match, plus Docker's `**` for any number of directories."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return re.compile("".join(out))


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or one of its parents, decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not negate
    return verdict


def context_files(root: Path = ROOT) -> tuple[str, ...]:
    """The files `docker build -f image/Dockerfile .` sends as its context, plus the Dockerfile and its
    ignore file (the build reads both; the allow-list keeps them out of the context itself)."""
    patterns = ignore_patterns(root)
    reopened = [p.lstrip("!").strip("/") for p in patterns if p.startswith("!")]
    found = {DOCKERFILE, DOCKERIGNORE}
    for folder, dirs, names in os.walk(root):
        here = Path(folder).relative_to(root).as_posix()
        prefix = "" if here == "." else f"{here}/"
        # Walk into an ignored folder only when an exception could bring something under it back.
        dirs[:] = sorted(d for d in dirs if not ignored(prefix + d, patterns)
                         or any(r.startswith(prefix + d + "/") for r in reopened))
        for name in names:
            relative = prefix + name
            if not ignored(relative, patterns):
                if (root / relative).is_symlink():
                    raise ValueError(f"{relative} is a symbolic link; the bundle carries regular files only")
                found.add(relative)
    return tuple(sorted(found))


# --- packing ---------------------------------------------------------------------------------------------


def pack(files: tuple[str, ...], root: Path = ROOT) -> bytes:
    """An uncompressed ustar archive with fixed times, owners and modes: no zlib version or clock can
    change its bytes (the whole bundle is a few hundred KB)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for relative in files:
            path = root / relative
            data = path.read_bytes()
            info = tarfile.TarInfo(relative)
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            # Only the executable bit matters (entrypoint.sh); git keeps nothing else either.
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def build(root: Path = ROOT, out_dir: Path = BUILD_DIR) -> Bundle:
    """Pack this checkout's server source and write it to `out_dir/<sha256>.tar` (once per content)."""
    files = context_files(root)
    data = pack(files, root)
    digest = hashlib.sha256(data).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{digest}.tar"
    if not path.exists():
        # Atomic: two runs at once (a preview beside a test) never see half a file.
        with tempfile.NamedTemporaryFile(dir=out_dir, delete=False) as partial:
            partial.write(data)
        os.replace(partial.name, path)
    return Bundle(sha256=digest, path=path, files=files)


# --- facts read from the Dockerfile ------------------------------------------------------------------------


def base_image(root: Path = ROOT) -> str:
    """The Dockerfile's CUDA base image reference (its `ARG CUDA_IMAGE` default)."""
    match = _CUDA_IMAGE_ARG.search((root / DOCKERFILE).read_text())
    if not match:
        raise ValueError(f"{DOCKERFILE} has no `ARG CUDA_IMAGE=` line")
    return match.group(1)


def base_image_parts(reference: str) -> tuple[str, str]:
    """(CUDA major.minor, Ubuntu version) of an nvidia/cuda reference, e.g. ("13.0", "24.04")."""
    match = _CUDA_TAG.match(reference)
    if not match:
        raise ValueError(f"{reference!r} is not an nvidia/cuda:<major>.<minor>.<patch>-<flavour>-ubuntu<version> image")
    return f"{match.group(1)}.{match.group(2)}", match.group(3)


def image_cuda_version(root: Path = ROOT) -> str:
    """The CUDA version the server image is built on, e.g. "13.0": what the boot's driver check demands."""
    return base_image_parts(base_image(root))[0]
