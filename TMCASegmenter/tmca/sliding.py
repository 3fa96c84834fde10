"""Sliding-window prediction of 2D slices larger than the model's input, at the training resolution.

A model trained on ``image_size`` crops at native resolution (``TMCAConfig.large_images == "tile"``)
sees a large slice in windows of ``image_size`` x ``image_size`` with 25% overlap (a slice smaller
than the window in one dimension is padded with zeros, the background of the preprocessed
intensities, and cropped back), blended with a Gaussian weight (sigma 0.125 of the window) so that
window borders do not show. A "resize" model squeezes every slice to its input size instead, as it
was trained (:func:`tmca.preprocess.model_input`).

The windowing is written out here so that predicting does not import MONAI (``import monai`` loads
every MONAI subpackage and takes seconds, once per process; see ``tmca/networks/layers.py``). It
follows MONAI 1.6's ``sliding_window_inference`` with ``mode="gaussian"``, ``padding_mode="constant"``
and outputs at the window's size, so the stitched outputs are the same
(``Testing/Python/test_sliding.py`` compares them with MONAI's):

- :func:`window_starts`: the window positions of ``_get_scan_interval`` and ``dense_patch_slices``
  (step ``int(roi * (1 - overlap))``, at least 1; the last window flush with the far border);
- :func:`gaussian_importance`: ``compute_importance_map`` (sigma ``sigma_scale * roi``, clamped below
  to its minimum or 1e-3);
- :func:`stitch_windows`: symmetric zero padding to the window (the odd pixel after), windows in
  slice-major, row-major order, ``window_batch`` at a time across slices, weighted sums divided by
  the summed weights, the padding cropped off.

The windowing raises ValueError (library code: callers pass checked values); ``resolve_large_images``,
which checks a user choice, raises TMCAError.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tmca.config import LARGE_IMAGE_MODES
from tmca.errors import TMCAError

OVERLAP = 0.25
SIGMA_SCALE = 0.125

Encode = Callable[[torch.Tensor], Any]
"""The runner's image encoder: (B, C, S, S) windows -> features (tensors or arrays)."""
Decode = Callable[[Any, torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor | None]]
"""The runner's decoder: (features, windows, text or None) -> ((B, 1, S, S) logits, (B, 1, s, s) relevance logits or None)."""


def resolve_large_images(requested: str | None, trained: str) -> str:
    """How slices larger than the model's input are predicted: ``requested`` ("resize" or "tile"), else
    how the model was trained (``trained``, from its config). A wrong value is a TMCAError."""
    if requested is None:
        return trained
    mode = str(requested).strip().lower()
    if mode not in LARGE_IMAGE_MODES:
        raise TMCAError(f"large_images must be one of {', '.join(LARGE_IMAGE_MODES)} (or None: as the model was trained), not {requested!r}")
    return mode


def needs_windows(size: Sequence[int], roi_size: int) -> bool:
    """True when a (H, W) slice is larger than the (roi_size, roi_size) window in either dimension."""
    return any(int(extent) > roi_size for extent in size)


def window_starts(extent: int, roi_size: int, overlap: float = OVERLAP) -> list[int]:
    """Where windows of ``roi_size`` start along one dimension of ``extent`` pixels (padded to the window
    when smaller), as MONAI places them: every ``int(roi_size * (1 - overlap))`` pixels, the last one
    moved back to end at the border."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be >= 0 and < 1, not {overlap}")
    if roi_size < 1:
        raise ValueError(f"roi_size must be positive, not {roi_size}")
    extent = max(int(extent), roi_size)
    interval = max(int(roi_size * (1 - overlap)), 1)
    count = math.ceil((extent - roi_size) / interval) + 1
    return [min(index * interval, extent - roi_size) for index in range(count)]


def window_count(size: Sequence[int], roi_size: int, overlap: float = OVERLAP) -> int:
    """Windows per (H, W) slice (1 for a slice that fits)."""
    return math.prod(len(window_starts(extent, roi_size, overlap)) for extent in size)


def gaussian_importance(
    spatial_dims: int, roi_size: int, sigma_scale: float = SIGMA_SCALE, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(roi_size,) * spatial_dims blending weight: a Gaussian of sigma ``sigma_scale * roi_size`` centred on
    the window (1 there), clamped below to its smallest value or 1e-3, whichever is larger."""
    sigma = sigma_scale * roi_size
    x = torch.arange(-(roi_size - 1) / 2.0, (roi_size - 1) / 2.0 + 1, dtype=torch.float, device=device)
    profile = torch.exp(x**2 / (-2 * sigma**2))
    weight = profile
    for _ in range(spatial_dims - 1):
        weight = weight.unsqueeze(-1) * profile
    return weight.clamp_(min=max(weight.min().item(), 1e-3)).to(dtype)


WindowPredictor = Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]]
"""(B, C, *window) windows -> one or several (B, C_i, *window) outputs."""


