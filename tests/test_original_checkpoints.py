"""Checkpoints in the layouts of the original SCAN, BFAN, SGRAF, VSE-infinity and CHAN code convert into model
folders whose scores equal the original formulas computed here, independently, from the original tensors."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

import modeling_ccr  # noqa: F401  (registers the backbones)
from modeling_ccr.artifacts.original_checkpoints import ConversionError, convert_checkpoint, write_conversion
from modeling_ccr.cli import main

SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]
WORDS = ["a", "dog", "man", "red", "ball", "runs", "on", "grass", "with", "the"]
CAPTIONS = ["a dog runs", "the man with a red ball", "a man on the grass runs", "dog"]
FEATURE_DIM, EMBED_DIM, WORD_DIM, SIM_DIM, N_REGIONS, N_IMAGES = 12, 8, 6, 7, 5, 3

# Options every original train.py records, beside the model's own (training-only ones included).
COMMON_OPTIONS = {
    "data_path": "./data/",
    "data_name": "f30k_precomp",
    "vocab_path": "./vocab/",
    "margin": 0.2,
    "num_epochs": 30,
    "batch_size": 128,
    "word_dim": WORD_DIM,
    "embed_size": EMBED_DIM,
    "grad_clip": 2.0,
    "learning_rate": 0.0002,
    "lr_update": 15,
    "max_violation": True,
    "img_dim": FEATURE_DIM,
    "no_imgnorm": False,
    "no_txtnorm": False,
    "vocab_size": len(SPECIALS) + len(WORDS),
}


# ------------------------------------------------------------------ original layouts
def vocab_file(tmp_path):
    word2idx = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    path = tmp_path / "f30k_precomp_vocab.json"
    path.write_text(
        json.dumps(
            {"word2idx": word2idx, "idx2word": {str(i): w for w, i in word2idx.items()}, "idx": len(word2idx)}
        )
    )
    return path, word2idx


def linear(out_dim, in_dim, gen, prefix):
    return {
        f"{prefix}weight": torch.randn(out_dim, in_dim, generator=gen) * 0.4,
        f"{prefix}bias": torch.randn(out_dim, generator=gen) * 0.1,
    }


def batch_norm(channels, gen, prefix):
    return {
        f"{prefix}weight": 1 + 0.2 * torch.randn(channels, generator=gen),
        f"{prefix}bias": 0.1 * torch.randn(channels, generator=gen),
        f"{prefix}running_mean": 0.1 * torch.randn(channels, generator=gen),
        f"{prefix}running_var": 0.5 + torch.rand(channels, generator=gen),
        f"{prefix}num_batches_tracked": torch.tensor(321),
    }


def image_state(gen, weight_norm=False):
    state = linear(EMBED_DIM, FEATURE_DIM, gen, "fc.")
    if weight_norm:
        state["fc.weight_v"] = state.pop("fc.weight")
        state["fc.weight_g"] = torch.tensor(2.5)
    return state


def text_state(gen, rnn_name, bidirectional, layers=1):
    gru = torch.nn.GRU(WORD_DIM, EMBED_DIM, layers, batch_first=True, bidirectional=bidirectional)
    for weight in gru.parameters():
        weight.data = torch.randn(weight.shape, generator=gen) * 0.3
    state = {f"{rnn_name}.{k}": v.clone() for k, v in gru.state_dict().items()}
    state["embed.weight"] = torch.rand(len(SPECIALS) + len(WORDS), WORD_DIM, generator=gen) * 0.2 - 0.1
    return state


def similarity_state(gen, module_name, steps=3):
    state = {}
    state |= linear(EMBED_DIM, EMBED_DIM, gen, "v_global_w.embedding_local.0.")
    state |= batch_norm(N_REGIONS, gen, "v_global_w.embedding_local.1.")
    state |= linear(EMBED_DIM, EMBED_DIM, gen, "v_global_w.embedding_global.0.")
    state |= batch_norm(EMBED_DIM, gen, "v_global_w.embedding_global.1.")
    state |= linear(1, EMBED_DIM, gen, "v_global_w.embedding_common.0.")
    state |= linear(EMBED_DIM, EMBED_DIM, gen, "t_global_w.embedding_local.0.")
    state |= linear(EMBED_DIM, EMBED_DIM, gen, "t_global_w.embedding_global.0.")
    state |= linear(1, EMBED_DIM, gen, "t_global_w.embedding_common.0.")
    state |= linear(SIM_DIM, EMBED_DIM, gen, "sim_tranloc_w.")
    state |= linear(SIM_DIM, EMBED_DIM, gen, "sim_tranglo_w.")
    state |= linear(1, SIM_DIM, gen, "sim_eval_w.")
    if module_name == "SGR":
        for i in range(steps):
            for name in ("graph_query_w", "graph_key_w", "sim_graph_w"):
                state |= linear(SIM_DIM, SIM_DIM, gen, f"SGR_module.{i}.{name}.")
    else:
        state |= linear(1, SIM_DIM, gen, "SAF_module.attn_sim_w.")
        state |= batch_norm(1, gen, "SAF_module.bn.")
    return state


GPO_DIM = 32  # VSE-infinity's GPO(32, 32)
N_WORDS = len(SPECIALS) + len(WORDS)


def gru_state(gen, prefix, in_dim, hidden):
    gru = torch.nn.GRU(in_dim, hidden, 1, batch_first=True, bidirectional=True)
    for weight in gru.parameters():
        weight.data = torch.randn(weight.shape, generator=gen) * 0.3
    return {f"{prefix}{k}": v.clone() for k, v in gru.state_dict().items()}


def gpo_state(gen):
    return gru_state(gen, "gpool.gru.", GPO_DIM, GPO_DIM) | {
        "gpool.linear.weight": torch.randn(1, GPO_DIM, generator=gen) * 0.5
    }


def with_mask_row(state, gen):
    """VSE-infinity's and CHAN's train.py append '<mask>' to the vocabulary: one embedding row more."""
    state["embed.weight"] = torch.cat([state["embed.weight"], torch.randn(1, WORD_DIM, generator=gen)])
    return state


def vse_infty_states(gen, options):
    image = linear(EMBED_DIM, FEATURE_DIM, gen, "fc.")
    image |= linear(EMBED_DIM // 2, FEATURE_DIM, gen, "mlp.layers.0.")
    image |= linear(EMBED_DIM, EMBED_DIM // 2, gen, "mlp.layers.1.")
    image |= batch_norm(EMBED_DIM // 2, gen, "mlp.bns.0.")
    image |= batch_norm(EMBED_DIM, gen, "mlp.bns.1.")  # created by its MLP, never applied
    image |= gpo_state(gen)
    text = with_mask_row(text_state(gen, "rnn", True), gen) | gpo_state(gen)
    return [image, text]


def chan_states(gen, options):
    image = linear(EMBED_DIM, FEATURE_DIM, gen, "fc.")
    if options["precomp_enc_type"] == "selfattention":
        image |= {
            "feedforward.ln.weight": 1 + 0.2 * torch.randn(EMBED_DIM, generator=gen),
            "feedforward.ln.bias": 0.1 * torch.randn(EMBED_DIM, generator=gen),
        }
        image |= linear(3 * EMBED_DIM, EMBED_DIM, gen, "feedforward.attn.in_proj_")
        image |= linear(EMBED_DIM, EMBED_DIM, gen, "feedforward.attn.out_proj.")
    # Its BiGRU encoder builds an fc layer it never applies.
    text = with_mask_row(text_state(gen, "rnn", True), gen) | linear(EMBED_DIM, EMBED_DIM, gen, "fc.")
    return [image, text, {}, {}]


# Options the VSE-infinity (bigru branch) and CHAN train.py record beside the model's own.
VSE_INFTY_OPTIONS = {
    "num_layers": 1,
    "precomp_enc_type": "basic",
    "vse_mean_warmup_epochs": 1,
    "optim": "adam",
    "backbone_source": "detector",
    "backbone_path": "",
    "backbone_warmup_epochs": 5,
    "embedding_warmup_epochs": 2,
    "backbone_lr_factor": 0.01,
    "input_scale_factor": 1,
    "drop": True,
    "reset_start_epoch": False,
    "vocab_size": N_WORDS + 1,
    "learning_rate": 0.0005,
    "num_epochs": 25,
}
CHAN_OPTIONS = {
    "num_layers": 1,
    "text_enc_type": "bigru",
    "wemb_type": "glove",
    "vse_mean_warmup_epochs": 1,
    "embedding_warmup_epochs": 2,
    "drop": True,
    "obj_drop_rate": 0.2,
    "criterion": "ContrastiveLoss",
    "margin": 0.05,
    "temperature": 0.01,
    "alpha": 0.1,
    "belta": 0.1,
    "seed": 2022,
    "optim": "adam",
    "word2idx": {w: i for i, w in enumerate(SPECIALS + WORDS)},
    "vocab_size": N_WORDS + 1,
    "batch_size": 384,
    "learning_rate": 0.0005,
    "num_epochs": 25,
}

CASES = {
    "scan_t2i_avg_bigru": ("scan", {"cross_attn": "t2i", "agg_func": "Mean", "raw_feature_norm": "clipped_l2norm",
                                    "lambda_softmax": 9.0, "lambda_lse": 6.0, "bi_gru": True, "num_layers": 1,
                                    "precomp_enc_type": "basic"}),
    "scan_i2t_lse_gru_2layers": ("scan", {"cross_attn": "i2t", "agg_func": "LogSumExp", "lambda_softmax": 4.0,
                                          "raw_feature_norm": "clipped_l2norm", "lambda_lse": 5.0, "bi_gru": False,
                                          "num_layers": 2, "precomp_enc_type": "basic"}),
    "scan_t2i_max_softmax_weight_norm": ("scan", {"cross_attn": "t2i", "agg_func": "Max", "lambda_softmax": 5.0,
                                                  "raw_feature_norm": "softmax", "lambda_lse": 6.0, "bi_gru": True,
                                                  "num_layers": 1, "precomp_enc_type": "weight_norm",
                                                  "no_imgnorm": True}),
    "scan_i2t_sum_l2norm": ("scan", {"cross_attn": "i2t", "agg_func": "Sum", "lambda_softmax": 4.0,
                                     "raw_feature_norm": "l2norm", "lambda_lse": 6.0, "bi_gru": True,
                                     "num_layers": 1, "precomp_enc_type": "basic"}),
    "bfan_equal": ("bfan", {"lambda_softmax": 20.0, "focal_type": "equal", "num_layers": 1, "precomp_enc_type": "basic"}),
    "bfan_prob": ("bfan", {"lambda_softmax": 20.0, "focal_type": "prob", "num_layers": 1, "precomp_enc_type": "basic"}),
    "sgr_bigru": ("sgraf", {"module_name": "SGR", "sgr_step": 3, "sim_dim": SIM_DIM, "bi_gru": True, "num_layers": 1}),
    "saf_gru": ("sgraf", {"module_name": "SAF", "sgr_step": 3, "sim_dim": SIM_DIM, "bi_gru": False, "num_layers": 1}),
    "vse_infty_bigru": ("vse_infty", VSE_INFTY_OPTIONS),
    "chan_vha_lse_selfattention": ("chan", {**CHAN_OPTIONS, "coding_type": "VHACoding", "pooling_type": "LSEPooling",
                                            "precomp_enc_type": "selfattention"}),
    "chan_tha_mean_basic": ("chan", {**CHAN_OPTIONS, "coding_type": "THACoding", "pooling_type": "MeanPooling",
                                     "precomp_enc_type": "basic"}),
}  # fmt: skip


def original_checkpoint(arch, model_options, seed=0):
    """(checkpoint dict, options) as the original train.py saves them."""
    gen = torch.Generator().manual_seed(seed)
    options = {**COMMON_OPTIONS, **model_options}
    bidirectional = options.get("bi_gru", True)  # BFAN's text encoder is always a bi-GRU
    image = image_state(gen, options.get("precomp_enc_type") == "weight_norm")
    if arch == "vse_infty":
        states = vse_infty_states(gen, options)
    elif arch == "chan":
        states = chan_states(gen, options)
    elif arch == "sgraf":
        states = [
            image,
            text_state(gen, "cap_rnn", bidirectional, options["num_layers"]),
            similarity_state(gen, options["module_name"], options["sgr_step"]),
        ]
    else:
        states = [image, text_state(gen, "rnn", bidirectional, options["num_layers"])]
    return {
        "epoch": 17,
        "model": states,
        "best_rsum": 432.5,
        "opt": argparse.Namespace(**options),
        "Eiters": 4321,
    }, options


# ------------------------------------------------------------------ the original formulas
def l2norm(x, dim=-1):
    return x / (x.pow(2).sum(dim, keepdim=True).sqrt() + 1e-8)


def cosine(x1, x2):
    return (x1 * x2).sum(-1) / (x1.norm(dim=-1) * x2.norm(dim=-1)).clamp(min=1e-8)


def original_images(state, features, normalize):
    weight = state.get("fc.weight")
    if weight is None:  # weight_norm(dim=None): w = g v / ||v||
        weight = state["fc.weight_g"] * state["fc.weight_v"] / state["fc.weight_v"].norm()
    regions = features @ weight.T + state["fc.bias"]
    return l2norm(regions) if normalize else regions


def original_captions(state, rnn_name, ids, options):
    """One caption at a time, no padding: (n_words, D) each."""
    bidirectional, layers = options.get("bi_gru", True), options["num_layers"]
    gru = torch.nn.GRU(WORD_DIM, EMBED_DIM, layers, batch_first=True, bidirectional=bidirectional)
    gru.load_state_dict(
        {k.removeprefix(f"{rnn_name}."): v for k, v in state.items() if k.startswith(rnn_name)}
    )
    out = []
    for caption in ids:
        words = gru(state["embed.weight"][torch.tensor(caption)][None])[0][0]
        if bidirectional:
            words = (words[:, :EMBED_DIM] + words[:, EMBED_DIM:]) / 2
        out.append(words if options["no_txtnorm"] else l2norm(words))
    return out


def scan_attention(query, context, raw_norm, smooth):
    """SCAN's func_attention for one pair: query (n_q, d), context (n_c, d) -> attention (n_q, n_c)."""
    attn = context @ query.T  # (n_c, n_q)
    if raw_norm == "softmax":
        attn = torch.softmax(attn, dim=1)
    elif raw_norm == "l2norm":
        attn = l2norm(attn, 1)
    elif raw_norm == "clipped_l2norm":
        attn = l2norm(F.leaky_relu(attn, 0.1), 1)
    return torch.softmax(attn.T * smooth, dim=1)


