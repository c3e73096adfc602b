"""The app's default view: `ccr demo --corpus digit-scenes` trains a plain and a constrained model on the
digit scenes written as images, and `app.py` with no arguments opens them side by side on a digit scene of
the corpus's test split, its own captions ranked, a digit word's attention drawn on its pixels.

The demo runs here on the shipped grid shrunk (a tiny corpus, timm's smallest network as the tower, two
steps), as tests/test_digit_scenes.py runs it."""

from __future__ import annotations

import datasets
import pytest
import yaml

pytest.importorskip("gradio")
pytest.importorskip("timm")
pytest.importorskip("torchvision")

import modeling_ccr.apps.gradio_app as gradio_app
import modeling_ccr.cli.run as run_module
from modeling_ccr.cli import main
from modeling_ccr.resources import published_ablations
from modeling_ccr.text.tokenization import split_words
from modeling_ccr.vision.digit_scenes import DIGIT_WORDS

pytestmark = pytest.mark.slow


def shrunk_grid(folder):
    """The shipped end-to-end grid with a tiny corpus and a tiny tower, written into `folder`."""
    path = published_ablations()[run_module.DIGIT_SCENES_GRID]
    grid = yaml.safe_load(path.read_text())
    base = yaml.safe_load((path.parent / f"{grid['base']}.yaml").read_text())
    base["model"]["vision_tower"] = {
        "architecture": "test_efficientnet",
        "image_size": 96,
        "regions": "boxes",
    }
    base["training"].update(per_device_train_batch_size=8, hinge_warmup_steps=0)
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    grid["base"] = str(folder / "base.yaml")
    grid["corpus"]["digit_scenes"] = {
        "seed": 0, "train_images": 8, "validation_images": 4, "test_images": 4, "canvas_size": 96,
    }  # fmt: skip
    (folder / "grid.yaml").write_text(yaml.safe_dump(grid))
    return folder / "grid.yaml"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """A folder holding what `ccr demo --corpus digit-scenes` writes: the corpus and the two models."""
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "DIGIT_SCENES_GRID", str(shrunk_grid(root)))
        patch.chdir(root)  # the demo's default folder, and the app's, are relative to here
        argv = ["demo", "--corpus", "digit-scenes", "--corpus-dir", str(root / "digits")]
        assert main([*argv, "--set", "training.max_steps=2"]) == 0
    return root


def test_the_demo_trains_a_plain_and_a_constrained_model_on_the_digit_scenes_images(demo_root):
    records = {
        name: yaml.safe_load((demo_root / gradio_app.DEMO_DIR / name / "model" / "training_config.yaml").read_text())
        for name in ("plain", "constrained")
    }  # fmt: skip
    assert records["plain"]["model"]["ccr_weight"] == records["plain"]["model"]["ccs_weight"] == 0.0
    assert (
        records["constrained"]["model"]["ccr_weight"] == records["constrained"]["model"]["ccs_weight"] == 0.1
    )
    for record in records.values():
        assert record["data"]["source"] == str(demo_root / "digits")
        assert record["model"]["vision_tower"]["architecture"] == "test_efficientnet"  # the grid's base
        assert record["training"]["max_steps"] == 2  # --set applies to both
    assert gradio_app.DEMO_DIR == run_module.DIGIT_SCENES_DEMO_DIR  # the app opens what the demo writes


def test_the_default_app_ranks_a_test_scenes_own_captions_with_a_digit_words_attention(
    demo_root, monkeypatch
):
    monkeypatch.chdir(demo_root)
    drawn = []
    attention = gradio_app.word_attention_over_regions

    def recording(model, tokenizer, features, caption, word_index):
        drawn.append((model, features, split_words(caption)[word_index]))
        return attention(model, tokenizer, features, caption, word_index)

    monkeypatch.setattr(gradio_app, "word_attention_over_regions", recording)
    app = gradio_app.build_app(gradio_app.parse_args([]))
    assert [m.name for m in app.matchers] == ["constrained", "plain"]

    test = datasets.load_from_disk(str(demo_root / "digits"))["test"]
    assert app.shown == test[0]["image_id"]
    rows, picture, note = app.rank(None, app.shown, "", "")
    assert sorted(row[1] for row in rows) == sorted(test[0]["captions"])  # real captions of that scene
    assert [row[0] for row in rows] == [1, 2, 3, 4, 5] and len(rows[0]) == 4  # a score per model
    assert rows[0][2] == max(row[2] for row in rows)  # ranked by the constrained model
    digit = next(w for w in split_words(rows[0][1]) if w in DIGIT_WORDS)
    assert f"**{digit}**" in note
    # One attention per model, for the chosen digit word, over that model's tower features of the scene.
    assert [(model, word) for model, _, word in drawn] == [(m.model, digit) for m in app.matchers]
    for (_, features, _), matcher in zip(drawn, app.matchers, strict=True):
        expected, _ = app.gallery.regions(app.shown, matcher)
        assert features.equal(expected)
    assert picture.ndim == 3 and picture.shape[-1] == 3
    assert app.gallery.photo(app.shown).is_file()  # drawn on the scene's own pixels

    # The page opens on that view: the picked scene, its captions, the ranked table and the picture.
    blocks = {
        getattr(b, "elem_id", None): b for b in gradio_app.build_demo(app).blocks.values()
    }  # fmt: skip
    assert blocks["pick"].value == app.shown
    assert blocks["captions"].value.splitlines() == list(test[0]["captions"])
    assert [row[1] for row in blocks["ranked"].value["data"]] == [row[1] for row in rows]
    assert blocks["attention"].value is not None and f"**{digit}**" in blocks["note"].value


def test_a_chosen_word_is_drawn_instead_of_the_digit_word(demo_root, monkeypatch):
    monkeypatch.chdir(demo_root)
    app = gradio_app.build_app(gradio_app.parse_args(["--show", "digits-test-00001"]))
    captions = app.gallery.captions("digits-test-00001")
    rows, _, note = app.rank(None, "digits-test-00001", "\n".join(captions), "")
    word = split_words(rows[0][1])[-1]
    _, _, note = app.rank(None, "digits-test-00001", "\n".join(captions), word)
    assert f"**{word}**" in note


def test_without_the_demo_models_the_app_says_in_one_line_which_command_makes_them(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CCR_MODEL", raising=False)
    assert gradio_app.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "demo models are missing" in err and "`ccr demo --corpus digit-scenes`" in err


def test_the_default_word_prefers_a_digit_word_over_the_longest():
    caption = "a picture of the small green seven near the stripes"
    assert gradio_app.default_word(caption) == "picture"
    assert gradio_app.default_word(caption, DIGIT_WORDS) == "seven"
