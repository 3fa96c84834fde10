"""Segmentation (.seg.nrrd) and volume writing: geometry, layers, Slicer header, atomicity."""

from __future__ import annotations

import os
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

import tmca.segio
from datapaths import real_data_file
from tmca.errors import TMCAError
from tmca.imageio import load_image
from tmca.segio import SegmentSpec, read_segmentation, write_segmentation, write_volume

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 0.8, 0.2), (0.1, 0.2, 0.9)


def _reference(size: tuple[int, int, int] = (6, 5, 4)) -> sitk.Image:
    """An oblique, anisotropic grid with a non-zero origin."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing((0.5, 0.7, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(sitk.VersorTransform((0.2, 0.5, 0.3), 0.7).GetMatrix())
    return image


def _boxes(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks a and b overlap; c touches neither."""
    a, b, c = (np.zeros(shape, dtype=bool) for _ in range(3))
    a[1:3, 1:4, 2:5] = True
    b[2:4, 2:5, 1:3] = True
    c[0, 0, 0] = True
    return a, b, c


def _slicer_ijk_to_lps(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def _assert_same_geometry(actual: sitk.Image, expected: sitk.Image, exact: bool = True) -> None:
    assert actual.GetSize() == expected.GetSize()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        if exact:
            assert getattr(actual, getter)() == getattr(expected, getter)(), getter
        else:
            np.testing.assert_allclose(getattr(actual, getter)(), getattr(expected, getter)(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["brain1", "breast1"])
def test_real_mri_label_round_trip_through_slicerio_and_simpleitk(tmp_path: Path, case: str) -> None:
    image = load_image(real_data_file(f"{case}_image.nrrd")).image
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data_file(f"{case}_label.nrrd")))) > 0
    assert label.any()
    path = tmp_path / f"{case}.seg.nrrd"
    write_segmentation(path, [label], image, [SegmentSpec("lesion", RED)])

    segmentation = slicerio.read_segmentation(str(path))
    np.testing.assert_array_equal(segmentation["ijkToLPS"], _slicer_ijk_to_lps(image))
    assert segmentation["voxels"].shape == image.GetSize()
    np.testing.assert_array_equal(slicerio.segment_mask(segmentation, "lesion"), label.transpose(2, 1, 0))

    written = sitk.ReadImage(str(path))
    _assert_same_geometry(written, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written) > 0, label)

    masks, specs, reference = read_segmentation(path)
    _assert_same_geometry(reference, image)
    assert reference.GetPixelID() == sitk.sitkUInt8
    assert specs == [SegmentSpec("lesion", RED, "Segment_1")]
    np.testing.assert_array_equal(masks[0], label)


def test_overlapping_segments_go_to_layers_and_survive(tmp_path: Path) -> None:
    reference = _reference()
    a, b, c = _boxes((4, 5, 6))
    specs = [SegmentSpec("liver lesion", RED), SegmentSpec("nodule | left", GREEN), SegmentSpec("cyst", BLUE)]
    path = tmp_path / "overlap.seg.nrrd"
    write_segmentation(path, [a, b, c], reference, specs)

    header = nrrd.read_header(str(path))
    assert header["dimension"] == 4 and header["kinds"] == ["list", "domain", "domain", "domain"]
    assert list(header["sizes"]) == [2, 6, 5, 4]
    layers = [(header[f"Segment{i}_Layer"], header[f"Segment{i}_LabelValue"]) for i in range(3)]
    assert layers == [("0", "1"), ("1", "1"), ("0", "2")]

    segmentation = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in segmentation["segments"]] == [s.name for s in specs]
    assert [tuple(s["color"]) for s in segmentation["segments"]] == [s.color for s in specs]
    for mask, spec in zip((a, b, c), specs):
        np.testing.assert_array_equal(slicerio.segment_mask(segmentation, spec.name), mask.transpose(2, 1, 0))

    masks, read_specs, geometry = read_segmentation(path)
    assert [(s.name, s.color) for s in read_specs] == [(s.name, s.color) for s in specs]
    assert [s.segment_id for s in read_specs] == ["Segment_1", "Segment_2", "Segment_3"]
    for mask, expected in zip(masks, (a, b, c)):
        np.testing.assert_array_equal(mask, expected)
    _assert_same_geometry(geometry, reference, exact=False)
    written = sitk.ReadImage(str(path))
    assert written.GetNumberOfComponentsPerPixel() == 2
    _assert_same_geometry(written, reference, exact=False)