def aggregate(similarities, agg_func, lambda_lse):
    if agg_func == "LogSumExp":
        return torch.log(torch.exp(similarities * lambda_lse).sum()) / lambda_lse
    return {"Mean": similarities.mean(), "Max": similarities.max(), "Sum": similarities.sum()}[agg_func]


def scan_score(image, caption, o):
    query, context = (caption, image) if o["cross_attn"] == "t2i" else (image, caption)
    attended = scan_attention(query, context, o["raw_feature_norm"], o["lambda_softmax"]) @ context
    return aggregate(cosine(query, attended), o["agg_func"], o["lambda_lse"])


def focal_attention(query, context, o):
    attn = scan_attention(query, context, "clipped_l2norm", o["lambda_softmax"])  # (n_q, n_c)
    if o["focal_type"] == "equal":
        focal = attn * context.shape[0] - attn.sum(-1, keepdim=True)
    else:  # sum_j (a_i - a_j) sqrt(a_j)
        focal = (attn[:, :, None] - attn[:, None, :]).mul(attn[:, None, :].sqrt()).sum(-1)
    kept = attn * (focal > 0)
    return kept / kept.sum(-1, keepdim=True)


def bfan_score(image, caption, o):
    t2i = cosine(caption, focal_attention(caption, image, o) @ image).mean()
    i2t = cosine(image, focal_attention(image, caption, o) @ caption).mean()
    return t2i + i2t


