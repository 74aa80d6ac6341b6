"""scripts/deploy.sh (`make up`): local state, passphrase secrets, stack selection, preflight.

The Pulumi CLI can't be downloaded here, so a recording stand-in named `pulumi` sits first on
PATH; everything else the script does (venv reuse, state dir, passphrase file) is real.
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "deploy.sh"

RECORDING_PULUMI = """#!/bin/sh
echo "pulumi $* | backend=$PULUMI_BACKEND_URL | passfile=$PULUMI_CONFIG_PASSPHRASE_FILE" >> "$CALLS"
case "$1" in stack) [ "$2" = output ] && echo "https://203-0-113-10.sslip.io" ;; esac
exit 0
"""


@pytest.fixture
def workdir(tmp_path):
    """A copy of what the script touches, with the suite's venv standing in for a fresh install."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "stacks").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "deploy.sh")
    shutil.copy(ROOT / "requirements.txt", tmp_path / "requirements.txt")
    for preset in (ROOT / "stacks").glob("Pulumi.*.yaml"):
        shutil.copy(preset, tmp_path / "stacks" / preset.name)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    (tmp_path / ".venv" / ".deploy-installed").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(RECORDING_PULUMI)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def deploy(workdir: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    calls = workdir / "calls.log"
    environment = {
        "PATH": f"{workdir / 'bin'}:{os.environ['PATH']}", "HOME": str(workdir / "home"),
        "CALLS": str(calls), "SKIP_DOCTOR": "1", **env,
    }
    result = subprocess.run(["bash", str(workdir / "scripts" / "deploy.sh"), *args], cwd=workdir,
                            env=environment, capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_up_uses_local_state_and_a_generated_passphrase(workdir):
    result, calls = deploy(workdir, "up")
    assert result.returncode == 0, result.stderr
    backend = f"file://{workdir}/.pulumi-state"
    passfile = workdir / ".pulumi-state" / "passphrase"
    assert calls[0] == (f"pulumi stack select --create --secrets-provider passphrase aws-g5 | backend={backend} "
                        f"| passfile={passfile}")
    assert calls[1].startswith("pulumi up |")
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600 and len(passfile.read_text().strip()) >= 32
    assert "Endpoint: https://203-0-113-10.sslip.io" in result.stdout
    # The token is printed only as the command that reveals it.
    assert "pulumi stack output apiToken --show-secrets" in result.stdout


RECORDING_DOCTOR = """import os, sys
with open(os.environ["CALLS"], "a") as calls:
    calls.write("doctor " + " ".join(sys.argv[1:]) + "\\n")
sys.exit(int(os.environ["DOCTOR_RC"]))
"""


@pytest.mark.parametrize("doctor_rc", [0, 1])
def test_up_runs_the_doctor_first_and_stops_when_it_fails(workdir, doctor_rc):
    # A stand-in at the module path deploy.sh runs (`python -m tools.doctor`): a renamed module would fail here.
    doctor = workdir / "tools" / "doctor"
    doctor.mkdir(parents=True)
    for package in (workdir / "tools", doctor):
        (package / "__init__.py").write_text("")
    (doctor / "__main__.py").write_text(RECORDING_DOCTOR)
    result, calls = deploy(workdir, "up", "gcp-l4", SKIP_DOCTOR="", DOCTOR_RC=str(doctor_rc))
    assert calls[1] == "doctor --stack gcp-l4"
    if doctor_rc:
        assert result.returncode != 0 and not any(call.startswith("pulumi up") for call in calls)
    else:
        assert result.returncode == 0, result.stderr
        assert calls[2].startswith("pulumi up |")


def test_passphrase_is_kept_across_runs_and_flags_reach_pulumi(workdir):
    deploy(workdir, "up")
    first = (workdir / ".pulumi-state" / "passphrase").read_text()
    result, calls = deploy(workdir, "up", "aws-g4dn", "--yes", "--skip-preview")
    assert result.returncode == 0, result.stderr
    assert (workdir / ".pulumi-state" / "passphrase").read_text() == first
    assert any(c.startswith("pulumi stack select --create --secrets-provider passphrase aws-g4dn") for c in calls)
    assert any(c.startswith("pulumi up --yes --skip-preview |") for c in calls)


def test_an_explicit_backend_and_passphrase_are_respected(workdir):
    result, calls = deploy(workdir, "destroy", "aws-g6", PULUMI_BACKEND_URL="s3://my-state",
                           PULUMI_CONFIG_PASSPHRASE="from-ci")
    assert result.returncode == 0, result.stderr
    assert calls[-1].startswith("pulumi destroy | backend=s3://my-state")
    assert not (workdir / ".pulumi-state" / "passphrase").exists()


def test_any_pulumi_command_runs_against_the_same_state(workdir):
    deploy(workdir, "up")
    result, calls = deploy(workdir, "pulumi", "gcp-t4", "config", "set", "gcp:project", "my-project")
    assert result.returncode == 0, result.stderr
    assert calls[-1] == (f"pulumi config set gcp:project my-project | backend=file://{workdir}/.pulumi-state "
                         f"| passfile={workdir}/.pulumi-state/passphrase")


def test_unknown_preset_and_action_are_refused_with_the_list(workdir):
    result, calls = deploy(workdir, "up", "aws-g9")
    assert result.returncode == 2 and "aws-g5" in result.stderr and calls == []
    result, _ = deploy(workdir, "launch")
    assert result.returncode == 2 and "usage" in result.stderr


def test_script_is_shellcheck_clean():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), str(SCRIPT), str(ROOT / ".ci" / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