def test_slicer_header_fields(tmp_path: Path) -> None:
    reference = _reference()
    a, _, c = _boxes((4, 5, 6))
    path = tmp_path / "header.seg.nrrd"
    write_segmentation(path, [a, c], reference, [SegmentSpec("a", RED), SegmentSpec("c", BLUE)])
    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior" and header["encoding"] == "gzip"
    np.testing.assert_allclose(header["space origin"], reference.GetOrigin())
    np.testing.assert_allclose(header["space directions"], _slicer_ijk_to_lps(reference)[:3, :3].T)
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    assert header["Segmentation_ConversionParameters"].startswith("Reference image geometry|")
    for index, (name, color) in enumerate([("a", RED), ("c", BLUE)]):
        assert header[f"Segment{index}_ID"] == f"Segment_{index + 1}"
        assert header[f"Segment{index}_Name"] == name
        assert [float(v) for v in header[f"Segment{index}_Color"].split()] == list(color)
        assert header[f"Segment{index}_LabelValue"] == str(index + 1)
        assert header[f"Segment{index}_Layer"] == "0"
        # Slicer crops a whole layer to its first segment's extent, so every extent is the full grid.
        assert header[f"Segment{index}_Extent"] == "0 5 0 4 0 3"
        assert header[f"Segment{index}_NameAutoGenerated"] == "0"
        assert header[f"Segment{index}_ColorAutoGenerated"] == "0"
        assert f"Segment{index}_Tags" in header


def test_empty_mask_is_still_a_segment(tmp_path: Path) -> None:
    reference = _reference()
    a, _, _ = _boxes((4, 5, 6))
    empty = np.zeros_like(a)
    path = tmp_path / "empty.seg.nrrd"
    write_segmentation(path, [empty, a], reference, [SegmentSpec("nothing found", GREEN), SegmentSpec("a", RED)])
    segmentation = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in segmentation["segments"]] == ["nothing found", "a"]
    assert not slicerio.segment_mask(segmentation, "nothing found").any()
    masks, _, _ = read_segmentation(path)
    assert not masks[0].any()
    np.testing.assert_array_equal(masks[1], a)


def test_no_segments_writes_an_empty_segmentation(tmp_path: Path) -> None:
    path = tmp_path / "none.seg.nrrd"
    write_segmentation(path, [], _reference(), [])
    masks, specs, geometry = read_segmentation(path)
    assert masks == [] and specs == [] and geometry.GetSize() == (6, 5, 4)


def test_plain_label_map_reads_one_segment_per_label(tmp_path: Path) -> None:
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[0, 0, :2] = 3
    labels[3, 4, 5] = 7
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(_reference())
    sitk.WriteImage(image, str(tmp_path / "labels.nrrd"))
    masks, specs, geometry = read_segmentation(tmp_path / "labels.nrrd")
    assert [s.name for s in specs] == ["Label 3", "Label 7"]
    np.testing.assert_array_equal(masks[0], labels == 3)
    np.testing.assert_array_equal(masks[1], labels == 7)
    _assert_same_geometry(geometry, image, exact=False)


