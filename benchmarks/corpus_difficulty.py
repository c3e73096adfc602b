"""How hard is the built-in synthetic corpus for a matcher with no region-word attention?

Trains a global-pooling matcher (a linear projection of mean-pooled region features vs mean-pooled
learned word embeddings, cosine) with the library's VSE++ hinge loss, and prints validation and test
retrieval next to chance level, computed with the library's metrics. The corpus is built so that this
bag-of-features matcher cannot solve it (attribute-object binding twins); `ccr demo` trains SCAN on the
same corpus for comparison. Measured on the built-in synthetic corpus only.

    python benchmarks/corpus_difficulty.py            # ~15 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from modeling_ccr.data.collator import pad_regions, tokenize_captions
from modeling_ccr.data.pairs import ImageFeatures, caption_table
from modeling_ccr.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from modeling_ccr.metrics.retrieval import chance_metrics, evaluate_retrieval, format_results_table
from modeling_ccr.models.losses import hinge_triplet_loss
from modeling_ccr.text.tokenization import build_word_tokenizer


class GlobalPooling(nn.Module):
    """Mean-pooled regions (linear) vs mean-pooled word embeddings, cosine: `(n_images, n_captions)`."""

    def __init__(self, feature_dim: int, vocab_size: int, pad_id: int, dim: int = 256) -> None:
        super().__init__()
        self.image = nn.Linear(feature_dim, dim)
        self.words = nn.Embedding(vocab_size, dim, padding_idx=pad_id)

    def forward(self, features, region_mask, input_ids, attention_mask) -> torch.Tensor:
        regions = (features * region_mask[..., None]).sum(1) / region_mask.sum(1, keepdim=True)
        words = (self.words(input_ids) * attention_mask[..., None]).sum(1) / attention_mask.sum(
            1, keepdim=True
        )
        return F.normalize(self.image(regions), dim=-1) @ F.normalize(words, dim=-1).T


def split_tensors(dataset, tokenizer) -> dict:
    images = ImageFeatures(dataset)
    features, region_mask = pad_regions([images[i]["features"] for i in range(len(images))])
    captions, caption_to_image = caption_table(dataset)
    input_ids, attention_mask = tokenize_captions(tokenizer, captions)
    return {
        "features": features,
        "region_mask": region_mask.float(),
        "input_ids": input_ids,
        "attention_mask": attention_mask.float(),
        "caption_to_image": torch.as_tensor(caption_to_image),
    }


def train(model: GlobalPooling, data: dict, steps: int, batch: int, lr: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    n_captions = len(data["input_ids"])
    for step in range(steps):
        captions = torch.randperm(n_captions, generator=generator)[:batch]
        images = data["caption_to_image"][captions]
        scores = model(
            data["features"][images],
            data["region_mask"][images],
            data["input_ids"][captions],
            data["attention_mask"][captions],
        )
        same_image = images[:, None] == images[None, :]
        loss = hinge_triplet_loss(scores, scores, margin=0.2, max_violation=True, same_image=same_image)
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimiser.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"  step {step:4d} loss {loss.item():8.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0, help="corpus and training seed")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    start = time.time()
    corpus = build_synthetic_corpus(SyntheticCorpusConfig(seed=args.seed))
    tokenizer = build_word_tokenizer(caption_table(corpus["train"])[0], min_count=4)
    data = {split: split_tensors(corpus[split], tokenizer) for split in corpus}
    model = GlobalPooling(data["train"]["features"].shape[-1], len(tokenizer), tokenizer.pad_token_id)
    train(model, data["train"], args.steps, args.batch, args.lr, args.seed)
    model.eval()
    for split in ("validation", "test"):
        tensors = data[split]
        with torch.no_grad():
            scores = model(
                tensors["features"], tensors["region_mask"], tensors["input_ids"], tensors["attention_mask"]
            )
        metrics = evaluate_retrieval(scores, tensors["caption_to_image"], check_captions_per_image=5)
        print(f"\nglobal pooling, {split} split of the built-in synthetic corpus (seed {args.seed})")
        print(format_results_table(metrics, chance_metrics(metrics["n_images"], 5)))
    print(f"\ntotal {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
