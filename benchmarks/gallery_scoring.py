"""Full-gallery scoring time per backbone against the GEMM bound, measured in one run.

Data: random l2-normalised embeddings (NOT Flickr30K or COCO features), 36 regions per image, caption
lengths drawn around Flickr30K's mean of 14.3 tokens. For every backbone it prints: the GEMM bound (the
one product of all regions with all words, unpadded), the reference formula pair by pair on a subset,
an original-style per-caption loop on a subset, ours (`model.similarity`), their ratios to the bound,
the largest difference from the reference, the peak extra RSS of our scoring, and the times extrapolated
to Flickr30K test (1000 x 5000) and COCO 5K (5000 x 25000). For SGR and SAF it also prints the FLOP floor
of the model (work its definition cannot avoid) and our ratio to it. Every time is the minimum of
`--repeats` runs. With `--compile` it also times `model.similarity(..., compile=True)` (the compiled tile
kernel of SCAN and BFAN, the compiled `score_pairs` of the others) against the eager path in the same run:
the first call (compilation included), the steady-state time and the largest score difference.

With `--contention` it prints instead, for each backbone, the contention table: the GEMM bound, the
per-caption loop and ours with 1, 2 and all threads and under `free_core_threads` ("free cores": as many
threads as cores are idle when the call starts, the policy `similarity` would use), each on the machine as found and with one added competing process busy on
one core, alternated over `--repeats` rounds (min/median/max), and each one's slowdown under the added
load (median with / median without).

    python benchmarks/gallery_scoring.py [--images 100 --captions 500 --backbones scan_t2i,bfan ...]
    python benchmarks/gallery_scoring.py --contention --backbones scan_t2i_avg --images 60 --captions 300
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

from modeling_ccr.models.configuration_bfan import BfanConfig
from modeling_ccr.models.configuration_chan import ChanConfig
from modeling_ccr.models.configuration_dvsa import DvsaConfig
from modeling_ccr.models.configuration_laps import LapsConfig
from modeling_ccr.models.configuration_scan import ScanConfig
from modeling_ccr.models.configuration_sgraf import SafConfig, SgrConfig
from modeling_ccr.models.configuration_vse_infty import VseInftyConfig
from modeling_ccr.models.gallery_scoring import free_core_threads
from modeling_ccr.models.modeling_bfan import BfanModel
from modeling_ccr.models.modeling_chan import ChanModel
from modeling_ccr.models.modeling_dvsa import DvsaModel
from modeling_ccr.models.modeling_laps import LapsModel
from modeling_ccr.models.modeling_scan import ScanModel
from modeling_ccr.models.modeling_sgraf import SafModel, SgrModel
from modeling_ccr.models.modeling_vse_infty import VseInftyModel

FLICKR30K_TEST = (1000, 5000)
COCO_5K = (5000, 25000)
MEAN_CAPTION_TOKENS = 14.3

BACKBONES: dict[str, Callable[[int], torch.nn.Module]] = {
    "scan_t2i_avg": lambda d: ScanModel(ScanConfig(embed_dim=d, direction="t2i", aggregation="avg")),
    "scan_i2t_lse": lambda d: ScanModel(
        ScanConfig(embed_dim=d, direction="i2t", aggregation="lse", lambda_softmax=4.0, lambda_lse=5.0)
    ),
    "bfan": lambda d: BfanModel(BfanConfig(embed_dim=d)),
    "bfan_prob": lambda d: BfanModel(BfanConfig(embed_dim=d, focal="prob")),
    "sgr": lambda d: SgrModel(SgrConfig(embed_dim=d)),
    "saf": lambda d: SafModel(SafConfig(embed_dim=d)),
    "dvsa": lambda d: DvsaModel(DvsaConfig(embed_dim=d)),
    "chan": lambda d: ChanModel(ChanConfig(embed_dim=d)),
    "vse_infty": lambda d: VseInftyModel(VseInftyConfig(embed_dim=d)),
    # LAPS slims each image's 36 regions per caption (configs/laps_tiny.yaml's ratios).
    "laps": lambda d: LapsModel(
        LapsConfig(embed_dim=d, num_patches=36, keep_ratio=0.5, aggregation_ratio=0.5)
    ),
}
# Backbones whose exact scoring is far above the GEMM bound run on a smaller gallery.
SLOW = ("sgr", "saf")


def gallery(n_images: int, n_captions: int, n_regions: int, dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lengths = (torch.randn(n_captions, generator=generator) * 4.5 + MEAN_CAPTION_TOKENS).round().clamp(5, 60)
    n_words = int(lengths.max())
    images = F.normalize(torch.randn(n_images, n_regions, dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(n_captions, n_words, dim, generator=generator), dim=-1)
    region_mask = torch.ones(n_images, n_regions, dtype=torch.bool)
    word_mask = torch.arange(n_words)[None, :] < lengths[:, None]
    return images, region_mask, texts * word_mask[..., None], word_mask


def min_time(function: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def peak_extra_rss(function: Callable[[], object]) -> int:
    """Peak resident memory above the starting level while `function` runs (sampled every millisecond)."""
    start, peak, done = rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    function()
    done.set()
    thread.join()
    return max(peak[0], rss_bytes()) - start


def gemm_bound(images: torch.Tensor, texts: torch.Tensor, word_mask: torch.Tensor, repeats: int) -> float:
    """Time of the product of all regions with all (unpadded) words, in column chunks of bounded size."""
    regions = images.reshape(-1, images.shape[-1])
    words = texts[word_mask]
    chunk = max(1, (64 << 20) // (4 * regions.shape[0]))

    def product():
        for start in range(0, words.shape[0], chunk):
            torch.mm(regions, words[start : start + chunk].T)

    return min_time(product, repeats)


def original_style_scores(model, images: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
    """docs/spec.md section 2 for one caption `(m, D)` against images `(n_images, n, D)` (all valid), building the
    attended vectors c_t as the original SCAN/BFAN code does. Returns `(n_images,)`."""
    config = model.config
    directions = (config.direction,) if isinstance(model, ScanModel) else config.directions
    captions = caption.expand(images.shape[0], -1, -1)
    total = 0.0
    for direction in directions:
        queries, keys = (captions, images) if direction == "t2i" else (images, captions)
        s = F.leaky_relu(torch.bmm(keys, queries.transpose(1, 2)), 0.1)  # (batch, keys, queries)
        s = s / (s.norm(dim=2, keepdim=True) + 1e-8)
        attention = torch.softmax(config.lambda_softmax * s.transpose(1, 2), dim=2)  # (batch, queries, keys)
        if isinstance(model, BfanModel):
            n = attention.shape[2]
            if config.focal == "equal":
                keep = n * attention > attention.sum(dim=2, keepdim=True)
            else:
                root = attention.sqrt()
                keep = attention * root.sum(2, keepdim=True) > (attention * root).sum(2, keepdim=True)
            keep |= attention == attention.amax(dim=2, keepdim=True)
            attention = attention * keep
            attention = attention / attention.sum(dim=2, keepdim=True)
        relevance = F.cosine_similarity(queries, torch.bmm(attention, keys), dim=2)
        if isinstance(model, ScanModel) and config.aggregation == "lse":
            total = total + torch.logsumexp(config.lambda_lse * relevance, 1) / config.lambda_lse
        else:
            total = total + relevance.mean(dim=1)
    return total


def reference_pair(model, image: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
    """The score of one pair: the formula above on one image (SCAN, BFAN), or the model on one pair."""
    if isinstance(model, (ScanModel, BfanModel)):
        return original_style_scores(model, image[None], caption)[0]
    ones = torch.ones(1, len(image), dtype=torch.bool), torch.ones(1, len(caption), dtype=torch.bool)
    return model.score_pairs(image[None], ones[0], caption[None], ones[1])[0, 0]


def per_caption_loop(model, images, region_mask, texts, word_mask) -> torch.Tensor:
    """The original repositories' evaluation: one caption at a time against all images."""
    columns = []
    for c in range(texts.shape[0]):
        caption = texts[c, word_mask[c]]
        if isinstance(model, (ScanModel, BfanModel)):
            columns.append(original_style_scores(model, images, caption))
        else:
            words = word_mask[c : c + 1, : len(caption)]
            columns.append(model.score_pairs(images, region_mask, caption[None], words)[:, 0])
    return torch.stack(columns, dim=1)


