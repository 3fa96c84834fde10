"""Write the findings' masks as a DICOM Segmentation (highdicom), referencing the source series.

One segment per positive finding, BINARY, coded with the finding's terminology (category, type,
anatomic region with its laterality as region modifier), with the algorithm identification
(name ``TMCASegmenter``, the engine version, the model manifest's sha256 as a parameter). Each
frame references the source slice it lies on: the mask's slice ``k`` is matched to the source
image whose ImagePositionPatient is at the same position along the slice normal. Patient, study
and frame-of-reference attributes come from the source as the standard requires; nothing else is
copied. Written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from tmca.atomic import atomic_path
from tmca.errors import TMCAError
from tmca.choices import DICOM_SEG_TYPES
from tmca.protocol import FindingRecord

ALGORITHM_NAME = "TMCASegmenter"
SERIES_NUMBER = 901
SERIES_DESCRIPTION = "TMCASegmenter findings"
_POSITION_TOLERANCE = 0.25  # of the slice spacing: how far a mask slice may lie from its source slice


@dataclass(frozen=True)
class Algorithm:
    """What made the segmentation: engine version and the model's manifest sha256."""

    version: str
    model_manifest_sha256: str


def dicom_source_files(input_path: str | os.PathLike, series_uid: str | None) -> list[Path]:
    """The files of the DICOM series ``input_path`` denotes (a DICOM file, or a folder and its series).

    Raises ``TMCAError`` when the input is not DICOM: a DICOM SEG must reference DICOM images.
    """
    from tmca.imageio import find_dicom_series

    source = Path(input_path)
    if source.is_dir():
        series = find_dicom_series(source)
        if not series:
            raise TMCAError(f"--dicom-seg needs DICOM input, and {source} holds no DICOM series; write the .seg.nrrd only")
        if series_uid is not None and series_uid not in series:
            raise TMCAError(f"series {series_uid} not found in {source}; check --series")
        uid = series_uid or max(series, key=lambda key: (len(series[key]), key))
        return [Path(name) for name in series[uid]]
    if not is_dicom_file(source):
        raise TMCAError(
            f"--dicom-seg needs DICOM input (a DICOM file or series folder), but {source} is not DICOM; "
            "drop --dicom-seg or give the DICOM series"
        )
    return [source]


