"""@huggingface/inference (the JS client web apps use), unchanged, against a live server.

`textToImage({endpointUrl})` sends `Accept: */*`, and must get image bytes back, not JSON.
The package is pinned in tests/server/js/package-lock.json and installed by `make dev`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.server.helpers import TOKEN

CLIENT_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None or not (CLIENT_DIR / "node_modules" / "@huggingface" / "inference").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must run `make dev`, which installs tests/server/js with npm ci")
        pytest.skip("node or tests/server/js/node_modules missing (make dev installs them)")
    return node


def test_text_to_image_and_image_to_image_with_endpoint_url(node, live_server):
    result = subprocess.run([node, "client.mjs", live_server.url, TOKEN], cwd=CLIENT_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["generated"] == {**seen["generated"], "type": "image/png", "png": True, "width": 320, "height": 256}
    assert seen["edited"]["png"] and (seen["edited"]["width"], seen["edited"]["height"]) == (320, 256)
    # A wrong token reaches the app as the server's own message, not as "Failed to fetch".
    assert "Missing or invalid bearer token" in seen["rejected"]
