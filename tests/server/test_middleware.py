"""Browser correctness (CORS on every response, errors included), auth, body limits, crash handling."""

from __future__ import annotations

import logging

import pytest

from tests.server.helpers import FAST, FAULT, auth

ORIGIN = "https://app.example"
ROUTES = [("POST", "/"), ("POST", "/models/org/model"), ("POST", "/v1/images/generations"),
          ("POST", "/v1/images/edits"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"),
          ("GET", "/info")]


def assert_cors(response, origin: str = "*") -> None:
    assert response.headers.get("access-control-allow-origin") == origin, (response.status_code, response.headers)
    exposed = response.headers.get("access-control-expose-headers", "").lower()
    assert "x-seed" in exposed and "x-compute-time" in exposed


@pytest.fixture
def secured(make_client):
    return make_client(api_token="s3cret")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_preflight_is_answered_on_every_route_without_a_token(secured, method, path):
    response = secured.options(path, headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert method in response.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in response.headers


def test_cors_headers_on_success(secured):
    response = secured.post("/", json={"inputs": "x", "parameters": FAST}, headers={**auth("s3cret"), "Origin": ORIGIN})
    assert response.status_code == 200
    assert_cors(response)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/", {"inputs": "x"}, {}, 401),
        ("/v1/images/generations", {"prompt": "x"}, {"Authorization": "Bearer nope"}, 401),
        ("/", {"inputs": "x", "parameters": {"width": 1}}, auth("s3cret"), 422),
        ("/v1/images/generations", {"prompt": "x", "n": 99}, auth("s3cret"), 400),
        ("/nope", {}, auth("s3cret"), 404),
        ("/", {"inputs": f"{FAULT}:fail", "parameters": FAST}, auth("s3cret"), 500),
        ("/v1/images/generations", {"prompt": f"{FAULT}:oom", **FAST}, auth("s3cret"), 503),
    ],
)
def test_cors_headers_on_errors(secured, path, body, headers, status):
    response = secured.post(path, json=body, headers={**headers, "Origin": ORIGIN})
    assert response.status_code == status
    assert_cors(response)


def test_unhandled_exception_is_a_json_500_with_cors(secured):
    async def boom():
        raise RuntimeError("bug")

    secured.app.router.add_api_route("/boom", boom)
    for path, shape in (("/boom", str), ("/v1/boom", dict)):
        if path == "/v1/boom":
            secured.app.router.add_api_route("/v1/boom", boom)
        response = secured.get(path, headers={**auth("s3cret"), "Origin": ORIGIN})
        assert response.status_code == 500
        assert_cors(response)
        assert isinstance(response.json()["error"], shape)


def test_only_configured_origins_are_allowed(make_client):
    client = make_client(cors_origins=[ORIGIN])
    ok = client.post("/", json={"inputs": "x", "parameters": FAST}, headers={"Origin": ORIGIN})
    assert_cors(ok, ORIGIN)
    other = client.post("/", json={"inputs": "x", "parameters": FAST}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# --- auth -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "Bearer wrong", "Bearer s3cret-but-longer", "Basic s3cret", "s3cret",
                                    "Bearer "])
def test_missing_or_wrong_token_is_401(secured, header):
    headers = {"Authorization": header} if header is not None else {}
    response = secured.post("/", json={"inputs": "x", "parameters": FAST}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "error" in response.json()


def test_token_is_checked_before_the_body_is_parsed(secured):
    response = secured.post("/", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 401


def test_openai_401_has_openai_shape(secured):
    response = secured.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_right_token_any_scheme_case(secured):
    for scheme in ("Bearer", "bearer"):
        response = secured.post("/", json={"inputs": "x", "parameters": FAST},
                                headers={"Authorization": f"{scheme} s3cret"})
        assert response.status_code == 200


def test_token_never_appears_in_logs_or_settings_repr(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(api_token="very-secret-value", log_level="debug")
    client.post("/", json={"inputs": "x", "parameters": FAST}, headers=auth("very-secret-value"))
    client.post("/", json={"inputs": "x"}, headers=auth("guess"))
    client.post("/", json={"inputs": f"{FAULT}:fail", "parameters": FAST}, headers=auth("very-secret-value"))
    assert "very-secret-value" not in caplog.text
    assert "very-secret-value" not in repr(client.app.state.settings)
    assert "very-secret-value" not in client.get("/info", headers=auth("very-secret-value")).text


# --- body limit -----------------------------------------------------------------------------------

@pytest.fixture
def small_body(make_client):
    return make_client(max_body_mb=0.01)  # ~10 KB


def test_declared_body_over_the_limit_is_413(small_body):
    big = {"inputs": "x" * 20_000}
    response = small_body.post("/", json=big, headers={"Origin": ORIGIN})
    assert response.status_code == 413
    assert "error" in response.json()
    assert_cors(response)
    openai = small_body.post("/v1/images/generations", json={"prompt": "x" * 20_000})
    assert openai.status_code == 413 and openai.json()["error"]["code"] == "body_too_large"


def test_streamed_body_over_the_limit_is_413(small_body):
    def chunks():
        for _ in range(20):
            yield b"x" * 1024

    response = small_body.post("/", content=chunks(), headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 413


def test_streamed_body_under_the_limit_is_delivered_whole(small_body):
    def chunks():
        yield b'{"inputs": "a cat", '
        yield b'"parameters": {"num_inference_steps": 2}}'

    response = small_body.post("/", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
