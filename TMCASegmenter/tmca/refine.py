"""Refine one finding of a result with corrective clicks (``Segmenter.refine``).

Only the slices a click can change are recomputed: each clicked slice, then its neighbours for as
long as the target continues there (a positive click's point is still inside the new mask of the
slice before, or a negative click's point inside the old mask of the slice), up to
:data:`MAX_PROPAGATION` slices each way. On a redrawn slice only the connected parts of the mask
change that lie under a click (:func:`local_change`), and slices whose clicks are the same as in the
result refined are left as they are. Encoder features of a slice are computed once per result
lineage and reused by every later click (:class:`RefineSource`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from tmca.errors import TMCAError
from tmca.interactive import Click, click_maps, click_voxel
from tmca.networks.text_encoder import TextFeatures

MAX_PROPAGATION = 12
CHANGE_FRACTION = 0.01  # a neighbour whose mask changes by less than this share of its target stops the propagation
FEATURE_SLICES = 64  # encoded slices kept per volume


@dataclass
class RefineSource:
    """What a result was computed from, kept so that clicks can refine it without reloading anything.

    ``volume``: the preprocessed volume (z, y, x) or (C, z, y, x); ``axis``: the slicing axis of (z, y, x);
    ``texts``: one TextFeatures (or None for an image-only model) per finding; ``features``: encoder
    features of slices already encoded, by slice index (shared by the results refined from this one).
    """

    volume: np.ndarray
    axis: int
    texts: list[TextFeatures | None]
    features: OrderedDict = field(default_factory=OrderedDict)

    def slice(self, index: int) -> np.ndarray:
        """Slice ``index`` along the slicing axis: (h, w) or (C, h, w)."""
        spatial_axis = self.axis + (self.volume.ndim - 3)
        return np.take(self.volume, index, axis=spatial_axis)

    @property
    def count(self) -> int:
        return self.volume.shape[self.axis + (self.volume.ndim - 3)]


def finding_index(names: Sequence[str], finding: int | str) -> int:
    """The index of ``finding`` (an index or a segment name) among ``names``; TMCAError when there is none."""
    if isinstance(finding, (int, np.integer)) and not isinstance(finding, bool):
        if 0 <= int(finding) < len(names):
            return int(finding)
        raise TMCAError(f"there is no finding {finding}: the result has {len(names)} (0 to {len(names) - 1})")
    if isinstance(finding, str):
        matches = [i for i, name in enumerate(names) if name == finding] or [i for i, name in enumerate(names) if name.lower() == finding.lower()]
        if matches:
            return matches[0]
        raise TMCAError(f"there is no finding named {finding!r}; the findings are: {', '.join(names) or 'none'}")
    raise TMCAError(f"a finding is its index or its name, not {finding!r}")


def start_probability(start_mask: np.ndarray | sitk.Image | None, current: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """The (z, y, x) float32 starting mask: the user's edited mask when given (checked against the grid), else ``current``."""
    if start_mask is None:
        return current
    if isinstance(start_mask, sitk.Image):
        if start_mask.GetSize() != reference.GetSize() or not np.allclose(start_mask.GetSpacing(), reference.GetSpacing(), rtol=1e-4):
            raise TMCAError("the edited mask is on another grid than the scan; resample it to the scan's geometry first")
        start_mask = sitk.GetArrayFromImage(start_mask)
    array = np.asarray(start_mask)
    if array.shape != current.shape:
        raise TMCAError(f"the edited mask has shape {array.shape}, the scan {current.shape}; they must match")
    return (array > 0).astype(np.float32)


class SliceRefiner:
    """Recompute slices of one finding with clicks.

    ``encode(x (1, C, S, S)) -> features`` and ``decode(features, x, text, clicks (1, 3, S, S)) -> logits (1, 1, S, S)``
    are the segmenter's; ``prepare(slice) -> x`` is its model-input path.
    """

    def __init__(
        self,
        source: RefineSource,
        text: TextFeatures | None,
        size: int,
        prepare: Callable[[np.ndarray], torch.Tensor],
        encode: Callable[[torch.Tensor], list],
        decode: Callable[[list, torch.Tensor, TextFeatures | None, torch.Tensor], torch.Tensor],
    ) -> None:
        self.source, self.text, self.size = source, text, size
        self.prepare, self.encode, self.decode = prepare, encode, decode

    def probability(self, index: int, positive: list, negative: list, prior: np.ndarray) -> np.ndarray:
        """New probabilities (h, w) of slice ``index`` given (row, column) clicks and the prior mask (h, w)."""
        x, features = self._encoded(index)
        shape = prior.shape
        maps = click_maps(shape, self.size, positive, negative, prior)[None].to(x.device, x.dtype)
        logits = self.decode(features, x, self.text, maps).float()
        if tuple(logits.shape[2:]) != tuple(shape):
            logits = F.interpolate(logits, size=tuple(shape), mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    def redraw(self, index: int, positive: list, negative: list, prior: np.ndarray, current: np.ndarray, threshold: float) -> np.ndarray:
        """Slice ``index`` redrawn with these clicks where the mask changes under them, ``current`` elsewhere (:func:`local_change`)."""
        return local_change(self.probability(index, positive, negative, prior), current, positive + negative, threshold)

    def _encoded(self, index: int):
        cache = self.source.features
        if index in cache:
            cache.move_to_end(index)
            return cache[index]
        x = self.prepare(self.source.slice(index))
        entry = (x, self.encode(x))
        cache[index] = entry
        while len(cache) > FEATURE_SLICES:
            cache.popitem(last=False)
        return entry


def local_change(new: np.ndarray, old: np.ndarray, points: Sequence[tuple[int, int]], threshold: float) -> np.ndarray:
    """``new`` (h, w) where the mask changes in a connected region under one of ``points``, ``old`` elsewhere.

    A click corrects the part of the mask it lands on: a redrawn slice that also moves the boundary of
    another lesion, away from every click, keeps that lesion as it was.
    """
    changed = (new >= threshold) != (old >= threshold)
    if not changed.any():
        return new
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(changed.astype(np.uint8)), True))
    under_clicks = {int(labels[point]) for point in points} - {0}
    return np.where(np.isin(labels, list(under_clicks)) | ~changed, new, old).astype(np.float32)


