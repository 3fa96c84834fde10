"""load_image: formats, DICOM decoding and series selection, colour to grey, validation errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
import pytest
import SimpleITK as sitk
from PIL import Image

from datapaths import pydicom_data_file, pydicom_test_file, real_data_file
from tmca.errors import TMCAError
from tmca.imageio import LUMINANCE_WEIGHTS, LoadedImage, list_dicom_series, load_image

SERIES_DIRECTION = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # sagittal slices


def _voxels(loaded: LoadedImage) -> np.ndarray:
    return sitk.GetArrayFromImage(loaded.image)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.asarray(LUMINANCE_WEIGHTS)


def _assert_float32_3d(loaded: LoadedImage) -> None:
    assert loaded.image.GetDimension() == 3
    assert loaded.image.GetPixelID() == sitk.sitkFloat32
    assert loaded.image.GetNumberOfComponentsPerPixel() == 1


# ---------------------------------------------------------------------------------------------
# Volumes (NRRD, NIfTI, MHA)


@pytest.mark.parametrize("name", ["brain1_image.nrrd", "breast1_image.nrrd"])
def test_real_mri_nrrd_keeps_geometry_and_voxels(name: str) -> None:
    path = real_data_file(name)
    expected = sitk.ReadImage(str(path))
    loaded = load_image(path)
    _assert_float32_3d(loaded)
    assert loaded.image.GetSize() == expected.GetSize()
    assert loaded.image.GetSpacing() == expected.GetSpacing()
    assert loaded.image.GetOrigin() == expected.GetOrigin()
    assert loaded.image.GetDirection() == expected.GetDirection()
    np.testing.assert_array_equal(_voxels(loaded), sitk.GetArrayFromImage(expected).astype(np.float32))
    assert (loaded.modality, loaded.series_uid, loaded.was_2d, loaded.was_rgb) == ("OT", None, False, False)
    assert loaded.source == str(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_nifti_and_mha_round_trip_geometry(tmp_path: Path, suffix: str) -> None:
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetSpacing((0.5, 0.75, 2.5))
    image.SetOrigin((-10.0, 20.0, 5.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(image, str(path))
    loaded = load_image(path, modality="mr")
    assert loaded.modality == "MR"
    assert loaded.image.GetSize() == (5, 4, 3)
    np.testing.assert_allclose(loaded.image.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(loaded.image.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(loaded.image.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(_voxels(loaded), np.arange(60).reshape(3, 4, 5))


def test_2d_nifti_becomes_one_slice(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(12, dtype=np.float32).reshape(3, 4))
    image.SetSpacing((0.4, 0.6))
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(image, str(path))
    loaded = load_image(path)
    assert loaded.image.GetSize() == (4, 3, 1) and loaded.was_2d
    np.testing.assert_allclose(loaded.image.GetSpacing()[:2], (0.4, 0.6), rtol=1e-6)
    np.testing.assert_array_equal(_voxels(loaded)[0], np.arange(12).reshape(3, 4))


# ---------------------------------------------------------------------------------------------
# Raster images


def test_png_rgb_becomes_grey_single_slice(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb[:3, :, 0] = 200  # red top half
    rgb[3:, :4] = (10, 250, 40)
    rgb[3:, 4:] = (255, 255, 255)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    loaded = load_image(path)
    _assert_float32_3d(loaded)
    assert loaded.image.GetSize() == (8, 6, 1)
    assert loaded.was_2d and loaded.was_rgb and loaded.modality == "OT"
    np.testing.assert_allclose(_voxels(loaded)[0], _luminance(rgb), atol=1e-3)


def test_png_grey_alpha_and_palette_become_grey(tmp_path: Path) -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    grey_alpha = np.dstack([grey, np.full_like(grey, 128)])
    Image.fromarray(grey_alpha, mode="LA").save(tmp_path / "la.png")
    loaded = load_image(tmp_path / "la.png")
    assert not loaded.was_rgb
    np.testing.assert_array_equal(_voxels(loaded)[0], grey)

    palette_image = Image.fromarray((np.arange(48) % 3).reshape(6, 8).astype(np.uint8), mode="P")
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    palette_image.save(tmp_path / "palette.png")
    loaded = load_image(tmp_path / "palette.png")
    assert loaded.was_rgb
    expected = np.array([0.299, 0.587, 0.114])[(np.arange(48) % 3).reshape(6, 8)] * 255
    np.testing.assert_allclose(_voxels(loaded)[0], expected, atol=1e-3)


def test_jpeg_and_16_bit_tiff(tmp_path: Path) -> None:
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))).save(tmp_path / "grey.jpg")
    loaded = load_image(tmp_path / "grey.jpg", modality="XR")
    assert loaded.image.GetSize() == (32, 16, 1) and loaded.modality == "XR" and not loaded.was_rgb

    values = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "grey16.tif"))
    np.testing.assert_array_equal(_voxels(load_image(tmp_path / "grey16.tif"))[0], values)


# ---------------------------------------------------------------------------------------------
# Single DICOM files


def test_ct_small_dicom_is_ct_in_hounsfield_units() -> None:
    path = pydicom_test_file("CT_small.dcm")
    dataset = pydicom.dcmread(path)
    loaded = load_image(path)
    _assert_float32_3d(loaded)
    assert loaded.modality == "CT" and loaded.was_2d and not loaded.was_rgb
    assert loaded.series_uid == dataset.SeriesInstanceUID
    assert loaded.image.GetSize() == (128, 128, 1)
    np.testing.assert_allclose(loaded.image.GetSpacing()[:2], [float(v) for v in dataset.PixelSpacing])
    np.testing.assert_allclose(loaded.image.GetOrigin(), [float(v) for v in dataset.ImagePositionPatient])
    hounsfield = pydicom.pixels.apply_modality_lut(dataset.pixel_array, dataset)
    np.testing.assert_array_equal(_voxels(loaded)[0], hounsfield)


def test_mr_small_and_its_lossless_jpeg2000_copy_give_the_same_voxels() -> None:
    plain = load_image(pydicom_test_file("MR_small.dcm"))
    jpeg2000 = load_image(pydicom_test_file("MR_small_jp2klossless.dcm"))
    assert plain.modality == jpeg2000.modality == "MR"
    np.testing.assert_array_equal(_voxels(plain), _voxels(jpeg2000))


def test_modality_argument_overrides_the_dicom_tag() -> None:
    assert load_image(pydicom_test_file("CT_small.dcm"), modality="MR").modality == "MR"
    assert load_image(pydicom_test_file("CT_small.dcm"), modality="CR").modality == "XR"
    with pytest.raises(TMCAError, match="unknown modality 'PET'"):
        load_image(pydicom_test_file("CT_small.dcm"), modality="PET")


def test_palette_colour_dicom_becomes_grey() -> None:
    path = pydicom_test_file("examples_palette.dcm")
    dataset = pydicom.dcmread(path)
    loaded = load_image(path)
    assert loaded.was_rgb and loaded.modality == "US" and loaded.image.GetSize() == (800, 350, 1)
    expected = _luminance(pydicom.pixels.apply_color_lut(dataset.pixel_array, dataset))
    # SimpleITK's palette is 8-bit, pydicom's 16-bit: same picture, different scale.
    assert np.corrcoef(_voxels(loaded)[0].ravel(), expected.ravel())[0, 1] > 0.999


def test_rgb_dicom_becomes_luminance() -> None:
    path = pydicom_test_file("examples_rgb_color.dcm")
    loaded = load_image(path)
    assert loaded.was_rgb and loaded.image.GetSize() == (320, 240, 1)
    np.testing.assert_allclose(_voxels(loaded)[0], _luminance(pydicom.dcmread(path).pixel_array), atol=1e-3)


def test_multiframe_ybr_jpeg_frames_become_slices() -> None:
    path = pydicom_test_file("examples_ybr_color.dcm")
    loaded = load_image(path)
    assert loaded.image.GetSize() == (320, 240, 30)
    assert loaded.was_rgb and not loaded.was_2d and loaded.modality == "US"
    rgb = pydicom.dcmread(path).pixel_array  # pydicom converts YBR_FULL_422 to RGB
    np.testing.assert_allclose(_voxels(loaded), _luminance(rgb), atol=1e-3)


@pytest.mark.parametrize(("name", "modality", "was_rgb"), [("US1_UNCR.dcm", "US", True), ("RG1_UNCR.dcm", "XR", False)])
def test_pydicom_data_files_map_modality(name: str, modality: str, was_rgb: bool) -> None:
    loaded = load_image(pydicom_data_file(name))
    assert (loaded.modality, loaded.was_rgb, loaded.was_2d) == (modality, was_rgb, True)


def test_monochrome1_radiograph_is_inverted_so_bone_is_bright() -> None:
    path = pydicom_data_file("RG1_UNCR.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    loaded = _voxels(load_image(path))[0].astype(np.float64)
    assert np.corrcoef(loaded[::8, ::8].ravel(), raw[::8, ::8].ravel())[0, 1] < -0.999


def test_file_simpleitk_cannot_read_falls_back_to_pydicom() -> None:
    path = pydicom_test_file("rtdose_1frame.dcm")  # GDCM rejects this file's header
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))
    dataset = pydicom.dcmread(path)
    loaded = load_image(path)
    assert loaded.modality == "OT" and loaded.image.GetSize() == (10, 10, 1)
    np.testing.assert_allclose(loaded.image.GetSpacing()[:2], [float(v) for v in dataset.PixelSpacing])
    np.testing.assert_allclose(loaded.image.GetOrigin(), [float(v) for v in dataset.ImagePositionPatient])
    np.testing.assert_array_equal(_voxels(loaded)[0], dataset.pixel_array)


@pytest.mark.parametrize(
    ("getter", "name"),
    [
        (pydicom_test_file, "CT_small.dcm"),
        (pydicom_test_file, "examples_rgb_color.dcm"),
        (pydicom_test_file, "examples_ybr_color.dcm"),
        (pydicom_test_file, "examples_palette.dcm"),
        (pydicom_data_file, "RG1_UNCR.dcm"),
    ],
)
def test_pydicom_fallback_matches_simpleitk(monkeypatch: pytest.MonkeyPatch, getter, name: str) -> None:
    path = getter(name)
    expected = load_image(path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("ITK ERROR: GDCMImageIO: cannot decode")

    monkeypatch.setattr(sitk, "ReadImage", refuse)
    fallback = load_image(path)
    assert (fallback.modality, fallback.was_rgb, fallback.was_2d) == (expected.modality, expected.was_rgb, expected.was_2d)
    assert fallback.image.GetSize() == expected.image.GetSize()
    np.testing.assert_allclose(fallback.image.GetSpacing(), expected.image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(fallback.image.GetOrigin(), expected.image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(fallback.image.GetDirection(), expected.image.GetDirection(), atol=1e-6)
    # Palettes differ in bit depth (8 vs 16) and MONOCHROME1 inversion in offset; the picture is the same.
    correlation = np.corrcoef(_voxels(fallback)[:, ::4, ::4].ravel(), _voxels(expected)[:, ::4, ::4].ravel())[0, 1]
    assert correlation > 0.9999


def test_jpeg2000_loads_or_names_the_transfer_syntax() -> None:
    loaded = load_image(pydicom_test_file("JPEG2000.dcm"))
    assert loaded.image.GetSize() == (256, 1024, 1)
    with pytest.raises(TMCAError, match=r"JPEG 2000 Image Compression \(1\.2\.840\.10008\.1\.2\.4\.91\).*pylibjpeg-openjpeg"):
        load_image(pydicom_test_file("JPEG2000-embedded-sequence-delimiter.dcm"))  # broken codestream


def test_truncated_and_pixelless_dicom_are_user_errors() -> None:
    with pytest.raises(TMCAError, match="pixel data is damaged.*re-export"):
        load_image(pydicom_test_file("MR_truncated.dcm"))
    with pytest.raises(TMCAError, match="holds no image"):
        load_image(pydicom_test_file("rtplan.dcm"))


# ---------------------------------------------------------------------------------------------
# DICOM series folders


def _write_series(
    folder: Path, uid: str, volume: np.ndarray, origin: tuple[float, ...], description: str, stem: str, modality: str = "CT"
) -> None:
    """Write ``volume`` (z, y, x) as one single-slice DICOM file per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume.astype(np.int16))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin(origin)
    image.SetDirection(SERIES_DIRECTION)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(volume.shape[0]):
        plane = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        tags = {
            "0008|0060": modality,
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0013": str(index + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in SERIES_DIRECTION[0::3] + SERIES_DIRECTION[1::3]),
            "0018|0050": "2.5",
            "0008|0018": f"{uid}.{index + 1}",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{stem}{index:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture(scope="module")
def series_folder(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A folder with a 5-slice series at the top and a 3-slice series in a subfolder."""
    root = tmp_path_factory.mktemp("dicom")
    rng = np.random.default_rng(1)
    big = rng.integers(-1000, 1000, size=(5, 6, 7))
    small = rng.integers(0, 500, size=(3, 6, 7))
    _write_series(root, "1.2.826.0.1.3680043.2.1125.10", big, (10.0, -5.0, 40.0), "big series", "big")
    _write_series(root / "nested" / "deeper", "1.2.826.0.1.3680043.2.1125.20", small, (0.0, 0.0, 0.0), "small series", "small")
    return {"root": root, "big": big, "small": small}


def test_dicom_folder_picks_the_largest_series_with_geometry(series_folder: dict) -> None:
    loaded = load_image(series_folder["root"])
    _assert_float32_3d(loaded)
    assert loaded.series_uid == "1.2.826.0.1.3680043.2.1125.10" and loaded.modality == "CT"
    assert loaded.image.GetSize() == (7, 6, 5) and not loaded.was_2d
    np.testing.assert_allclose(loaded.image.GetSpacing(), (0.8, 0.9, 2.5), rtol=1e-5)
    np.testing.assert_allclose(loaded.image.GetOrigin(), (10.0, -5.0, 40.0), atol=1e-4)
    np.testing.assert_allclose(loaded.image.GetDirection(), SERIES_DIRECTION, atol=1e-5)
    np.testing.assert_array_equal(_voxels(loaded), series_folder["big"])


def test_series_uid_selects_a_series_in_a_subfolder(series_folder: dict) -> None:
    loaded = load_image(series_folder["root"], series_uid="1.2.826.0.1.3680043.2.1125.20")
    assert loaded.image.GetSize() == (7, 6, 3)
    np.testing.assert_array_equal(_voxels(loaded), series_folder["small"])


def test_unknown_series_uid_lists_the_available_series(series_folder: dict) -> None:
    with pytest.raises(TMCAError, match=r"series 9\.9 not found.*1125\.10 \(5 files\).*1125\.20 \(3 files\)"):
        load_image(series_folder["root"], series_uid="9.9")


def test_series_simpleitk_cannot_decode_is_stacked_by_pydicom(series_folder: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = load_image(series_folder["root"])

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("ITK ERROR: GDCMImageIO: cannot decode")

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", refuse)
    monkeypatch.setattr(sitk, "ReadImage", refuse)
    fallback = load_image(series_folder["root"])
    assert (fallback.series_uid, fallback.modality) == (expected.series_uid, "CT")
    assert fallback.image.GetSize() == expected.image.GetSize()
    np.testing.assert_allclose(fallback.image.GetSpacing(), expected.image.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(fallback.image.GetOrigin(), expected.image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(fallback.image.GetDirection(), expected.image.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(_voxels(fallback), _voxels(expected))


def test_list_dicom_series(series_folder: dict) -> None:
    assert list_dicom_series(series_folder["root"]) == [
        ("1.2.826.0.1.3680043.2.1125.10", 5, "big series"),
        ("1.2.826.0.1.3680043.2.1125.20", 3, "small series"),
    ]


def test_series_split_over_folders_is_sorted_by_position(tmp_path: Path) -> None:
    volume = np.random.default_rng(2).integers(0, 1000, size=(4, 5, 6))
    _write_series(tmp_path / "scan", "1.2.826.0.1.3680043.2.1125.30", volume, (0.0, 0.0, 0.0), "split", "s")
    files = sorted((tmp_path / "scan").iterdir())
    for index, file in enumerate(files):  # slices 0, 2 in folder b; 1, 3 in folder a
        target = tmp_path / "scan" / ("a" if index % 2 else "b")
        target.mkdir(exist_ok=True)
        file.rename(target / file.name)
    loaded = load_image(tmp_path / "scan")
    np.testing.assert_array_equal(_voxels(loaded), volume)


@pytest.mark.parametrize(
    ("code", "modality"),
    [("CR", "XR"), ("DX", "XR"), ("MG", "XR"), ("RG", "XR"), ("US", "US"), ("MR", "MR"), ("NM", "OT"), ("", "OT")],
)
def test_dicom_modality_codes_map_to_tmca_modalities(tmp_path: Path, code: str, modality: str) -> None:
    _write_series(tmp_path, "1.2.826.0.1.3680043.2.1125.40", np.arange(12).reshape(1, 3, 4), (0.0, 0.0, 0.0), "", "m", code)
    assert load_image(next(tmp_path.iterdir())).modality == modality


def test_folder_without_dicom_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(TMCAError, match="no DICOM series found"):
        load_image(tmp_path)


# ---------------------------------------------------------------------------------------------
# Validation


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(TMCAError, match="image not found: .*missing.nrrd; check the path"):
        load_image(tmp_path / "missing.nrrd")


@pytest.mark.parametrize("name", ["corrupt.nii.gz", "corrupt.nrrd", "corrupt.png", "corrupt.dcm", "corrupt.xyz"])
def test_corrupt_or_unknown_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(TMCAError, match="cannot (read|decode)") as error:
        load_image(path)
    assert "\n" not in str(error.value)


def _time_series(volumes: int) -> sitk.Image:
    """A 4D image of ``volumes`` 3D volumes of size (5, 4, 3)."""
    rng = np.random.default_rng(4)
    return sitk.JoinSeries([sitk.GetImageFromArray(rng.random((3, 4, 5)).astype(np.float32)) for _ in range(volumes)])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_4d_time_series_is_rejected(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"fmri{suffix}"
    sitk.WriteImage(_time_series(3), str(path))
    with pytest.raises(TMCAError, match="is a 4D image; 4D images are not supported; extract one 3D volume first"):
        load_image(path)


def test_4d_with_a_single_volume_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "one_volume.nrrd"
    sitk.WriteImage(_time_series(1), str(path))
    assert sitk.ReadImage(str(path)).GetDimension() == 4
    assert load_image(path).image.GetSize() == (5, 4, 3)


def test_vector_field_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "displacement.nrrd"
    field = np.random.default_rng(5).random((3, 4, 5, 3)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(field, isVector=True), str(path))
    with pytest.raises(TMCAError, match="not a colour image; 4D images are not supported"):
        load_image(path)


@pytest.mark.parametrize(("bad", "message"), [(np.nan, "contains NaN voxels"), (np.inf, "contains infinite voxels")])
def test_nan_and_inf_are_rejected(tmp_path: Path, bad: float, message: str) -> None:
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    volume[1, 1, 1] = bad
    path = tmp_path / "bad.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    with pytest.raises(TMCAError, match=message):
        load_image(path)


def test_constant_image_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 3, 4), 42, dtype=np.int16)), str(path))
    with pytest.raises(TMCAError, match=r"constant \(every voxel is 42\)"):
        load_image(path)


def test_series_uid_on_a_non_dicom_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "v.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(8, dtype=np.int16).reshape(2, 2, 2)), str(path))
    with pytest.raises(TMCAError, match="is not DICOM"):
        load_image(path, series_uid="1.2.3")
