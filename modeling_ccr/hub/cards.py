"""Model and dataset cards for the Hub, rendered from a run's files and never edited by hand.

A model card is rendered from what a model folder (or a Hub repo) holds: `config.json`,
`training_config.yaml`, `run_info.json`, every `eval_results_*.json` and the attention pictures. Its tables
and its `model-index` metadata (one `huggingface_hub.EvalResult` per measured number) come from the result
files, so re-rendering after a new evaluation is the only way a card changes. The Jinja templates and the
published reference numbers live in `hub_cards/` (shipped with the package: `resources.resource_dir`).

Numbers measured on the built-in synthetic corpus are labelled as such everywhere (card text, tables and
the `model-index` dataset); published Flickr30K/COCO numbers are shown only as "published, not
reproduced here", beside our measurements only when those were made on the same dataset and protocol.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from ..data.corpora import SYNTHETIC_SOURCE
from ..errors import UserError
from ..resources import resource_dir

MODEL_CARD_TEMPLATE = "model_card.md"
DATASET_CARD_TEMPLATE = "dataset_card.md"
REFERENCES_FILE = "reference_results.yaml"

# eval_results_test.json (one model) and ensemble_eval_results_test.json (several, mean similarity).
RESULT_FILE = re.compile(r"^(ensemble_)?eval_results_[A-Za-z0-9._-]+\.json$")

SYNTHETIC_NAME = "built-in synthetic grounded corpus"
SYNTHETIC_TYPE = "modeling-ccr-synthetic"
RETRIEVAL_TASK = ("image-text-retrieval", "Image-text retrieval")
ATTENTION_TASK = (
    "attention-grounding",
    "Attention grounding (attention precision / recall / F1 vs phrase boxes)",
)
# (key in the result JSON, model-index metric type, pretty name)
RETRIEVAL_METRICS = (
    ("i2t_r1", "recall@1_i2t", "image-to-text R@1"),
    ("i2t_r5", "recall@5_i2t", "image-to-text R@5"),
    ("i2t_r10", "recall@10_i2t", "image-to-text R@10"),
    ("t2i_r1", "recall@1_t2i", "text-to-image R@1"),
    ("t2i_r5", "recall@5_t2i", "text-to-image R@5"),
    ("t2i_r10", "recall@10_t2i", "text-to-image R@10"),
    ("rsum", "rsum", "rSum"),
)
ATTENTION_METRICS = (
    ("attention_precision", "attention_precision", "attention precision"),
    ("attention_recall", "attention_recall", "attention recall"),
    ("attention_f1", "attention_f1", "attention F1"),
)
# ECCV Caption / CxC scores under `metrics["eccv"]` (`ccr evaluate --protocol eccv`, `metrics/eccv.py`).
ECCV_METRICS = tuple(
    (f"{prefix}_{direction}_{name}", f"{prefix}_{name}_{direction}", f"{label} ({direction})")
    for prefix, name, label in (
        ("eccv", "map_at_r", "ECCV Caption mAP@R"),
        ("eccv", "rprecision", "ECCV Caption R-Precision"),
        ("eccv", "r1", "ECCV Caption R@1"),
        ("cxc", "r1", "CxC R@1"),
        ("cxc", "r5", "CxC R@5"),
        ("cxc", "r10", "CxC R@10"),
    )
    for direction in ("i2t", "t2i")
)
# config.json keys that describe the file, not the model.
CONFIG_BOOKKEEPING = {"architectures", "auto_map", "model_type", "transformers_version", "dtype", "use_cache"}
CONSTRAINT_FIELDS = {
    "ccr_weight": "weight of Contrastive Content Re-sourcing (0 = off)",
    "ccr_margin": "CCR margin gamma_r",
    "ccs_weight": "weight of Contrastive Content Swapping (0 = off)",
    "ccs_margin": "CCS margin gamma_s",
    "ccs_mode": "what CCS swaps: the attended keys, the query, or the whole image",
    "constraint_attended_set": "which keys count as attended: a >= 1/n (inverse_n) or the top-k weights",
    "constraint_top_k": "k of the top_k attended-set rule",
    "constraint_skip_token_ids": "token ids never used as constraint queries (None: every word)",
}
SCHEMA_COLUMNS = {
    "image_id": "image identifier, unique within a split",
    "features": "region features `(n_regions, feature_dim)`",
    "boxes": "pixel boxes `(x1, y1, x2, y2)` of the regions behind `features`, row for row",
    "image_size": "`(width, height)` in pixels",
    "captions": "the image's captions",
    "phrases": "per caption: grounded phrases (entity id, text, type, word span, gold boxes)",
}


class CardError(UserError, ValueError):
    """A card cannot be rendered; the message names the file and field."""


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class DatasetLabel:
    """How a card names a dataset. `type` is the model-index dataset identifier."""

    name: str
    type: str
    synthetic: bool


def dataset_label(recorded: str) -> DatasetLabel:
    """Name a dataset as recorded by a run: `data.source` ("synthetic" or a path) or the name a result
    JSON carries ("built-in synthetic corpus (seed 0)" or the path of a saved DatasetDict)."""
    text = str(recorded).strip()
    if text == SYNTHETIC_SOURCE or text.startswith("built-in synthetic"):
        seed = re.search(r"\(seed \d+\)", text)
        return DatasetLabel(f"{SYNTHETIC_NAME}{' ' + seed.group(0) if seed else ''}", SYNTHETIC_TYPE, True)
    return DatasetLabel(text, Path(text.rstrip("/")).name or text, False)


@dataclass
class ResultFile:
    """One evaluation JSON (`artifacts.records.results_record`): models, dataset, split, metrics."""

    filename: str
    record: dict[str, Any]

    def __post_init__(self) -> None:
        for key in ("dataset", "split", "metrics"):
            if key not in self.record:
                raise CardError(f"{self.filename}: missing field {key!r} (not an evaluation JSON of ccr?)")
        missing = [key for key, _, _ in RETRIEVAL_METRICS if key not in self.metrics]
        if missing:
            raise CardError(f"{self.filename}: metrics has no {missing}")

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    @property
    def dataset(self) -> DatasetLabel:
        return dataset_label(self.record["dataset"])

    @property
    def split(self) -> str:
        return str(self.record["split"])

    @property
    def protocol(self) -> str:
        return str(self.metrics.get("protocol", "full"))

    @property
    def models(self) -> list[str]:
        return [str(m) for m in self.record.get("models", [])]

    @property
    def ensemble(self) -> bool:
        return self.filename.startswith("ensemble_") or int(self.metrics.get("ensemble_size", 1)) > 1

    @property
    def attention(self) -> list[dict[str, Any]]:
        """Attention metrics, one dict per model (`ccr evaluate` writes a list, a training run one dict)."""
        attention = self.metrics.get("attention")
        if attention is None:
            return []
        return list(attention) if isinstance(attention, list) else [attention]


@dataclass
class CardSources:
    """Everything a model card is rendered from: the files of a model folder or of a Hub repo."""

    config: dict[str, Any]
    training_config: dict[str, Any] | None = None
    run_info: dict[str, Any] | None = None
    results: list[ResultFile] = field(default_factory=list)
    pictures: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # conversion.json of a model converted from an original SCAN/BFAN/SGRAF checkpoint (provenance).
    conversion: dict[str, Any] | None = None

    @classmethod
    def from_texts(cls, texts: dict[str, str], files: list[str]) -> CardSources:
        """From the text of `config.json`, `training_config.yaml`, `run_info.json` and the result JSONs
        (keyed by file name; only config.json is required), and the names of all the repo's files."""
        if "config.json" not in texts:
            raise CardError("config.json is missing: a model card needs the model's config")
        config = _parse(texts["config.json"], "config.json", json.loads)
        training = texts.get("training_config.yaml")
        run_info = texts.get("run_info.json")
        conversion = texts.get("conversion.json")
        results = [
            ResultFile(name, _parse(text, name, json.loads))
            for name, text in sorted(texts.items())
            if RESULT_FILE.match(name)
        ]
        return cls(
            config=config,
            training_config=_parse(training, "training_config.yaml", yaml.safe_load) if training else None,
            run_info=_parse(run_info, "run_info.json", json.loads) if run_info else None,
            results=results,
            pictures=sorted(f for f in files if f.lower().endswith(".png") and "/" not in f),
            files=sorted(files),
            conversion=_parse(conversion, "conversion.json", json.loads) if conversion else None,
        )


