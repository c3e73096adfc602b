"""`pipeline("image-text-matching")`: ranking both ways, attention with boxes, and loading from a folder or
the (fake) Hub with trust_remote_code in a process without the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline

import modeling_ccr.models.pipelines  # noqa: F401  (registers the task)
from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.data.collator import tokenize_captions
from modeling_ccr.models.pipelines import save_matching_pipeline
from modeling_ccr.text.tokenization import build_word_tokenizer

TESTS = Path(__file__).parent
CAPTIONS = ["a red dog on the grass", "a blue car near a red dog", "two men and a ball"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("matcher")
    tokenizer = build_word_tokenizer(CAPTIONS * 4, min_count=1)
    torch.manual_seed(0)
    model = ScanModel(ScanConfig(feature_dim=10, embed_dim=8, vocab_size=len(tokenizer), word_dim=6)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved_dir(model_dir, tmp_path_factory) -> Path:
    """The same model with the pipeline saved in: its code copied in, `custom_pipelines` in config.json."""
    return Path(save_matching_pipeline(str(model_dir), str(tmp_path_factory.mktemp("with_pipeline"))))


def regions(seed: int, n: int = 4) -> dict:
    generator = np.random.default_rng(seed)
    boxes = np.array(
        [[0, 0, 50, 50], [50, 0, 100, 50], [0, 50, 50, 100], [50, 50, 100, 100]][:n], dtype=np.float32
    )
    return {"features": generator.standard_normal((n, 10)).astype(np.float32), "boxes": boxes}


def direct_scores(model_dir: Path, images: list[dict], captions: list[str]) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    features = torch.stack([torch.from_numpy(i["features"]) for i in images])
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    input_ids, attention_mask = tokenize_captions(tokenizer, captions)
    with torch.no_grad():
        return model.score_pairs(
            model.get_image_features(features, mask),
            mask,
            model.get_text_features(input_ids, attention_mask),
            attention_mask.bool(),
        )


def test_saving_records_the_pipeline_in_the_config_and_copies_its_code(saved_dir):
    config = json.loads((saved_dir / "config.json").read_text())
    assert config["custom_pipelines"]["image-text-matching"]["impl"] == "pipelines.ImageTextMatchingPipeline"
    assert (saved_dir / "pipelines.py").is_file()


def test_a_folder_with_the_saved_pipeline_runs_its_own_copy_of_the_code(saved_dir, model_dir):
    pipe = pipeline("image-text-matching", model=str(saved_dir), trust_remote_code=True)
    assert not type(pipe).__module__.startswith("modeling_ccr")
    ranked = pipe(regions(1), candidate_captions=CAPTIONS)
    expected = direct_scores(model_dir, [regions(1)], CAPTIONS)[0]
    torch.testing.assert_close(
        torch.tensor([r["score"] for r in ranked]), expected.sort(descending=True).values
    )


def test_captions_are_ranked_for_an_image_by_the_models_scores(model_dir):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    image = regions(1)
    ranked = pipe(image, candidate_captions=CAPTIONS)
    expected = direct_scores(model_dir, [image], CAPTIONS)[0]
    assert [r["caption"] for r in ranked] == [CAPTIONS[i] for i in expected.argsort(descending=True)]
    torch.testing.assert_close(
        torch.tensor([r["score"] for r in ranked]), expected.sort(descending=True).values
    )
    assert len(pipe(image, candidate_captions=CAPTIONS, top_k=2)) == 2


def test_images_are_ranked_for_a_caption(model_dir):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    images = [regions(seed) for seed in range(3)]
    ranked = pipe(CAPTIONS[0], candidate_images=images)
    expected = direct_scores(model_dir, images, CAPTIONS[:1])[:, 0]
    assert [r["image_index"] for r in ranked] == expected.argsort(descending=True).tolist()


def test_attention_gives_each_word_a_distribution_over_the_boxed_regions(model_dir):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    image = regions(2)
    [best] = pipe(image, candidate_captions=CAPTIONS[:1], return_attention=True)
    assert [w["token"] for w in best["attention"]] == CAPTIONS[0].split()
    for word in best["attention"]:
        assert [r["box"] for r in word["regions"]] == image["boxes"].tolist()
        assert sum(r["weight"] for r in word["regions"]) == pytest.approx(1.0, abs=1e-5)


def test_an_image_path_without_an_extractor_is_a_clear_error(model_dir):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    with pytest.raises(ValueError, match="region_extractor"):
        pipe("photo.jpg", candidate_captions=CAPTIONS)


def test_an_image_file_goes_through_the_region_extractor(model_dir, tmp_path):
    timm = pytest.importorskip("timm")
    matplotlib = pytest.importorskip("matplotlib")
    from transformers import AutoTokenizer

    from modeling_ccr.vision import RegionFeatureExtractor

    backbone = timm.create_model("efficientnet_lite0", pretrained=False).eval()  # random weights suffice here
    extractor = RegionFeatureExtractor(model=backbone, grid=3)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = ScanModel(ScanConfig(feature_dim=1280, embed_dim=8, vocab_size=len(tokenizer), word_dim=6)).eval()
    pipe = pipeline("image-text-matching", model=model, tokenizer=tokenizer, region_extractor=extractor)
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    [best, *_] = pipe(str(photo), candidate_captions=CAPTIONS, return_attention=True)
    boxes = [r["box"] for r in best["attention"][0]["regions"]]
    # a 3 x 3 grid in the photo's own pixels (512 x 600)
    assert len(boxes) == 9 and boxes[0][:2] == [0.0, 0.0] and boxes[-1][2:] == [512.0, 600.0]


REMOTE = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_ccr"] = None  # as on a machine without the package
    import numpy as np
    from transformers import pipeline
    source, inputs = sys.argv[1], json.loads(sys.argv[2])
    if len(sys.argv) > 3:  # push the folder to the (fake) Hub first, with huggingface_hub alone
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo(sys.argv[3], exist_ok=True)
        api.upload_folder(folder_path=source, repo_id=sys.argv[3])
        source = sys.argv[3]
    pipe = pipeline("image-text-matching", model=source, trust_remote_code=True)
    assert not type(pipe).__module__.startswith("modeling_ccr"), type(pipe).__module__
    image = {k: np.asarray(v, dtype=np.float32) for k, v in inputs["image"].items()}
    print(json.dumps(pipe(image, candidate_captions=inputs["captions"], return_attention=True)))
    """
)


