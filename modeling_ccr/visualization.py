"""Attention pictures: one word's attention over an image's region boxes, one panel per model.

matplotlib is an optional dependency (`pip install .[viz]`), imported only when drawing.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from .data.collator import pad_regions, tokenize_captions
from .evaluation import word_region_attended
from .metrics.attention import AttendedSetRule, gold_regions, word_precision_recall
from .modeling_matcher import MatcherPreTrainedModel
from .tokenization import split_words, word_token_index


def find_word(caption: str, word: str | int) -> int:
    """Index of `word` in `split_words(caption)`: an int is taken as is, a string's first occurrence."""
    words = split_words(caption)
    if isinstance(word, int) or (isinstance(word, str) and word.isdigit()):
        index = int(word)
        if not 0 <= index < len(words):
            raise ValueError(f"word index {index} is outside the caption's {len(words)} words: {words}")
        return index
    if word.lower() not in words:
        raise ValueError(f"word {word!r} is not in the caption; its words are {words}")
    return words.index(word.lower())


@torch.no_grad()
def word_attention(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    features: torch.Tensor,
    caption: str,
    word_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One word's attention over the image's regions `(n_regions,)`, and its attended set `(n_regions,)` bool.

    t2i: the word's row of attention over regions. i2t: how much each region attends that word (the
    column); the attended set is then the regions whose rule over words selects this word.
    """
    model.eval()
    region_features, region_mask = pad_regions([features])
    input_ids, attention_mask = tokenize_captions(tokenizer, [caption])
    output = model(region_features, region_mask, input_ids, attention_mask, output_attentions=True)
    direction = getattr(model.config, "direction", "t2i")
    token = word_token_index(word_index)
    attention = output.attentions[0]
    weights = attention[token] if direction == "t2i" else attention[:, token]
    attended = word_region_attended(
        output.attentions, region_mask, attention_mask.bool(), direction, AttendedSetRule()
    )
    return weights, attended[0, token]


def phrase_boxes_for_word(row: dict, caption_index: int, word_index: int) -> torch.Tensor:
    """Gold boxes `(k, 4)` of the grounded phrase covering the word, empty if none does."""
    phrases = (row.get("phrases") or [[]] * (caption_index + 1))[caption_index]
    for phrase in phrases:
        if (
            phrase["first_word"] <= word_index < phrase["first_word"] + phrase["num_words"]
            and phrase["boxes"]
        ):
            return torch.tensor(phrase["boxes"], dtype=torch.float32)
    return torch.zeros(0, 4)


def draw_attention(
    panels: list[dict], out_path: Path, image_size: tuple[int, int], title: str, image_path=None
) -> Path:
    """Write a PNG with one panel per model: region boxes shaded by attention, gold boxes outlined.

    Each panel: {name, boxes (n, 4), weights (n,), gold (k, 4), precision, recall}.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError as err:
        raise ImportError("attention pictures need matplotlib: pip install 'modeling-ccr[viz]'") from err
    width, height = image_size
    figure, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 6 * height / width + 1), squeeze=False
    )
    background = plt.imread(str(image_path)) if image_path is not None else None
    for axis, panel in zip(axes[0], panels, strict=True):
        if background is not None:
            axis.imshow(background, extent=(0, width, height, 0))
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_aspect("equal")
        peak = float(panel["weights"].max())
        for box, weight in sorted(
            zip(panel["boxes"].tolist(), panel["weights"].tolist(), strict=True), key=lambda bw: bw[1]
        ):
            x1, y1, x2, y2 = box
            shade = weight / peak if peak > 0 else 0.0
            axis.add_patch(
                Rectangle(
                    (x1, y1),
                    x2 - x1,
                    y2 - y1,
                    facecolor=(1, 0.3, 0, 0.6 * shade),
                    edgecolor=(0.3, 0.3, 0.3, 0.4),
                )
            )
            if shade > 0.3:
                axis.text(x1 + 3, y1 + 12, f"{weight:.2f}", fontsize=8, color="black")
        for x1, y1, x2, y2 in panel["gold"].tolist():
            axis.add_patch(
                Rectangle(
                    (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=2.5, linestyle="--"
                )
            )
        scores = (
            ""
            if panel["precision"] is None
            else f"\nattended-set P {panel['precision']:.2f}  R {panel['recall']:.2f}"
        )
        axis.set_title(f"{panel['name']}{scores}", fontsize=10)
    figure.suptitle(title + "\n(orange: attention weight; green dashed: gold phrase boxes)", fontsize=11)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path


def visualize(
    models: list[tuple[str, MatcherPreTrainedModel, PreTrainedTokenizerBase]],
    split: datasets.Dataset,
    image_id: str,
    caption: str | int,
    word: str | int,
    out_path: Path,
    image_path: Path | None = None,
) -> Path:
    """Draw `word`'s attention for the image `image_id` of `split` and a caption (an index into the
    image's captions, or any text), one panel per (name, model, tokenizer)."""
    ids = split["image_id"]
    if image_id not in ids:
        raise ValueError(f"image id {image_id!r} is not in the split; some ids: {ids[:5]}")
    row = split[ids.index(image_id)]
    if "boxes" not in row:
        raise ValueError("attention pictures need region boxes: the dataset has no 'boxes' column")
    caption_index = int(caption) if str(caption).isdigit() else None
    text = row["captions"][caption_index] if caption_index is not None else str(caption)
    word_index = find_word(text, word)
    boxes = torch.tensor(row["boxes"], dtype=torch.float32)
    features = torch.tensor(row["features"], dtype=torch.float32)
    gold = (
        phrase_boxes_for_word(row, caption_index, word_index)
        if caption_index is not None
        else torch.zeros(0, 4)
    )
    panels = []
    for name, model, tokenizer in models:
        weights, attended = word_attention(model, tokenizer, features, text, word_index)
        precision = recall = None
        if len(gold):
            p, r, _ = word_precision_recall(attended[None], gold_regions(boxes, gold)[None])
            precision, recall = float(p[0]), float(r[0])
        panels.append(
            {
                "name": name,
                "boxes": boxes,
                "weights": weights,
                "gold": gold,
                "precision": precision,
                "recall": recall,
            }
        )
    title = f'{image_id}: "{text}" - word "{split_words(text)[word_index]}"'
    return draw_attention(
        panels,
        out_path,
        tuple(row.get("image_size") or (int(boxes[:, 2].max()), int(boxes[:, 3].max()))),
        title,
        image_path,
    )
