"""What the web app computes, without any UI: loaded matchers, the images they look at, rankings, pictures.

- `Matcher`: a loaded model (a local folder or a Hub id) with its tokenizer and a display name.
- `Gallery`: a corpus split (one row per image) whose region embeddings are encoded once per model, with
  the folder of its photos when there is one (corpora made by `ccr extract` name rows by file name).
- `PhotoReader`: region features of an uploaded photo through the timm extractor (`vision` extra), set up
  like the extraction that made the model's training corpus (its `extraction.json`).
- `rank_captions`, `search_images`, `attention_figure`: the app's three answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import yaml
from transformers import PreTrainedTokenizerBase

from ..errors import UserError
from ..evaluation import encode_captions, encode_images
from ..loading import load_matcher
from ..models.modeling_matcher import MatcherPreTrainedModel
from ..tokenization import split_words
from ..visualization import check_boxes, draw_attention, find_word, word_attention_over_regions


class AppError(UserError, ValueError):
    """Something the app's user asked for that cannot be done; shown in the page as one line."""


@dataclass
class Matcher:
    """A loaded matcher: `name` as shown in the app, the model (eval mode) and its tokenizer."""

    name: str
    model: MatcherPreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    folder: Path

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.feature_dim)


def load_app_matcher(model: str) -> Matcher:
    """A model folder, or a Hub id (`org/name`, downloaded once into the Hub cache)."""
    folder = Path(model)
    if not folder.exists() and model.count("/") == 1:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model))
    loaded, tokenizer = load_matcher(folder)
    resolved = folder.resolve()
    name = resolved.parent.name if resolved.name == "model" else resolved.name
    return Matcher(name, loaded, tokenizer, folder)


