"""The built-in grounded synthetic corpus: the project's default data for demos, tests and benchmarks.

Each image is a set of `n_regions` region feature vectors with pixel boxes, five captions, and phrase
annotations (word span + gold boxes) in the schema of `modeling_ccr.data.schema`. The generative process
plants four failure modes of cross-attention on real photos, each behind a knob of
`SyntheticCorpusConfig`, so that attention quality is measurable and differs between models:

(a) correlated context: every category has a habitat (dog -> grass, boat -> water) whose regions co-occur
    with it (`habitat_cooccurrence`) but are rarely named (`context_mention_prob`);
(b) objects spanning several regions, partial views among them, some with IoU >= 0.5 with the gold box
    (they count as gold regions) and some smaller (`views_per_object`, `partial_view_*`);
(c) attribute-object binding: images come in groups with the same categories and attributes bound
    differently (a red dog with a blue car vs a blue dog with a red car; `binding_group_size`), so a
    bag-of-features matcher cannot tell them apart;
(d) distractor clutter, some of it confusable with a category (`confusable_clutter_fraction`).

See docs/corpus.md for the process in prose and measured difficulty. Everything is determined by
`SyntheticCorpusConfig.seed`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields

import datasets
import numpy as np
import torch

from ..metrics.attention import box_iou as metric_box_iou
from .schema import GeneratedCorpusSizes, corpus_features


@dataclass(frozen=True)
class Category:
    """An object category: its caption word, its Flickr30k-Entities-style phrase type, its habitat."""

    word: str
    phrase_type: str
    habitat: str


@dataclass(frozen=True)
class Context:
    """A scene/context type ("stuff"): the preposition and phrase a caption uses to name it."""

    name: str
    preposition: str
    phrase: str


CONTEXTS: tuple[Context, ...] = (
    Context("grass", "on", "the grass"),
    Context("room", "in", "a room"),
    Context("water", "in", "the water"),
    Context("sky", "under", "the sky"),
    Context("snow", "in", "the snow"),
    Context("sand", "on", "the sand"),
    Context("road", "on", "the road"),
    Context("street", "in", "the street"),
)

# Three categories per habitat: habitat co-occurrence is informative about a group of categories, not a
# single one, as on real photos (grass goes with dogs, balls and children).
CATEGORIES: tuple[Category, ...] = (
    Category("dog", "animals", "grass"),
    Category("ball", "other", "grass"),
    Category("child", "people", "grass"),
    Category("cat", "animals", "room"),
    Category("table", "other", "room"),
    Category("woman", "people", "room"),
    Category("boat", "vehicles", "water"),
    Category("surfboard", "other", "water"),
    Category("duck", "animals", "water"),
    Category("bird", "animals", "sky"),
    Category("kite", "other", "sky"),
    Category("airplane", "vehicles", "sky"),
    Category("sled", "vehicles", "snow"),
    Category("skier", "people", "snow"),
    Category("penguin", "animals", "snow"),
    Category("umbrella", "other", "sand"),
    Category("bucket", "other", "sand"),
    Category("crab", "animals", "sand"),
    Category("car", "vehicles", "road"),
    Category("bus", "vehicles", "road"),
    Category("truck", "vehicles", "road"),
    Category("man", "people", "street"),
    Category("bicycle", "vehicles", "street"),
    Category("skateboard", "other", "street"),
)

ATTRIBUTES: tuple[str, ...] = ("red", "blue", "green", "yellow", "white", "black", "brown", "orange")

CONNECTORS: tuple[str, ...] = ("and", "with", "next to", "near", "beside")
CAPTION_PREFIXES: tuple[str, ...] = ("", "", "there is", "a photo of", "we see")

SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Region roles recorded on each `SyntheticScene`, for tests and analyses (not stored in the dataset).
ROLE_FULL_VIEW = "full_view"  # an object's main region, box ~ the object's box (IoU >= 0.5)
ROLE_PARTIAL_GOLD = "partial_gold"  # a partial view with IoU >= 0.5: counts as a gold region
ROLE_PARTIAL = "partial"  # a smaller partial view, IoU < 0.5: not gold although it shows the object
ROLE_CONTEXT = "context"  # a context/habitat region (large box, never gold for an object)
ROLE_CLUTTER = "clutter"  # a random distractor
ROLE_CONFUSABLE = "confusable"  # a distractor partly similar to some category's prototype


# Named corpus variants. "hard": noisier regions, weaker colours, more confusable clutter, and captions
# that name fewer objects and fewer colours, as real captions leave most of a photo unsaid. Captions then
# fit several test images, so plain SCAN at the demo's budget stays far from saturation (docs/corpus.md
# has the measured rSum and the ceiling of a caption-only oracle).
SYNTHETIC_PRESETS: dict[str, dict] = {
    "hard": {
        "region_noise": 1.0,
        "partial_view_noise": 1.0,
        "clutter_noise": 1.0,
        "attribute_strength": 0.4,
        "confusable_clutter_fraction": 0.5,
        "confusable_strength": 0.8,
        "objects_per_caption": (1, 2),
        "attribute_mention_prob": 0.7,
    },
}


@dataclass
class SyntheticCorpusConfig(GeneratedCorpusSizes):
    """Every knob of the built-in corpus, with its default. The single source of truth for defaults.

    Ranges are inclusive `(low, high)` pairs. Feature "strengths" multiply unit-norm prototype vectors;
    noise knobs are the expected norm of the Gaussian noise vector added to a region.
    """

    # --- size and layout ---
    seed: int = 0  # everything below is drawn from this seed; same seed -> identical corpus
    train_images: int = 3000
    validation_images: int = 300
    test_images: int = 500
    captions_per_image: int = 5
    feature_dim: int = 128
    feature_dtype: str = "float32"  # storage dtype of `features`: "float32" or "float16"
    n_regions: int = 24  # regions per image (fixed; the schema allows it to vary)
    image_width_range: tuple[int, int] = (400, 640)  # pixels
    image_height_range: tuple[int, int] = (300, 500)  # pixels

    # --- objects and (b) partial views ---
    objects_per_image: tuple[int, int] = (3, 4)  # distinct categories, distinct attributes
    object_size_range: tuple[float, float] = (0.2, 0.5)  # object box side, as a fraction of the canvas side
    category_strength: float = 1.0  # weight of the category prototype in a full view
    attribute_strength: float = 0.7  # weight of the attribute (colour) prototype in a full view
    region_noise: float = 0.4  # noise norm of full views and context regions
    full_view_jitter: float = 0.08  # full-view box corners move by up to this fraction of the object side
    views_per_object: tuple[int, int] = (2, 3)  # regions per object: one full view + partial views
    partial_view_strength: float = 0.8  # partial views carry this fraction of the category + attribute
    partial_view_noise: float = 0.5  # noise norm of partial views (weaker, noisier views)
    partial_view_area_range: tuple[float, float] = (0.2, 0.8)  # area fraction of the object box = IoU

    # --- (a) correlated context ---
    habitat_cooccurrence: float = 0.85  # P(a present category's habitat regions are in the image)
    random_contexts_per_image: tuple[int, int] = (0, 1)  # extra non-habitat contexts per image
    regions_per_context: int = 2  # regions showing each present context
    context_strength: float = 1.0
    context_mention_prob: float = 0.15  # P(a caption names one of the image's contexts)
    habitat_object_leak: float = 0.7  # weight of a present category's prototype in its habitat's regions

    # --- (c) attribute-object binding ---
    # Images come in groups of up to this many that share categories, attributes, contexts and view counts
    # but bind attributes to objects by different permutations. 1 disables binding twins.
    binding_group_size: int = 6

    # --- (d) clutter ---
    n_clutter_prototypes: int = 32  # clutter regions are drawn around these "stuff" prototypes
    clutter_noise: float = 0.6
    confusable_clutter_fraction: float = 0.3  # fraction of clutter regions that are confusable
    confusable_strength: float = 0.5  # weight of a random category prototype in a confusable region
    clutter_size_range: tuple[float, float] = (0.05, 0.3)  # clutter box side fraction

    # --- captions ---
    objects_per_caption: tuple[int, int] = (2, 3)  # objects named per caption (capped by the image's)
    attribute_mention_prob: float = 0.9  # P(an object's phrase includes its attribute word)
    final_period_prob: float = 0.3  # P(a caption ends with " .")

    # --- named presets ---
    # A name from SYNTHETIC_PRESETS: its knobs replace those left at their defaults (explicit values win).
    preset: str | None = None

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SyntheticCorpusConfig:
        """The config of a named preset (`SYNTHETIC_PRESETS`), with `overrides` on top."""
        return cls(preset=name, **overrides)

    def _apply_preset(self) -> None:
        if self.preset is None:
            return
        if self.preset not in SYNTHETIC_PRESETS:
            raise ValueError(f"preset must be one of {sorted(SYNTHETIC_PRESETS)}, got {self.preset!r}")
        defaults = {f.name: f.default for f in fields(self)}
        for name, value in SYNTHETIC_PRESETS[self.preset].items():
            if getattr(self, name) == defaults[name]:
                setattr(self, name, value)

    def __post_init__(self) -> None:
        self._apply_preset()
        self.image_width_range = tuple(self.image_width_range)
        self.image_height_range = tuple(self.image_height_range)
        for name in (
            "objects_per_image",
            "object_size_range",
            "views_per_object",
            "partial_view_area_range",
            "random_contexts_per_image",
            "clutter_size_range",
            "objects_per_caption",
        ):
            setattr(self, name, tuple(getattr(self, name)))
            low, high = getattr(self, name)
            if low > high or low < 0:
                raise ValueError(f"SyntheticCorpusConfig.{name} must be (low, high) with 0 <= low <= high")
        if self.feature_dtype not in ("float32", "float16"):
            raise ValueError(f"feature_dtype must be 'float32' or 'float16', got {self.feature_dtype!r}")
        if self.objects_per_image[0] < 1 or self.objects_per_image[1] > len(ATTRIBUTES):
            raise ValueError(f"objects_per_image must lie in [1, {len(ATTRIBUTES)}] (distinct attributes)")
        if self.views_per_object[0] < 1:
            raise ValueError("views_per_object must be >= 1 (the full view)")
        if not 0.0 <= self.habitat_cooccurrence <= 1.0:
            raise ValueError(f"habitat_cooccurrence must be in [0, 1], got {self.habitat_cooccurrence}")
        if self.habitat_object_leak < 0:
            raise ValueError(f"habitat_object_leak must be >= 0, got {self.habitat_object_leak}")
        if self.binding_group_size < 1:
            raise ValueError(f"binding_group_size must be >= 1, got {self.binding_group_size}")
        if self.captions_per_image < 1 or self.objects_per_caption[0] < 1:
            raise ValueError("captions_per_image and objects_per_caption must be >= 1")
        # Context boxes cover >= 56% of the canvas and objects <= 25%, so a context region never reaches
        # IoU 0.5 with an object box; that needs objects no larger than half the canvas side.
        if self.object_size_range[1] > 0.5:
            raise ValueError("object_size_range must stay <= 0.5 so context regions are never gold regions")
        if self.n_regions < self.max_structured_regions() + 1:
            raise ValueError(
                f"n_regions={self.n_regions} cannot hold the worst case of {self.max_structured_regions()} "
                "object and context regions plus one clutter region; raise n_regions or lower "
                "objects_per_image / views_per_object / regions_per_context"
            )

    def max_structured_regions(self) -> int:
        """Most object + context regions an image can need (each object can bring its own habitat)."""
        max_objects = self.objects_per_image[1]
        max_contexts = min(max_objects + self.random_contexts_per_image[1], len(CONTEXTS))
        return max_objects * self.views_per_object[1] + max_contexts * self.regions_per_context


@dataclass
class Prototypes:
    """Unit-norm prototype vectors shared by all splits: `(n, feature_dim)` float64 each."""

    category: np.ndarray
    attribute: np.ndarray
    context: np.ndarray
    clutter: np.ndarray


@dataclass
class SyntheticObject:
    entity_id: str
    category: int  # index into CATEGORIES
    attribute: int  # index into ATTRIBUTES
    box: np.ndarray  # (4,) float pixel (x1, y1, x2, y2): the gold box


@dataclass
class SyntheticScene:
    """One generated image with everything the dataset row hides (region roles, habitats, binding group)."""

    image_id: str
    width: int
    height: int
    binding_group: int
    objects: list[SyntheticObject]
    contexts: list[int]  # indices into CONTEXTS present in the image
    habitat_contexts: list[int]  # the subset present because a category's habitat was drawn
    features: np.ndarray  # (n_regions, feature_dim) float32
    boxes: np.ndarray  # (n_regions, 4) float32 pixel (x1, y1, x2, y2)
    region_roles: list[str]  # one ROLE_* per region
    region_entities: list[str | None]  # entity id of the object/context a region shows, None for clutter
    captions: list[str] = field(default_factory=list)
    phrases: list[list[dict]] = field(default_factory=list)

    def to_row(self) -> dict:
        return {
            "image_id": self.image_id,
            "features": self.features,
            "boxes": self.boxes,
            "image_size": [self.width, self.height],
            "captions": self.captions,
            "phrases": self.phrases,
        }


@dataclass
class _GroupLayout:
    """What the images of one binding group share."""

    categories: np.ndarray  # (n_objects,) int
    attributes: np.ndarray  # (n_objects,) int, distinct
    views: np.ndarray  # (n_objects,) int
    contexts: list[int]
    habitat_contexts: list[int]
    permutations: list[tuple[int, ...]]  # one attribute permutation per member image


# ---------------------------------------------------------------------------------------------------------
# Sampling helpers
# ---------------------------------------------------------------------------------------------------------


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_prototypes(config: SyntheticCorpusConfig) -> Prototypes:
    """The corpus's prototype vectors, drawn from the config's seed (shared by every split)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0]))
    d = config.feature_dim
    return Prototypes(
        category=_unit_rows(rng, len(CATEGORIES), d),
        attribute=_unit_rows(rng, len(ATTRIBUTES), d),
        context=_unit_rows(rng, len(CONTEXTS), d),
        clutter=_unit_rows(rng, config.n_clutter_prototypes, d),
    )


