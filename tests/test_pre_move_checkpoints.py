"""Checkpoint folders saved by the code before the layout move (tests/fixtures/pre_move_checkpoints, made by
MADE_WITH.py.txt) still load, with the package and with trust_remote_code in a process without it, and give
the scores recorded when they were saved."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import modeling_ccr

FIXTURES = Path(__file__).parent / "fixtures" / "pre_move_checkpoints"
NAMES = ["scan_t2i", "ensemble_scan_sgr"]


def score(model, inputs):
    with torch.no_grad():
        out = model(inputs["features"], inputs["region_mask"], inputs["input_ids"], inputs["attention_mask"])
        return model.score_pairs(out.image_embeds, out.region_mask, out.text_embeds, out.word_mask)


@pytest.mark.parametrize("name", NAMES)
def test_a_pre_move_checkpoint_loads_with_the_package_and_scores_as_saved(name):
    model = AutoModel.from_pretrained(FIXTURES / name).eval()
    assert type(model).__module__.startswith("modeling_ccr.models.")
    inputs = load_file(str(FIXTURES / name / "expected.safetensors"))
    torch.testing.assert_close(score(model, inputs), inputs["scores"], rtol=0, atol=1e-6)


REMOTE = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_ccr"] = None  # any import of the package now fails
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert not type(model).__module__.startswith("modeling_ccr"), type(model).__module__
    inputs = load_file(sys.argv[1] + "/expected.safetensors")
    with torch.no_grad():
        out = model(inputs["features"], inputs["region_mask"], inputs["input_ids"], inputs["attention_mask"])
        scores = model.score_pairs(out.image_embeds, out.region_mask, out.text_embeds, out.word_mask)
    torch.testing.assert_close(scores, inputs["scores"], rtol=0, atol=1e-6)
    print("same scores")
    """
)


@pytest.mark.parametrize("name", NAMES)
def test_a_pre_move_checkpoint_loads_without_the_package_through_trust_remote_code(name, tmp_path):
    folder = shutil.copytree(
        FIXTURES / name, tmp_path / name
    )  # the remote-code cache must not touch the repo
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, str(folder)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same scores" in result.stdout


def test_a_checkpoint_saved_now_carries_the_moved_files_and_no_library_code(tmp_path):
    config = modeling_ccr.ScanConfig(feature_dim=6, embed_dim=4, vocab_size=10, word_dim=3)
    modeling_ccr.ScanModel(config).save_pretrained(tmp_path)
    carried = {p.name for p in tmp_path.glob("*.py")}
    assert {"modeling_scan.py", "configuration_scan.py", "cross_attention.py", "encoders.py"} <= carried
    models_dir = Path(modeling_ccr.__file__).parent / "models"
    assert carried <= {p.name for p in models_dir.glob("*.py")}
