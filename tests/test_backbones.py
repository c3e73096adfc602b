"""Every registered backbone, parametrised over `BACKBONES`: a backbone is tested the moment it is
registered (its score reference lives in tests/references.py)."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from references import REFERENCES, reference_scores
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from modeling_ccr import BACKBONES
from modeling_ccr.data.collator import RegionCaptionCollator
from modeling_ccr.data.pairs import ImageCaptionPairs
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.models.configuration_ensemble import member_entry
from modeling_ccr.text.tokenization import build_word_tokenizer

NAMES = sorted(BACKBONES)
TINY = dict(feature_dim=12, embed_dim=8, vocab_size=40, word_dim=6)
N_REGIONS = 6
# Options beyond TINY, per backbone; a backbone registered without an entry runs with its defaults.
OPTIONS = {"sgr": dict(sim_dim=6), "saf": dict(sim_dim=6)}
# The ensemble example mixes backbone types and embedding sizes: SCAN t2i-AVG, SCAN i2t-LSE, SAF.
ENSEMBLE_MEMBERS = (
    ("scan", dict(direction="t2i", aggregation="avg")),
    ("scan", dict(direction="i2t", aggregation="lse", embed_dim=6)),
    ("saf", dict(sim_dim=6)),
)


def member_config(name, n_regions, **overrides):
    config_class = BACKBONES[name][0]
    values = {**TINY, **OPTIONS.get(name, {}), **overrides}
    if "n_regions" in config_class.__dataclass_fields__:
        values["n_regions"] = n_regions
    return config_class(**values)


def build(name, n_regions=N_REGIONS, seed=0, **overrides):
    """A tiny model of backbone `name`; overrides go to every ensemble member."""
    config_class, model_class = BACKBONES[name]
    if name == "ensemble":
        members = [
            member_entry(member_config(member, n_regions, **{**options, **overrides}))
            for member, options in ENSEMBLE_MEMBERS
        ]
        config = config_class(members=members)
    else:
        config = member_config(name, n_regions, **overrides)
    torch.manual_seed(seed)
    return model_class(config)


def has_attention(model):
    return model.config.has_cross_attention


def embed_width(model):
    return (
        sum(m.config.embed_dim for m in model.members)
        if hasattr(model, "members")
        else model.config.embed_dim
    )


def embedded_batch(width, seed=0):
    """3 images x 4 captions of l2-normalised float64 embeddings, padded regions (one in the middle) and words."""
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(3, N_REGIONS, width, generator=generator, dtype=torch.float64), dim=-1)
    region_mask = torch.ones(3, N_REGIONS, dtype=torch.bool)
    region_mask[1, 4:] = False
    region_mask[2, 2] = False
    texts = F.normalize(torch.randn(4, 7, width, generator=generator, dtype=torch.float64), dim=-1)
    word_mask = torch.ones(4, 7, dtype=torch.bool)
    for caption, length in enumerate((7, 2, 4, 5)):
        word_mask[caption, length:] = False
    return images * region_mask[..., None], region_mask, texts * word_mask[..., None], word_mask


def raw_batch(model, batch=4, seed=0):
    """Region features and token ids for `model`, with padded regions and tokens."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config.member_configs[0] if hasattr(model, "members") else model.config
    features = torch.randn(batch, N_REGIONS, config.feature_dim, generator=generator)
    region_mask = torch.ones(batch, N_REGIONS, dtype=torch.bool)
    region_mask[1, 4:] = False
    features = features * region_mask[..., None]
    input_ids = torch.randint(3, config.vocab_size, (batch, 7), generator=generator)
    attention_mask = torch.ones(batch, 7, dtype=torch.long)
    attention_mask[2, 3:] = 0
    return features, region_mask, input_ids * attention_mask, attention_mask


def gallery_scores(model, features, region_mask, input_ids, attention_mask):
    with torch.no_grad():
        images = model.get_image_features(features, region_mask)
        texts = model.get_text_features(input_ids, attention_mask)
        return model.score_pairs(images, region_mask, texts, attention_mask.bool())


