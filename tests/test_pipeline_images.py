"""The image-text-matching pipeline on raw images, through a vision-tower model's own saved processor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("timm")
matplotlib = pytest.importorskip("matplotlib")

from transformers import AutoProcessor, pipeline  # noqa: E402

from modeling_ccr.models import BACKBONES, MatcherProcessor  # noqa: E402
from modeling_ccr.models.image_processing_matcher import decode_image  # noqa: E402
from modeling_ccr.text.tokenization import build_word_tokenizer  # noqa: E402

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
CAPTIONS = ["a woman in a navy uniform", "a blue gift box", "a colourful logo"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tower_model")
    tokenizer = build_word_tokenizer(CAPTIONS, 1)
    config = BACKBONES["scan"][0](
        vocab_size=len(tokenizer), embed_dim=16, word_dim=8,
        vision_tower={"architecture": "test_efficientnet", "image_size": 64, "grid": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    model = BACKBONES["scan"][1](config).eval()
    model.save_pretrained(folder)
    MatcherProcessor(model.image_processor(), tokenizer).save_pretrained(folder)
    return folder


def test_a_tower_checkpoint_carries_its_image_processor_and_autoprocessor_pairs_it_with_the_tokenizer(
    model_dir,
):
    assert (model_dir / "preprocessor_config.json").is_file()
    processor = AutoProcessor.from_pretrained(model_dir)
    assert isinstance(processor, MatcherProcessor)
    assert processor.image_processor.size == {"height": 64, "width": 64}
    inputs = processor(images=[decode_image(GRACE_HOPPER)], text=CAPTIONS[:1])
    assert inputs["pixel_values"].shape == (1, 3, 64, 64) and inputs["input_ids"].shape[0] == 1


def test_the_pipeline_ranks_captions_for_a_pil_image_and_a_path_alike(model_dir):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    image = decode_image(GRACE_HOPPER)
    ranked = pipe(image, candidate_captions=CAPTIONS)
    assert sorted(r["caption"] for r in ranked) == sorted(CAPTIONS)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    from_path = pipe(str(GRACE_HOPPER), candidate_captions=CAPTIONS)
    assert [(r["caption"], r["score"]) for r in from_path] == [(r["caption"], r["score"]) for r in ranked]
    # The scores are the model's own, computed from the processor's pixels.
    model, processor = pipe.model, AutoProcessor.from_pretrained(model_dir)
    inputs = processor(images=[image], text=CAPTIONS)
    with torch.no_grad():
        embeds, mask, _ = model.get_image_regions(inputs["pixel_values"])
        words = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
        expected = model.score_pairs(embeds, mask, words, inputs["attention_mask"].bool())[0]
    by_caption = {r["caption"]: r["score"] for r in ranked}
    np.testing.assert_allclose([by_caption[c] for c in CAPTIONS], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_the_pipelines_attention_boxes_are_in_the_original_images_pixels(model_dir):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    [best] = pipe(str(GRACE_HOPPER), candidate_captions=CAPTIONS[:1], return_attention=True)
    boxes = [region["box"] for region in best["attention"][0]["regions"]]
    # A 2 x 2 grid over the 512 x 600 photo, not over the 64 x 64 network input.
    np.testing.assert_allclose(
        boxes, [[0, 0, 256, 300], [256, 0, 512, 300], [0, 300, 256, 600], [256, 300, 512, 600]]
    )


def test_the_pipeline_ranks_images_for_a_caption(model_dir):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    photo = decode_image(GRACE_HOPPER)
    images = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("RGB", (40, 30), "blue")]
    ranked = pipe(CAPTIONS[0], candidate_images=images)
    assert sorted(r["image_index"] for r in ranked) == [0, 1, 2]
    with pytest.raises(ValueError, match="vision tower"):
        pipe(CAPTIONS[0], candidate_images=[{"features": np.zeros((4, 256))}])


REGISTERED = """
import modeling_ccr
from transformers.pipelines import PIPELINE_REGISTRY
assert "image-text-matching" in PIPELINE_REGISTRY.get_supported_tasks()
"""

REMOTE = """
import sys
sys.modules["modeling_ccr"] = None  # as on a machine without the package
from transformers import pipeline
from PIL import Image
pipe = pipeline("image-text-matching", model=sys.argv[1], trust_remote_code=True)
assert not type(pipe.model).__module__.startswith("modeling_ccr")
ranked = pipe(Image.open(sys.argv[2]).convert("RGB"), candidate_captions=["a woman in a navy uniform", "a blue gift box"])
print(ranked[0]["caption"], ranked[0]["score"])
"""


@pytest.mark.slow
def test_importing_the_package_registers_the_task():
    result = subprocess.run([sys.executable, "-c", REGISTERED], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_the_saved_pipeline_takes_a_pil_image_where_the_package_is_absent(model_dir, tmp_path):
    from modeling_ccr.models.pipelines import save_matching_pipeline

    saved = save_matching_pipeline(str(model_dir), str(tmp_path / "pipe"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, saved, str(GRACE_HOPPER)], capture_output=True, text=True, timeout=300,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = pipeline("image-text-matching", model=str(model_dir))(
        str(GRACE_HOPPER), candidate_captions=["a woman in a navy uniform", "a blue gift box"]
    )[0]
    caption, score = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert caption == expected["caption"] and float(score) == pytest.approx(expected["score"], rel=1e-5)
