"""Intensity normalisation by modality.

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

from tmca.errors import TMCAError

DEFAULT_INTENSITY_POLICY: dict[str, dict[str, list[float]]] = {
    "CT": {"window": [-1000.0, 1000.0]},
    "MR": {"percentiles": [0.5, 99.5]},
    "US": {},
    "XR": {},
    "OT": {},
}
"""Default rule per modality (JSON-serialisable)."""

_RULE_KEYS = ("window", "percentiles")


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
    scaled = (np.clip(data, low, high) - np.float32(low)) / np.float32(high - low)
    return scaled.astype(np.float32, copy=False)


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
