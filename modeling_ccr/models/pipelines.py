"""`pipeline("image-text-matching", model=...)`: rank candidate captions for an image, or candidate images
for a caption, with a matcher's scores and, on request, each word's attention over the regions.

This file travels with a saved pipeline (`save_matching_pipeline`: transformers copies it into the model
folder and records it under `custom_pipelines` in config.json), so it imports only torch, numpy, PIL and
transformers: `pipeline("image-text-matching", model=<folder or Hub id>, trust_remote_code=True)` works in
a process without this package.

An image is a dict `{"features": (n_regions, feature_dim), "boxes": (n_regions, 4) optional}` of region
features, or a path / PIL image. A model with a vision tower reads paths and PIL images itself, through its
own image processor (`model.image_processor()`, the one saved with the checkpoint); with "boxes" regions
an image is `{"image": path or PIL image, "boxes": (n_regions, 4)}` in the image's pixels. For a model
that reads region features, paths and PIL images need a `region_extractor` (e.g.
`modeling_ccr.vision.RegionFeatureExtractor`, the `vision` extra) that gives the same kind of features the
model was trained on: `pipeline(..., region_extractor=extractor)`.

Calls:
- `pipe(image, candidate_captions=[...])` -> captions ranked best first: `{"caption", "score"}`, plus
  `"attention"` with `return_attention=True`: for each token of the caption (special tokens left out)
  `{"token", "regions": [{"box", "weight"}, ...]}`, its attention over the regions (t2i models: the
  word's softmax over regions; i2t models: each region's weight on the word).
- `pipe(caption, candidate_images=[...])` -> images ranked best first: `{"image_index", "score"}`
  (and `"attention"` as above, per image, with `return_attention=True`).
`top_k` keeps the best k (a positive integer). A caption may hold at most `MAX_CAPTION_CHARS` characters:
longer text is refused with a message rather than tokenized (the app uses the same limit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

TASK = "image-text-matching"
# Captions in the research corpora are under 400 characters; 2,000 leaves room for long descriptions while
# bounding the work one request can cause.
MAX_CAPTION_CHARS = 2000


class ImageTextMatchingPipeline(Pipeline):
    """Rank captions for an image or images for a caption with a region-word matcher (see the module docstring)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, region_extractor: Any = None, **kwargs):
        self.region_extractor = region_extractor
        super().__init__(*args, **kwargs)

    def _sanitize_parameters(
        self, candidate_captions=None, candidate_images=None, top_k=None, return_attention=None, **kwargs
    ):
        preprocess = {}
        if candidate_captions is not None:
            preprocess["candidate_captions"] = list(candidate_captions)
        if candidate_images is not None:
            preprocess["candidate_images"] = list(candidate_images)
        forward = {"return_attention": bool(return_attention)} if return_attention is not None else {}
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, found {top_k!r}")
        postprocess = {"top_k": top_k} if top_k is not None else {}
        return preprocess, forward, postprocess

    # -- inputs --------------------------------------------------------------------------------
    def _regions(self, image: Any, where: str) -> tuple[torch.Tensor, np.ndarray | None]:
        """`(n_regions, feature_dim)` float32 features and `(n_regions, 4)` boxes (or None) of one image."""
        if isinstance(image, dict):
            if "features" not in image:
                raise ValueError(
                    f"{where}: a region dict needs 'features' (n_regions, feature_dim); found {sorted(image)}"
                )
            features = torch.as_tensor(np.asarray(image["features"], dtype=np.float32))
            boxes = None if image.get("boxes") is None else np.asarray(image["boxes"], dtype=np.float32)
        else:
            if self.region_extractor is None:
                raise ValueError(
                    f"{where}: an image path or PIL image needs pipeline(..., region_extractor=...) (e.g. "
                    "modeling_ccr.vision.RegionFeatureExtractor); or pass {'features': ..., 'boxes': ...}"
                )
            features, boxes = self._extract(image)
        expected = self.model.config.feature_dim
        if features.ndim != 2 or features.shape[1] != expected or features.shape[0] == 0:
            raise ValueError(
                f"{where}: features must be (n_regions >= 1, {expected}), found {tuple(features.shape)}"
            )
        if boxes is not None and boxes.shape != (features.shape[0], 4):
            raise ValueError(f"{where}: boxes must be ({features.shape[0]}, 4), found {boxes.shape}")
        return features, boxes

    def _extract(self, image: Any) -> tuple[torch.Tensor, np.ndarray]:
        from PIL import Image

        if not isinstance(image, Image.Image):
            with Image.open(image) as opened:
                opened.load()
                image = opened.convert("RGB")
        [regions] = self.region_extractor.extract_images([image.convert("RGB")])
        return torch.as_tensor(regions.features), regions.boxes

    def preprocess(self, inputs, candidate_captions=None, candidate_images=None):
        if (candidate_captions is None) == (candidate_images is None):
            raise ValueError(
                "pass exactly one of candidate_captions= (inputs is an image) or candidate_images="
            )
        if candidate_captions is not None:
            images, captions, query = [inputs], candidate_captions, "image"
        else:
            if not isinstance(inputs, str) or not inputs.strip():
                raise ValueError(f"with candidate_images, inputs must be a caption string, found {inputs!r}")
            images, captions, query = candidate_images, [inputs], "caption"
        if not images or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ValueError("candidates must be a non-empty list (captions: non-empty strings)")
        too_long = next((i for i, c in enumerate(captions) if len(c) > MAX_CAPTION_CHARS), None)
        if too_long is not None:
            raise ValueError(
                f"caption {too_long} has {len(captions[too_long])} characters; at most {MAX_CAPTION_CHARS} are scored"
            )
        if getattr(self.model, "vision_tower", None) is not None:
            image_inputs = self._pixels(images)
        else:
            regions = [self._regions(image, f"image {i}") for i, image in enumerate(images)]
            n = max(f.shape[0] for f, _ in regions)
            features = torch.zeros(len(regions), n, regions[0][0].shape[1])
            region_mask = torch.zeros(len(regions), n, dtype=torch.bool)
            for i, (f, _) in enumerate(regions):
                features[i, : f.shape[0]] = f
                region_mask[i, : f.shape[0]] = True
            image_inputs = {
                "region_features": features,
                "region_mask": region_mask,
                "boxes": [b for _, b in regions],
            }
        encoded = self.tokenizer(
            captions,
            padding="longest",
            return_tensors="pt",
            return_special_tokens_mask=True,
            return_token_type_ids=False,
        )
        return {
            **image_inputs,
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "special_tokens_mask": encoded["special_tokens_mask"],
            "captions": captions,
            "query": query,
        }

    def _pixels(self, images: list) -> dict[str, Any]:
        """A vision-tower model's inputs for images (paths, PIL images, or {"image", "boxes"} dicts), made
        by the model's own image processor."""
        from PIL import Image

        uses_boxes = self.model.config.vision_tower["regions"] == "boxes"
        sources, boxes = [], []
        for i, image in enumerate(images):
            if isinstance(image, dict) and "image" in image:
                sources.append(image["image"])
                boxes.append(
                    None if image.get("boxes") is None else np.asarray(image["boxes"], dtype=np.float32)
                )
            elif isinstance(image, (str, Image.Image)) or hasattr(image, "__fspath__"):
                sources.append(image)
                boxes.append(None)
            else:
                raise ValueError(
                    f"image {i}: this model has a vision tower; pass a path, a PIL image or "
                    f"{{'image': ..., 'boxes': ...}}, found {type(image).__name__}"
                )
            if uses_boxes and (
                boxes[-1] is None or boxes[-1].ndim != 2 or boxes[-1].shape[-1] != 4 or not len(boxes[-1])
            ):
                raise ValueError(
                    f"image {i}: this model pools given boxes: pass {{'image': ..., 'boxes': (n, 4)}}"
                )
        processor = self.model.image_processor()
        return dict(processor(sources, region_boxes=boxes if uses_boxes else None))

    # -- model ---------------------------------------------------------------------------------
    def _forward(self, model_inputs, return_attention: bool = False):
        device = self.model.device
        input_ids = model_inputs["input_ids"].to(device)
        attention_mask = model_inputs["attention_mask"].to(device)
        model = self.model
        out = dict(model_inputs)
        if "pixel_values" in model_inputs:
            # Each image once through the tower; its region features then serve scores and attention alike.
            pixel_values = model_inputs["pixel_values"].to(device)
            given = model_inputs.get("region_boxes")
            given_mask = model_inputs.get("region_mask")
            features, region_mask, boxes = model.tower_features(
                pixel_values,
                None if given is None else given.to(device),
                None if given_mask is None else given_mask.to(device),
            )
            original = model.image_processor().to_original_boxes(
                boxes, model_inputs["image_sizes"].to(device)
            )
            out["boxes"] = [b[m].cpu().numpy() for b, m in zip(original, region_mask, strict=True)]
            out["region_mask"] = region_mask.cpu()
        else:
            features = model_inputs["region_features"].to(device)
            region_mask = model_inputs["region_mask"].to(device)
        images = model.get_image_features(features, region_mask)
        texts = model.get_text_features(input_ids, attention_mask)
        scores = model.score_pairs(
            images, region_mask, texts, attention_mask.bool()
        )  # (n_images, n_captions)
        out["scores"] = scores.float().cpu()
        if return_attention:
            if not model.config.has_cross_attention:
                raise ValueError(
                    f"{type(model).__name__} has no cross-attention: return_attention does not apply"
                )
            # Pair every image with every caption (one side has a single item), then ask for matched attention.
            n = max(features.shape[0], input_ids.shape[0])
            output = model(
                features.expand(n, -1, -1),
                region_mask.expand(n, -1),
                input_ids.expand(n, -1),
                attention_mask.expand(n, -1),
                output_attentions=True,
            )
            out["attentions"] = output.attentions.float().cpu()
            out["direction"] = getattr(model, "attention_direction", "t2i")
        return out

    # -- outputs -------------------------------------------------------------------------------
    def _token_attention(self, outputs, pair: int, caption: int, image: int) -> list[dict]:
        attention = outputs["attentions"][pair]
        n_regions = int(outputs["region_mask"][image].sum())
        boxes = outputs["boxes"][image]
        ids = outputs["input_ids"][caption]
        real = outputs["attention_mask"][caption].bool() & ~outputs["special_tokens_mask"][caption].bool()
        tokens = self.tokenizer.convert_ids_to_tokens(ids.tolist())
        result = []
        for t in torch.nonzero(real).flatten().tolist():
            weights = attention[t, :n_regions] if outputs["direction"] == "t2i" else attention[:n_regions, t]
            regions = [
                {
                    "region": j,
                    "weight": float(weights[j]),
                    **({"box": boxes[j].tolist()} if boxes is not None else {}),
                }
                for j in range(n_regions)
            ]
            result.append({"token": tokens[t], "regions": regions})
        return result

    def postprocess(self, model_outputs, top_k: int | None = None):
        scores = model_outputs["scores"]
        if model_outputs["query"] == "image":
            ranked = [
                {"caption": c, "score": float(s)}
                for c, s in zip(model_outputs["captions"], scores[0], strict=True)
            ]
            key = "caption_index"
        else:
            ranked = [{"image_index": i, "score": float(s)} for i, s in enumerate(scores[:, 0])]
            key = "image_index"
        for i, entry in enumerate(ranked):
            entry.setdefault(key, i)
            if "attentions" in model_outputs:
                image, caption = (0, i) if key == "caption_index" else (i, 0)
                entry["attention"] = self._token_attention(model_outputs, i, caption, image)
        ranked.sort(key=lambda entry: -entry["score"])
        return ranked[:top_k] if top_k else ranked


def register_pipeline() -> None:
    """Register the task with transformers (idempotent); importing this module does it."""
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=ImageTextMatchingPipeline, pt_model=AutoModel, type="multimodal"
    )


register_pipeline()


def save_matching_pipeline(model_dir: str, output_dir: str | None = None) -> str:
    """Make a model folder loadable with `pipeline("image-text-matching", model=folder, trust_remote_code=True)`:
    this file is copied in and recorded under `custom_pipelines` in config.json. Returns the folder."""
    from transformers import AutoTokenizer, pipeline

    model = AutoModel.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pipe = pipeline(TASK, model=model, tokenizer=tokenizer)
    pipe.save_pretrained(output_dir or model_dir)
    return output_dir or model_dir
