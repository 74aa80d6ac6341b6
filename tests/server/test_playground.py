"""`GET /playground` in a real headless Chromium, against a live `python -m server --model tiny`."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from server.app import PUBLIC_PATHS
from tests.server.helpers import TOKEN, auth, sample_image
from tests.server.test_routes_ops import metric

FILES = ("/playground", "/playground/app.js", "/playground/style.css")


def test_the_page_loads_without_a_token_under_a_strict_content_security_policy(live_server):
    for path in FILES:
        response = httpx.get(f"{live_server.url}{path}")  # the live server has a token; none is sent
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "unsafe" not in csp and "*" not in csp
        # Nothing from third parties: no absolute URL at all, no protocol-relative one.
        assert not re.search(r"https?://|[\"'(]//", response.text), path
    page = httpx.get(f"{live_server.url}/playground").text
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP to block


def wait_for(browser, condition, timeout: float = 60):
    return WebDriverWait(browser, timeout).until(lambda driver: condition(driver) or None)


def field(browser, element_id: str, value: str) -> None:
    element = browser.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def text_of(browser, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text


def console_problems(browser) -> list[str]:
    """Script errors and CSP refusals; not the 4xx answers the tests provoke (or /favicon.ico's 401)."""
    return [entry["message"] for entry in browser.get_log("browser")
            if entry["level"] in ("SEVERE", "WARNING") and "Failed to load resource" not in entry["message"]]


@pytest.fixture
def playground(browser, live_server):
    browser.get(f"{live_server.url}/playground")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{live_server.url}/playground")
    field(browser, "token", TOKEN)
    field(browser, "steps", "2")
    return browser


def test_text_to_image_shows_the_image_seed_and_timings(playground, live_server):
    field(playground, "seed", "5")
    field(playground, "width", "320")
    playground.find_element(By.ID, "generate").click()
    wait_for(playground, lambda d: text_of(d, "status").startswith(("Done", "Failed")))
    assert text_of(playground, "status") == "Done: 320x256 (text2img).", text_of(playground, "error")
    size = playground.execute_script("const o = document.getElementById('output'); return [o.naturalWidth, "
                                     "o.naturalHeight]")
    assert size == [320, 256]
    assert text_of(playground, "fact-seed") == "5"
    assert float(text_of(playground, "fact-compute").removesuffix(" s")) > 0
    assert {"queue", "compute", "encode"} <= set(re.findall(r"(\w+);dur=", text_of(playground, "fact-timing")))
    # The token stayed in memory: not in the URL, not in localStorage, not even in sessionStorage unasked.
    assert TOKEN not in playground.current_url
    assert playground.execute_script("return [localStorage.length, sessionStorage.length]") == [0, 0]
    assert console_problems(playground) == []


def test_token_kept_for_the_tab_only_when_asked(playground):
    playground.find_element(By.ID, "remember").click()
    assert playground.execute_script("return sessionStorage.getItem('sdxl-playground-token')") == TOKEN
    assert playground.execute_script("return localStorage.length") == 0
    playground.refresh()
    assert playground.find_element(By.ID, "token").get_attribute("value") == TOKEN


def test_server_errors_are_shown_with_their_message(playground):
    field(playground, "token", "wrong")
    playground.find_element(By.ID, "generate").click()
    wait_for(playground, lambda d: text_of(d, "error"))
    assert text_of(playground, "error") == "401: Missing or invalid bearer token (Authorization: Bearer <token>)"
    field(playground, "token", TOKEN)
    field(playground, "width", "4096")  # passes the form, not the server's limits
    playground.find_element(By.ID, "generate").click()
    wait_for(playground, lambda d: text_of(d, "error").startswith("422"))
    assert "width must be a multiple of 8 within [256, 2048], got 4096" in text_of(playground, "error")


def generated(live_server, kind: str) -> float:
    """The server's count of images made for `kind` (text2img, img2img, inpaint)."""
    text = httpx.get(f"{live_server.url}/metrics", headers=auth()).text
    return metric(text, "sdxl_images_generated_total", kind=kind)


def sample_picture(tmp_path: Path) -> Path:
    picture = tmp_path / "picture.png"
    sample_image((256, 256)).save(picture)
    return picture


def record_requests(browser) -> None:
    """Keep each body the page POSTs to the API (window.sentBodies), as it leaves the page."""
    browser.execute_script("window.sentBodies = []; const send = window.fetch; window.fetch = (url, init) => {"
                           " if (url === '/' && init && init.method === 'POST') window.sentBodies.push(init.body);"
                           " return send(url, init); };")


def test_image_to_image_from_an_uploaded_picture_with_strength(playground, live_server, tmp_path):
    before = generated(live_server, "img2img")
    playground.find_element(By.CSS_SELECTOR, "input[name=mode][value=img2img]").click()
    assert playground.find_element(By.ID, "mask").get_attribute("hidden")  # nothing to paint for img2img
    playground.find_element(By.ID, "picture").send_keys(str(sample_picture(tmp_path)))
    wait_for(playground, lambda d: text_of(d, "status") == "Picture 256x256 loaded.")
    field(playground, "strength", "0.5")
    record_requests(playground)
    playground.find_element(By.ID, "generate").click()
    wait_for(playground, lambda d: text_of(d, "status").startswith(("Done", "Failed")))
    assert text_of(playground, "status") == "Done: 256x256 (img2img).", text_of(playground, "error")
    assert generated(live_server, "img2img") == before + 1
    # What left the page: the picture and the strength, no mask (a mask would make it inpainting).
    (body,) = [json.loads(sent) for sent in playground.execute_script("return window.sentBodies")]
    assert body["parameters"]["strength"] == 0.5 and "mask" not in body["parameters"]
    assert Image.open(io.BytesIO(base64.b64decode(body["inputs"].split(",", 1)[1]))).size == (256, 256)
    assert console_problems(playground) == []


def test_a_painted_mask_reaches_the_server_as_an_inpainting_request(playground, live_server, tmp_path):
    picture = sample_picture(tmp_path)
    before = generated(live_server, "inpaint")
    playground.find_element(By.CSS_SELECTOR, "input[name=mode][value=inpaint]").click()
    playground.find_element(By.ID, "picture").send_keys(str(picture))
    wait_for(playground, lambda d: text_of(d, "status") == "Picture 256x256 loaded.")
    playground.find_element(By.ID, "generate").click()  # nothing painted yet: refused on the page
    assert text_of(playground, "error") == "Paint the area to repaint on the picture first."

    mask = playground.find_element(By.ID, "mask")
    ActionChains(playground).move_to_element_with_offset(mask, -40, -40).click_and_hold().move_by_offset(60, 0) \
        .move_by_offset(0, 30).release().perform()
    playground.find_element(By.ID, "generate").click()
    wait_for(playground, lambda d: text_of(d, "status").startswith(("Done", "Failed")))
    assert text_of(playground, "status") == "Done: 256x256 (inpaint).", text_of(playground, "error")
    assert generated(live_server, "inpaint") == before + 1

    # What was sent: the painted pixels white, the rest black, at the picture's size.
    sent = playground.execute_script("return maskPng()")
    assert sent.startswith("data:image/png;base64,")
    mask_image = Image.open(io.BytesIO(base64.b64decode(sent.split(",", 1)[1]))).convert("L")
    assert mask_image.size == (256, 256)
    histogram = mask_image.histogram()
    assert histogram[255] > 500 and histogram[0] > 40_000  # a stroke, and most of the picture kept
    assert console_problems(playground) == []


def test_a_large_photo_is_shrunk_to_the_servers_largest_size_before_it_is_sent(playground, live_server, tmp_path):
    """A 12 MP picture of noise (PNG compresses it least) as a full-size PNG would pass the 20 MiB body limit."""
    picture = tmp_path / "photo.png"
    noise = np.random.default_rng(7).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(picture, compress_level=1)
    playground.find_element(By.CSS_SELECTOR, "input[name=mode][value=inpaint]").click()
    playground.find_element(By.ID, "picture").send_keys(str(picture))
    wait_for(playground, lambda d: text_of(d, "status").startswith("Picture"))
    assert text_of(playground, "status") == "Picture 4000x3000 loaded. (sent as 2048x1536, the server's largest size)"
    mask = playground.find_element(By.ID, "mask")
    ActionChains(playground).move_to_element(mask).click_and_hold().move_by_offset(30, 10).release().perform()
    body = playground.execute_script("return JSON.stringify(requestBody())")
    assert len(body.encode()) < 20 * 1024 * 1024
    sent = json.loads(body)
    for data_url in (sent["inputs"], sent["parameters"]["mask"]):
        assert Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).size == (2048, 1536)
    # And the server takes it (not 413); a small output keeps the tiny model quick.
    field(playground, "width", "256")
    field(playground, "height", "256")
    playground.find_element(By.ID, "generate").click()
    wait_for(playground, lambda d: text_of(d, "status").startswith(("Done", "Failed")))
    assert text_of(playground, "status") == "Done: 256x256 (inpaint).", text_of(playground, "error")
    assert console_problems(playground) == []


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_links_the_playground_and_names_exactly_the_public_routes():
    text = README.read_text()
    assert "https://<endpoint>/playground" in text
    # The paragraph that says which routes need no token names each public path, and no other.
    paragraph = next(block for block in text.split("\n\n") if block.startswith("Every route needs the token except"))
    public = paragraph.split("keep requiring it")[0]
    assert set(re.findall(r"`GET (/[^`\s]*)`", public)) == set(PUBLIC_PATHS)
