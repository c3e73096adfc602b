"""`ccr push` and `ccr push-dataset` publish exactly the folder: its own regular files, of the kinds a model
(or corpus) folder holds, within the size limits, and only once it loads. A refused push sends nothing.

The security tests plant links to a secret file in a model folder and push through the real client against
the local fake Hub (tests/fake_hub.py), which records every request it receives.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import test_hub
from test_hub import TINY_CORPUS, tiny_run

from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.hub.push import (
    MAX_CODE_BYTES,
    MAX_PICTURE_BYTES,
    PNG_SIGNATURE,
    PushError,
    push_dataset,
    push_results,
    select_model_files,
)
from modeling_ccr.training.experiment import parse_experiment_config, run_experiment

# The fake Hub and its client worker, as in test_hub.py (one of each per module).
hub, client = test_hub.hub, test_hub.client

SECRET = "-----BEGIN PRIVATE KEY----- not for the Hub"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return run_experiment(parse_experiment_config(tiny_run(tmp_path_factory.mktemp("trained"))))


@pytest.fixture
def folder(trained, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(trained, copy)
    return copy


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "secret" / "id_rsa"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def refused(client, hub, folder: Path, repo_id: str) -> str:
    """Push through the CLI; it must fail in one line, and the Hub must have received no request at all."""
    before = len(hub.requests)
    answer = client.ccr("push", folder, repo_id)
    assert answer["rc"] == 2, answer
    lines = [line for line in answer["stderr"].splitlines() if line.startswith("ccr ")]
    assert len(lines) == 1 and "Traceback" not in answer["stderr"], answer["stderr"]
    assert hub.requests[before:] == [], "a refused push must not talk to the Hub"
    assert not hub.has_repo(repo_id)
    return lines[0]


# ---------------------------------------------------------------------------- planted links
@pytest.mark.parametrize("name", ["helpers.py", "modeling_scan.py", "attention_dog.png", "vocab.json"])
def test_a_link_to_a_secret_file_is_refused_and_nothing_is_uploaded(client, hub, folder, secret, name):
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(secret)
    line = refused(client, hub, folder, f"org/link-{name.replace('.', '-')}")
    assert f"{folder / name}: expected a regular file, found a symbolic link (to {secret})" in line


def test_a_linked_directory_is_refused_and_nothing_is_uploaded(client, hub, folder, secret):
    (folder / "assets").symlink_to(secret.parent, target_is_directory=True)
    line = refused(client, hub, folder, "org/link-dir")
    assert f"{folder / 'assets'}: expected a regular file, found a symbolic link" in line


def test_a_hard_link_to_a_secret_file_is_refused(client, hub, folder, secret):
    os.link(secret, folder / "vocab.json")
    line = refused(client, hub, folder, "org/hard-link")
    assert "vocab.json: expected a file of its own, found a hard link shared by 2 names" in line


def test_the_clean_folder_pushes_exactly_its_allowed_files(client, hub, folder, secret):
    (folder / "README.md").write_text("a card written by hand\n")
    (folder / "preprocessor_config.json").write_text('{"image_processor_type": "CcrImageProcessor"}\n')
    answer = client.ccr("push", folder, "org/clean")
    assert answer["rc"] == 0, answer["stderr"]
    pushed = set(hub.list_files("org/clean")) - {".gitattributes"}  # the Hub's own, from its first commit
    on_disk = {p.name for p in folder.iterdir()}
    assert pushed == (on_disk - {"training_args.bin"}), (
        "every file but the Trainer's pickle; README is the card"
    )
    assert "preprocessor_config.json" in pushed and "training_args.bin" not in pushed
    assert hub.read("org/clean", "README.md").decode() != "a card written by hand\n"
    for name in pushed:
        assert SECRET.encode() not in hub.read("org/clean", name)


def test_a_result_file_that_is_a_link_is_refused_before_any_request(tmp_path, secret):
    link = tmp_path / "eval_results_test.json"
    link.symlink_to(secret)
    with pytest.raises(
        PushError, match=r"eval_results_test\.json: expected a regular file, found a symbolic link"
    ):
        push_results([link], "org/scan-ccr-demo")  # refused before the offline check: no request at all


# ---------------------------------------------------------------------------- the allow-list and limits
@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: (d / "notes.txt").write_text("x"), r"notes\.txt: not a file of a model folder"),
        (lambda d: (d / "checkpoint-2").mkdir(), r"checkpoint-2: expected a regular file, found a folder"),
        (lambda d: (d / "helpers.py").write_text("X = 1\n"), r"helpers\.py: not part of the checkpoint's code"),
        (lambda d: (d / "losses.py").write_text("def (:\n"), r"losses\.py: not Python code"),
        (
            lambda d: (d / "losses.py").write_bytes((d / "losses.py").read_bytes() + b"#" * MAX_CODE_BYTES),
            r"losses\.py: \d+ bytes of code, more than the 256 KiB",
        ),
        (lambda d: (d / "attention.png").write_text(SECRET), r"attention\.png: expected a PNG picture"),
        (
            lambda d: (d / "attention.png").write_bytes(PNG_SIGNATURE + bytes(MAX_PICTURE_BYTES)),
            r"attention\.png: a \d+-byte picture, more than the 8 MiB",
        ),
        (lambda d: (d / "tokenizer_config.json").unlink(), r"does not load: .*tokenizer_config\.json is missing"),
        (lambda d: (d / "tokenizer.json").write_text("{"), r"does not load: .*tokenizer\.json cannot be loaded"),
    ],
    ids=["stray-file", "sub-folder", "extra-code", "bad-code", "big-code", "fake-png", "big-png", "no-tokenizer-config", "bad-tokenizer"],
)  # fmt: skip
def test_a_folder_outside_the_rules_is_refused_naming_the_file(folder, edit, message):
    edit(folder)
    with pytest.raises(PushError, match=message):
        select_model_files(folder)


def test_a_folder_without_its_tokenizer_config_uploads_nothing(client, hub, folder):
    (folder / "tokenizer_config.json").unlink()
    assert "tokenizer_config.json is missing" in refused(client, hub, folder, "org/no-tokenizer")


def test_a_real_attention_picture_and_the_local_only_files_are_accepted(folder):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "attention_dog.png")
    (folder / "README.md").write_text("notes\n")
    files = select_model_files(folder)
    assert "attention_dog.png" in files.upload
    assert set(files.skipped) == {"README.md", "training_args.bin"}


# ---------------------------------------------------------------------------- push-dataset
@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    corpus = build_synthetic_corpus(SyntheticCorpusConfig(seed=5, **TINY_CORPUS))
    corpus.save_to_disk(str(tmp_path / "corpus"))
    return tmp_path / "corpus"


def plant_arrow_link(corpus_dir: Path, secret: Path) -> None:
    shard = next((corpus_dir / "train").glob("data-*.arrow"))
    shard.unlink()
    shard.symlink_to(secret)


def point_state_outside(corpus_dir: Path, secret: Path) -> None:
    state = corpus_dir / "train" / "state.json"
    record = json.loads(state.read_text())
    record["_data_files"] = [{"filename": "../../secret/id_rsa"}]
    state.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "edit,message",
    [
        (plant_arrow_link, r"train/data-00000-of-00001\.arrow: expected a regular file, found a symbolic link"),
        (lambda d, s: (d / "extra").symlink_to(s.parent), r"extra: expected a regular file, found a symbolic link"),
        (lambda d, s: (d / "notes.txt").write_text("x"), r"notes\.txt: not a file of a corpus folder"),
        (lambda d, s: (d / "train" / "x.parquet").write_text("x"), r"x\.parquet: not a file of a saved split"),
        (point_state_outside, r"state\.json: _data_files names '\.\./\.\./secret/id_rsa'"),
        (
            lambda d, s: (d / "dataset_dict.json").write_text('{"splits": ["../secret"]}'),
            r"split names are plain folder names",
        ),
    ],
    ids=["linked-shard", "linked-folder", "stray-file", "stray-split-file", "state-outside", "split-outside"],
)  # fmt: skip
def test_push_dataset_refuses_a_corpus_folder_outside_the_rules(
    hub, client, corpus_dir, secret, edit, message
):
    edit(corpus_dir, secret)
    with pytest.raises(PushError, match=message):
        push_dataset(corpus_dir, "org/corpus")  # refused before any request (no Hub in this process)
    before = len(hub.requests)
    answer = client.ccr("push-dataset", corpus_dir, "org/corpus-refused")
    assert answer["rc"] == 2 and hub.requests[before:] == [], answer
