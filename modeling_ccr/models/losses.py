"""Base matching losses (docs/spec.md section 1; the InfoNCE and unified losses as documented in docs/losses.md).

Every loss takes the same inputs, so DDP global negatives and "two captions of one image" work the same
for all of them, and every loss is SUMMED over the local batch (a constraint weight means the same at
any batch size, whichever base loss it is added to).
"""

from __future__ import annotations

import torch

BASE_LOSSES = ("hinge", "infonce", "unified")


def hinge_triplet_loss(
    image_to_captions: torch.Tensor,
    captions_to_image: torch.Tensor,
    margin: float,
    max_violation: bool,
    offset: int = 0,
    same_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """VSE++ hinge triplet loss: sum_i [margin + S(i, j) - S(i, i)]_+ over the hardest negative j
    (`max_violation`) or over all negatives, in both directions. Inputs as in `pair_gaps`."""
    total = image_to_captions.new_zeros(())
    for gaps in pair_gaps(image_to_captions, captions_to_image, offset, same_image):
        costs = (margin + gaps).clamp_min(0)
        total = total + (costs.amax(dim=1) if max_violation else costs.sum(dim=1)).sum()
    return total


def infonce_loss(
    image_to_captions: torch.Tensor,
    captions_to_image: torch.Tensor,
    temperature: float,
    offset: int = 0,
    same_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE (the symmetric contrastive loss of vision-language pre-training): for each pair and
    direction, -log softmax(S / temperature) at the positive over the positive and its negatives.
    Written as log(1 + sum_j exp((S_ij - S_ii) / temperature)), which is the same number."""
    scale = 1.0 / temperature
    total = image_to_captions.new_zeros(())
    for gaps in pair_gaps(image_to_captions, captions_to_image, offset, same_image):
        total = total + log_one_plus_sum_exp(scale * gaps).sum()
    return total


def unified_loss(
    image_to_captions: torch.Tensor,
    captions_to_image: torch.Tensor,
    margin: float,
    temperature: float,
    hard_negatives: int,
    offset: int = 0,
    same_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unified pair-similarity loss (our formulation, docs/losses.md): margin and hard-negative mining
    inside the contrastive softmax,

        temperature * log(1 + sum_{j in H_i} exp((S_ij - S_ii + margin) / temperature)),

    H_i the `hard_negatives` highest-scoring negatives of anchor i (0 = all). With margin 0 and all
    negatives it is temperature x InfoNCE; as temperature -> 0 with one hard negative it becomes the
    VSE++ hardest-negative hinge. The temperature factor keeps it in similarity units, like the hinge.
    """
    scale = 1.0 / temperature
    total = image_to_captions.new_zeros(())
    for gaps in pair_gaps(image_to_captions, captions_to_image, offset, same_image):
        if 0 < hard_negatives < gaps.shape[1]:
            gaps = gaps.topk(hard_negatives, dim=1).values
        total = total + log_one_plus_sum_exp(scale * (gaps + margin)).sum() / scale
    return total


def pair_gaps(
    image_to_captions: torch.Tensor,
    captions_to_image: torch.Tensor,
    offset: int = 0,
    same_image: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score of each negative minus the score of its positive, for both retrieval directions.

    image_to_captions: `(batch, n_global)` scores of each local image against every caption of the
    global batch; captions_to_image: `(n_global, batch)` scores of every global image against each local
    caption. Local pair i is global pair `offset + i`; on one process both are the `(batch, batch)`
    similarity matrix and offset is 0.
    same_image: `(batch, n_global)` bool, True where local pair i and global pair j show the same image
    (two captions of one image in a batch): such pairs are never negatives of each other.

    Returns (caption_gaps, image_gaps), each `(batch, n_global)`: caption_gaps[i, j] = S(image i,
    caption j) - S(i, i); image_gaps[i, j] = S(image j, caption i) - S(i, i); -inf where j is not a
    negative of i, so it costs nothing in any loss.
    """
    batch = image_to_captions.shape[0]
    rows = torch.arange(batch, device=image_to_captions.device)
    positives = image_to_captions[rows, rows + offset].unsqueeze(1)
    not_negative = torch.zeros_like(image_to_captions, dtype=torch.bool)
    not_negative[rows, rows + offset] = True
    if same_image is not None:
        not_negative |= same_image
    caption_gaps = (image_to_captions - positives).masked_fill(not_negative, float("-inf"))
    image_gaps = (captions_to_image.T - positives).masked_fill(not_negative, float("-inf"))
    return caption_gaps, image_gaps


def log_one_plus_sum_exp(logits: torch.Tensor) -> torch.Tensor:
    """log(1 + sum_j exp(logits_j)) over the last dim, stable; -inf entries contribute nothing."""
    zero = logits.new_zeros((*logits.shape[:-1], 1))
    return torch.logsumexp(torch.cat([zero, logits], dim=-1), dim=-1)


def matching_loss(
    name: str,
    image_to_captions: torch.Tensor,
    captions_to_image: torch.Tensor,
    *,
    margin: float,
    max_violation: bool,
    temperature: float,
    hard_negatives: int,
    offset: int = 0,
    same_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """The base loss named by a config's `loss` field, summed over the local batch."""
    pairs = dict(offset=offset, same_image=same_image)
    if name == "hinge":
        return hinge_triplet_loss(image_to_captions, captions_to_image, margin, max_violation, **pairs)
    if name == "infonce":
        return infonce_loss(image_to_captions, captions_to_image, temperature, **pairs)
    if name == "unified":
        return unified_loss(
            image_to_captions, captions_to_image, margin, temperature, hard_negatives, **pairs
        )
    raise ValueError(f"unknown base loss {name!r}; choose one of {list(BASE_LOSSES)}")