Voxels = Sequence[tuple[tuple[int, int, int], bool]]


def refine_probabilities(
    refiner: SliceRefiner,
    probabilities: np.ndarray,
    prior: np.ndarray,
    voxels: Voxels,
    axis: int,
    threshold: float,
    applied: Voxels = (),
) -> list[int]:
    """Redraw one finding's probabilities (z, y, x) in place; returns the slice indices recomputed.

    ``probabilities``: the finding's probabilities, overwritten (pass a copy to keep the old ones);
    ``prior``: its starting mask (the user's edits or the current probabilities, not a view of
    ``probabilities``); ``voxels``: ((z, y, x), positive) per click; ``applied``: the clicks the
    current probabilities already hold. Only slices whose clicks differ from ``applied`` are
    redrawn (with all their clicks), so a new click leaves the slices of earlier clicks as they were.
    """
    moved = np.moveaxis(probabilities, axis, 0)  # a view: the slices are written into ``probabilities``
    prior_slices = np.moveaxis(prior, axis, 0)
    clicks_by_slice, before = _by_slice(voxels, axis), _by_slice(applied, axis)
    redraw = {index: clicks for index, clicks in sorted(clicks_by_slice.items()) if clicks != before.get(index)}
    changed: list[int] = []
    for index, (positive, negative) in redraw.items():
        moved[index] = refiner.redraw(index, positive, negative, prior_slices[index], moved[index], threshold)
        changed.append(index)
    for index, (positive, negative) in redraw.items():
        for step in (-1, 1):
            _propagate(refiner, moved, prior_slices, index, step, positive, negative, threshold, clicks_by_slice, changed)
    return sorted(set(changed))


def _by_slice(voxels: Voxels, axis: int) -> dict[int, tuple[list, list]]:
    """Slice index -> (positive, negative) in-plane points of the clicks on it."""
    by_slice: dict[int, tuple[list, list]] = {}
    for voxel, positive in voxels:
        in_plane = tuple(v for i, v in enumerate(voxel) if i != axis)
        by_slice.setdefault(voxel[axis], ([], []))[0 if positive else 1].append(in_plane)
    return by_slice


def _propagate(refiner, moved, prior_slices, start, step, positive, negative, threshold, clicked, changed) -> None:
    """Carry a slice's clicks to its neighbours while the target (or the false part) continues."""
    previous = start
    for distance in range(1, MAX_PROPAGATION + 1):
        index = start + step * distance
        if not 0 <= index < len(moved) or index in clicked:
            return
        carried_positive = [p for p in positive if moved[previous][p] >= threshold]
        carried_negative = [p for p in negative if prior_slices[index][p] >= threshold]
        if not carried_positive and not carried_negative:
            return
        old = moved[index] >= threshold
        moved[index] = refiner.redraw(index, carried_positive, carried_negative, prior_slices[index], moved[index], threshold)
        changed.append(index)
        difference = np.count_nonzero(old != (moved[index] >= threshold))
        if difference <= CHANGE_FRACTION * max(np.count_nonzero(old), 1):
            return
        previous = index


def click_voxels(reference: sitk.Image, clicks: Sequence[Click]) -> list[tuple[tuple[int, int, int], bool]]:
    """((z, y, x), positive) for each click; TMCAError for a click that is not a Click or lies outside."""
    if not clicks:
        raise TMCAError("refine needs at least one click")
    voxels = []
    for click in clicks:
        if not isinstance(click, Click):
            raise TMCAError(f"clicks must be tmca.Click(point, positive) objects, not {type(click).__name__}")
        voxels.append((click_voxel(reference, click), click.positive))
    return voxels
