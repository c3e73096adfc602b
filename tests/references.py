"""Independent references of every backbone's score, written pair by pair from docs/spec.md section 2 and the
backbone papers with plain loops. Each takes one image `(n_regions, D)` with its region mask and one
caption `(n_words, D)` with its word mask, and uses only the valid rows."""

import torch
import torch.nn.functional as F
from test_laps import laps_reference
from test_pooling import reference_gpo
from test_sgraf import reference_score as reference_sgraf


def cos(a, b):
    return F.cosine_similarity(a, b, dim=0, eps=1e-8)


def scan_attention(queries, keys, lambda1, norm="clipped_l2norm"):
    """a[t, j]: SCAN's attention of query t over keys j, normalising the scores over queries first."""
    s = keys @ queries.T  # s[j, t] = <k_j, q_t>
    if norm == "clipped_l2norm":
        s = F.leaky_relu(s, 0.1)
        s = s / (s.norm(dim=1, keepdim=True) + 1e-8)
    elif norm == "l2norm":
        s = s / (s.norm(dim=1, keepdim=True) + 1e-8)
    elif norm == "softmax":
        s = torch.softmax(s, dim=1)
    return torch.stack([torch.softmax(lambda1 * s[:, t], dim=0) for t in range(queries.shape[0])])


def relevances(queries, keys, attention):
    return torch.stack([cos(queries[t], attention[t] @ keys) for t in range(queries.shape[0])])


def pool(r, aggregation, lambda2=1.0):
    if aggregation == "avg":
        return r.mean()
    if aggregation == "sum":
        return r.sum()
    if aggregation == "max":
        return r.max()
    return torch.log(torch.exp(lambda2 * r).sum()) / lambda2


def scan(model, image, region_mask, caption, word_mask):
    config = model.config
    regions, words = image[region_mask], caption[word_mask]
    queries, keys = (words, regions) if config.direction == "t2i" else (regions, words)
    attention = scan_attention(queries, keys, config.lambda_softmax, config.attention_norm)
    return pool(relevances(queries, keys, attention), config.aggregation, config.lambda_lse)


def focal(attention_row, rule):
    """BFAN's re-assigned attention of one query: keep keys with F > 0 (and the best key), renormalise."""
    n = len(attention_row)
    kept = []
    for j in range(n):
        if rule == "equal":
            f = n * attention_row[j] - attention_row.sum()
        else:
            f = sum((attention_row[j] - attention_row[k]) * attention_row[k].sqrt() for k in range(n))
        kept.append(float(f > 0 or attention_row[j] == attention_row.max()))
    focused = attention_row * torch.tensor(kept, dtype=attention_row.dtype)
    return focused / focused.sum()


def bfan(model, image, region_mask, caption, word_mask):
    config = model.config
    regions, words = image[region_mask], caption[word_mask]
    total = 0.0
    for direction in config.directions:
        queries, keys = (words, regions) if direction == "t2i" else (regions, words)
        attention = scan_attention(queries, keys, config.lambda_softmax, config.attention_norm)
        attention = torch.stack([focal(row, config.focal) for row in attention])
        total = total + relevances(queries, keys, attention).mean()
    return total


def vsepp(model, image, region_mask, caption, word_mask):
    return cos(image[region_mask].mean(dim=0), caption[word_mask].mean(dim=0))


def dvsa(model, image, region_mask, caption, word_mask):
    regions, words = image[region_mask], caption[word_mask]
    best = torch.stack([max(word @ region for region in regions) for word in words])
    return pool(best, model.config.aggregation)


def damsm(model, image, region_mask, caption, word_mask):
    """AttnGAN: s = e^T v, softmax over words per region, then softmax over regions of gamma1 s."""
    config = model.config
    regions, words = image[region_mask], caption[word_mask]
    s = torch.softmax(words @ regions.T, dim=0)  # (words, regions), normalised over the words
    attention = torch.softmax(config.gamma1 * s, dim=1)
    r = relevances(words, regions, attention)
    return torch.log(torch.exp(config.gamma2 * r).sum()) / config.gamma2


def vse_infty(model, image, region_mask, caption, word_mask):
    """VSE-infinity: cosine of the GPO-pooled region and word embeddings (GPO reference in test_pooling)."""
    return cos(
        reference_gpo(model.region_pooling, image, region_mask),
        reference_gpo(model.word_pooling, caption, word_mask),
    )


def chan_pool(values, pooling, tau):
    """CHAN's poolings of the per-query best similarities (lib/coding.py of its code): LSE is not rescaled."""
    if pooling == "lse":
        return torch.log(torch.exp(values / tau).sum())
    if pooling == "softmax":
        return (torch.softmax(values / tau, dim=0) * values).sum()
    return pool(values, {"mean": "avg"}.get(pooling, pooling))


def chan(model, image, region_mask, caption, word_mask):
    """CHAN: each word's best region (t2i) and/or each region's best word (i2t), pooled."""
    config = model.config
    regions, words = image[region_mask], caption[word_mask]
    total = 0.0
    for direction in config.directions:
        queries, keys = (words, regions) if direction == "t2i" else (regions, words)
        best = torch.stack([max(query @ key for key in keys) for query in queries])
        total = total + chan_pool(best, config.pooling, config.pooling_temperature)
    return total


def ensemble(model, image, region_mask, caption, word_mask):
    scores = []
    images = image.split([m.config.embed_dim for m in model.members], dim=-1)
    captions = caption.split([m.config.embed_dim for m in model.members], dim=-1)
    for member, member_image, member_caption in zip(model.members, images, captions, strict=True):
        name = next(n for n, fn in REFERENCES.items() if member.config.model_type == f"xmatch_{n}")
        scores.append(REFERENCES[name](member, member_image, region_mask, member_caption, word_mask))
    return torch.stack(scores).mean()


REFERENCES = {
    "scan": scan,
    "bfan": bfan,
    "sgr": lambda *args: reference_sgraf("sgr", *args),
    "saf": lambda *args: reference_sgraf("saf", *args),
    "vsepp": vsepp,
    "dvsa": dvsa,
    "damsm": damsm,
    "vse_infty": vse_infty,
    "chan": chan,
    "laps": laps_reference,
    "ensemble": ensemble,
}


def reference_scores(name, model, image_embeds, region_mask, text_embeds, word_mask):
    """`(n_images, n_captions)` scores of backbone `name`, pair by pair."""
    return torch.stack(
        [
            torch.stack(
                [
                    REFERENCES[name](model, image_embeds[i], region_mask[i], text_embeds[c], word_mask[c])
                    for c in range(len(text_embeds))
                ]
            )
            for i in range(len(image_embeds))
        ]
    )
