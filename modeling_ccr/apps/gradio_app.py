"""The web app (Gradio, optional): rank captions for a photo or a corpus image with each word's attention
drawn over the region boxes, and search a corpus with a caption; one or two models side by side.

`python app.py --model runs/demo/model [--model2 DIR] [--corpus DIR] [--images DIR]` (or
`python -m modeling_ccr.apps.gradio_app ...`); on a Hugging Face Space the same settings come from the environment
(CCR_MODEL, CCR_MODEL2, CCR_CORPUS, CCR_SPLIT, CCR_IMAGES, CCR_SHOW). With no model the app opens the
digit-scenes demo models (`ccr demo --corpus digit-scenes`, DEMO_DIR) on a test scene, ranked. docs/app.md.

- What the app computes, without any UI: `Matcher` (a loaded model, from a folder or a Hub id),
  `Gallery` (a corpus split whose region embeddings are encoded once per model, with its photo folder),
  `PhotoReader` (region features of an uploaded photo through the timm extractor, `vision` extra, set up
  from the corpus's `extraction.json`), and `rank_captions`, `search_images`, `attention_figure`.
- `MatchingApp` holds the app's state and answers the page's three events; `build_demo` draws the page
  (gradio is imported there only). Every event has an `api_name` (`/rank_captions`, `/search_images`,
  `/pick_image`), so `gradio_client` runs the same flows as the page.
- `parse_args`, `build_app`, `main`: the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import yaml
from transformers import PreTrainedTokenizerBase

from ..artifacts.loading import load_matcher
from ..data.image_corpus import tower_feature_split
from ..data.schema import IMAGE_COLUMN, is_image_corpus
from ..errors import UserError, first_line
from ..evaluation.gallery import encode_captions, encode_images
from ..evaluation.pictures import check_boxes, draw_attention, find_word, word_attention_over_regions
from ..models.modeling_matcher import MatcherPreTrainedModel
from ..models.pipelines import MAX_CAPTION_CHARS
from ..text.tokenization import split_words
from ..vision.digit_scenes import CONFIG_FILE as DIGIT_SCENES_CONFIG
from ..vision.digit_scenes import DIGIT_WORDS


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

    An image corpus (the pixels, for models with a vision tower) is seen by each model through its own
    tower, once (`seen_by`); its pictures are its own pixels. Region embeddings are encoded once per model
    (`embeddings`) and reused by every search.
    """

    split: datasets.Dataset
    name: str
    images_dir: Path | None = None
    _views: dict[int, datasets.Dataset] = field(default_factory=dict, repr=False)
    _embeddings: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    _pixels_dir: Path | None = field(default=None, repr=False)

    @property
    def image_ids(self) -> list[str]:
        return list(self.split.with_format(None)["image_id"])

    def row(self, image_id: str) -> int:
        ids = self.image_ids
        if image_id not in ids:
            raise AppError(f"image {image_id!r} is not in {self.name}; some of its images: {ids[:5]}")
        return ids.index(image_id)

    def seen_by(self, matcher: Matcher | None) -> datasets.Dataset:
        """The split as `matcher` scores it: region features as stored, or an image corpus through the
        matcher's vision tower (each image once, kept)."""
        if not is_image_corpus(self.split):
            return self.split
        if matcher is None or getattr(matcher.model, "vision_tower", None) is None:
            name = "the app" if matcher is None else matcher.name
            raise AppError(
                f"{self.name} holds images, but {name} reads region features: give it a feature corpus"
            )
        key = id(matcher.model)
        if key not in self._views:
            self._views[key] = tower_feature_split(matcher.model, self.split)
        return self._views[key]

    def regions(
        self, image_id: str, matcher: Matcher | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(n_regions, feature_dim)` features (of an image corpus: `matcher`'s tower features) and
        `(n_regions, 4)` boxes in the image's pixels (None without a boxes column)."""
        split = self.seen_by(matcher)
        columns = ["features", "boxes"] if "boxes" in split.column_names else ["features"]
        row = split.with_format("torch", columns=columns)[self.row(image_id)]
        return row["features"].float(), (row["boxes"].float() if "boxes" in row else None)

    def captions(self, image_id: str) -> list[str]:
        return list(self.split.select_columns(["captions"]).with_format(None)[self.row(image_id)]["captions"])

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        if "image_size" not in self.split.column_names:
            return None
        size = self.split.select_columns(["image_size"]).with_format(None)[self.row(image_id)]["image_size"]
        return tuple(size) if size else None

    def photo(self, image_id: str) -> Path | None:
        """The photo file of a row: in the images folder, or an image corpus's own pixels (written once)."""
        if is_image_corpus(self.split):
            return self._pixels(image_id)
        if self.images_dir is None:
            return None
        path = self.images_dir / image_id
        return path if path.is_file() else None

    def embeddings(self, matcher: Matcher) -> tuple[torch.Tensor, torch.Tensor]:
        """`(n_images, max_regions, D)` region embeddings and mask of every row, for this matcher."""
        key = id(matcher.model)
        if key not in self._embeddings:
            self._embeddings[key] = encode_images(matcher.model, self.seen_by(matcher))
        return self._embeddings[key]

    def _pixels(self, image_id: str) -> Path:
        """An image corpus row's encoded image as a file, for drawing on (its bytes as stored)."""
        if self._pixels_dir is None:
            self._pixels_dir = Path(tempfile.mkdtemp(prefix="ccr-app-images-"))
        index = self.row(image_id)
        path = self._pixels_dir / f"{index}.png"
        if not path.is_file():
            # The `image` feature decodes the stored bytes (or file) to a PIL image.
            stored = self.split.select_columns([IMAGE_COLUMN]).with_format(None)[index][IMAGE_COLUMN]
            stored.convert("RGB").save(path)
        return path


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
        from ..vision.weights import recorded_weights

        self.extraction = extraction
        self.extractor = RegionFeatureExtractor(
            extraction.get("backbone", "efficientnet_lite0"),
            recorded_weights(extraction),
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


def check_caption_lengths(captions: Sequence[str]) -> None:
    """Refuse a caption longer than the pipeline's limit: the app has one worker, and no caption of a
    research corpus comes near it."""
    for i, caption in enumerate(captions):
        if len(caption) > MAX_CAPTION_CHARS:
            raise AppError(
                f"caption {i + 1} has {len(caption)} characters; the app scores captions of at most "
                f"{MAX_CAPTION_CHARS}"
            )


@torch.no_grad()
def rank_captions(matcher: Matcher, features: torch.Tensor, captions: list[str]) -> list[tuple[str, float]]:
    """The captions with their scores against one image `(n_regions, feature_dim)`, best first."""
    captions = [c.strip() for c in captions if c.strip()]
    if not captions:
        raise AppError("type at least one caption (one per line)")
    check_caption_lengths(captions)
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
    check_caption_lengths([caption])
    if not split_words(caption):
        raise AppError("type a caption to search with")
    image_embeds, region_mask = gallery.embeddings(matcher)
    text_embeds, word_mask = encode_captions(matcher.model, matcher.tokenizer, [caption])
    scores = matcher.model.similarity(image_embeds, region_mask, text_embeds, word_mask)[:, 0].float().cpu()
    top = torch.topk(scores, min(k, len(scores))).indices.tolist()
    ids = gallery.image_ids
    return [(ids[i], float(scores[i])) for i in top]


def default_word(caption: str, preferred: Sequence[str] = ()) -> str:
    """The word whose attention is drawn when none is chosen: the caption's first `preferred` word (the
    digit words on digit scenes), else its longest word."""
    words = [w for w in split_words(caption) if w.isalnum()] or split_words(caption)
    return next((w for w in words if w in preferred), None) or max(words, key=len)


def attention_figure(
    matchers: list[Matcher],
    features: torch.Tensor | Sequence[torch.Tensor],
    boxes: torch.Tensor,
    caption: str,
    word: str,
    out_path: Path,
    image_path: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """A PNG of `word`'s attention over the boxes, one panel per matcher, drawn on the photo when given.

    features: the image's `(n_regions, feature_dim)` features, or one such tensor per matcher (each
    vision tower's own features of the same regions)."""
    per_matcher = [features] * len(matchers) if isinstance(features, torch.Tensor) else list(features)
    for regions in per_matcher:
        check_boxes(torch.as_tensor(boxes), regions.shape[0])
    word_index = find_word(caption, word or default_word(caption))
    panels = []
    for matcher, regions in zip(matchers, per_matcher, strict=True):
        if not matcher.model.config.has_cross_attention:
            continue  # global-embedding models attend nowhere
        weights, _ = word_attention_over_regions(
            matcher.model, matcher.tokenizer, regions, caption, word_index
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


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------


MAX_RESULTS = 12


class MatchingApp:
    """The app's state: one or two matchers, an optional gallery, an optional photo reader.

    shown: the corpus image the page opens with, already ranked (None: an empty page); preferred_words:
    the words drawn by default when the caption has one (the digit words on digit scenes)."""

    def __init__(
        self,
        matchers: list[Matcher],
        gallery: Gallery | None,
        photos: PhotoReader | None,
        shown: str | None = None,
        preferred_words: Sequence[str] = (),
    ):
        if not 1 <= len(matchers) <= 2:
            raise AppError(f"the app compares one or two models, got {len(matchers)}")
        if shown is not None and gallery is None:
            raise AppError(f"--show {shown}: the app has no corpus to show it from (give --corpus DIR)")
        self.matchers = matchers
        self.gallery = gallery
        self.photos = photos
        self.shown = shown
        self.preferred_words = tuple(preferred_words)
        self.scratch = Path(tempfile.mkdtemp(prefix="ccr-app-"))
        if shown is not None:
            gallery.row(shown)  # an unknown image is refused at start, in one line

    # -- the three answers --------------------------------------------------------------------------
    def rank(
        self, photo: str | None, image_id: str | None, captions: str, word: str
    ) -> tuple[list[list], np.ndarray, str]:
        """Rows (rank, caption, one score per model) by the first model, the attention picture, a note."""
        features, boxes, image_path, size = self._image(photo, image_id)
        lines = [line for line in (captions or "").splitlines() if line.strip()]
        if not lines and image_id and self.gallery is not None and not photo:
            lines = self.gallery.captions(image_id)
        rankings = [dict(rank_captions(m, f, lines)) for m, f in zip(self.matchers, features, strict=True)]
        order = list(rankings[0])
        rows = [[i + 1, c, *[round(r[c], 4) for r in rankings]] for i, c in enumerate(order)]
        top = order[0]
        chosen = word.strip() if word and word.strip() else default_word(top, self.preferred_words)
        picture = attention_figure(
            self.matchers, features, boxes, top, chosen, self.scratch / "attention.png", image_path, size
        )
        note = f"Attention of the word **{chosen}** in the best caption of {self.matchers[0].name}."
        return rows, as_array(picture), note

    def search(self, caption: str, k: float) -> tuple[list[tuple[np.ndarray, str]], list[list]]:
        """The top-k images of the first model (pictures) and every model's top k (rows)."""
        if self.gallery is None:
            raise AppError("start the app with --corpus DIR to search a corpus")
        k = max(1, min(int(k), MAX_RESULTS))
        results = [(m, search_images(m, self.gallery, caption, k)) for m in self.matchers]
        rows = [[m.name, i + 1, image_id, round(score, 4)] for m, found in results for i, (image_id, score) in
                enumerate(found)]  # fmt: skip
        pictures = [(self._picture(image_id), f"{i + 1}. {image_id} ({score:.3f})")
                    for i, (image_id, score) in enumerate(results[0][1])]  # fmt: skip
        return pictures, rows

    def pick(self, image_id: str | None) -> tuple[str, np.ndarray | None]:
        """A corpus image's own captions (one per line) and its picture."""
        if not image_id or self.gallery is None:
            return "", None
        return "\n".join(self.gallery.captions(image_id)), self._picture(image_id)

    # -- helpers ------------------------------------------------------------------------------------
    def _image(self, photo: str | None, image_id: str | None):
        """Features (one tensor per matcher), boxes, photo path and size of the uploaded photo, else of the
        picked corpus image."""
        if photo:
            if self.photos is None:
                raise AppError("photos need the region extractor: start the app with the corpus's extraction")
            features, boxes, size = self.photos.read(photo)
            return [features] * len(self.matchers), boxes, photo, size
        if image_id and self.gallery is not None:
            seen = [self.gallery.regions(image_id, m) for m in self.matchers]
            boxes = seen[0][1]
            if boxes is None:
                raise AppError(f"{self.gallery.name} has no region boxes: attention cannot be drawn")
            features = [regions for regions, _ in seen]
            return features, boxes, self.gallery.photo(image_id), self.gallery.image_size(image_id)
        raise AppError("upload a photo or pick an image of the corpus")

    def _picture(self, image_id: str) -> np.ndarray:
        photo = self.gallery.photo(image_id)
        if photo is not None:
            from ..vision import read_image

            return np.asarray(read_image(photo))
        _, boxes = self.gallery.regions(image_id, self.matchers[0])
        if boxes is None:
            raise AppError(f"{self.gallery.name} has neither photos (--images) nor boxes to draw")
        out = self.scratch / f"layout_{abs(hash(image_id))}.png"
        return as_array(layout_picture(boxes, self.gallery.image_size(image_id), out, image_id))


PHOTO_KINDS = "a photo (JPEG, PNG, WebP, BMP, GIF or TIFF)"


def describe_upload(name: str | None, path: str | Path) -> str:
    """What an uploaded file is, for a message: its name, size and what its first bytes look like."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError:
        return f"{name or path.name!r} (unreadable)"
    if not head:
        kind = "an empty file"
    elif head.startswith(b"%PDF"):
        kind = "a PDF document"
    elif head.startswith((b"PK\x03\x04", b"\x1f\x8b")):
        kind = "an archive (zip or gzip)"
    elif b"\x00" not in head and head.decode("utf-8", errors="replace").count("\ufffd") == 0:
        kind = "text"
    else:
        kind = "binary data of no image format Pillow reads"
    return f"{name or path.name!r}: {kind}, {size} bytes"


def photo_upload_problem(name: str | None, path: str | Path, error: BaseException) -> str:
    """The one-line message for an upload the photo input cannot open (what was expected, what was found)."""
    return (
        f"the upload is not a picture: expected {PHOTO_KINDS}, found {describe_upload(name, path)} "
        f"({first_line(error)})"
    )


def checked_photo_input(component):
    """Make a `gr.Image` input turn an upload it cannot open into a one-line message in the page.

    gradio opens the upload with Pillow before any handler runs, so a text or PDF file would otherwise
    end in its generic "Error"; the wrapped `preprocess` names what was expected and what was found."""
    import gradio as gr

    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as err:  # Pillow: UnidentifiedImageError, DecompressionBombError, OSError, ...
            name = getattr(payload, "orig_name", None)
            raise gr.Error(photo_upload_problem(name, getattr(payload, "path", "") or "", err)) from None

    component.preprocess = checked
    return component


def _shown(function):
    """Run an event handler; a user error becomes a one-line message in the page (gr.Error)."""

    def handler(*args):
        try:
            return function(*args)
        except UserError as err:
            import gradio as gr

            raise gr.Error(str(err)) from None

    handler.__name__ = function.__name__
    return handler


def build_demo(app: MatchingApp):
    """The page, a `gradio.Blocks`. Element ids (`elem_id`) name what a browser test looks for."""
    import gradio as gr

    names = [m.name for m in app.matchers]
    image_ids = app.gallery.image_ids if app.gallery is not None else []
    default_choice = "a digit word, else the longest word" if app.preferred_words else "the longest word"
    # The opening view: the shown image, its own captions ranked, its default word's attention.
    opening = {"captions": "", "preview": None, "rows": None, "picture": None, "note": ""}
    if app.shown is not None:
        opening["captions"], opening["preview"] = app.pick(app.shown)
        opening["rows"], opening["picture"], opening["note"] = app.rank(None, app.shown, "", "")
    with gr.Blocks(title="modeling-ccr: image-text matching") as demo:
        gr.Markdown(
            f"# Image-text matching with {' vs '.join(names)}\n"
            "Region-word cross-attention matchers (modeling-ccr). Scores rank captions for an image and images "
            "for a caption; the picture shows one word's attention over the image's region boxes."
        )
        with gr.Tab("Rank captions for an image"):
            with gr.Row():
                with gr.Column():
                    photo = checked_photo_input(
                        gr.Image(
                            type="filepath",
                            label="Upload a photo",
                            elem_id="photo",
                            interactive=app.photos is not None,
                        )
                    )
                    picked = gr.Dropdown(
                        image_ids, value=app.shown, label="...or pick an image of the corpus", elem_id="pick"
                    )
                    captions = gr.Textbox(
                        opening["captions"], lines=5, label="Captions, one per line", elem_id="captions"
                    )
                    word = gr.Textbox(label=f"Word to show (default: {default_choice})", elem_id="word")
                    rank_button = gr.Button("Rank captions", variant="primary", elem_id="rank")
                with gr.Column():
                    ranked = gr.Dataframe(
                        opening["rows"],
                        headers=["rank", "caption", *[f"score ({n})" for n in names]],
                        label="Ranked captions",
                        elem_id="ranked",
                        # Long captions wrap, so every model's score column stays in view.
                        wrap=True,
                        column_widths=["10%", f"{90 - 18 * len(names)}%", *[f"{18}%"] * len(names)],
                    )
                    note = gr.Markdown(opening["note"], elem_id="note")
                    attention = gr.Image(
                        opening["picture"], label="Attention over the regions", elem_id="attention"
                    )
            preview = gr.Image(
                opening["preview"], label="Picked image", elem_id="preview", visible=bool(image_ids)
            )
        with gr.Tab("Search the corpus with a caption"):
            query = gr.Textbox(label="Caption", elem_id="query")
            k = gr.Slider(1, MAX_RESULTS, value=4, step=1, label="Images to show", elem_id="k")
            search_button = gr.Button("Search", variant="primary", elem_id="search")
            found = gr.Gallery(label=f"Top images ({names[0]})", columns=4, elem_id="found")
            found_rows = gr.Dataframe(headers=["model", "rank", "image", "score"], elem_id="found-rows")
        rank_button.click(
            _shown(app.rank),
            [photo, picked, captions, word],
            [ranked, attention, note],
            api_name="rank_captions",
        )
        search_button.click(_shown(app.search), [query, k], [found, found_rows], api_name="search_images")
        picked.change(_shown(app.pick), [picked], [captions, preview], api_name="pick_image")
    return demo


# ---------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------


# `ccr demo --corpus digit-scenes` writes these (modeling_ccr/cli/run.py, DIGIT_SCENES_DEMO_DIR); with no
# --model the app opens them, the constrained model beside the plain one.
DEMO_DIR = "runs/demo_digit_scenes"
DEMO_MODELS = ("constrained", "plain")
DEMO_COMMAND = "ccr demo --corpus digit-scenes"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="Web app: rank captions for a photo, search a corpus, see the attention. With no --model: "
        f"the digit-scenes demo models ({DEMO_DIR}/{{{','.join(DEMO_MODELS)}}}, made by `{DEMO_COMMAND}`).",
    )
    parser.add_argument(
        "--model",
        default=env("CCR_MODEL"),
        help="model folder or Hub id (env CCR_MODEL; default: the demo's)",
    )
    parser.add_argument("--model2", default=env("CCR_MODEL2"), help="a second model shown side by side")
    parser.add_argument(
        "--corpus", default=env("CCR_CORPUS"),
        help="DatasetDict folder to search and pick images from (default: the first model's training corpus)",
    )  # fmt: skip
    parser.add_argument("--split", default=env("CCR_SPLIT", "test"))
    parser.add_argument(
        "--images", default=env("CCR_IMAGES"), help="folder of the corpus's photos (by image_id)"
    )
    parser.add_argument(
        "--backbone", default=None, help="photo extractor: timm backbone (default: the corpus's)"
    )
    parser.add_argument("--weights", default=None, help="photo extractor weights (default: the corpus's)")
    parser.add_argument(
        "--grid", type=int, default=None, help="photo regions per side (default: the corpus's)"
    )
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument(
        "--show", default=env("CCR_SHOW"),
        help="a corpus image (image_id) the page opens with, ranked (default with the demo models: the test "
        "split's first image)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.demo = not args.model
    if args.demo and args.model2:
        parser.error("--model2 needs --model (with neither, the app opens the two demo models)")
    return args


def demo_model_folders(root: str | Path = DEMO_DIR) -> list[Path]:
    """The demo's model folders, constrained first; missing ones are a one-line error naming the command."""
    folders = [Path(root) / name / "model" for name in DEMO_MODELS]
    missing = [str(folder) for folder in folders if not (folder / "config.json").is_file()]
    if missing:
        raise AppError(
            f"the demo models are missing ({', '.join(missing)}): make them with `{DEMO_COMMAND}` "
            "(a few minutes on a CPU), or give --model DIR"
        )
    return folders


def build_app(args: argparse.Namespace):
    """The `MatchingApp` (models, gallery, photo reader) described by the parsed arguments."""
    from ..data.corpora import load_evaluation_split

    if args.demo:
        args.model, args.model2 = map(str, demo_model_folders())
    matchers = [load_app_matcher(m) for m in (args.model, args.model2) if m]
    gallery = None
    if args.corpus or (matchers[0].folder / "training_config.yaml").is_file():
        # --corpus, else the model's training corpus (the built-in one is rebuilt from its recorded seed).
        split, name = load_evaluation_split(matchers[0].folder, args.corpus, args.split)
        gallery = Gallery(split, f"{name} ({args.split})", Path(args.images) if args.images else None)
    corpus = Path(args.corpus) if args.corpus else corpus_of(matchers[0])
    photos = None
    overrides = {"backbone": args.backbone, "weights": args.weights, "grid": args.grid}
    if corpus is not None and (corpus / "extraction.json").is_file():
        photos = PhotoReader.for_corpus(corpus, **overrides)
    elif args.backbone:
        photos = PhotoReader({k: v for k, v in overrides.items() if v is not None})
    if photos is not None and photos.feature_dim != matchers[0].feature_dim:
        raise AppError(
            f"the photo extractor gives {photos.feature_dim}-d features; {matchers[0].name} takes "
            f"{matchers[0].feature_dim}-d: photos need the extractor the model was trained with"
        )
    shown = args.show
    if shown is None and args.demo and gallery is not None:
        shown = gallery.image_ids[0]
    digit_scenes = corpus is not None and (corpus / DIGIT_SCENES_CONFIG).is_file()
    return MatchingApp(matchers, gallery, photos, shown, DIGIT_WORDS if digit_scenes else ())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        app = build_app(args)
    except UserError as err:
        print(f"app.py: error: {err}", file=sys.stderr)
        return 2
    build_demo(app).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