@pytest.mark.parametrize(
    ("masks", "segments", "message"),
    [
        (
            [np.zeros((4, 5, 7), bool)],
            [SegmentSpec("a", RED)],
            r"mask 0 \('a'\) has shape \(4, 5, 7\) but the reference image is \(z, y, x\) = \(4, 5, 6\)",
        ),
        ([np.zeros((6, 5, 4), bool)], [SegmentSpec("a", RED)], "resample the mask onto the reference grid"),
        ([np.zeros((4, 5, 6), bool)] * 2, [SegmentSpec("a", RED)], "got 2 masks for 1 segments"),
        ([np.zeros((4, 5, 6), bool)], [SegmentSpec("a", (255, 0, 0))], "three values between 0 and 1"),
    ],
)
def test_bad_masks_are_library_errors_and_write_nothing(tmp_path: Path, masks: list, segments: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_segmentation(tmp_path / "bad.seg.nrrd", masks, _reference(), segments)
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_and_wrong_extension_are_user_errors(tmp_path: Path) -> None:
    a, _, _ = _boxes((4, 5, 6))
    with pytest.raises(TMCAError, match="does not exist"):
        write_segmentation(tmp_path / "nowhere" / "x.seg.nrrd", [a], _reference(), [SegmentSpec("a", RED)])
    with pytest.raises(TMCAError, match="must end in .seg.nrrd"):
        write_segmentation(tmp_path / "x.nii.gz", [a], _reference(), [SegmentSpec("a", RED)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(TMCAError, match="not writable"):
            write_volume(folder / "v.nrrd", np.zeros((2, 2, 2), np.uint8))
    finally:
        folder.chmod(0o700)


def test_failing_segmentation_write_leaves_no_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _, _ = _boxes((4, 5, 6))
    path = tmp_path / "result.seg.nrrd"
    write_segmentation(path, [a], _reference(), [SegmentSpec("old", RED)])
    before = path.read_bytes()

    def half_write(filename: str, *args: object, **kwargs: object) -> None:
        Path(filename).write_bytes(b"NRRD0005\npartial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tmca.segio.slicerio, "write_segmentation", half_write)
    with pytest.raises(TMCAError, match="cannot write segmentation .*No space left on device"):
        write_segmentation(path, [a], _reference(), [SegmentSpec("new", GREEN)])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.seg.nrrd"]

    with pytest.raises(TMCAError):
        write_segmentation(tmp_path / "fresh.seg.nrrd", [a], _reference(), [SegmentSpec("new", GREEN)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.seg.nrrd"]


def test_non_ascii_segment_names_are_written_in_utf8_as_itk_reads_them(tmp_path: Path) -> None:
    a, b, _ = _boxes((4, 5, 6))
    path = tmp_path / "names.seg.nrrd"
    write_segmentation(path, [a, b], _reference(), [SegmentSpec("lésion hypoéchogène", RED), SegmentSpec("肿块 mass", GREEN)])
    written = sitk.ReadImage(str(path))
    assert [written.GetMetaData(f"Segment{i}_Name") for i in (0, 1)] == ["lésion hypoéchogène", "肿块 mass"]
    np.testing.assert_array_equal(slicerio.segment_mask(slicerio.read_segmentation(str(path)), "Segment_1").transpose(2, 1, 0), a)


def test_failing_volume_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(image: sitk.Image, filename: str, *args: object, **kwargs: object) -> None:
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute:\nITK ERROR: disk full")

    monkeypatch.setattr(tmca.segio.sitk, "WriteImage", half_write)
    with pytest.raises(TMCAError, match="cannot write .*ITK ERROR: disk full"):
        write_volume(tmp_path / "v.nii.gz", np.zeros((2, 3, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix, data_file", [(".nhdr", "probability.raw.gz"), (".mhd", "probability.zraw")])
def test_write_volume_detached_header_gets_its_data_file_beside_it(tmp_path: Path, suffix: str, data_file: str) -> None:
    values = np.random.default_rng(2).random((4, 5, 6)).astype(np.float32)
    write_volume(tmp_path / f"probability{suffix}", values, _reference())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"probability{suffix}", data_file])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"probability{suffix}"))), values)


def test_failing_detached_volume_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(image: sitk.Image, filename: str, *args: object, **kwargs: object) -> None:
        Path(filename).with_suffix(".raw.gz").write_bytes(b"partial")
        raise RuntimeError("ITK ERROR: disk full")

    monkeypatch.setattr(tmca.segio.sitk, "WriteImage", half_write)
    with pytest.raises(TMCAError, match="disk full"):
        write_volume(tmp_path / "v.nhdr", np.zeros((2, 3, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_write_volume_scalar_array_on_reference_grid(tmp_path: Path, suffix: str) -> None:
    reference = _reference()
    values = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    path = tmp_path / f"probability{suffix}"
    write_volume(path, values, reference)
    written = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), values)
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_write_volume_vector_and_bool_arrays_compressed(tmp_path: Path) -> None:
    vectors = np.random.default_rng(1).random((4, 5, 6, 3)).astype(np.float32)
    write_volume(tmp_path / "vectors.nrrd", vectors, _reference())
    written = sitk.ReadImage(str(tmp_path / "vectors.nrrd"))
    assert written.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), vectors)
    assert nrrd.read_header(str(tmp_path / "vectors.nrrd"))["encoding"] == "gzip"

    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1, 2, 3] = True
    write_volume(tmp_path / "mask.nrrd", mask)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nrrd"))), mask.astype(np.uint8))


def test_write_volume_copies_reference_geometry_without_touching_the_input(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    write_volume(tmp_path / "v.mha", image, _reference())
    assert image.GetOrigin() == (0.0, 0.0, 0.0)
    assert sitk.ReadImage(str(tmp_path / "v.mha")).GetOrigin() == pytest.approx(_reference().GetOrigin())


@pytest.mark.parametrize(
    ("name", "image", "error", "message"),
    [
        ("v.png", np.zeros((2, 2, 2)), TMCAError, "unsupported extension; use one of .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd"),
        ("v.nrrd", np.zeros((2, 2)), ValueError, r"array of shape \(2, 2\)"),
        ("v.nrrd", np.zeros((3, 5, 6)), ValueError, r"image size \(6, 5, 3\) differs from the reference \(6, 5, 4\)"),
    ],
)
def test_write_volume_errors(tmp_path: Path, name: str, image: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        write_volume(tmp_path / name, image, _reference())
    assert list(tmp_path.iterdir()) == []


def test_read_segmentation_errors(tmp_path: Path) -> None:
    with pytest.raises(TMCAError, match="segmentation not found"):
        read_segmentation(tmp_path / "missing.seg.nrrd")
    (tmp_path / "broken.seg.nrrd").write_bytes(b"this is not nrrd")
    with pytest.raises(TMCAError, match="cannot read segmentation"):
        read_segmentation(tmp_path / "broken.seg.nrrd")
