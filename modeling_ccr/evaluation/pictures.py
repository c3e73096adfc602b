"""Attention pictures: one word's attention over an image's region boxes, one panel per model.

`visualize` is what `ccr visualize` calls; `word_attention_over_regions` and `draw_attention` are its
two halves (the model's numbers, the drawing). matplotlib is an optional dependency
(`pip install 'modeling-ccr[viz]'`), imported only inside `draw_attention`, with the Agg backend.

Attention direction. t2i attention `(n_tokens, n_regions)` is words over regions: a word's weights are
its row and sum to 1 over the regions. i2t attention `(n_regions, n_tokens)` is regions over words: a
word's weights are its column, i.e. how much each region attends that word; they do not sum to 1 over
the regions. The attended set follows `modeling_ccr.evaluation.gallery.word_region_attended`, the same reading
as the attention metrics: t2i, the regions with a >= 1/n_regions; i2t, the regions that attend the
word with a >= 1/n_tokens (`<start>`/`<end>` included in n_tokens).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from ..artifacts.loading import load_matcher
from ..errors import InvalidValueError
from ..metrics.attention import AttendedSetSpec, attended_regions, gold_regions, word_precision_recall
from ..models.modeling_matcher import MatcherPreTrainedModel, eval_mode
from ..text.tokenization import split_words
from ..text.word_alignment import DEFAULT_WORD_COMBINE, word_token_positions
from .gallery import (
    UNGROUNDED_PHRASE_TYPES,
    matched_pair_attentions,
    word_level_attention,
    word_region_attended,
)

# Figure geometry: inches per panel (the longer image side) and dots per inch of the PNG.
PANEL_INCHES = 5.5
DPI = 100
# Inches above the panels for the title and legend, and below them for the colour bar.
TITLE_INCHES = 0.9
FOOTER_INCHES = 1.0
# How many of the highest-weight regions carry their weight as a label.
N_LABELLED = 3
GOLD_COLOUR = "#00c8ff"  # cyan: stands out from the yellow-red attention colour map
ATTENTION_COLOURMAP = "YlOrRd"

# A panel of `draw_attention`: {"name": str, "boxes": (n, 4), "weights": (n,), "attended": (n,) bool}.
Panel = dict


# ---------------------------------------------------------------------------------------------------------
# The model's numbers
# ---------------------------------------------------------------------------------------------------------


def find_word(caption: str, word: str | int) -> int:
    """Index of `word` in `split_words(caption)`.

    An int is an index (checked against the caption's length). A string is a word of the caption, its
    first occurrence; a string of digits that is not a word of the caption is taken as an index (the
    CLI passes every `--word` as a string).
    """
    words = split_words(caption)
    if isinstance(word, str):
        query = split_words(word)
        if len(query) == 1 and query[0] in words:
            return words.index(query[0])
        if not word.strip().isdigit():
            raise InvalidValueError(f"word {word!r} is not in the caption {caption!r}; its words are {words}")
        word = int(word)
    if not 0 <= word < len(words):
        raise InvalidValueError(f"word index {word} is outside the caption's {len(words)} words: {words}")
    return word


@torch.no_grad()
def _word_attention(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    features: torch.Tensor,
    caption: str,
    word_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights `(n_regions,)` float and attended set `(n_regions,)` bool of word `word_index` (CPU)."""
    with eval_mode(model):
        attentions, region_mask, _ = matched_pair_attentions(model, tokenizer, [features], [caption])
    positions = word_token_positions(tokenizer, [caption])[0]
    if not positions[word_index]:
        raise ValueError(f"word {word_index} of {caption!r} did not survive tokenization")
    direction = model.attention_direction
    # A word split into sub-word tokens combines their rows (word_alignment's default, as the metrics do).
    words = word_level_attention(attentions[0], positions, direction, DEFAULT_WORD_COMBINE)
    weights = words[word_index] if direction == "t2i" else words[:, word_index]
    word_mask = torch.tensor([[bool(tokens) for tokens in positions]])
    attended = word_region_attended(words[None], region_mask, word_mask, direction, AttendedSetSpec())
    return weights, attended[0, word_index]


def word_attention_over_regions(
    model: MatcherPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    features: torch.Tensor,
    caption: str,
    word: str | int,
    boxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """The attention of one word of `caption` over the image's regions, from the matched-pair attention.

    features: `(n_regions, feature_dim)`; boxes (optional): `(n_regions, 4)`, only checked to be one box
    per region. word: a word of the caption (first occurrence in `split_words(caption)`) or its index.

    Returns weights `(n_regions,)` float32 on CPU and the word's index in `split_words(caption)`.
    t2i: the word's row (sums to 1 over the regions). i2t: the word's column, how much each region
    attends that word (each region's weights sum to 1 over the words, not over the regions).
    """
    features = torch.as_tensor(features)
    if boxes is not None:
        check_boxes(torch.as_tensor(boxes), features.shape[0])
    word_index = find_word(caption, word)
    weights, _ = _word_attention(model, tokenizer, features, caption, word_index)
    return weights, word_index


def check_boxes(boxes: torch.Tensor, n_regions: int, where: str = "the image") -> None:
    """Raise ValueError unless `boxes` is a non-empty `(n_regions, 4)`."""
    if boxes.numel() == 0:
        raise ValueError(f"{where} has no region boxes: attention pictures need one box per region")
    if boxes.dim() != 2 or tuple(boxes.shape) != (n_regions, 4):
        raise ValueError(
            f"{where}: expected boxes of shape ({n_regions}, 4), one per region, found {tuple(boxes.shape)}"
        )


# ---------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------


def figure_inches(n_panels: int, image_size: tuple[int, int]) -> tuple[float, float]:
    """(width, height) in inches of a figure of `n_panels` side by side for an image `(width, height)`."""
    width, height = image_size
    panel_width = PANEL_INCHES * min(1.0, width / height)
    panel_height = PANEL_INCHES * min(1.0, height / width)
    # Whole pixels at DPI, so that the PNG is exactly this size times DPI.
    return (
        round(n_panels * panel_width * DPI) / DPI,
        round((panel_height + TITLE_INCHES + FOOTER_INCHES) * DPI) / DPI,
    )


def _import_pyplot():
    """matplotlib.pyplot on the Agg backend, or an ImportError that says how to install it."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "attention pictures need matplotlib: pip install 'modeling-ccr[viz]' (or matplotlib>=3.8)"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_scores(panel: Panel, gold: torch.Tensor | None) -> str:
    """`P 0.50  R 1.00` of the panel's attended set against the gold boxes, or '' without gold."""
    if gold is None or gold.numel() == 0:
        return ""
    boxes = torch.as_tensor(panel["boxes"], dtype=torch.float32)
    gold_set = gold_regions(boxes, gold)
    if not gold_set.any():
        return "no region overlaps a gold box (IoU >= 0.5)"
    precision, recall, _ = word_precision_recall(panel_attended(panel)[None], gold_set[None])
    return f"attended-set P {float(precision[0]):.2f}  R {float(recall[0]):.2f}"


def panel_attended(panel: Panel) -> torch.Tensor:
    """The panel's attended set `(n,)` bool; by default the regions with weight >= 1/n."""
    if panel.get("attended") is not None:
        return torch.as_tensor(panel["attended"], dtype=torch.bool)
    weights = torch.as_tensor(panel["weights"], dtype=torch.float32)
    return attended_regions(weights, torch.ones_like(weights, dtype=torch.bool), AttendedSetSpec())


def _draw_panel(axis, panel: Panel, gold: torch.Tensor | None, colourmap, norm) -> None:
    """One model's boxes on `axis`: fill colour and opacity grow with the weight, attended sets outlined."""
    from matplotlib.patches import Rectangle

    boxes = torch.as_tensor(panel["boxes"], dtype=torch.float32).tolist()
    weights = torch.as_tensor(panel["weights"], dtype=torch.float32).tolist()
    attended = panel_attended(panel).tolist()
    order = sorted(range(len(weights)), key=lambda i: weights[i])  # strongest drawn last, on top
    for i in order:
        x1, y1, x2, y2 = boxes[i]
        level = float(norm(weights[i]))
        axis.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                facecolor=(*colourmap(level)[:3], 0.05 + 0.55 * level),
                edgecolor="#b00000" if attended[i] else (0.35, 0.35, 0.35, 0.5),
                linewidth=2.0 if attended[i] else 0.6,
            )
        )
    for i in [i for i in order[::-1][:N_LABELLED] if round(weights[i], 2) > 0]:
        x1, y1 = boxes[i][:2]
        axis.text(
            x1 + 2,
            y1 + 2,
            f"{weights[i]:.2f}",
            fontsize=8,
            va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "edgecolor": "none"},
        )
    for x1, y1, x2, y2 in [] if gold is None else gold.tolist():
        axis.add_patch(
            Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=GOLD_COLOUR, linewidth=2.5, ls="--")
        )
    scores = panel_scores(panel, gold)
    axis.set_title(panel["name"] + (f"\n{scores}" if scores else ""), fontsize=10)


