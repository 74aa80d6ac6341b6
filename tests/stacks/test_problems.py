"""Config errors are data: a ConfigError carries its Problem items, a refusal is rendered by one renderer, and the
doctor reuses the items instead of cutting the error's text apart."""

from __future__ import annotations

import pytest

from stacks import catalog, config
from tests.stacks.conftest import run_program
from tools.doctor import Target
from tools.doctor.target import resolve_target


def test_a_config_error_carries_every_problem_with_its_fix():
    with pytest.raises(config.ConfigError) as raised:
        run_program({"instanceType": "c5.xlarge", "diskGb": "20"}, preview=True)
    error = raised.value
    assert {p.headline.split(" ", 1)[0] for p in error.problems} == {"diskGb", "instanceType"}
    assert all(p.fix for p in error.problems)
    # The text is a header, then the items as render_problems lists them: nothing else to parse.
    header, body = str(error).split("\n", 1)
    assert header == f"Stack '{error.stack}' has 2 problems in its config (stacks/Pulumi.{error.stack}.yaml):"
    assert body == config.render_problems(error.problems)
    assert body.count("Nearest types that fit:") == 1


def test_a_refusal_is_listed_with_the_catalogs_own_lines():
    refusal = catalog.refusal("aws", "c5.xlarge", "it has no GPU", 4).refusal
    problems = config.Problems()
    problems.add_refusal(refusal)
    (problem,) = problems.items
    assert (problem.headline, problem.details, problem.fix) == (refusal.headline, refusal.details, refusal.fix)
    assert refusal.details[0] == "Nearest types that fit:"
    assert [line.removeprefix("  - ") for line in refusal.details[1:]] == [o.describe() for o in refusal.alternatives]
    assert refusal.render() == "\n".join([refusal.headline, *refusal.details, f"fix: {refusal.fix}"])


def test_the_doctor_lists_the_errors_items_under_its_own_header():
    values = {"sdxl-endpoint:cloud": "aws", "sdxl-endpoint:instanceType": "c5.xlarge", "aws:region": "us-east-1"}
    check = resolve_target(values, None, None, Target(cloud="aws"))
    with pytest.raises(config.ConfigError) as raised:
        config.validate(values, stack="doctor", describe_machine=None)
    assert check.value == "the flags name an invalid target:\n" + config.render_problems(raised.value.problems)


def test_a_type_no_zone_offers_is_a_problem_with_its_fix():
    with pytest.raises(config.ConfigError) as raised:
        run_program({"instanceType": "g6e.xlarge", "aws:region": "us-west-1"})
    (problem,) = raised.value.problems
    assert problem.headline == "instanceType = 'g6e.xlarge': not offered in any availability zone of us-west-1"
    assert problem.fix.startswith("pick another region (pulumi config set aws:region us-east-1)")