def bn_eval(x, state, prefix, channel_dim):
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    mean, var = state[f"{prefix}running_mean"].view(shape), state[f"{prefix}running_var"].view(shape)
    weight, bias = state[f"{prefix}weight"].view(shape), state[f"{prefix}bias"].view(shape)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def lin(x, state, prefix):
    return x @ state[f"{prefix}weight"].T + state[f"{prefix}bias"]


def self_attention_pool(local, state, owner, regions):
    l_emb = lin(local, state, f"{owner}.embedding_local.0.")
    g_emb = lin(local.mean(0), state, f"{owner}.embedding_global.0.")
    if regions:
        l_emb = bn_eval(l_emb, state, f"{owner}.embedding_local.1.", 0)  # channels = region slots
        g_emb = bn_eval(g_emb, state, f"{owner}.embedding_global.1.", 0)
    weights = torch.softmax(
        lin(torch.tanh(l_emb) * torch.tanh(g_emb), state, f"{owner}.embedding_common.0.")[:, 0], 0
    )
    return l2norm((weights[:, None] * local).sum(0))


def sgraf_score(image, caption, o, state):
    context = l2norm(scan_attention(caption, image, "clipped_l2norm", 9.0) @ image)
    sim_loc = l2norm(lin((context - caption) ** 2, state, "sim_tranloc_w."))
    img_glo = self_attention_pool(image, state, "v_global_w", regions=True)
    cap_glo = self_attention_pool(caption, state, "t_global_w", regions=False)
    sim_glo = l2norm(lin((img_glo - cap_glo) ** 2, state, "sim_tranglo_w."))
    nodes = torch.cat([sim_glo[None], sim_loc], 0)
    if o["module_name"] == "SGR":
        for i in range(o["sgr_step"]):
            query = lin(nodes, state, f"SGR_module.{i}.graph_query_w.")
            key = lin(nodes, state, f"SGR_module.{i}.graph_key_w.")
            nodes = torch.relu(
                lin(torch.softmax(query @ key.T, -1) @ nodes, state, f"SGR_module.{i}.sim_graph_w.")
            )
        vector = nodes[0]
    else:
        gate = torch.sigmoid(
            bn_eval(lin(nodes, state, "SAF_module.attn_sim_w.")[:, 0], state, "SAF_module.bn.", 0)
        )
        gate = gate / (gate.abs().sum() + 1e-8)
        vector = l2norm(gate @ nodes)
    return torch.sigmoid(lin(vector, state, "sim_eval_w."))[0]