def sgraf_floor_flops(model, word_mask: torch.Tensor, n_regions: int, dim: int) -> float:
    """FLOPs per pair the SGR/SAF definition cannot avoid, averaged over the captions (unpadded lengths):
    logits and attended contents (2 m n D), the local projection (m D S), the global one (D S), and
    SGR's reasoning (query, key, update projections and edges of every node per step; at the last step
    only what the global node's output needs) or SAF's gate and weighted sum."""
    sim = model.config.sim_dim
    m = word_mask.sum(dim=1).double()
    macs = 2 * m * n_regions * dim + m * dim * sim + dim * sim
    nodes = m + 1
    if isinstance(model, SgrModel):
        steps = model.config.sgr_steps
        macs = macs + (steps - 1) * (3 * nodes * sim * sim + 2 * nodes * nodes * sim)
        macs = macs + nodes * sim * sim + 2 * sim * sim + 2 * nodes * sim
    else:
        macs = macs + 2 * nodes * sim + sim
    return float(2 * macs.mean())


def compare_compiled(model, gallery_inputs, eager_scores: torch.Tensor, repeats: int) -> None:
    """Print the first call of `similarity(..., compile=True)` (compilation included), its steady-state
    time against the eager path (runs alternated, since the load of a shared machine drifts) and the
    largest score difference."""
    torch._dynamo.reset()
    best = {False: float("inf"), True: float("inf")}  # compiled? -> shortest run
    with torch.no_grad():
        start = time.perf_counter()
        scores = model.similarity(*gallery_inputs, compile=True)
        first = time.perf_counter() - start
        for _ in range(repeats):
            for compiled in (False, True):
                elapsed = min_time(partial(model.similarity, *gallery_inputs, compile=compiled), 1)
                best[compiled] = min(best[compiled], elapsed)
    eager_time, compiled_time = best[False], best[True]
    error = (scores - eager_scores).abs().max().item()
    print(
        f"torch.compile {compiled_time:.3f} s, eager {eager_time:.3f} s (alternated, min of {repeats}): "
        f"{compiled_time / eager_time:.2f} x eager; first call {first:.1f} s with compilation; "
        f"max |compiled - eager| {error:.2e}"
    )