def test_every_registered_backbone_has_a_score_reference_and_a_namespaced_model_type():
    assert set(NAMES) <= set(REFERENCES), f"add references for {sorted(set(NAMES) - set(REFERENCES))}"
    for name, (config_class, model_class) in BACKBONES.items():
        assert config_class.model_type.startswith("xmatch_"), name
        assert model_class.config_class is config_class, name


@pytest.mark.parametrize("name", NAMES)
def test_scores_match_the_independent_reference_with_masks(name):
    model = build(name).double().eval()
    images, region_mask, texts, word_mask = embedded_batch(embed_width(model))
    scores = model.score_pairs(images, region_mask, texts, word_mask)
    assert scores.shape == (3, 4)
    expected = reference_scores(name, model, images, region_mask, texts, word_mask)
    # Tolerance covers the eps added to norms (1e-8); any formula error is orders of magnitude larger.
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_extra_padded_words_do_not_change_scores(name):
    model = build(name).double().eval()
    images, region_mask, texts, word_mask = embedded_batch(embed_width(model))
    padded_texts = F.pad(texts, (0, 0, 0, 3))
    padded_mask = F.pad(word_mask, (0, 3))
    torch.testing.assert_close(
        model.score_pairs(images, region_mask, padded_texts, padded_mask),
        model.score_pairs(images, region_mask, texts, word_mask),
    )


@pytest.mark.parametrize("name", NAMES)
def test_blocked_gallery_similarity_equals_one_block(name):
    model = build(name).double().eval()
    images, region_mask, texts, word_mask = embedded_batch(embed_width(model))
    blocked = model.similarity(images, region_mask, texts, word_mask, image_block=2, caption_block=3)
    torch.testing.assert_close(blocked, model.score_pairs(images, region_mask, texts, word_mask).float())


