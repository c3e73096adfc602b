"""All-gather with gradient, so in-batch negatives come from the global batch under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def world_size_and_rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_padded(items: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every process's `(batch, length, D)` items and `(batch, length)` masks.

    Lengths differ between processes, so each pads to the global maximum first; padding is masked
    and every score ignores it. Gradients flow back to each process's own items.
    """
    length = torch.tensor([items.shape[1]], device=items.device)
    lengths = [torch.zeros_like(length) for _ in range(dist.get_world_size())]
    dist.all_gather(lengths, length)
    pad = int(torch.stack(lengths).max()) - items.shape[1]
    items = F.pad(items, (0, 0, 0, pad))
    mask = F.pad(mask, (0, pad))
    gathered_items = torch.cat(dist_fn.all_gather(items), dim=0)
    # gloo has no bool all-gather: masks travel as bytes.
    mask_bytes = mask.to(torch.uint8)
    gathered_masks = [torch.zeros_like(mask_bytes) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered_masks, mask_bytes)
    return gathered_items, torch.cat(gathered_masks, dim=0).bool()


def gather_without_grad(values: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's `(batch, ...)` tensor (same shape on every process), no gradient."""
    gathered = [torch.zeros_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, values)
    return torch.cat(gathered, dim=0)
