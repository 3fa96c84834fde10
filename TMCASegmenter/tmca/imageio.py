"""Load medical images as 3D scalar float32 SimpleITK images, with the modality they show.

Inputs: NIfTI, NRRD/NHDR, MetaImage, a DICOM file (single or multi-frame), a folder of DICOM
series (searched recursively), and 2D raster images (PNG, JPEG, BMP, TIFF). A 2D image becomes a
volume of one slice. Geometry (size, spacing, origin, direction, LPS) is kept exactly as SimpleITK
reads it. A colour image keeps its R, G, B pixels (``LoadedImage.rgb``, for colour models) beside
its grey ITU-R 601 luminance (``LoadedImage.image``, for everything that needs geometry or a scalar,
and for grey models); a colour file whose three channels are equal everywhere is grey.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from tmca.choices import DICOM_MODALITY, check_modality
from tmca.errors import TMCAError, reason
from tmca.formats import READABLE_TEXT, is_dicom_name, is_raster

if TYPE_CHECKING:  # pydicom and Pillow are imported where they are used: most inputs need neither
    import pydicom

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
"""Weights of R, G, B in the grey value of a colour pixel."""

_PILLOW_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_COLOUR_PIXEL_TYPES = (sitk.sitkVectorUInt8, sitk.sitkVectorUInt16)


@dataclass
class LoadedImage:
    """An image ready for preprocessing.

    ``image`` is always 3D, scalar, ``sitkFloat32``, with the input's size, spacing, origin and
    direction; its numpy view (``sitk.GetArrayFromImage``) has shape (z, y, x). A 2D input has
    size (W, H, 1). For a colour input it is the luminance.

    ``rgb`` holds a colour input's pixels, (z, y, x, 3) in R, G, B order with the file's values
    and type (e.g. uint8), on ``image``'s grid; None for grey inputs, including colour files whose
    channels are equal everywhere (grey stored as RGB). ``was_rgb`` says whether the file stored
    colour channels.
    """

    image: sitk.Image
    modality: str
    source: str
    series_uid: str | None
    was_2d: bool
    was_rgb: bool
    rgb: np.ndarray | None = None

    @property
    def channels(self) -> int:
        """3 for a colour image (``rgb`` is set), else 1."""
        return 1 if self.rgb is None else 3


@dataclass
class _RawImage:
    """What a reader found, before conversion to a scalar float32 volume."""

    image: sitk.Image
    colour: bool  # True when the pixel components are colour channels (RGB, RGBA, palette)
    dicom_modality: str | None = None
    series_uid: str | None = None


def load_image(path: str | os.PathLike, series_uid: str | None = None, modality: str | None = None) -> LoadedImage:
    """Read ``path`` (an image file or a DICOM folder) as a 3D float32 volume.

    ``series_uid`` picks a series of a DICOM folder (default: the series with most files).
    ``modality`` ("CT", "MR", "US", "XR", "OT", or a DICOM code such as "CR") overrides the
    DICOM Modality tag; without either the modality is "OT". MONOCHROME1 DICOM images are
    inverted so that higher values are brighter. Raises ``TMCAError`` for a missing path, an
    unreadable or unsupported file, a 4D or non-colour vector image, NaN/Inf voxels, or a
    constant image.
    """
    source = Path(path)
    requested_modality = None if modality is None else check_modality(modality)
    if not source.exists():
        raise TMCAError(f"image not found: {source}; check the path")
    raw = _read_any(source, series_uid)
    image, was_rgb, rgb = _to_scalar_float32(_as_3d(raw.image, source), raw.colour, source)
    validate_voxels(image, source)
    return LoadedImage(
        image=image,
        modality=requested_modality or DICOM_MODALITY.get(raw.dicom_modality or "", "OT"),
        source=str(source),
        series_uid=raw.series_uid,
        was_2d=image.GetSize()[2] == 1,
        was_rgb=was_rgb,
        rgb=rgb,
    )


def is_colour_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` (an image file or DICOM folder) stores colour channels, from its header.

    No pixels are read, so a colour file may still hold grey pixels (R = G = B everywhere);
    :func:`load_image` tells (``LoadedImage.rgb``). Raises ``TMCAError`` for a missing or
    unreadable path.
    """
    source = Path(path)
    if not source.exists():
        raise TMCAError(f"image not found: {source}; check the path")
    if source.is_dir():
        series = find_dicom_series(source)
        if not series:
            raise TMCAError(f"no DICOM series found in folder {source}; choose a folder that contains DICOM images")
        return _dicom_colour(_dicom_header(max(series.values(), key=len)[0]))
    if _is_dicom_file(source):
        return _dicom_colour(_dicom_header(source))
    if is_raster(source):
        from PIL import Image

        try:
            with Image.open(source) as picture:
                return picture.mode not in _PILLOW_GREY_MODES
        except (OSError, ValueError) as exc:
            raise _unreadable(source, exc) from exc
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(source, exc) from exc
    return reader.GetNumberOfComponents() in (3, 4) and reader.GetPixelID() in _COLOUR_PIXEL_TYPES


