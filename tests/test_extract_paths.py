"""`ccr extract` reads images only from inside the images folder named on the command line."""

import pytest

from modeling_ccr.vision.corpus import CaptionedImage, CaptionsError, extract_corpus


@pytest.mark.parametrize("entry", ["../outside.jpg", "sub/../../outside.jpg", "/etc/hostname"])
def test_a_caption_entry_leaving_the_images_folder_is_refused_before_any_read(tmp_path, entry):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "outside.jpg").write_bytes(b"not read")
    captioned = [CaptionedImage(entry, "train", ["a caption"])]
    with pytest.raises(CaptionsError, match=r"expected an image inside .*images, found a path outside it"):
        extract_corpus(images, captioned, extractor=None, progress=False)


def test_a_link_inside_the_folder_pointing_out_is_refused(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"not read")
    (images / "photo.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(CaptionsError, match="found a path outside it"):
        extract_corpus(images, [CaptionedImage("photo.jpg", "train", ["a"])], extractor=None, progress=False)