def is_dicom_file(path: Path) -> bool:
    """True for a readable file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def write_dicom_seg(
    path: str | os.PathLike,
    masks: Sequence[np.ndarray],
    records: Sequence[FindingRecord],
    reference: sitk.Image,
    source_files: Sequence[Path],
    algorithm: Algorithm,
    seg_type: str = "binary",
) -> None:
    """Write ``masks`` (one (z, y, x) boolean array per record) as a DICOM SEG at ``path``.

    seg_type: ``"binary"`` (one frame per segment and slice; every SEG reader) or ``"labelmap"``
    (one frame per slice holding segment numbers; compact, DICOM 2024 and later readers, and only
    for findings that do not overlap). Raises ``TMCAError`` when there is no segment to write,
    when labelmap findings overlap, or when the masks' grid does not lie on the source slices.
    """
    import highdicom as hd

    if not records:
        raise TMCAError("no DICOM SEG written: the report states no positive finding, so there is no segment")
    if seg_type not in DICOM_SEG_TYPES:
        raise ValueError(f"unknown DICOM SEG type {seg_type!r}; choose one of {', '.join(DICOM_SEG_TYPES)}")
    sources = [_read_source(file) for file in source_files]
    frames, ordered = _frames_on_sources(np.stack([np.asarray(m, dtype=bool) for m in masks], axis=-1), reference, sources)
    if seg_type == "labelmap":
        frames = _label_frames(frames)
    descriptions = [_segment_description(hd, number, record, algorithm) for number, record in enumerate(records, start=1)]
    segmentation = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues[seg_type.upper()],
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=algorithm.version,
        device_serial_number="0",
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=bool(frames.any()),  # a SEG needs one frame: all-empty masks keep theirs
    )
    try:
        with atomic_path(path, suffix=".dcm") as tmp:
            segmentation.save_as(tmp)
    except OSError as error:
        raise TMCAError(f"cannot write DICOM SEG {path}: {error.strerror or error}; choose another output path") from error


def _label_frames(frames: np.ndarray) -> np.ndarray:
    """(frames, rows, columns, segments) booleans -> (frames, rows, columns) uint8 segment numbers (0: none)."""
    if (frames.sum(axis=-1) > 1).any():
        raise TMCAError("findings overlap, and a LABELMAP DICOM SEG holds one finding per voxel; "
                        "write the BINARY type instead (--dicom-seg-type binary)")
    numbers = np.arange(1, frames.shape[-1] + 1, dtype=np.uint8)
    return (frames.astype(np.uint8) * numbers).sum(axis=-1).astype(np.uint8)


def _read_source(file: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(file)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as error:
        raise TMCAError(f"cannot read DICOM source {file} for the DICOM SEG: {error}") from None


def _frames_on_sources(stack: np.ndarray, reference: sitk.Image, sources: list[pydicom.Dataset]):
    """(frames, rows, columns, segments) in the order of the returned source datasets."""
    slices = stack.shape[0]
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) == slices:
        return stack, sources  # one image (single or multi-frame): frames in file order
    if len(sources) != slices:
        raise TMCAError(f"the mask has {slices} slices but the DICOM series has {len(sources)} images; the DICOM SEG cannot reference them")
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    normal, spacing = direction[:, 2], reference.GetSpacing()[2]
    origin = np.asarray(reference.GetOrigin(), dtype=float)
    positions = np.array([float(np.dot(normal, _position(ds) - origin)) for ds in sources])
    order = []
    for k in range(slices):
        nearest = int(np.argmin(np.abs(positions - k * spacing)))
        if abs(positions[nearest] - k * spacing) > _POSITION_TOLERANCE * spacing:
            raise TMCAError(f"slice {k} of the mask lies on no image of the DICOM series; the DICOM SEG cannot reference it")
        order.append(nearest)
    if len(set(order)) != slices:
        raise TMCAError("two mask slices fall on the same DICOM image; the series geometry is inconsistent")
    return stack, [sources[index] for index in order]


def _position(dataset: pydicom.Dataset) -> np.ndarray:
    position = dataset.get("ImagePositionPatient")
    if position is None:
        raise TMCAError(f"DICOM image {dataset.get('SOPInstanceUID', '?')} has no ImagePositionPatient; cannot place its frame")
    return np.asarray([float(v) for v in position])


def _segment_description(hd, number: int, record: FindingRecord, algorithm: Algorithm):
    terminology = record.terminology
    if not terminology:
        from tmca.terminology import code_finding

        terminology = code_finding(record.text or record.name).as_dict()
    region = terminology.get("region")
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=record.name[:64],
        segmented_property_category=_coded(hd, terminology["category"]),
        segmented_property_type=_coded(hd, terminology["type"]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME,
            family=pydicom.sr.codedict.codes.cid7162.ArtificialIntelligence,
            version=algorithm.version,
            parameters={"model_manifest_sha256": algorithm.model_manifest_sha256},
        ),
        tracking_uid=hd.UID(),
        tracking_id=record.segment_id or f"Segment_{number}",
        anatomic_regions=[_coded(hd, region)] if region else None,
    )
    laterality = terminology.get("laterality")
    if region and laterality:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(hd, laterality)]
    return description


def _coded(hd, code: dict[str, str]):
    return hd.sr.CodedConcept(value=code["value"], scheme_designator=code["scheme"], meaning=code["meaning"])


def algorithm_of(model_path: Path) -> Algorithm:
    """The :class:`Algorithm` of a checkpoint folder."""
    from tmca import __version__
    from tmca.checkpoint import MANIFEST_FILE, sha256_of

    try:
        manifest = sha256_of(Path(model_path) / MANIFEST_FILE)
    except OSError:
        raise TMCAError(f"model folder {model_path} has no readable {MANIFEST_FILE}; pass a tmca checkpoint folder") from None
    return Algorithm(__version__, manifest)