@dataclass
class Gallery:
    """A corpus split the app ranks and draws: `split` (one row per image), `images_dir` with its photos.

    Region embeddings are encoded once per model (`embeddings`) and reused by every search.
    """

    split: datasets.Dataset
    name: str
    images_dir: Path | None = None
    _embeddings: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def image_ids(self) -> list[str]:
        return list(self.split.with_format(None)["image_id"])

    def row(self, image_id: str) -> int:
        ids = self.image_ids
        if image_id not in ids:
            raise AppError(f"image {image_id!r} is not in {self.name}; some of its images: {ids[:5]}")
        return ids.index(image_id)

    def regions(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(n_regions, feature_dim)` features and `(n_regions, 4)` boxes (None without a boxes column)."""
        columns = ["features", "boxes"] if "boxes" in self.split.column_names else ["features"]
        row = self.split.with_format("torch", columns=columns)[self.row(image_id)]
        return row["features"].float(), (row["boxes"].float() if "boxes" in row else None)

    def captions(self, image_id: str) -> list[str]:
        return list(self.split.select_columns(["captions"]).with_format(None)[self.row(image_id)]["captions"])

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        if "image_size" not in self.split.column_names:
            return None
        size = self.split.select_columns(["image_size"]).with_format(None)[self.row(image_id)]["image_size"]
        return tuple(size) if size else None

    def photo(self, image_id: str) -> Path | None:
        """The photo file of a row, when the gallery has an images folder holding it."""
        if self.images_dir is None:
            return None
        path = self.images_dir / image_id
        return path if path.is_file() else None

    def embeddings(self, matcher: Matcher) -> tuple[torch.Tensor, torch.Tensor]:
        """`(n_images, max_regions, D)` region embeddings and mask of every row, for this matcher."""
        key = id(matcher.model)
        if key not in self._embeddings:
            self._embeddings[key] = encode_images(matcher.model, self.split)
        return self._embeddings[key]


def corpus_of(matcher: Matcher) -> Path | None:
    """The corpus folder the model was trained on (its `training_config.yaml`), when it is on this disk."""
    recorded = matcher.folder / "training_config.yaml"
    if not recorded.is_file():
        return None
    source = (yaml.safe_load(recorded.read_text()) or {}).get("data", {}).get("source")
    return Path(source) if source and source != "synthetic" and Path(source).is_dir() else None


class PhotoReader:
    """Region features and boxes of a photo file, with the extraction settings of a corpus
    (`extraction.json` beside it: backbone, weights, grid, image size), overridable."""

    def __init__(self, extraction: dict):
        from ..vision import RegionFeatureExtractor

        weights = extraction.get("weights")
        self.extraction = extraction
        self.extractor = RegionFeatureExtractor(
            extraction.get("backbone", "efficientnet_lite0"),
            None if weights in (None, "timm pretrained") else weights,
            grid=int(extraction.get("grid", 6)),
            image_size=extraction.get("image_size"),
            batch_size=1,
        )

    @classmethod
    def for_corpus(cls, corpus: Path, **overrides) -> PhotoReader:
        path = corpus / "extraction.json"
        if not path.is_file():
            raise AppError(f"{corpus} has no extraction.json: give --backbone/--weights/--grid for photos")
        recorded = json.loads(path.read_text())
        grid = recorded.get("regions", "").split("x")[0]
        extraction = {
            "backbone": recorded.get("backbone"),
            "weights": recorded.get("weights"),
            "grid": int(grid) if grid.isdigit() else 6,
            "image_size": tuple(recorded["image_size"]) if recorded.get("image_size") else None,
        }
        return cls({**extraction, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def feature_dim(self) -> int:
        return self.extractor.feature_dim

    def read(self, path: str | Path) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """`(n_regions, feature_dim)` features, `(n_regions, 4)` pixel boxes and `(width, height)`."""
        from ..vision import read_image

        regions = self.extractor.extract_images([read_image(path)])[0]
        return torch.from_numpy(regions.features), torch.from_numpy(regions.boxes), regions.image_size


@torch.no_grad()
def rank_captions(matcher: Matcher, features: torch.Tensor, captions: list[str]) -> list[tuple[str, float]]:
    """The captions with their scores against one image `(n_regions, feature_dim)`, best first."""
    captions = [c.strip() for c in captions if c.strip()]
    if not captions:
        raise AppError("type at least one caption (one per line)")
    if features.shape[-1] != matcher.feature_dim:
        raise AppError(
            f"{matcher.name} takes {matcher.feature_dim}-d region features; this image has {features.shape[-1]}-d"
        )
    model = matcher.model
    region_mask = torch.ones(1, features.shape[0], dtype=torch.bool, device=model.device)
    image_embeds = model.get_image_features(features[None].to(model.device), region_mask)
    text_embeds, word_mask = encode_captions(model, matcher.tokenizer, captions)
    scores = model.similarity(image_embeds, region_mask, text_embeds, word_mask)[0].float().cpu()
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    return [(captions[i], float(scores[i])) for i in order]


@torch.no_grad()
def search_images(matcher: Matcher, gallery: Gallery, caption: str, k: int) -> list[tuple[str, float]]:
    """The `k` images of the gallery that score highest with `caption`: (image_id, score), best first."""
    if not split_words(caption):
        raise AppError("type a caption to search with")
    image_embeds, region_mask = gallery.embeddings(matcher)
    text_embeds, word_mask = encode_captions(matcher.model, matcher.tokenizer, [caption])
    scores = matcher.model.similarity(image_embeds, region_mask, text_embeds, word_mask)[:, 0].float().cpu()
    top = torch.topk(scores, min(k, len(scores))).indices.tolist()
    ids = gallery.image_ids
    return [(ids[i], float(scores[i])) for i in top]


def default_word(caption: str) -> str:
    """The word whose attention is drawn when none is chosen: the caption's longest word."""
    words = [w for w in split_words(caption) if w.isalnum()] or split_words(caption)
    return max(words, key=len)


def attention_figure(
    matchers: list[Matcher],
    features: torch.Tensor,
    boxes: torch.Tensor,
    caption: str,
    word: str,
    out_path: Path,
    image_path: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """A PNG of `word`'s attention over the boxes, one panel per matcher, drawn on the photo when given."""
    check_boxes(torch.as_tensor(boxes), features.shape[0])
    word_index = find_word(caption, word or default_word(caption))
    panels = []
    for matcher in matchers:
        if not matcher.model.config.has_cross_attention:
            continue  # global-embedding models attend nowhere
        weights, _ = word_attention_over_regions(
            matcher.model, matcher.tokenizer, features, caption, word_index
        )
        panels.append({"name": matcher.name, "boxes": boxes, "weights": weights})
    if not panels:
        raise AppError("none of the models has cross-attention: there is no attention to draw")
    title = f'word {split_words(caption)[word_index]!r} of "{caption}"'
    return draw_attention(panels, out_path, image_path, image_size, title=title)


def layout_picture(
    boxes: torch.Tensor, image_size: tuple[int, int] | None, out_path: Path, title: str
) -> Path:
    """A picture of an image without a photo: its region boxes on a blank canvas."""
    weights = torch.zeros(len(boxes))
    return draw_attention([{"name": title, "boxes": boxes, "weights": weights}], out_path, None, image_size)


def as_array(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return (imread(str(path))[..., :3] * 255).round().astype(np.uint8)
