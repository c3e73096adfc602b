"""Images are read as viewers show them: EXIF orientation, 16-bit pixels, a pixel limit (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modeling_ccr.models import image_processing_matcher
from modeling_ccr.models.image_processing_matcher import ImageDecodeError, decode_image

pytest.importorskip("timm")
from modeling_ccr.vision import ImageReadError, read_image

# EXIF Orientation 6: the stored pixels are shown rotated 90 degrees clockwise.
ROTATE_CLOCKWISE = 6


def test_exif_orientation_is_applied_before_the_size_is_taken(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    stored[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = ROTATE_CLOCKWISE
    path = tmp_path / "sideways.png"
    Image.fromarray(stored).save(path, exif=exif)
    shown = read_image(path)
    assert shown.size == (20, 40)  # displayed: 20 wide, 40 high
    pixels = np.asarray(shown)
    # Rotating clockwise puts the stored left half on top.
    assert (pixels[:20, :, 0] == 255).all() and (pixels[20:, :, 0] == 0).all()


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    path = tmp_path / "deep.png"
    values = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    values[0, 0] = 65535
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(read_image(path))
    assert pixels[1, 1].tolist() == [128, 128, 128] and pixels[0, 0].tolist() == [255, 255, 255]


def test_a_transparent_png_shows_its_transparent_pixels_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # black, fully transparent
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    assert np.asarray(read_image(path)).min() == 255


def test_an_image_over_the_pixel_limit_is_refused_in_one_line_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (40, 30)).save(path)
    monkeypatch.setattr(image_processing_matcher, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "bomb.png" in message and "1200 pixels" in message and "\n" not in message


def test_pils_own_bomb_error_is_one_line_naming_the_image(monkeypatch, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above 2x its limit at open
    with pytest.raises(ImageDecodeError, match=r"huge\.png"):
        decode_image(path)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_bytes_that_are_not_an_image_are_one_line_naming_the_image(content):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(content, name="row 3 (image_id 'x')")
    assert "row 3" in str(caught.value) and "\n" not in str(caught.value)
