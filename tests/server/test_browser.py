"""A real headless Chromium: a page on one origin calls the server on another origin with a token.

This is the scenario that failed in the user's web app with "Failed to fetch": it needs CORS on
successes and on errors, an allowed Authorization header, and exposed x-seed / x-compute-time.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import FAULT, TOKEN, free_port

PAGE = """<!doctype html>
<html><body>
<img id="out">
<script>
async function call(url, token, body) {
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  try {
    const response = await fetch(url, {method: "POST", headers, body: JSON.stringify(body)});
    const result = {status: response.status, seed: response.headers.get("x-seed"),
                    computeTime: response.headers.get("x-compute-time"),
                    type: response.headers.get("content-type")};
    if (response.ok && result.type.startsWith("image/")) {
      const img = document.getElementById("out");
      img.src = URL.createObjectURL(await response.blob());
      await img.decode();
      result.width = img.naturalWidth;
      result.height = img.naturalHeight;
    } else {
      result.body = await response.json();
    }
    return result;
  } catch (error) {
    return {fetchError: String(error)};  // what the user saw: "TypeError: Failed to fetch"
  }
}
</script>
</body></html>
"""


@pytest.fixture(scope="module")
def page_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A static page served from another origin (localhost:<other port>) than the API (127.0.0.1)."""
    root: Path = tmp_path_factory.mktemp("page")
    (root / "index.html").write_text(PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def page(browser, page_origin):
    browser.get(f"{page_origin}/index.html")
    return browser


def call(page, url: str, token: str | None, body: dict) -> dict:
    return page.execute_async_script(
        "const done = arguments[arguments.length - 1]; call(arguments[0], arguments[1], arguments[2]).then(done);",
        url, token, body)


def test_cross_origin_text_to_image_with_token_arrives_as_an_image(page, live_server):
    result = call(page, f"{live_server.url}/", TOKEN,
                  {"inputs": "a cat", "parameters": {"num_inference_steps": 2, "seed": 5, "width": 320}})
    assert "fetchError" not in result, result
    assert result["status"] == 200
    assert result["type"] == "image/png"  # fetch() sends Accept: */*, as @huggingface/inference does
    assert (result["width"], result["height"]) == (320, 256)
    assert result["seed"] == "5" and float(result["computeTime"]) > 0


def test_cross_origin_openai_generation(page, live_server):
    result = call(page, f"{live_server.url}/v1/images/generations", TOKEN,
                  {"prompt": "a cat", "num_inference_steps": 2, "seed": 8})
    assert result["status"] == 200, result
    assert result["body"]["data"][0]["seed"] == 8


@pytest.mark.parametrize(
    ("token", "body", "status"),
    [
        ("wrong-token", {"inputs": "a cat"}, 401),
        (TOKEN, {"inputs": "a cat", "parameters": {"width": 3}}, 422),
        (TOKEN, {"inputs": f"{FAULT}:fail", "parameters": {"num_inference_steps": 2}}, 500),
    ],
)
def test_errors_reach_the_page_instead_of_failed_to_fetch(page, live_server, token, body, status):
    result = call(page, f"{live_server.url}/", token, body)
    assert "fetchError" not in result, result
    assert result["status"] == status
    assert result["body"]["error"]
