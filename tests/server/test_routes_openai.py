"""OpenAI Images routes, in process: generations, edits, extensions and the OpenAI error shape."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.server.helpers import FAST, assert_batch_equivalent, pixels, png_bytes, sample_image


def generate(client, **body):
    return client.post("/v1/images/generations", json={"prompt": "a lighthouse", **FAST, **body})


def decode_item(item: dict) -> bytes:
    return base64.b64decode(item["b64_json"])


def assert_openai_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_generations_n_images_with_consecutive_reproducible_seeds(client):
    response = generate(client, n=2, seed=40)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int)
    assert [item["seed"] for item in body["data"]] == [40, 41]
    assert response.headers["x-seed"] == "40"
    second_alone = generate(client, seed=41).json()["data"][0]
    # n images share one batched pipeline call.
    assert_batch_equivalent(decode_item(body["data"][1]), decode_item(second_alone))
    assert decode_item(body["data"][0]) != decode_item(body["data"][1])


def test_generations_random_seed_is_reported(client):
    item = generate(client).json()["data"][0]
    again = generate(client, seed=item["seed"]).json()["data"][0]
    assert decode_item(again) == decode_item(item)


@pytest.mark.parametrize(("size", "expected"), [("320x256", (320, 256)), ("auto", (256, 256)), (None, (256, 256))])
def test_generations_size(client, size, expected):
    body = {"size": size} if size else {}
    item = generate(client, **body).json()["data"][0]
    assert Image.open(io.BytesIO(decode_item(item))).size == expected


def test_generations_url_format_is_a_data_url(client):
    item = generate(client, response_format="url", seed=1).json()["data"][0]
    assert "b64_json" not in item
    prefix = "data:image/png;base64,"
    assert item["url"].startswith(prefix)
    png = base64.b64decode(item["url"][len(prefix):])
    assert png == decode_item(generate(client, seed=1).json()["data"][0])


def test_generations_output_format(client):
    item = generate(client, output_format="jpeg").json()["data"][0]
    assert decode_item(item).startswith(b"\xff\xd8\xff")


def test_generations_extensions_change_the_image(client):
    base = decode_item(generate(client, seed=9).json()["data"][0])
    for change in ({"negative_prompt": "fog"}, {"guidance_scale": 1.0}, {"num_inference_steps": 3},
                   {"scheduler": "EulerAncestralDiscreteScheduler"}):
        response = generate(client, seed=9, **change)
        assert response.status_code == 200, (change, response.text[:300])
        assert decode_item(response.json()["data"][0]) != base, change


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"size": "huge"}, "size"),
        ({"size": "1004x1000"}, "width"),
        ({"size": "128x128"}, "width"),
        ({"response_format": "gif"}, "response_format"),
        ({"scheduler": "Nope"}, "scheduler"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": 31}, "guidance_scale"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"seed": -1}, "seed"),
    ],
)
def test_generations_bad_input_is_400_in_openai_shape(client, body, param):
    error = assert_openai_error(generate(client, **body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_unknown_scheduler_lists_allowed_names(client):
    message = assert_openai_error(generate(client, scheduler="Nope"), 400)["message"]
    assert "EulerDiscreteScheduler" in message and "DDIMScheduler" in message


def test_generations_malformed_json_is_400(client):
    response = client.post("/v1/images/generations", content=b"{nope", headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400)


# --- edits ----------------------------------------------------------------------------------------

def edit(client, image: bytes | None, mask: bytes | None = None, field: str = "image", **fields):
    files = []
    if image is not None:
        files.append((field, ("image.png", image, "image/png")))
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    data = {"prompt": "a hat", **{k: str(v) for k, v in {**FAST, **fields}.items()}}
    return client.post("/v1/images/edits", files=files, data=data)


def transparent_top_mask(size=(256, 256)) -> bytes:
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0], size[1] // 2))
    return png_bytes(mask)


def test_edit_with_mask_repaints_transparent_area(client):
    image = png_bytes(sample_image())

    def run(seed):
        response = edit(client, image, transparent_top_mask(), seed=seed)
        assert response.status_code == 200, response.text
        return pixels(decode_item(response.json()["data"][0]))

    first, second = run(1), run(2)
    assert np.abs(first[:96] - second[:96]).mean() > 4 * max(np.abs(first[160:] - second[160:]).mean(), 1)


def test_edit_without_mask_uses_the_images_own_transparency(client):
    rgba = sample_image(mode="RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, 256, 128))
    with_alpha = png_bytes(rgba)
    explicit = edit(client, png_bytes(sample_image(mode="RGBA")), transparent_top_mask(), seed=3)
    implicit = edit(client, with_alpha, seed=3)
    assert implicit.status_code == 200, implicit.text
    a, b = (pixels(decode_item(r.json()["data"][0])) for r in (explicit, implicit))
    # The same area is repainted from the same noise; only the (transparent) input pixels differ.
    assert np.abs(a[160:] - b[160:]).mean() < 2


def test_edit_of_an_opaque_image_without_mask_is_image_to_image(client):
    response = edit(client, png_bytes(sample_image((320, 256))), n=2, strength=0.5, seed=5)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["seed"] for item in data] == [5, 6]
    assert Image.open(io.BytesIO(decode_item(data[0]))).size == (320, 256)


def test_edit_accepts_array_style_field_name(client):
    assert edit(client, png_bytes(sample_image()), field="image[]").status_code == 200


@pytest.mark.parametrize(
    ("image", "mask", "param"),
    [
        (None, None, "image"),
        (b"not an image", None, "image"),
        ("ok", png_bytes(Image.new("L", (256, 256), 0)), "mask"),  # no alpha channel
        ("ok", transparent_top_mask((128, 128)), "mask"),  # size mismatch
    ],
)
def test_edit_bad_input_is_400(client, image, mask, param):
    image_bytes = png_bytes(sample_image()) if image == "ok" else image
    assert_openai_error(edit(client, image_bytes, mask), 400, param)


def test_edit_rejects_two_images(client):
    files = [("image", ("a.png", png_bytes(sample_image()), "image/png"))] * 2
    response = client.post("/v1/images/edits", files=files, data={"prompt": "x"})
    assert_openai_error(response, 400, "image")


def test_edit_as_json_explains_multipart(client):
    response = client.post("/v1/images/edits", json={"prompt": "x", "image": "abc"})
    assert "multipart" in assert_openai_error(response, 400, "image")["message"]


def test_edit_bad_strength_is_400(client):
    assert_openai_error(edit(client, png_bytes(sample_image()), strength=1.5), 400, "strength")


# --- conformance with the OpenAI Images API's fields ----------------------------------------------

def test_n_null_means_one_image(client):
    body = generate(client, n=None).json()
    assert len(body["data"]) == 1


def test_response_echoes_format_size_and_quality(client):
    body = generate(client, size="320x256", output_format="webp", quality="low", num_inference_steps=None).json()
    assert set(body) >= {"created", "data", "output_format", "size", "quality", "background"}
    assert (body["output_format"], body["size"], body["quality"], body["background"]) == ("webp", "320x256", "low",
                                                                                         "opaque")
    assert decode_item(body["data"][0]).startswith(b"RIFF")
    assert "quality" not in generate(client, quality="low", num_inference_steps=2).json()  # steps were explicit


@pytest.mark.parametrize(("quality", "label", "steps"), [("low", "low", 1), ("auto", "high", 2), (None, "high", 2),
                                                         ("hd", "high", 2), ("standard", "medium", 2),
                                                         ("max", "max", 4)])
def test_quality_sets_the_steps_when_none_are_given(make_client, quality, label, steps):
    client = make_client(default_steps=2)
    body = {"prompt": "a lighthouse", "seed": 4, **({"quality": quality} if quality else {})}
    answer = client.post("/v1/images/generations", json=body).json()
    assert answer["quality"] == label
    explicit = generate(client, seed=4, num_inference_steps=steps).json()
    assert answer["data"][0]["b64_json"] == explicit["data"][0]["b64_json"]
    assert client.get("/info").json()["defaults"]["quality_steps"][label] == steps


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_output_compression_is_the_lossy_quality(client, output_format):
    sizes = [len(decode_item(generate(client, seed=1, output_format=output_format,
                                      output_compression=level).json()["data"][0])) for level in (5, 95)]
    assert sizes[0] < sizes[1]
    png = generate(client, seed=1, output_compression=5).json()
    assert decode_item(png["data"][0]) == decode_item(generate(client, seed=1).json()["data"][0])  # lossless


@pytest.mark.parametrize("background", ["auto", "opaque"])
def test_opaque_backgrounds_are_fine(client, background):
    assert generate(client, background=background).status_code == 200


@pytest.mark.parametrize(("body", "param"), [
    ({"stream": True}, "stream"),
    ({"partial_images": 2}, "stream"),
    ({"stream": True, "partial_images": 1}, "stream"),
    ({"background": "transparent"}, "background"),
    ({"output_format": "gif"}, "output_format"),
    ({"output_compression": 101}, "output_compression"),
    ({"quality": "ultra"}, "quality"),
])
def test_unsupported_openai_options_are_400_naming_them(client, body, param):
    error = assert_openai_error(generate(client, **body), 400, param)
    if param == "stream":
        assert "not supported" in error["message"]


def test_edits_take_the_same_options(client):
    response = edit(client, png_bytes(sample_image()), output_format="jpeg", output_compression=50, n=1)
    body = response.json()
    assert (body["output_format"], body["size"]) == ("jpeg", "256x256")
    assert decode_item(body["data"][0]).startswith(b"\xff\xd8\xff")
    assert_openai_error(edit(client, png_bytes(sample_image()), background="transparent"), 400, "background")
    assert_openai_error(edit(client, png_bytes(sample_image()), stream="true"), 400, "stream")
