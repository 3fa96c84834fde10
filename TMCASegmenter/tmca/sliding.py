"""Sliding-window prediction of 2D slices larger than the model's input, at the training resolution.

A model trained on ``image_size`` crops at native resolution (``TMCAConfig.large_images == "tile"``)
sees a large slice as MONAI's ``sliding_window_inference`` does: windows of ``image_size`` x
``image_size`` with 25% overlap (a slice smaller than the window in one dimension is padded with
zeros, the background of the preprocessed intensities, and cropped back), blended with a Gaussian
weight (sigma 0.125 of the window) so that window borders do not show. A "resize" model squeezes
every slice to its input size instead, as it was trained (:func:`tmca.preprocess.model_input`).

MONAI is imported only when a window slides: ``import monai`` loads every MONAI subpackage and
takes seconds (see ``tmca/networks/layers.py``).
"""

from __future__ import annotations

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


def window_count(size: Sequence[int], roi_size: int, overlap: float = OVERLAP) -> int:
    """Windows per (H, W) slice, as ``sliding_window_inference`` places them (1 for a slice that fits)."""
    interval = max(int(roi_size * (1 - overlap)), 1)
    return math.prod(max(math.ceil((max(int(extent), roi_size) - roi_size) / interval), 0) + 1 for extent in size)


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
    from monai.inferers.utils import sliding_window_inference  # seconds to import: only when a window slides

    relevance_missing = False

    def predictor(windows: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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
        return torch.cat(logits, 1)

    stitched = sliding_window_inference(
        images, roi_size, window_batch, predictor, overlap=overlap, mode="gaussian", sigma_scale=SIGMA_SCALE,
        padding_mode="constant", cval=0.0,
    )  # fmt: skip
    logits, relevance = stitched if with_relevance else (stitched, None)
    probabilities = torch.sigmoid(logits.float()).transpose(0, 1)  # (N, K, H, W) -> (K, N, H, W)
    if relevance is not None:
        relevance = torch.sigmoid(relevance.float()).transpose(0, 1) if not relevance_missing else torch.zeros_like(probabilities)
    return probabilities, relevance


def _to_window(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 1, h, w) logits -> (B, 1, *size), interpolated as logits (as the whole-slice path does)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
