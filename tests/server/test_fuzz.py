"""Schemathesis against a live `python -m server --model tiny`: every operation of its own OpenAPI document,
with the bearer token, generated from a fixed seed with a bounded number of examples.

Checks: no 5xx, and each answer conforms to the document (status code declared, content type, headers,
body schema). Limits are set so that the few valid generations stay cheap on a CPU (256x256, 2 steps).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import Settings
from tests.server.helpers import TOKEN, LiveServer, auth

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES = 25  # per operation
SENT: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(["--model", "tiny", "--api-token", TOKEN, "--log-level", "warning", "--min-size", "256",
                         "--max-size", "256", "--max-steps", "2", "--default-steps", "1", "--max-n", "2",
                         "--max-input-pixels", "1000000", "--max-body-mb", "1"],
                        tmp_path_factory.mktemp("fuzz") / "server.log")
    try:
        server.wait_ready(auth())
        yield server
        answers = Counter()
        text = httpx.get(f"{server.url}/metrics", headers=auth()).text
        for route, method, status, count in re.findall(
                r'^sdxl_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} (\S+)', text, re.M):
            answers[f"{route} {method} {status}"] += int(float(count))
        print(f"\nschemathesis sent {sum(SENT.values())} requests; the server answered: {dict(answers)}")
        assert "Traceback" not in server.log(), server.log()[-3000:]
    finally:
        server.stop()


# The document the server serves, built by the same code without starting it (schemathesis' lazy loader from
# a fixture does not work with this pytest); the first test checks that the live server serves exactly this.
DOCUMENT = create_app(Settings(model="tiny")).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_fuzzed_document_is_the_one_the_live_server_serves(fuzz_server):
    assert httpx.get(f"{fuzz_server.url}/openapi.json", headers=auth()).json() == DOCUMENT


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_conforms_and_never_answers_5xx(case, fuzz_server):
    SENT[f"{case.method} {case.path}"] += 1
    case.call_and_validate(base_url=fuzz_server.url, headers=auth(), checks=CHECKS, timeout=30)