def _set_canvas(axis, image_size: tuple[int, int], background) -> None:
    """The image (stretched to `image_size`, the boxes' pixel frame) or a blank canvas of that size."""
    width, height = image_size
    if background is not None:
        axis.imshow(background, extent=(0, width, height, 0))
    else:
        axis.set_facecolor("#f2f2f2")
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_aspect("equal")
    axis.tick_params(labelsize=7)


def _legend_handles(with_gold: bool) -> list:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="none", edgecolor="#b00000", linewidth=2.0, label="attended (a >= 1/n)")]
    if with_gold:
        handles.append(
            Patch(facecolor="none", edgecolor=GOLD_COLOUR, linewidth=2.5, ls="--", label="gold phrase box")
        )
    return handles


def draw_attention(
    panels: Sequence[Panel],
    out_path: str | Path,
    image_path: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    gold_boxes: torch.Tensor | None = None,
    title: str = "",
) -> Path:
    """Write a PNG of one word's attention over the region boxes, one panel per model, side by side.

    panels: dicts with `name` (str), `boxes` `(n, 4)` pixel (x1, y1, x2, y2), `weights` `(n,)` and
        optionally `attended` `(n,)` bool (default: weight >= 1/n). Fill colour and opacity follow the
        weight on one colour scale shared by all panels; attended regions are outlined in dark red; the
        `N_LABELLED` highest weights are written in their box.
    image_path: an image file (matplotlib `imread`) to draw on, stretched to `image_size`; without it,
        a blank canvas of `image_size`.
    image_size: `(width, height)` in the boxes' pixels; default: the image file's size, else the
        boxes' extent.
    gold_boxes: `(k, 4)` gold phrase boxes, outlined dashed in cyan; each panel's title then gives its
        attended-set precision / recall against them (IoU >= 0.5, as in the attention metrics).
    Returns the path written. The figure is `figure_inches(len(panels), image_size)` at `DPI`.
    """
    if not panels:
        raise ValueError("draw_attention needs at least one panel")
    plt = _import_pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    background = plt.imread(str(image_path)) if image_path is not None else None
    image_size = image_size or _default_size(panels, background)
    gold = None if gold_boxes is None else torch.as_tensor(gold_boxes, dtype=torch.float32).reshape(-1, 4)
    peak = max(float(torch.as_tensor(p["weights"]).max()) for p in panels)
    norm = Normalize(vmin=0.0, vmax=peak if peak > 0 else 1.0)
    colourmap = plt.get_cmap(ATTENTION_COLOURMAP)
    figure, axes = plt.subplots(
        1, len(panels), figsize=figure_inches(len(panels), image_size), squeeze=False, layout="constrained"
    )
    for axis, panel in zip(axes[0], panels, strict=True):
        _set_canvas(axis, image_size, background)
        _draw_panel(axis, panel, gold, colourmap, norm)
    figure.suptitle(title, fontsize=11)
    figure.colorbar(
        ScalarMappable(norm, colourmap),
        ax=axes[0].tolist(),
        location="bottom",
        shrink=0.6,
        aspect=40,
        label="attention weight",
    )
    figure.legend(
        handles=_legend_handles(gold is not None and len(gold) > 0),
        loc="outside lower center",
        ncols=2,
        fontsize=8,
        frameon=False,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=DPI)
    plt.close(figure)
    return out_path


