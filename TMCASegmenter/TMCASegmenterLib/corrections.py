"""Saving corrected findings into the site dataset (``tmca.site``): which findings, and the saves.

The engine's ``tmca.site`` runs in Slicer's process: it needs SimpleITK and numpy, not torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from TMCASegmenterLib import geometry
from TMCASegmenterLib.results import ResultRow
from tmca import site
from tmca.errors import TMCAError

SITE_DATASET_SETTING = "TMCASegmenter/SiteDatasetFolder"


@dataclass(frozen=True)
class Correction:
    """One segment of the user's segmentation to save with its finding's sentence."""

    segment_id: str
    report: str
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.report or self.segment_id


def default_dataset_folder(user_settings_file: str) -> str:
    """``<folder of Slicer's user settings file>/TMCASegmenter/SiteDataset``."""
    return str(Path(user_settings_file).parent / "TMCASegmenter" / "SiteDataset")


def case_id(series_instance_uid: str | None, node_name: str) -> str:
    """The scan's case id: its DICOM SeriesInstanceUID when it has one, else the volume's name."""
    return (series_instance_uid or "").strip() or node_name.strip()


def chosen_corrections(rows: Sequence[ResultRow], selected: Iterable[int]) -> list[Correction]:
    """The corrections to save: the selected rows of the results table, or every row when none is selected.

    Rows of findings of absence have no segment and are skipped; TMCAError when nothing is left.
    """
    indices = sorted(set(selected))
    picked = [rows[i] for i in indices if 0 <= i < len(rows)] if indices else list(rows)
    chosen = [Correction(row.segment_id, row.finding.text or row.finding.name, row.finding.name)
              for row in picked if not row.absent]
    if not chosen:
        if picked:
            raise TMCAError("the selected finding is a finding of absence: it has no segment to save")
        raise TMCAError("there is no finding to save: segment a report first, or select a finding in the results table")
    return chosen


def scan_image(voxels: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """The scan as a SimpleITK image: ``voxels`` (k, j, i) on the grid of the IJK-to-RAS matrix."""
    return geometry.image_on_grid(voxels, ijk_to_ras)


def save_corrections(dataset: str, image: sitk.Image, corrections: Sequence[Correction],
                     read_mask: Callable[[str], np.ndarray | None], case: str) -> list[site.SiteExample]:
    """Save each correction's mask (``read_mask(segment_id)``, None when the segment is gone) with its sentence.

    Every mask is read and checked before the first is saved, so one missing or empty segment
    saves none. Raises TMCAError with the finding's name in the message.
    """
    if not corrections:
        raise TMCAError("there is no finding to save")
    masks = []
    for correction in corrections:
        mask = read_mask(correction.segment_id)
        if mask is None:
            raise TMCAError(f"{correction.label!r}: its segment is no longer in the segmentation; "
                            "segment the report again or pick another finding")
        if not np.any(mask):
            raise TMCAError(f"{correction.label!r}: the corrected segment is empty; draw the finding before saving")
        masks.append(mask)
    return [site.add_example(dataset, image, correction.report, mask, case=case)
            for correction, mask in zip(corrections, masks)]


def dataset_summary(dataset: str) -> str:
    """What the panel shows about the site dataset: its example counts, or why they cannot be read."""
    try:
        counts = site.split_counts(dataset)
    except TMCAError as error:
        return f"Site dataset unreadable: {error}"
    return count_text(counts)


def count_text(counts: dict[str, int]) -> str:
    """``"12 examples (10 Train, 2 Val)"``; ``"No examples yet"`` for an empty dataset."""
    total = counts.get("Train", 0) + counts.get("Val", 0)
    if total == 0:
        return "No examples yet"
    noun = "example" if total == 1 else "examples"
    return f"{total} {noun} ({counts.get('Train', 0)} Train, {counts.get('Val', 0)} Val)"