def run_backbone(name: str, args: argparse.Namespace) -> None:
    slow = name in SLOW
    n_images, n_captions = (args.slow_images, args.slow_captions) if slow else (args.images, args.captions)
    images, region_mask, texts, word_mask = gallery(n_images, n_captions, args.regions, args.dim)
    torch.manual_seed(0)
    model = BACKBONES[name](args.dim).eval()
    if hasattr(model.config, "n_regions"):
        model.config.n_regions = args.regions
    pairs = n_images * n_captions
    bound = gemm_bound(images, texts, word_mask, args.repeats)
    gemm_flops = 2.0 * images.shape[0] * args.regions * int(word_mask.sum()) * args.dim
    with torch.no_grad():
        ours = min_time(lambda: model.similarity(images, region_mask, texts, word_mask), args.repeats)
        scores = model.similarity(images, region_mask, texts, word_mask)
        extra_rss = peak_extra_rss(lambda: model.similarity(images, region_mask, texts, word_mask))
        sub_i, sub_c = min(args.subset_images, n_images), min(args.subset_captions, n_captions)
        start = time.perf_counter()
        reference = torch.stack(
            [
                torch.stack([reference_pair(model, images[i], texts[c, word_mask[c]]) for c in range(sub_c)])
                for i in range(sub_i)
            ]
        )
        reference_time = (time.perf_counter() - start) * pairs / (sub_i * sub_c)
        loop_captions = min(args.loop_captions, n_captions)
        loop = (
            min_time(
                lambda: per_caption_loop(
                    model, images, region_mask, texts[:loop_captions], word_mask[:loop_captions]
                ),
                1,
            )
            * n_captions
            / loop_captions
        )
    error = (scores[:sub_i, :sub_c] - reference).abs().max().item()
    per_pair = ours / pairs
    print(
        f"\n## {name}: {n_images} images x {n_captions} captions ({pairs} pairs), D={args.dim}, "
        f"{args.regions} regions, mean {word_mask.sum(1).float().mean():.1f} tokens"
    )
    print(f"GEMM bound            {bound:8.3f} s  ({gemm_flops / bound / 1e9:.0f} GFLOP/s)")
    print(
        f"reference (pairs)     {reference_time:8.3f} s  {reference_time / bound:7.1f} x bound  (from {sub_i * sub_c} pairs)"
    )
    print(
        f"per-caption loop      {loop:8.3f} s  {loop / bound:7.1f} x bound  (from {loop_captions} captions)"
    )
    print(
        f"ours                  {ours:8.3f} s  {ours / bound:7.1f} x bound  max |ours - reference| {error:.2e}"
    )
    print(f"peak extra RSS (ours) {extra_rss / 2**20:8.1f} MiB")
    if slow:
        floor = sgraf_floor_flops(model, word_mask, args.regions, args.dim) * pairs / (gemm_flops / bound)
        print(
            f"FLOP floor            {floor:8.3f} s  ({floor / bound:.1f} x bound); ours {ours / floor:.2f} x floor"
        )
    for label, (gallery_images, gallery_captions) in (
        ("Flickr30K test", FLICKR30K_TEST),
        ("COCO 5K", COCO_5K),
    ):
        total = gallery_images * gallery_captions
        print(
            f"{label:15s} extrapolated: ours {per_pair * total:9.0f} s, bound {bound / pairs * total:8.0f} s"
        )
    if args.compile:
        compare_compiled(model, (images, region_mask, texts, word_mask), scores, args.repeats)


