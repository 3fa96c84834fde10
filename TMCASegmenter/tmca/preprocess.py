"""Model-input preparation: the one path from a loaded image to what the network sees.

Training (:class:`tmca.data.SliceDataset`), inference (:class:`tmca.inference.Segmenter`) and
evaluation prepare images with these functions and nothing else (as nnU-Net uses one
preprocessor for both):

1. :func:`preprocess_channels`: the whole volume's intensities scaled to [0, 1] by its modality's
   rule, as the model's C channels (percentiles are taken over the whole volume, so this runs once
   per volume); :func:`preprocess` is its grey (single-channel) volume;
2. :func:`model_input`: a batch of 2D slices resized to the model's square input, with the channel
   axis.

Channels. A grey model (``in_channels`` 1) sees the luminance of a colour image; a colour model
(``in_channels`` 3) sees a colour image's R, G, B scaled with one set of bounds for all three
channels (so the hue is kept) and a grey image repeated in all three. :func:`channel_note` says
when an image is converted so.

Intensity normalisation by modality.

An intensity policy maps a modality ("CT", "MR", "US", "XR", "OT") to a rule:

- ``{"window": [low, high]}``: clip to the fixed range [low, high] and scale to [0, 1]
  (CT Hounsfield units);
- ``{"percentiles": [low, high]}``: clip to the image's low/high percentiles (0..100) and scale;
- ``{}``: scale the image's minimum..maximum to [0, 1].

The policy is stored in the model config (JSON); a policy given to ``normalize_intensity``
replaces the default rule of each modality it names.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from tmca.errors import TMCAError
from tmca.imageio import LoadedImage

DEFAULT_INTENSITY_POLICY: dict[str, dict[str, list[float]]] = {
    "CT": {"window": [-1000.0, 1000.0]},
    "MR": {"percentiles": [0.5, 99.5]},
    "US": {},
    "XR": {},
    "OT": {},
}
"""Default rule per modality (JSON-serialisable)."""

_RULE_KEYS = ("window", "percentiles")


def preprocess(image: LoadedImage, model_modality: str, policy: Mapping[str, Mapping[str, Any]] | None = None) -> np.ndarray:
    """The model-ready grey intensities of ``image``: float32 (z, y, x) in [0, 1] (a colour image's
    luminance); ``preprocess_channels(image, model_modality, policy, 1)[0]``."""
    return preprocess_channels(image, model_modality, policy, 1)[0]


def preprocess_channels(
    image: LoadedImage, model_modality: str, policy: Mapping[str, Mapping[str, Any]] | None = None, channels: int = 1
) -> np.ndarray:
    """The model-ready intensities of ``image`` for a ``channels``-channel model: float32
    (channels, z, y, x) in [0, 1], C-contiguous.

    ``channels`` 1: the grey image (a colour image's luminance); 3: a colour image's R, G, B
    scaled with one set of bounds for all three, or a grey image repeated three times. The
    image's own modality picks the intensity rule; an image without one (``"OT"``) is taken to be
    ``model_modality`` (what the model was trained on). ``policy`` overrides the default rules
    (see :func:`normalize_intensity`).
    """
    if channels not in (1, 3):
        raise ValueError(f"models take 1 or 3 channels, not {channels}")
    modality = image.modality if image.modality != "OT" else model_modality
    if channels == 3 and image.rgb is not None:
        return np.ascontiguousarray(np.moveaxis(normalize_intensity(image.rgb, modality, policy), -1, 0))
    grey = normalize_intensity(sitk.GetArrayFromImage(image.image), modality, policy)
    return grey[None] if channels == 1 else np.repeat(grey[None], channels, axis=0)


def channel_note(image: LoadedImage, channels: int) -> str | None:
    """One line saying how :func:`preprocess_channels` converts ``image`` for a ``channels``-channel
    model, or None when it takes the image as it is (a colour file holding grey pixels included)."""
    if channels == 1 and image.rgb is not None:
        return "the model was trained on grey images: the colour image is converted to grey (luminance)"
    if channels == 3 and image.rgb is None and not image.was_rgb:
        return "the model was trained on colour images: the grey image is repeated in its 3 colour channels"
    return None


def model_input(slices: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) float32 slices -> (N, 1 or C, size, size): antialiased bilinear
    resize, channel axis added to (N, H, W).

    Masks go through the same resize and are thresholded at 0.5 by the caller.
    """
    return resize_slices(slices, size)


def resize_slices(slices: torch.Tensor, size: int, mode: str = "bilinear", antialias: bool = True) -> torch.Tensor:
    """(N, H, W) -> (N, 1, size, size), (N, C, H, W) -> (N, C, size, size) with ``F.interpolate``
    (no copy when already that size).

    ``antialias`` applies to bilinear resizing only (nearest takes the nearest pixel).
    """
    x = slices[:, None] if slices.ndim == 3 else slices
    if tuple(x.shape[-2:]) == (size, size):
        return x
    smooth = {"align_corners": False, "antialias": antialias} if mode == "bilinear" else {}
    return F.interpolate(x, size=(size, size), mode=mode, **smooth)


def normalize_intensity(
    volume: np.ndarray, modality: str, policy: Mapping[str, Mapping[str, Any]] | None = None
) -> np.ndarray:
    """Scale ``volume`` (any shape, finite values) to float32 in [0, 1], same shape.

    The rule for ``modality`` comes from ``policy`` where it names the modality, else from
    ``DEFAULT_INTENSITY_POLICY``. When percentiles coincide (e.g. a mostly empty MR) the
    minimum..maximum is used instead. A constant volume gives zeros, whatever the rule.
    """
    rule = intensity_rule(modality, policy)
    data = np.asarray(volume, dtype=np.float32)
    if data.size == 0 or data.min() == data.max():
        return np.zeros(data.shape, dtype=np.float32)
    low, high = _bounds(data, rule)
    scaled = np.clip(data, np.float32(low), np.float32(high))
    scaled -= np.float32(low)  # in place: a 512x512x200 CT is 200 MB per temporary
    scaled /= np.float32(high - low)
    return scaled


def intensity_rule(modality: str, policy: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, list[float]]:
    """The validated rule for ``modality``: ``policy``'s entry if it has one, else the default."""
    merged = merged_policy(policy)
    key = modality.strip().upper()
    if key not in merged:
        raise TMCAError(f"no intensity rule for modality {modality!r}; use one of {', '.join(merged)}")
    return merged[key]


def merged_policy(policy: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, list[float]]]:
    """``DEFAULT_INTENSITY_POLICY`` with the modalities in ``policy`` replaced; validated."""
    merged = copy.deepcopy(DEFAULT_INTENSITY_POLICY)
    for modality, rule in (policy or {}).items():
        merged[str(modality).strip().upper()] = _validated_rule(str(modality), rule)
    return merged


