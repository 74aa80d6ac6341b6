"""Every bad input is refused with 4xx before it reaches the GPU, never with a 500."""

from __future__ import annotations

import base64
import io
import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from server.errors import ApiError
from server.settings import Settings
from server.validation import fit_size, parse_openai_size
from tests.server.helpers import FAST, auth, png_bytes, sample_image
from tests.server.test_routes_ops import metric

IMAGE = base64.b64encode(png_bytes(sample_image())).decode()
SMALL_MASK = base64.b64encode(png_bytes(Image.new("L", (128, 128), 255))).decode()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# Modes Pillow stores only in formats the server does not decode: LAB and 32-bit float, as TIFF.
LAB_TIFF = base64.b64encode(encoded(Image.new("LAB", (256, 256), (50, 10, 10)), "TIFF"))
F_TIFF = base64.b64encode(encoded(Image.new("F", (256, 256), 0.5), "TIFF"))


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
    # (path, raw body, status, words the message must contain, OpenAI param[, Content-Type])
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
    # Image bytes Pillow could read but the server does not decode: only the listed formats reach a decoder,
    # whatever the data: URL or Content-Type claims. A LAB TIFF mask used to be a 500 (no LAB -> L conversion).
    ("/", b'{"inputs":"' + IMAGE.encode() + b'","parameters":{"mask":"data:image/tiff;base64,' + LAB_TIFF + b'"}}',
     400, "mask: could not decode", None),
    ("/", b'{"inputs":"data:image/tiff;base64,' + LAB_TIFF + b'"}', 400, "inputs: could not decode", None),
    ("/", base64.b64decode(LAB_TIFF), 400, "inputs: could not decode", None, "image/tiff"),
    ("/", base64.b64decode(F_TIFF), 400, "inputs: could not decode", None, "image/tiff"),
]


@pytest.mark.parametrize("case", WIRE_CASES, ids=[f"{path}-{i}" for i, (path, *_) in enumerate(WIRE_CASES)])
def test_raw_bodies_that_used_to_500_are_4xx_json_with_cors(live_server, case):
    path, raw, status, needle, param, *media = case
    response = httpx.post(f"{live_server.url}{path}", content=raw, timeout=30, headers={
        **auth(), "Content-Type": media[0] if media else "application/json", "Origin": "https://app.example"})
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


# Every mode a user's picture may come in, in the formats that carry it; the last two are not decoded at all.
MODE_CASES = [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"),
              ("I;16", "PNG"), ("RGB", "BMP"), ("P", "GIF"), ("RGBA", "WEBP"), ("L", "JPEG"),
              ("LAB", "TIFF"), ("F", "TIFF")]


def picture_in(mode: str, fmt: str) -> bytes:
    """A 256x256 picture with a fully transparent square (where the mode keeps alpha), in `mode` and `fmt`."""
    picture = Image.new("RGBA", (256, 256), (200, 80, 40, 255))
    picture.paste((0, 0, 0, 0), (64, 64, 192, 192))
    try:
        converted = picture.convert(mode)
    except ValueError:  # no direct RGBA -> mode conversion (I;16, F): through grayscale
        converted = picture.convert("L").convert(mode)
    return encoded(converted, fmt)


@pytest.mark.parametrize(("mode", "fmt"), MODE_CASES, ids=[f"{mode}-{fmt}" for mode, fmt in MODE_CASES])
def test_a_picture_or_mask_in_any_mode_is_2xx_or_4xx_on_both_apis(client, mode, fmt):
    data = picture_in(mode, fmt)
    good = png_bytes(sample_image())
    text = base64.b64encode(data).decode()
    answers = {
        "hf image": client.post("/", json={"inputs": text, "parameters": {"prompt": "a fox", **FAST}}),
        "hf mask": client.post("/", json={"inputs": IMAGE, "parameters": {"prompt": "a fox", "mask": text, **FAST}}),
        "openai image": client.post("/v1/images/edits", files={"image": ("picture", data, "image/png")},
                                    data={"prompt": "a fox", "size": "256x256", "num_inference_steps": "2"}),
        "openai mask": client.post("/v1/images/edits", files={"image": ("picture.png", good, "image/png"),
                                                              "mask": ("mask", data, "image/png")},
                                   data={"prompt": "a fox", "size": "256x256", "num_inference_steps": "2"}),
    }
    for where, response in answers.items():
        assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
        assert response.status_code != 422 or where.startswith("hf"), where
        if fmt == "TIFF":  # refused, whatever mode: plain base64 TIFF is not even taken for an image
            assert response.status_code == 400, where