def busy_process() -> subprocess.Popen:
    """A competing process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def contention_table(name: str, args: argparse.Namespace) -> None:
    """Print GEMM / per-caption loop / ours at each thread setting, without and with one busy process."""
    images, region_mask, texts, word_mask = gallery(args.images, args.captions, args.regions, args.dim)
    torch.manual_seed(0)
    model = BACKBONES[name](args.dim).eval()
    if hasattr(model.config, "n_regions"):
        model.config.n_regions = args.regions
    inputs = (images, region_mask, texts, word_mask)
    loop_captions = min(args.loop_captions, args.captions)
    settings = [*sorted({1, 2, os.cpu_count() or 1}), "free cores"]
    default_threads = torch.get_num_threads()
    reference, largest_difference = None, 0.0

    def threads_for(setting):
        """The thread policy of a setting: a fixed count, or as many threads as cores are free."""
        if setting == "free cores":
            return free_core_threads(images.device, os.cpu_count())
        torch.set_num_threads(setting)
        return nullcontext()

    def loop():
        per_caption_loop(model, images, region_mask, texts[:loop_captions], word_mask[:loop_captions])

    times: dict[tuple, list[float]] = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for loaded in (False, True):
                competitor = busy_process() if loaded else None
                try:
                    if competitor is not None:
                        time.sleep(0.3)  # let it reach its core
                    for setting in settings:
                        torch.set_num_threads(default_threads)
                        with threads_for(setting):
                            bound = gemm_bound(images, texts, word_mask, 1)
                        with threads_for(setting):
                            start = time.perf_counter()
                            scores = model.similarity(*inputs)
                            elapsed = time.perf_counter() - start
                        with threads_for(setting):
                            loop_time = min_time(loop, 1) * args.captions / loop_captions
                        for kind, value in (("gemm", bound), ("ours", elapsed), ("loop", loop_time)):
                            times.setdefault((kind, setting, loaded), []).append(value)
                        # Thread counts split the GEMM's sums differently: equal up to rounding.
                        if reference is None:
                            reference = scores
                        largest_difference = max(largest_difference, (scores - reference).abs().max().item())
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
    torch.set_num_threads(default_threads)
    print(
        f"\n## {name}: contention, {args.images} images x {args.captions} captions, D={args.dim}; "
        f"{args.repeats} alternated rounds; seconds min/median/max; per-caption loop from {loop_captions} captions; "
        f"largest score difference between settings {largest_difference:.1e}"
    )
    print(
        "| threads | added load | GEMM bound | per-caption loop | ours | ours / GEMM (medians) "
        "| GEMM slowdown | ours slowdown | ours slowdown / GEMM slowdown |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for setting in settings:
        for loaded in (False, True):
            row = {kind: times[(kind, setting, loaded)] for kind in ("gemm", "loop", "ours")}
            spread = {
                k: "/".join(f"{f(v):.2f}" for f in (min, statistics.median, max)) for k, v in row.items()
            }
            ratio = statistics.median(row["ours"]) / statistics.median(row["gemm"])
            slowdowns = ""
            if loaded:
                gemm = statistics.median(row["gemm"]) / statistics.median(times[("gemm", setting, False)])
                ours_slowdown = statistics.median(row["ours"]) / statistics.median(
                    times[("ours", setting, False)]
                )
                slowdowns = f"{gemm:.2f} | {ours_slowdown:.2f} | {ours_slowdown / gemm:.2f}"
            else:
                slowdowns = " | | "
            load = "1 busy process" if loaded else "none (as found)"
            print(
                f"| {setting} | {load} | {spread['gemm']} | {spread['loop']} | {spread['ours']} | {ratio:.2f} | {slowdowns} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--captions", type=int, default=500)
    parser.add_argument("--slow-images", type=int, default=20)
    parser.add_argument("--slow-captions", type=int, default=100)
    parser.add_argument("--subset-images", type=int, default=4)
    parser.add_argument("--subset-captions", type=int, default=10)
    parser.add_argument("--loop-captions", type=int, default=50)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time the kernel under torch.compile")
    parser.add_argument("--contention", action="store_true", help="print the contention table instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "data: random l2-normalised embeddings (not Flickr30K/COCO features); times are minima of "
        f"{args.repeats} runs"
    )
    for name in args.backbones.split(","):
        if args.contention:
            contention_table(name, args)
        else:
            run_backbone(name, args)


if __name__ == "__main__":
    main()
