"""Converter scale benchmark: throughput, peak memory, disk size, and loader vs training-step speed.

Generates, in the real formats, a SCAN precomp folder of `--precomp-images` images (default 20,000 x 36 x
2048 float32, 5.9 GB) and a bottom-up-attention TSV of `--tsv-images` images (default 5,000), with a
Karpathy split file for the TSV; converts them with `ccr convert` code in child processes (float32 and
float16 for the precomp folder), and prints from this one run:

- images/s and the peak resident memory of each conversion (each child's own `ru_maxrss`);
- the corpus's disk size, float32 vs float16;
- the training data loader's throughput (ImageCaptionPairs + RegionCaptionCollator through a DataLoader,
  shuffled, batch 128; and, as the baseline, the same loader reading rows through the `datasets` numpy
  formatter, the read path before Arrow views; the read path alone, pairs per second; and the streaming
  reader, `data.streaming`, over the same corpus; and the collator alone) against one training step of the published SCAN t2i model (feature_dim 2048,
  embed 1024) at batch 128 on the same machine's device (forward + backward + Adam step), as a ratio.
  Target: loader >= 5x the step, so loading never bottlenecks training.

The data is random (generated here), not Flickr30K or COCO; the loader is measured with the corpus in the
page cache (it was just written), as it is after the first epoch of a run.

    python benchmarks/convert_scale.py                      # the issue's sizes (needs ~20 GB of disk)
    python benchmarks/convert_scale.py --precomp-images 2000 --tsv-images 500   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the writers of the real formats live with the tests

from convert_files import karpathy_entry, tsv_line, write_karpathy  # noqa: E402

REGIONS, DIM, CAPTIONS = 36, 2048, 5
WORDS = [
    "a",
    "the",
    "man",
    "woman",
    "dog",
    "cat",
    "red",
    "blue",
    "green",
    "runs",
    "sits",
    "on",
    "in",
    "with",
    "near",
    "street",
    "park",
    "ball",
    "car",
    "tree",
]


def captions_for(rng: np.random.Generator, n_images: int) -> list[str]:
    lengths = rng.integers(8, 14, size=n_images * CAPTIONS)
    return [" ".join(rng.choice(WORDS, size=n)) for n in lengths]


def write_precomp(directory: Path, n_images: int, rng: np.random.Generator) -> None:
    """`train_ims.npy` written chunk by chunk through np.lib.format (never the whole array in memory)."""
    directory.mkdir(parents=True)
    images = np.lib.format.open_memmap(
        directory / "train_ims.npy", mode="w+", dtype=np.float32, shape=(n_images, REGIONS, DIM)
    )
    for start in range(0, n_images, 500):
        stop = min(start + 500, n_images)
        images[start:stop] = np.abs(rng.standard_normal((stop - start, REGIONS, DIM), dtype=np.float32))
    images.flush()
    del images
    (directory / "train_caps.txt").write_text("".join(f"{c}\n" for c in captions_for(rng, n_images)))
    (directory / "train_ids.txt").write_text("".join(f"{100000 + i}\n" for i in range(n_images)))


def write_tsv_sources(directory: Path, n_images: int, rng: np.random.Generator) -> tuple[Path, Path]:
    directory.mkdir(parents=True)
    captions = captions_for(rng, n_images)
    entries = []
    tsv = directory / "features.tsv"
    with tsv.open("w", newline="") as handle:
        for i in range(n_images):
            x1y1 = rng.uniform(0, 300, size=(REGIONS, 2))
            boxes = np.concatenate([x1y1, x1y1 + rng.uniform(10, 300, size=(REGIONS, 2))], axis=1)
            features = np.abs(rng.standard_normal((REGIONS, DIM), dtype=np.float32))
            handle.write(tsv_line(str(i), 640, 640, boxes, features))
            split = "train" if i < n_images * 0.8 else ("val" if i < n_images * 0.9 else "test")
            image_captions = captions[i * CAPTIONS : (i + 1) * CAPTIONS]
            entries.append(karpathy_entry(str(i), split, i, image_captions, i * CAPTIONS))
    return tsv, write_karpathy(directory / "dataset.json", entries)


def run_child(call: str) -> tuple[float, float]:
    """Run the conversion `call` in a fresh Python; returns (seconds of the conversion itself, without the
    interpreter's start-up and imports, and the child's own peak RSS in GiB).

    The peak is the child's `VmHWM`, read by the child: `ru_maxrss` from wait4 would not do, because Linux
    carries the parent's high-water mark into a forked child (this parent has just written GBs of data).
    """
    code = (
        "import time\nfrom modeling_ccr.data.formats.convert import ConversionOptions, convert_precomp, convert_butd_tsv\n"
        f"started = time.perf_counter()\n{call}\nprint('SECONDS', time.perf_counter() - started)\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\nprint('VMHWM_KIB', status)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        raise SystemExit(f"conversion failed: {call}")
    seconds = float(child.stdout.split("SECONDS")[-1].split()[0])
    peak_kib = float(child.stdout.split("VMHWM_KIB")[-1].split()[0])
    return seconds, peak_kib / 2**20


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def formatter_pairs(train):
    """The loader's read path before Arrow views (the baseline): each row through the `datasets` numpy
    formatter, upcast by numpy."""
    from modeling_ccr.data.pairs import ImageCaptionPairs

    class FormatterPairs(ImageCaptionPairs):
        def __init__(self, dataset) -> None:
            super().__init__(dataset)
            self._numpy_view = dataset.with_format("numpy", columns=["features"])

        def image_features(self, image_index: int) -> np.ndarray:
            row = self._numpy_view[image_index]["features"]
            return np.asarray(row).astype(np.float32, copy=False)

    return FormatterPairs(train)


def loader_batches_per_second(
    corpus: Path, batches: int, num_workers: int, baseline: bool = False
) -> tuple[float, object]:
    """Shuffled batches of 128 per second through a DataLoader; `baseline`: the formatter read path."""
    import datasets
    import torch

    from modeling_ccr.data.collator import RegionCaptionCollator
    from modeling_ccr.data.pairs import ImageCaptionPairs, caption_table
    from modeling_ccr.text.tokenization import build_word_tokenizer

    train = datasets.load_from_disk(str(corpus))["train"]
    tokenizer = build_word_tokenizer(caption_table(train)[0], 1)
    loader = torch.utils.data.DataLoader(
        formatter_pairs(train) if baseline else ImageCaptionPairs(train),
        batch_size=128,
        shuffle=True,
        collate_fn=RegionCaptionCollator(tokenizer),
        num_workers=num_workers,
        drop_last=True,
    )
    iterator = iter(loader)
    batch = next(iterator)  # worker start-up is not throughput
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - started), (batch, tokenizer)


def rows_per_second(corpus: Path, rows: int, baseline: bool) -> float:
    """Random (image, caption) pairs read per second, without the collator: the read path alone."""
    import datasets

    from modeling_ccr.data.pairs import ImageCaptionPairs

    train = datasets.load_from_disk(str(corpus))["train"]
    pairs = formatter_pairs(train) if baseline else ImageCaptionPairs(train)
    order = np.random.default_rng(0).permutation(len(pairs))[:rows]
    pairs[0]
    started = time.perf_counter()
    for index in order:
        pairs[int(index)]
    return len(order) / (time.perf_counter() - started)


def streaming_pairs_per_second(corpus: Path, rows: int) -> tuple[float, float]:
    """The streaming reader on the same corpus (`data.streaming`): seconds of its index pass, and pairs per
    second after the first (which waits for the window to fill), without the collator."""
    from modeling_ccr.data.streaming import StreamingImageCaptionPairs, load_streaming_corpus

    started = time.perf_counter()
    pairs = StreamingImageCaptionPairs(load_streaming_corpus(corpus)[0], seed=0)
    index_seconds = time.perf_counter() - started
    iterator = iter(pairs)
    next(iterator)
    started = time.perf_counter()
    for _ in range(rows):
        next(iterator)
    return index_seconds, rows / (time.perf_counter() - started)


def collator_batches_per_second(corpus: Path, batches: int) -> dict[str, float]:
    """RegionCaptionCollator alone on pre-read pairs, with torch's default thread count and with one
    thread (as in a DataLoader worker): its many small per-item ops hand off to torch's thread pool."""
    import datasets
    import torch

    from modeling_ccr.data.collator import RegionCaptionCollator
    from modeling_ccr.data.pairs import ImageCaptionPairs, caption_table
    from modeling_ccr.text.tokenization import build_word_tokenizer

    train = datasets.load_from_disk(str(corpus))["train"]
    collate = RegionCaptionCollator(build_word_tokenizer(caption_table(train)[0], 1))
    pairs = ImageCaptionPairs(train)
    order = np.random.default_rng(0).permutation(len(pairs))[: 128 * batches]
    items = [pairs[int(i)] for i in order]
    default_threads, rates = torch.get_num_threads(), {}
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        started = time.perf_counter()
        for start in range(0, len(items), 128):
            collate(items[start : start + 128])
        rates[f"collator_torch_threads{threads}_batches_per_s"] = round(
            batches / (time.perf_counter() - started), 2
        )
    torch.set_num_threads(default_threads)
    return rates


