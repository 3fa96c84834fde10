"""The results table, the probability map and re-thresholding of the last result."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from TMCASegmenterLib.checks_display import checks_cell
from tmca.errors import TMCAError
from tmca.metrics import mask_statistics
from tmca.protocol import FindingRecord

ABSENT = "absent"


def format_volume_ml(volume_ml: float) -> str:
    """Volume for display: two decimals, ``<0.01`` for tiny non-zero volumes."""
    if 0 < volume_ml < 0.005:
        return "<0.01"
    return f"{volume_ml:.2f}"


def finding_table_rows(findings: Iterable[FindingRecord]) -> list[tuple[str, str, str]]:
    """Rows of the results table: (finding, volume mL, components)."""
    return [(f.name, format_volume_ml(f.volume_ml), str(f.components)) for f in findings]


@dataclass(frozen=True)
class ResultRow:
    """One row of the results table and the finding behind it.

    ``segment_id`` is the finding's segment in the user's segmentation (not the engine's file);
    a finding of absence has none and is marked ``absent``.
    """

    finding: FindingRecord
    segment_id: str
    cells: tuple[str, ...]
    tooltip: str = ""
    absent: bool = False


def result_rows(findings: Sequence[FindingRecord], segment_ids: Sequence[str],
                negative_findings: Sequence[FindingRecord] = ()) -> list[ResultRow]:
    """The table's rows: (finding, checks mark, volume mL, components), the checks' details as tooltip.

    Each finding comes with the id of its segment in the user's segmentation; the findings of
    absence follow, marked "absent", with no segment.
    """
    if len(findings) != len(segment_ids):
        raise TMCAError(f"{len(findings)} findings but {len(segment_ids)} segment ids")
    rows = []
    for finding, segment_id, (name, volume, components) in zip(findings, segment_ids, finding_table_rows(findings)):
        mark, tooltip = checks_cell(finding.checks)
        rows.append(ResultRow(finding, segment_id, (name, mark, volume, components), tooltip))
    for finding in negative_findings:
        sentence = finding.text or finding.name
        rows.append(ResultRow(finding, "", (sentence, ABSENT, "", ""),
                              f"Finding of absence: the report says this is not there, so no segment is drawn.\n{sentence}",
                              absent=True))
    return rows


def update_finding_statistics(finding: FindingRecord, mask: np.ndarray, voxel_volume_mm3: float,
                              reference: Any = None) -> FindingRecord:
    """The finding with voxels, volume and components recomputed from ``mask`` (k, j, i).

    With ``reference`` (a SimpleITK image on the mask's grid), the report-to-mask checks are
    recomputed too, so a new threshold never shows the old mask's checks.
    """
    voxels, volume_ml, components = mask_statistics(mask, voxel_volume_mm3)
    checks = finding.checks
    if reference is not None:
        from tmca.reconcile import check_finding

        checks = [check.as_dict() for check in check_finding(finding.text or finding.name, mask, reference)]
    return dataclasses.replace(finding, voxels=voxels, volume_ml=volume_ml, components=components, checks=checks)


def probability_channels(array: np.ndarray, count: int | None = None) -> np.ndarray:
    """Probability map as ``[finding, k, j, i]`` float32 from a scalar ``[k, j, i]`` or vector ``[k, j, i, c]`` array."""
    if array.ndim == 3:
        channels = array[np.newaxis]
    elif array.ndim == 4:
        channels = np.moveaxis(array, -1, 0)
    else:
        raise TMCAError(f"probability map has shape {array.shape}; expected a 3D scalar or vector image")
    if count is not None and channels.shape[0] != count:
        raise TMCAError(f"probability map has {channels.shape[0]} channels but the result has {count} findings")
    return np.ascontiguousarray(channels, dtype=np.float32)


def threshold_probability(channel: np.ndarray, threshold: float) -> np.ndarray:
    """Binary uint8 mask of ``channel >= threshold``."""
    return (channel >= threshold).astype(np.uint8)


class ShownThreshold:
    """The threshold the shown segments were made at, and whether the slider now asks for another.

    While the engine runs, a moved slider is remembered, not applied: the run's segments are
    made at the threshold the run started with, and the slider's value is applied when it ends.
    """

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold

    def shown(self, threshold: float) -> None:
        """The segments on screen were made at ``threshold``."""
        self.threshold = threshold

    def pending(self, wanted: float, running: bool) -> float | None:
        """The threshold to apply now: ``wanted`` when it differs from the shown one and no run is going on."""
        if running or wanted == self.threshold:
            return None
        return wanted