def _randint(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _random_box(
    rng: np.random.Generator, width: int, height: int, side_range: tuple[float, float]
) -> np.ndarray:
    w = rng.uniform(*side_range) * width
    h = rng.uniform(*side_range) * height
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.array([x1, y1, x1 + w, y1 + h])


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of `(n, 4)` (or `(4,)`) and `(m, 4)` pixel boxes `(x1, y1, x2, y2)` -> `(n, m)`, in numpy.

    A view of the one IoU formula, `modeling_ccr.metrics.attention.box_iou`.
    """
    a = torch.as_tensor(np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4))
    return metric_box_iou(a, b).numpy()


def _full_view_box(
    rng: np.random.Generator, box: np.ndarray, width: int, height: int, jitter: float
) -> np.ndarray:
    """The object's box with each corner moved by up to `jitter` of the object's side (a detector's box)."""
    w, h = box[2] - box[0], box[3] - box[1]
    moved = box + rng.uniform(-jitter, jitter, size=4) * np.array([w, h, w, h])
    return np.clip(moved, 0, [width, height, width, height])


def _partial_view_box(rng: np.random.Generator, box: np.ndarray, area_fraction: float) -> np.ndarray:
    """A sub-box inside `box` covering `area_fraction` of it; being inside, its IoU with `box` is that fraction."""
    w, h = box[2] - box[0], box[3] - box[1]
    width_fraction = rng.uniform(area_fraction, 1.0)
    sub_w, sub_h = width_fraction * w, (area_fraction / width_fraction) * h
    x1 = box[0] + rng.uniform(0, w - sub_w)
    y1 = box[1] + rng.uniform(0, h - sub_h)
    return np.array([x1, y1, x1 + sub_w, y1 + sub_h])


def _context_box(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    # Sides >= 75% of the canvas: area >= 56%, so IoU with an object box (area <= 25%) stays < 0.45.
    return _random_box(rng, width, height, (0.75, 1.0))


def _clutter_boxes(
    rng: np.random.Generator,
    config: SyntheticCorpusConfig,
    width: int,
    height: int,
    object_boxes: np.ndarray,
    n: int,
) -> np.ndarray:
    """`(n, 4)` small random boxes, none with IoU >= 0.5 with an object box (where 16 tries allow).

    Clutter that accidentally matched an object's box would count as a gold region of that object.
    """
    tries = 16
    sides = rng.uniform(*config.clutter_size_range, size=(n * tries, 2)) * [width, height]
    corners = rng.uniform(0, 1, size=(n * tries, 2)) * ([width, height] - sides)
    candidates = np.concatenate([corners, corners + sides], axis=1)
    ok = (box_iou(candidates, object_boxes).max(axis=1) < 0.5).reshape(n, tries)
    first_ok = np.where(ok.any(axis=1), ok.argmax(axis=1), 0)
    return candidates.reshape(n, tries, 4)[np.arange(n), first_ok]


# ---------------------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------------------

_HABITAT_INDEX = {c.name: i for i, c in enumerate(CONTEXTS)}


def _sample_group_layout(
    rng: np.random.Generator, config: SyntheticCorpusConfig, group_size: int
) -> _GroupLayout:
    n_objects = _randint(rng, config.objects_per_image)
    categories = rng.choice(len(CATEGORIES), size=n_objects, replace=False)
    attributes = rng.choice(len(ATTRIBUTES), size=n_objects, replace=False)
    views = rng.integers(config.views_per_object[0], config.views_per_object[1] + 1, size=n_objects)
    # Each distinct habitat of the present categories is drawn once, so P(habitat | category) is the knob.
    habitats = sorted({_HABITAT_INDEX[CATEGORIES[c].habitat] for c in categories})
    habitat_contexts = [h for h in habitats if rng.random() < config.habitat_cooccurrence]
    # Extra contexts come from outside the categories' habitats, so they never raise the co-occurrence rate.
    others = [i for i in range(len(CONTEXTS)) if i not in habitats]
    n_random = min(_randint(rng, config.random_contexts_per_image), len(others))
    random_contexts = [int(i) for i in rng.choice(others, size=n_random, replace=False)] if n_random else []
    # Distinct attribute permutations: the members differ only in which object has which colour.
    all_permutations = list(itertools.permutations(range(n_objects)))
    n_members = min(group_size, len(all_permutations))
    chosen = rng.choice(len(all_permutations), size=n_members, replace=False)
    return _GroupLayout(
        categories=categories,
        attributes=attributes,
        views=views,
        contexts=sorted(habitat_contexts + random_contexts),
        habitat_contexts=habitat_contexts,
        permutations=[all_permutations[int(i)] for i in chosen],
    )


def _render_scene(
    rng: np.random.Generator,
    config: SyntheticCorpusConfig,
    prototypes: Prototypes,
    layout: _GroupLayout,
    permutation: tuple[int, ...],
    image_id: str,
    binding_group: int,
) -> SyntheticScene:
    """One image of a binding group: the group's layout with attributes bound by `permutation`."""
    width = _randint(rng, config.image_width_range)
    height = _randint(rng, config.image_height_range)
    # Per region: noise-free content, noise norm, box, role, entity. Noise is drawn once at the end.
    content: list[np.ndarray] = []
    noise_norm: list[float] = []
    boxes: list[np.ndarray] = []
    roles: list[str] = []
    entities: list[str | None] = []

    objects = []
    for k, (category, n_views) in enumerate(zip(layout.categories, layout.views, strict=True)):
        attribute = int(layout.attributes[permutation[k]])
        box = _random_box(rng, width, height, config.object_size_range)
        entity_id = str(k + 1)
        objects.append(SyntheticObject(entity_id, int(category), attribute, box))
        # Additive category + attribute: the mean over regions is the same whatever the binding, so only
        # a matcher that compares words with individual regions can tell binding twins apart.
        full = (
            config.category_strength * prototypes.category[category]
            + config.attribute_strength * prototypes.attribute[attribute]
        )
        content.append(full)
        noise_norm.append(config.region_noise)
        boxes.append(_full_view_box(rng, box, width, height, config.full_view_jitter))
        roles.append(ROLE_FULL_VIEW)
        entities.append(entity_id)
        for _ in range(int(n_views) - 1):
            area = rng.uniform(*config.partial_view_area_range)
            content.append(config.partial_view_strength * full)
            noise_norm.append(config.partial_view_noise)
            boxes.append(_partial_view_box(rng, box, area))
            roles.append(ROLE_PARTIAL_GOLD if area >= 0.5 else ROLE_PARTIAL)
            entities.append(entity_id)

    for context in layout.contexts:
        # A habitat region (the grass around the dog) is a large box that contains part of its object, so
        # its feature carries some of that category, as bottom-up features of big boxes do.
        leak = sum(
            prototypes.category[c]
            for c in layout.categories
            if context in layout.habitat_contexts and CATEGORIES[c].habitat == CONTEXTS[context].name
        )
        for _ in range(config.regions_per_context):
            content.append(
                config.context_strength * prototypes.context[context] + config.habitat_object_leak * leak
            )
            noise_norm.append(config.region_noise)
            boxes.append(_context_box(rng, width, height))
            roles.append(ROLE_CONTEXT)
            entities.append(f"scene-{CONTEXTS[context].name}")

    n_clutter = config.n_regions - len(content)
    clutter = prototypes.clutter[rng.integers(0, len(prototypes.clutter), size=n_clutter)]
    confusable = rng.random(n_clutter) < config.confusable_clutter_fraction
    # Confusable clutter leans towards a random category (present or not): it looks partly like an object.
    lean = prototypes.category[rng.integers(0, len(CATEGORIES), size=n_clutter)]
    clutter = clutter + confusable[:, None] * config.confusable_strength * lean
    object_boxes = np.stack([o.box for o in objects])
    content.extend(clutter)
    noise_norm.extend([config.clutter_noise] * n_clutter)
    boxes.extend(_clutter_boxes(rng, config, width, height, object_boxes, n_clutter))
    roles.extend(ROLE_CONFUSABLE if c else ROLE_CLUTTER for c in confusable)
    entities.extend([None] * n_clutter)

    d = config.feature_dim
    # Per-coordinate std norm/sqrt(d) gives noise vectors of expected norm ~= the knob.
    noise = rng.standard_normal((config.n_regions, d)) * (np.array(noise_norm)[:, None] / np.sqrt(d))
    features = np.stack(content) + noise
    # Shuffle the regions: a region's position must carry no information.
    order = rng.permutation(config.n_regions)
    scene = SyntheticScene(
        image_id=image_id,
        width=width,
        height=height,
        binding_group=binding_group,
        objects=objects,
        contexts=list(layout.contexts),
        habitat_contexts=list(layout.habitat_contexts),
        features=features[order].astype(np.float32),
        boxes=np.stack(boxes)[order].astype(np.float32),
        region_roles=[roles[i] for i in order],
        region_entities=[entities[i] for i in order],
    )
    _write_captions(rng, config, scene)
    return scene


# ---------------------------------------------------------------------------------------------------------
# Captions and phrases
# ---------------------------------------------------------------------------------------------------------


def _object_phrase(
    rng: np.random.Generator, config: SyntheticCorpusConfig, obj: SyntheticObject
) -> list[str]:
    words = ["a" if rng.random() < 0.8 else "the"]
    if rng.random() < config.attribute_mention_prob:
        words.append(ATTRIBUTES[obj.attribute])
    words.append(CATEGORIES[obj.category].word)
    return words


def _phrase_record(entity_id: str, words: list[str], phrase_type: str, first: int, boxes: list) -> dict:
    return {
        "entity_id": entity_id,
        "phrase": " ".join(words),
        "phrase_type": phrase_type,
        "first_word": first,
        "num_words": len(words),
        "boxes": [[float(v) for v in b] for b in boxes],
    }


def _one_caption(
    rng: np.random.Generator, config: SyntheticCorpusConfig, scene: SyntheticScene
) -> tuple[str, list[dict]]:
    words: list[str] = []
    phrases: list[dict] = []
    prefix = CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))]
    words.extend(prefix.split())
    n_named = min(_randint(rng, config.objects_per_caption), len(scene.objects))
    for position, k in enumerate(rng.choice(len(scene.objects), size=n_named, replace=False)):
        if position > 0:
            words.extend(CONNECTORS[int(rng.integers(len(CONNECTORS)))].split())
        obj = scene.objects[int(k)]
        phrase_words = _object_phrase(rng, config, obj)
        phrase_type = CATEGORIES[obj.category].phrase_type
        phrases.append(_phrase_record(obj.entity_id, phrase_words, phrase_type, len(words), [obj.box]))
        words.extend(phrase_words)
    if scene.contexts and rng.random() < config.context_mention_prob:
        context = CONTEXTS[scene.contexts[int(rng.integers(len(scene.contexts)))]]
        entity_id = f"scene-{context.name}"
        context_boxes = [b for b, e in zip(scene.boxes, scene.region_entities, strict=True) if e == entity_id]
        words.append(context.preposition)
        phrase_words = context.phrase.split()
        phrases.append(_phrase_record(entity_id, phrase_words, "scene", len(words), context_boxes))
        words.extend(phrase_words)
    if rng.random() < config.final_period_prob:
        words.append(".")
    return " ".join(words), phrases


