"""Region features pooled from a backbone's feature map over pixel boxes (RoIAlign): written once, used by the
vision tower inside a matcher (`vision_tower.py`) and by the frozen extractor (`modeling_ccr.vision`).

Boxes are `(x1, y1, x2, y2)` in the pixels of the image the network saw (its input, `input_size`
`(height, width)`); a box's feature is the mean of the map over exactly that box. Checkpoint code: torch and
torchvision only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tiling_boxes(width: float, height: float, columns: int, rows: int) -> torch.Tensor:
    """`(rows * columns, 4)` float32 boxes tiling a `width x height` image exactly, row-major (top row first).

    Cell edges are `linspace(0, size, n + 1)`: neighbours share an edge, the outer edges are the image's.
    """
    if columns < 1 or rows < 1:
        raise ValueError(f"a tiling needs >= 1 cell per side, got {columns} x {rows}")
    xs = torch.linspace(0, width, columns + 1)
    ys = torch.linspace(0, height, rows + 1)
    x1, y1 = torch.meshgrid(xs[:-1], ys[:-1], indexing="xy")
    x2, y2 = torch.meshgrid(xs[1:], ys[1:], indexing="xy")
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4)


def grid_boxes(width: float, height: float, grid: int) -> torch.Tensor:
    """`(grid * grid, 4)` boxes of a `grid x grid` tiling of a `width x height` image (see `tiling_boxes`)."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    return tiling_boxes(width, height, grid, grid)


def cell_boxes(input_size: tuple[int, int], map_size: tuple[int, int]) -> torch.Tensor:
    """`(map_h * map_w, 4)` pixel boxes of every feature-map cell over an input of `input_size`
    `(height, width)`, row-major: the map is a uniform grid over the input."""
    (height, width), (map_height, map_width) = input_size, map_size
    return tiling_boxes(width, height, map_width, map_height)


def pool_boxes(
    feature_map: torch.Tensor, boxes: Sequence[torch.Tensor], input_size: tuple[int, int]
) -> torch.Tensor:
    """Mean of `feature_map` `(batch, channels, map_h, map_w)` over each box: `(n_boxes_total, channels)`.

    boxes: one `(n_i, 4)` tensor per image, `(x1, y1, x2, y2)` in the input's pixels (`input_size`
    `(height, width)`), concatenated in the output in image order. Differentiable in the map.
    """
    from torchvision.ops import roi_align

    height, width = input_size
    map_height, map_width = feature_map.shape[-2:]
    # The input was resized as a whole (no crop), so input pixel x sits at x * map_width / width on the map.
    scale = torch.tensor([map_width / width, map_height / height] * 2, device=feature_map.device)
    map_boxes = [(b.to(feature_map.device, torch.float32) * scale).to(feature_map.dtype) for b in boxes]
    # output_size 1 with adaptive sampling = the mean of the map over the box; aligned=True because box
    # coordinates are continuous (pixel i spans [i, i + 1)).
    pooled = roi_align(
        feature_map, map_boxes, output_size=1, spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )
    return pooled.flatten(1)
