"""Export DICOM SEG: which way it can go for the last result, and the engine's way.

Two ways, both from the segments as they are now (corrections included):

- ``slicer``: Slicer's DICOM export with QuantitativeReporting's ``DICOMSegmentationPlugin``
  (``examineForExport`` on the segmentation's subject hierarchy item, ``export``), when installed;
- ``engine``: ``tmca.dicomseg.write_dicom_seg`` (highdicom) in Slicer's process, fed with the
  segments' masks on the scan's grid, the findings' records (terminology) and the series' files.

Either needs the scan to have been loaded from DICOM with all its images in Slicer's DICOM
database: a DICOM SEG references its source images.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from TMCASegmenterLib import geometry
from tmca.errors import TMCAError
from tmca.protocol import FindingRecord

PLUGIN_NAME = "DICOMSegmentationPlugin"
SLICER = "slicer"
ENGINE = "engine"
MODEL_MANIFEST = "manifest.json"  # tmca.checkpoint.MANIFEST_FILE, which imports torch


@dataclass(frozen=True)
class ExportRoute:
    """How the export would go (``slicer``, ``engine``, or "" when it cannot) and why, for the button's tooltip."""

    way: str
    reason: str

    @property
    def possible(self) -> bool:
        return bool(self.way)


def export_route(has_result: bool, instance_uids: Sequence[str], has_plugin: bool,
                 files: Sequence[str] | None = None) -> ExportRoute:
    """Choose the export for the last result.

    instance_uids: the scan's SOP Instance UIDs (its ``DICOM.instanceUIDs`` attribute, empty when
    not loaded from DICOM); files: the DICOM database's file for each ("" when not there), or None
    when not looked up yet (the button's state is decided without querying the database).
    """
    if not has_result:
        return ExportRoute("", "Segment a report first: the export writes the last result's segments, "
                               "with that result's input volume and segmentation selected.")
    if not instance_uids:
        return ExportRoute("", "The input volume was not loaded from DICOM (DICOM module), and a DICOM SEG must "
                               "reference DICOM images. Save the segmentation as .seg.nrrd instead.")
    if files is not None:
        missing = len(instance_uids) - sum(1 for file in files if file)
        if missing:
            return ExportRoute("", f"{missing} of the input series' {len(instance_uids)} images are not in "
                                   "Slicer's DICOM database; import the series into the DICOM database again.")
    if has_plugin:
        return ExportRoute(SLICER, "Write a DICOM SEG of the segmentation through Slicer's DICOM export "
                                   "(QuantitativeReporting) and add it to the DICOM database.")
    return ExportRoute(ENGINE, "Write a DICOM SEG of the result's segments with the TMCA engine (highdicom); "
                               "install QuantitativeReporting to export through Slicer's DICOM export instead.")


def instance_uids(attribute: str | None) -> list[str]:
    """The UIDs of a volume's space-separated ``DICOM.instanceUIDs`` attribute."""
    return (attribute or "").split()


def seg_file_name(volume_name: str) -> str:
    """``<volume name> TMCA SEG.dcm`` with characters file systems refuse replaced."""
    cleaned = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", volume_name).strip(" .") or "scan"
    return f"{cleaned[:100]} TMCA SEG.dcm"


def model_manifest_sha256(model_dir: str | Path) -> str:
    """The sha256 of a model folder's manifest: the model's identity in the SEG's algorithm parameters."""
    try:
        return hashlib.sha256((Path(model_dir) / MODEL_MANIFEST).read_bytes()).hexdigest()
    except OSError:
        raise TMCAError(f"model folder {model_dir} has no readable {MODEL_MANIFEST}") from None


def reference_image(shape: Sequence[int], ijk_to_ras: np.ndarray) -> sitk.Image:
    """An image with the scan's grid (``shape`` is (k, j, i)), as the engine's writer takes it."""
    image = sitk.Image([int(n) for n in reversed(shape)], sitk.sitkUInt8)
    origin, spacing, direction = geometry.geometry_from_ijk_to_ras(ijk_to_ras)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def write_with_engine(path: str | Path, masks: Sequence[np.ndarray], records: Sequence[FindingRecord],
                      ijk_to_ras: np.ndarray, source_files: Sequence[str], model: str | Path | None) -> Path:
    """Write ``masks`` (one (k, j, i) array per record, on the scan's grid) as a DICOM SEG at ``path``.

    model: the model folder that made the result (None: the bundled demo model).
    """
    if not records:
        raise TMCAError("the result has no segment to export (only findings of absence)")
    if len(masks) != len(records):
        raise TMCAError(f"{len(masks)} masks for {len(records)} findings")
    if importlib.util.find_spec("highdicom") is None:
        raise TMCAError("the engine's DICOM SEG writer needs the highdicom package: click Apply once to install "
                        "the engine's packages, or install the QuantitativeReporting extension")
    from tmca import __version__
    from tmca.dicomseg import Algorithm, write_dicom_seg
    from tmca.models import resolve_model

    reference = reference_image(np.shape(masks[0]), ijk_to_ras)
    algorithm = Algorithm(__version__, model_manifest_sha256(resolve_model(model)))
    write_dicom_seg(path, list(masks), list(records), reference, [Path(f) for f in source_files], algorithm)
    return Path(path)
