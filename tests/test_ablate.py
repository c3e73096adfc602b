"""`ccr ablate` on a tiny grid: runs are ordinary model folders, resume skips finished runs, the tables
hold exactly the runs' own numbers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from modeling_ccr.cli import main
from modeling_ccr.training import ablation as ablation_module
from modeling_ccr.training.ablation import AblationError, load_ablation, push_runs, run_ablation, slug

TINY_BASE = {
    "seed": 0,
    "output_dir": "unused",
    "data": {
        "source": "synthetic",
        "synthetic": {"train_images": 48, "validation_images": 8, "test_images": 12, "feature_dim": 16},
        "min_word_count": 1,
    },
    "model": {"backbone": "scan"},
    "training": {
        "max_steps": 2,
        "per_device_train_batch_size": 16,
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "disable_tqdm": True,
        "report_to": "none",
    },
}


def write_grid(tmp_path: Path, **extra) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    grid = {
        "base": str(tmp_path / "base.yaml"),
        "output_dir": str(tmp_path / "grid"),
        "set": {"data.synthetic.seed": 0},
        "model_defaults": {"embed_dim": 16, "word_dim": 8},
        "variants": {
            "base": {"ccr_weight": 0.0, "ccs_weight": 0.0},
            "+both": {"ccr_weight": 0.1, "ccs_weight": 0.1},
        },
        "models": {"scan-t2i": {"model": {"backbone": "scan", "direction": "t2i", "lambda_softmax": 9.0}}},
        "seeds": [0, 1],
        **extra,
    }
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ablate")
    ablation = load_ablation(write_grid(tmp_path))
    trained = run_ablation(ablation, jobs=1, progress=lambda _: None)
    return ablation, trained


def test_every_run_is_an_ordinary_model_folder_with_its_own_config(finished):
    ablation, trained = finished
    assert len(trained) == 4
    for run in ablation.runs:
        assert (run.model_dir / "config.json").is_file() and (
            run.model_dir / "eval_results_test.json"
        ).is_file()
        recorded = yaml.safe_load((run.model_dir / "training_config.yaml").read_text())
        assert recorded["seed"] == run.seed
        assert recorded["model"]["ccr_weight"] == (0.1 if run.variant == "+both" else 0.0)
        assert recorded["model"]["embed_dim"] == 16 and recorded["model"]["direction"] == "t2i"
    assert {r.run_dir.relative_to(ablation.output_dir).as_posix() for r in ablation.runs} == {
        "scan-t2i/base/seed0",
        "scan-t2i/base/seed1",
        "scan-t2i/both/seed0",
        "scan-t2i/both/seed1",
    }


def test_the_tables_hold_the_mean_and_sd_of_the_runs_result_files(finished):
    ablation, _ = finished
    summary = json.loads((ablation.output_dir / "ablation.json").read_text())
    markdown = (ablation.output_dir / "ablation.md").read_text()
    assert len(summary["rows"]) == 2
    for row in summary["rows"]:
        records = [
            json.loads((r.model_dir / "eval_results_test.json").read_text())["metrics"]
            for r in ablation.runs
            if r.variant == row["variant"]
        ]
        for key in ("i2t_r1", "t2i_r10", "rsum"):
            assert row["mean"][key] == pytest.approx(statistics.fmean(m[key] for m in records))
            assert row["sd"][key] == pytest.approx(statistics.stdev(m[key] for m in records))
        f1 = [m["attention"]["attention_f1"] for m in records]
        assert row["mean"]["attention_f1"] == pytest.approx(statistics.fmean(f1))
        rsum = f"{row['mean']['rsum']:.1f} ± {row['sd']['rsum']:.1f}"
        assert f"| scan-t2i | {row['variant']} | 2 |" in markdown and rsum in markdown


def test_a_second_run_trains_only_the_unfinished_runs(finished, monkeypatch):
    ablation, _ = finished
    calls = []
    monkeypatch.setattr(
        ablation_module, "_train_one", lambda base, overrides, threads: calls.append(overrides)
    )
    assert run_ablation(ablation, progress=lambda _: None) == []
    assert calls == []
    missing = ablation.runs[3]
    result = missing.model_dir / "eval_results_test.json"
    saved = result.read_text()
    result.unlink()
    try:
        assert run_ablation(ablation, progress=lambda _: None) == [missing]
        assert [c["output_dir"] for c in calls] == [str(missing.run_dir)]
    finally:
        result.write_text(saved)


def test_push_sends_every_finished_run_to_its_own_repo(finished, monkeypatch):
    import modeling_ccr.hub.push as hub

    ablation, _ = finished
    pushed = []

    class Result:
        def __init__(self, repo_id):
            self.repo_id, self.commit_id = repo_id, "0" * 40

    monkeypatch.setattr(
        hub, "push_model", lambda folder, repo_id: pushed.append((folder, repo_id)) or Result(repo_id)
    )
    repos = push_runs(ablation, "me/ccr-abl", progress=lambda _: None)
    assert repos == [
        "me/ccr-abl-scan-t2i-base-seed0",
        "me/ccr-abl-scan-t2i-base-seed1",
        "me/ccr-abl-scan-t2i-both-seed0",
        "me/ccr-abl-scan-t2i-both-seed1",
    ]
    assert [folder for folder, _ in pushed] == [r.model_dir for r in ablation.runs]


def test_cli_rewrites_the_tables_and_prints_them(finished, capsys):
    ablation, _ = finished
    assert main(["ablate", ablation.source, "--tables-only"]) == 0
    assert "| scan-t2i | +both | 2 |" in capsys.readouterr().out


def test_a_variant_not_defined_is_a_one_line_error_naming_the_model(tmp_path, capsys):
    path = write_grid(tmp_path, models={"scan-t2i": {"model": {"backbone": "scan"}, "variants": ["+CCR"]}})
    assert main(["ablate", str(path)]) == 2
    assert "models.scan-t2i.variants: '+CCR' is not one of" in capsys.readouterr().err


def test_an_invalid_run_setting_fails_before_any_run_trains(tmp_path):
    path = write_grid(tmp_path, set={"training.no_such_key": 1})
    with pytest.raises(Exception, match="no_such_key"):
        run_ablation(load_ablation(path), progress=lambda _: None)
    assert not (tmp_path / "grid").exists()


def test_shipped_ablation_files_parse_and_name_published_backbones():
    from modeling_ccr.resources import published_ablations

    shipped = published_ablations()
    assert {"ablation_f30k", "ablation_coco", "ablation_digit_scenes", "ablation_hard"} <= set(shipped)
    for path in shipped.values():
        assert path.read_text().startswith("# ")
        ablation = load_ablation(path)
        assert {run.variant for run in ablation.runs} >= {"base", "+both"}


def test_a_variant_set_overrides_only_that_variants_runs(tmp_path):
    variants = {
        "base": {"ccr_weight": 0.0, "ccs_weight": 0.0},
        "+both late": {"ccr_weight": 0.1, "ccs_weight": 0.1, "set": {"training.constraint_warmup_steps": 7}},
    }
    ablation = load_ablation(write_grid(tmp_path, variants=variants))
    by_variant = {run.variant: run for run in ablation.runs}
    late = by_variant["+both late"].overrides
    assert late["training.constraint_warmup_steps"] == 7 and "set" not in late["model"]
    assert late["model"]["ccr_weight"] == 0.1
    assert "training.constraint_warmup_steps" not in by_variant["base"].overrides


def test_slugs_are_folder_and_repo_safe():
    assert slug("+both") == "both" and slug("SCAN t2i") == "scan-t2i" and slug("+CCR") == "ccr"


def test_missing_required_key_is_named(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("base: demo\noutput_dir: x\nvariants: {}\nmodels: {}\n")
    with pytest.raises(AblationError, match="missing required key 'seeds'"):
        load_ablation(path)


def warmup_trainer(tmp_path, **warmup):
    """A tiny SCAN model (CCR and CCS at weight 5), its MatchingTrainer with `warmup`, and one batch."""
    import torch
    from transformers import TrainingArguments

    from modeling_ccr import ScanModel
    from modeling_ccr.models.configuration_scan import ScanConfig
    from modeling_ccr.training.trainer import MatchingTrainer

    torch.manual_seed(0)
    config = ScanConfig(feature_dim=8, embed_dim=8, vocab_size=20, word_dim=6, ccr_weight=5.0, ccs_weight=5.0)
    model = ScanModel(config)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = MatchingTrainer(model=model, args=args, **warmup)
    inputs = {
        "region_features": torch.randn(6, 5, 8),
        "region_mask": torch.ones(6, 5, dtype=torch.bool),
        "input_ids": torch.randint(4, 20, (6, 7)),
        "attention_mask": torch.ones(6, 7, dtype=torch.long),
    }
    model.train()
    return model, trainer, inputs


def test_hinge_warmup_sums_over_negatives_for_the_first_steps_then_takes_the_hardest(tmp_path):
    model, trainer, inputs = warmup_trainer(tmp_path, hinge_warmup_steps=3)
    hardest = model(**inputs, return_loss=True).loss
    model.config.max_violation = False
    summed = model(**inputs, return_loss=True).loss
    model.config.max_violation = True
    assert summed > hardest * 1.5  # the two losses differ, so the checks below tell them apart
    trainer.state.global_step = 2
    assert trainer.compute_loss(model, inputs).item() == pytest.approx(summed.item())
    assert model.config.max_violation is True  # the model's own setting is restored after the step
    trainer.state.global_step = 3
    assert trainer.compute_loss(model, inputs).item() == pytest.approx(hardest.item())


def test_constraint_warmup_trains_on_the_base_loss_alone_for_the_first_steps(tmp_path):
    model, trainer, inputs = warmup_trainer(tmp_path, constraint_warmup_steps=2)
    outputs = model(**inputs, return_loss=True)
    constrained, base_only = outputs.loss, outputs.base_loss
    assert constrained > base_only + 1e-3  # the constraint terms add something, so the checks can tell
    trainer.state.global_step = 1
    assert trainer.compute_loss(model, inputs).item() == pytest.approx(base_only.item())
    assert (model.config.ccr_weight, model.config.ccs_weight) == (5.0, 5.0)  # restored after the step
    trainer.state.global_step = 2
    assert trainer.compute_loss(model, inputs).item() == pytest.approx(constrained.item())


def test_the_paired_table_holds_each_seeds_variant_minus_base(finished):
    ablation, _ = finished
    summary = json.loads((ablation.output_dir / "ablation.json").read_text())
    (row,) = summary["paired"]
    assert (row["model"], row["variant"], row["seeds"]) == ("scan-t2i", "+both", [0, 1])
    metrics = {
        (r.variant, r.seed): json.loads((r.model_dir / "eval_results_test.json").read_text())["metrics"]
        for r in ablation.runs
    }
    deltas = [metrics["+both", seed]["rsum"] - metrics["base", seed]["rsum"] for seed in (0, 1)]
    assert row["mean"]["rsum"] == pytest.approx(statistics.fmean(deltas))
    assert row["sd"]["rsum"] == pytest.approx(statistics.stdev(deltas))
    assert row["n_positive"]["rsum"] == sum(d > 0 for d in deltas)
    f1 = [
        metrics["+both", s]["attention"]["attention_f1"] - metrics["base", s]["attention"]["attention_f1"]
        for s in (0, 1)
    ]
    assert row["mean"]["attention_f1"] == pytest.approx(statistics.fmean(f1))
    assert (
        "| scan-t2i | +both | 2 | "
        in (ablation.output_dir / "ablation.md").read_text().split("Change against")[1]
    )


def test_an_image_corpus_is_generated_for_the_grid_when_it_asks_for_one(tmp_path, monkeypatch):
    from modeling_ccr.training import ablation as ablation_module
    from modeling_ccr.vision import digit_scenes

    asked = {}

    def fake_ensure(folder, config, as_images=False, **_):
        asked.update(folder=folder, as_images=as_images)
        return folder

    monkeypatch.setattr(digit_scenes, "ensure_digit_scenes", fake_ensure)
    corpus = {"path": str(tmp_path / "scenes"), "digit_scenes": {"train_images": 4}, "as_images": True}
    overrides = ablation_module.prepare_corpus(load_ablation(write_grid(tmp_path, corpus=corpus)))
    assert asked == {"folder": tmp_path / "scenes", "as_images": True}
    assert overrides == {"data.source": str(tmp_path / "scenes")}
    with pytest.raises(AblationError, match=r"corpus\.as_images must be true or false, found 'yes'"):
        load_ablation(write_grid(tmp_path, corpus={**corpus, "as_images": "yes"}))


# ---------------------------------------------------------------------------------------------------------
# Paired statistics, on hand-built result files whose answers are known
# ---------------------------------------------------------------------------------------------------------

RETRIEVAL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def fake_record(rsum: float, f1: float, drift: dict | None) -> dict:
    """An `eval_results_test.json` as a digit-scenes run writes it (retrieval, attention, drift)."""
    metrics = {key: rsum / 6 for key in RETRIEVAL_KEYS}
    metrics["rsum"] = rsum
    metrics["attention"] = {"attention_precision": f1, "attention_recall": f1, "attention_f1": f1}
    if drift is not None:
        metrics["attention_drift"] = {"head_words": 40, "words_with_both": 12, **drift}
    return {"dataset": "digit_scenes", "split": "test", "metrics": metrics}


def fake_grid(tmp_path: Path, cells: dict[str, list[dict]], seeds: list[int]):
    """An ablation whose runs are finished with the given result files: variant -> one record per seed."""
    variants = {name: {"ccr_weight": 0.0 if name == "base" else 0.1} for name in cells}
    ablation = load_ablation(write_grid(tmp_path, variants=variants, seeds=seeds))
    for run in ablation.runs:
        run.model_dir.mkdir(parents=True)
        record = cells[run.variant][seeds.index(run.seed)]
        (run.model_dir / "eval_results_test.json").write_text(json.dumps(record))
    ablation_module.write_tables(ablation)
    summary = json.loads((ablation.output_dir / "ablation.json").read_text())
    markdown = (ablation.output_dir / "ablation.md").read_text()
    return ablation, {row["variant"]: row for row in summary["paired"]}, markdown


BASE_RSUM = [300.0, 320.0, 310.0, 290.0, 305.0]
BASE_DRIFT = [0.30, 0.20, 0.25, 0.35, 0.28]


def five_seed_grid(tmp_path: Path):
    """base; +both: rSum +1..+3 and drift -0.03..-0.06 on every seed, F1 unchanged on seed 2;
    +mixed: rSum up on some seeds and down on others; +nodrift: no drift recorded."""
    rsum_gain, drift_drop = [1.0, 2.0, 1.5, 3.0, 2.5], [0.05, 0.04, 0.06, 0.03, 0.05]
    f1_gain = [0.010, 0.020, 0.0, 0.030, 0.010]
    cells = {
        "base": [
            fake_record(r, 0.4, {"own_region_share": 0.25, "habitat_share": 0.3 + d, "drift": d})
            for r, d in zip(BASE_RSUM, BASE_DRIFT, strict=True)
        ],
        "+both": [
            fake_record(
                r + g, 0.4 + f, {"own_region_share": 0.27, "habitat_share": 0.3 + d - dd, "drift": d - dd}
            )
            for r, d, g, dd, f in zip(BASE_RSUM, BASE_DRIFT, rsum_gain, drift_drop, f1_gain, strict=True)
        ],
        "+mixed": [
            fake_record(r + g, 0.4, {"own_region_share": 0.25, "habitat_share": 0.3 + d, "drift": None})
            for r, d, g in zip(BASE_RSUM, BASE_DRIFT, [4.0, -3.0, 2.0, -5.0, 1.0], strict=True)
        ],
        "+nodrift": [fake_record(r - 10.0, 0.4, None) for r in BASE_RSUM],
    }
    return fake_grid(tmp_path, cells, [0, 1, 2, 3, 4])


def test_sign_test_is_exact_and_drops_zero_differences():
    from modeling_ccr.training.ablation import sign_test_p

    assert sign_test_p([1.0, 2.0, 0.5, 3.0, 0.1]) == pytest.approx(0.0625)  # 2 / 2**5
    assert sign_test_p([-1.0] * 5) == pytest.approx(0.0625)
    assert sign_test_p([1.0, 2.0, 0.5, 3.0, -0.1]) == pytest.approx(0.375)  # 2 * (1 + 5) / 32
    assert sign_test_p([1.0, 2.0, 0.0, 3.0, 0.1]) == pytest.approx(0.125)  # the zero is dropped: 2 / 2**4
    assert sign_test_p([0.0, 0.0, 0.0]) == 1.0


def test_a_consistent_gain_is_significant_and_helps(tmp_path):
    _, paired, markdown = five_seed_grid(tmp_path)
    row = paired["+both"]
    assert row["seeds"] == [0, 1, 2, 3, 4]
    assert row["mean"]["rsum"] == pytest.approx(2.0)
    assert row["sign_test_p"]["rsum"] == pytest.approx(0.0625) and row["n_zero"]["rsum"] == 0
    low, high = row["ci95"]["rsum"]
    assert 0 < low < 2.0 < high <= 3.0  # excludes 0, contains the mean, inside the observed range
    assert row["verdict"]["rsum"] == "helps"
    cell = f"+2.0 [{low:+.1f}, {high:+.1f}] (5/5, p=0.062) helps"
    assert cell in markdown.split("Change against")[1]


def test_a_drift_decrease_helps_and_a_tie_is_dropped_and_stated(tmp_path):
    _, paired, markdown = five_seed_grid(tmp_path)
    row = paired["+both"]
    assert row["mean"]["drift"] == pytest.approx(-0.046)
    low, high = row["ci95"]["drift"]
    assert low < -0.046 < high < 0
    assert row["n_positive"]["drift"] == 0 and row["sign_test_p"]["drift"] == pytest.approx(0.0625)
    assert row["verdict"]["drift"] == "helps" and row["verdict"]["habitat_share"] == "helps"
    assert row["verdict"]["own_region_share"] == "helps"
    # F1 does not change on seed 2: that seed is dropped from the sign test (4 of 4 positive) and stated.
    assert row["n_zero"]["attention_f1"] == 1 and row["sign_test_p"]["attention_f1"] == pytest.approx(0.125)
    assert "(4/5, 1 zero, p=0.12) helps" in markdown


def test_a_loss_hurts_and_mixed_signs_are_no_effect(tmp_path):
    _, paired, _ = five_seed_grid(tmp_path)
    assert paired["+nodrift"]["verdict"]["rsum"] == "hurts"
    assert paired["+nodrift"]["ci95"]["rsum"] == pytest.approx([-10.0, -10.0])
    mixed = paired["+mixed"]
    low, high = mixed["ci95"]["rsum"]
    assert low < 0 < high and mixed["verdict"]["rsum"] == "no effect larger than the interval"
    assert mixed["sign_test_p"]["rsum"] == pytest.approx(1.0)  # 3 of 5 positive


def test_missing_drift_is_na_in_both_tables(tmp_path):
    ablation, paired, markdown = five_seed_grid(tmp_path)
    summary = json.loads((ablation.output_dir / "ablation.json").read_text())
    rows = {row["variant"]: row for row in summary["rows"]}
    assert rows["base"]["mean"]["own_region_share"] == pytest.approx(0.25)
    assert rows["base"]["mean"]["drift"] == pytest.approx(statistics.fmean(BASE_DRIFT))
    assert "drift" not in rows["+nodrift"]["mean"] and "drift" not in rows["+mixed"]["mean"]  # null: n/a
    assert "own_region_share" in rows["+mixed"]["mean"]
    assert "drift" not in paired["+nodrift"]["mean"] and "drift" not in paired["+mixed"]["mean"]
    main_table, paired_table = markdown.split("Change against")
    (nodrift_row,) = [line for line in main_table.splitlines() if "| +nodrift |" in line]
    assert nodrift_row.endswith("| n/a | n/a | n/a |")
    (nodrift_paired,) = [line for line in paired_table.splitlines() if "| +nodrift |" in line]
    assert nodrift_paired.endswith("| n/a | n/a | n/a |")
    (base_row,) = [line for line in main_table.splitlines() if "| base |" in line]
    assert "| 0.250 ± 0.000 |" in base_row


def test_the_bootstrap_is_reproducible(tmp_path):
    ablation, _, _ = five_seed_grid(tmp_path)
    first = (ablation.output_dir / "ablation.json").read_text()
    ablation_module.write_tables(ablation)
    assert (ablation.output_dir / "ablation.json").read_text() == first


def test_fewer_than_three_seeds_gives_no_verdict(tmp_path):
    cells = {
        "base": [fake_record(300.0, 0.4, None), fake_record(310.0, 0.4, None)],
        "+both": [fake_record(305.0, 0.5, None), fake_record(320.0, 0.5, None)],
    }
    _, paired, markdown = fake_grid(tmp_path, cells, [0, 1])
    row = paired["+both"]
    assert row["verdict"]["rsum"] == "too few seeds" and row["ci95"]["rsum"] is None
    assert row["sign_test_p"]["rsum"] == pytest.approx(0.5)
    assert "+7.5 ± 3.5 (2/2, p=0.5) too few seeds" in markdown


def test_a_drift_record_that_is_not_a_mapping_is_a_one_line_error_naming_the_file(tmp_path):
    record = fake_record(300.0, 0.4, None)
    record["metrics"]["attention_drift"] = [{"drift": 0.1}]
    cells = {"base": [record] * 3, "+both": [record] * 3}
    with pytest.raises(
        AblationError, match=r"seed0/model/eval_results_test\.json: metrics\.attention_drift: "
    ):
        fake_grid(tmp_path, cells, [0, 1, 2])


def test_an_entry_model_keeps_the_base_vision_tower_unless_it_names_its_own(tmp_path):
    plain = load_ablation(write_grid(tmp_path, models={"chan": {"model": {"backbone": "chan"}}}))
    assert all("vision_tower" not in run.overrides["model"] for run in plain.runs)
    tower = {"architecture": "test_efficientnet", "image_size": 32, "regions": "grid", "grid_size": 2}
    own_tower = {**tower, "grid_size": 3}
    models = {
        "scan": {},
        "chan": {"model": {"backbone": "chan"}},
        "laps": {"model": {"backbone": "laps", "vision_tower": own_tower}},
    }
    path = write_grid(tmp_path, models=models)
    base = {**TINY_BASE, "model": {"backbone": "scan", "vision_tower": tower}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))  # write_grid wrote the tower-less base
    sections = {
        run.model: run.overrides["model"] for run in load_ablation(path).runs if run.variant == "base"
    }
    assert sections["scan"]["vision_tower"] == tower
    off = {"ccr_weight": 0.0, "ccs_weight": 0.0}
    assert sections["chan"] == {
        "embed_dim": 16,
        "word_dim": 8,
        "backbone": "chan",
        "vision_tower": tower,
        **off,
    }
    assert sections["laps"]["vision_tower"] == own_tower


def test_threads_per_run_below_one_is_refused_before_training(tmp_path, capsys):
    path = write_grid(tmp_path)
    assert main(["ablate", str(path), "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "grid").exists()
