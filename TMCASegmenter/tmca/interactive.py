"""Corrective clicks: the user's clicks in image space, their maps for the network, and simulated clicks.

A :class:`Click` is a point in the input image's physical space (LPS, mm, as SimpleITK's
``TransformIndexToPhysicalPoint`` gives) and whether it marks target ("this belongs") or not.
:func:`click_maps` draws the clicks of one slice, with the current mask, as the decoder's click
inputs (:mod:`tmca.networks.clicks`). :func:`next_click` places the click that the standard
protocol of interactive segmentation places (RITM, DeepEdit): at the centre of the largest error
region, positive inside a missed part, negative inside a false part; training and
``bench/interactive.py`` both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from tmca.errors import TMCAError
from tmca.networks.clicks import CLICK_CHANNELS, NEGATIVE, POSITIVE, PRIOR, draw_disks


@dataclass(frozen=True)
class Click:
    """A corrective click: ``point`` (x, y, z) in LPS millimetres; ``positive``: the point belongs to the finding."""

    point: tuple[float, float, float]
    positive: bool = True

    def __post_init__(self) -> None:
        try:
            point = tuple(float(value) for value in self.point)
        except (TypeError, ValueError):
            raise TMCAError(f"a click point must be three numbers (x, y, z in mm), not {self.point!r}") from None
        if len(point) != 3 or not all(np.isfinite(point)):
            raise TMCAError(f"a click point must be three finite numbers (x, y, z in mm), not {self.point!r}")
        object.__setattr__(self, "point", point)
        object.__setattr__(self, "positive", bool(self.positive))


def click_voxel(reference: sitk.Image, click: Click) -> tuple[int, int, int]:
    """The (z, y, x) voxel index of ``click`` in ``reference``; TMCAError when it lies outside the image."""
    index = reference.TransformPhysicalPointToContinuousIndex(click.point)  # (x, y, z), voxel centres at integers
    voxel = tuple(int(round(value)) for value in index)
    size = reference.GetSize()
    if not all(0 <= v < n for v, n in zip(voxel, size)):
        raise TMCAError(
            f"the click at {tuple(round(v, 1) for v in click.point)} mm lies outside the image "
            f"(voxel {voxel}, image size {size}); click inside the scan"
        )
    return voxel[2], voxel[1], voxel[0]


def click_maps(
    shape: tuple[int, int],
    size: int,
    positive: Sequence[tuple[float, float]],
    negative: Sequence[tuple[float, float]],
    prior: np.ndarray | torch.Tensor | None,
) -> torch.Tensor:
    """Click inputs (3, size, size) for one slice of ``shape`` (h, w) shown to the model at size x size.

    ``positive``/``negative``: (row, column) points on the slice's own grid; ``prior``: the current
    mask or probability (h, w) in [0, 1], or None (no prior mask).
    """
    height, width = shape
    scale = np.array([size / height, size / width])

    def on_model_grid(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [tuple((np.asarray(point, dtype=float) + 0.5) * scale - 0.5) for point in points]

    maps = torch.zeros(CLICK_CHANNELS, size, size)
    maps[POSITIVE] = draw_disks((size, size), on_model_grid(positive))
    maps[NEGATIVE] = draw_disks((size, size), on_model_grid(negative))
    if prior is not None:
        prior_t = torch.as_tensor(np.asarray(prior, dtype=np.float32))[None, None]
        maps[PRIOR] = torch.nn.functional.interpolate(prior_t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    return maps


def next_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[tuple[int, ...], bool] | None:
    """The next simulated click on a 2D or 3D mask: (index, positive), or None when there is no error.

    The largest connected error region (missed target: positive; false target: negative) gets a
    click at its centre, the voxel farthest from the region's border (a distance transform).
    """
    from scipy import ndimage  # imported here: the engine's start-up does not load scipy

    prediction, truth = prediction.astype(bool), truth.astype(bool)
    best: tuple[int, np.ndarray, bool] | None = None
    for errors, positive in ((truth & ~prediction, True), (prediction & ~truth, False)):
        if not errors.any():
            continue
        labels, count = ndimage.label(errors)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), labels == largest, positive)
    if best is None:
        return None
    _, region, positive = best
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[(slice(1, -1),) * region.ndim]
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(distance)), region.shape)), positive