def _validated_rule(modality: str, rule: Mapping[str, Any]) -> dict[str, list[float]]:
    """Check one policy entry and return it with float pairs."""
    if not isinstance(rule, Mapping):
        raise TMCAError(f"intensity policy for {modality} must be an object such as {{\"window\": [-1000, 1000]}}")
    unknown = set(rule) - set(_RULE_KEYS)
    if unknown or len(rule) > 1:
        raise TMCAError(
            f"intensity policy for {modality} has {sorted(rule)}; give one of "
            '"window": [low, high], "percentiles": [low, high], or {} for min-max'
        )
    if not rule:
        return {}
    key, pair = next(iter(rule.items()))
    low, high = _float_pair(modality, key, pair)
    if not low < high or (key == "percentiles" and not 0.0 <= low < high <= 100.0):
        limits = "0 <= low < high <= 100" if key == "percentiles" else "low < high"
        raise TMCAError(f"intensity policy {modality} {key} {[low, high]} is invalid; it needs {limits}")
    return {key: [low, high]}


def _float_pair(modality: str, key: str, pair: Any) -> tuple[float, float]:
    """Two finite floats from ``pair``."""
    try:
        low, high = (float(v) for v in pair)
    except (TypeError, ValueError) as exc:
        raise TMCAError(f"intensity policy {modality} {key} must be two numbers [low, high], not {pair!r}") from exc
    if not (np.isfinite(low) and np.isfinite(high)):
        raise TMCAError(f"intensity policy {modality} {key} must be finite numbers, not {pair!r}")
    return low, high


def _bounds(data: np.ndarray, rule: Mapping[str, list[float]]) -> tuple[float, float]:
    """The (low, high) range that ``rule`` maps to [0, 1] for ``data``."""
    if "window" in rule:
        low, high = rule["window"]
        return float(low), float(high)
    if "percentiles" in rule:
        low, high = (float(v) for v in np.percentile(data, rule["percentiles"]))
        if high > low:
            return low, high
    return float(data.min()), float(data.max())
