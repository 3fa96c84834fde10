"""The file formats TMCA reads and writes: the one list of suffixes every module uses.

Suffixes are lower-case and compared case-insensitively; a name's suffix is the longest known
suffix it ends with (``scan.nii.gz`` is NIfTI, ``case.seg.nrrd`` a segmentation). Imports nothing
heavy, so argument parsers, the batch case finder and the Slicer module can use it freely.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
METAIMAGE_SUFFIXES = (".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")

VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + METAIMAGE_SUFFIXES
"""Volume files SimpleITK reads and writes (a batch case each)."""
READABLE_SUFFIXES = VOLUME_SUFFIXES + DICOM_SUFFIXES + RASTER_SUFFIXES
"""Every image file :func:`tmca.imageio.load_image` reads (a DICOM folder needs no suffix)."""
WRITABLE_VOLUME_SUFFIXES = VOLUME_SUFFIXES
"""Probability and relevance maps: any volume format (``.nhdr``/``.mhd`` with a detached data file)."""
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")
"""Headers whose voxels live in another file (``.raw``, ``.raw.gz``, ``.zraw``) named in the header."""
SEGMENTATION_SUFFIX = ".seg.nrrd"
SEGMENTATION_SUFFIXES = (SEGMENTATION_SUFFIX, ".nrrd")
"""Names a segmentation output may have (Slicer's ``.seg.nrrd``, or a plain ``.nrrd``)."""

DATASET_FORMATS = ("lvit", "qata", "csv")
"""Dataset layouts :func:`tmca.data.load_samples` reads (``tmca train/evaluate --format``)."""

READABLE_TEXT = "NIfTI, NRRD/NHDR, MHA/MHD, DICOM, PNG, JPEG, BMP, TIFF or GIF"
"""The readable formats in words, for help texts and error messages."""

_KNOWN_SUFFIXES = tuple(sorted({SEGMENTATION_SUFFIX, *READABLE_SUFFIXES}, key=len, reverse=True))
_DATA_FILE_LINE = re.compile(r"^\s*(?:data file|datafile)\s*:\s*(?P<nrrd>.+?)\s*$|^\s*ElementDataFile\s*=\s*(?P<mhd>.+?)\s*$")


def suffix_of(name: str | os.PathLike) -> str:
    """The known suffix ``name`` ends with, lower-case (longest first), or ``""``."""
    lower = Path(name).name.lower()
    return next((suffix for suffix in _KNOWN_SUFFIXES if lower.endswith(suffix)), "")


def strip_suffix(name: str | os.PathLike) -> str:
    """``"sub/brain.nii.gz"`` -> ``"sub/brain"``; a name without a known suffix stays as it is."""
    text = str(name)
    return text[: len(text) - len(suffix_of(text))]


def has_suffix(name: str | os.PathLike, suffixes: tuple[str, ...]) -> bool:
    """True when ``name`` ends with one of ``suffixes`` (case-insensitive)."""
    return str(name).lower().endswith(suffixes)


def is_raster(path: str | os.PathLike) -> bool:
    """A 2D raster picture (PNG, JPEG, BMP, TIFF, GIF)."""
    return has_suffix(path, RASTER_SUFFIXES)


def is_dicom_name(path: str | os.PathLike) -> bool:
    """A file named like DICOM (``.dcm``, ``.dicom``, ``.ima``); many DICOM files have no suffix at all."""
    return has_suffix(path, DICOM_SUFFIXES)


def is_volume_file(path: str | os.PathLike) -> bool:
    """A volume image file (NIfTI, NRRD/NHDR, MHA/MHD), not a Slicer segmentation."""
    return has_suffix(path, VOLUME_SUFFIXES) and not has_suffix(path, (SEGMENTATION_SUFFIX,))


def detached_data_files(header: str | os.PathLike) -> list[Path]:
    """The data files a ``.nhdr``/``.mhd`` header names that exist beside it ([] for other files).

    Only the single-file form (``data file: x.raw.gz``, ``ElementDataFile = x.zraw``) is followed;
    ``LOCAL`` (data in the header file itself) and file lists give [].
    """
    path = Path(header)
    if not has_suffix(path, DETACHED_HEADER_SUFFIXES):
        return []
    try:
        with open(path, "rb") as stream:
            lines = stream.read(64 * 1024).decode("latin-1").splitlines()
    except OSError:
        return []
    for line in lines:
        match = _DATA_FILE_LINE.match(line)
        if match:
            name = match["nrrd"] or match["mhd"]
            data = path.parent / name
            return [data] if name.upper() != "LOCAL" and " " not in name and data.is_file() else []
    return []
