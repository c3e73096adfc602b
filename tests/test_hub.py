"""Pushing to and loading from the Hub, end to end, against a local fake Hub (tests/fake_hub.py).

The fake Hub runs in this process; the clients (`ccr push`, `AutoModel.from_pretrained`,
`datasets.load_dataset`) run in a worker process (tests/hub_client.py) whose environment points them at
it, because huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import and this process is offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from fake_hub import FakeHub
from hub_client import score_captions
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, TrainingArguments

from modeling_ccr import __version__
from modeling_ccr.artifacts.integrity import weights_record
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.hub.cards import dataset_label, render_model_card
from modeling_ccr.hub.push import (
    PushError,
    model_card_for_folder,
    push_model,
    select_model_files,
    validate_repo_id,
)
from modeling_ccr.training.experiment import parse_experiment_config, run_experiment

TESTS = Path(__file__).parent
TINY_CORPUS = {"train_images": 64, "validation_images": 12, "test_images": 12, "feature_dim": 16}
CAPTIONS = ["a red dog on the grass", "a blue boat in the water", "two men and a ball"]


def tiny_run(tmp_path: Path) -> dict:
    """A few optimizer steps of SCAN with both constraints on a tiny built-in corpus (seconds)."""
    return {
        "seed": 3,
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "synthetic", "synthetic": dict(TINY_CORPUS), "min_word_count": 1},
        "model": {"backbone": "scan", "embed_dim": 8, "word_dim": 8, "ccr_weight": 0.1, "ccs_weight": 0.1},
        "training": {
            "max_steps": 2,
            "per_device_train_batch_size": 32,
            "eval_strategy": "no",
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "logging_steps": 2,
            "lr_decay_epochs": 1,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
        },
    }


class HubClient:
    """A worker process (tests/hub_client.py) that talks to the fake Hub; `call` runs one request."""

    def __init__(self, hub_url: str, home: Path, log: Path, without_package: bool = False):
        env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
        env.update(
            HF_ENDPOINT=hub_url,
            HF_TOKEN="hf_fake_write_token",
            HF_HUB_DISABLE_XET="1",
            HF_HOME=str(home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_DATASETS_DISABLE_PROGRESS_BARS="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])),
        )
        command = [sys.executable, str(TESTS / "hub_client.py")]
        command += ["--without-package"] if without_package else []
        self.log = log
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            env=env,
            cwd=home,
        )

    def call(self, op: str, **arguments) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the hub client died; its log:\n{self.log.read_text()[-4000:]}")
        answer = json.loads(line)
        assert answer.pop("ok"), f"{op} failed: {answer['error']}\n{answer['traceback']}"
        return answer

    def ccr(self, *argv: str | Path) -> dict:
        return self.call("cli", argv=[str(a) for a in argv])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = FakeHub(tmp_path_factory.mktemp("fake_hub"))
    hub.start()
    yield hub
    hub.stop()
    assert not hub.server_errors, hub.server_errors


@pytest.fixture(scope="module")
def client(hub, tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    worker = HubClient(hub.url, home, home / "client.log")
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A trained and evaluated model folder (weights, config with auto_map, code, tokenizer, results)."""
    return run_experiment(parse_experiment_config(tiny_run(tmp_path_factory.mktemp("trained"))))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, trained) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """Test-split region features and three captions, saved for the client to score."""
    corpus = build_synthetic_corpus(SyntheticCorpusConfig(seed=3, **TINY_CORPUS))
    rows = corpus["test"].with_format("torch")[:4]
    features = torch.stack(list(rows["features"])) if isinstance(rows["features"], list) else rows["features"]
    region_mask = torch.ones(features.shape[:2], dtype=torch.bool)
    path = tmp_path_factory.mktemp("inputs") / "inputs.safetensors"
    save_file({"features": features.contiguous(), "region_mask": region_mask}, str(path))
    Path(f"{path}.json").write_text(json.dumps(CAPTIONS))
    return path, features, region_mask


