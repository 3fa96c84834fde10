"""Click inputs: corrective clicks and the current mask as extra decoder inputs.

A refinement round gives the decoder three maps at the model's input grid, ``(B, 3, *full)``:
positive clicks ("this belongs"), negative clicks ("this does not") as disks of radius
:data:`CLICK_RADIUS`, and the current mask (or probability) in [0, 1]. They enter the decoder
only, added to its skip connections, so a click never re-runs the image encoder. All zeros means
"no clicks, no prior mask": the report-only prediction. The click branch has no biases and no
normalisation, so all-zero maps add exactly zero and the decoder can skip the branch for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CLICK_CHANNELS = 3
POSITIVE, NEGATIVE, PRIOR = 0, 1, 2
CLICK_RADIUS = 5  # pixels of the model's input grid (RITM and DeepEdit use disks of a few pixels)


class ClickEncoder(nn.Module):
    """Click maps (B, 3, *full) -> one feature map per decoder skip, coarse to fine.

    ``skip_channels`` are the channel counts of the skips at strides 16, 8, 4, 2 and 1. A 3x3
    convolution and ReLU read the maps at full resolution; the result is pooled to each skip's grid
    (max pooling, so a small disk survives) and a 1x1 convolution brings it to the skip's width; the
    decoder adds it to the skip. Zero maps give exactly zero features (no biases, no normalisation).
    """

    def __init__(self, spatial_dims: int, skip_channels: Sequence[int], hidden: int = 8) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.stem = nn.Sequential(conv(CLICK_CHANNELS, hidden, kernel_size=3, padding=1, bias=False), nn.ReLU())
        self.heads = nn.ModuleList(conv(hidden, channels, kernel_size=1, bias=False) for channels in skip_channels)
        for head in self.heads:  # start as "no effect": clicks never disturb a model before it learned them
            nn.init.zeros_(head.weight)
        self.pool = F.adaptive_max_pool2d if spatial_dims == 2 else F.adaptive_max_pool3d

    def forward(self, maps: torch.Tensor, grids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """``grids``: the spatial size of each skip (strides 16, 8, 4, 2, 1); returns (B, C_skip, *grid) each."""
        hidden = self.stem(maps)
        return [head(self.pool(hidden, tuple(grid)) if tuple(grid) != tuple(hidden.shape[2:]) else hidden) for head, grid in zip(self.heads, grids)]


def draw_disks(shape: Sequence[int], points: Sequence[Sequence[float]], radius: float = CLICK_RADIUS) -> torch.Tensor:
    """A float (H, W) map with 1 inside a disk of ``radius`` around each (row, column) point."""
    height, width = shape
    canvas = torch.zeros(height, width)
    if not len(points):
        return canvas
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    columns = torch.arange(width, dtype=torch.float32)[None, :]
    for row, column in points:
        canvas = torch.maximum(canvas, (((rows - row) ** 2 + (columns - column) ** 2) <= radius**2).float())
    return canvas
