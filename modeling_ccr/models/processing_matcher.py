"""`MatcherProcessor`: a vision-tower matcher's image processor paired with its tokenizer (`AutoProcessor`).

`processor(images=..., text=[...])` gives every input the model takes: `pixel_values` (and, with
`region_boxes`, the boxes in the resized frame with their mask) from `MatcherImageProcessor`, and
`input_ids` / `attention_mask` from the tokenizer. Saved beside the model by the trainer; checkpoint code.
"""

from __future__ import annotations

from typing import Any

from transformers import ProcessorMixin
from transformers.image_processing_utils import BatchFeature


class MatcherProcessor(ProcessorMixin):
    """The image processor (`MatcherImageProcessor`) and the tokenizer of a matcher with a vision tower."""

    attributes = ["image_processor", "tokenizer"]  # noqa: RUF012 (read by ProcessorMixin as a class attribute)
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, region_boxes=None, return_tensors: str = "pt", **kwargs: Any):
        if images is None and text is None:
            raise ValueError("MatcherProcessor needs images=, text= or both")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(
                self.image_processor(images, region_boxes=region_boxes, return_tensors=return_tensors)
            )
        if text is not None:
            encoded = self.tokenizer(
                text, padding="longest", return_tensors=return_tensors, return_token_type_ids=False
            )
            data.update(encoded)
        return BatchFeature(data=data, tensor_type=return_tensors)
