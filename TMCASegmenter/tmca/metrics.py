"""Segmentation metrics on binary masks (2D (H, W) or 3D (D, H, W) numpy arrays).

Conventions for empty masks, used consistently by every metric here:

- both empty: a perfect answer (``dice = iou = 1``, ``hd95 = 0``);
- exactly one empty: ``dice = iou = 0``, ``hd95 = nan`` (no surface to measure from; aggregate
  with ``np.nanmean`` and report how many cases were nan).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|P & T| / (|P| + |T|) of two masks of the same shape (non-zero = inside)."""
    p, t = _binary_pair(pred, truth)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union |P & T| / |P | T| (Jaccard index)."""
    p, t = _binary_pair(pred, truth)
    union = int(np.logical_or(p, t).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, t).sum()) / union


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance between the masks' surfaces, in the units of ``spacing``.

    ``spacing``: voxel size per array axis (same order as the array's axes; default 1, i.e.
    voxels). Symmetric as in MONAI: the larger of the two directed 95th percentiles of the
    distances from each surface voxel of one mask to the nearest surface voxel of the other.
    Both masks empty -> 0.0; one empty -> nan.
    """
    from scipy import ndimage

    p, t = _binary_pair(pred, truth)
    sampling = _sampling(spacing, p.ndim)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("nan")
    box = _bounding_box(p | t)
    p, t = np.pad(p[box], 1), np.pad(t[box], 1)
    surface_p, surface_t = _surface(p), _surface(t)
    to_t = ndimage.distance_transform_edt(~surface_t, sampling=sampling)[surface_p]
    to_p = ndimage.distance_transform_edt(~surface_p, sampling=sampling)[surface_t]
    return float(max(np.percentile(to_t, 95), np.percentile(to_p, 95)))


def _binary_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground-truth shape {t.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, not {p.ndim}D")
    return p, t


def _sampling(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or min(values) <= 0:
        raise ValueError(f"spacing must give {ndim} positive values (one per array axis), not {spacing!r}")
    return values


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every true voxel of a non-empty mask."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (the mask's boundary layer)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box of slices holding every true voxel of ``mask``, or None when it has none."""
    bounds = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not len(present):
            return None
        bounds.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(bounds)


def mask_statistics(mask: np.ndarray, voxel_volume_mm3: float) -> tuple[int, float, int]:
    """(voxels, volume in mL, connected components with face connectivity) of a binary mask."""
    voxels = int(np.count_nonzero(mask))
    return voxels, voxels * voxel_volume_mm3 / 1000.0, count_components(mask) if voxels else 0


def count_components(mask: np.ndarray) -> int:
    """Connected components of a 2D or 3D mask, face connectivity (as ``scipy.ndimage.label``'s default)."""
    mask = np.asarray(mask) > 0
    box = bounding_box(mask)
    return 0 if box is None else label_components(mask[box], full_connectivity=False)[1]  # a component never leaves the box


def label_components(mask: np.ndarray, full_connectivity: bool) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label`` of ``mask`` (any shape) with face (False) or face, edge and corner (True) connectivity.

    The labels take the smallest integer type that can count the mask's voxels: a scattered mask of a
    512x512x200 CT labelled as int32 needed 400 MB; as int16, a quarter of that.
    """
    from scipy import ndimage  # here: importing the engine should not load scipy (tmca segment start-up)

    mask = np.asarray(mask, dtype=bool)
    voxels = int(np.count_nonzero(mask))
    dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64) if voxels <= np.iinfo(t).max)
    structure = np.ones((3,) * mask.ndim, dtype=bool) if full_connectivity else None
    labels = np.empty(mask.shape, dtype=dtype)
    count = ndimage.label(mask, structure=structure, output=labels)
    return labels, int(count)