def positions(n, dim):
    return torch.tensor(
        [[math.sin(p / 10000 ** (i / dim)) if i % 2 == 0 else math.cos(p / 10000 ** ((i - 1) / dim))
          for i in range(dim)] for p in range(n)]
    )  # fmt: skip


def bi_gru_mean(state, prefix, inputs, hidden):
    gru = torch.nn.GRU(inputs.shape[-1], hidden, 1, batch_first=True, bidirectional=True)
    gru.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    out = gru(inputs[None])[0][0]
    return (out[:, :hidden] + out[:, hidden:]) / 2


def original_gpo(state, features):
    """VSE-infinity's GPO on one set (n, D): weights from a bi-GRU over positional encodings, softmax / 0.1."""
    states = bi_gru_mean(state, "gpool.gru.", positions(len(features), GPO_DIM), GPO_DIM)
    weights = torch.softmax(states @ state["gpool.linear.weight"][0] / 0.1, dim=0)
    return (features.sort(dim=0, descending=True).values * weights[:, None]).sum(0)


def vse_infty_scores(states, features, ids):
    image_state, text_state_ = states
    images = []
    for x in features:
        hidden = torch.relu(bn_eval(lin(x, image_state, "mlp.layers.0."), image_state, "mlp.bns.0.", 1))
        regions = lin(x, image_state, "fc.") + lin(hidden, image_state, "mlp.layers.1.")
        images.append(l2norm(original_gpo(image_state, regions)))
    captions = []
    for caption in ids:
        words = bi_gru_mean(
            text_state_, "rnn.", text_state_["embed.weight"][torch.tensor(caption)], EMBED_DIM
        )
        captions.append(l2norm(original_gpo(text_state_, words)))
    return torch.stack(images) @ torch.stack(captions).T


