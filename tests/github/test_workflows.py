"""Every workflow in .github/workflows (whoever wrote it) and every local action.

The real linters run on them: `check-jsonschema --builtin-schema vendor.github-workflows`,
`zizmor --offline` (template injection, unpinned actions, excessive permissions, dangerous
triggers), and shellcheck on each `run:` script. Then the project's own rules: least-privilege
permissions per job, SHA pins with a version comment, fork PRs never reaching secrets, and
every `python -m tools.ci ...` call matching the CLI it calls.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import ci

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / ".github"
WORKFLOWS = sorted([*GITHUB.glob("workflows/*.yml"), *GITHUB.glob("workflows/*.yaml")])
ACTIONS = sorted(GITHUB.glob("actions/*/action.y*ml"))
BIN = Path(sys.executable).parent
PINNED_USES = re.compile(r"^\s*-?\s*uses:\s*([\w.-]+/[\w./-]+)@([0-9a-f]{40})\s+#\s*v\d+(\.\d+)*\b")
OIDC_ACTIONS = ("aws-actions/configure-aws-credentials", "google-github-actions/auth")
# Other legitimate consumers of a job's OIDC token: keyless signing and provenance.
SIGNING_ACTIONS = ("actions/attest", "actions/attest-build-provenance", "sigstore/cosign-installer")
LOCAL_OIDC_ACTION = "./.github/actions/pulumi-setup"
FORK_GUARD = "github.event.pull_request.head.repo.full_name == github.repository"
# Attacker-controlled fields of a pull request (title, body, branch names, labels' text...).
UNTRUSTED = re.compile(r"\$\{\{[^}]*(github\.head_ref|github\.event\.(pull_request|issue|comment|review|head_commit)"
                       r"\.[\w.]*(title|body|ref|label|name|message|email))[^}]*\}\}")


def load(path: Path) -> dict:
    # PyYAML reads the bare key `on` as True.
    document = yaml.safe_load(path.read_text())
    if True in document:
        document["on"] = document.pop(True)
    return document


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def jobs(path: Path) -> dict[str, dict]:
    return load(path).get("jobs", {})


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def triggers(document: dict) -> set[str]:
    on = document["on"]
    return {on} if isinstance(on, str) else set(on)


def test_the_workflows_exist():
    names = {p.name for p in WORKFLOWS}
    assert {"test.yml", "preview.yml", "deploy.yml", "review-env.yml", "reaper.yml"} <= names


# --- the real linters --------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_workflow_is_valid_per_the_github_schema(path):
    result = subprocess.run([BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", path],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ACTIONS, ids=rel)
def test_local_action_is_valid_per_the_github_schema(path):
    result = subprocess.run([BIN / "check-jsonschema", "--builtin-schema", "vendor.github-actions", path],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_offline_finds_nothing(tmp_path):
    # Fully offline: no token in the environment, and --offline disables every online audit.
    env = {k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN")}
    result = subprocess.run(
        [BIN / "zizmor", "--offline", "--no-progress", "--color", "never", "--cache-dir", tmp_path, GITHUB],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout, result.stdout


def run_scripts() -> list[tuple[str, str]]:
    found = []
    for path in [*WORKFLOWS, *ACTIONS]:
        document = load(path)
        job_steps = [(name, s) for name, job in document.get("jobs", {}).items() for s in steps(job)]
        job_steps += [("action", s) for s in document.get("runs", {}).get("steps", [])]
        for index, (job, step) in enumerate(job_steps):
            if "run" in step and step.get("shell", "bash") == "bash":
                found.append((f"{rel(path)}:{job}:{step.get('name', index)}", step["run"]))
    return found


@pytest.mark.parametrize("where, script", run_scripts(), ids=[w for w, _ in run_scripts()])
def test_run_scripts_pass_shellcheck(where, script, tmp_path):
    # Expressions are replaced by a plain word: what shellcheck sees is what bash would run.
    body = re.sub(r"\$\{\{.*?\}\}", "GHA_EXPRESSION", script)
    target = tmp_path / "step.sh"
    target.write_text(f"#!/usr/bin/env bash\nset -eo pipefail\n{body}")
    result = subprocess.run([BIN / "shellcheck", "--severity=style", target], capture_output=True, text=True)
    assert result.returncode == 0, f"{where}\n{result.stdout}"


# --- least privilege ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_top_level_permissions_grant_nothing_writable(path):
    permissions = load(path).get("permissions")
    assert permissions is not None, "set top-level `permissions: {}` and widen per job"
    assert isinstance(permissions, dict) and all(v in ("read", "none") for v in permissions.values()), permissions


def uses_of(job: dict) -> list[str]:
    return [s["uses"] for s in steps(job) if "uses" in s]


def widened(job: dict, scope: str) -> bool:
    permissions = job.get("permissions") or {}
    return permissions == "write-all" or (isinstance(permissions, dict) and permissions.get(scope) == "write")


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_id_token_write_only_where_oidc_is_used(path):
    for name, job in jobs(path).items():
        oidc = any(u.split("@")[0] in (*OIDC_ACTIONS, *SIGNING_ACTIONS) or u == LOCAL_OIDC_ACTION
                   for u in uses_of(job))
        assert widened(job, "id-token") == oidc, f"{name}: id-token: write iff it assumes a cloud role"


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_pull_requests_write_only_where_a_job_comments(path):
    for name, job in jobs(path).items():
        comments = any(
            s.get("uses", "").startswith("actions/github-script@")
            or (s.get("uses", "").startswith("pulumi/actions@") and s.get("with", {}).get("comment-on-pr"))
            for s in steps(job)
        )
        if widened(job, "pull-requests"):
            assert comments, f"{name}: pull-requests: write without a comment step"


def test_local_action_is_what_grants_oidc():
    action = load(GITHUB / "actions" / "pulumi-setup" / "action.yml")
    used = {s["uses"].split("@")[0] for s in action["runs"]["steps"] if "uses" in s}
    assert set(OIDC_ACTIONS) <= used


# --- supply chain and untrusted input ----------------------------------------------------------


@pytest.mark.parametrize("path", [*WORKFLOWS, *ACTIONS], ids=rel)
def test_every_action_is_pinned_to_a_full_sha_with_its_version(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"^\s*-?\s*uses:", line) and not re.search(r"uses:\s*(\./|docker://)", line):
            assert PINNED_USES.match(line), f"{rel(path)}:{number}: pin to a 40-hex SHA with `# vX.Y.Z`: {line}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_no_pull_request_target(path):
    assert not triggers(load(path)) & {"pull_request_target", "workflow_run"}, \
        "these run with the base repository's secrets next to untrusted code"


@pytest.mark.parametrize("path", [*WORKFLOWS, *ACTIONS], ids=rel)
def test_untrusted_pr_fields_never_reach_a_script_directly(path):
    document = load(path)
    all_steps = [s for job in document.get("jobs", {}).values() for s in steps(job)]
    all_steps += document.get("runs", {}).get("steps", [])
    for step in all_steps:
        for text in (step.get("run", ""), step.get("with", {}).get("script", "")):
            assert not UNTRUSTED.search(text), f"pass it through env: instead: {UNTRUSTED.search(text)[0]}"
            if step.get("uses", "").startswith("actions/github-script@"):
                assert "${{" not in text, "github-script reads inputs from process.env"


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_pull_request_jobs_with_secrets_skip_forks(path):
    document = load(path)
    if "pull_request" not in triggers(document):
        return
    for name, job in document["jobs"].items():
        text = yaml.safe_dump(job)
        if "secrets." in text or widened(job, "id-token"):
            assert FORK_GUARD in " ".join(str(job.get("if", "")).split()), \
                f"{name}: fork PRs get no secrets; skip them with `if: {FORK_GUARD}`"


# --- the contract between the workflows and tools/ci ---------------------------------------


def ci_invocations() -> list[tuple[str, list[str]]]:
    calls = []
    for where, script in run_scripts():
        joined = script.replace("\\\n", " ")
        for match in re.finditer(r"python -m tools\.ci ([^\n;|&]+)", joined):
            words = shlex.split(re.sub(r'"\$\{\w+\[@\]\}"', "", match[1]))
            calls.append((where, [re.sub(r"^\$\{?(\w+)\}?$", r"\1", w) for w in words]))
    return calls


def test_every_tools_ci_call_matches_the_cli():
    calls = ci_invocations()
    assert {args[0] for _, args in calls} >= {"plan", "create", "up", "destroy", "reap"}
    parser = ci._parser()
    for where, args in calls:
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: python -m tools.ci {' '.join(args)} is not a valid call")


def test_review_env_reads_only_outputs_that_ci_writes():
    text = (GITHUB / "workflows" / "review-env.yml").read_text()
    written = {
        "plan": {"action", "stack", "preset"},
        "up": set(ci.PUBLIC_OUTPUTS) | {"expiresAt", "stack", "preset"},
        "destroy": {"destroyed"},
    }
    read = [(step, key) for step, key in re.findall(r"steps\.(\w+)\.outputs\.(\w+)", text)
            if step != "pulumi"]  # the setup action's own output (backend-url)
    assert read
    for step, key in read:
        assert key in written[step], f"steps.{step}.outputs.{key} is never written by tools.ci"
    assert "apiToken" not in text.split("script:", 1)[1], "the comment never mentions the token's value"


def test_review_env_never_overlaps_for_one_pr_and_converges():
    document = load(GITHUB / "workflows" / "review-env.yml")
    assert set(document["on"]["pull_request"]["types"]) >= {"labeled", "unlabeled", "synchronize", "closed"}
    (job,) = document["jobs"].values()
    assert job["concurrency"]["group"].endswith("${{ github.event.pull_request.number }}")
    assert job["concurrency"]["cancel-in-progress"] is False, "an up or destroy must never be cut halfway"
    assert job["environment"] == "review"


def test_deploy_is_gated_by_the_production_environment():
    (job,) = jobs(GITHUB / "workflows" / "deploy.yml").values()
    assert job["environment"] == "production"
    assert job["concurrency"]["cancel-in-progress"] is False


def test_reaper_runs_on_a_schedule_and_by_hand():
    document = load(GITHUB / "workflows" / "reaper.yml")
    assert {"schedule", "workflow_dispatch"} <= triggers(document)
    hours = document["on"]["schedule"][0]["cron"].split()[1]
    assert hours == "*", "hourly: a forgotten GPU bills at most its TTL plus an hour"


def test_test_workflow_runs_the_ci_entry_point_on_push_and_pr():
    document = load(GITHUB / "workflows" / "test.yml")
    assert {"push", "pull_request"} <= triggers(document)
    (job,) = document["jobs"].values()
    assert any(s.get("run", "").strip() == ".ci/run" for s in steps(job))
    entry = (ROOT / ".ci" / "run").read_text()
    assert entry.rstrip().endswith("make test") and "make test" in (ROOT / "README.md").read_text()
    # .ci/run installs its packages with apt-get as root: a Debian image like the one it targets.
    assert "bookworm" in job["container"]["image"]


# --- what the steps do when run (issue 12) -------------------------------------------------------


def run_step(script: str, env: dict[str, str], tmp_path: Path,
             path_dirs: list[Path] = ()) -> subprocess.CompletedProcess:
    """A step's script as GitHub runs it (`bash -e -o pipefail`), expressions already passed through env."""
    target = tmp_path / "step.sh"
    target.write_text(script)
    output = tmp_path / "github_output"
    output.touch()
    full_env = {**os.environ, **env, "GITHUB_OUTPUT": str(output), "GITHUB_ENV": str(tmp_path / "github_env"),
                "PATH": ":".join([*map(str, path_dirs), os.environ["PATH"]])}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", target], capture_output=True,
                          text=True, env=full_env, cwd=ROOT, timeout=120)


