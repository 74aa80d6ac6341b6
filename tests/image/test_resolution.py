"""image/Dockerfile's install set, resolved against the package index without installing it.

Docker cannot run here, so nothing else would notice a pin the index cannot serve (torch 2.13.0 from a
CUDA 12.8 index that stopped at 2.11) or a torch built for another CUDA major than the base image. pip
resolves exactly the `pip install` commands of the Dockerfile's build stage, for the image's platform
(manylinux up to the base's glibc, x86-64) and Python, binary wheels only, with `--dry-run --report`;
then torch's own requirements name the CUDA runtime it was built for.

It needs the index: .ci/run reaches it, and there (CI set) an unreachable index fails; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from stacks import bundle
from tests.image.conftest import ROOT

PYPI = "https://pypi.org/simple/"
# What each Ubuntu release of the nvidia/cuda images ships: (python3, glibc). 24.04 (noble): Python 3.12
# (the DLAMI on the same release runs /usr/bin/python3.12) and glibc 2.39. A base on another release
# fails here until its row is added, so the platform below is never a guess.
UBUNTU = {"24.04": ("3.12", (2, 39))}
# Options of `pip install` the Dockerfile may use that do not change what gets resolved.
NEUTRAL_OPTIONS = {"--no-cache-dir", "--no-compile", "--upgrade", "-U", "--quiet", "-q"}


@dataclass
class PipInstall:
    """One `pip install` of the Dockerfile, with container paths mapped back to the repository."""

    requirement_files: list[Path] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)
    index_url: str = PYPI
    extra_index_urls: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def pip_installs(text: str, root: Path = ROOT) -> list[PipInstall]:
    """Every `pip install` in the build stage of a Dockerfile's text; anything it cannot follow fails."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    copied: dict[str, Path] = {}
    installs = []
    for keyword, rest in _instructions(text):
        if keyword == "FROM" and installs:
            break  # the runtime stage copies the build stage's venv; it installs nothing itself
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, destination = rest.split()
            copied.update({destination: root / sources[0]} if len(sources) == 1 else {})
        if keyword != "RUN":
            continue
        for command in rest.split("&&"):
            words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), command))
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                installs.append(_parse_install(words[2:], copied))
    return installs


def _parse_install(words: list[str], copied: dict[str, Path]) -> PipInstall:
    install = PipInstall()
    queue = list(words)
    while queue:
        word = queue.pop(0)
        if word in ("-r", "--requirement"):
            path = queue.pop(0)
            assert path in copied, f"pip installs {path}, which no COPY of the build stage provides"
            install.requirement_files.append(copied[path])
        elif word == "--index-url":
            install.index_url = queue.pop(0)
        elif word == "--extra-index-url":
            install.extra_index_urls.append(queue.pop(0))
        elif word in NEUTRAL_OPTIONS:
            continue
        elif word.startswith("-") or "$" in word:
            pytest.fail(f"the resolution test cannot follow `pip install ... {word}`: teach it, or simplify the "
                        "Dockerfile, so that what the image installs stays checked")
        else:
            install.requirements.append(word)
    return install


def platform_arguments(base: str) -> list[str]:
    """pip's target: the base image's Python, and every manylinux tag its glibc accepts (pip does not
    expand a manylinux_2_X platform to the older tags on its own)."""
    _, ubuntu = bundle.base_image_parts(base)
    assert ubuntu in UBUNTU, f"no Python/glibc facts for Ubuntu {ubuntu}: add them to UBUNTU after checking"
    python, (glibc_major, glibc_minor) = UBUNTU[ubuntu]
    platforms = [f"manylinux_{glibc_major}_{minor}_x86_64" for minor in range(glibc_minor, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    return ["--python-version", python, *(arg for p in platforms for arg in ("--platform", p))]


def resolve(install: PipInstall, base: str, work: Path) -> dict:
    """pip's installation report for one `pip install`, resolved for the image without installing."""
    work.mkdir(parents=True, exist_ok=True)
    report = work / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
               "--target", str(work / "target"), "--only-binary=:all:", "--index-url", install.index_url,
               *(arg for url in install.extra_index_urls for arg in ("--extra-index-url", url)),
               *platform_arguments(base),
               *(arg for path in install.requirement_files for arg in ("-r", str(path))), *install.requirements]
    # Only the index decides: no local wheel folders, constraint files or config of this machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, (f"pip cannot resolve what {bundle.DOCKERFILE} installs for {base}:\n"
                                    f"{result.stderr.strip()[-3000:]}")
    return json.loads(report.read_text())


def torch_cuda_major(report: dict) -> tuple[str, int]:
    """(torch's version, the CUDA major its wheel requires), read from torch's own requirements."""
    (torch,) = [item["metadata"] for item in report["install"] if item["metadata"]["name"].lower() == "torch"]
    environment = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "python_version": report.get("environment", {}).get(
                       "python_version", "3.12")}
    majors = set()
    for line in torch.get("requires_dist", []):
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        name = requirement.name.lower()
        suffix = re.fullmatch(r"nvidia-[a-z-]+-cu(\d+)", name)
        if suffix:
            majors.add(int(suffix.group(1)))
        elif name in ("cuda-toolkit", "nvidia-cuda-runtime"):
            majors.update(int(spec.version.split(".")[0]) for spec in requirement.specifier if spec.operator == "==")
    assert majors, f"torch {torch['version']} requires no CUDA runtime: a CPU-only build cannot use the GPU"
    assert len(majors) == 1, f"torch {torch['version']} requires several CUDA majors: {sorted(majors)}"
    return torch["version"], majors.pop()


