"""Caption queries against a one-million-image synthetic gallery: first-stage index plus exact re-ranking.

Data: synthetic only (NOT Flickr30K or COCO features, and no trained model): --images global image
embeddings (unit vectors around --clusters random centres, the shape real embeddings have), and per
image --regions region embeddings of size --dim read from a pool of 4096 distinct images' regions by id
(a stand-in for a region store on disk; the gather is included in the re-rank time). The
re-ranker is a SCAN t2i-AVG model with random weights (its scores mean nothing; its cost is SCAN's). Each
caption query has a global vector near one gallery image and --words word embeddings.

It prints: the index kind and parameters (`evaluation/index.py`, chosen from the gallery size), build
seconds, the index's memory and the process's peak resident memory, the shortlist's recall against brute
force, and per caption query (one query at a time, median / 90th percentile / max over --queries) the
first stage's latency, the re-ranking's latency (regions gathered, k pairs scored) and their sum; then the
same for all queries as one batch, per query. The device is the model's (--device).

    python benchmarks/million_gallery.py [--images 1000000 --k 32 --queries 50 --dim 256 --device cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.evaluation.index import GalleryIndex, shortlist_recall
from modeling_ccr.evaluation.two_stage import rerank_shortlists


def global_gallery(n_images: int, dim: int, n_clusters: int, seed: int = 0) -> torch.Tensor:
    """`(n_images, dim)` unit vectors around random centres, built in chunks to bound the peak memory."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=generator), dim=-1)
    out = torch.empty(n_images, dim)
    for start in range(0, n_images, 1 << 17):
        stop = min(n_images, start + (1 << 17))
        labels = torch.randint(0, n_clusters, (stop - start,), generator=generator)
        noise = torch.randn(stop - start, dim, generator=generator)
        out[start:stop] = F.normalize(centres[labels] + 0.5 * noise / dim**0.5, dim=-1)
    return out


class RegionStore:
    """Region embeddings of any image id: rows of a pool of `pool` distinct images' regions, image i
    reading row i mod pool (a stand-in for a region store on disk: one gather per query)."""

    def __init__(self, pool: int, n_regions: int, dim: int, device: torch.device, seed: int = 2):
        generator = torch.Generator().manual_seed(seed)
        self.rows = F.normalize(torch.randn(pool, n_regions, dim, generator=generator), dim=-1).to(device)

    def __call__(self, image_ids: torch.Tensor) -> torch.Tensor:
        """`(len(image_ids), n_regions, dim)`."""
        return self.rows[image_ids.to(self.rows.device) % len(self.rows)]


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{1e3 * statistics.median(ordered):.1f} / {1e3 * p90:.1f} / {1e3 * ordered[-1]:.1f} ms"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--global-dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--dim", type=int, default=256, help="region / word embedding size of the re-ranker")
    parser.add_argument("--words", type=int, default=14)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--recall-queries", type=int, default=20)
    parser.add_argument("--kind", default="auto", choices=["auto", "flat", "ivf"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"device: {device} ({name}), {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, load average {os.getloadavg()[0]:.1f}; data: synthetic embeddings "
        "(not Flickr30K/COCO), re-ranker SCAN t2i-AVG with random weights"
    )
    start = time.perf_counter()
    gallery = global_gallery(args.images, args.global_dim, args.clusters)
    print(
        f"gallery: {args.images} images, global dim {args.global_dim}, drawn in {time.perf_counter() - start:.1f} s"
    )

    start = time.perf_counter()
    index = GalleryIndex.build(gallery, kind=args.kind)
    build = time.perf_counter() - start
    p = index.parameters
    index_bytes = args.images * (args.global_dim * 4 + (8 if p.kind == "ivf" else 0))
    print(
        f"index: {p.kind} (lists {p.n_lists}, probed {p.n_probe}), built in {build:.1f} s; vectors and ids "
        f"{index_bytes / 2**30:.2f} GiB; process peak RSS {peak_rss_gib():.2f} GiB"
    )

    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(0, args.images, (args.queries,), generator=generator)
    noise = torch.randn(args.queries, args.global_dim, generator=generator) / args.global_dim**0.5
    queries = F.normalize(gallery[targets] + 0.2 * noise, dim=-1)
    recall = shortlist_recall(index, gallery, queries[: args.recall_queries], args.k)
    print(f"shortlist recall@{args.k} against brute force ({args.recall_queries} queries): {recall:.3f}")

    torch.manual_seed(0)
    model = ScanModel(ScanConfig(embed_dim=args.dim)).eval().to(device)
    words = F.normalize(torch.randn(args.queries, args.words, args.dim, generator=generator), dim=-1).to(
        device
    )
    word_mask = torch.ones(args.queries, args.words, dtype=torch.bool, device=device)
    region_mask = torch.ones(args.k, args.regions, dtype=torch.bool, device=device)
    regions_of = RegionStore(4096, args.regions, args.dim, device)
    first, second = [], []
    with torch.no_grad():
        for q in range(args.queries):
            start = time.perf_counter()
            _, found = index.search(queries[q : q + 1], args.k)
            middle = time.perf_counter()
            candidates = found[0]
            regions = regions_of(candidates.clamp_min(0))
            # The shortlist's images are the gallery passed to the re-ranker: candidate j is image row j.
            local = torch.arange(args.k, device=device)[None].masked_fill(candidates[None].to(device) < 0, -1)
            scores = rerank_shortlists(
                model, regions, region_mask, words[q : q + 1], word_mask[q : q + 1], local, "captions"
            )
            scores.cpu()
            end = time.perf_counter()
            first.append(middle - start)
            second.append(end - middle)
    total = [a + b for a, b in zip(first, second, strict=True)]
    print(f"per caption query, one at a time (median / p90 / max over {args.queries}):")
    print(
        f"  first stage {percentiles(first)}; re-rank of k = {args.k} {percentiles(second)}; total {percentiles(total)}"
    )

    with torch.no_grad():
        start = time.perf_counter()
        _, found = index.search(queries, args.k)
        middle = time.perf_counter()
        unique, local = torch.unique(found.clamp_min(0), return_inverse=True)
        regions = regions_of(unique)
        scores = rerank_shortlists(
            model,
            regions,
            torch.ones(len(unique), args.regions, dtype=torch.bool, device=device),
            words,
            word_mask,
            local.masked_fill(found < 0, -1).to(device),
            "captions",
        )
        scores.cpu()
        end = time.perf_counter()
    print(
        f"all {args.queries} queries as one batch: first stage {1e3 * (middle - start) / args.queries:.1f} ms, "
        f"re-rank {1e3 * (end - middle) / args.queries:.1f} ms, total {1e3 * (end - start) / args.queries:.1f} ms "
        f"per query; process peak RSS {peak_rss_gib():.2f} GiB"
    )


if __name__ == "__main__":
    main()
