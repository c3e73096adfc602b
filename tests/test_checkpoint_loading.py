"""A saved checkpoint reloads through AutoModel with the package, and with trust_remote_code without it."""

import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.data.collator import tokenize_captions
from modeling_ccr.text.tokenization import build_word_tokenizer

CAPTIONS = ["a red dog on the grass", "a blue car near a red dog", "two men and a ball"]


def save_tiny_checkpoint(path):
    tokenizer = build_word_tokenizer(CAPTIONS * 4, min_count=1)
    config = ScanConfig(feature_dim=10, embed_dim=8, vocab_size=len(tokenizer), word_dim=6, direction="i2t")
    torch.manual_seed(0)
    model = ScanModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    features = torch.randn(2, 5, 10, generator=torch.Generator().manual_seed(1))
    region_mask = torch.ones(2, 5, dtype=torch.bool)
    region_mask[1, 3:] = False
    return model, tokenizer, features, region_mask


def scores(model, tokenizer, features, region_mask):
    input_ids, attention_mask = tokenize_captions(tokenizer, CAPTIONS)
    with torch.no_grad():
        images = model.get_image_features(features, region_mask)
        texts = model.get_text_features(input_ids, attention_mask)
        return model.score_pairs(images, region_mask, texts, attention_mask.bool())


def test_checkpoint_reloads_through_automodel_with_the_package_imported(tmp_path):
    model, tokenizer, features, region_mask = save_tiny_checkpoint(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is ScanModel
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    torch.testing.assert_close(
        scores(reloaded, reloaded_tokenizer, features, region_mask),
        scores(model, tokenizer, features, region_mask),
    )


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_ccr"] = None  # any import of the package now fails
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoTokenizer

    path = sys.argv[1]
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert not type(model).__module__.startswith("modeling_ccr"), type(model).__module__
    inputs = load_file(path + "/inputs.safetensors")
    encoded = tokenizer(sys.argv[2].split("|"), padding="longest", return_tensors="pt")
    with torch.no_grad():
        out = model(inputs["features"], inputs["region_mask"], encoded["input_ids"], encoded["attention_mask"])
    scores = model.score_pairs(out.image_embeds, out.region_mask, out.text_embeds, out.word_mask)
    save_file({"scores": scores.contiguous(), "input_ids": encoded["input_ids"]}, path + "/scores.safetensors")
    """
)


def test_checkpoint_loads_with_trust_remote_code_in_a_process_without_the_package(tmp_path):
    model, tokenizer, features, region_mask = save_tiny_checkpoint(tmp_path)
    save_file({"features": features, "region_mask": region_mask}, str(tmp_path / "inputs.safetensors"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path), "|".join(CAPTIONS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(str(tmp_path / "scores.safetensors"))
    expected_ids, _ = tokenize_captions(tokenizer, CAPTIONS)
    torch.testing.assert_close(remote["input_ids"], expected_ids)
    torch.testing.assert_close(remote["scores"], scores(model, tokenizer, features, region_mask))