def local_scores(model_dir: Path, features: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
    model = AutoModel.from_pretrained(model_dir).eval()
    return score_captions(model, AutoTokenizer.from_pretrained(model_dir), features, region_mask, CAPTIONS)


def perturbed_copy(model_dir: Path, target: Path, shift: float) -> Path:
    """The same model folder with every weight shifted: a different model.safetensors."""
    shutil.copytree(model_dir, target)
    weights = load_file(str(target / "model.safetensors"))
    save_file({k: v + shift for k, v in weights.items()}, str(target / "model.safetensors"))
    # Another trained model: its run info and results record its own weights, as `ccr train` does.
    record = weights_record(target)
    for path in [target / "run_info.json", *target.glob("eval_results_*.json")]:
        info = json.loads(path.read_text())
        info["weights"] = record if path.name == "run_info.json" else {m: record for m in info["models"]}
        path.write_text(json.dumps(info))
    return target


def card_of(hub: FakeHub, repo_id: str, revision: str = "main") -> ModelCard:
    return ModelCard(hub.read(repo_id, "README.md", revision=revision).decode())


@pytest.fixture(scope="module")
def pushed(hub, client, trained) -> dict:
    """`ccr push` of the trained folder to org/scan-ccr-demo."""
    answer = client.ccr("push", trained, "org/scan-ccr-demo", "--license", "apache-2.0")
    assert answer["rc"] == 0, answer["stderr"]
    return {**answer, "run_name": f"{trained.parent.name}/{trained.name}"}


# ---------------------------------------------------------------------------- ccr push
def test_a_push_is_one_commit_holding_weights_code_tokenizer_results_and_card(hub, pushed, trained):
    history = hub.history("org/scan-ccr-demo")
    assert len(history) == 2, "the Hub's initial commit, then exactly one commit for the push"
    assert history[0] in pushed["stdout"]
    files = hub.list_files("org/scan-ccr-demo")
    for name in (
        "model.safetensors",
        "config.json",
        "configuration_scan.py",
        "modeling_scan.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "eval_results_test.json",
        "training_config.yaml",
        "run_info.json",
        "README.md",
    ):
        assert name in files, name
    assert "training_args.bin" not in files, "the Trainer's pickle must never be uploaded"
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert hub.read("org/scan-ccr-demo", "model.safetensors") == (trained / "model.safetensors").read_bytes()
    config = json.loads(hub.read("org/scan-ccr-demo", "config.json"))
    assert config["auto_map"]["AutoModel"] == "modeling_scan.ScanModel"
    card = hub.read("org/scan-ccr-demo", "README.md", revision=history[0]).decode()
    assert card == str(model_card_for_folder(trained, "org/scan-ccr-demo", "apache-2.0")), "ccr card shows it"
    assert not hub.is_private("org/scan-ccr-demo")


def test_commit_history_seen_by_the_client_matches_the_repo(hub, client, pushed):
    answer = client.call("commits", repo_id="org/scan-ccr-demo")
    assert answer["ids"] == hub.history("org/scan-ccr-demo")
    assert answer["titles"][0] == f"Push {pushed['run_name']} with its card (modeling-ccr {__version__})"


def test_the_pushed_model_scores_like_the_local_one_with_the_package_imported(
    client, pushed, trained, inputs, tmp_path
):
    path, features, region_mask = inputs
    answer = client.call(
        "scores", repo_id="org/scan-ccr-demo", inputs=str(path), output=str(tmp_path / "s.safetensors")
    )
    assert answer["module"].startswith("modeling_ccr"), answer
    remote = load_file(str(tmp_path / "s.safetensors"))["scores"]
    torch.testing.assert_close(remote, local_scores(trained, features, region_mask))


def test_the_pushed_model_loads_with_trust_remote_code_where_the_package_is_absent(
    hub, pushed, trained, inputs, tmp_path
):
    path, features, region_mask = inputs
    home = tmp_path / "hf_home_without_package"
    home.mkdir()
    worker = HubClient(hub.url, home, home / "client.log", without_package=True)
    try:
        output = tmp_path / "remote.safetensors"
        answer = worker.call(
            "scores",
            repo_id="org/scan-ccr-demo",
            inputs=str(path),
            output=str(output),
            trust_remote_code=True,
        )
    finally:
        worker.close()
    assert not answer["module"].startswith("modeling_ccr"), answer
    torch.testing.assert_close(load_file(str(output))["scores"], local_scores(trained, features, region_mask))


def test_the_card_model_index_parses_back_to_exactly_the_measured_numbers(hub, pushed, trained, tmp_path):
    record = json.loads((trained / "eval_results_test.json").read_text())
    card = card_of(hub, "org/scan-ccr-demo")
    parsed = {(r.task_type, r.metric_type, r.dataset_split): r.metric_value for r in card.data.eval_results}
    metrics = record["metrics"]
    expected = {
        ("image-text-retrieval", "recall@1_i2t", "test"): metrics["i2t_r1"],
        ("image-text-retrieval", "recall@5_i2t", "test"): metrics["i2t_r5"],
        ("image-text-retrieval", "recall@10_i2t", "test"): metrics["i2t_r10"],
        ("image-text-retrieval", "recall@1_t2i", "test"): metrics["t2i_r1"],
        ("image-text-retrieval", "recall@5_t2i", "test"): metrics["t2i_r5"],
        ("image-text-retrieval", "recall@10_t2i", "test"): metrics["t2i_r10"],
        ("image-text-retrieval", "rsum", "test"): metrics["rsum"],
        ("attention-grounding", "attention_precision", "test"): metrics["attention"]["attention_precision"],
        ("attention-grounding", "attention_recall", "test"): metrics["attention"]["attention_recall"],
        ("attention-grounding", "attention_f1", "test"): metrics["attention"]["attention_f1"],
    }
    assert parsed == expected  # exact floats, not rounded
    assert all(r.dataset_type == "modeling-ccr-synthetic" for r in card.data.eval_results)
    attention = [r for r in card.data.eval_results if r.task_type == "attention-grounding"]
    assert (
        attention[0].metric_args["rule"] == "inverse_n" and attention[0].metric_args["iou_threshold"] == 0.5
    )
    assert card.data.license == "apache-2.0"
    (tmp_path / "README.md").write_bytes(hub.read("org/scan-ccr-demo", "README.md"))
    index = metadata_load(tmp_path / "README.md")["model-index"]
    assert index[0]["name"] == "scan-ccr-demo" and len(index[0]["results"]) == 2


def test_the_card_labels_synthetic_numbers_and_shows_published_ones_as_not_reproduced(hub, pushed):
    text = card_of(hub, "org/scan-ccr-demo").text
    assert "built-in synthetic grounded corpus (seed 3)" in text
    assert "not Flickr30K or COCO" in text
    assert "published, not reproduced here" in text
    assert "trust_remote_code=True" in text and "only when modeling-ccr is not installed" in text
    assert 'AutoModel.from_pretrained("org/scan-ccr-demo")' in text
    for option in (
        "ccr_weight",
        "ccs_weight",
        "ccr_margin",
        "ccs_margin",
        "ccs_mode",
        "constraint_attended_set",
    ):
        assert f"`{option}`" in text, option
    published_table = text.split("## Published reference numbers")[1]
    assert "67.4" in published_table and "465.0" in published_table  # SCAN Flickr30K, rSum computed
    results_section = text.split("## Results")[1].split("## Published")[0]
    assert "67.4" not in results_section, "published numbers never sit among the synthetic results"


# ---------------------------------------------------------------------------- ccr evaluate --push
def test_evaluate_push_adds_results_in_one_commit_and_rerenders_the_card(
    hub, client, pushed, trained, tmp_path
):
    before = hub.history("org/scan-ccr-demo")
    output = tmp_path / "eval_results_validation.json"
    answer = client.ccr(
        "evaluate", trained, "--split", "validation", "--output", output, "--push", "org/scan-ccr-demo"
    )
    assert answer["rc"] == 0, answer["stderr"]
    after = hub.history("org/scan-ccr-demo")
    assert after[1:] == before, "exactly one new commit"
    assert "eval_results_validation.json" in hub.list_files("org/scan-ccr-demo")
    card = card_of(hub, "org/scan-ccr-demo")
    values = {(r.metric_type, r.dataset_split): r.metric_value for r in card.data.eval_results}
    measured = json.loads(output.read_text())["metrics"]
    assert values[("rsum", "validation")] == measured["rsum"]
    assert (
        values[("rsum", "test")]
        == json.loads((trained / "eval_results_test.json").read_text())["metrics"]["rsum"]
    )
    assert card.data.license == "apache-2.0", "the license of the pushed card survives a re-render"
    assert "eval_results_validation.json" in card.text


def test_evaluate_push_updates_a_result_file_and_its_numbers(hub, client, pushed, trained, tmp_path):
    output = tmp_path / "eval_results_validation.json"
    before = hub.history("org/scan-ccr-demo")
    answer = client.ccr(
        "evaluate", trained, "--split", "test", "--attention", "--attended-rule", "top_k", "--attended-value", "2",
        "--entities", trained.parent / "flickr30k_entities_test", "--output", output, "--push", "org/scan-ccr-demo",
    )  # fmt: skip
    assert answer["rc"] == 0, answer["stderr"]
    assert len(hub.history("org/scan-ccr-demo")) == len(before) + 1
    pushed_record = json.loads(hub.read("org/scan-ccr-demo", "eval_results_validation.json"))
    assert pushed_record == json.loads(output.read_text())
    card = card_of(hub, "org/scan-ccr-demo")
    rules = {r.metric_config for r in card.data.eval_results if r.task_type == "attention-grounding"}
    assert rules == {"inverse_n, iou>=0.5", "top_k=2, iou>=0.5"}
    assert "the 2 largest weights" in card.text


def test_evaluate_push_refuses_results_of_other_weights(hub, client, pushed, trained, tmp_path):
    other = perturbed_copy(trained, tmp_path / "other", shift=0.01)
    before = hub.history("org/scan-ccr-demo")
    answer = client.ccr(
        "evaluate", other, "--output", tmp_path / "eval_results_test.json", "--push", "org/scan-ccr-demo"
    )
    assert answer["rc"] == 2
    assert "are not org/scan-ccr-demo's model.safetensors" in answer["stderr"]
    assert hub.history("org/scan-ccr-demo") == before


# ---------------------------------------------------------------------------- revisions and failures
def test_revision_pins_what_is_loaded(hub, client, trained, inputs, tmp_path):
    path, features, region_mask = inputs
    second = perturbed_copy(trained, tmp_path / "second", shift=0.05)
    assert client.ccr("push", trained, "org/scan-revisions")["rc"] == 0
    first_commit = hub.head("org/scan-revisions")
    assert client.ccr("push", second, "org/scan-revisions")["rc"] == 0
    assert hub.head("org/scan-revisions") != first_commit

    def hub_scores(revision):
        output = tmp_path / f"{revision}.safetensors"
        client.call(
            "scores", repo_id="org/scan-revisions", inputs=str(path), output=str(output), revision=revision
        )
        return load_file(str(output))["scores"]

    torch.testing.assert_close(hub_scores(first_commit), local_scores(trained, features, region_mask))
    torch.testing.assert_close(hub_scores("main"), local_scores(second, features, region_mask))


def test_a_push_mirrors_the_folder_deleting_managed_files_it_no_longer_has(hub, client, trained, tmp_path):
    first = tmp_path / "first"
    shutil.copytree(trained, first)
    shutil.copy(first / "eval_results_test.json", first / "eval_results_extra.json")
    assert client.ccr("push", first, "org/scan-mirror", "--license", "mit")["rc"] == 0
    assert "eval_results_extra.json" in hub.list_files("org/scan-mirror")
    (first / "eval_results_extra.json").unlink()
    answer = client.ccr("push", first, "org/scan-mirror")
    assert "deleted (no longer in the folder): eval_results_extra.json" in answer["stdout"]
    assert "eval_results_extra.json" not in hub.list_files("org/scan-mirror")
    assert "eval_results_extra.json" not in hub.read("org/scan-mirror", "README.md").decode()
    assert card_of(hub, "org/scan-mirror").data.license == "mit", "a push without --license keeps the license"
    head = hub.head("org/scan-mirror")
    answer = client.ccr("push", first, "org/scan-mirror")
    assert answer["rc"] == 0 and answer["stdout"].startswith("Nothing to push")
    assert hub.head("org/scan-mirror") == head, "pushing the same folder again makes no commit"


def test_push_to_a_new_branch_creates_it_and_leaves_main_alone(hub, client, trained, tmp_path):
    assert client.ccr("push", trained, "org/scan-branches", "--private")["rc"] == 0
    assert hub.is_private("org/scan-branches")
    main = hub.head("org/scan-branches")
    second = perturbed_copy(trained, tmp_path / "second", shift=0.02)
    answer = client.ccr(
        "push", second, "org/scan-branches", "--revision", "v2", "--commit-message", "weights v2"
    )
    assert answer["rc"] == 0, answer["stderr"]
    assert hub.head("org/scan-branches") == main
    v2 = hub.head("org/scan-branches", branch="v2")
    assert hub.history("org/scan-branches", revision="v2")[1] == main
    assert (
        hub.read("org/scan-branches", "model.safetensors", revision=v2)
        == (second / "model.safetensors").read_bytes()
    )
    assert client.call("commits", repo_id="org/scan-branches", revision="v2")["titles"][0] == "weights v2"


@pytest.mark.parametrize("failure", ["lfs_upload", "commit"])
def test_an_interrupted_push_leaves_the_repo_at_its_previous_commit(hub, client, trained, tmp_path, failure):
    repo = f"org/scan-interrupted-{failure.replace('_', '-')}"
    assert client.ccr("push", trained, repo)["rc"] == 0
    head, files = hub.head(repo), hub.list_files(repo)
    changed = perturbed_copy(
        trained, tmp_path / "changed", shift=0.03
    )  # new weights: an LFS upload is needed
    hub.fail_next(failure)
    answer = client.ccr("push", changed, repo)
    assert answer["rc"] == 2
    assert f"push to {repo} failed" in answer["stderr"]
    assert f"the repo is unchanged: main is still at {head}" in answer["stderr"]
    assert hub.failures[failure] == 0, "the injected failure was hit"
    assert hub.head(repo) == head and hub.list_files(repo) == files
    assert hub.read(repo, "model.safetensors") == (trained / "model.safetensors").read_bytes()
    assert client.ccr("push", changed, repo)["rc"] == 0, "the same push goes through once the Hub is back"
    assert hub.history(repo)[1] == head


def test_a_folder_with_a_pickle_is_refused_before_anything_is_uploaded(hub, client, trained, tmp_path):
    folder = tmp_path / "with_pickle"
    shutil.copytree(trained, folder)
    (folder / "optimizer.pt").write_bytes(b"\x80\x04K\x01.")
    answer = client.ccr("push", folder, "org/scan-pickle")
    assert answer["rc"] == 2
    assert "pickle" in answer["stderr"] and "optimizer.pt" in answer["stderr"]
    assert not hub.has_repo("org/scan-pickle")


# ---------------------------------------------------------------------------- ccr push-dataset
def test_a_pushed_corpus_loads_back_with_load_dataset_row_for_row(hub, client, tmp_path):
    corpus = build_synthetic_corpus(SyntheticCorpusConfig(seed=5, **TINY_CORPUS))
    corpus.save_to_disk(str(tmp_path / "corpus"))
    answer = client.ccr(
        "push-dataset", tmp_path / "corpus", "org/tiny-corpus", "--license", "apache-2.0",
        "--source", "built-in synthetic grounded corpus (seed 5)",
    )  # fmt: skip
    assert answer["rc"] == 0, answer["stderr"]
    assert len(hub.history("org/tiny-corpus", kind="dataset")) == 2
    loaded = client.call("load_dataset", repo_id="org/tiny-corpus", output=str(tmp_path / "loaded"))
    assert loaded["splits"] == {"train": 64, "validation": 12, "test": 12}
    back = datasets.load_from_disk(str(tmp_path / "loaded"))
    for name, split in corpus.items():
        assert back[name].features == split.features
        ours, theirs = split.with_format("numpy")[:], back[name].with_format("numpy")[:]
        for row in range(len(split)):
            np.testing.assert_array_equal(theirs["features"][row], ours["features"][row])
            np.testing.assert_array_equal(theirs["boxes"][row], ours["boxes"][row])
        assert back[name]["captions"] == split["captions"] and back[name]["phrases"] == split["phrases"]
        assert back[name]["image_id"] == split["image_id"]
    (tmp_path / "README.md").write_bytes(hub.read("org/tiny-corpus", "README.md", kind="dataset"))
    assert metadata_load(tmp_path / "README.md")["license"] == "apache-2.0"
    card = (tmp_path / "README.md").read_text()
    assert "built-in synthetic grounded corpus (seed 5)" in card and "| `test` | 12 | 60 |" in card
    head = hub.head("org/tiny-corpus", kind="dataset")
    again = client.ccr(
        "push-dataset",
        tmp_path / "corpus",
        "org/tiny-corpus",
        "--source",
        "built-in synthetic grounded corpus (seed 5)",
    )
    assert again["stdout"].startswith("Nothing to push"), "same corpus, same card (license kept): no commit"
    assert hub.head("org/tiny-corpus", kind="dataset") == head


# ---------------------------------------------------------------------------- errors without the Hub
def test_bad_repo_ids_are_refused_with_the_expected_form():
    for bad in ("no-namespace", "org/", "/name", "org/na me", "org/a--b", "a/b/c"):
        with pytest.raises(PushError, match="expected ORG/NAME"):
            validate_repo_id(bad)
    assert validate_repo_id("my-org/scan.v1_x") == "my-org/scan.v1_x"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: shutil.rmtree(d), "model folder not found"),
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: [p.unlink() for p in d.glob("eval_results_*.json")], "has no evaluation results"),
        (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
        (lambda d: (d / "pytorch_model.bin").write_bytes(b"x"), r"pickle file\(s\) \['pytorch_model.bin'\]"),
        (lambda d: strip_auto_map(d / "config.json"), "has no auto_map"),
        (lambda d: (d / "modeling_scan.py").unlink(), "names modeling_scan.py, which is not in the folder"),
    ],
)
def test_unpushable_model_folders_fail_with_the_file_named(trained, tmp_path, edit, message):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    edit(folder)
    with pytest.raises(PushError, match=message):
        select_model_files(folder)