def _write_captions(rng: np.random.Generator, config: SyntheticCorpusConfig, scene: SyntheticScene) -> None:
    for _ in range(config.captions_per_image):
        caption, phrases = _one_caption(rng, config, scene)
        scene.captions.append(caption)
        scene.phrases.append(phrases)


# ---------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------


def generate_scenes(
    config: SyntheticCorpusConfig, split: str, prototypes: Prototypes | None = None
) -> list[SyntheticScene]:
    """The scenes of one split, in row order, with the hidden structure (roles, habitats, groups).

    `build_synthetic_corpus(config)[split]` holds exactly these scenes' rows.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    prototypes = prototypes if prototypes is not None else make_prototypes(config)
    n_images = config.split_sizes()[split]
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1 + SPLITS.index(split)]))
    scenes: list[SyntheticScene] = []
    group = 0
    while len(scenes) < n_images:
        layout = _sample_group_layout(rng, config, min(config.binding_group_size, n_images - len(scenes)))
        for permutation in layout.permutations:
            scenes.append(_render_scene(rng, config, prototypes, layout, permutation, "", group))
        group += 1
    # Shuffle so that binding twins are not adjacent rows (sequential evaluation batches stay unbiased).
    scenes = [scenes[i] for i in rng.permutation(len(scenes))]
    for index, scene in enumerate(scenes):
        scene.image_id = f"synthetic-{split}-{index:05d}"
    return scenes


def build_synthetic_corpus(config: SyntheticCorpusConfig | None = None) -> datasets.DatasetDict:
    """The built-in grounded corpus: splits `train`, `validation`, `test`, one row per image.

    Rows follow `corpus_features(config.feature_dim, config.feature_dtype)`: `features` `(n_regions,
    feature_dim)`, `boxes` `(n_regions, 4)` float32 pixels, `image_size` (width, height), `captions`
    (`captions_per_image` strings) and `phrases` (per caption, the named objects with their word spans
    and gold boxes; named contexts as `scene` phrases).
    """
    config = config if config is not None else SyntheticCorpusConfig()
    prototypes = make_prototypes(config)
    features = corpus_features(config.feature_dim, config.feature_dtype)
    splits = {}
    for split in SPLITS:
        scenes = generate_scenes(config, split, prototypes)
        rows = [s.to_row() for s in scenes]
        columns = {name: [row[name] for row in rows] for name in features}
        if config.feature_dtype == "float16":
            columns["features"] = [f.astype(np.float16) for f in columns["features"]]
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
    return datasets.DatasetDict(splits)