def _default_size(panels: Sequence[Panel], background) -> tuple[int, int]:
    if background is not None:
        return background.shape[1], background.shape[0]
    boxes = torch.cat([torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4) for p in panels])
    return max(1, int(boxes[:, 2].max().ceil())), max(1, int(boxes[:, 3].max().ceil()))


# ---------------------------------------------------------------------------------------------------------
# From a dataset row
# ---------------------------------------------------------------------------------------------------------


def find_row(split: datasets.Dataset, image_id: str) -> int:
    """Row of `image_id` in `split`; a ValueError naming a few valid ids if it is absent."""
    ids = list(split.with_format(None)["image_id"])
    if image_id not in ids:
        raise InvalidValueError(
            f"image id {image_id!r} is not in the split ({len(ids)} images); some valid ids: {ids[:5]}"
        )
    return ids.index(image_id)


def find_caption(captions: Sequence[str], caption: str | int) -> tuple[str, int | None]:
    """(caption text, its index among the image's captions or None when it is free text).

    An int, or a string of digits, is an index; other text matching one of the captions word for word
    (`split_words`) is that caption; any other text is used as is (it has no gold phrases).
    """
    if isinstance(caption, int) or caption.strip().isdigit():
        index = int(caption)
        if not 0 <= index < len(captions):
            raise InvalidValueError(f"caption index {index} is outside the image's {len(captions)} captions")
        return captions[index], index
    words = split_words(caption)
    matches = [i for i, c in enumerate(captions) if split_words(c) == words]
    return (captions[matches[0]], matches[0]) if matches else (caption, None)