def _parse(text: str, name: str, parser) -> Any:
    try:
        value = parser(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise CardError(f"{name}: cannot be parsed: {err}") from err
    if not isinstance(value, dict):
        raise CardError(f"{name}: expected a mapping at the top level, found {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------- model-index
def eval_results(results: list[ResultFile]) -> list[EvalResult]:
    """One `EvalResult` per measured number of every single-model result file (ensembles are left out:
    they are not this model's numbers). Values are the exact floats of the JSON files."""
    entries = []
    for result in results:
        if result.ensemble:
            continue
        dataset = result.dataset
        common = {
            "dataset_type": dataset.type,
            "dataset_name": dataset.name,
            "dataset_split": result.split,
        }
        retrieval_args = {
            "protocol": result.protocol,
            "n_images": result.metrics.get("n_images"),
            "n_captions": result.metrics.get("n_captions"),
            "results_file": result.filename,
        }
        for key, metric_type, name in RETRIEVAL_METRICS:
            entries.append(
                EvalResult(
                    task_type=RETRIEVAL_TASK[0],
                    task_name=RETRIEVAL_TASK[1],
                    metric_type=metric_type,
                    metric_name=name,
                    metric_value=result.metrics[key],
                    metric_config=result.protocol,
                    metric_args=retrieval_args,
                    **common,
                )
            )
        entries.extend(eccv_eval_results(result, common))
        for attention in result.attention[:1]:
            rule = attention.get("attended_set_rule", {})
            attention_args = {
                **rule,
                "direction": attention.get("direction"),
                "n_words": attention.get("n_words"),
                "results_file": result.filename,
            }
            for key, metric_type, name in ATTENTION_METRICS:
                entries.append(
                    EvalResult(
                        task_type=ATTENTION_TASK[0],
                        task_name=ATTENTION_TASK[1],
                        metric_type=metric_type,
                        metric_name=name,
                        metric_value=attention[key],
                        metric_config=rule_label(rule),
                        metric_args=attention_args,
                        **common,
                    )
                )
    return entries


def eccv_eval_results(result: ResultFile, common: dict[str, Any]) -> list[EvalResult]:
    """The ECCV Caption / CxC numbers of a result file; a subset of the COCO 5K test is labelled as one."""
    eccv = result.metrics.get("eccv")
    if not eccv:
        return []
    config = "eccv_caption_subset" if eccv.get("subset") else "eccv_caption"
    args = {"package": eccv.get("package"), "subset": eccv.get("subset"), "results_file": result.filename}
    return [
        EvalResult(
            task_type=RETRIEVAL_TASK[0],
            task_name=RETRIEVAL_TASK[1],
            metric_type=metric_type,
            metric_name=name,
            metric_value=eccv[key],
            metric_config=config,
            metric_args=args,
            **common,
        )
        for key, metric_type, name in ECCV_METRICS
    ]


def rule_label(rule: dict[str, Any]) -> str:
    """`{"rule": "inverse_n", "value": 0, "iou_threshold": 0.5}` -> "inverse_n, iou>=0.5"."""
    name = rule.get("rule", "inverse_n")
    value = rule.get("value")
    shown = f"{name}={value:g}" if name != "inverse_n" and value is not None else name
    return f"{shown}, iou>={rule.get('iou_threshold', 0.5):g}"


def describe_rule(rule: dict[str, Any]) -> str:
    """The attended-set rule in words, for the results tables."""
    name, value = rule.get("rule", "inverse_n"), rule.get("value", 0)
    attended = {
        "inverse_n": "weight a >= 1/n (n = number of keys)",
        "threshold": f"weight a >= {value:g}",
        "top_k": f"the {int(value)} largest weights",
    }.get(name, name)
    return f"attended: {attended}; gold: IoU >= {rule.get('iou_threshold', 0.5):g} with a phrase box"


# ---------------------------------------------------------------------------- references
def load_references(path: Path | None = None) -> dict[str, Any]:
    path = path or resource_dir("hub_cards") / REFERENCES_FILE
    if not path.is_file():
        raise CardError(f"reference numbers not found: {path}")
    return yaml.safe_load(path.read_text())


def reference_rows(
    references: dict[str, Any], backbones: list[str], dataset_key: str | None = None
) -> list[dict[str, Any]]:
    """Published numbers of the given backbones (all datasets, or one), each once, with rSum computed here."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for backbone in backbones:
        published = references.get("backbones", {}).get(backbone, {}).get("published", {})
        for key, entries in published.items():
            if dataset_key is not None and key != dataset_key:
                continue
            for entry in entries:
                if (entry["model"], key) in seen:
                    continue
                seen.add((entry["model"], key))
                rsum = round(sum(entry["i2t"]) + sum(entry["t2i"]), 1)
                rows.append({**entry, "dataset": references["datasets"][key]["name"], "rsum": rsum})
    return rows


def reference_dataset_key(references: dict[str, Any], result: ResultFile) -> str | None:
    """The reference dataset a result was measured on (by name and protocol), or None (e.g. synthetic)."""
    label = result.dataset
    if label.synthetic:
        return None
    name = label.name.lower()
    for key, dataset in references.get("datasets", {}).items():
        if dataset.get("protocol") == result.protocol and any(m in name for m in dataset.get("match", [])):
            return key
    return None


# ---------------------------------------------------------------------------- rendering
def backbone_of(config: dict[str, Any], training_config: dict[str, Any] | None) -> str:
    """The backbone name of run configs ("scan", "ensemble"), from training_config.yaml or config.json."""
    if training_config and isinstance(training_config.get("model"), dict):
        backbone = training_config["model"].get("backbone")
        if backbone:
            return str(backbone)
    return str(config.get("model_type", "unknown")).removeprefix("xmatch_")


def member_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The single models a checkpoint holds: an ensemble's `members` (each with its model_type), or itself."""
    members = config.get("members")
    if isinstance(members, list) and members and all(isinstance(m, dict) for m in members):
        return members
    return [config]


def _member_view(member: dict[str, Any], references: dict[str, Any]) -> dict[str, Any]:
    """One model's backbone: its run-config name, the card's name for it, and a short label."""
    backbone = str(member.get("model_type", "unknown")).removeprefix("xmatch_")
    known = references.get("backbones", {}).get(backbone, {})
    name = known.get("name", backbone)
    options = [str(member[k]) for k in ("direction", "aggregation") if k in member]
    return {
        "backbone": backbone,
        "name": name,
        "label": " ".join([name.split(" (")[0], "-".join(options)]).strip(),
        "attention": bool(known.get("attention", True)),
    }


def _weight(member: dict[str, Any], name: str) -> float:
    return float(member.get(f"{name}_weight") or 0)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("hub_cards"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _result_view(result: ResultFile, references: dict[str, Any], backbones: list[str]) -> dict[str, Any]:
    key = reference_dataset_key(references, result)
    metrics = result.metrics
    return {
        "file": result.filename,
        "dataset": result.dataset,
        "split": result.split,
        "protocol": result.protocol,
        "n_images": metrics.get("n_images"),
        "n_captions": metrics.get("n_captions"),
        "n_folds": metrics.get("n_folds"),
        "metrics": metrics,
        "models": result.models,
        "ensemble": result.ensemble,
        "attention": [
            {**a, "rule_text": describe_rule(a.get("attended_set_rule", {})), "model": m}
            for a, m in zip(result.attention, result.models or [""] * len(result.attention), strict=False)
        ],
        "references": reference_rows(references, backbones, key) if key else [],
    }


def _training_view(sources: CardSources) -> dict[str, Any]:
    """Data and hyperparameters of the run as recorded: the keys the run configuration set (unset keys
    took the library's defaults at the recorded version), seed, steps and timing from run_info.json."""
    run = sources.training_config or {}
    info = sources.run_info or {}
    data = run.get("data", {}) if isinstance(run.get("data"), dict) else {}
    source = str(data.get("source", info.get("dataset", "not recorded")))
    explicit = run.get("training", {}) if isinstance(run.get("training"), dict) else {}
    log = [entry for entry in info.get("log_history", []) if isinstance(entry, dict)]
    synthetic_options = data.get("synthetic") if isinstance(data.get("synthetic"), dict) else {}
    return {
        "recorded": bool(run),
        "data_source": source,
        "data_label": dataset_label(info.get("dataset") or source),
        "data": {k: v for k, v in data.items() if k != "source"},
        "corpus_options": (
            ", ".join(f"`{k}: {v}`" for k, v in synthetic_options.items())
            if synthetic_options
            else "the defaults of `SyntheticCorpusConfig`"
        ),
        "hyperparameters": list(explicit.items()),
        "run_version": info.get("versions", {}).get("modeling_ccr"),
        "seed": run.get("seed", info.get("seed")),
        "world_size": info.get("world_size"),
        "train_seconds": info.get("train_seconds"),
        "steps": log[-1].get("step") if log else None,
        "epochs": log[-1].get("epoch") if log else None,
        "best_validation_rsum": info.get("best_validation_rsum"),
        "versions": info.get("versions", {}),
        "config_file": info.get("config_file"),
    }


def model_card_data(sources: CardSources, repo_id: str, license: str | None = None) -> ModelCardData:
    """The card's YAML metadata: library, tags, license and the `model-index` of every measured number."""
    backbone = backbone_of(sources.config, sources.training_config)
    members = member_configs(sources.config)
    synthetic = any(r.dataset.synthetic for r in sources.results) or (
        (sources.training_config or {}).get("data", {}).get("source") == SYNTHETIC_SOURCE
    )
    views = [_member_view(m, load_references()) for m in members]
    tags = ["modeling-ccr", "image-text-matching", backbone, *(v["backbone"] for v in views)]
    tags += ["cross-attention"] if any(v["attention"] for v in views) else []
    tags += [name for name in ("ccr", "ccs") if any(_weight(m, name) > 0 for m in members)]
    if synthetic:
        tags.append("synthetic-data")
    results = eval_results(sources.results)
    return ModelCardData(
        library_name="transformers",
        license=license,
        tags=tags,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )


def render_model_card(sources: CardSources, repo_id: str, license: str | None = None) -> ModelCard:
    """The README.md of a model repo: what the model is, how to load it, training, results, references,
    limitations and provenance. Every number comes from `sources`."""
    if not sources.results:
        raise CardError(
            "no evaluation results (eval_results_*.json): evaluate the model first (`ccr evaluate MODEL_DIR`)"
        )
    references = load_references()
    backbone = backbone_of(sources.config, sources.training_config)
    card_data = model_card_data(sources, repo_id, license)
    config = sources.config
    members = member_configs(config)
    ensemble = members[0] is not config
    member_views = [_member_view(m, references) for m in members]
    backbones = list(dict.fromkeys(m["backbone"] for m in member_views))
    prefix = [f"members[{i}]." if ensemble else "" for i in range(len(members))]
    results = [_result_view(r, references, backbones) for r in sources.results]
    training = _training_view(sources)
    view = {
        "repo_id": repo_id,
        "model_name": repo_id.split("/")[-1],
        "backbone": backbone,
        "ensemble": ensemble,
        "members": member_views,
        "backbone_name": (
            "Ensemble of " + " + ".join(m["label"] for m in member_views)
            if ensemble
            else member_views[0]["name"]
        ),
        "cross_attention": any(m["attention"] for m in member_views),
        "model_type": config.get("model_type", "unknown"),
        "architectures": ", ".join(config.get("architectures") or ["(not recorded)"]),
        "config": config,
        "feature_dim": config.get("feature_dim", members[0].get("feature_dim", "feature_dim")),
        "model_fields": [
            (f"{prefix[i]}{k}", v)
            for i, member in enumerate(members)
            for k, v in sorted(member.items())
            if k not in CONFIG_BOOKKEEPING
            and k not in CONSTRAINT_FIELDS
            and not (ensemble and k == "model_type")
        ],
        "constraints": [
            (f"{prefix[i]}{k}", member[k], doc)
            for i, member in enumerate(members)
            for k, doc in CONSTRAINT_FIELDS.items()
            if k in member
        ],
        "ccr_on": any(_weight(m, "ccr") > 0 for m in members),
        "ccs_on": any(_weight(m, "ccs") > 0 for m in members),
        "code_files": [f for f in sources.files if f.endswith(".py") and "/" not in f],
        "training": training,
        "single_results": [r for r in results if not r["ensemble"]],
        "ensemble_results": [r for r in results if r["ensemble"]],
        "synthetic": training["data_label"].synthetic or any(r.dataset.synthetic for r in sources.results),
        "synthetic_results": any(r.dataset.synthetic for r in sources.results),
        "references": reference_rows(references, backbones),
        "pictures": sources.pictures,
        "files": sources.files,
        "result_files": [r.filename for r in sources.results],
        "conversion": sources.conversion,
    }
    body = _environment().get_template(MODEL_CARD_TEMPLATE).render(card=view, card_data=card_data.to_yaml())
    return ModelCard(body)


# ---------------------------------------------------------------------------- dataset cards
def render_dataset_card(
    repo_id: str,
    features: dict[str, Any],
    splits: list[dict[str, Any]],
    license: str,
    provenance: dict[str, Any],
    card_data: DatasetCardData,
    pretty_name: str | None = None,
) -> DatasetCard:
    """The README.md of a dataset repo: schema, split sizes, how to load it, provenance and license.

    features: column -> `datasets` feature; splits: one dict per split with `name`, `images`,
    `captions`, `phrases` (None without phrases) and `parquet_files`; card_data: metadata that already
    holds `configs` and `dataset_info` (so `datasets.load_dataset(repo_id)` finds the splits)."""
    view = {
        "repo_id": repo_id,
        "pretty_name": pretty_name or card_data.get("pretty_name") or repo_id.split("/")[-1],
        "license": license,
        "columns": [(name, str(feature), SCHEMA_COLUMNS.get(name, "")) for name, feature in features.items()],
        "splits": splits,
        "provenance": provenance,
    }
    body = _environment().get_template(DATASET_CARD_TEMPLATE).render(card=view, card_data=card_data.to_yaml())
    return DatasetCard(body)
