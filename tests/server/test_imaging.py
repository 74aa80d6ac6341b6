"""Image helpers: telling prompts from images, safe decoding, masks and Accept negotiation."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from server import imaging
from server.errors import ApiError
from tests.server.helpers import png_bytes, sample_image

PNG = png_bytes(sample_image((32, 32)))


@pytest.mark.parametrize("prompt", ["a cat", "QUJDRA==", "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=", "SGVsbG8" * 20,
                                    "An astronaut riding a horse on the moon, 4k, trending"])
def test_prompts_are_never_taken_for_images(prompt):
    assert imaging.b64_to_bytes(prompt) is None


def test_base64_and_data_url_images_are_recognised():
    encoded = base64.b64encode(PNG).decode()
    assert imaging.b64_to_bytes(encoded) == PNG
    assert imaging.b64_to_bytes(f"data:image/png;base64,{encoded}") == PNG
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))  # MIME line breaks
    assert imaging.b64_to_bytes(wrapped) == PNG


def test_broken_data_url_is_a_400():
    with pytest.raises(ApiError) as info:
        imaging.b64_to_bytes("data:image/png;base64,***")
    assert info.value.status == 400


def test_decode_refuses_garbage_and_oversized_images():
    with pytest.raises(ApiError) as info:
        imaging.decode_image(b"nope", "image", 10_000)
    assert info.value.status == 400
    with pytest.raises(ApiError) as info:
        imaging.decode_image(PNG, "image", 100)
    assert info.value.status == 413
    assert imaging.decode_image(PNG, "image", 10_000).mode == "RGB"


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert imaging.decode_image(buffer.getvalue(), "image", 10_000).size == (20, 40)


def test_openai_mask_transparent_means_edit():
    mask = Image.new("RGBA", (4, 1), (0, 0, 0, 255))
    mask.putpixel((0, 0), (255, 255, 255, 0))
    mask.putpixel((1, 0), (0, 0, 0, 128))  # half transparent: kept
    converted = imaging.mask_from_transparency(mask)
    assert [converted.getpixel((x, 0)) for x in range(4)] == [255, 0, 0, 0]
    assert imaging.has_alpha(mask) and not imaging.has_alpha(mask.convert("RGB"))


def test_hf_mask_white_means_repaint():
    assert imaging.mask_from_white(Image.new("RGB", (2, 2), "white")).getpixel((0, 0)) == 255


@pytest.mark.parametrize(("media", "magic"), [("image/png", b"\x89PNG"), ("image/jpeg", b"\xff\xd8"),
                                              ("image/webp", b"RIFF")])
def test_encode(media, magic):
    assert imaging.encode(sample_image((16, 16)), media).startswith(magic)


@pytest.mark.parametrize(("accept", "expected"), [(None, "image/png"), ("*/*", "image/png"),
                                                  ("image/*", "image/png"), ("application/json", "image/png"),
                                                  ("image/webp", "image/webp"),
                                                  ("image/jpeg;q=0.4, image/webp;q=0.9", "image/webp"),
                                                  ("image/jpeg, image/webp", "image/jpeg"),
                                                  ("image/jpeg;q=bad, image/png", "image/png")])
def test_negotiate(accept, expected):
    assert imaging.negotiate(accept) == expected


def test_only_the_listed_formats_are_decoded_whatever_pillow_knows():
    buffer = io.BytesIO()
    sample_image().save(buffer, format="TIFF")  # Pillow reads TIFF; the server does not
    with pytest.raises(ApiError) as info:
        imaging.decode_image(buffer.getvalue(), "inputs", 10**7)
    assert info.value.status == 400 and info.value.param == "inputs"


def test_a_mode_pillow_cannot_convert_is_a_400_naming_the_field():
    with pytest.raises(ApiError) as info:
        imaging.mask_from_white(Image.new("LAB", (8, 8)))  # Pillow 13 has no LAB -> L conversion
    assert info.value.status == 400 and info.value.param == "mask" and "mode LAB" in str(info.value)