def phrase_boxes_for_word(phrases: Sequence[dict], word_index: int) -> torch.Tensor:
    """Gold boxes `(k, 4)` of the grounded phrases whose word span covers `word_index`; `(0, 4)` if none.

    Phrases without boxes or of an ungrounded type (scene, notvisual) are skipped, as in the metrics.
    """
    boxes = [
        box
        for phrase in phrases
        if phrase["first_word"] <= word_index < phrase["first_word"] + phrase["num_words"]
        and not any(t in (phrase.get("phrase_type") or "").split("/") for t in UNGROUNDED_PHRASE_TYPES)
        for box in phrase["boxes"] or []
    ]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def _panel_name(name: str, model: MatcherPreTrainedModel) -> str:
    config = model.config
    constraints = [
        f"{n}={getattr(config, f'{n}_weight'):g}" for n in ("ccr", "ccs") if getattr(config, f"{n}_weight", 0)
    ]
    details = [getattr(config, "direction", None), *constraints]
    return f"{name} ({', '.join(d for d in details if d)})"


def _model_name(model_dir: str | Path) -> str:
    """`runs/demo/model` -> `demo`; any other folder -> its own name."""
    path = Path(model_dir).resolve()
    return path.parent.name if path.name == "model" else path.name


def visualize_models(
    models: Sequence[tuple[str, MatcherPreTrainedModel, PreTrainedTokenizerBase]],
    split: datasets.Dataset,
    image_id: str,
    caption: str | int,
    word: str | int,
    out_path: str | Path,
    image_path: str | Path | None = None,
) -> Path:
    """`visualize` with models already loaded: one panel per (name, model, tokenizer)."""
    if "boxes" not in split.column_names:
        raise ValueError(f"attention pictures need a 'boxes' column; the split has {split.column_names}")
    row_index = find_row(split, image_id)
    columns = [c for c in ("captions", "phrases", "image_size") if c in split.column_names]
    row = split.select_columns(columns).with_format(None)[row_index]
    tensors = split.with_format("torch", columns=["features", "boxes"])[row_index]
    features, boxes = tensors["features"].float(), tensors["boxes"].float()
    check_boxes(boxes, features.shape[0], f"image {image_id!r}")
    text, caption_index = find_caption(row["captions"], caption)
    word_index = find_word(text, word)
    phrases = row.get("phrases")
    gold = (
        phrase_boxes_for_word(phrases[caption_index], word_index)
        if phrases and caption_index is not None
        else None
    )
    panels = []
    for name, model, tokenizer in models:
        weights, attended = _word_attention(model, tokenizer, features, text, word_index)
        panels.append(
            {"name": _panel_name(name, model), "boxes": boxes, "weights": weights, "attended": attended}
        )
    size = tuple(row["image_size"]) if row.get("image_size") else None
    return draw_attention(panels, out_path, image_path, size, gold, _title(image_id, text, word_index, gold))


def _title(image_id: str, caption: str, word_index: int, gold: torch.Tensor | None) -> str:
    word = split_words(caption)[word_index]
    grounding = "no gold phrase covers this word" if gold is None or not len(gold) else ""
    lines = [f"{image_id} - word {word!r} (word {word_index})", *textwrap.wrap(f'"{caption}"', 90)]
    return "\n".join(lines + ([grounding] if grounding else []))


def visualize(
    model_dirs: Sequence[str | Path],
    split: datasets.Dataset,
    image_id: str,
    caption: str | int,
    word: str | int,
    out_path: str | Path,
    image_path: str | Path | None = None,
) -> Path:
    """Draw `word`'s attention over the regions of image `image_id` of `split`, one panel per model.

    model_dirs: saved model folders (one, or e.g. base and constrained), each with its tokenizer.
    caption: an index into the image's captions (int or digit string) or a caption text; the gold
        phrase boxes covering the word are drawn when the caption is one of the image's own.
    word: a word of the caption (first occurrence) or its index. Returns the PNG path.
    """
    if not model_dirs:
        raise ValueError("visualize needs at least one model folder")
    models = [(_model_name(path), *load_matcher(path)) for path in model_dirs]
    return visualize_models(models, split, image_id, caption, word, out_path, image_path)