def training_steps_per_second(batch, tokenizer, steps: int) -> tuple[float, str]:
    import torch
    import yaml

    from modeling_ccr.training.experiment import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    section = yaml.safe_load((ROOT / "configs" / "scan_t2i_avg_f30k.yaml").read_text())["model"]
    model = build_model(section, tokenizer, DIM, "configs/scan_t2i_avg_f30k.yaml").to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def step() -> None:
        optimizer.zero_grad()
        model(**inputs, return_loss=True).loss.backward()
        optimizer.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started), device


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--precomp-images", type=int, default=20_000)
    parser.add_argument("--tsv-images", type=int, default=5_000)
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--loader-rounds", type=int, default=3, help="median of this many loader runs")
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: a temporary folder, removed after"
    )
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="convert_scale_"))
    rng = np.random.default_rng(0)
    results: dict[str, object] = {
        "data": f"random features in the real formats ({args.precomp_images} precomp images, "
        f"{args.tsv_images} TSV images, {REGIONS} x {DIM}); not Flickr30K or COCO",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    try:
        started = time.perf_counter()
        tsv, karpathy = workdir / "tsv" / "features.tsv", workdir / "tsv" / "dataset.json"
        if not (karpathy.is_file() and (workdir / "precomp" / "train_ids.txt").is_file()):
            write_precomp(workdir / "precomp", args.precomp_images, rng)
            tsv, karpathy = write_tsv_sources(workdir / "tsv", args.tsv_images, rng)
            print(
                f"generated the sources in {time.perf_counter() - started:.0f} s under {workdir}", flush=True
            )
        for name in ("precomp_float32", "precomp_float16", "tsv_corpus"):
            shutil.rmtree(workdir / name, ignore_errors=True)
        results["precomp_ims_npy_gib"] = round(
            (workdir / "precomp" / "train_ims.npy").stat().st_size / 2**30, 2
        )
        results["tsv_gib"] = round(tsv.stat().st_size / 2**30, 2)
        for name, float16 in (("precomp_float32", False), ("precomp_float16", True)):
            code = (
                f"convert_precomp({str(workdir / 'precomp')!r}, {str(workdir / name)!r}, "
                f"options=ConversionOptions(float16={float16}, progress=False))"
            )
            seconds, rss = run_child(code)
            results[name] = {
                "images_per_s": round(args.precomp_images / seconds, 1),
                "peak_rss_gib": round(rss, 2),
                "disk_gib": round(folder_bytes(workdir / name) / 2**30, 2),
            }
            print(name, results[name], flush=True)
        code = f"convert_butd_tsv([{str(tsv)!r}], {str(karpathy)!r}, {str(workdir / 'tsv_corpus')!r}, options=ConversionOptions(progress=False))"
        seconds, rss = run_child(code)
        results["butd_tsv_float32"] = {
            "images_per_s": round(args.tsv_images / seconds, 1),
            "peak_rss_gib": round(rss, 2),
            "disk_gib": round(folder_bytes(workdir / "tsv_corpus") / 2**30, 2),
        }
        print("butd_tsv_float32", results["butd_tsv_float32"], flush=True)
        for name in ("precomp_float32", "precomp_float16"):
            for baseline in (True, False):
                key = f"{'baseline_formatter_' if baseline else ''}rows_{name}_per_s"
                results[key] = round(rows_per_second(workdir / name, 128 * args.loader_batches, baseline))
            index_seconds, rate = streaming_pairs_per_second(workdir / name, 128 * args.loader_batches)
            results[f"streaming_{name}_index_pass_s"] = round(index_seconds, 2)
            results[f"streaming_rows_{name}_per_s"] = round(rate)
            # The median of rounds that alternate the two read paths: a shared machine's load drifts.
            rates: dict[str, list[float]] = {}
            for _ in range(args.loader_rounds):
                for workers, baseline in ((0, True), (0, False), (2, False)):
                    rate, (batch, tokenizer) = loader_batches_per_second(
                        workdir / name, args.loader_batches, workers, baseline
                    )
                    key = f"{'baseline_formatter_' if baseline else ''}loader_{name}_workers{workers}_batches_per_s"
                    rates.setdefault(key, []).append(rate)
            results.update({key: round(float(np.median(values)), 2) for key, values in rates.items()})
            print({k: v for k, v in results.items() if name in k}, flush=True)
        results.update(collator_batches_per_second(workdir / "precomp_float16", args.loader_batches))
        step_rate, device = training_steps_per_second(batch, tokenizer, args.train_steps)
        results["train_steps_per_s"] = {"device": device, "value": round(step_rate, 3)}
        slowest_loader = min(v for k, v in results.items() if k.startswith("loader_") and "workers0" in k)
        results["loader_over_step_ratio_workers0"] = round(slowest_loader / step_rate, 1)
        slowest_baseline = min(v for k, v in results.items() if k.startswith("baseline_formatter_loader_"))
        results["baseline_formatter_loader_over_step_ratio_workers0"] = round(slowest_baseline / step_rate, 1)
        print(json.dumps(results, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