def chan_scores(states, options, features, ids):
    image_state, text_state_ = states[:2]
    images = []
    for x in features:
        regions = lin(x, image_state, "fc.")
        if options["precomp_enc_type"] == "selfattention":
            attention = torch.nn.MultiheadAttention(EMBED_DIM, 8, batch_first=True)
            attention.load_state_dict(
                {k.removeprefix("feedforward.attn."): v for k, v in image_state.items() if "attn" in k}
            )
            normed = F.layer_norm(
                regions,
                (EMBED_DIM,),
                image_state["feedforward.ln.weight"],
                image_state["feedforward.ln.bias"],
            )
            regions = regions + attention(normed[None], normed[None], normed[None])[0][0]
        images.append(l2norm(regions))
    captions = [
        l2norm(bi_gru_mean(text_state_, "rnn.", text_state_["embed.weight"][torch.tensor(c)], EMBED_DIM))
        for c in ids
    ]
    scores = torch.empty(len(images), len(captions))
    for i, image in enumerate(images):
        for c, caption in enumerate(captions):
            sims = image @ caption.T  # (regions, words)
            best = sims.max(dim=0).values if options["coding_type"] == "VHACoding" else sims.max(dim=1).values
            if options["pooling_type"] == "LSEPooling":
                scores[i, c] = torch.logsumexp(best / options["belta"], dim=0)
            else:
                scores[i, c] = best.mean()
    return scores


def original_scores(arch, checkpoint, options, features, ids):
    states = checkpoint["model"]
    if arch == "vse_infty":
        return vse_infty_scores(states, features, ids)
    if arch == "chan":
        return chan_scores(states, options, features, ids)
    images = original_images(states[0], features, not options["no_imgnorm"])
    captions = original_captions(states[1], "cap_rnn" if arch == "sgraf" else "rnn", ids, options)
    scores = torch.empty(len(images), len(captions))
    for i, image in enumerate(images):
        for c, caption in enumerate(captions):
            if arch == "scan":
                scores[i, c] = scan_score(image, caption, options)
            elif arch == "bfan":
                scores[i, c] = bfan_score(image, caption, options)
            else:
                scores[i, c] = sgraf_score(image, caption, options, states[2])
    return scores


# ------------------------------------------------------------------ tests
def converted_scores(model_dir, features):
    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        regions = model.get_image_features(features, mask)
        words = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])
        return model.similarity(regions, mask, words, tokens["attention_mask"].bool()), tokens


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_model_scores_equal_the_original_formulas(tmp_path, case):
    arch, model_options = CASES[case]
    checkpoint, options = original_checkpoint(arch, model_options)
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    vocab_path, word2idx = vocab_file(tmp_path)
    conversion = convert_checkpoint(tmp_path / "model_best.pth.tar", vocab_path)
    assert conversion.architecture == arch  # guessed from the file
    write_conversion(conversion, tmp_path / "converted")

    features = torch.randn(N_IMAGES, N_REGIONS, FEATURE_DIM, generator=torch.Generator().manual_seed(1))
    ids = [[1, *(word2idx[w] for w in caption.split()), 2] for caption in CAPTIONS]
    expected = original_scores(arch, checkpoint, options, features, ids)
    scores, tokens = converted_scores(tmp_path / "converted", features)
    assert [row[: len(i)] for row, i in zip(tokens["input_ids"].tolist(), ids, strict=True)] == ids
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert expected.std() > 1e-3  # the scores differ between pairs: a wrong weight would show


