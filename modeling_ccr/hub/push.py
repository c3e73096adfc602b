"""Push evaluated checkpoints and region-feature corpora to the Hugging Face Hub, one commit per push.

`push_model` uploads a model folder written by `ccr train` (safetensors weights, `config.json` with
`auto_map`, the modeling code, the tokenizer, `training_config.yaml`, `run_info.json`, every
`eval_results_*.json`, attention pictures) with a model card rendered by `cards.render_model_card`.
`push_results` adds or updates evaluation JSONs in an existing repo and re-renders its card from all the
result files the repo then holds. `push_dataset` writes a `save_to_disk` corpus as Parquet shards with a
dataset card whose metadata lets `datasets.load_dataset(repo_id)` load it back.

Safety: a push publishes exactly the model folder. Its entries must be its own regular files (a symbolic
link, hard link, sub-folder or device is refused, naming it), each one of the kinds a model folder holds
(weights, config, tokenizer, processor config, the checkpoint's code, results, run records, attention
pictures; `KEPT_LOCAL` files stay behind), `*.py` at most `MAX_CODE_BYTES` and exactly the modules
`auto_map` reaches, `*.png` a PNG of at most `MAX_PICTURE_BYTES`; and the folder must load (config,
weights, tokenizer) before any request is made. `push_dataset` holds corpus folders to the same rules
(`_check_corpus_folder`) and loads them first. Pickles (`*.bin`, `*.pt`, `*.pth`, `*.pkl`, `*.pickle`)
are never uploaded, and a folder holding one is refused (the Trainer's own `training_args.bin` is the one
pickle left behind silently: its contents are in `training_config.yaml` and `run_info.json`). Every push is a single `HfApi.create_commit` whose
parent is the head read before the upload: large files are uploaded first and the branch moves only when
the commit succeeds, so an interrupted push leaves the repo at its previous commit (and the error says so).

Library-side module: the checkpoint code (configuration_*, modeling_*, encoders, ...) never imports it.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCardData, HfApi, ModelCard
from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

from .._version import __version__
from ..artifacts.integrity import results_weights, safetensors_problem, sha256_file, weights_changed
from ..errors import UserError, first_line
from .cards import RESULT_FILE, CardError, CardSources, render_dataset_card, render_model_card

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")
# Written by `Trainer.save_model` next to every checkpoint: a pickled TrainingArguments. Not uploaded.
TRAINER_PICKLE = "training_args.bin"
WEIGHT_FILES = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")
# What a model folder may hold (docs/reliability.md, "What ccr push publishes"); anything else is refused.
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "tokenizer.model",
        "chat_template.jinja",
    }
)
RUN_FILES = frozenset(
    {"config.json", "generation_config.json", "training_config.yaml", "run_info.json", "conversion.json"}
)
# Written by an image processor / processor's save_pretrained (the vision extra).
PROCESSOR_FILES = frozenset({"preprocessor_config.json", "processor_config.json"})
CARD_FILE = "README.md"
# Allowed in the folder but never uploaded: the card is rendered from the results instead, the Trainer's
# pickle is refused by the Hub policy above, and ensemble_members.json records the members' local paths.
KEPT_LOCAL = frozenset({CARD_FILE, TRAINER_PICKLE, "ensemble_members.json"})
# The checkpoint's modules are 2-18 kB; an attention picture is a few hundred kB. Far larger files of
# these kinds are not what `ccr train` writes.
MAX_CODE_BYTES = 256 * 1024
MAX_PICTURE_BYTES = 8 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_DIR = "data"
MAX_SHARD_BYTES = 500 * 1024 * 1024
# A save_to_disk corpus folder: the DatasetDict's index and what the converters and ccr extract write
# beside it at the top, and in each split folder the Arrow shards, their metadata, and datasets' caches.
CORPUS_FILES = frozenset({"dataset_dict.json", "conversion_report.json", "extraction.json", CARD_FILE})
SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SPLIT_FILES = re.compile(
    r"^data-\d{5}-of-\d{5}\.arrow$|^dataset_info\.json$|^state\.json$|^cache-[0-9a-f]+\.arrow$"
)


class PushError(UserError, RuntimeError):
    """A push that cannot be made or did not complete; the message names the file, field or repo."""


@dataclass
class PushResult:
    """What a push did: the new commit (`changed` is False when the repo already held exactly these
    files and no commit was made), and the files uploaded, deleted (stale) and left out."""

    repo_id: str
    branch: str
    commit_id: str
    commit_url: str
    uploaded: list[str]
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    changed: bool = True


# ---------------------------------------------------------------------------- checks
def validate_repo_id(repo_id: str) -> str:
    """`ORG/NAME` with letters, digits, `.`, `_`, `-` (no leading symbol, no `--` or `..`)."""
    if not REPO_ID.match(repo_id or "") or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise PushError(
            f"bad repo id {repo_id!r}: expected ORG/NAME (letters, digits, '.', '_', '-'; "
            "no '--' or '..'), e.g. my-org/scan-ccr-demo"
        )
    return repo_id


def is_managed(path: str) -> bool:
    """Files `ccr push` owns in a model repo: a push replaces them, and deletes those the folder lacks."""
    return "/" not in path and (
        WEIGHT_FILES.match(path) is not None
        or path in TOKENIZER_FILES
        or path in RUN_FILES
        or path in PROCESSOR_FILES
        or RESULT_FILE.match(path) is not None
        or path.endswith((".py", ".png"))
    )


@dataclass
class ModelFiles:
    """The files of a model folder to upload (path in repo -> local path) and the ones left out."""

    folder: Path
    upload: dict[str, Path]
    skipped: list[str]


def _file_kind(mode: int) -> str:
    return "a folder" if stat.S_ISDIR(mode) else "a special file (socket, FIFO or device)"


def regular_file_problem(path: Path) -> str | None:
    """Why `path` is not the folder's own regular file (a link, a folder, a device, a hard link), or None.

    Reads the entry itself (`lstat`), never what a link points to."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return f"expected a regular file, found a symbolic link (to {path.resolve()})"
    if not stat.S_ISREG(info.st_mode):
        return f"expected a regular file, found {_file_kind(info.st_mode)}"
    if info.st_nlink > 1:
        # A hard link is the same file as another name elsewhere: its bytes are not the folder's own.
        return (
            f"expected a file of its own, found a hard link shared by {info.st_nlink} names (copy it with cp)"
        )
    return None