def strip_auto_map(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    del config["auto_map"]
    config_path.write_text(json.dumps(config))


def test_pushing_offline_is_refused_before_any_request(trained, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE is set"):
        push_model(trained, "org/never-created")


def test_ccr_card_prints_the_card_push_would_upload(trained, capsys):
    from modeling_ccr.cli import main

    assert main(["card", str(trained), "--repo-id", "org/x"]) == 0
    card = ModelCard(capsys.readouterr().out)
    assert card.data.eval_results and card.data.model_name == "x"


def test_published_numbers_sit_beside_ours_only_on_the_same_dataset_and_protocol(trained):
    from modeling_ccr.hub.cards import CardSources

    record = json.loads((trained / "eval_results_test.json").read_text())
    f30k = {**record, "dataset": "data/f30k_precomp"}
    coco_1k = {
        **record,
        "dataset": "data/coco_precomp",
        "metrics": {**record["metrics"], "protocol": "coco_5fold_1k"},
    }
    texts = {
        "config.json": (trained / "config.json").read_text(),
        "eval_results_test.json": json.dumps(f30k),
        "eval_results_coco.json": json.dumps(coco_1k),
    }
    text = render_model_card(CardSources.from_texts(texts, list(texts)), "org/x").text
    sections = text.split("### ")
    f30k = next(section for section in sections if section.startswith("data/f30k_precomp"))
    coco = next(section for section in sections if section.startswith("data/coco_precomp"))
    assert "| SCAN t2i-AVG + i2t-LSE ensemble (published, not reproduced here) | 67.4 |" in f30k
    assert "published, not reproduced here" not in coco, "no SCAN COCO reference, and 1K is not 5K"
    assert "Synthetic data" not in text.split("## Training")[0], "real-data results get no synthetic label"
    assert dataset_label("data/f30k_precomp").synthetic is False


def test_an_ensemble_card_names_its_members_and_their_published_numbers(trained):
    from modeling_ccr.hub.cards import CardSources

    record = json.loads((trained / "eval_results_test.json").read_text())
    members = [
        {"model_type": "xmatch_sgr", "feature_dim": 16, "ccr_weight": 0.1, "ccs_weight": 0.0},
        {"model_type": "xmatch_saf", "feature_dim": 16, "ccr_weight": 0.0, "ccs_weight": 0.0},
    ]
    config = {"model_type": "xmatch_ensemble", "architectures": ["EnsembleModel"], "members": members}
    texts = {
        "config.json": json.dumps(config),
        "eval_results_test.json": json.dumps({**record, "dataset": "data/f30k_precomp"}),
    }
    card = render_model_card(CardSources.from_texts(texts, list(texts)), "org/sgraf")
    assert "**Ensemble of SGR + SAF**" in card.text
    assert (
        "| `members[0].ccr_weight` | `0.1` |" in card.text
        and "| `members[1].ccr_weight` | `0.0` |" in card.text
    )
    results = card.text.split("## Results")[1].split("## Published")[0]
    for published in ("| SGR (published", "| SAF (published", "| SGR + SAF ensemble (published"):
        assert published in results, published
    assert {"ensemble", "sgr", "saf", "ccr"} <= set(card.data.tags)


def test_dataset_labels_name_the_synthetic_corpus():
    assert dataset_label("synthetic").name == "built-in synthetic grounded corpus"
    label = dataset_label("built-in synthetic corpus (seed 0)")
    assert label.synthetic and label.name == "built-in synthetic grounded corpus (seed 0)"


# ---------------------------------------------------------------------------- the Trainer's card
def test_the_trainer_never_writes_a_model_card(tmp_path):
    from modeling_ccr import ScanConfig, ScanModel
    from modeling_ccr.text.tokenization import build_word_tokenizer
    from modeling_ccr.training.trainer import MatchingTrainer

    tokenizer = build_word_tokenizer(CAPTIONS * 4, min_count=1)
    model = ScanModel(ScanConfig(feature_dim=10, embed_dim=8, vocab_size=len(tokenizer), word_dim=6))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = MatchingTrainer(model=model, args=args, processing_class=tokenizer)
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: apache-2.0\n---\nrendered by ccr push\n")
    trainer.create_model_card(model_name="scan", dataset="synthetic", tags=["x"])
    assert card.read_text() == "---\nlicense: apache-2.0\n---\nrendered by ccr push\n"
    card.unlink()
    trainer.create_model_card()
    assert not card.exists()
    # The stock Trainer would have written one: the override is what keeps the card ours.
    super(MatchingTrainer, trainer).create_model_card()
    assert card.exists()