def setup_checks() -> list[dict]:
    action = load(GITHUB / "actions" / "pulumi-setup" / "action.yml")
    return [s for s in action["runs"]["steps"] if "run" in s and s.get("name", "").startswith("Check")]


def test_setup_refuses_an_empty_passphrase_naming_the_secret(tmp_path):
    """GitHub passes an unset secret as "", and Pulumi would encrypt the stack's secrets with it."""
    for empty in ("", "   "):
        env = {"BACKEND_URL": "s3://sdxl-state?region=us-east-1", "STATE_PREFIX": "review",
               "PASSPHRASE_SECRET": "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE": empty}
        results = [run_step(step["run"], env, tmp_path) for step in setup_checks()]
        assert any(r.returncode != 0 for r in results), "an empty passphrase must stop the job"
        assert any("PULUMI_CONFIG_PASSPHRASE" in r.stdout + r.stderr and "empty" in r.stdout + r.stderr
                   for r in results)


def fake_pulumi(tmp_path: Path, stack_ls: str, select: str) -> Path:
    """A stand-in `pulumi` CLI: its version (the Automation API checks it), `stack ls` and `stack select`."""
    from importlib.metadata import version

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pulumi").write_text(f"""#!/bin/sh
[ "$1" != --non-interactive ] || shift
case "$1 $2" in
  version*) echo v{version("pulumi")} ;;
  "stack ls") {stack_ls} ;;
  "stack select") {select} ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
