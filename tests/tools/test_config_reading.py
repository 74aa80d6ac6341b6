"""The operator tools read a stack's `cloud` and `spot` as the program does (stacks/config.py), not by rules of
their own."""

from __future__ import annotations

import pytest
import yaml

from stacks import config
from tests.tools.test_wake import GCP, TOKEN, deployed
from tools import ci, presets, wake

SPOT = "sdxl-endpoint:spot"


@pytest.mark.parametrize("value", ["true", "True", " FALSE ", "false", True, False, "yes", "1", "0", "on"])
def test_flag_of_accepts_what_validate_accepts(value):
    refused = config.flag_of(value) is None
    try:
        settings = config.validate({SPOT: value}, stack="plain")
    except config.ConfigError as err:
        assert refused == any(p.headline.startswith("spot") for p in err.problems), value
    else:
        assert not refused and settings.spot is config.flag_of(value), value


@pytest.mark.parametrize("value, refused_by_ci", [("TRUE", True), ("yes", False), ("1", False)])
def test_ci_refuses_a_spot_preset_only_where_the_program_reads_spot_true(backend, tmp_path, monkeypatch, value,
                                                                         refused_by_ci):
    # "yes" and "1" are no spot request: `pulumi preview` refuses them as config mistakes, naming the fix.
    (tmp_path / "Pulumi.aws-spot.yaml").write_text(yaml.safe_dump({"config": {
        "sdxl-endpoint:cloud": "aws", SPOT: value}}))
    monkeypatch.setattr(presets, "STACKS_DIR", tmp_path)
    if refused_by_ci:
        with pytest.raises(ci.CiError, match="PR endpoints run on demand"):
            ci.create("pr-18", "aws-spot")
    else:
        ci.create("pr-18", "aws-spot")


def test_wake_reads_the_cloud_as_the_program_picks_its_target(backend):
    deployed(backend, "gcp-t4", {"endpoint": "https://203.0.113.20/", "apiToken": TOKEN, "instanceId": "sdxl-gcp-t4-vm",
                                 "region": "us-central1", "availabilityZone": "us-central1-a"},
             {"sdxl-endpoint:cloud": " GCP", "gcp:project": "my-project"})
    assert config.cloud_of(" GCP") == "gcp"
    assert wake.read_target("gcp-t4") == GCP
