"""Memory budgets of full-gallery scoring: the tiles of the cross-attention scorer and a gallery's blocks.

The all-pairs cross-attention scorer (`cross_attention.cross_attention_scores`) cuts its one product of all
regions with all words into tiles small enough that a tile's per-pair intermediates stay in cache on a
CPU (or within a share of free memory on a GPU), so each of its few elementwise passes runs at cache speed
instead of memory speed. Sizes come from the machine, never from constants tuned on one machine.

On a shared CPU the thread count matters as much: every elementwise pass over a tile is one OpenMP
parallel region that waits for its slowest thread, so a thread whose core is busy with another process
stalls every region of every tile (measured in docs/scoring.md). `free_core_threads` runs a block with as
many threads as there are cores free right now (the idle share of the cores this process may use,
sampled from /proc/stat over a few milliseconds), never more than torch's own setting.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# Live fp32 tensors of a tile's size at the peak of a tile (logits, weights, Gram product, their products).
LIVE_TILE_TENSORS = 4
# Share of free accelerator memory, or of available host memory, that scoring may use for a tile / block.
MEMORY_SHARE = 0.25
# Per-core second-level cache assumed when the operating system does not report one.
DEFAULT_CACHE_BYTES = 1 << 20


def cache_bytes() -> int:
    """Total second-level cache of the cores torch computes on (per-core L2 x threads)."""
    per_core = DEFAULT_CACHE_BYTES
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                per_core = parse_size((index / "size").read_text().strip())
        except (OSError, ValueError):
            continue
    return per_core * torch.get_num_threads()


def parse_size(text: str) -> int:
    """'1024K' / '2M' / '512' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on the device: the accelerator's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 1 << 32


def tile_budget(device: torch.device, element_bytes: int = 4) -> int:
    """Elements (pairs x queries x keys) per tile: the tile's live intermediates fit in the CPU's L2
    caches, or in a share of free accelerator memory; never more than a share of free memory."""
    memory = int(available_memory_bytes(device) * MEMORY_SHARE) // (LIVE_TILE_TENSORS * element_bytes)
    if device.type == "cuda":
        return max(memory, 1)
    return max(min(cache_bytes() // (LIVE_TILE_TENSORS * element_bytes), memory), 1)


def tile_shape(n_images: int, n_regions: int, n_captions: int, n_words: int, budget: int) -> tuple[int, int]:
    """(images, captions) per tile with about `budget` region-word entries, as square as the GEMM likes:
    about as many region rows as word columns."""
    side = math.isqrt(max(budget, 1))
    images = min(n_images, max(1, side // max(n_regions, 1)))
    captions = min(n_captions, max(1, budget // max(images * n_regions * n_words, 1)))
    return images, captions


def generic_pair_bytes(n_regions: int, n_words: int, embed_dim: int) -> int:
    """Peak bytes per image-caption pair of a scorer that builds per-word vectors of every pair (e.g. the
    attended contents `(pairs, n_words, D)` and the attention `(pairs, n_words, n_regions)`)."""
    return 4 * LIVE_TILE_TENSORS * n_words * (embed_dim + n_regions)


def caption_length_groups(word_mask: torch.Tensor, min_group: int = 1) -> list[tuple[torch.Tensor, int]]:
    """Captions grouped by length: (caption indices, length) per group, shortest first.

    word_mask `(n_captions, n_words)` bool; a caption's length is one past its last valid token, and a
    group is cut to its longest caption, so scoring a group at its own length makes padding cost almost
    nothing whatever the spread of caption lengths. Groups of one length are merged with the next longer
    ones until they hold at least `min_group` captions (so that no group is too small for a full tile).
    """
    positions = torch.arange(1, word_mask.shape[1] + 1, device=word_mask.device)
    lengths = (word_mask * positions).amax(dim=1)
    order = torch.argsort(lengths, stable=True)
    values, counts = torch.unique_consecutive(lengths[order], return_counts=True)
    groups, start, size = [], 0, 0
    for length, count in zip(values.tolist(), counts.tolist(), strict=True):
        size += count
        if size >= min_group or start + size == len(order):
            groups.append((order[start : start + size], int(length)))
            start, size = start + size, 0
    return groups


def block_sizes(n_images: int, n_captions: int, pair_bytes: int, device: torch.device) -> tuple[int, int]:
    """(images, captions) per block so that a block's pairs need at most a share of free memory."""
    max_pairs = max(int(available_memory_bytes(device) * MEMORY_SHARE) // max(pair_bytes, 1), 1)
    images = min(n_images, max_pairs)
    return images, max(1, min(n_captions, max_pairs // images))


def tiled_pair_bytes(n_regions: int, n_words: int) -> int:
    """Bytes per pair of a scorer that tiles its intermediates itself (`cross_attention_scores`): the
    score and, for the tile in flight, its per-query relevances; the tile budget bounds the rest."""
    return 4 * (1 + max(n_regions, n_words))


# How long the idle share of the cores is sampled, and how long a sample is reused.
FREE_CORE_WINDOW_S = 0.02
FREE_CORE_REUSE_S = 2.0
_free_core_sample: list[float] = []  # [time of the sample, free cores]


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def cpu_times(path: str = "/proc/stat") -> dict[int, tuple[int, int]]:
    """(idle, total) jiffies of every CPU in /proc/stat (idle includes iowait); {} where unreadable."""
    times = {}
    try:
        with open(path, encoding="ascii") as stat:
            for line in stat:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    values = [int(v) for v in fields[:8]]
                    times[int(name[3:])] = (values[3] + values[4], sum(values))
    except (OSError, ValueError, IndexError):
        return {}
    return times


def free_cores(window: float = FREE_CORE_WINDOW_S) -> float:
    """Cores of `allowed_cpus` idle over the next `window` seconds (this process sleeps meanwhile, so
    only other work counts); their count where /proc/stat cannot be read."""
    cpus = allowed_cpus()
    before = cpu_times()
    time.sleep(window)
    after = cpu_times()
    shares = []
    for cpu in cpus:
        if cpu in before and cpu in after and after[cpu][1] > before[cpu][1]:
            shares.append((after[cpu][0] - before[cpu][0]) / (after[cpu][1] - before[cpu][1]))
    return sum(shares) if shares else float(len(cpus))


def scoring_threads(requested: int | None = None) -> int:
    """Threads for CPU scoring now: the free cores rounded to nearest, at least 1, at most `requested`
    (default torch's setting). A sample is reused for `FREE_CORE_REUSE_S` seconds."""
    requested = requested or torch.get_num_threads()
    if requested == 1:
        return 1
    now = time.monotonic()
    if not _free_core_sample or now - _free_core_sample[0] > FREE_CORE_REUSE_S:
        _free_core_sample[:] = [now, free_cores()]
    return max(1, min(requested, math.floor(_free_core_sample[1] + 0.5)))


@contextmanager
def free_core_threads(device: torch.device, threads: int | None = None) -> Iterator[int]:
    """Within the block, CPU work on `device` runs on `scoring_threads(threads)` threads (restored after);
    yields the count. Other devices are left alone (yields torch's setting)."""
    previous = torch.get_num_threads()
    if torch.device(device).type != "cpu":
        yield previous
        return
    chosen = scoring_threads(threads)
    if chosen != previous:
        torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        if chosen != previous:
            torch.set_num_threads(previous)