""")
    (bin_dir / "pulumi").chmod(0o755)
    return bin_dir


DENIED = ('echo "error: failed to load checkpoint: blob (key \\".pulumi/meta.yaml\\") (code=PermissionDenied): '
          'AccessDenied: Access Denied" >&2; exit 255')


def test_preview_fails_loudly_when_the_backend_denies_it(tmp_path):
    document = load(GITHUB / "workflows" / "preview.yml")
    (job,) = document["jobs"].values()
    (step,) = [s for s in steps(job) if s.get("id") == "deployed"]
    bin_dir = fake_pulumi(tmp_path, stack_ls=DENIED, select=DENIED)
    result = run_step(step["run"], {**{k: "aws-g5" for k in step.get("env", {})}, "PULUMI_SKIP_UPDATE_CHECK": "1",
                                    "HOME": str(tmp_path)}, tmp_path, [bin_dir])
    assert result.returncode != 0, "access denied must fail the job, not read as 'not deployed yet'"
    assert "found=false" not in (tmp_path / "github_output").read_text()
    assert "AccessDenied" in result.stdout + result.stderr


def test_preview_calls_only_no_such_stack_not_deployed_yet(tmp_path):
    document = load(GITHUB / "workflows" / "preview.yml")
    (job,) = document["jobs"].values()
    (step,) = [s for s in steps(job) if s.get("id") == "deployed"]
    missing = "echo \"error: no stack named 'aws-g5' found\" >&2; exit 255"
    bin_dir = fake_pulumi(tmp_path, stack_ls="echo '[]'", select=missing)
    result = run_step(step["run"], {**{k: "aws-g5" for k in step.get("env", {})}, "PULUMI_SKIP_UPDATE_CHECK": "1",
                                    "HOME": str(tmp_path)}, tmp_path, [bin_dir])
    assert result.returncode == 0, result.stderr
    assert "found=false" in (tmp_path / "github_output").read_text()


def setup_uses() -> list[tuple[str, str, dict, dict]]:
    """(workflow, job name, job, the pulumi-setup step) for every job that sets up Pulumi."""
    found = []
    for path in WORKFLOWS:
        for name, job in jobs(path).items():
            for step in steps(job):
                if step.get("uses") == LOCAL_OIDC_ACTION:
                    found.append((path.name, name, job, step))
    return found


def test_each_environment_has_its_own_state_folder_and_passphrase():
    expected = {"production": "production", "review": "review", "preview": "preview"}
    uses = setup_uses()
    assert {w for w, *_ in uses} == {"deploy.yml", "preview.yml", "review-env.yml", "reaper.yml"}
    for workflow, name, job, step in uses:
        environment = job["environment"]
        assert step["with"]["state-prefix"] == expected[environment], f"{workflow}:{name}"
        # The passphrase comes from the job's environment; the backend URL from the setup action, never a
        # variable that could point a PR job at production's folder.
        assert job["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
        assert "PULUMI_BACKEND_URL" not in job.get("env", {}), f"{workflow}:{name}"
        for other in steps(job):
            url = other.get("env", {}).get("PULUMI_BACKEND_URL") or other.get("with", {}).get("cloud-url")
            if url:
                assert url == "${{ steps.pulumi.outputs.backend-url }}", f"{workflow}:{name}: {url}"
    # Only main's deploy uses production's folder: no pull-request workflow names that environment.
    for path in WORKFLOWS:
        if "pull_request" in triggers(load(path)):
            assert all(job.get("environment") != "production" for job in jobs(path).values()), path.name


@pytest.mark.parametrize("url, prefix, expected", [
    ("s3://sdxl-state?region=us-east-1", "review", "s3://sdxl-state/review?region=us-east-1"),
    ("s3://sdxl-state/", "production", "s3://sdxl-state/production"),
    ("gs://sdxl-state", "preview", "gs://sdxl-state/preview"),
])
def test_setup_gives_each_environment_its_folder_of_the_bucket(url, prefix, expected, tmp_path):
    (step,) = [s for s in setup_checks() if s.get("id") == "backend"]
    result = run_step(step["run"], {"BACKEND_URL": url, "STATE_PREFIX": prefix}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "github_output").read_text() == f"url={expected}\n"


@pytest.mark.parametrize("url, prefix", [
    ("s3://sdxl-state/production?region=us-east-1", "review"),  # a path would nest or escape the folder
    ("https://api.pulumi.com", "review"), ("s3://sdxl-state", "staging"),
])
def test_setup_refuses_a_backend_that_is_not_a_bare_bucket(url, prefix, tmp_path):
    (step,) = [s for s in setup_checks() if s.get("id") == "backend"]
    result = run_step(step["run"], {"BACKEND_URL": url, "STATE_PREFIX": prefix}, tmp_path)
    assert result.returncode != 0 and "::error::" in result.stdout
    assert (tmp_path / "github_output").read_text() == ""


def test_the_reaper_and_review_env_share_one_concurrency_group_per_pr():
    (review,) = jobs(GITHUB / "workflows" / "review-env.yml").values()
    reap = jobs(GITHUB / "workflows" / "reaper.yml")["reap"]
    pr_group = review["concurrency"]["group"].replace("${{ github.event.pull_request.number }}", "42")
    assert pr_group == reap["concurrency"]["group"].replace("${{ matrix.pr }}", "42") == "review-env-42"
    assert reap["concurrency"]["cancel-in-progress"] is False
    assert reap["strategy"]["matrix"]["include"] == "${{ fromJSON(needs.find.outputs.stacks) }}"


_EXPRESSION_TOKEN = re.compile(r"\s*('[^']*'|&&|\|\||==|!=|!|\(|\)|[A-Za-z_][\w.-]*(?:\(\))?)")
_STATUS_FUNCTIONS = ("success()", "failure()", "cancelled()", "always()")


def runs(condition: str | None, needs: dict[str, dict], cancelled: bool = False) -> bool:
    """Whether GitHub starts a job with this `if` (the subset of expressions the workflows use).

    As GitHub documents it: an `if` without a status function gets an implicit `success()`, and success() is
    false once a needed job failed, was skipped or cancelled; `needs.<job>.result` / `.outputs.<name>` read
    `needs` (an unset output is ''); strings compare with == and != (GitHub compares them case-insensitively).
    """
    text = (condition or "success()").strip()
    text = text.removeprefix("${{").removesuffix("}}").strip()
    if not any(function in text for function in _STATUS_FUNCTIONS):
        text = f"success() && ({text})"
    status = {"success()": not cancelled and all(n["result"] == "success" for n in needs.values()),
              "failure()": any(n["result"] == "failure" for n in needs.values()),
              "cancelled()": cancelled, "always()": True}
    python, position = [], 0
    while position < len(text):
        match = _EXPRESSION_TOKEN.match(text, position)
        assert match and match.group(1), f"not modelled here: {text[position:]!r}"
        token, position = match.group(1), match.end()
        if token in status:
            python.append(repr(status[token]))
        elif token.startswith("needs."):
            _, job, kind, *name = token.split(".")
            value = needs[job]["result"] if kind == "result" else needs[job].get("outputs", {}).get(name[0], "")
            python.append(repr(value.lower()))
        elif token.startswith("'"):
            python.append(repr(token[1:-1].lower()))
        else:
            python.append({"&&": "and", "||": "or", "!": "not", "==": "==", "!=": "!=", "(": "(", ")": ")"}[token])
    return bool(eval(" ".join(python), {"__builtins__": {}}))  # noqa: S307 - built from the tokens above only


def test_the_runs_model_follows_githubs_status_rules():
    ok, failed, skipped = {"result": "success"}, {"result": "failure"}, {"result": "skipped"}
    assert runs(None, {"a": ok}) and not runs(None, {"a": failed}) and not runs(None, {"a": skipped})
    assert runs("always()", {"a": failed}, cancelled=True)
    assert not runs("${{ !cancelled() }}", {"a": ok}, cancelled=True)
    assert runs("needs.a.outputs.n != '0'", {"a": {**ok, "outputs": {"n": "2"}}})
    assert not runs("needs.a.outputs.n != '0' && needs.a.outputs.n != ''", {"a": ok})


def test_one_broken_stack_or_find_job_never_stops_the_sweep():
    """find exits 0 with unreadable stacks (tools/ci reports them); the reap jobs run for the rest, the sweep runs
    whatever find and reap returned, and the run still fails when a stack could not be read."""
    reaper_jobs = jobs(GITHUB / "workflows" / "reaper.yml")
    find, reap, sweep = reaper_jobs["find"], reaper_jobs["reap"], reaper_jobs["sweep"]
    assert find["outputs"]["unreadable"] == "${{ steps.expired.outputs.unreadable }}"
    found = {"result": "success", "outputs": {"count": "2", "unreadable": "pr-4"}}
    assert runs(reap.get("if"), {"find": found})
    assert not runs(reap.get("if"), {"find": {"result": "success", "outputs": {"count": "0"}}})
    assert set(sweep["needs"]) == {"find", "reap"}
    for find_result, reap_result in (("success", "success"), ("success", "failure"), ("success", "skipped"),
                                     ("failure", "skipped"), ("cancelled", "skipped")):
        assert runs(sweep.get("if"), {"find": {"result": find_result}, "reap": {"result": reap_result}}), \
            (find_result, reap_result)
    assert not runs(sweep.get("if"), {"find": found, "reap": {"result": "success"}}, cancelled=True)
    (fail,) = [s for s in steps(sweep) if s.get("name") == "Fail the run if a stack could not be read"]
    assert runs(fail["if"], {"find": found})
    assert runs(fail["if"], {"find": found, "sweep-step": {"result": "failure"}}), "after a failed sweep step too"
    assert not runs(fail["if"], {"find": {"result": "success", "outputs": {"count": "2"}}})


def test_the_unreadable_stacks_step_fails_and_annotates_each(tmp_path):
    (fail,) = [s for s in steps(jobs(GITHUB / "workflows" / "reaper.yml")["sweep"])
               if s.get("name") == "Fail the run if a stack could not be read"]
    result = run_step(fail["run"], {"UNREADABLE": "pr-4 pr-9"}, tmp_path)
    assert result.returncode == 1
    assert [line.split("::")[2].split(":")[0] for line in result.stdout.splitlines()] == ["stack pr-4", "stack pr-9"]


def test_the_readme_says_what_bounds_a_reaper_run_with_the_workflows_numbers():
    """One stack per reap job, so reap's --budget never bounds a scheduled run: find's --max, the matrix's max-parallel
    and the jobs' timeout-minutes do, and the README says so with these very numbers."""
    document = load(GITHUB / "workflows" / "reaper.yml")
    find, reap, sweep = (document["jobs"][name] for name in ("find", "reap", "sweep"))
    (listing,) = [s for s in steps(find) if "tools.ci expired" in s.get("run", "")]
    most = int(re.search(r"--max (\d+)", listing["run"])[1])
    parallel, limit = reap["strategy"]["max-parallel"], reap["timeout-minutes"]
    rounds = -(-most // parallel)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"At most {most} stacks a run (the rest wait for the next hour), destroyed {parallel} at a time, each "
            f"destroy job stopped after {limit} minutes, and finding and sweeping stopped after "
            f"{find['timeout-minutes']} minutes each: at worst {find['timeout-minutes']} + {rounds} × {limit} + "
            f"{sweep['timeout-minutes']} minutes") in readme
    assert find["timeout-minutes"] == sweep["timeout-minutes"]
    assert document["concurrency"] == {"group": "reaper", "cancel-in-progress": False}, "runs never overlap"
    # The workflow's own words agree too.
    assert f"at most {most} a run" in listing["name"]
    assert any(f"(over {most} expired)" in s.get("run", "") for s in steps(sweep))
    (destroy,) = [s for s in steps(reap) if "tools.ci reap" in s.get("run", "")]
    assert "--budget" not in destroy["run"], "one stack per job: a budget there would never apply"


