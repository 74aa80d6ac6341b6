"""Every bad input is refused with 4xx before it reaches the GPU, never with a 500."""

from __future__ import annotations

import base64
import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from server.errors import ApiError
from server.settings import Settings
from server.validation import fit_size, parse_openai_size
from tests.server.helpers import auth, png_bytes, sample_image
from tests.server.test_routes_ops import metric

IMAGE = base64.b64encode(png_bytes(sample_image())).decode()
SMALL_MASK = base64.b64encode(png_bytes(Image.new("L", (128, 128), 255))).decode()


def body(**parameters):
    return {"inputs": "a cat", "parameters": parameters}


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        (body(width=260), 422, "width must be a multiple of 8"),
        (body(height=128), 422, "within [256, 2048]"),
        (body(width=4096), 422, "width"),
        (body(target_size={"width": 100, "height": 256}), 422, "width"),
        (body(num_inference_steps=0), 422, "num_inference_steps"),
        (body(num_inference_steps=101), 422, "num_inference_steps"),
        (body(num_inference_steps="many"), 422, "num_inference_steps"),
        (body(guidance_scale=-1), 422, "guidance_scale"),
        (body(guidance_scale=30.5), 422, "guidance_scale"),
        (body(seed=-1), 422, "seed"),
        (body(seed=2**64), 422, "seed"),
        (body(seed=1.5), 422, "seed"),
        (body(scheduler="Nope"), 400, "allowed: DDIMScheduler"),
        (body(negative_prompt="x" * 5000), 422, "negative_prompt"),
        ({"inputs": "x" * 5000}, 422, "prompt is longer"),
        ({"parameters": {}}, 422, "inputs"),
        ({"inputs": ["a", "b"]}, 422, "inputs"),
        ({"inputs": 5}, 422, "inputs"),
        ({"inputs": "x", "parameters": "steps=2"}, 422, "parameters"),
        ([1, 2], 422, ""),
        ({"inputs": IMAGE, "parameters": {"prompt": "x", "strength": 0}}, 422, "strength"),
        ({"inputs": IMAGE, "parameters": {"prompt": "x", "strength": 1.5}}, 422, "strength"),
        ({"inputs": IMAGE, "parameters": {"prompt": "x", "strength": 0.1, "num_inference_steps": 5}}, 422,
         "num_inference_steps x strength"),
        ({"inputs": IMAGE, "parameters": {"prompt": "x", "mask": SMALL_MASK}}, 400, "they must match"),
        ({"inputs": IMAGE, "parameters": {"prompt": "x", "mask": "not base64 at all!"}}, 400, "mask"),
        ({"inputs": "data:image/png;base64,@@@@", "parameters": {"prompt": "x"}}, 400, "base64"),
        ({"inputs": "data:image/png;base64," + base64.b64encode(b"garbage").decode(),
          "parameters": {"prompt": "x"}}, 400, "could not decode"),
        ({"inputs": "a prompt, not an image", "parameters": {"prompt": "x"}}, 400, "inputs must be a base64 image"),
    ],
)
def test_bad_hf_input(client, payload, status, needle):
    response = client.post("/", json=payload)
    assert response.status_code == status, response.text[:300]
    assert needle in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"", "application/json"), (b"{nope", "application/json"), (b"\xff\xfe", "application/json"),
     (b"not an image", "image/png"), (b"\x89PNG\r\n\x1a\n truncated", "application/octet-stream")],
)
def test_malformed_bodies_are_400(client, content, content_type):
    response = client.post("/", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]


def test_image_over_the_pixel_limit_is_413_before_decoding(make_client):
    client = make_client(max_input_pixels=100_000)
    big = base64.b64encode(png_bytes(Image.new("RGB", (400, 400)))).decode()
    response = client.post("/", json={"inputs": big, "parameters": {"prompt": "x"}})
    assert response.status_code == 413
    assert "400x400 exceeds the 100000-pixel limit" in response.json()["error"]


def test_image_too_elongated_for_the_size_range_is_422(client):
    thin = base64.b64encode(png_bytes(Image.new("RGB", (4000, 100)))).decode()
    response = client.post("/", json={"inputs": thin, "parameters": {"prompt": "x"}})
    assert response.status_code == 422
    assert "aspect ratio" in response.json()["error"]


def test_nothing_bad_reached_the_gpu_and_random_junk_never_500s(client):
    rng = random.Random(0)
    junk_values = [None, True, -1, 0, 1e309, "", "x" * 3, [], {}, [1], {"a": 1}, 2**70, "NaN"]
    keys = ["width", "height", "num_inference_steps", "guidance_scale", "seed", "scheduler", "strength",
            "negative_prompt", "mask", "target_size", "prompt"]
    for _ in range(60):
        parameters = {key: rng.choice(junk_values) for key in rng.sample(keys, 3)}
        parameters.setdefault("num_inference_steps", 1)  # keep the few valid combinations cheap
        payload = {"inputs": rng.choice(["a cat", IMAGE, "", 7]), "parameters": parameters}
        # allow_nan: Python's encoder writes Infinity, which the server's JSON parser accepts.
        response = client.post("/", content=json.dumps(payload, allow_nan=True),
                               headers={"Content-Type": "application/json"})
        assert response.status_code != 500 and response.status_code < 600, (payload, response.text[:200])
    text = client.get("/metrics").text
    assert metric(text, "sdxl_errors_total", kind="internal") == 0
    assert metric(text, "sdxl_errors_total", kind="pipeline") == 0


