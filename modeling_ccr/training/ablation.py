"""A constraint ablation from one YAML: corpus x backbones x variants x seeds, resumable, with its tables.

An ablation file (`configs/ablation_*.yaml`) names:

- `base`: a run configuration (a published name such as `demo`, or a path) that gives every run its data,
  training and evaluation sections; the model section comes from `models` below.
- `output_dir`: every run is an ordinary model folder `<output_dir>/<model>/<variant>/seed<k>/model`;
  the tables go to `<output_dir>/ablation.md` and `ablation.json`.
- `set` (optional): dotted overrides of the base config for every run (`training.num_train_epochs: 3`).
- `corpus` (optional): `{digit_scenes: {knobs}, path: FOLDER, as_images: false}` generates the digit-scenes
  corpus at FOLDER once (modeling_ccr.vision.digit_scenes; `as_images: true` writes the pixels, for models
  with a `vision_tower`) and trains every run on it.
- `model_defaults` (optional): model options shared by every model (sizes, margins).
- `models`: name -> `{model: {backbone, options...}, variants: [names], set: {per-model overrides},
  base: a run config for this model only}`; without `model`, the model section of the model's base
  config is used (the published settings of `configs/<backbone>_f30k.yaml`, say). A `model` that names no
  `vision_tower` keeps the base's: the tower decides what the pixels become (the regions every matcher
  of an end-to-end grid is compared on), so it belongs to the grid's data, not to one matcher.
- `variants`: name -> model options (`{ccr_weight: 0.1, ccs_weight: 0.1}`, or any constraint option),
  plus an optional `set` of dotted run overrides for that variant (`{training.constraint_warmup_steps: 46}`).
- `seeds`: the training seeds.

A run whose `model/eval_results_test.json` exists is finished and skipped; an unfinished one is trained
again from the start. The tables report mean and sample standard deviation over the finished seeds, and,
against the `base` variant on the same seed, the paired differences with an exact sign test, a seeded bootstrap
95 % interval of their mean and a verdict (`paired_statistics`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import multiprocessing
import os
import re
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import UserError
from ..resources import resolve_config

ABLATION_KEYS = {"base", "output_dir", "set", "corpus", "model_defaults", "models", "variants", "seeds"}
MODEL_KEYS = {"base", "model", "variants", "set"}
RESULT_FILE = "eval_results_test.json"
# The variant every other variant of a model is compared with, seed by seed.
BASELINE_VARIANT = "base"
# Table columns: (label, key in the metrics; attention keys live under metrics["attention"]).
RETRIEVAL_COLUMNS = (
    ("i2t R@1", "i2t_r1"),
    ("i2t R@5", "i2t_r5"),
    ("i2t R@10", "i2t_r10"),
    ("t2i R@1", "t2i_r1"),
    ("t2i R@5", "t2i_r5"),
    ("t2i R@10", "t2i_r10"),
    ("rSum", "rsum"),
)
ATTENTION_COLUMNS = (
    ("attention P", "attention_precision"),
    ("attention R", "attention_recall"),
    ("attention F1", "attention_f1"),
)
# Digit scenes only: where a digit word's attention goes (metrics["attention_drift"], the dict of
# evaluation/attention_drift.py `summarize_drift`); a run on another corpus has none and shows n/a.
DRIFT_COLUMNS = (
    ("own share", "own_region_share"),
    ("habitat share", "habitat_share"),
    ("drift", "drift"),
)
# Columns of the paired table (variant minus base, same seed): the seed spread of a corpus can be larger
# than a variant's effect, and the same seed shares the corpus draw and initialisation.
PAIRED_COLUMNS = (("rSum", "rsum"), *ATTENTION_COLUMNS, *DRIFT_COLUMNS)
# Which side of a paired difference is an improvement: the habitat share and the drift (habitat minus
# unrelated texture) are the failure mode the constraints are meant to reduce, so lower is better there.
HIGHER_IS_BETTER = {
    **{key: True for _, key in (*RETRIEVAL_COLUMNS, *ATTENTION_COLUMNS)},
    "own_region_share": True,
    "habitat_share": False,
    "drift": False,
}
# Paired statistics: below MIN_SEEDS no verdict is given (an exact sign test over 2 seeds cannot go below
# p = 0.5, and a bootstrap of 2 values is their range). The bootstrap RNG seed is fixed so that rewriting the
# tables from the same runs gives the same intervals.
MIN_SEEDS = 3
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
NO_EFFECT = "no effect larger than the interval"
TOO_FEW_SEEDS = "too few seeds"


class AblationError(UserError, ValueError):
    """An ablation file that cannot be run; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class AblationRun:
    """One cell of the grid: a model, a variant, a seed, and the run config that trains it."""

    model: str
    variant: str
    seed: int
    run_dir: Path
    overrides: dict[str, Any]  # dotted overrides of the base config
    base: Path  # the run config it starts from

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    @property
    def finished(self) -> bool:
        return (self.model_dir / RESULT_FILE).is_file()