def run_remote(argv: list[str], env: dict | None = None) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, *argv], capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def payload() -> str:
    image = regions(3)
    return json.dumps({"image": {k: v.tolist() for k, v in image.items()}, "captions": CAPTIONS})


@pytest.mark.slow
def test_the_pipeline_loads_from_a_folder_with_trust_remote_code_without_the_package(model_dir, saved_dir):
    local = pipeline("image-text-matching", model=str(model_dir))(regions(3), candidate_captions=CAPTIONS)
    remote = run_remote([str(saved_dir), payload()])
    assert [r["caption"] for r in remote] == [r["caption"] for r in local]
    np.testing.assert_allclose([r["score"] for r in remote], [r["score"] for r in local], rtol=1e-5)
    assert remote[0]["attention"][0]["regions"][0]["box"] == [0.0, 0.0, 50.0, 50.0]


@pytest.mark.slow
def test_the_pipeline_loads_from_the_hub_with_trust_remote_code_without_the_package(
    model_dir, saved_dir, tmp_path
):
    sys.path.insert(0, str(TESTS))
    from fake_hub import FakeHub

    hub = FakeHub(tmp_path / "hub")
    hub.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_fake_write_token", HF_HUB_DISABLE_XET="1",
                   HF_HOME=str(tmp_path / "home"), HF_HUB_DISABLE_TELEMETRY="1")  # fmt: skip
        remote = run_remote([str(saved_dir), payload(), "tester/matcher"], env)
    finally:
        hub.stop()
    assert "pipelines.py" in hub.list_files("tester/matcher")
    local = pipeline("image-text-matching", model=str(model_dir))(regions(3), candidate_captions=CAPTIONS)
    np.testing.assert_allclose([r["score"] for r in remote], [r["score"] for r in local], rtol=1e-5)


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True])
def test_top_k_must_be_a_positive_integer(model_dir, top_k):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    with pytest.raises(ValueError, match=r"top_k must be a positive integer"):
        pipe(regions(0), candidate_captions=["a red ball", "a dog"], top_k=top_k)


def test_top_k_keeps_exactly_the_best_k(model_dir):
    pipe = pipeline("image-text-matching", model=str(model_dir))
    captions = ["a red ball", "a dog", "a green cube"]
    ranked = pipe(regions(0), candidate_captions=captions)
    assert pipe(regions(0), candidate_captions=captions, top_k=2) == ranked[:2]


def test_a_caption_over_the_length_limit_is_refused_before_tokenizing(model_dir):
    from modeling_ccr.models.pipelines import MAX_CAPTION_CHARS

    pipe = pipeline("image-text-matching", model=str(model_dir))
    with pytest.raises(ValueError, match=rf"caption 1 has {MAX_CAPTION_CHARS + 1} characters"):
        pipe(regions(0), candidate_captions=["a dog", "x" * (MAX_CAPTION_CHARS + 1)])