@pytest.mark.parametrize("name", NAMES)
def test_forward_returns_scores_loss_and_the_matched_pair_attention(name):
    model = build(name).eval()
    features, region_mask, input_ids, attention_mask = raw_batch(model)
    output = model(features, region_mask, input_ids, attention_mask, return_loss=True, output_attentions=True)
    assert output.logits_per_image.shape == (4, 4)
    torch.testing.assert_close(output.logits_per_text, output.logits_per_image.T)
    torch.testing.assert_close(
        output.logits_per_image, gallery_scores(model, features, region_mask, input_ids, attention_mask)
    )
    assert torch.isfinite(output.loss) and output.loss.item() > 0
    if not has_attention(model):
        assert output.attentions is None
        return
    direction = model.attention_direction
    n_queries, n_keys = (7, N_REGIONS) if direction == "t2i" else (N_REGIONS, 7)
    assert output.attentions.shape == (4, n_queries, n_keys)
    query_mask, key_mask = (
        (attention_mask.bool(), region_mask) if direction == "t2i" else (region_mask, attention_mask.bool())
    )
    row_sums = output.attentions.sum(dim=-1)
    torch.testing.assert_close(row_sums[query_mask], torch.ones(int(query_mask.sum())))
    assert (output.attentions.masked_select(~key_mask[:, None, :].expand_as(output.attentions)) == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_constraints_plug_into_every_attention_backbone(name):
    if not has_attention(build(name)):
        with pytest.raises(Exception, match="no cross-attention"):
            build(name, ccr_weight=0.1)
        return
    model = build(name, ccr_weight=0.5, ccs_weight=0.5)
    features, region_mask, input_ids, attention_mask = raw_batch(model)
    output = model(features, region_mask, input_ids, attention_mask, return_loss=True)
    for term in ("ccr_loss", "ccs_loss", "base_loss"):
        assert torch.isfinite(getattr(output, term)), term
    assert output.ccr_loss.item() > 0
    torch.testing.assert_close(output.loss, output.base_loss + 0.5 * output.ccr_loss + 0.5 * output.ccs_loss)
    constraints_only = output.ccr_loss + output.ccs_loss
    constraints_only.backward()
    encoders = [p for n, p in model.named_parameters() if "region_encoder" in n or "text_encoder" in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoders)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_options_are_rejected_with_their_name(name):
    config_class = BACKBONES[name][0]
    valid = build(name).config.to_dict()
    options = {k: valid[k] for k in ("members",) if k in valid} if name == "ensemble" else {}
    with pytest.raises(ValueError, match="lamda_softmax"):
        config_class(**options, lamda_softmax=3.0)


@pytest.fixture(scope="module")
def corpus_batches():
    """Two batches of 16 pairs from a small built-in corpus (24 regions per image)."""
    corpus = build_synthetic_corpus(
        SyntheticCorpusConfig(train_images=64, validation_images=8, test_images=8, feature_dim=32, seed=5)
    )
    pairs = ImageCaptionPairs(corpus["train"])
    tokenizer = build_word_tokenizer(pairs.captions, min_count=1)
    collate = RegionCaptionCollator(tokenizer)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [collate([pairs[i] for i in order[start : start + 16]]) for start in (0, 16)]
    return batches, len(tokenizer)


@pytest.mark.parametrize("name", NAMES)
def test_a_few_training_steps_on_the_built_in_corpus_reduce_the_loss(name, corpus_batches):
    batches, vocab_size = corpus_batches
    n_regions = batches[0]["region_features"].shape[1]
    model = build(name, n_regions=n_regions, feature_dim=32, vocab_size=vocab_size, embed_dim=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return sum(model(**batch, return_loss=True).loss.item() for batch in batches)

    before = eval_loss()
    model.train()
    for step in range(10):
        optimizer.zero_grad()
        model(**batches[step % 2], return_loss=True).loss.backward()
        optimizer.step()
    assert eval_loss() < 0.95 * before


def save_all(root):
    """Save one tiny model per backbone and its inputs; return the models."""
    models = {}
    for name in NAMES:
        model = build(name).eval()
        model.save_pretrained(root / name)
        features, region_mask, input_ids, attention_mask = raw_batch(model)
        save_file(
            {
                "features": features,
                "region_mask": region_mask,
                "input_ids": input_ids,
                "attention_mask": attention_mask,
            },
            str(root / name / "inputs.safetensors"),
        )
        models[name] = model
    return models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return root, save_all(root)


def saved_inputs(root, name):
    inputs = load_file(str(root / name / "inputs.safetensors"))
    return inputs["features"], inputs["region_mask"], inputs["input_ids"], inputs["attention_mask"]


@pytest.mark.parametrize("name", NAMES)
def test_checkpoints_reload_through_automodel_with_identical_scores(name, saved):
    root, models = saved
    reloaded = AutoModel.from_pretrained(root / name).eval()
    assert type(reloaded) is type(models[name])
    inputs = saved_inputs(root, name)
    torch.testing.assert_close(gallery_scores(reloaded, *inputs), gallery_scores(models[name], *inputs))


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.modules["modeling_ccr"] = None  # any import of the package now fails
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    for path in sys.argv[1:]:
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        assert not type(model).__module__.startswith("modeling_ccr"), type(model).__module__
        inputs = load_file(str(Path(path) / "inputs.safetensors"))
        with torch.no_grad():
            out = model(inputs["features"], inputs["region_mask"], inputs["input_ids"], inputs["attention_mask"])
        save_file({"scores": out.logits_per_image.contiguous()}, str(Path(path) / "remote_scores.safetensors"))
    """
)


@pytest.fixture(scope="module")
def remote_code_run(saved):
    root, _ = saved
    return subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, *[str(root / name) for name in NAMES]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )


@pytest.mark.parametrize("name", NAMES)
def test_checkpoints_load_with_trust_remote_code_without_the_package(name, saved, remote_code_run):
    root, models = saved
    assert remote_code_run.returncode == 0, remote_code_run.stderr[-3000:]
    remote = load_file(str(root / name / "remote_scores.safetensors"))["scores"]
    torch.testing.assert_close(remote, gallery_scores(models[name], *saved_inputs(root, name)))