def check_cuda_majors(base: str, torch_version: str, torch_major: int) -> None:
    image_major = int(bundle.base_image_parts(base)[0].split(".")[0])
    assert torch_major == image_major, (
        f"torch {torch_version} is built for CUDA {torch_major}, but the base image {base} is CUDA "
        f"{bundle.base_image_parts(base)[0]}: the image would fail at its first CUDA call")


def index_reachable() -> bool:
    try:
        with urllib.request.urlopen(f"{PYPI}pip/", timeout=10):  # noqa: S310 - a fixed https URL
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_the_dockerfiles_install_set_resolves_and_matches_the_base_images_cuda(tmp_path: Path) -> None:
    if not index_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"{PYPI} is unreachable; .ci/run needs the package index for this test")
        pytest.skip(f"{PYPI} is unreachable here (.ci/run reaches it)")
    text = (ROOT / bundle.DOCKERFILE).read_text()
    base = bundle.base_image()
    installs = pip_installs(text)
    assert installs, f"{bundle.DOCKERFILE} installs nothing with pip"
    reports = [resolve(install, base, tmp_path / str(i)) for i, install in enumerate(installs)]
    torch = [torch_cuda_major(r) for r in reports
             if any(item["metadata"]["name"].lower() == "torch" for item in r["install"])]
    assert torch, f"{bundle.DOCKERFILE} does not install torch"
    for version, major in torch:
        check_cuda_majors(base, version, major)


# --- the checks themselves can fail (no index needed) -----------------------------------------------------

CU13_TORCH = {"name": "torch", "version": "2.13.0", "requires_dist": [
    'cuda-toolkit[cublas,cudart]==13.0.3; platform_system == "Linux"',
    'nvidia-cudnn-cu13==9.20.0.48; platform_system == "Linux"', "filelock"]}
CU12_TORCH = {"name": "torch", "version": "2.11.0", "requires_dist": [
    'nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux" and platform_machine == "x86_64"',
    'nvidia-cudnn-cu12==9.10.2.21; platform_system == "Linux" and platform_machine == "x86_64"']}
CPU_TORCH = {"name": "torch", "version": "2.13.0+cpu", "requires_dist": ["filelock", "sympy>=1.13.3"]}
OLD_BASE = "nvidia/cuda:12.8.1-base-ubuntu24.04"


def report_with(torch: dict) -> dict:
    return {"install": [{"metadata": torch}], "environment": {"python_version": "3.12"}}


def test_a_cuda_13_torch_on_a_cuda_12_base_fails_naming_both() -> None:
    version, major = torch_cuda_major(report_with(CU13_TORCH))
    assert (version, major) == ("2.13.0", 13)
    with pytest.raises(AssertionError, match=r"torch 2\.13\.0 is built for CUDA 13, but .*12\.8\.1.* is CUDA 12\.8"):
        check_cuda_majors(OLD_BASE, version, major)
    check_cuda_majors(bundle.base_image(), version, major)  # today's base: CUDA 13.0


def test_the_older_nvidia_cu12_naming_is_read_too() -> None:
    assert torch_cuda_major(report_with(CU12_TORCH)) == ("2.11.0", 12)


def test_a_cpu_only_torch_is_refused() -> None:
    with pytest.raises(AssertionError, match="CPU-only"):
        torch_cuda_major(report_with(CPU_TORCH))


def test_the_parser_finds_the_dockerfiles_install_and_maps_the_copied_file() -> None:
    (install,) = pip_installs((ROOT / bundle.DOCKERFILE).read_text())
    assert install.requirement_files == [ROOT / "server" / "requirements.txt"]
    assert install.index_url == PYPI and not install.extra_index_urls and not install.requirements


def test_the_parser_follows_an_index_given_through_an_arg_and_refuses_what_it_cannot_follow() -> None:
    # The Dockerfile before this test existed: torch from PyTorch's CUDA 12.8 index, through a shell variable.
    old = ("ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128\nFROM x AS build\n"
           "COPY server/requirements.txt /tmp/requirements.txt\n"
           "RUN pip install --no-cache-dir --index-url \"${TORCH_INDEX}\" torch==2.13.0 \\\n"
           "    && pip install --no-cache-dir -r /tmp/requirements.txt\nFROM x\nRUN pip install ignored\n")
    first, second = pip_installs(old)
    assert (first.index_url, first.requirements) == ("https://download.pytorch.org/whl/cu128", ["torch==2.13.0"])
    assert second.requirement_files == [ROOT / "server" / "requirements.txt"]
    with pytest.raises(pytest.fail.Exception, match=r"cannot follow .*\$\{torch_pin\}"):
        pip_installs('FROM x AS build\nRUN pip install "${torch_pin}"\n')


def test_the_platform_is_the_base_images() -> None:
    arguments = platform_arguments("nvidia/cuda:13.0.2-base-ubuntu24.04")
    assert arguments[:2] == ["--python-version", "3.12"]
    platforms = arguments[3::2]
    assert platforms[0] == "manylinux_2_39_x86_64" and "manylinux_2_28_x86_64" in platforms
    assert "manylinux_2_40_x86_64" not in platforms
    with pytest.raises(AssertionError, match="Ubuntu 20.04"):
        platform_arguments("nvidia/cuda:12.8.1-base-ubuntu20.04")
