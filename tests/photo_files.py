"""Real photos for image-corpus tests: the ones matplotlib ships, crops and variants of them, and a CSV of
three captions each, split into train / val / test."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from modeling_ccr.models.image_processing_matcher import decode_image

SAMPLE_DATA = Path(matplotlib.get_data_path()) / "sample_data"
# image file -> (caption stem, split); every image gets three captions "<stem> 0" .. "<stem> 2".
PHOTOS = {
    "grace_hopper.jpg": ("a woman in a navy uniform with medals", "train"),
    "present.png": ("a blue gift box with a ribbon", "train"),
    "logo.png": ("a colourful logo with letters", "train"),
    "hopper_top.png": ("the face of a woman with short hair", "val"),
    "present_crop.png": ("part of a shiny blue package", "val"),
    "hopper_gray.png": ("a grey photo of a woman in uniform", "test"),
    "present_small.png": ("a small blue gift box", "test"),
}
CAPTIONS_PER_PHOTO = 3


def write_photos(root: Path) -> tuple[Path, Path]:
    """`root/photos/` with every file of PHOTOS, and `root/captions.csv`; returns both paths."""
    folder = root / "photos"
    folder.mkdir()
    hopper = decode_image(SAMPLE_DATA / "grace_hopper.jpg")
    present = decode_image(SAMPLE_DATA / "Minduka_Present_Blue_Pack.png")
    (folder / "grace_hopper.jpg").write_bytes((SAMPLE_DATA / "grace_hopper.jpg").read_bytes())
    present.save(folder / "present.png")
    decode_image(SAMPLE_DATA / "logo2.png").save(folder / "logo.png")
    hopper.crop((0, 0, 512, 300)).save(folder / "hopper_top.png")
    present.crop((0, 0, present.width // 2, present.height // 2)).save(folder / "present_crop.png")
    hopper.convert("L").save(folder / "hopper_gray.png")
    present.resize((200, 150)).save(folder / "present_small.png")
    lines = ["image,caption,split"]
    for name, (caption, split) in PHOTOS.items():
        lines += [f"{name},{caption} {i},{split}" for i in range(CAPTIONS_PER_PHOTO)]
    captions = root / "captions.csv"
    captions.write_text("\n".join(lines) + "\n")
    return folder, captions
