"""The Gradio page: rank captions for a photo or a corpus image (with each word's attention drawn over the
region boxes), and search a corpus with a caption. Two models are shown side by side.

Every event has an `api_name`, so `gradio_client` calls the same functions the page does:
`/rank_captions`, `/search_images`, `/pick_image`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from ..errors import UserError
from .core import (
    AppError,
    Gallery,
    Matcher,
    PhotoReader,
    as_array,
    attention_figure,
    default_word,
    layout_picture,
    rank_captions,
    search_images,
)

MAX_RESULTS = 12


class MatchingApp:
    """The app's state: one or two matchers, an optional gallery, an optional photo reader."""

    def __init__(self, matchers: list[Matcher], gallery: Gallery | None, photos: PhotoReader | None):
        if not 1 <= len(matchers) <= 2:
            raise AppError(f"the app compares one or two models, got {len(matchers)}")
        self.matchers = matchers
        self.gallery = gallery
        self.photos = photos
        self.scratch = Path(tempfile.mkdtemp(prefix="ccr-app-"))

    # -- the three answers --------------------------------------------------------------------------
    def rank(
        self, photo: str | None, image_id: str | None, captions: str, word: str
    ) -> tuple[list[list], np.ndarray, str]:
        """Rows (rank, caption, one score per model) by the first model, the attention picture, a note."""
        features, boxes, image_path, size = self._image(photo, image_id)
        lines = [line for line in (captions or "").splitlines() if line.strip()]
        if not lines and image_id and self.gallery is not None and not photo:
            lines = self.gallery.captions(image_id)
        rankings = [dict(rank_captions(m, features, lines)) for m in self.matchers]
        order = list(rankings[0])
        rows = [[i + 1, c, *[round(r[c], 4) for r in rankings]] for i, c in enumerate(order)]
        top = order[0]
        chosen = word.strip() if word and word.strip() else default_word(top)
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
        """Features, boxes, photo path and size of the uploaded photo, else of the picked corpus image."""
        if photo:
            if self.photos is None:
                raise AppError("photos need the region extractor: start the app with the corpus's extraction")
            features, boxes, size = self.photos.read(photo)
            return features, boxes, photo, size
        if image_id and self.gallery is not None:
            features, boxes = self.gallery.regions(image_id)
            if boxes is None:
                raise AppError(f"{self.gallery.name} has no region boxes: attention cannot be drawn")
            return features, boxes, self.gallery.photo(image_id), self.gallery.image_size(image_id)
        raise AppError("upload a photo or pick an image of the corpus")

    def _picture(self, image_id: str) -> np.ndarray:
        photo = self.gallery.photo(image_id)
        if photo is not None:
            from ..vision import read_image

            return np.asarray(read_image(photo))
        _, boxes = self.gallery.regions(image_id)
        if boxes is None:
            raise AppError(f"{self.gallery.name} has neither photos (--images) nor boxes to draw")
        out = self.scratch / f"layout_{abs(hash(image_id))}.png"
        return as_array(layout_picture(boxes, self.gallery.image_size(image_id), out, image_id))


def _shown(function):
    """Run an event handler; a user error becomes a one-line message in the page (gr.Error)."""

    def handler(*args):
        try:
            return function(*args)
        except UserError as err:
            raise gr.Error(str(err)) from None

    handler.__name__ = function.__name__
    return handler


def build_demo(app: MatchingApp) -> gr.Blocks:
    """The page. Element ids (`elem_id`) name what a browser test looks for."""
    names = [m.name for m in app.matchers]
    image_ids = app.gallery.image_ids if app.gallery is not None else []
    with gr.Blocks(title="modeling-ccr: image-text matching") as demo:
        gr.Markdown(
            f"# Image-text matching with {' vs '.join(names)}\n"
            "Region-word cross-attention matchers (modeling-ccr). Scores rank captions for an image and images "
            "for a caption; the picture shows one word's attention over the image's region boxes."
        )
        with gr.Tab("Rank captions for an image"):
            with gr.Row():
                with gr.Column():
                    photo = gr.Image(
                        type="filepath",
                        label="Upload a photo",
                        elem_id="photo",
                        interactive=app.photos is not None,
                    )
                    picked = gr.Dropdown(
                        image_ids, value=None, label="...or pick an image of the corpus", elem_id="pick"
                    )
                    captions = gr.Textbox(lines=5, label="Captions, one per line", elem_id="captions")
                    word = gr.Textbox(label="Word to show (default: the longest word)", elem_id="word")
                    rank_button = gr.Button("Rank captions", variant="primary", elem_id="rank")
                with gr.Column():
                    ranked = gr.Dataframe(
                        headers=["rank", "caption", *[f"score ({n})" for n in names]],
                        label="Ranked captions",
                        elem_id="ranked",
                    )
                    note = gr.Markdown(elem_id="note")
                    attention = gr.Image(label="Attention over the regions", elem_id="attention")
            preview = gr.Image(label="Picked image", elem_id="preview", visible=bool(image_ids))
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