def test_conversion_json_records_the_source_and_the_options(tmp_path):
    checkpoint, options = original_checkpoint(*CASES["sgr_bigru"])
    path = tmp_path / "model_best.pth.tar"
    torch.save(checkpoint, path)
    vocab_path, _ = vocab_file(tmp_path)
    write_conversion(convert_checkpoint(path, vocab_path), tmp_path / "out")
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert record["converted_from"] == "model_best.pth.tar"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (record["epoch"], record["best_rsum"], record["eiters"]) == (17, 432.5, 4321)
    assert record["options"] == options
    assert record["architecture"] == "sgraf" and record["model_type"] == "xmatch_sgr"
    assert not any(p.suffix in (".tar", ".pth", ".bin", ".pt") for p in (tmp_path / "out").iterdir())


class WritesAFile:
    """A pickle payload: unpickling it calls exec, which writes `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_with_another_global_is_refused_before_its_code_runs(tmp_path, zip_format):
    checkpoint, _ = original_checkpoint(*CASES["scan_t2i_avg_bigru"])
    marker = tmp_path / "payload_ran"
    checkpoint["opt"].payload = WritesAFile(marker)
    path = tmp_path / "evil.pth.tar"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    vocab_path, _ = vocab_file(tmp_path)
    with pytest.raises(ConversionError, match=r"refusing to load: the pickle references (builtins\.)?exec"):
        convert_checkpoint(path, vocab_path)
    assert not marker.exists()
    # The payload is live: unrestricted unpickling runs it (which is why the converter never does).
    torch.load(path, weights_only=False)
    assert marker.read_text() == "ran"


def test_legacy_non_zip_checkpoints_convert(tmp_path):
    checkpoint, _ = original_checkpoint(*CASES["bfan_prob"])
    torch.save(checkpoint, tmp_path / "old.pth.tar", _use_new_zipfile_serialization=False)
    vocab_path, _ = vocab_file(tmp_path)
    assert convert_checkpoint(tmp_path / "old.pth.tar", vocab_path).architecture == "bfan"


@pytest.mark.parametrize(
    ("case", "option", "value"),
    [
        ("scan_t2i_avg_bigru", "raw_feature_norm", "clipped"),
        ("scan_t2i_avg_bigru", "raw_feature_norm", "l1norm"),
        ("scan_t2i_avg_bigru", "precomp_enc_type", "backup"),
        ("scan_t2i_avg_bigru", "agg_func", "Median"),
        ("scan_t2i_avg_bigru", "cross_attn", "both"),
        ("bfan_equal", "focal_type", "soft"),
        ("sgr_bigru", "module_name", "AVE"),
        ("vse_infty_bigru", "precomp_enc_type", "backbone"),
        ("vse_infty_bigru", "no_imgnorm", True),
        ("chan_vha_lse_selfattention", "coding_type", "VSACoding"),
        ("chan_vha_lse_selfattention", "pooling_type", "GPOPooling"),
        ("chan_vha_lse_selfattention", "precomp_enc_type", "transformer"),
        ("chan_vha_lse_selfattention", "criterion", "InfoNCELoss"),
        ("scan_t2i_avg_bigru", "margin", "0.2"),
        ("chan_tha_mean_basic", "belta", None),
        ("bfan_equal", "max_violation", "yes"),
    ],
)
def test_an_option_value_we_do_not_implement_is_refused_naming_it(tmp_path, case, option, value):
    checkpoint, _ = original_checkpoint(*CASES[case])
    setattr(checkpoint["opt"], option, value)
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    vocab_path, _ = vocab_file(tmp_path)
    with pytest.raises(ConversionError, match=re.escape(f"opt.{option}={value!r}")):
        convert_checkpoint(tmp_path / "model_best.pth.tar", vocab_path)


def test_options_that_contradict_the_tensors_are_refused(tmp_path):
    checkpoint, _ = original_checkpoint(*CASES["scan_t2i_avg_bigru"])
    checkpoint["opt"].bi_gru = False
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    vocab_path, _ = vocab_file(tmp_path)
    with pytest.raises(ConversionError, match=re.escape("opt.bi_gru=False but the GRU weights")):
        convert_checkpoint(tmp_path / "model_best.pth.tar", vocab_path)


def test_leftover_tensors_on_either_side_are_listed(tmp_path):
    checkpoint, _ = original_checkpoint(*CASES["saf_gru"])
    checkpoint["model"][0]["fc.extra"] = torch.zeros(3)
    del checkpoint["model"][2]["SAF_module.bn.running_var"]
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    vocab_path, _ = vocab_file(tmp_path)
    with pytest.raises(ConversionError) as caught:
        convert_checkpoint(tmp_path / "model_best.pth.tar", vocab_path)
    message = str(caught.value)
    assert "unused original tensors ['model[0].fc.extra']" in message
    assert "model tensors with no source ['filtration.norm.running_var']" in message


def test_a_vocabulary_of_another_size_is_refused(tmp_path):
    checkpoint, _ = original_checkpoint(*CASES["scan_t2i_avg_bigru"])
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    vocab_path, word2idx = vocab_file(tmp_path)
    word2idx["extra"] = len(word2idx)
    vocab_path.write_text(
        json.dumps(
            {"word2idx": word2idx, "idx2word": {str(i): w for w, i in word2idx.items()}, "idx": len(word2idx)}
        )
    )
    with pytest.raises(
        ConversionError, match=re.escape("embed.weight has 14 rows but the vocabulary file has 15")
    ):
        convert_checkpoint(tmp_path / "model_best.pth.tar", vocab_path)


def test_cli_says_what_it_guessed_and_writes_a_loadable_folder(tmp_path, capsys):
    checkpoint, _ = original_checkpoint(*CASES["scan_i2t_lse_gru_2layers"])
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    vocab_path, _ = vocab_file(tmp_path)
    out = tmp_path / "converted"
    argv = [
        "convert-checkpoint",
        str(tmp_path / "model_best.pth.tar"),
        "--vocab",
        str(vocab_path),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "architecture: scan (guessed: opt has cross_attn" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] and config["direction"] == "i2t" and config["aggregation"] == "lse"
    assert math.isclose(config["lambda_lse"], 5.0)
    # A second conversion into the same folder is a one-line user error (exit code 2).
    assert main(argv) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_the_model_card_says_the_weights_were_converted_and_from_what(tmp_path):
    from modeling_ccr.hub.cards import CardSources, render_model_card

    checkpoint, _ = original_checkpoint(*CASES["saf_gru"])
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    vocab_path, _ = vocab_file(tmp_path)
    out = write_conversion(convert_checkpoint(tmp_path / "model_best.pth.tar", vocab_path), tmp_path / "out")
    metrics = dict.fromkeys(["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"], 50.0) | {
        "rsum": 300.0
    }
    result = {"dataset": "built-in synthetic corpus (seed 0)", "split": "test", "metrics": metrics}
    texts = {name: (out / name).read_text() for name in ("config.json", "conversion.json")}
    texts["eval_results_test.json"] = json.dumps(result)
    card = str(render_model_card(CardSources.from_texts(texts, sorted(texts)), "org/saf-converted"))
    sha = json.loads(texts["conversion.json"])["sha256"]
    assert "not trained by modeling-ccr" in card
    assert f"`model_best.pth.tar` (sha256 `{sha}`; epoch 17" in card
    assert "Paranioar/SGRAF" in card


def test_tensors_the_original_code_never_reads_are_dropped_with_a_note(tmp_path):
    for case, dropped in (
        ("vse_infty_bigru", "model[0].mlp.bns.1.running_mean"),
        ("chan_vha_lse_selfattention", "model[1].fc.weight"),
    ):
        checkpoint, _ = original_checkpoint(*CASES[case])
        torch.save(checkpoint, tmp_path / f"{case}.pth")
        vocab_path, _ = vocab_file(tmp_path)
        notes = convert_checkpoint(tmp_path / f"{case}.pth", vocab_path).provenance["notes"]
        assert any(dropped in note for note in notes), notes
        assert any("'<mask>'" in note for note in notes), notes


def test_a_nan_weight_is_refused_naming_the_tensor(tmp_path):
    checkpoint, _ = original_checkpoint(*CASES["chan_vha_lse_selfattention"])
    checkpoint["model"][0]["feedforward.attn.in_proj_weight"][0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "model_best.pth")
    vocab_path, _ = vocab_file(tmp_path)
    with pytest.raises(
        ConversionError, match=re.escape("model[0].feedforward.attn.in_proj_weight has 1 NaN")
    ):
        convert_checkpoint(tmp_path / "model_best.pth", vocab_path)


class Unlisted:
    """An arbitrary class: a legacy pickle of it names `test_original_checkpoints.Unlisted` as a global."""


def test_a_legacy_checkpoint_with_a_forbidden_global_names_it_and_never_advises_weights_only_false(tmp_path):
    checkpoint, _ = original_checkpoint(*CASES["vse_infty_bigru"])
    checkpoint["opt"].extra = Unlisted()
    torch.save(checkpoint, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    vocab_path, _ = vocab_file(tmp_path)
    with pytest.raises(ConversionError) as caught:
        convert_checkpoint(tmp_path / "old.pth", vocab_path)
    message = str(caught.value)
    assert "Unlisted" in message and "refusing to load" in message
    assert "weights_only" not in message and "\n" not in message


# ------------------------------------------------------------------ BERT text encoders (VSE-infinity, CHAN)
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def bert_folder(tmp_path):
    """A tiny BERT's transformers folder (config, fast tokenizer): what --text-encoder points at."""
    from transformers import BertConfig, BertTokenizerFast

    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("".join(f"{w}\n" for w in BERT_WORDS))
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(BERT_WORDS), hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=32,
    )  # fmt: skip
    config.save_pretrained(folder)
    return folder, config


