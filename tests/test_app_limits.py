"""The app bounds the work one request can cause: captions longer than the pipeline's limit are refused."""

import pytest

pytest.importorskip("gradio")

from modeling_ccr.apps.gradio_app import check_caption_lengths
from modeling_ccr.errors import UserError
from modeling_ccr.models.pipelines import MAX_CAPTION_CHARS


def test_a_caption_at_the_limit_is_scored():
    check_caption_lengths(["a dog", "x" * MAX_CAPTION_CHARS])


def test_a_caption_over_the_limit_is_a_one_line_user_error_naming_it():
    with pytest.raises(UserError, match=rf"caption 2 has {MAX_CAPTION_CHARS + 1} characters") as caught:
        check_caption_lengths(["a dog", "x" * (MAX_CAPTION_CHARS + 1)])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "name,data,found",
    [
        ("notes.txt", b"a red dog on the grass\n", "'notes.txt': text, 23 bytes"),
        ("paper.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "'paper.pdf': a PDF document, 15 bytes"),
        ("photo.jpg", b"", "'photo.jpg': an empty file, 0 bytes"),
    ],
)
def test_a_non_image_upload_says_what_was_expected_and_what_was_found(tmp_path, name, data, found):
    import gradio as gr
    from gradio.data_classes import ImageData

    from modeling_ccr.apps.gradio_app import checked_photo_input

    path = tmp_path / name
    path.write_bytes(data)
    photo = checked_photo_input(gr.Image(type="filepath"))
    with pytest.raises(gr.Error) as caught:
        photo.preprocess(ImageData(path=str(path), orig_name=name))
    message = caught.value.message
    assert message.startswith(
        "the upload is not a picture: expected a photo (JPEG, PNG, WebP, BMP, GIF or TIFF), found " + found
    ), message
    assert "\n" not in message


def test_a_real_photo_upload_passes_through_the_check(tmp_path):
    import gradio as gr
    from gradio.data_classes import ImageData
    from PIL import Image

    from modeling_ccr.apps.gradio_app import checked_photo_input

    Image.new("RGB", (4, 4), "red").save(tmp_path / "red.png")
    photo = checked_photo_input(gr.Image(type="filepath"))
    assert photo.preprocess(ImageData(path=str(tmp_path / "red.png"), orig_name="red.png")) == str(
        tmp_path / "red.png"
    )