def list_dicom_series(folder: str | os.PathLike) -> list[tuple[str, int, str]]:
    """List the DICOM series under ``folder`` (searched recursively).

    Returns ``(series_uid, number_of_files, series_description)`` tuples, most files first.
    """
    if not Path(folder).is_dir():
        raise TMCAError(f"DICOM folder not found: {folder}; check the path")
    series = find_dicom_series(Path(folder))
    listing = [(uid, len(files), _series_description(files[0])) for uid, files in series.items()]
    return sorted(listing, key=lambda item: (-item[1], item[0]))


# ---------------------------------------------------------------------------------------------
# Dispatch


def _read_any(source: Path, series_uid: str | None) -> _RawImage:
    """Read a folder, DICOM file or other image file without converting it."""
    if source.is_dir():
        return _read_dicom_folder(source, series_uid)
    if _is_dicom_file(source):
        raw = _read_dicom_file(source)
        if series_uid is not None and raw.series_uid != series_uid:
            raise TMCAError(
                f"{source} belongs to series {raw.series_uid}, not {series_uid}; "
                "pass the DICOM folder to choose among several series"
            )
        return raw
    if series_uid is not None:
        raise TMCAError(f"a series UID was given but {source} is not DICOM; series UIDs select series in DICOM folders")
    return _read_image_file(source)


def _is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM magic (``DICM`` at byte 128) or a DICOM file suffix."""
    try:
        with open(path, "rb") as stream:
            magic = stream.read(132)[128:]
    except OSError as exc:
        raise TMCAError(f"cannot open {path}: {exc.strerror}; check the file's permissions") from exc
    return magic == b"DICM" or is_dicom_name(path)


# ---------------------------------------------------------------------------------------------
# Non-DICOM files


def _read_image_file(path: Path) -> _RawImage:
    """Read NIfTI/NRRD/MHA/raster files with SimpleITK, raster files with Pillow as fallback."""
    raster = is_raster(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if not raster:
            raise _unreadable(path, exc) from exc
        return _read_with_pillow(path)
    return _RawImage(image, colour=raster or _looks_like_colour(image))


def _unreadable(path: Path, exc: BaseException) -> TMCAError:
    return TMCAError(
        f"cannot read {path}: not a readable {READABLE_TEXT} image ({reason(exc)}); "
        "check that the file is complete and in a supported format"
    )


def _looks_like_colour(image: sitk.Image) -> bool:
    """True for a 3- or 4-component image of 8/16-bit integers (RGB/RGBA NRRD, NIfTI, MHA)."""
    return image.GetNumberOfComponentsPerPixel() in (3, 4) and image.GetPixelID() in _COLOUR_PIXEL_TYPES


def _read_with_pillow(path: Path) -> _RawImage:
    """Read a raster image SimpleITK cannot (grey+alpha, palette, CMYK) as a 2D image."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            picture.seek(0)
            converted = picture.convert("F") if picture.mode in _PILLOW_GREY_MODES else picture.convert("RGB")
            pixels = np.asarray(converted)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    colour = pixels.ndim == 3
    return _RawImage(sitk.GetImageFromArray(pixels, isVector=colour), colour=colour)