def test_fit_size_keeps_aspect_and_rounds_to_multiples_of_8():
    settings = Settings()
    assert fit_size((1000, 750), settings) == (1000, 744)
    assert fit_size((100, 100), settings) == (256, 256)
    assert fit_size((3000, 1500), settings) == (2048, 1024)
    assert fit_size((640, 480), settings, 1024, None) == (1024, 768)
    assert fit_size((640, 480), settings, 512, 512) == (512, 512)
    for width, height in ((260, None), (None, 100), (3000, None)):
        with pytest.raises(ApiError) as info:
            fit_size((640, 480), settings, width, height)
        assert info.value.status == 422


def test_parse_openai_size():
    assert parse_openai_size(None) is None and parse_openai_size("auto") is None
    assert parse_openai_size("1024x768") == (1024, 768)
    assert parse_openai_size(" 512X512 ") == (512, 512)


# --- inputs that used to reach a parser or the tokenizer and come back as 500 ------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b"9" * 5000
WIRE_CASES = [
    # (path, raw body, status, words the message must contain, OpenAI param)
    ("/", b'{"inputs":"a \\ud800 fox"}', 422, "surrogate", None),
    ("/", b'{"inputs":"a fox","parameters":{"negative_prompt":"\\udfff"}}', 422, "surrogate", None),
    ("/", b'{"inputs":"a fox","parameters":{"negative_prompt":["\\udfff"]}}', 422, "surrogate", None),
    ("/", b'{"inputs":"a fox","parameters":' + DEEP + b"}", 400, "nested too deeply", None),
    ("/", b'{"inputs":"a fox","parameters":{"width":' + HUGE_INT + b"}}", 400, "cannot be read", None),
    ("/", b'{"inputs":"a fox","parameters":{"width":0}}', 422, "width must be a multiple of 8", None),
    ("/", b'{"inputs":"a fox","parameters":{"height":0}}', 422, "height must be", None),
    ("/", b'{"inputs": "a fox", "parameters": }', 400, "character 34", None),
    ("/v1/images/generations", b'{"prompt":"a fox","negative_prompt":"\\udfff"}', 400, "surrogate",
     "negative_prompt"),
    ("/v1/images/generations", b'{"prompt":"\\ud800","n":2}', 400, "surrogate", "prompt"),
    ("/v1/images/generations", b'{"prompt":"a fox","size":"0x0"}', 400, "within", "width"),
    ("/v1/images/generations", b'{"prompt":' + DEEP + b"}", 400, "nested too deeply", None),
    ("/v1/images/generations", b'{"prompt":"a fox","n":' + HUGE_INT + b"}", 400, "cannot be read", None),
    ("/v1/images/generations", b'{"prompt": "a fox", "n": }', 400, "character 25", None),
]


@pytest.mark.parametrize(("path", "raw", "status", "needle", "param"), WIRE_CASES,
                         ids=[f"{path}-{i}" for i, (path, *_) in enumerate(WIRE_CASES)])
def test_raw_bodies_that_used_to_500_are_4xx_json_with_cors(live_server, path, raw, status, needle, param):
    response = httpx.post(f"{live_server.url}{path}", content=raw, timeout=30, headers={
        **auth(), "Content-Type": "application/json", "Origin": "https://app.example"})
    assert response.status_code == status, response.text[:300]
    assert response.headers["access-control-allow-origin"] == "*"
    error = response.json()["error"]
    if path.startswith("/v1/"):
        assert error["param"] == param and error["type"] == "invalid_request_error"
        error = error["message"]
    assert needle in error


def test_a_bad_prompt_never_costs_its_batch_mates(client):
    """The surrogate is refused at parsing: nothing of it reaches the worker or the tokenizer."""
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(client.post, "/", json={"inputs": f"a cat {i}", "parameters": {"num_inference_steps": 2}})
                for i in range(2)]
        bad = client.post("/", content=b'{"inputs":"a \\ud800 fox","parameters":{"num_inference_steps":2}}',
                          headers={"Content-Type": "application/json"})
        assert bad.status_code == 422
        assert [f.result().status_code for f in good] == [200, 200]
    text = client.get("/metrics").text
    assert metric(text, "sdxl_errors_total", kind="pipeline") == 0
    assert metric(text, "sdxl_images_generated_total", kind="text2img") == 2


def test_negative_prompt_as_a_one_entry_list(client):
    listed = client.post("/", json={"inputs": "a cat", "parameters": {"negative_prompt": ["fog"], "seed": 3,
                                                                      "num_inference_steps": 2}})
    plain = client.post("/", json={"inputs": "a cat", "parameters": {"negative_prompt": "fog", "seed": 3,
                                                                     "num_inference_steps": 2}})
    assert listed.status_code == 200 and listed.content == plain.content
    two = client.post("/", json={"inputs": "a cat", "parameters": {"negative_prompt": ["fog", "rain"]}})
    assert two.status_code == 422
    assert "exactly one entry" in two.json()["error"] and "negative_prompt" in two.json()["error"]