def _check_model_entries(folder: Path, names: list[str]) -> None:
    """Regular files only, no pickles, only the files a model folder holds, code and pictures within limits."""
    for name in names:
        problem = regular_file_problem(folder / name)
        if problem:
            raise PushError(
                f"refusing to push {folder / name}: {problem}; ccr push publishes only the folder's own files"
            )
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES) and n != TRAINER_PICKLE]
    if pickles:
        raise PushError(
            f"refusing to push {folder}: it holds pickle file(s) {pickles}. Loading a pickle runs arbitrary "
            "code, so ccr push uploads safetensors only: remove them (weights belong in model.safetensors)"
        )
    for name in names:
        path = folder / name
        if not (is_managed(name) or name in KEPT_LOCAL):
            raise PushError(
                f"refusing to push {path}: not a file of a model folder (config, safetensors weights, "
                "tokenizer, processor config, checkpoint code *.py, eval_results_*.json, run records, "
                "attention pictures *.png, README.md); remove it or move it out of the folder"
            )
        size = path.stat().st_size
        if name.endswith(".py") and size > MAX_CODE_BYTES:
            raise PushError(
                f"refusing to push {path}: {size} bytes of code, more than the {MAX_CODE_BYTES // 1024} KiB "
                "a checkpoint module may have"
            )
        if name.endswith(".png"):
            if size > MAX_PICTURE_BYTES:
                raise PushError(
                    f"refusing to push {path}: a {size}-byte picture, more than the "
                    f"{MAX_PICTURE_BYTES // 2**20} MiB an attention picture may have"
                )
            with path.open("rb") as handle:
                if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                    raise PushError(f"refusing to push {path}: expected a PNG picture, found other bytes")


def _relative_imports(path: Path) -> set[str]:
    """The sibling modules a checkpoint file imports (`from .x import y`, `from . import x`)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as err:
        raise PushError(f"refusing to push {path}: not Python code ({first_line(err)})") from err
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def _check_code(folder: Path, config_path: Path, names: list[str]) -> None:
    """The folder's *.py files are exactly the checkpoint's code: the modules config.json's auto_map names
    and the sibling modules they import, transitively (what transformers copies when it saves a model,
    and what trust_remote_code loads)."""
    auto_map = json.loads(config_path.read_text()).get("auto_map") or {}
    pending = [
        reference.split("--")[-1].rsplit(".", 1)[0]
        for references in auto_map.values()
        for reference in (references if isinstance(references, list) else [references])
        if isinstance(reference, str)
    ]
    code: set[str] = set()
    while pending:
        module = pending.pop()
        if module in code:
            continue
        code.add(module)
        for imported in _relative_imports(folder / f"{module}.py"):
            if f"{imported}.py" not in names:
                raise PushError(
                    f"refusing to push {folder}: {module}.py imports .{imported}, which is not in the folder "
                    "(the repo would not load with trust_remote_code)"
                )
            pending.append(imported)
    for name in names:
        if name.endswith(".py") and name[:-3] not in code:
            raise PushError(
                f"refusing to push {folder / name}: not part of the checkpoint's code (the modules config.json's "
                f"auto_map names and what they import: {', '.join(sorted(code))}); remove it"
            )


def _check_loads(folder: Path) -> None:
    """Load the folder as `ccr evaluate` would (config, weights, tokenizer) before anything is sent."""
    from ..artifacts.loading import load_matcher
    from ..errors import ModelLoadError

    try:
        load_matcher(folder)
    except ModelLoadError as err:
        raise PushError(f"refusing to push: the folder does not load: {err}") from err


def select_model_files(model_dir: str | Path) -> ModelFiles:
    """Choose what `ccr push` uploads from a model folder, refusing folders that are not pushable: missing
    folder, config.json or auto_map; links, folders or other non-regular entries; pickles; files a model
    folder does not hold; code or pictures over their limits; *.py files that are not the checkpoint's
    code; weights other than safetensors; no results; results of other weights; a folder that does not
    load (config, weights and tokenizer, through `artifacts.loading.load_matcher`)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise PushError(f"model folder not found: {folder}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PushError(f"{folder} has no config.json: not a model folder saved with save_pretrained")
    names = sorted(p.name for p in folder.iterdir())
    _check_model_entries(folder, names)
    _check_auto_map(config_path, set(names))
    _check_code(folder, config_path, names)
    if not any(WEIGHT_FILES.match(n) and n.endswith(".safetensors") for n in names):
        raise PushError(f"{folder} has no model.safetensors: ccr push uploads safetensors weights only")
    if not any(RESULT_FILE.match(n) for n in names):
        raise PushError(
            f"{folder} has no evaluation results (eval_results_*.json): run `ccr evaluate {folder}` first"
        )
    _check_weights_integrity(folder, names)
    _check_loads(folder)
    upload = {n: folder / n for n in names if is_managed(n)}
    skipped = [n for n in names if n not in upload]
    return ModelFiles(folder, upload, skipped)


def _check_weights_integrity(folder: Path, names: list[str]) -> None:
    """Refuse truncated weights, weights changed since training, and results measured with other weights."""
    for name in names:
        if WEIGHT_FILES.match(name) and name.endswith(".safetensors"):
            problem = safetensors_problem(folder / name)
            if problem:
                raise PushError(f"refusing to push {folder / name}: {problem}")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return  # sharded weights: their layout was checked above; results name model.safetensors only
    changed = weights_changed(folder)
    if changed:
        raise PushError(f"refusing to push: {changed}; its results describe the trained weights")
    current = sha256_file(weights)
    for name in names:
        if not RESULT_FILE.match(name):
            continue
        try:
            record = json.loads((folder / name).read_text())
        except ValueError as err:
            raise PushError(f"{folder / name} is not valid JSON: {err}") from err
        if not isinstance(record, dict):
            raise PushError(
                f"{folder / name}: expected a JSON object of results, found {type(record).__name__}"
            )
        models = record.get("models") or [None]
        measured = results_weights(record).get(str(models[0]))
        if measured is not None and measured != current:
            raise PushError(
                f"refusing to push {folder}: {name} was measured with other weights (sha256 {measured[:12]}, "
                f"model.safetensors is now {current[:12]}); re-run ccr evaluate {folder}"
            )


def _check_auto_map(config_path: Path, names: set[str]) -> None:
    """config.json must map the Auto classes to modules present in the folder (trust_remote_code)."""
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise PushError(f"{config_path}: not valid JSON: {err}") from err
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        raise PushError(
            f"{config_path} has no auto_map: the repo would not load with trust_remote_code. Save the model "
            "with modeling_ccr imported (it registers the classes for the Auto API)"
        )
    for auto_class, references in auto_map.items():
        # "module.Class", "repo--module.Class", or a [slow, fast] pair (tokenizers; entries may be null)
        for reference in references if isinstance(references, list) else [references]:
            if not isinstance(reference, str):
                continue
            module = reference.split("--")[-1].rsplit(".", 1)[0] + ".py"
            if module not in names:
                raise PushError(
                    f"{config_path}: auto_map.{auto_class} names {module}, which is not in the folder"
                )


def _check_can_push() -> None:
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set: pushing needs the Hub (unset HF_HUB_OFFLINE)")
    if get_token() is None:
        raise PushError("not logged in to the Hub: run `hf auth login` or set HF_TOKEN to a write token")


# ---------------------------------------------------------------------------- commits
@contextlib.contextmanager
def _talking_to_hub(what: str) -> Iterator[None]:
    """Turn a failed Hub request (HTTP error, unreachable endpoint) into a PushError saying what failed."""
    try:
        yield
    except PushError:
        raise
    except Exception as err:
        raise PushError(f"{what} failed: {type(err).__name__}: {first_line(err)}") from err


def _prepare_branch(api: HfApi, repo_id: str, repo_type: str, revision: str | None) -> str:
    """The branch to commit to (default main), created from main when it does not exist yet."""
    branch = revision or "main"
    if COMMIT_ID.match(branch):
        raise PushError(f"--revision {branch} is a commit id: a push needs a branch name (e.g. v1 or main)")
    if branch != "main":
        api.create_branch(repo_id, branch=branch, repo_type=repo_type, exist_ok=True)
    return branch


def _head(api: HfApi, repo_id: str, repo_type: str, branch: str) -> str | None:
    try:
        return api.repo_info(repo_id, repo_type=repo_type, revision=branch).sha
    except Exception:  # the question is only "where is the branch now?": unreachable -> unknown
        return None


def _commit(
    api: HfApi,
    repo_id: str,
    repo_type: str,
    operations: list,
    message: str,
    description: str,
    branch: str,
    parent: str,
) -> tuple[str, str]:
    """One commit on `branch` whose parent must be `parent`; returns (commit id, commit url).

    Large files are uploaded before the commit request and the branch only moves if that request
    succeeds; on any failure the error reports where the branch is now."""
    try:
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            commit_description=description,
            repo_type=repo_type,
            revision=branch,
            parent_commit=parent,
        )
    except Exception as err:
        now = _head(api, repo_id, repo_type, branch)
        if now == parent:
            state = f"the repo is unchanged: {branch} is still at {parent}"
        elif now is None:
            state = f"could not read {branch} back to check it (it was at {parent})"
        else:
            state = f"{branch} is now at {now} (it was at {parent}): check the repo"
        reason = first_line(err)
        detail = getattr(err, "server_message", None) or getattr(err.__cause__, "server_message", None)
        if not detail and err.__cause__ is not None and first_line(err.__cause__) not in reason:
            detail = first_line(err.__cause__)
        if detail:
            reason += f" ({str(detail).strip().splitlines()[0]})"
        raise PushError(f"push to {repo_id} failed: {type(err).__name__}: {reason}. {state}") from err
    return info.oid, info.commit_url


def _existing_license(api: HfApi, repo_id: str, repo_type: str, commit: str, remote: list[str]) -> str | None:
    """The `license` of the card a repo holds at `commit` (kept when a push does not name one)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.repocard import RepoCard

    if CARD_FILE not in remote:
        return None
    path = hf_hub_download(repo_id, CARD_FILE, repo_type=repo_type, revision=commit)
    return RepoCard(Path(path).read_text(), ignore_metadata_errors=True).data.get("license")


# ---------------------------------------------------------------------------- models
def model_card_for_folder(model_dir: str | Path, repo_id: str, license: str | None = None) -> ModelCard:
    """The card `push_model` would upload for this folder (`ccr card`)."""
    files = select_model_files(model_dir)
    return _folder_card(files, validate_repo_id(repo_id), license)


def _folder_card(files: ModelFiles, repo_id: str, license: str | None) -> ModelCard:
    texts = {
        name: path.read_text()
        for name, path in files.upload.items()
        if name in RUN_FILES or RESULT_FILE.match(name)
    }
    try:
        return render_model_card(CardSources.from_texts(texts, [*files.upload, CARD_FILE]), repo_id, license)
    except CardError as err:
        raise PushError(f"{files.folder}: {err}") from err


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    api: HfApi | None = None,
) -> PushResult:
    """Upload a trained, evaluated model folder and its rendered card to `repo_id` in one commit.

    The repo is created if needed (`private` applies only then); `revision` names a branch, created
    from main if new. Files of the kinds ccr push manages that the folder no longer has (an old result
    file, a renamed module) are deleted in the same commit, so the repo mirrors the folder. Without
    `license`, the license of the repo's current card is kept."""
    validate_repo_id(repo_id)
    files = select_model_files(model_dir)
    card = _folder_card(files, repo_id, license)  # fails here, before any request, if it cannot render
    _check_can_push()
    api = api or HfApi()
    with _talking_to_hub(f"preparing {repo_id} (create the repo, read its files)"):
        api.create_repo(repo_id, private=private, exist_ok=True)
        branch = _prepare_branch(api, repo_id, "model", revision)
        parent = api.repo_info(repo_id, revision=branch).sha
        remote = api.list_repo_files(repo_id, revision=parent)
        kept = None if license else _existing_license(api, repo_id, "model", parent, remote)
    if kept:
        card = _folder_card(files, repo_id, kept)
    stale = sorted(p for p in remote if is_managed(p) and p not in files.upload)
    operations = [CommitOperationAdd(path, str(local)) for path, local in sorted(files.upload.items())]
    operations.append(CommitOperationAdd(CARD_FILE, str(card).encode()))
    operations += [CommitOperationDelete(path) for path in stale]
    results = sorted(n for n in files.upload if RESULT_FILE.match(n))
    run_name = f"{files.folder.resolve().parent.name}/{files.folder.name}"
    message = commit_message or f"Push {run_name} with its card (modeling-ccr {__version__})"
    description = f"Results: {', '.join(results)}. Uploaded by `ccr push`; the card is rendered from them."
    commit_id, url = _commit(api, repo_id, "model", operations, message, description, branch, parent)
    uploaded = [*sorted(files.upload), CARD_FILE]
    return PushResult(repo_id, branch, commit_id, url, uploaded, stale, files.skipped, commit_id != parent)


def _check_same_weights(api: HfApi, repo_id: str, commit: str, model_dir: Path) -> None:
    """Refuse to attach results of a model whose weights differ from the repo's model.safetensors."""
    local = model_dir / "model.safetensors"
    if not local.is_file():
        raise PushError(f"{model_dir} has no model.safetensors to compare with {repo_id}'s weights")
    remote = [f for f in api.get_paths_info(repo_id, ["model.safetensors"], revision=commit)]
    if not remote or getattr(remote[0], "lfs", None) is None:
        raise PushError(
            f"{repo_id} has no model.safetensors (push the model first: ccr push {model_dir} {repo_id})"
        )
    remote_sha, local_sha = remote[0].lfs.sha256, sha256_file(local)
    if remote_sha != local_sha:
        raise PushError(
            f"the evaluated weights {local} (sha256 {local_sha[:12]}) are not {repo_id}'s model.safetensors "
            f"(sha256 {remote_sha[:12]}): push this model first (ccr push {model_dir} {repo_id})"
        )


def check_model_repo(repo_id: str, revision: str | None = None, api: HfApi | None = None) -> str:
    """The head commit of an existing model repo's branch; a PushError naming what is missing otherwise.
    `ccr evaluate --push` calls it before evaluating, so a wrong repo id fails in seconds, not after."""
    validate_repo_id(repo_id)
    _check_can_push()
    api = api or HfApi()
    branch = revision or "main"
    with _talking_to_hub(f"reading {repo_id} ({branch})"):
        try:
            return api.repo_info(repo_id, revision=branch).sha
        except RepositoryNotFoundError as err:
            raise PushError(
                f"no model repo {repo_id} on the Hub: push the model first (ccr push MODEL_DIR {repo_id})"
            ) from err
        except RevisionNotFoundError as err:
            raise PushError(
                f"{repo_id} has no branch {branch!r}: push the model to it first (ccr push --revision {branch})"
            ) from err


def push_results(
    result_files: list[str | Path],
    repo_id: str,
    *,
    model_dir: str | Path | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> PushResult:
    """Add or update evaluation JSONs in an existing model repo and re-render its card from every result
    file the repo then holds (downloaded from the repo), in one commit. With `model_dir`, the local
    model.safetensors must be the repo's (the results must describe the model they are attached to)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.repocard import RepoCard

    validate_repo_id(repo_id)
    paths = [Path(p) for p in result_files]
    for path in paths:
        if not path.is_file():
            raise PushError(f"result file not found: {path}")
        problem = regular_file_problem(path)
        if problem:
            raise PushError(f"refusing to push {path}: {problem}; only the result file itself is uploaded")
        if not RESULT_FILE.match(path.name):
            raise PushError(
                f"{path.name}: result files are named eval_results_<name>.json (or ensemble_eval_results_<name>"
                ".json) so that cards find them; write it with --output eval_results_<name>.json"
            )
    api = api or HfApi()
    branch = revision or "main"
    parent = check_model_repo(repo_id, branch, api)
    with _talking_to_hub(f"reading {repo_id} ({branch})"):
        remote = api.list_repo_files(repo_id, revision=parent)
        if model_dir is not None:
            _check_same_weights(api, repo_id, parent, Path(model_dir))
        wanted = [n for n in remote if n in RUN_FILES or RESULT_FILE.match(n) or n == CARD_FILE]
        texts = {n: Path(hf_hub_download(repo_id, n, revision=parent)).read_text() for n in wanted}
    card_text = texts.pop(CARD_FILE, None)
    license = RepoCard(card_text, ignore_metadata_errors=True).data.get("license") if card_text else None
    texts.update({p.name: p.read_text() for p in paths})
    files = sorted({*remote, *(p.name for p in paths), CARD_FILE})
    try:
        card = render_model_card(CardSources.from_texts(texts, files), repo_id, license)
    except CardError as err:
        raise PushError(f"cannot render the card of {repo_id}: {err}") from err
    operations = [CommitOperationAdd(p.name, str(p)) for p in paths]
    operations.append(CommitOperationAdd(CARD_FILE, str(card).encode()))
    names = [p.name for p in paths]
    message = commit_message or f"Add evaluation results {', '.join(names)} and re-render the card"
    description = f"Uploaded by `ccr evaluate --push` (modeling-ccr {__version__})."
    commit_id, url = _commit(api, repo_id, "model", operations, message, description, branch, parent)
    return PushResult(repo_id, branch, commit_id, url, [*names, CARD_FILE], changed=commit_id != parent)


# ---------------------------------------------------------------------------- datasets
def _check_corpus_folder(folder: Path) -> None:
    """A save_to_disk DatasetDict folder holding only its own regular files: `dataset_dict.json` naming
    plain split folders, each with the Arrow shards its `state.json` lists (plain names, present), its
    `dataset_info.json` and datasets' cache files. Nothing else, no links, so that what is read and
    published is the folder's own data."""
    if not folder.is_dir():
        raise PushError(f"dataset folder not found: {folder}")
    index = folder / "dataset_dict.json"
    if not index.is_file() and (folder / "state.json").is_file():
        raise PushError(
            f"{folder} holds a single Dataset; expected a DatasetDict with named splits "
            "(e.g. DatasetDict({'train': ..., 'test': ...}).save_to_disk(path))"
        )
    problem = (index.is_symlink() or index.exists()) and regular_file_problem(index)
    if problem:
        raise PushError(
            f"refusing to push {index}: {problem}; ccr push-dataset reads only the folder's own files"
        )
    splits = _json_field(index, "splits", list)
    for name in splits:
        if not isinstance(name, str) or not SPLIT_NAME.match(name):
            raise PushError(
                f"{index}: split names are plain folder names (letters, digits, '_', '.', '-'), found {name!r}"
            )
    for entry in sorted(folder.iterdir()):
        if entry.name in splits and entry.is_dir() and not entry.is_symlink():
            _check_split_folder(entry)
            continue
        problem = regular_file_problem(entry)
        if problem:
            raise PushError(
                f"refusing to push {entry}: {problem}; ccr push-dataset reads only the folder's own files"
            )
        if entry.name not in CORPUS_FILES:
            raise PushError(
                f"refusing to push {entry}: not a file of a corpus folder ({', '.join(sorted(CORPUS_FILES))} "
                "and one folder per split); remove it or move it out of the folder"
            )
    for name in splits:
        if not (folder / name).is_dir():
            raise PushError(f"{index} names split {name!r}, but {folder / name} is not a folder")


def _check_split_folder(split_dir: Path) -> None:
    for entry in sorted(split_dir.iterdir()):
        problem = regular_file_problem(entry)
        if problem:
            raise PushError(
                f"refusing to push {entry}: {problem}; ccr push-dataset reads only the folder's own files"
            )
        if not SPLIT_FILES.match(entry.name):
            raise PushError(
                f"refusing to push {entry}: not a file of a saved split (data-NNNNN-of-NNNNN.arrow, "
                "dataset_info.json, state.json, cache-*.arrow); remove it or move it out of the folder"
            )
    state = split_dir / "state.json"
    for data_file in _json_field(state, "_data_files", list):
        name = data_file.get("filename") if isinstance(data_file, dict) else None
        if not isinstance(name, str) or not SPLIT_FILES.match(name) or not (split_dir / name).is_file():
            raise PushError(
                f"{state}: _data_files names {name!r}; expected a data-NNNNN-of-NNNNN.arrow file of {split_dir}"
            )


def _json_field(path: Path, key: str, kind: type):
    """`key` of the JSON object in `path`, checked to be a `kind`; a PushError naming the file otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(key)
    except FileNotFoundError:
        raise PushError(f"{path} is missing: not a DatasetDict folder saved with save_to_disk") from None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise PushError(f"{path}: not a JSON object ({first_line(err)})") from None
    if not isinstance(value, kind):
        raise PushError(f"{path}: expected {key!r} as a {kind.__name__}, found {value!r}")
    return value


def _load_corpus_folder(dataset_dir: Path):
    import datasets

    _check_corpus_folder(dataset_dir)
    try:
        corpus = datasets.load_from_disk(str(dataset_dir))
    except Exception as err:
        raise PushError(f"{dataset_dir} is not a dataset saved with save_to_disk: {first_line(err)}") from err
    if not isinstance(corpus, datasets.DatasetDict):
        raise PushError(
            f"{dataset_dir} holds a single Dataset; expected a DatasetDict with named splits "
            "(e.g. DatasetDict({'train': ..., 'test': ...}).save_to_disk(path))"
        )
    return corpus


def _split_statistics(name: str, split, shards: list[str]) -> dict:
    """Images, captions and grounded phrases of a split (read through Arrow, not Python rows)."""
    import pyarrow.compute as pc

    table = split.flatten_indices().data if split._indices is not None else split.data
    captions = table.column("captions")
    phrases = None
    if "phrases" in split.column_names:
        per_caption = pc.list_flatten(table.column("phrases"))
        phrases = int(pc.sum(pc.list_value_length(per_caption)).as_py() or 0)
    return {
        "name": name,
        "images": len(split),
        "captions": int(pc.sum(pc.list_value_length(captions)).as_py() or 0),
        "phrases": phrases,
        "parquet_files": shards,
    }


def _write_parquet_shards(corpus, out_dir: Path) -> dict[str, list[str]]:
    """`data/<split>-00000-of-0000N.parquet` per split, each shard at most MAX_SHARD_BYTES of Arrow data."""
    shards: dict[str, list[str]] = {}
    for name, split in corpus.items():
        count = max(1, math.ceil(split.data.nbytes / MAX_SHARD_BYTES))
        shards[name] = []
        for index in range(count):
            path_in_repo = f"{DATA_DIR}/{name}-{index:05d}-of-{count:05d}.parquet"
            target = out_dir / path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            split.shard(num_shards=count, index=index, contiguous=True).to_parquet(str(target))
            shards[name].append(path_in_repo)
    return shards


def dataset_card_data(corpus, license: str, pretty_name: str | None) -> DatasetCardData:
    """Card metadata: license, tags, and the `dataset_info` + `configs` blocks `load_dataset` reads."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs

    first = next(iter(corpus.values()))
    info = DatasetInfo(config_name="default", features=first.features, splits=SplitDict())
    for name, split in corpus.items():
        info.splits.add(SplitInfo(name=name, num_examples=len(split), num_bytes=split.data.nbytes))
    card_data = DatasetCardData(
        license=license,
        pretty_name=pretty_name,
        tags=["modeling-ccr", "image-text-matching", "region-features"],
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    data_files = [{"split": name, "path": f"{DATA_DIR}/{name}-*"} for name in corpus]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
    return card_data


def push_dataset(
    dataset_dir: str | Path,
    repo_id: str,
    *,
    license: str | None = None,
    source: str | None = None,
    pretty_name: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> PushResult:
    """Upload a `save_to_disk` corpus (a DatasetDict in modeling_ccr's schema) as Parquet shards with a
    dataset card, in one commit; `datasets.load_dataset(repo_id)` then gives the same rows and features.
    `source` says where the data came from (shown in the card); old shards under data/ are deleted.
    Without `license`, the repo card's current license is kept ("unknown" for a new repo)."""
    import datasets
    import pyarrow

    from ..data.schema import validate_corpus

    validate_repo_id(repo_id)
    folder = Path(dataset_dir)
    corpus = _load_corpus_folder(folder)
    for name, split in corpus.items():
        try:
            validate_corpus(split, name)
        except ValueError as err:
            raise PushError(
                f"{folder}: not a region-feature corpus (modeling_ccr.data.schema): {err}"
            ) from err
    features = next(iter(corpus.values())).features
    if any(split.features != features for split in corpus.values()):
        raise PushError(f"{folder}: the splits have different features; one dataset repo needs one schema")
    _check_can_push()
    api = api or HfApi()
    with _talking_to_hub(f"preparing dataset repo {repo_id} (create the repo, read its files)"):
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        branch = _prepare_branch(api, repo_id, "dataset", revision)
        parent = api.repo_info(repo_id, repo_type="dataset", revision=branch).sha
        remote = api.list_repo_files(repo_id, repo_type="dataset", revision=parent)
        license = license or _existing_license(api, repo_id, "dataset", parent, remote) or "unknown"
    with tempfile.TemporaryDirectory(prefix="ccr-push-dataset-") as tmp:
        shards = _write_parquet_shards(corpus, Path(tmp))
        provenance = {
            "source": source or "not recorded (pass --source)",
            "folder": folder.name,
            "versions": {
                "modeling_ccr": __version__,
                "datasets": datasets.__version__,
                "pyarrow": pyarrow.__version__,
            },
            "fingerprints": {name: split._fingerprint for name, split in corpus.items()},
        }
        splits = [_split_statistics(name, split, shards[name]) for name, split in corpus.items()]
        card_data = dataset_card_data(corpus, license, pretty_name)
        card = render_dataset_card(
            repo_id, dict(features), splits, license, provenance, card_data, pretty_name
        )
        new_files = [path for paths in shards.values() for path in paths]
        stale = sorted(p for p in remote if p.startswith(f"{DATA_DIR}/") and p not in new_files)
        operations = [CommitOperationAdd(path, str(Path(tmp) / path)) for path in new_files]
        operations.append(CommitOperationAdd(CARD_FILE, str(card).encode()))
        operations += [CommitOperationDelete(path) for path in stale]
        message = commit_message or f"Push corpus {folder.name} ({', '.join(corpus)}) with its card"
        description = f"Uploaded by `ccr push-dataset` (modeling-ccr {__version__})."
        commit_id, url = _commit(api, repo_id, "dataset", operations, message, description, branch, parent)
    return PushResult(
        repo_id, branch, commit_id, url, [*new_files, CARD_FILE], stale, changed=commit_id != parent
    )
