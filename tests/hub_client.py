"""The client side of the Hub tests: a worker process whose environment points the Hub clients at the
fake Hub (tests/fake_hub.py).

huggingface_hub, transformers and datasets read HF_ENDPOINT, HF_HUB_OFFLINE and HF_HOME when they are
imported, and the pytest process is offline (tests/conftest.py), so everything that talks to the Hub runs
here. The worker imports the libraries once and then answers requests: one JSON object per line on stdin
(`{"op": name, ...arguments}`), one JSON line per answer on its original stdout. Library output goes to
stderr. `--without-package` makes `import modeling_ccr` fail, as on a machine without the package.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback

if "--without-package" in sys.argv:
    sys.modules["modeling_ccr"] = None  # any import of the package now fails


def score_captions(model, tokenizer, features, region_mask, captions):
    """Scores `(n_images, n_captions)` of images `(n, n_regions, feature_dim)` against caption strings."""
    import torch

    tokens = tokenizer(captions, padding="longest", return_tensors="pt")
    with torch.no_grad():
        images = model.get_image_features(features, region_mask)
        texts = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])
        return model.score_pairs(images, region_mask, texts, tokens["attention_mask"].bool())


def op_cli(argv: list[str]) -> dict:
    """Run `ccr ARGV`; its exit code and output."""
    from modeling_ccr.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exit_:
            rc = exit_.code if isinstance(exit_.code, int) else 1
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def op_scores(
    repo_id: str, inputs: str, output: str, revision: str | None = None, trust_remote_code: bool = False
) -> dict:
    """Load model and tokenizer from the Hub, score the saved inputs, save the scores (safetensors)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoTokenizer

    if not trust_remote_code:
        import modeling_ccr  # noqa: F401  (registers the backbones)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code or None}
    model = AutoModel.from_pretrained(repo_id, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo_id, **kwargs)
    tensors = load_file(inputs)
    with open(inputs + ".json") as handle:
        captions = json.load(handle)
    scores = score_captions(model, tokenizer, tensors["features"], tensors["region_mask"].bool(), captions)
    save_file({"scores": scores.contiguous()}, output)
    return {"module": type(model).__module__, "class": type(model).__name__}


def op_load_dataset(repo_id: str, output: str, revision: str | None = None) -> dict:
    """`datasets.load_dataset(repo_id)`, saved to disk for the test to compare."""
    import datasets

    corpus = datasets.load_dataset(repo_id, revision=revision)
    corpus.save_to_disk(output)
    return {"splits": {name: len(split) for name, split in corpus.items()}}


def op_commits(repo_id: str, repo_type: str = "model", revision: str | None = None) -> dict:
    """The commit ids of a branch, newest first, as `HfApi.list_repo_commits` reports them."""
    from huggingface_hub import HfApi

    commits = HfApi().list_repo_commits(repo_id, repo_type=repo_type, revision=revision)
    return {"ids": [c.commit_id for c in commits], "titles": [c.title for c in commits]}


def serve() -> None:
    requests, protocol = os.fdopen(os.dup(0)), os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed to stdout by the libraries goes to stderr
    sys.stdout = sys.stderr
    with open(os.devnull) as devnull:  # a library prompt (input()) gets EOF, never a request line
        os.dup2(devnull.fileno(), 0)
    sys.stdin = io.StringIO()
    for line in requests:
        request = json.loads(line)
        op = globals()[f"op_{request.pop('op')}"]
        try:
            answer = {"ok": True, **op(**request)}
        except Exception as err:
            answer = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
            }
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()


if __name__ == "__main__":
    serve()
