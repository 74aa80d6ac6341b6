"""The real client libraries, unchanged, against a live `python -m server` (uvicorn) process."""

from __future__ import annotations

import base64
import io

import huggingface_hub.constants
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image

from tests.server.helpers import TOKEN, png_bytes, sample_image


@pytest.fixture(autouse=True)
def _hub_online_for_loopback(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1 so that nothing reaches the Hub; huggingface_hub then blocks
    every request, even to our loopback server. Lift that for the client only: it talks to 127.0.0.1."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def hf(live_server) -> InferenceClient:
    return InferenceClient(model=live_server.url, token=TOKEN, timeout=60)


@pytest.fixture(scope="module")
def oai(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def test_hf_text_to_image(hf):
    image = hf.text_to_image("a lighthouse at dusk", width=320, height=256, num_inference_steps=2, seed=3,
                             negative_prompt="fog", guidance_scale=6.0, scheduler="DDIMScheduler")
    assert isinstance(image, Image.Image) and image.size == (320, 256)
    again = hf.text_to_image("a lighthouse at dusk", width=320, height=256, num_inference_steps=2, seed=3,
                             negative_prompt="fog", guidance_scale=6.0, scheduler="DDIMScheduler")
    assert image.tobytes() == again.tobytes()


def test_hf_image_to_image(hf):
    image = hf.image_to_image(png_bytes(sample_image((264, 256))), prompt="make it night", strength=0.5,
                              num_inference_steps=4)
    assert isinstance(image, Image.Image) and image.size == (264, 256)


def test_hf_client_sees_errors_as_http_errors(live_server):
    bad_token = InferenceClient(model=live_server.url, token="wrong", timeout=30)
    with pytest.raises(HfHubHTTPError) as info:
        bad_token.text_to_image("x", num_inference_steps=2)
    assert info.value.response.status_code == 401
    good = InferenceClient(model=live_server.url, token=TOKEN, timeout=30)
    with pytest.raises(HfHubHTTPError) as info:
        good.text_to_image("x", width=100)
    assert info.value.response.status_code == 422


def test_openai_generate(oai):
    result = oai.images.generate(prompt="a red bicycle", n=2, size="256x256",
                                 extra_body={"seed": 12, "num_inference_steps": 2})
    assert len(result.data) == 2
    assert [item.model_extra["seed"] for item in result.data] == [12, 13]
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.size == (256, 256)


def test_openai_generate_url_format(oai):
    result = oai.images.generate(prompt="x", response_format="url", extra_body={"num_inference_steps": 2})
    assert result.data[0].url.startswith("data:image/png;base64,")


def test_openai_edit_with_mask(oai):
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (64, 64, 192, 192))
    result = oai.images.edit(image=("image.png", png_bytes(sample_image())), mask=("mask.png", png_bytes(mask)),
                             prompt="a window", extra_body={"num_inference_steps": 2, "seed": 1})
    assert result.data[0].model_extra["seed"] == 1
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (256, 256)


def test_openai_client_errors_map_to_its_exceptions(live_server, oai):
    wrong = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt="x")
    with pytest.raises(openai.BadRequestError) as info:
        oai.images.generate(prompt="x", size="100x100")
    assert info.value.body["param"] == "width"


def test_openai_n_none_and_jpeg_output(oai):
    result = oai.images.generate(prompt="a red bicycle", n=None, output_format="jpeg", output_compression=60,
                                 size="320x256", extra_body={"num_inference_steps": 2})
    assert len(result.data) == 1
    assert (result.output_format, result.size) == ("jpeg", "320x256")
    data = base64.b64decode(result.data[0].b64_json)
    assert data.startswith(b"\xff\xd8\xff") and Image.open(io.BytesIO(data)).size == (320, 256)


def test_openai_quality_is_echoed(oai):
    result = oai.images.generate(prompt="x", quality="low")
    assert result.quality == "low" and len(result.data) == 1


@pytest.mark.parametrize(("kwargs", "param"), [({"stream": True}, "stream"), ({"stream": True, "partial_images": 2},
                                                                               "stream"),
                                               ({"background": "transparent"}, "background"),
                                               ({"frame_count": 4}, "frame_count"),
                                               ({"frame_duration_ms": 100}, "frame_duration_ms")])
def test_openai_client_gets_a_bad_request_for_what_is_not_supported(oai, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        oai.images.generate(prompt="x", extra_body={"num_inference_steps": 2}, **kwargs)
    assert info.value.body["param"] == param


@pytest.mark.parametrize(("kwargs", "param"), [({"frame_count": 4}, "frame_count"),
                                               ({"frame_duration_ms": 100}, "frame_duration_ms"),
                                               ({"markup": ("markup.png", png_bytes(sample_image((256, 256))),
                                                            "image/png")}, "markup")])
def test_openai_edit_refuses_what_would_answer_a_different_edit(oai, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        oai.images.edit(image=("picture.png", png_bytes(sample_image((256, 256))), "image/png"), prompt="x",
                        extra_body={"num_inference_steps": 2}, **kwargs)
    assert info.value.body["param"] == param


def test_openai_fields_sdxl_has_no_control_for_are_accepted_and_ignored(oai):
    """complexity and input_fidelity change how GPT Image works, not what is asked: same seed, same image."""
    picture = ("picture.png", png_bytes(sample_image((256, 256))), "image/png")
    plain = oai.images.edit(image=picture, prompt="x", size="256x256", extra_body={"num_inference_steps": 2,
                                                                                    "seed": 4})
    asked = oai.images.edit(image=picture, prompt="x", size="256x256", complexity="high", input_fidelity="high",
                            extra_body={"num_inference_steps": 2, "seed": 4})
    assert asked.data[0].b64_json == plain.data[0].b64_json
    generated = oai.images.generate(prompt="x", size="256x256", complexity="low",
                                    extra_body={"num_inference_steps": 2})
    assert len(generated.data) == 1


def test_openai_style_is_a_hint_accepted_and_ignored_but_checked(oai):
    """DALL-E 3's `style` leans the look (vivid or natural); the image asked for (prompt, size, format, count) is
    still what comes back, so it is accepted and ignored, as server/README.md says; a value DALL-E 3 would refuse
    is refused here too, naming `style`, rather than dropped unread."""
    def generate(**style):
        return oai.images.generate(prompt="x", size="256x256", extra_body={"num_inference_steps": 2, "seed": 9},
                                   **style).data[0].b64_json

    plain = generate()
    assert generate(style="vivid") == plain and generate(style="natural") == plain
    with pytest.raises(openai.BadRequestError) as info:
        oai.images.generate(prompt="x", extra_body={"num_inference_steps": 2, "style": "cinematic"})
    assert info.value.body["param"] == "style"
