"""A real multi-slice CT series for tests: pydicom's CT_small.dcm stacked along its normal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

SLICES = 6
SLICE_SPACING = 5.0


def write_series(folder: Path, slices: int = SLICES, shuffle: bool = True) -> list[Path]:
    """A real CT series: CT_small.dcm repeated along its normal with its own UIDs, files named out of order."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid, origin = pydicom.uid.generate_uid(), np.asarray(source.ImagePositionPatient, dtype=float)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    order = [3, 0, 5, 1, 4, 2][:slices] if shuffle and slices == 6 else list(range(slices))
    for index in range(slices):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [float(v) for v in origin + [0.0, 0.0, index * SLICE_SPACING]]
        ds.SliceLocation = float(origin[2] + index * SLICE_SPACING)
        ds.SliceThickness = SLICE_SPACING
        pixels = ds.pixel_array.astype(np.int16) + np.int16(index * 7)
        ds.PixelData = pixels.tobytes()
        path = folder / f"img{order[index]:02d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths
