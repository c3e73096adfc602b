"""Base matching losses (SPEC section 1)."""

from __future__ import annotations

import torch


def hinge_triplet_loss(
    image_to_captions: torch.Tensor,
    captions_to_image: torch.Tensor,
    margin: float,
    max_violation: bool,
    offset: int = 0,
    same_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """VSE++ hinge triplet loss, SUMMED over the local batch.

    image_to_captions: `(batch, n_global)` scores of each local image against every caption of the
    global batch; captions_to_image: `(n_global, batch)` scores of every global image against each local
    caption. Local pair i is global pair `offset + i`. On one process both are the `(batch, batch)`
    similarity matrix and offset is 0; under DDP the per-process losses add up to the loss of the
    whole global batch on one process.
    max_violation: use only the hardest negative (VSE++) instead of summing over all negatives.
    same_image: `(batch, n_global)` bool, True where local pair i and global pair j show the same image
        (two captions of one image in a batch); such pairs are never negatives of each other.
    """
    batch = image_to_captions.shape[0]
    rows = torch.arange(batch, device=image_to_captions.device)
    positive_columns = rows + offset
    positives = image_to_captions[rows, positive_columns]
    is_positive = torch.zeros_like(image_to_captions, dtype=torch.bool)
    is_positive[rows, positive_columns] = True
    if same_image is not None:
        is_positive |= same_image

    caption_costs = (margin + image_to_captions - positives.unsqueeze(1)).clamp_min(0)
    image_costs = (margin + captions_to_image - positives.unsqueeze(0)).clamp_min(0)
    caption_costs = caption_costs.masked_fill(is_positive, 0.0)
    image_costs = image_costs.masked_fill(is_positive.T, 0.0)
    if max_violation:
        return caption_costs.amax(dim=1).sum() + image_costs.amax(dim=0).sum()
    return caption_costs.sum() + image_costs.sum()