def stitch_windows(
    inputs: torch.Tensor, roi_size: int, window_batch: int, predictor: WindowPredictor, overlap: float = OVERLAP, sigma_scale: float = SIGMA_SCALE
) -> tuple[torch.Tensor, ...]:
    """Predict (N, C, *size) ``inputs`` window by window and blend the windows' outputs on the full grid.

    predictor: called on (B, C, *window) windows, B <= ``window_batch`` (windows of several images share
    a call), with one or several (B, C_i, *window) outputs. Returns one (N, C_i, *size) tensor per output,
    in the inputs' dtype and on their device.
    """
    if inputs.ndim < 3 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be (N, C, *spatial) with N >= 1, not {tuple(inputs.shape)}")
    if window_batch < 1:
        raise ValueError(f"window_batch must be at least 1, not {window_batch}")
    count, size = inputs.shape[0], tuple(inputs.shape[2:])
    padding = []  # F.pad order: last dimension first, (before, after)
    for extent in reversed(size):
        missing = max(roi_size - extent, 0)
        padding += [missing // 2, missing - missing // 2]
    if any(padding):
        inputs = F.pad(inputs, padding, mode="constant", value=0.0)
    padded = tuple(inputs.shape[2:])
    regions = [
        tuple(slice(start, start + roi_size) for start in corner)
        for corner in itertools.product(*(window_starts(extent, roi_size, overlap) for extent in padded))
    ]  # fmt: skip
    windows = [(index, region) for index in range(count) for region in regions]
    weight = gaussian_importance(len(size), roi_size, sigma_scale, inputs.device, inputs.dtype)

    sums: list[torch.Tensor] = []
    for first in range(0, len(windows), window_batch):
        batch = windows[first : first + window_batch]
        data = torch.cat([inputs[(slice(index, index + 1), slice(None), *region)] for index, region in batch])
        predicted = predictor(data)
        predicted = (predicted,) if isinstance(predicted, torch.Tensor) else tuple(predicted)
        for number, output in enumerate(predicted):
            if tuple(output.shape[2:]) != (roi_size,) * len(size) or output.shape[0] != len(batch):
                raise ValueError(f"the predictor's output {number} is {tuple(output.shape)}, not ({len(batch)}, C, {', '.join([str(roi_size)] * len(size))})")
            if len(sums) <= number:
                sums.append(torch.zeros((count, output.shape[1], *padded), dtype=inputs.dtype, device=inputs.device))
            weighted = output.to(inputs.device, inputs.dtype) * weight
            for (index, region), window in zip(batch, weighted):
                sums[number][(index, slice(None), *region)] += window

    total = torch.zeros(padded, dtype=inputs.dtype, device=inputs.device)
    for region in regions:
        total[region] += weight
    crop = tuple(slice(padding[2 * axis], padding[2 * axis] + extent) for axis, extent in enumerate(reversed(size)))[::-1]
    return tuple((blended / total)[(slice(None), slice(None), *crop)] for blended in sums)


def predict_by_windows(
    encode: Encode,
    decode: Decode,
    images: torch.Tensor,
    texts: Sequence[Any],
    roi_size: int,
    window_batch: int,
    with_relevance: bool = False,
    overlap: float = OVERLAP,
    check: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities of each finding on every slice's full grid, from windows of ``roi_size``.

    images: (N, C, H, W) float32 slices at native resolution (model channels, intensities in [0, 1]).
    texts: one entry per finding (``TextFeatures`` with batch 1, or None for an image-only model).
    window_batch: windows per network call; windows of several slices share a call. The encoder runs
    once per call and the decoder once per call and finding, on the same encoder features.
    check: called before every network call (a cancel check that raises stops the work).
    Returns (K, N, H, W) float32 probabilities and, with ``with_relevance``, the last relevance map
    (K, N, H, W) stitched the same way (upsampled to the window as logits, blended, then sigmoid;
    zeros for a model without one), else None.
    """
    relevance_missing = False

    def predictor(windows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        nonlocal relevance_missing
        if check is not None:
            check()
        windows = windows.contiguous(memory_format=torch.channels_last)
        features = encode(windows)
        logits, relevance = [], []
        for text in texts:
            finding_logits, finding_relevance = decode(features, windows, None if text is None else text.expand(windows.shape[0]))
            logits.append(finding_logits.float().to(windows.device))
            if with_relevance:
                if finding_relevance is None:
                    relevance_missing = True
                    finding_relevance = torch.zeros_like(logits[-1])
                relevance.append(_to_window(finding_relevance.float().to(windows.device), windows.shape[-2:]))
        if with_relevance:
            return torch.cat(logits, 1), torch.cat(relevance, 1)
        return (torch.cat(logits, 1),)

    stitched = stitch_windows(images, roi_size, window_batch, predictor, overlap=overlap, sigma_scale=SIGMA_SCALE)
    logits, relevance = stitched if with_relevance else (stitched[0], None)
    probabilities = torch.sigmoid(logits.float()).transpose(0, 1)  # (N, K, H, W) -> (K, N, H, W)
    if relevance is not None:
        relevance = torch.sigmoid(relevance.float()).transpose(0, 1) if not relevance_missing else torch.zeros_like(probabilities)
    return probabilities, relevance


def _to_window(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 1, h, w) logits -> (B, 1, *size), interpolated as logits (as the whole-slice path does)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
