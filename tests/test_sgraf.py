"""SGR and SAF (SGRAF) against an independent reference written from docs/spec.md section 2, pair by pair."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from modeling_ccr.models.configuration_sgraf import SafConfig, SgrConfig
from modeling_ccr.models.modeling_sgraf import SafModel, SgrModel, masked_batch_norm

MODELS = {"sgr": (SgrConfig, SgrModel), "saf": (SafConfig, SafModel)}
N_REGIONS = 5


def tiny_model(name, **overrides):
    config_class, model_class = MODELS[name]
    values = dict(feature_dim=12, embed_dim=8, vocab_size=30, word_dim=6, sim_dim=6, n_regions=N_REGIONS)
    values.update(overrides)
    torch.manual_seed(0)
    return model_class(config_class(**values))


@torch.no_grad()
def exercise_biases_and_batch_norms(model, seed=1):
    """Non-zero biases and non-trivial batch-norm statistics, so the reference really checks them."""
    generator = torch.Generator().manual_seed(seed)

    def uniform_like(tensor, low, high):
        return torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) * (high - low) + low

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.bias.copy_(uniform_like(module.bias, -0.2, 0.2))
        elif isinstance(module, nn.BatchNorm1d):
            module.running_mean.copy_(uniform_like(module.running_mean, -0.5, 0.5))
            module.running_var.copy_(uniform_like(module.running_var, 0.5, 2.0))
            module.weight.copy_(uniform_like(module.weight, 0.5, 1.5))
            module.bias.copy_(uniform_like(module.bias, -0.3, 0.3))
    return model


def embedded_batch(dim=8, seed=0):
    """3 images x 4 captions of l2-normalised embeddings with padded regions (one in the middle) and words."""
    generator = torch.Generator().manual_seed(seed)
    region_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    images = F.normalize(torch.randn(3, N_REGIONS, dim, generator=generator, dtype=torch.float64), dim=-1)
    images = images * region_mask.unsqueeze(-1)
    n_words = [6, 2, 4, 5]
    word_mask = torch.arange(max(n_words)).unsqueeze(0) < torch.tensor(n_words).unsqueeze(1)
    texts = F.normalize(torch.randn(4, max(n_words), dim, generator=generator, dtype=torch.float64), dim=-1)
    return images, region_mask, texts * word_mask.unsqueeze(-1), word_mask


# -- the reference: docs/spec.md section 2 written out with loops, eval mode (running BN stats, no dropout) --
def linear(layer, x):
    return layer.weight @ x + layer.bias


def l2(x):
    return x / (x.norm() + 1e-8)


def batch_norm_eval(x, norm, channel):
    return (x - norm.running_mean[channel]) / torch.sqrt(norm.running_var[channel] + norm.eps) * norm.weight[
        channel
    ] + norm.bias[channel]


def reference_pooled(pooling, items, mask):
    """v_bar (with batch norm over region positions and features) or t_bar (no batch norm)."""
    valid = [j for j in range(len(mask)) if mask[j]]
    context = linear(pooling.context_projection, sum(items[j] for j in valid) / len(valid))
    if pooling.context_norm is not None:
        context = batch_norm_eval(context, pooling.context_norm, slice(None))
    gates = []
    for j in valid:
        local = linear(pooling.local_projection, items[j])
        if pooling.local_norm is not None:
            local = batch_norm_eval(local, pooling.local_norm, j)
        gates.append(linear(pooling.gate, torch.tanh(local) * torch.tanh(context))[0])
    weights = torch.softmax(torch.stack(gates), dim=0)
    return l2(sum(w * items[j] for w, j in zip(weights, valid, strict=True)))


def reference_nodes(model, image, region_mask, caption, word_mask):
    """[s_g, s_1..s_m] of one pair, over its valid regions and words."""
    keys, queries = image[region_mask], caption[word_mask]
    s = F.leaky_relu(keys @ queries.T, 0.1)  # s[j, t] = <k_j, q_t>, clipped
    s = s / (s.norm(dim=1, keepdim=True) + 1e-8)  # over the words, for each region
    nodes = [
        l2(
            linear(
                model.global_similarity,
                (
                    reference_pooled(model.region_pooling, image, region_mask)
                    - reference_pooled(model.word_pooling, caption, word_mask)
                )
                ** 2,
            )
        )
    ]
    for t in range(len(queries)):
        a = torch.softmax(9.0 * s[:, t], dim=0)
        content = l2(sum(a[j] * keys[j] for j in range(len(keys))))
        nodes.append(l2(linear(model.local_similarity, (content - queries[t]) ** 2)))
    return nodes


def reference_sgr(model, nodes):
    for step in model.reasoning:
        updated = []
        for p in range(len(nodes)):
            edges = torch.stack([linear(step.query, nodes[p]) @ linear(step.key, node) for node in nodes])
            edges = torch.softmax(edges, dim=0)
            updated.append(
                torch.relu(linear(step.update, sum(e * node for e, node in zip(edges, nodes, strict=True))))
            )
        nodes = updated
    return nodes[0]


def reference_saf(model, nodes):
    filtration = model.filtration
    gates = [batch_norm_eval(linear(filtration.gate, node)[0], filtration.norm, 0) for node in nodes]
    beta = torch.sigmoid(torch.stack(gates))
    beta = beta / (beta.sum() + 1e-8)
    return l2(sum(b * node for b, node in zip(beta, nodes, strict=True)))


def reference_score(name, model, image, region_mask, caption, word_mask):
    nodes = reference_nodes(model, image, region_mask, caption, word_mask)
    vector = reference_sgr(model, nodes) if name == "sgr" else reference_saf(model, nodes)
    return torch.sigmoid(linear(model.score_head, vector)[0])


@pytest.mark.parametrize("name", MODELS)
def test_scores_match_the_reference_for_every_pair(name):
    model = exercise_biases_and_batch_norms(tiny_model(name).double().eval())
    images, region_mask, texts, word_mask = embedded_batch()
    with torch.no_grad():
        scores = model.score_pairs(images, region_mask, texts, word_mask)
        assert scores.shape == (3, 4) and scores.std() > 1e-4
        for i, c in itertools.product(range(3), range(4)):
            expected = reference_score(name, model, images[i], region_mask[i], texts[c], word_mask[c])
            torch.testing.assert_close(scores[i, c], expected, rtol=1e-10, atol=1e-10)


def random_inputs(config, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, config.n_regions, config.feature_dim, generator=generator)
    region_mask = torch.ones(batch, config.n_regions, dtype=torch.bool)
    region_mask[1, 3:] = False
    input_ids = torch.randint(4, config.vocab_size, (batch, 7), generator=generator)
    attention_mask = torch.ones(batch, 7, dtype=torch.long)
    attention_mask[2, 3:] = 0
    return features, region_mask, input_ids, attention_mask


@pytest.mark.parametrize("name", MODELS)
def test_padded_region_features_and_padded_tokens_do_not_change_scores(name):
    model = exercise_biases_and_batch_norms(tiny_model(name)).eval()
    features, region_mask, input_ids, attention_mask = random_inputs(model.config)
    changed_features, changed_ids = features.clone(), input_ids.clone()
    changed_features[1, 3:] = 5.0
    changed_ids[2, 3:] = 5
    longer_ids = F.pad(input_ids, (0, 2), value=0)
    longer_mask = F.pad(attention_mask, (0, 2), value=0)
    with torch.no_grad():
        expected = model(features, region_mask, input_ids, attention_mask).logits_per_image
        changed = model(changed_features, region_mask, changed_ids, attention_mask).logits_per_image
        longer = model(features, region_mask, longer_ids, longer_mask).logits_per_image
    torch.testing.assert_close(changed, expected)
    torch.testing.assert_close(longer, expected)


@pytest.mark.parametrize("name", MODELS)
def test_region_count_other_than_n_regions_is_rejected(name):
    model = tiny_model(name)
    features, region_mask, input_ids, attention_mask = random_inputs(model.config)
    with pytest.raises(ValueError, match="n_regions=5"):
        model(features[:, :4], region_mask[:, :4], input_ids, attention_mask)


@pytest.mark.parametrize("name", MODELS)
def test_constraints_run_on_the_t2i_attention_and_train_every_sgraf_parameter(name):
    model = tiny_model(name, ccr_weight=1.0, ccs_weight=1.0)
    out = model(*random_inputs(model.config), return_loss=True, output_attentions=True)
    assert out.attentions.shape == (4, 7, N_REGIONS)  # words over regions
    assert torch.isfinite(out.ccr_loss) and torch.isfinite(out.ccs_loss)
    assert out.ccr_loss > 0 and out.ccs_loss > 0
    out.loss.backward()
    for module_name in (
        "region_pooling",
        "word_pooling",
        "local_similarity",
        "global_similarity",
        "score_head",
    ):
        grads = [p.grad for p in getattr(model, module_name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), module_name
        assert any(g.abs().sum() > 0 for g in grads), module_name
    own = model.reasoning if name == "sgr" else model.filtration
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_new_layers_start_with_sgraf_init_xavier_uniform_zero_bias_identity_batch_norm(name):
    model = tiny_model(name)
    own = [m for n, m in model.named_modules() if not n.startswith(("region_encoder", "text_encoder"))]
    linears = [m for m in own if isinstance(m, nn.Linear)]
    assert len(linears) == (18 if name == "sgr" else 10)
    for layer in linears:
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
        assert torch.all(layer.bias == 0) and layer.weight.abs().max() <= bound and layer.weight.std() > 0
    for norm in (m for m in own if isinstance(m, nn.BatchNorm1d)):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
        assert torch.all(norm.running_mean == 0) and torch.all(norm.running_var == 1)


def test_masked_batch_norm_equals_batch_norm_without_padding_and_ignores_padded_entries():
    values = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    reference, masked = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    full = torch.ones(4, 3, 1, dtype=torch.bool)
    torch.testing.assert_close(masked_batch_norm(masked, values, full), reference(values))
    torch.testing.assert_close(masked.running_mean, reference.running_mean)
    torch.testing.assert_close(masked.running_var, reference.running_var)
    mask = full.clone()
    mask[3, 1] = False  # image 3's region slot 1 is padding
    changed = values.clone()
    changed[3, 1] = 100.0
    a = masked_batch_norm(nn.BatchNorm1d(3), values, mask)
    b = masked_batch_norm(nn.BatchNorm1d(3), changed, mask)
    torch.testing.assert_close(a, b)
    assert torch.all(a[3, 1] == 0)


@pytest.mark.parametrize(
    "name,overrides,message",
    [
        ("sgr", dict(sim_dim=0), "sim_dim"),
        ("saf", dict(dropout=1.0), "dropout"),
        ("saf", dict(dropout=-0.1), "dropout"),
        ("sgr", dict(n_regions=0), "n_regions"),
        ("sgr", dict(sgr_steps=0), "sgr_steps"),
        ("saf", dict(attention_norm="l1"), "attention_norm"),
        ("saf", dict(lambda_softmax=-1.0), "lambda_softmax"),
    ],
)
def test_invalid_config_values_are_rejected_naming_the_option(name, overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_model(name, **overrides)


def save_checkpoints(root):
    """Both models with non-trivial weights and BN statistics, saved; their eval-mode logits on fixed inputs."""
    expected = {}
    for name in MODELS:
        model = exercise_biases_and_batch_norms(tiny_model(name)).eval()
        model.save_pretrained(root / name)
        inputs = random_inputs(model.config)
        save_file(
            dict(zip(("region_features", "region_mask", "input_ids", "attention_mask"), inputs, strict=True)),
            str(root / f"{name}.in"),
        )
        with torch.no_grad():
            expected[name] = model(*inputs).logits_per_image
    return expected


def test_checkpoints_reload_every_weight_and_batch_norm_statistic_bit_for_bit(tmp_path):
    expected = save_checkpoints(tmp_path)
    for name, (_, model_class) in MODELS.items():
        reloaded = AutoModel.from_pretrained(tmp_path / name)
        assert type(reloaded) is model_class
        # Every weight and batch-norm statistic comes back bit for bit (none is re-initialised).
        saved = exercise_biases_and_batch_norms(tiny_model(name)).state_dict()
        assert all(torch.equal(value, saved[key]) for key, value in reloaded.state_dict().items())
        assert reloaded.state_dict().keys() == saved.keys()
        inputs = load_file(str(tmp_path / f"{name}.in"))
        with torch.no_grad():
            logits = reloaded(**inputs).logits_per_image
        torch.testing.assert_close(logits, expected[name])


def test_sgraf_initialisation_leaves_a_vision_towers_layers_to_timm():
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    from modeling_ccr.models.configuration_sgraf import SgrConfig
    from modeling_ccr.models.modeling_sgraf import SgrModel

    tower = {"architecture": "test_vit", "image_size": 64}
    torch.manual_seed(0)
    model = SgrModel(SgrConfig(vocab_size=20, embed_dim=16, word_dim=8, n_regions=16, vision_tower=tower))
    qkv = model.vision_tower.model.blocks[0].attn.qkv
    # timm's ViT init: truncated normal, std 0.02; SGRAF's Xavier would give std ~0.09 at this width.
    assert float(qkv.weight.std()) < 0.03
    assert float(model.score_head.weight.abs().max()) > 0.03  # SGRAF's own layers do get Xavier
