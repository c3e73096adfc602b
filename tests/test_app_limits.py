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
