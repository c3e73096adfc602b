"""Training-step time of SCAN with both constraints (CCR + CCS) against without, in one run.

Times forward + backward + optimiser step on identical batches shaped like the demo (batch 128,
24 regions of 128-d features, captions of ~14 tokens, 256-d embeddings), alternating the two models so
that machine load affects both alike, and prints the median step times and their ratio. Target: the
constrained step costs at most 1.3x the plain one.

    python benchmarks/constraint_step_time.py [--steps 20] [--direction t2i] [--ccs-mode swap_keys]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from modeling_ccr import ScanConfig, ScanModel


def make_batch(batch: int, n_regions: int, feature_dim: int, n_tokens: int, vocab: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n_regions, feature_dim, generator=generator)
    region_mask = torch.ones(batch, n_regions, dtype=torch.bool)
    input_ids = torch.randint(4, vocab, (batch, n_tokens), generator=generator)
    lengths = torch.randint(n_tokens // 2, n_tokens + 1, (batch,), generator=generator)
    attention_mask = (torch.arange(n_tokens)[None, :] < lengths[:, None]).long()
    return features, region_mask, input_ids, attention_mask


def step_seconds(model: ScanModel, optimizer: torch.optim.Optimizer, batch) -> float:
    start = time.perf_counter()
    loss = model(*batch, return_loss=True).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--direction", default="t2i", choices=["t2i", "i2t"])
    parser.add_argument("--ccs-mode", default="swap_keys", choices=["swap_keys", "swap_query", "swap_image"])
    args = parser.parse_args()
    common = dict(feature_dim=128, embed_dim=256, word_dim=128, vocab_size=200, direction=args.direction)
    torch.manual_seed(0)
    plain = ScanModel(ScanConfig(**common))
    constrained = ScanModel(ScanConfig(**common, ccr_weight=1.0, ccs_weight=1.0, ccs_mode=args.ccs_mode))
    optimizers = {m: torch.optim.Adam(m.parameters(), lr=1e-4) for m in (plain, constrained)}
    times: dict[ScanModel, list[float]] = {plain: [], constrained: []}
    for step in range(args.steps + 2):
        batch = make_batch(args.batch, 24, 128, 16, 200, seed=step)
        for model in (plain, constrained):
            seconds = step_seconds(model, optimizers[model], batch)
            if step >= 2:  # the first steps warm up allocators and kernels
                times[model].append(seconds)
    base, with_constraints = statistics.median(times[plain]), statistics.median(times[constrained])
    print(f"SCAN {args.direction}, batch {args.batch}, {args.steps} steps each, CCS mode {args.ccs_mode}")
    print(f"median step without constraints: {base * 1000:.1f} ms")
    print(f"median step with CCR + CCS:       {with_constraints * 1000:.1f} ms")
    print(f"ratio: {with_constraints / base:.2f}x (target <= 1.30x)")


if __name__ == "__main__":
    main()