def test_a_lock_older_than_every_job_that_can_hold_it_is_stale():
    from tools.ci import reaper

    limits = [review["timeout-minutes"] for review in jobs(GITHUB / "workflows" / "review-env.yml").values()]
    limits += [job["timeout-minutes"] for job in jobs(GITHUB / "workflows" / "reaper.yml").values()]
    assert reaper.STALE_LOCK.total_seconds() >= max(limits) * 60
    action = (GITHUB / "actions" / "pulumi-setup" / "action.yml").read_text()
    assert reaper.STALE_LOCK.total_seconds() >= int(re.search(r"role-duration-seconds: (\d+)", action)[1])


def test_review_stacks_build_the_prs_own_source():
    """With `image` unset the VM targets build this checkout's server: CI never sets one for pr-<n>."""
    text = (GITHUB / "workflows" / "review-env.yml").read_text()
    assert "image" not in " ".join(a for _, args in ci_invocations() for a in args)
    assert "sdxl-endpoint:image" not in text
    with pytest.raises(ci.CiError, match="PR's own source"):
        ci.parse_overrides(["sdxl-endpoint:image=ghcr.io/o/sdxl-endpoint-server:latest"])


def test_the_test_workflow_installs_cpu_torch_and_caches_pip():
    (job,) = jobs(GITHUB / "workflows" / "test.yml").values()
    assert job["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    (cache,) = [s for s in steps(job) if s.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["path"] == job["env"]["PIP_CACHE_DIR"]
    assert "requirements" in cache["with"]["key"]
    assert steps(job).index(cache) < next(i for i, s in enumerate(steps(job)) if s.get("run", "").strip() == ".ci/run")
    server = (ROOT / "server" / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", server, re.M), "the CPU index must carry this pin as 2.13.0+cpu"


def test_the_image_workflow_frees_disk_and_the_final_image_holds_one_venv():
    (job,) = jobs(GITHUB / "workflows" / "image.yml").values()
    names = [s.get("name", s.get("uses", "")) for s in steps(job)]
    free = names.index("Free runner disk for the CUDA layers")
    assert free < names.index("Build and push")
    dockerfile = (ROOT / "image" / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]  # the last stage is the image that is pushed
    assert final.count("/opt/venv") >= 1 and len(re.findall(r"^COPY --from=\w+ /opt/venv /opt/venv$", final, re.M)) == 1
    assert "pip install" not in final, "the final stage copies the venv; it installs nothing of its own"