@dataclasses.dataclass
class Ablation:
    source: str
    output_dir: Path
    runs: list[AblationRun]
    corpus: dict[str, Any] | None


# ---------------------------------------------------------------------------------------------------------
# Reading the ablation file
# ---------------------------------------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AblationError(f"{where}: expected a mapping, found {value!r}")
    return value


def _unknown(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise AblationError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def load_ablation(path: str | Path, overrides: dict[str, Any] | None = None) -> Ablation:
    """Read and check an ablation file; `overrides` are dotted keys added to its `set` (e.g. a budget)."""
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"ablation file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise AblationError(f"{path}: not valid YAML: {err}") from err
    raw = _mapping(raw, str(path))
    _unknown(raw, ABLATION_KEYS, str(path))
    for key in ("base", "output_dir", "models", "variants", "seeds"):
        if key not in raw:
            raise AblationError(f"{path}: missing required key {key!r}")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise AblationError(f"{path}: seeds must be a non-empty list of integers, found {seeds!r}")
    variants = _mapping(raw["variants"], f"{path}: variants")
    shared = {**_mapping(raw.get("set"), f"{path}: set"), **(overrides or {})}
    defaults = _mapping(raw.get("model_defaults"), f"{path}: model_defaults")
    output_dir = Path(raw["output_dir"])
    runs = []
    for name, entry in _mapping(raw["models"], f"{path}: models").items():
        where = f"{path}: models.{name}"
        entry = _mapping(entry, where)
        _unknown(entry, MODEL_KEYS, where)
        base = resolve_config(str(entry.get("base", raw["base"])))
        model = model_section(entry.get("model"), base, f"{where}.model")
        if "backbone" not in model:
            raise AblationError(f"{where}.model: needs a 'backbone'")
        names = entry.get("variants", list(variants))
        for variant in names:
            if variant not in variants:
                raise AblationError(f"{where}.variants: {variant!r} is not one of {sorted(variants)}")
            options = dict(_mapping(variants[variant], f"{path}: variants.{variant}"))
            variant_set = _mapping(options.pop("set", None), f"{path}: variants.{variant}.set")
            section = {**defaults, **model, **options}
            for seed in seeds:
                run_dir = output_dir / slug(name) / slug(variant) / f"seed{seed}"
                run_overrides = {
                    **shared,
                    **_mapping(entry.get("set"), f"{where}.set"),
                    **variant_set,
                    "model": copy.deepcopy(section),
                    "seed": seed,
                    "output_dir": str(run_dir),
                }
                runs.append(AblationRun(name, variant, seed, run_dir, run_overrides, base))
    corpus = raw.get("corpus")
    if corpus is not None:
        corpus = _mapping(corpus, f"{path}: corpus")
        _unknown(corpus, {"digit_scenes", "path", "as_images"}, f"{path}: corpus")
        if not isinstance(corpus.get("as_images", False), bool):
            raise AblationError(
                f"{path}: corpus.as_images must be true or false, found {corpus['as_images']!r}"
            )
        if "path" not in corpus:
            raise AblationError(f"{path}: corpus needs a 'path' (the folder the corpus is generated in)")
    return Ablation(str(path), output_dir, runs, corpus)


def model_section(entry_model: Any, base: Path, where: str) -> dict[str, Any]:
    """A grid entry's model section: its own `model` (keeping the base's vision tower) or the base's."""
    base_section = base_model_section(base)
    if not entry_model:
        return base_section
    model = dict(_mapping(entry_model, where))
    if "vision_tower" in base_section:
        model.setdefault("vision_tower", copy.deepcopy(base_section["vision_tower"]))
    return model


def base_model_section(base: Path) -> dict[str, Any]:
    """The model section of a run config file (empty when it has none)."""
    raw = yaml.safe_load(base.read_text()) or {}
    return dict(raw.get("model") or {})


def slug(name: str) -> str:
    """A folder and repo-name piece: `+both` -> `both`, `SCAN t2i` -> `scan-t2i`."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("+", "")).strip("-")
    return cleaned or "run"


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------


def prepare_corpus(ablation: Ablation) -> dict[str, Any]:
    """Generate the ablation's corpus if it names one; returns the overrides that point runs at it."""
    if ablation.corpus is None:
        return {}
    from ..vision.digit_scenes import DigitScenesConfig, ensure_digit_scenes

    folder = Path(ablation.corpus["path"])
    knobs = _mapping(ablation.corpus.get("digit_scenes"), f"{ablation.source}: corpus.digit_scenes")
    try:
        config = DigitScenesConfig(**knobs)
    except TypeError as err:
        raise AblationError(f"{ablation.source}: corpus.digit_scenes: {err}") from err
    # as_images: the pixels, for models with a vision_tower (end to end); else region features.
    ensure_digit_scenes(folder, config, as_images=ablation.corpus.get("as_images", False))
    return {"data.source": str(folder)}


def run_config(ablation: Ablation, run: AblationRun, corpus_overrides: dict[str, Any]):
    """The validated `ExperimentConfig` of one run: the base config with the ablation's overrides."""
    from .run_config import load_experiment_config

    return load_experiment_config(run.base, {**run.overrides, **corpus_overrides})


def _train_one(base: Path, overrides: dict[str, Any], threads: int) -> str:
    """Worker: train and evaluate one run (in its own process when `--jobs` > 1)."""
    import torch

    from .experiment import load_experiment_config, run_experiment

    torch.set_num_threads(threads)
    config = load_experiment_config(base, overrides)
    started_before = Path(config.output_dir).exists()
    model_dir = run_experiment(config, overwrite=True) if started_before else run_experiment(config)
    return str(model_dir)


def run_ablation(
    ablation: Ablation, jobs: int = 1, progress=print, threads: int | None = None
) -> list[AblationRun]:
    """Train every unfinished run (`jobs` side by side, `threads` torch threads each; default: the cores
    shared out), then write the tables; returns the runs trained."""
    if jobs < 1:
        raise AblationError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise AblationError(f"--threads must be >= 1, got {threads}")
    corpus_overrides = prepare_corpus(ablation)
    for run in ablation.runs:  # every run's config is validated before the first one trains
        run_config(ablation, run, corpus_overrides)
    todo = [run for run in ablation.runs if not run.finished]
    progress(
        f"{len(ablation.runs) - len(todo)} of {len(ablation.runs)} runs already finished; {len(todo)} to train"
    )
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    arguments = [(run.base, {**run.overrides, **corpus_overrides}, threads) for run in todo]
    if jobs == 1:
        for run, args in zip(todo, arguments, strict=True):
            progress(f"training {run.model} {run.variant} seed {run.seed} -> {_train_one(*args)}")
    else:
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [
                (run, pool.submit(_train_one, *args)) for run, args in zip(todo, arguments, strict=True)
            ]
            for run, future in futures:
                progress(f"trained {run.model} {run.variant} seed {run.seed} -> {future.result()}")
    write_tables(ablation)
    return todo


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


def run_values(record: dict[str, Any], source: str | Path = RESULT_FILE) -> dict[str, float]:
    """The table's numbers of one result file (`eval_results_test.json`); attention and drift keys only if
    measured (a drift value of None, e.g. no word whose image holds both textures, counts as not measured)."""
    metrics = record["metrics"]
    values = {key: float(metrics[key]) for _, key in RETRIEVAL_COLUMNS}
    attention = metrics.get("attention")
    if isinstance(attention, dict):
        values.update({key: float(attention[key]) for _, key in ATTENTION_COLUMNS})
    drift = metrics.get("attention_drift")
    if drift is not None:
        if not isinstance(drift, dict):
            raise AblationError(
                f"{source}: metrics.attention_drift: expected a mapping (summarize_drift), "
                f"found {type(drift).__name__}"
            )
        for _, key in DRIFT_COLUMNS:
            value = drift.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AblationError(
                    f"{source}: metrics.attention_drift.{key}: expected a number or null, found {value!r}"
                )
            values[key] = float(value)
    return values


def summarise(ablation: Ablation) -> dict[str, Any]:
    """Per (model, variant): mean and sample sd over the finished seeds; plus every run's own numbers."""
    runs, rows, datasets_seen = [], [], set()
    cells: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in ablation.runs:
        if not run.finished:
            continue
        result = run.model_dir / RESULT_FILE
        record = json.loads(result.read_text())
        datasets_seen.add(record.get("dataset", "?"))
        values = run_values(record, result)
        runs.append(
            {
                "model": run.model,
                "variant": run.variant,
                "seed": run.seed,
                "model_dir": str(run.model_dir),
                "values": values,
            }
        )
        cells.setdefault((run.model, run.variant), []).append(values)
    for (model, variant), seeds in cells.items():
        columns = (*RETRIEVAL_COLUMNS, *ATTENTION_COLUMNS, *DRIFT_COLUMNS)
        keys = [k for _, k in columns if all(k in v for v in seeds)]
        rows.append(
            {
                "model": model,
                "variant": variant,
                "n_seeds": len(seeds),
                "mean": {k: statistics.fmean(v[k] for v in seeds) for k in keys},
                "sd": {k: statistics.stdev(v[k] for v in seeds) if len(seeds) > 1 else None for k in keys},
            }
        )
    return {
        "ablation": ablation.source,
        "datasets": sorted(datasets_seen),
        "rows": rows,
        "paired": paired_differences(runs),
        "statistics": {
            "sign_test": "exact two-sided binomial test over the seeds; zero differences (ties) dropped",
            "bootstrap": "percentile interval of the mean paired difference, resampling the seeds",
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "bootstrap_seed": BOOTSTRAP_SEED,
            "confidence": CONFIDENCE,
            "min_seeds": MIN_SEEDS,
            "better": {key: "higher" if up else "lower" for key, up in HIGHER_IS_BETTER.items()},
        },
        "runs": runs,
    }


def sign_test_p(differences: list[float]) -> float:
    """Exact two-sided sign test of paired differences: zero differences are dropped, then the p-value of
    as few positives (or negatives) as observed under Binomial(n, 1/2); 1.0 when every difference is zero."""
    signs = [d for d in differences if d != 0]
    n = len(signs)
    if n == 0:
        return 1.0
    positive = sum(d > 0 for d in signs)
    tail = sum(math.comb(n, i) for i in range(min(positive, n - positive) + 1))
    return min(1.0, 2 * tail / 2**n)


def bootstrap_interval(
    differences: list[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `differences` (one per seed): `resamples` draws of the
    seeds with replacement from an RNG seeded with `seed`, so the interval depends only on its input."""
    if not differences:
        raise ValueError("bootstrap_interval: no differences to resample")
    values = np.asarray(differences, dtype=np.float64)  # (n_seeds,)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))  # (resamples, n_seeds)
    means = values[draws].mean(axis=1)  # (resamples,)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def verdict(key: str, interval: tuple[float, float] | None, n_seeds: int) -> str:
    """The verdict on one metric: helps / hurts when the interval excludes 0 (direction by the metric's better
    side), else no effect larger than the interval; too few seeds below MIN_SEEDS."""
    if n_seeds < MIN_SEEDS or interval is None:
        return TOO_FEW_SEEDS
    low, high = interval
    if low > 0 or high < 0:
        improved = (low > 0) == HIGHER_IS_BETTER[key]
        return "helps" if improved else "hurts"
    return NO_EFFECT


def paired_statistics(key: str, differences: list[float]) -> dict[str, Any]:
    """The paired statistics of one metric: mean, sample sd, counts of positive / negative / zero
    differences, sign-test p, bootstrap interval (None below MIN_SEEDS) and verdict."""
    n = len(differences)
    interval = bootstrap_interval(differences) if n >= MIN_SEEDS else None
    return {
        "mean": statistics.fmean(differences),
        "sd": statistics.stdev(differences) if n > 1 else None,
        "n_positive": sum(d > 0 for d in differences),
        "n_negative": sum(d < 0 for d in differences),
        "n_zero": sum(d == 0 for d in differences),
        "sign_test_p": sign_test_p(differences),
        "ci95": list(interval) if interval is not None else None,
        "verdict": verdict(key, interval, n),
    }


def paired_differences(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, variant other than base): variant minus base on each seed both finished, with
    `paired_statistics` of every metric both measured; each statistic is a dict metric -> value."""
    by_cell = {(r["model"], r["variant"], r["seed"]): r["values"] for r in runs}
    cells = dict.fromkeys((r["model"], r["variant"]) for r in runs if r["variant"] != BASELINE_VARIANT)
    paired = []
    for model, variant in cells:
        seeds = sorted(
            seed
            for m, v, seed in by_cell
            if (m, v) == (model, variant) and (model, BASELINE_VARIANT, seed) in by_cell
        )
        if not seeds:
            continue
        pairs = [(by_cell[model, variant, seed], by_cell[model, BASELINE_VARIANT, seed]) for seed in seeds]
        keys = [k for _, k in PAIRED_COLUMNS if all(k in v and k in b for v, b in pairs)]
        stats = {k: paired_statistics(k, [v[k] - b[k] for v, b in pairs]) for k in keys}
        row: dict[str, Any] = {"model": model, "variant": variant, "seeds": seeds}
        for name in ("mean", "sd", "n_positive", "n_negative", "n_zero", "sign_test_p", "ci95", "verdict"):
            row[name] = {k: s[name] for k, s in stats.items()}
        paired.append(row)
    return paired


def _cell(row: dict[str, Any], key: str, digits: int) -> str:
    if key not in row["mean"]:
        return "n/a"
    mean, sd = row["mean"][key], row["sd"][key]
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def format_markdown(summary: dict[str, Any]) -> str:
    """The markdown table of a summary: one row per (model, variant), mean ± sd over seeds."""
    columns = [*RETRIEVAL_COLUMNS, *ATTENTION_COLUMNS, *DRIFT_COLUMNS]
    lines = [
        f"Ablation `{summary['ablation']}`; data: {', '.join(summary['datasets']) or 'no finished run'}; test split.",
        "Values are mean ± sample standard deviation over the seeds (`seeds` column).",
        "",
        "| model | variant | seeds | " + " | ".join(label for label, _ in columns) + " |",
        "|" + "---|" * (3 + len(columns)),
    ]
    for row in summary["rows"]:
        cells = [_cell(row, key, 1) for _, key in RETRIEVAL_COLUMNS] + [
            _cell(row, key, 3) for _, key in (*ATTENTION_COLUMNS, *DRIFT_COLUMNS)
        ]
        lines.append(f"| {row['model']} | {row['variant']} | {row['n_seeds']} | " + " | ".join(cells) + " |")
    if summary.get("paired"):
        lines += _paired_markdown(summary["paired"])
    return "\n".join(lines) + "\n"


def _paired_cell(row: dict[str, Any], key: str) -> str:
    """`+0.021 [+0.004, +0.040] (5/5, p=0.062) helps`: mean difference, bootstrap interval (mean ± sd below
    MIN_SEEDS), seeds positive, zero differences when any, sign-test p, verdict."""
    if key not in row["mean"]:
        return "n/a"
    digits = 1 if key == "rsum" else 3
    mean, interval = row["mean"][key], row["ci95"][key]
    if interval is not None:
        spread = f"[{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"
    elif row["sd"][key] is not None:
        spread = f"± {row['sd'][key]:.{digits}f}"
    else:
        spread = ""
    counts = f"{row['n_positive'][key]}/{len(row['seeds'])}"
    if row["n_zero"][key]:
        counts += f", {row['n_zero'][key]} zero"
    head = f"{mean:+.{digits}f} {spread}".rstrip()
    return f"{head} ({counts}, p={row['sign_test_p'][key]:.2g}) {row['verdict'][key]}"


def _paired_markdown(paired: list[dict[str, Any]]) -> list[str]:
    better = ", ".join(label for label, key in PAIRED_COLUMNS if not HIGHER_IS_BETTER[key])
    lines = [
        "",
        f"Change against `{BASELINE_VARIANT}` on the same seed: mean of (variant - base) over the seeds both "
        f"finished, its {CONFIDENCE:.0%} percentile bootstrap interval ({BOOTSTRAP_RESAMPLES} resamples of the "
        f"seeds, RNG seed {BOOTSTRAP_SEED}; mean ± sample sd below {MIN_SEEDS} seeds), on how many seeds it is "
        "positive (and how many are zero), the exact two-sided sign-test p (zero differences dropped), and the "
        f"verdict: helps / hurts when the interval excludes 0, by the metric's better side (lower for {better}, "
        f"higher for the others), else {NO_EFFECT}; {TOO_FEW_SEEDS} below {MIN_SEEDS}.",
        "",
        "| model | variant | seeds | " + " | ".join(f"Δ {label}" for label, _ in PAIRED_COLUMNS) + " |",
        "|" + "---|" * (3 + len(PAIRED_COLUMNS)),
    ]
    for row in paired:
        cells = [_paired_cell(row, key) for _, key in PAIRED_COLUMNS]
        lines.append(
            f"| {row['model']} | {row['variant']} | {len(row['seeds'])} | " + " | ".join(cells) + " |"
        )
    return lines


def write_tables(ablation: Ablation) -> tuple[Path, Path]:
    """Write `ablation.md` and `ablation.json` into the output folder; returns their paths."""
    summary = summarise(ablation)
    ablation.output_dir.mkdir(parents=True, exist_ok=True)
    markdown, record = ablation.output_dir / "ablation.md", ablation.output_dir / "ablation.json"
    markdown.write_text(format_markdown(summary))
    record.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return markdown, record


def push_runs(ablation: Ablation, prefix: str, progress=print) -> list[str]:
    """Push every finished run with its card to `<org>/<name>-<model>-<variant>-seed<k>`; returns the repo ids."""
    from ..hub.push import push_model, validate_repo_id

    if prefix.count("/") != 1:
        raise AblationError(f"--push expects ORG/PREFIX (e.g. me/ccr-ablation), got {prefix!r}")
    pushed = []
    for run in ablation.runs:
        if not run.finished:
            continue
        repo_id = validate_repo_id(f"{prefix}-{slug(run.model)}-{slug(run.variant)}-seed{run.seed}")
        result = push_model(run.model_dir, repo_id)
        progress(f"pushed {run.model_dir} -> {result.repo_id} ({result.commit_id[:8]})")
        pushed.append(repo_id)
    return pushed
