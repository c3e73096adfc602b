"""A converted corpus trains with a published config (shrunk with --set) and gives attention P/R/F1."""

from __future__ import annotations

import json

from convert_files import export_corpus

from modeling_ccr.cli import main
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus

DIM = 8
SHRINK = [
    f"model.feature_dim={DIM}",
    "model.embed_dim=16",
    "model.word_dim=8",
    "data.min_word_count=1",
    "training.max_steps=4",
    "training.per_device_train_batch_size=16",
    "training.eval_strategy=steps",
    "training.save_strategy=steps",
    "training.eval_steps=2",
    "training.save_steps=2",
    "training.logging_steps=2",
    "training.lr_decay_epochs=1",
    "training.disable_tqdm=true",
]


def test_precomp_with_tsv_boxes_and_entities_trains_and_gives_attention_metrics(tmp_path, capsys):
    corpus = build_synthetic_corpus(
        SyntheticCorpusConfig(train_images=24, validation_images=6, test_images=6, feature_dim=DIM)
    )
    sources = export_corpus(corpus, tmp_path / "sources")
    out = tmp_path / "f30k_like"
    convert = [
        "convert",
        "scan-precomp",
        str(sources["precomp"]),
        str(out),
        "--karpathy",
        str(sources["karpathy"]),
    ]
    convert += ["--entities", str(sources["entities"]), "--float16", "--boxes", *map(str, sources["tsv"])]
    assert main(convert) == 0
    overrides = [f"data.source={out}", f"output_dir={tmp_path / 'run'}", *SHRINK]
    assert main(["train", "scan_t2i_avg_f30k", *[a for o in overrides for a in ("--set", o)]]) == 0
    model_dir = tmp_path / "run" / "model"
    assert main(["evaluate", str(model_dir), "--split", "test", "--attention"]) == 0
    assert "attention of" in capsys.readouterr().out
    record = json.loads((model_dir / "eval_results_test.json").read_text())
    assert record["dataset"] == str(out)
    (attention,) = record["metrics"]["attention"]
    assert attention["n_words"] > 0
    for key in ("attention_precision", "attention_recall", "attention_f1"):
        assert 0.0 <= attention[key] <= 1.0
    assert record["metrics"]["n_images"] == 6 and record["metrics"]["n_captions"] == 30


def test_a_tsv_corpus_trains_with_a_published_coco_config(tmp_path):
    corpus = build_synthetic_corpus(
        SyntheticCorpusConfig(train_images=24, validation_images=6, test_images=6, feature_dim=DIM)
    )
    sources = export_corpus(corpus, tmp_path / "sources")
    out = tmp_path / "coco_like"
    assert (
        main(
            [
                "convert",
                "butd-tsv",
                "--karpathy",
                str(sources["karpathy"]),
                *map(str, sources["tsv"]),
                str(out),
            ]
        )
        == 0
    )
    overrides = [f"data.source={out}", f"output_dir={tmp_path / 'run'}", "evaluation.protocol=full", *SHRINK]
    assert main(["train", "scan_i2t_avg_coco", *[a for o in overrides for a in ("--set", o)]]) == 0
    record = json.loads((tmp_path / "run" / "model" / "eval_results_test.json").read_text())
    assert record["metrics"]["n_images"] == 6