# ---------------------------------------------------------------------------------------------
# DICOM files and folders


def _dicom_header(path: str | os.PathLike) -> pydicom.Dataset:
    """Read the DICOM header of ``path`` without the pixels."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise TMCAError(f"cannot read DICOM file {path}: {reason(exc)}; re-export it") from exc
    if not any(tag.group in (0x0008, 0x0020, 0x0028) for tag in header.keys()):
        raise TMCAError(f"cannot read {path}: it is not a DICOM file (no study, series or image attributes); re-export it")
    return header


def _read_dicom_file(path: Path) -> _RawImage:
    """Read one DICOM file (all frames) with SimpleITK, or pydicom where SimpleITK fails."""
    header = _dicom_header(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        image = _read_dicom_with_pydicom(path)
    return _dicom_raw(image, header)


def _dicom_raw(image: sitk.Image, header: pydicom.Dataset) -> _RawImage:
    """Wrap a decoded DICOM image with the header fields TMCA uses."""
    return _RawImage(
        image,
        colour=_dicom_colour(header),
        dicom_modality=str(header.get("Modality", "")).upper() or None,
        series_uid=str(header.get("SeriesInstanceUID", "")) or None,
    )


def _dicom_colour(header: pydicom.Dataset) -> bool:
    """True unless the PhotometricInterpretation is MONOCHROME1/2 (the default when absent)."""
    return not str(header.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")


def _read_dicom_folder(folder: Path, series_uid: str | None) -> _RawImage:
    """Read one series of a DICOM folder: ``series_uid`` or the series with most files."""
    series = find_dicom_series(folder)
    if not series:
        raise TMCAError(f"no DICOM series found in folder {folder}; choose a folder that contains DICOM images")
    if series_uid is None:
        series_uid = max(series, key=lambda uid: (len(series[uid]), uid))
    elif series_uid not in series:
        available = ", ".join(f"{uid} ({len(files)} files)" for uid, files in series.items())
        raise TMCAError(f"series {series_uid} not found in {folder}; available series: {available}")
    files = series[series_uid]
    if len(files) == 1:
        return _read_dicom_file(Path(files[0]))
    header = _dicom_header(files[0])
    try:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
    except RuntimeError:
        image = _read_series_with_pydicom(files)
    raw = _dicom_raw(image, header)
    raw.series_uid = series_uid
    return raw


def find_dicom_series(folder: Path) -> dict[str, list[str]]:
    """Map series UID -> slice files, for every folder under ``folder`` (GDCM's series IDs).

    Within a folder GDCM sorts the slices by position; a series spread over several folders is
    sorted again along its slice normal.
    """
    series: dict[str, list[str]] = {}
    folders: dict[str, set[str]] = {}
    for directory, _, _ in sorted(os.walk(folder)):
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
            series.setdefault(uid, []).extend(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid))
            folders.setdefault(uid, set()).add(directory)
    for uid, directories in folders.items():
        if len(directories) > 1:
            series[uid] = sorted(series[uid], key=_slice_position)
    return series


def _slice_position(path: str) -> float:
    """Position of a slice along its normal (ImagePositionPatient), else its InstanceNumber."""
    header = _dicom_header(path)
    position = header.get("ImagePositionPatient")
    orientation = header.get("ImageOrientationPatient")
    if position is None or orientation is None or len(orientation) != 6:
        return float(header.get("InstanceNumber", 0) or 0)
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return float(np.dot(normal, np.asarray(position, float)))


def _series_description(path: str) -> str:
    """SeriesDescription of a DICOM file ('' when absent)."""
    return str(_dicom_header(path).get("SeriesDescription", ""))


# ---------------------------------------------------------------------------------------------
# pydicom fallback


def _read_dicom_with_pydicom(path: Path) -> sitk.Image:
    """Decode a DICOM file with pydicom: image of size (cols, rows, frames), RGB or scalar."""
    import pydicom

    dataset = pydicom.dcmread(path, force=True)
    _assume_native_syntax_if_missing(dataset)
    frames = _pydicom_frames(path, dataset)
    image = sitk.GetImageFromArray(frames, isVector=frames.ndim == 4)
    image.SetSpacing(_pydicom_spacing(dataset))
    image.SetOrigin([float(v) for v in dataset.get("ImagePositionPatient", [0.0, 0.0, 0.0])])
    image.SetDirection(_pydicom_direction(dataset))
    return image


def _assume_native_syntax_if_missing(dataset: pydicom.Dataset) -> None:
    """Give a file without file meta (old ACR-NEMA style) the uncompressed syntax it was read with."""
    import pydicom

    if "TransferSyntaxUID" in dataset.file_meta or dataset.original_encoding[0] is None:
        return
    implicit, little_endian = dataset.original_encoding
    if implicit:
        syntax = pydicom.uid.ImplicitVRLittleEndian
    else:
        syntax = pydicom.uid.ExplicitVRLittleEndian if little_endian else pydicom.uid.ExplicitVRBigEndian
    dataset.file_meta.TransferSyntaxUID = syntax


def _pydicom_frames(path: Path, dataset: pydicom.Dataset) -> np.ndarray:
    """Decoded pixels as (frames, rows, cols) values, or (frames, rows, cols, 3) RGB.

    Applies the modality LUT (rescale slope/intercept) to grey images, the palette to
    PALETTE COLOR images, and inverts MONOCHROME1 as SimpleITK does.
    """
    import pydicom.pixels

    if not any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise TMCAError(f"{path} holds no image (no pixel data); choose a DICOM image file or folder")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise TMCAError(_undecodable_message(path, dataset, exc)) from exc
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        pixels = pydicom.pixels.apply_color_lut(pixels, dataset)
        samples = 3
    elif photometric.startswith("MONOCHROME"):
        pixels = np.asarray(pydicom.pixels.apply_modality_lut(pixels, dataset), dtype=np.float64)
        if photometric == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels
    single_frame_ndim = 3 if samples > 1 else 2
    return pixels[np.newaxis] if pixels.ndim == single_frame_ndim else pixels


def _undecodable_message(path: Path, dataset: pydicom.Dataset, exc: Exception) -> str:
    """One line naming the transfer syntax that neither SimpleITK nor pydicom can decode."""
    file_meta = getattr(dataset, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None or not syntax.is_transfer_syntax:
        return f"cannot decode the pixels of {path}: the file has no valid transfer syntax ({reason(exc)}); re-export it as standard DICOM"
    if not syntax.is_compressed:
        return f"cannot decode the pixels of {path} ({syntax.name}): the pixel data is damaged ({reason(exc)}); re-export the image"
    return (
        f"cannot decode the pixels of {path}: neither SimpleITK nor pydicom can decode {syntax.name} ({syntax}); "
        f"{_codec_hint(syntax.name)}, or convert the file to uncompressed DICOM (e.g. `gdcmconv --raw in.dcm out.dcm`)"
    )


def _codec_hint(syntax_name: str) -> str:
    """Which pydicom plugin to install for a compressed transfer syntax."""
    if "2000" in syntax_name:
        return "install `pylibjpeg pylibjpeg-openjpeg`"
    if "JPEG-LS" in syntax_name:
        return "install `pyjpegls`"
    if "JPEG" in syntax_name:
        return "install `pylibjpeg pylibjpeg-libjpeg`"
    return "install `python-gdcm`"


def _pydicom_spacing(dataset: pydicom.Dataset) -> tuple[float, float, float]:
    """(x, y, z) spacing from PixelSpacing and SpacingBetweenSlices/SliceThickness (default 1)."""
    row_spacing, column_spacing = (float(v) for v in dataset.get("PixelSpacing", [1.0, 1.0]))
    slice_spacing = float(dataset.get("SpacingBetweenSlices", 0) or dataset.get("SliceThickness", 0) or 1.0)
    return tuple(v if v > 0 else 1.0 for v in (column_spacing, row_spacing, slice_spacing))


def _pydicom_direction(dataset: pydicom.Dataset) -> tuple[float, ...]:
    """Row-major 3x3 direction (columns: row direction, column direction, normal)."""
    orientation = dataset.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    row = np.asarray(orientation[:3], float)
    column = np.asarray(orientation[3:], float)
    return tuple(np.column_stack([row, column, np.cross(row, column)]).ravel().tolist())


def _read_series_with_pydicom(files: Sequence[str]) -> sitk.Image:
    """Stack single-frame files decoded by pydicom; z spacing from the first two positions."""
    slices = [_read_dicom_with_pydicom(Path(name)) for name in files]
    if len({(s.GetSize(), s.GetNumberOfComponentsPerPixel()) for s in slices}) > 1:
        raise TMCAError(f"the series of {files[0]} mixes slices of different sizes; load the slices separately")
    volume = sitk.GetImageFromArray(
        np.concatenate([sitk.GetArrayFromImage(s) for s in slices]),
        isVector=slices[0].GetNumberOfComponentsPerPixel() > 1,
    )
    first = slices[0]
    z_spacing = float(np.linalg.norm(np.subtract(slices[1].GetOrigin(), first.GetOrigin()))) or first.GetSpacing()[2]
    volume.SetSpacing((*first.GetSpacing()[:2], z_spacing))
    volume.SetOrigin(first.GetOrigin())
    volume.SetDirection(first.GetDirection())
    return volume


# ---------------------------------------------------------------------------------------------
# Conversion and validation


def _as_3d(image: sitk.Image, source: Path) -> sitk.Image:
    """A 2D image becomes one slice (z spacing 1); a 4D image with one volume is reduced to 3D."""
    dimension = image.GetDimension()
    if dimension == 2:
        return sitk.JoinSeries([image])
    if dimension == 4 and image.GetSize()[3] == 1:
        return sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    if dimension != 3:
        raise TMCAError(f"{source} is a {dimension}D image; 4D images are not supported; extract one 3D volume first")
    return image


def _to_scalar_float32(image: sitk.Image, colour: bool, source: Path) -> tuple[sitk.Image, bool, np.ndarray | None]:
    """Scalar float32 copy of ``image``: colour -> luminance, grey+alpha -> grey.

    Returns the image, whether it was colour, and the colour pixels (z, y, x, 3) when they are
    not grey (alpha dropped). A vector image that is not colour (a vector field, a time series
    stored as components) raises ``TMCAError``.
    """
    components = image.GetNumberOfComponentsPerPixel()
    if components == 1:
        return sitk.Cast(image, sitk.sitkFloat32), False, None
    if colour and components == 2:
        return sitk.VectorIndexSelectionCast(image, 0, sitk.sitkFloat32), False, None
    if colour and components in (3, 4):
        rgb = np.array(sitk.GetArrayViewFromImage(image)[..., :3], order="C")  # a copy: the view dies with ``image``
        grey = sitk.GetImageFromArray(rgb.astype(np.float32) @ np.asarray(LUMINANCE_WEIGHTS, np.float32))
        grey.CopyInformation(image)
        return grey, True, rgb if _has_hue(rgb) else None
    raise TMCAError(
        f"{source} has {components} values per voxel and is not a colour image; "
        "4D images are not supported; extract one 3D volume first"
    )


def _has_hue(rgb: np.ndarray) -> bool:
    """False when the R, G and B values of (..., 3) pixels are equal everywhere (a grey picture)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return not (np.array_equal(red, green) and np.array_equal(red, blue))


def validate_voxels(image: sitk.Image, source: str | Path) -> None:
    """Reject images with NaN/Inf voxels or with all voxels equal."""
    voxels = sitk.GetArrayViewFromImage(image)
    if np.isnan(voxels).any():
        raise TMCAError(f"{source} contains NaN voxels; fix the image (e.g. replace NaN by a background value) and try again")
    if np.isinf(voxels).any():
        raise TMCAError(f"{source} contains infinite voxels; fix the image (e.g. clip its values) and try again")
    low, high = float(voxels.min()), float(voxels.max())
    if low == high:
        raise TMCAError(f"{source} is constant (every voxel is {low:g}); there is nothing to segment, check the export")