def bert_text_state(config, gen):
    from transformers import BertModel

    bert = BertModel(config)
    state = {f"bert.{k}": v.clone() for k, v in bert.state_dict().items()}
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=gen) * 0.2
    # transformers 4.18 (the original code's) saved this constant buffer; today's does not.
    state["bert.embeddings.position_ids"] = torch.arange(config.max_position_embeddings)[None]
    return state | linear(EMBED_DIM, config.hidden_size, gen, "linear.")


def original_bert_words(state, config, ids):
    from transformers import BertModel

    bert = BertModel(config).eval()
    bert.load_state_dict(
        {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}, strict=False
    )
    out = []
    for caption in ids:
        tokens = torch.tensor([caption])
        with torch.no_grad():
            states = bert(tokens, (tokens != 0).float())[0][0]
        out.append(lin(states, state, "linear."))
    return out


@pytest.mark.parametrize("arch", ["vse_infty", "chan"])
def test_bert_text_checkpoints_convert_with_the_bert_folder(tmp_path, arch):
    folder, bert_config = bert_folder(tmp_path)
    gen = torch.Generator().manual_seed(3)
    if arch == "vse_infty":
        options = {**VSE_INFTY_OPTIONS, "vocab_size": len(BERT_WORDS)}
        image = vse_infty_states(gen, options)[0]
        text = bert_text_state(bert_config, gen) | gpo_state(gen)
        states = [image, text]
    else:
        options = {**CHAN_OPTIONS, "text_enc_type": "bert", "coding_type": "VHACoding", "pooling_type": "MeanPooling",
                   "precomp_enc_type": "basic", "wemb_type": None, "word2idx": None}  # fmt: skip
        states = [linear(EMBED_DIM, FEATURE_DIM, gen, "fc."), bert_text_state(bert_config, gen), {}, {}]
    checkpoint = {
        "epoch": 3,
        "model": states,
        "best_rsum": 400.0,
        "opt": argparse.Namespace(**{**COMMON_OPTIONS, **options}),
    }
    torch.save(checkpoint, tmp_path / "model_best.pth")
    conversion = convert_checkpoint(tmp_path / "model_best.pth", None, text_encoder=folder)
    assert any("position_ids" in note for note in conversion.provenance["notes"])
    write_conversion(conversion, tmp_path / "converted")

    model = AutoModel.from_pretrained(tmp_path / "converted").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "converted")
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    ids = [[i for i in row if i != 0] for row in tokens["input_ids"].tolist()]
    features = torch.randn(N_IMAGES, N_REGIONS, FEATURE_DIM, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        regions = model.get_image_features(features, mask)
        words = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])
        scores = model.similarity(regions, mask, words, tokens["attention_mask"].bool())
    text_words = original_bert_words(states[1], bert_config, ids)
    if arch == "vse_infty":
        image_state = states[0]
        images = []
        for x in features:
            hidden = torch.relu(bn_eval(lin(x, image_state, "mlp.layers.0."), image_state, "mlp.bns.0.", 1))
            images.append(
                l2norm(
                    original_gpo(
                        image_state, lin(x, image_state, "fc.") + lin(hidden, image_state, "mlp.layers.1.")
                    )
                )
            )
        captions = torch.stack([l2norm(original_gpo(states[1], w)) for w in text_words])
        expected = torch.stack(images) @ captions.T
    else:
        images = [l2norm(lin(x, states[0], "fc.")) for x in features]
        expected = torch.tensor(
            [[(image @ l2norm(w).T).max(dim=0).values.mean() for w in text_words] for image in images]
        )
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert expected.std() > 1e-3


def test_a_bert_checkpoint_without_its_bert_folder_says_what_to_pass(tmp_path):
    _, bert_config = bert_folder(tmp_path)
    gen = torch.Generator().manual_seed(3)
    states = [linear(EMBED_DIM, FEATURE_DIM, gen, "fc."), bert_text_state(bert_config, gen), {}, {}]
    options = {**COMMON_OPTIONS, **CHAN_OPTIONS, "text_enc_type": "bert", "coding_type": "VHACoding",
               "pooling_type": "MeanPooling", "precomp_enc_type": "basic"}  # fmt: skip
    torch.save({"model": states, "opt": argparse.Namespace(**options)}, tmp_path / "model_best.pth")
    vocab_path, _ = vocab_file(tmp_path)
    with pytest.raises(ConversionError, match=r"its text encoder is BERT .* pass --text-encoder DIR"):
        convert_checkpoint(tmp_path / "model_best.pth", vocab_path)
