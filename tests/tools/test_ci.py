"""tools/ci with the Automation API's entry points replaced by an in-memory backend (tests/tools/conftest.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import yaml
from pulumi import automation as auto

from stacks.config import parse_rfc3339
from tests.tools.conftest import NOW, TOKEN, FakeBackend, FakeStack
from tools import ci, presets
from tools.ci import pulls, reaper


def deployed(backend: FakeBackend, name: str, at: datetime, ttl: str | None) -> FakeStack:
    """A stack whose last update ran at `at`, with `ttl` recorded in its config (or none)."""
    stack = backend.add(name)
    if ttl is not None:
        stack.config[ci.TTL_KEY] = auto.ConfigValue(ttl)
    backend.now = at
    stack.up(on_output=lambda _line: None)
    backend.now = NOW
    return stack


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pr-1", "pr-42", "pr-1234567890"])
def test_pr_stack_names_are_accepted(name):
    assert ci.check_ephemeral(name) == name


@pytest.mark.parametrize("name, nearest", [
    ("PR-42", "pr-42"), ("pr-042", "pr-42"), ("pr_42", "pr-42"), ("42", "pr-42"), ("#42", "pr-42"),
    ("pr-0", "pr-<pull request number>"), ("aws-g5", "pr-<pull request number>"),
    ("pr-42; rm -rf /", "pr-<pull request number>"), ("pr-", "pr-<pull request number>"),
])
def test_other_stack_names_are_refused_with_the_nearest_fix(name, nearest):
    with pytest.raises(ci.CiError, match="pr-<pull request number>") as err:
        ci.check_ephemeral(name)
    assert str(err.value).endswith(f"fix: --stack {nearest}")


def test_stack_for_pr():
    assert ci.stack_for_pr(42) == "pr-42"
    assert ci.stack_for_pr("#7") == "pr-7"
    for bad in ("0", "-3", "4a", ""):
        with pytest.raises(ci.CiError, match="positive whole number"):
            ci.stack_for_pr(bad)


# --- presets ----------------------------------------------------------------------------------


def test_presets_are_the_preset_files_and_never_a_local_pr_stack(tmp_path, monkeypatch):
    real = presets.names()
    assert real == sorted(p.name[len("Pulumi."):-len(".yaml")] for p in presets.STACKS_DIR.glob("Pulumi.*.yaml")
                          if not p.name.startswith("Pulumi.pr-"))
    assert ci.DEFAULT_PRESET in real

    for name in ("aws-g5", "pr-7", "gcp-t4"):
        (tmp_path / f"Pulumi.{name}.yaml").write_text("config: {}\n")
    monkeypatch.setattr(presets, "STACKS_DIR", tmp_path)
    assert presets.names() == ["aws-g5", "gcp-t4"]


@pytest.mark.parametrize("preset", presets.names())
def test_preset_config_is_a_faithful_copy_of_the_preset_file(preset):
    plain, nested = ci.preset_config(preset)
    document = yaml.safe_load((presets.STACKS_DIR / f"Pulumi.{preset}.yaml").read_text())["config"]
    scalars = {k: v for k, v in document.items() if not isinstance(v, (list, dict)) and k != ci.TTL_KEY}
    assert {k: v.value for k, v in plain.items()} == {
        k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in scalars.items()}
    assert {k.split("[")[0].split(".")[0] for k in nested} == set(document) - set(scalars) - {ci.TTL_KEY}
    assert not any(v.secret for v in [*plain.values(), *nested.values()])


def test_preset_config_keeps_types_as_the_cli_stores_them(tmp_path, monkeypatch):
    (tmp_path / "Pulumi.custom.yaml").write_text(yaml.safe_dump({"config": {
        "sdxl-endpoint:spot": True, "sdxl-endpoint:diskGb": 200, "aws:region": "eu-west-1",
        "sdxl-endpoint:corsOrigins": ["https://a.example.com", "https://b.example.com"],
        "aws:defaultTags": {"tags": {"team": "ml"}},
        "sdxl-endpoint:ttl": "2020-01-01T00:00:00Z",
    }}))
    monkeypatch.setattr(presets, "STACKS_DIR", tmp_path)
    plain, nested = ci.preset_config("custom")
    assert {k: v.value for k, v in plain.items()} == {
        "sdxl-endpoint:spot": "true", "sdxl-endpoint:diskGb": "200", "aws:region": "eu-west-1",
    }, "an old expiry in a preset must never be inherited"
    assert {k: v.value for k, v in nested.items()} == {
        "sdxl-endpoint:corsOrigins[0]": "https://a.example.com",
        "sdxl-endpoint:corsOrigins[1]": "https://b.example.com",
        "aws:defaultTags.tags.team": "ml",
    }


def test_preset_with_encrypted_values_is_refused(tmp_path, monkeypatch):
    (tmp_path / "Pulumi.locked.yaml").write_text(yaml.safe_dump({"config": {
        "aws:region": "us-east-1", "sdxl-endpoint:hfToken": {"secure": "v1:abc"},
    }}))
    monkeypatch.setattr(presets, "STACKS_DIR", tmp_path)
    with pytest.raises(ci.CiError, match=r"encrypted values \(sdxl-endpoint:hfToken\)"):
        ci.preset_config("locked")


def test_unknown_preset_names_the_presets_and_the_nearest():
    with pytest.raises(ci.CiError) as err:
        ci.check_preset("aws-g55")
    assert ", ".join(presets.names()) in str(err.value)
    assert str(err.value).endswith("fix: --preset aws-g5")


# --- ttl --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("30m", timedelta(minutes=30)), ("8h", timedelta(hours=8)), (" 2d ", timedelta(days=2)),
    ("7d", timedelta(days=7)), ("90m", timedelta(minutes=90)),
])
def test_ttl_durations(text, expected):
    assert ci.parse_ttl(text) == expected


@pytest.mark.parametrize("text", ["29m", "0h", "8d", "169h", "24", "1.5h", "h", "", "-2h", "1w"])
def test_ttl_outside_the_bounds_or_malformed_is_refused(text):
    with pytest.raises(ci.CiError, match=r"from 30m to 7d.*\n  fix: --ttl 24h"):
        ci.parse_ttl(text)


def test_rfc3339_round_trip_in_utc():
    plus_two = timezone(timedelta(hours=2))
    assert ci.rfc3339(datetime(2026, 3, 14, 17, 9, 26, 999, tzinfo=plus_two)) == "2026-03-14T15:09:26Z"
    assert parse_rfc3339("2026-03-14T15:09:26Z") == datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
    assert parse_rfc3339("2026-03-14T15:09:26") is None, "a time without a zone is ambiguous"
    assert parse_rfc3339("tomorrow") is None


# --- plan -------------------------------------------------------------------------------------


def test_plan_up_for_an_open_labelled_pr_with_the_default_or_chosen_preset():
    assert ci.plan(42, "OPEN", ["bug", "deploy-preview"]) == ci.Plan("up", "pr-42", ci.DEFAULT_PRESET)
    assert ci.plan("42", "open", ["deploy-preview", "preset:aws-g5"]) == ci.Plan("up", "pr-42", "aws-g5")
    assert ci.plan(42, "OPEN", ["deploy-preview"], default_preset="aws-g6").preset == "aws-g6"


@pytest.mark.parametrize("state, labels", [
    ("OPEN", ["bug"]), ("CLOSED", ["deploy-preview"]), ("MERGED", ["deploy-preview"]),
    ("CLOSED", ["deploy-preview", "preset:nope", "preset:aws-g5"]),
])
def test_plan_destroy_when_closed_or_unlabelled_whatever_the_preset_labels(state, labels):
    assert ci.plan(7, state, labels) == ci.Plan("destroy", "pr-7", "")


def test_plan_refuses_two_presets_and_unknown_ones():
    with pytest.raises(ci.CiError, match="keep one preset:<name> label"):
        ci.plan(7, "OPEN", ["deploy-preview", "preset:aws-g5", "preset:aws-g6"])
    with pytest.raises(ci.CiError, match="preset 'aws-g7' does not exist"):
        ci.plan(7, "OPEN", ["deploy-preview", "preset:aws-g7"])


def test_plan_cli_reads_gh_json_labels_and_writes_github_output(tmp_path, monkeypatch, capsys):
    output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    labels = json.dumps(["deploy-preview", "preset:aws-g6"])
    assert ci.main(["plan", "--pr", "9", "--state", "OPEN", "--labels", labels]) == 0
    assert output.read_text() == "action=up\nstack=pr-9\npreset=aws-g6\n"
    assert json.loads(capsys.readouterr().out) == {"action": "up", "stack": "pr-9", "preset": "aws-g6"}


# --- create / up / destroy --------------------------------------------------------------------


def test_create_copies_the_preset_into_a_new_pr_stack(backend):
    stack = ci.create("pr-42", "aws-g4dn")
    preset = yaml.safe_load((presets.STACKS_DIR / "Pulumi.aws-g4dn.yaml").read_text())["config"]
    assert {k: v.value for k, v in stack.config.items()} == preset
    assert not any(v.secret for v in stack.config.values())
    assert backend.calls == [("create_or_select_stack", "pr-42"), ("set_all_config", "pr-42", False)]


def test_create_again_from_another_preset_drops_the_old_keys(backend, tmp_path, monkeypatch):
    stack = backend.add("pr-42")
    stack.config = {"sdxl-endpoint:instanceType": auto.ConfigValue("g5.xlarge"),
                    "sdxl-endpoint:ttl": auto.ConfigValue("2026-01-01T00:00:00Z"),
                    "aws:region": auto.ConfigValue("us-west-2")}
    (tmp_path / "Pulumi.gcp-t4.yaml").write_text(yaml.safe_dump({"config": {
        "sdxl-endpoint:cloud": "gcp", "gcp:project": "demo", "aws:region": "us-east-1"}}))
    monkeypatch.setattr(presets, "STACKS_DIR", tmp_path)
    ci.create("pr-42", "gcp-t4")
    assert {k: v.value for k, v in stack.config.items()} == {
        "sdxl-endpoint:cloud": "gcp", "gcp:project": "demo", "aws:region": "us-east-1"}
    assert ("remove_all_config", "pr-42", ("sdxl-endpoint:instanceType", "sdxl-endpoint:ttl")) in backend.calls



def test_create_gives_pr_stacks_the_review_identity_of_their_cloud(backend, monkeypatch):
    boundary = "arn:aws:iam::123456789012:policy/gha-sdxl-endpoint-review-boundary"
    vm_account = "sdxl-review-vm@sdxl-demo-1.iam.gserviceaccount.com"
    monkeypatch.setenv("AWS_REVIEW_PERMISSIONS_BOUNDARY", boundary)
    monkeypatch.setenv("GCP_REVIEW_VM_SERVICE_ACCOUNT", vm_account)
    assert ci.main(["create", "--stack", "pr-5", "--preset", "aws-g4dn"]) == 0
    aws_config = backend.stacks["pr-5"].config
    assert aws_config["sdxl-endpoint:permissionsBoundary"].value == boundary
    assert "sdxl-endpoint:gcpServiceAccount" not in aws_config  # config would refuse it on AWS
    assert ci.main(["create", "--stack", "pr-6", "--preset", "gcp-l4", "--config", "gcp:project=sdxl-demo-1"]) == 0
    gcp_config = backend.stacks["pr-6"].config
    assert gcp_config["sdxl-endpoint:gcpServiceAccount"].value == vm_account
    assert "sdxl-endpoint:permissionsBoundary" not in gcp_config


def test_create_without_the_variables_adds_no_identity(backend, monkeypatch):
    monkeypatch.delenv("AWS_REVIEW_PERMISSIONS_BOUNDARY", raising=False)
    stack = ci.create("pr-5", "aws-g4dn", environ={})
    assert "sdxl-endpoint:permissionsBoundary" not in stack.config


@pytest.mark.parametrize("name, preset", [("aws-g5", "aws-g4dn"), ("pr-7", "aws-g7"), ("pr-7", "pr-8")])
def test_create_refuses_before_touching_pulumi(backend, name, preset):
    with pytest.raises(ci.CiError):
        ci.create(name, preset)
    assert backend.calls == []


def test_up_sets_the_expiry_and_returns_only_public_outputs(backend):
    ci.create("pr-42", "aws-g4dn")
    result = ci.up("pr-42", timedelta(hours=8), now=lambda: NOW)
    stack = backend.stacks["pr-42"]
    assert stack.config[ci.TTL_KEY].value == "2026-03-14T23:09:26Z"
    assert not stack.config[ci.TTL_KEY].secret
    # the engine recorded the expiry with the update: that is what the reaper reads back
    assert stack.updates[0].config[ci.TTL_KEY].value == "2026-03-14T23:09:26Z"
    assert result == {"endpoint": "https://203-0-113-10.sslip.io", "gpu": "NVIDIA T4",
                      "hourlyCostUsd": "0.526", "expiresAt": "2026-03-14T23:09:26Z"}


def test_public_outputs_never_include_a_secret_even_when_listed():
    outputs = {"endpoint": auto.OutputValue("https://x.example.com", True),
               "gpu": auto.OutputValue("NVIDIA L4", False), "apiToken": auto.OutputValue(TOKEN, False)}
    assert ci.public_outputs(outputs) == {"gpu": "NVIDIA L4"}


def test_up_on_a_missing_stack_says_to_create_it(backend):
    with pytest.raises(ci.CiError, match="python -m tools.ci create --stack pr-5"):
        ci.up("pr-5", timedelta(hours=1))


def test_up_cli_never_prints_or_outputs_the_token(backend, tmp_path, monkeypatch, capsys):
    output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert ci.main(["create", "--stack", "pr-3", "--preset", "aws-g4dn"]) == 0
    assert ci.main(["up", "--stack", "pr-3", "--ttl", "2d"], now=lambda: NOW) == 0
    captured = capsys.readouterr()
    written = output.read_text()
    assert "endpoint=https://203-0-113-10.sslip.io\n" in written
    assert "expiresAt=2026-03-16T15:09:26Z\n" in written
    for text in (captured.out, captured.err, written):
        assert TOKEN not in text and "hf_should_never_show" not in text and "apiToken" not in text.replace(
            "apiToken: [secret]", "")
    assert "apiToken: [secret]" in captured.err, "the engine's (masked) progress goes to stderr"


def test_cli_bad_ttl_exits_2_with_one_message(backend, capsys):
    backend.add("pr-3")
    assert ci.main(["up", "--stack", "pr-3", "--ttl", "30d"]) == 2
    assert capsys.readouterr().err.startswith("error: ttl '30d'")
    assert backend.calls == []


def test_destroy_destroys_then_removes(backend):
    deployed(backend, "pr-42", NOW, "2026-03-15T00:00:00Z")
    assert ci.destroy("pr-42") is True
    assert backend.calls[-2:] == [("destroy", "pr-42", True), ("remove_stack", "pr-42")], "destroy --refresh"
    assert "pr-42" not in backend.stacks


def test_destroy_of_a_missing_stack_is_a_quiet_no_op(backend, capsys):
    assert ci.main(["destroy", "--stack", "pr-42"]) == 0
    assert json.loads(capsys.readouterr().out) == {"destroyed": "false"}
    assert backend.calls == []


def test_destroy_refuses_a_preset_or_production_stack(backend):
    backend.add("aws-g5").resources = 12
    assert ci.main(["destroy", "--stack", "aws-g5"]) == 2
    assert backend.calls == [] and backend.stacks["aws-g5"].resources == 12


def test_a_failed_destroy_keeps_the_stack_and_fails_the_cli(backend, capsys):
    deployed(backend, "pr-8", NOW, None).fail_destroy = True
    assert ci.main(["destroy", "--stack", "pr-8"]) == 1
    assert "TerminateInstances, https response error StatusCode: 503" in capsys.readouterr().err
    assert ("remove_stack", "pr-8") not in backend.calls and "pr-8" in backend.stacks


# --- expiry and the reaper --------------------------------------------------------------------


@pytest.fixture
def fleet(backend) -> FakeBackend:
    deployed(backend, "pr-1", NOW - timedelta(days=1), "2026-03-14T15:09:25Z")  # expired a second ago
    deployed(backend, "pr-2", NOW - timedelta(days=1), "2026-03-14T15:09:27Z")  # a second to go
    deployed(backend, "pr-3", NOW - timedelta(days=7, hours=1), None)  # resources and no ttl: expired now
    backend.add("pr-5")  # created, never deployed: nothing bills
    deployed(backend, "pr-6", NOW - timedelta(days=3), "2026-03-12T00:00:00Z")
    backend.stacks["pr-6"].locks.append(NOW - timedelta(minutes=10))  # an up or destroy is running on it now
    deployed(backend, "aws-g5", NOW - timedelta(days=30), "2026-01-01T00:00:00Z")  # never a PR stack
    deployed(backend, "pr-10", NOW - timedelta(days=2), "2026-03-13T00:00:00+01:00")
    backend.listed_names["pr-10"] = "organization/sdxl-endpoint/pr-10"
    return backend


def test_expired_lists_only_pr_stacks_past_their_expiry_oldest_first(fleet):
    found = reaper.scan(now=lambda: NOW).expired
    assert [(e.stack, ci.rfc3339(e.expires_at), e.source) for e in found] == [
        ("pr-6", "2026-03-12T00:00:00Z", "ttl"),
        ("pr-10", "2026-03-12T23:00:00Z", "ttl"),
        ("pr-1", "2026-03-14T15:09:25Z", "ttl"),
        ("pr-3", "2026-03-14T15:09:26Z", "12 resources and no ttl recorded"),
    ]


def test_expiry_moves_with_the_clock(fleet):
    later = NOW + timedelta(seconds=2)
    assert {e.stack for e in reaper.scan(now=lambda: later).expired} == {"pr-1", "pr-2", "pr-3", "pr-6", "pr-10"}
    earlier = datetime(2026, 3, 11, 22, 59, tzinfo=UTC)
    assert {e.stack for e in reaper.scan(now=lambda: earlier).expired} == {"pr-3"}, "no ttl and resources: at once"


def test_expired_cli_prints_one_name_per_line(fleet, capsys):
    assert ci.main(["expired"], now=lambda: NOW) == 0
    assert sorted(capsys.readouterr().out.split()) == ["pr-1", "pr-10", "pr-3", "pr-6"]


def test_expired_json_is_the_reaper_matrix_and_says_what_it_left(fleet, tmp_path, monkeypatch, capsys):
    output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert ci.main(["expired", "--json", "--max", "3"], now=lambda: NOW) == 0
    matrix = [{"stack": "pr-6", "pr": "6"}, {"stack": "pr-10", "pr": "10"}, {"stack": "pr-1", "pr": "1"}]
    assert json.loads(capsys.readouterr().out) == matrix
    written = output.read_text()
    assert f"stacks={json.dumps(matrix, separators=(',', ':'))}\n" in written
    assert "count=3\n" in written and "left=pr-3\n" in written


def test_reap_destroys_expired_stacks_and_keeps_going_after_a_failure(fleet, tmp_path, monkeypatch, capsys):
    fleet.stacks["pr-3"].fail_destroy = True
    output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert ci.main(["reap"], now=lambda: NOW) == 1
    assert set(fleet.stacks) == {"pr-2", "pr-3", "pr-5", "pr-6", "aws-g5"}
    reaped = [c for c in fleet.calls if c[0] in ("destroy", "remove_stack", "cancel")]
    assert reaped == [
        ("destroy", "pr-6", True),  # locked ten minutes ago by a job that may be alive: left alone
        ("destroy", "pr-10", True), ("remove_stack", "pr-10"),
        ("destroy", "pr-1", True), ("remove_stack", "pr-1"),
        ("destroy", "pr-3", True)]
    result = json.loads(capsys.readouterr().out)
    assert result == {"destroyed": "pr-10 pr-1", "failed": "pr-3", "busy": "pr-6", "left": "", "unreadable": ""}
    assert "failed=pr-3\n" in output.read_text() and "busy=pr-6\n" in output.read_text()


@pytest.fixture
def unreadable(fleet) -> FakeBackend:
    """The fleet with pr-1's history unparseable and pr-10's checkpoint denied: `pulumi stack select` fails."""
    fleet.stacks["pr-1"].history_unreadable = True
    fleet.stacks["pr-10"].checkpoint_unreadable = True
    return fleet


def test_an_unreadable_stack_is_reported_and_the_others_still_listed(unreadable, tmp_path, monkeypatch, capsys):
    output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert ci.main(["expired", "--json"], now=lambda: NOW) == 0, "the find job must succeed so the reap jobs run"
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [{"stack": "pr-6", "pr": "6"}, {"stack": "pr-3", "pr": "3"}]
    assert "unreadable=pr-1 pr-10\n" in output.read_text() and "count=2\n" in output.read_text()
    assert "stack pr-1: could not read its state or history:" in captured.err
    assert "  error: reading history file .pulumi/history/sdxl-endpoint/pr-1/" in captured.err
    assert "stack pr-10: could not read its state or history:" in captured.err and "AccessDenied" in captured.err
    assert {e.stack for e in reaper.scan(now=lambda: NOW).expired} == {"pr-3", "pr-6"}


def test_reap_skips_an_unreadable_stack_destroys_the_rest_and_fails(unreadable, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "github_output"))
    assert ci.main(["reap"], now=lambda: NOW) == 1
    assert json.loads(capsys.readouterr().out) == {"destroyed": "pr-3", "failed": "", "busy": "pr-6", "left": "",
                                                   "unreadable": "pr-1 pr-10"}
    assert {"pr-1", "pr-10"} <= set(unreadable.stacks), "never destroyed without reading its expiry"
    # reaper.yml's per-stack job: the re-read before the destroy fails the same way
    assert ci.main(["reap", "--stack", "pr-1"], now=lambda: NOW) == 1
    assert json.loads(capsys.readouterr().out)["unreadable"] == "pr-1"
    assert not [c for c in unreadable.calls if c[0] == "destroy" and c[1] in ("pr-1", "pr-10")]


def test_a_reaped_stack_can_come_back_on_the_next_push(backend):
    ci.create("pr-12", "aws-g4dn")
    ci.up("pr-12", timedelta(hours=1), now=lambda: NOW)
    assert [e.stack for e in reaper.scan(now=lambda: NOW + timedelta(minutes=61)).expired] == ["pr-12"]
    reaper.reap(now=lambda: NOW + timedelta(minutes=61))
    assert "pr-12" not in backend.stacks
    ci.create("pr-12", "aws-g4dn")
    assert ci.up("pr-12", timedelta(hours=1), now=lambda: NOW + timedelta(hours=2))["expiresAt"] == \
        "2026-03-14T18:09:26Z"


def test_github_output_refuses_multiline_values(tmp_path):
    with pytest.raises(ci.CiError, match="spans lines"):
        ci.write_github_output({"endpoint": "https://x\nmalicious=1"}, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_overrides_add_what_presets_leave_out(backend):
    stack = ci.create("pr-4", "aws-g4dn", ci.parse_overrides(["gcp:project=sdxl-demo-1", "aws:region=us-west-2"]))
    assert stack.config["gcp:project"].value == "sdxl-demo-1"
    assert stack.config["aws:region"].value == "us-west-2", "an override wins over the preset"


@pytest.mark.parametrize("pair", ["gcp:project", "project=x", "sdxl-endpoint:ttl=2030-01-01T00:00:00Z",
                                  "gcp:project=", "gcp:project=a\nb"])
def test_bad_overrides_are_refused(pair):
    with pytest.raises(ci.CiError, match="namespace:key=value"):
        ci.parse_overrides([pair])


def test_api_token_comes_from_the_environment_as_a_secret(backend, monkeypatch, capsys):
    monkeypatch.setenv(ci.API_TOKEN_ENV, TOKEN)
    assert ci.main(["create", "--stack", "pr-6", "--preset", "aws-g4dn"]) == 0
    value = backend.stacks["pr-6"].config["sdxl-endpoint:apiToken"]
    assert value.value == TOKEN and value.secret
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err


# --- the reaper against what a real DIY backend records (issue 12) -------------------------------


def test_a_failed_destroy_on_a_fresh_checkout_keeps_the_recorded_ttl(backend):
    stack = deployed(backend, "pr-8", NOW - timedelta(days=1), "2026-03-14T14:00:00Z")  # expired an hour ago
    backend.fresh_checkout()  # the reaper's runner has no stacks/Pulumi.pr-8.yaml
    stack.fail_destroy = True
    assert ci.main(["reap"], now=lambda: NOW) == 1
    assert stack.updates[0].result == "failed" and ci.TTL_KEY not in stack.updates[0].config
    stack.fail_destroy = False
    assert [e.stack for e in reaper.scan(now=lambda: NOW).expired] == ["pr-8"], \
        "the failed destroy must not reset the TTL"


def test_the_newest_valid_ttl_anywhere_in_the_history_counts(backend):
    stack = deployed(backend, "pr-13", NOW - timedelta(days=2), "2026-03-13T12:00:00Z")
    backend.fresh_checkout()
    backend.now = NOW - timedelta(days=1)
    stack._record("refresh", backend.now)  # a later, successful operation run without the stack file
    backend.now = NOW
    (found,) = reaper.scan(now=lambda: NOW).expired
    assert (found.stack, ci.rfc3339(found.expires_at)) == ("pr-13", "2026-03-13T12:00:00Z")


def test_a_killed_first_up_with_resources_and_no_history_is_expired_now(backend):
    backend.add("pr-9").resources = 7  # the checkpoint was written, the history never was
    assert [e.stack for e in reaper.scan(now=lambda: NOW).expired] == ["pr-9"]


def test_a_stack_whose_last_operation_failed_is_expired_now(backend):
    stack = deployed(backend, "pr-14", NOW - timedelta(hours=2), "2026-03-20T00:00:00Z")
    stack._record("update", NOW - timedelta(hours=1), result="failed")  # its TTL is days away
    assert [e.stack for e in reaper.scan(now=lambda: NOW).expired] == ["pr-14"]


def test_a_stuck_lock_is_cleared_and_the_stack_destroyed(backend):
    stack = deployed(backend, "pr-11", NOW - timedelta(days=2), "2026-03-13T00:00:00Z")
    stack.locks.append(NOW - timedelta(hours=3))  # a cancelled job left its lock; DIY locks never expire
    assert ci.main(["reap"], now=lambda: NOW) == 0
    assert "pr-11" not in backend.stacks
    assert ("cancel", "pr-11") in backend.calls


def test_a_recent_lock_is_left_for_the_next_run(backend, capsys):
    stack = deployed(backend, "pr-15", NOW - timedelta(days=2), "2026-03-13T00:00:00Z")
    stack.locks.append(NOW - reaper.STALE_LOCK + timedelta(minutes=1))  # its job may still be running
    assert ci.main(["reap"], now=lambda: NOW) == 0
    assert "pr-15" in backend.stacks and ("cancel", "pr-15") not in backend.calls
    assert "locked since 2026-03-14T14:10:26Z by a job that may still be running" in capsys.readouterr().err


def test_up_clears_a_stale_lock_too(backend):
    ci.create("pr-16", "aws-g4dn")
    backend.stacks["pr-16"].locks.append(NOW - timedelta(hours=5))  # a cancelled review-env run
    assert ci.up("pr-16", timedelta(hours=1), now=lambda: NOW)["expiresAt"] == "2026-03-14T16:09:26Z"
    assert ("cancel", "pr-16") in backend.calls


def test_the_reaper_stops_at_its_budget_and_says_what_it_left(fleet):
    ticks = iter([0, 60, 41 * 60])  # seconds spent before each destroy: the third is past 40 minutes
    reaped = reaper.reap(lambda: NOW, budget=timedelta(minutes=40), elapsed=lambda: next(ticks))
    assert reaped.destroyed == ["pr-10"] and reaped.busy == ["pr-6"]
    assert reaped.left == ["pr-1", "pr-3"]


def test_the_expiry_is_read_again_right_before_each_destroy(backend):
    stack = deployed(backend, "pr-17", NOW - timedelta(days=1), "2026-03-14T14:00:00Z")
    candidates = [e.stack for e in reaper.scan(now=lambda: NOW).expired]
    assert candidates == ["pr-17"]
    stack.config[ci.TTL_KEY] = auto.ConfigValue("2026-03-15T14:00:00Z")  # a push renewed it meanwhile
    stack.up(on_output=lambda _line: None)
    reaped = reaper.reap(lambda: NOW, stacks=candidates)
    assert reaped.destroyed == [] and "pr-17" in backend.stacks
    assert not [c for c in backend.calls if c[0] == "destroy"]


def test_reap_of_named_stacks_refuses_a_production_stack(backend, capsys):
    deployed(backend, "aws-g5", NOW - timedelta(days=9), "2026-01-01T00:00:00Z")
    assert ci.main(["reap", "--stack", "aws-g5"], now=lambda: NOW) == 2
    assert "aws-g5" in backend.stacks and "pr-<pull request number>" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["0m", "7h", "soon", "40"])
def test_a_bad_budget_is_refused(budget):
    with pytest.raises(ci.CiError, match="fix: --budget 40m"):
        reaper.parse_budget(budget)


def test_a_spot_preset_is_refused_for_a_pr_stack(backend, tmp_path, monkeypatch):
    (tmp_path / "Pulumi.aws-spot.yaml").write_text(yaml.safe_dump({"config": {
        "sdxl-endpoint:cloud": "aws", "sdxl-endpoint:spot": True}}))
    monkeypatch.setattr(presets, "STACKS_DIR", tmp_path)
    with pytest.raises(ci.CiError, match="PR endpoints run on demand"):
        ci.create("pr-18", "aws-spot")
    assert backend.calls == []
    ci.create("pr-18", "aws-spot", ci.parse_overrides(["sdxl-endpoint:spot=false"]))


def test_exists_tells_no_such_stack_from_a_broken_backend(backend, capsys):
    stack = backend.add("aws-g5")
    assert ci.main(["exists", "--stack", "aws-g5"]) == 0
    assert ci.main(["exists", "--stack", "aws-g6"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"found": "true"},
                                                                                 {"found": "false"}]

    stack.checkpoint_unreadable = True
    assert ci.main(["exists", "--stack", "aws-g5"]) == 1
    assert "AccessDenied" in capsys.readouterr().err


# --- which presets CI deploys ------------------------------------------------------------------


@pytest.mark.parametrize("preset, said", [("aws-g5-fleet", "is a fleet"), ("gcp-l4-fleet", "is a fleet"),
                                          ("hf-a10g", "deploys to huggingface"), ("runpod-l4", "deploys to runpod"),
                                          ("k8s-gke-l4", "deploys to kubernetes")])
def test_plan_and_create_refuse_presets_the_ci_roles_cannot_deploy(backend, preset, said):
    with pytest.raises(ci.CiError, match=said) as refused:
        ci.plan(7, "OPEN", ["deploy-preview", f"preset:{preset}"])
    assert "aws-g4dn" in str(refused.value)  # the fix names the presets that work
    with pytest.raises(ci.CiError, match=said):
        ci.create("pr-7", preset)
    assert backend.calls == []


def test_a_closed_pr_is_torn_down_whatever_its_preset_label():
    assert ci.plan(7, "CLOSED", ["deploy-preview", "preset:aws-g5-fleet"]).action == "destroy"


def test_ci_presets_are_the_single_vm_aws_and_gcp_ones_and_the_readme_lists_them():
    supported = ci.ci_presets()
    for name in presets.names():
        config = presets.read(name).config
        single_vm = config.get("sdxl-endpoint:cloud", "aws") in ("aws", "gcp") and \
            int(config.get("sdxl-endpoint:maxReplicas", 1)) == 1
        assert (name in supported) == single_vm, name
    assert ci.DEFAULT_PRESET in supported
    readme = " ".join((presets.ROOT / "README.md").read_text().split())
    assert "CI deploys these presets: " + ", ".join(f"`{n}`" for n in supported) + " (" in readme


# --- a closed or unlabelled PR's stack expires at once (the destroy review-env queued may be lost) ----------


@pytest.fixture
def github(monkeypatch):
    """GitHub's REST API on loopback: GET /repos/{owner}/{repo}/pulls/{n} answers each PR's state and labels."""
    from tests.fakes import loopback_server, reply_json

    pulls_by_number = {}
    seen = []

    def handle(request, method):
        seen.append((method, request.path, request.headers.get("Authorization")))
        number = int(request.path.rsplit("/", 1)[-1])
        if number not in pulls_by_number:
            reply_json(request, 404, {"message": "Not Found"})
            return
        state, labels = pulls_by_number[number]
        reply_json(request, 200, {"number": number, "state": state, "labels": [{"name": n} for n in labels]})

    with loopback_server(handle) as url:
        monkeypatch.setenv("GITHUB_API_URL", url)
        monkeypatch.setenv("GITHUB_TOKEN", "ghs_test")
        monkeypatch.setenv("GITHUB_REPOSITORY", "octo-org/sdxl-endpoint")
        yield pulls_by_number, seen


def test_a_closed_or_unlabelled_prs_stack_is_expired_before_its_ttl(backend, github, tmp_path, monkeypatch, capsys):
    pulls_by_number, seen = github
    for number in (21, 22, 23, 24):
        deployed(backend, f"pr-{number}", NOW - timedelta(hours=1), "2026-03-20T00:00:00Z")  # days ahead
    pulls_by_number.update({21: ("closed", ["deploy-preview"]), 22: ("open", ["bug"]),
                            23: ("open", ["deploy-preview"])})  # 24: the API answers 404
    found = {e.stack: e.source for e in reaper.scan(lambda: NOW, pulls.lookup_from_env()).expired}
    assert found == {"pr-21": "its pull request is closed",
                     "pr-22": "its pull request is no longer labelled deploy-preview"}
    assert ("GET", "/repos/octo-org/sdxl-endpoint/pulls/21", "Bearer ghs_test") in seen
    assert "pull request #24: could not read its state" in capsys.readouterr().err  # the TTL decides
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "out"))
    assert ci.main(["reap"], now=lambda: NOW) == 0
    assert sorted(backend.stacks) == ["pr-23", "pr-24"]


def test_without_a_token_only_the_ttl_counts(backend, monkeypatch):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    assert pulls.lookup_from_env() is None
    deployed(backend, "pr-21", NOW - timedelta(hours=1), "2026-03-20T00:00:00Z")
    assert reaper.scan(lambda: NOW, None).expired == []


@pytest.mark.parametrize("command", [["up", "--stack", "pr-16", "--ttl", "1h"], ["destroy", "--stack", "pr-16"]])
def test_a_stack_locked_by_a_live_job_is_one_error_line_not_a_traceback(backend, command, capsys):
    ci.create("pr-16", "aws-g4dn")
    backend.stacks["pr-16"].locks.append(NOW - timedelta(minutes=5))  # that job may still be running
    assert ci.main(command, now=lambda: NOW) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: stack pr-16 is busy: locked since 2026-03-14T15:04:26Z")
    assert "Traceback" not in "\n".join(err)
    assert "pr-16" in backend.stacks  # nothing destroyed or removed
