"""DICOM SEG output: frames on the right source slices, masks equal to the .seg.nrrd's, codes and refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_series import SLICE_SPACING, SLICES, write_series
from tmca.dicomseg import Algorithm, dicom_source_files, write_dicom_seg
from tmca.errors import TMCAError
from tmca.imageio import load_image
from tmca.protocol import FindingRecord
from tmca.segio import read_segmentation
from tmca.terminology import code_finding

def _record(name: str, text: str, index: int) -> FindingRecord:
    return FindingRecord(name, text, f"Segment_{index + 1}", terminology=code_finding(text).as_dict())


def test_frames_reference_the_source_slice_they_lie_on(tmp_path):
    files = write_series(tmp_path / "series")
    loaded = load_image(tmp_path / "series")
    shape = tuple(reversed(loaded.image.GetSize()))
    assert shape == (SLICES, 128, 128)
    first, second = np.zeros(shape, bool), np.zeros(shape, bool)
    first[1, 10:20, 30:50] = True  # one slice
    second[3:5, 60:70, 60:64] = True  # two slices
    records = [_record("nodule, left upper lobe", "A 12 mm nodule in the left upper lobe.", 0), _record("mass", "Mass in the liver.", 1)]
    output = tmp_path / "seg.dcm"
    write_dicom_seg(output, [first, second], records, loaded.image, dicom_source_files(tmp_path / "series", None), Algorithm("9.9", "ab" * 32))

    seg = hd.seg.segread(output)
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    by_uid = {pydicom.dcmread(path).SOPInstanceUID: pydicom.dcmread(path) for path in files}
    slice_of = {uid: int(round((float(ds.ImagePositionPatient[2]) - float(loaded.image.GetOrigin()[2])) / SLICE_SPACING)) for uid, ds in by_uid.items()}
    for number, mask in ((1, first), (2, second)):
        uids = seg.get_source_image_uids()
        assert len(uids) == SLICES
        for _, _, sop_uid in uids:
            array = seg.get_pixels_by_source_instance(
                [sop_uid], segment_numbers=[number], assert_missing_frames_are_empty=True
            )[0, :, :, 0]
            np.testing.assert_array_equal(array.astype(bool), mask[slice_of[sop_uid]])
    frame_uids = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for f in seg.PerFrameFunctionalGroupsSequence}
    assert {slice_of[uid] for uid in frame_uids} == {1, 3, 4}  # empty slices carry no frame

    description = seg.SegmentSequence[0]
    assert description.SegmentLabel == "nodule, left upper lobe"
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    assert description.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    region = description.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.AnatomicRegionModifierSequence[0].CodeValue) == ("45653009", "7771000")
    algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "TMCASegmenter" and algorithm.AlgorithmVersion == "9.9"
    assert "ab" * 32 in algorithm.AlgorithmParameters
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    any_source = next(iter(by_uid.values()))
    assert seg.StudyInstanceUID == any_source.StudyInstanceUID and seg.SeriesInstanceUID != any_source.SeriesInstanceUID
    assert all(name in any_source for name in ("InstitutionName", "StationName", "KVP", "ContrastBolusAgent"))
    assert not any(name in seg for name in ("InstitutionName", "StationName", "KVP", "ContrastBolusAgent"))  # not copied
    assert seg.PatientName == any_source.PatientName and seg.AccessionNumber == any_source.AccessionNumber  # required study/patient
    assert not list(tmp_path.glob(".seg.dcm.*"))  # written atomically


def test_refuses_non_dicom_input_and_reports_without_positive_findings(tmp_path):
    nifti = tmp_path / "image.nii.gz"
    nifti.write_bytes(b"\0" * 400)
    with pytest.raises(TMCAError, match="--dicom-seg needs DICOM input"):
        dicom_source_files(nifti, None)
    write_series(tmp_path / "series", shuffle=False)
    loaded = load_image(tmp_path / "series")
    with pytest.raises(TMCAError, match="no positive finding"):
        write_dicom_seg(tmp_path / "x.dcm", [], [], loaded.image, dicom_source_files(tmp_path / "series", None), Algorithm("1", "0"))
    assert not (tmp_path / "x.dcm").exists()


def test_mask_grid_must_lie_on_the_series(tmp_path):
    write_series(tmp_path / "series", shuffle=False)
    loaded = load_image(tmp_path / "series")
    shifted = loaded.image
    shifted.SetOrigin([shifted.GetOrigin()[0], shifted.GetOrigin()[1], shifted.GetOrigin()[2] + 2.5])
    mask = np.zeros(tuple(reversed(shifted.GetSize())), bool)
    mask[2, 5:9, 5:9] = True
    with pytest.raises(TMCAError, match="lies on no image"):
        write_dicom_seg(tmp_path / "x.dcm", [mask], [_record("a", "Nodule.", 0)], shifted,
                        dicom_source_files(tmp_path / "series", None), Algorithm("1", "0"))  # fmt: skip


def _tmca(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tmca.cli", *args], capture_output=True, text=True)


def test_cli_writes_a_dicom_seg_equal_to_the_seg_nrrd(tmp_path, tiny_model_dir):
    write_series(tmp_path / "series")
    out = tmp_path / "out.seg.nrrd"
    # a random-weight model marks voxels on any scan at a low threshold: the comparison then has content
    done = _tmca("segment", str(tmp_path / "series"), "--report", "Small nodule in the upper left lung; no effusion.",
                 "--output", str(out), "--dicom-seg", str(tmp_path / "out.dcm"), "--threshold", "0.05", "--progress", "json",
                 "--model", str(tiny_model_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dicom_seg"] == str(tmp_path / "out.dcm")
    assert [f["name"] for f in result["negative_findings"]] == ["no effusion"]
    masks, specs, _ = read_segmentation(out)
    seg = hd.seg.segread(tmp_path / "out.dcm")
    assert len(seg.SegmentSequence) == len(masks) == 1
    loaded = load_image(tmp_path / "series")
    origin_z = loaded.image.GetOrigin()[2]
    for _, _, sop_uid in seg.get_source_image_uids():
        ds = next(pydicom.dcmread(p) for p in (tmp_path / "series").iterdir() if pydicom.dcmread(p).SOPInstanceUID == sop_uid)
        k = int(round((float(ds.ImagePositionPatient[2]) - origin_z) / SLICE_SPACING))
        array = seg.get_pixels_by_source_instance([sop_uid], segment_numbers=[1], assert_missing_frames_are_empty=True)[0, :, :, 0]
        np.testing.assert_array_equal(array.astype(bool), masks[0][k])
    assert masks[0].any()
    assert specs[0].terminology.split("~")[2] == "SCT^27925004^Nodule"


def test_cli_refuses_dicom_seg_for_non_dicom_input_before_running_the_model(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8))
    sitk.WriteImage(image, str(tmp_path / "x.nii.gz"))
    done = _tmca("segment", str(tmp_path / "x.nii.gz"), "--report", "Nodule.", "--output", str(tmp_path / "x.seg.nrrd"),
                 "--dicom-seg", str(tmp_path / "x.dcm"), "--model", str(tmp_path / "no-such-model"))  # fmt: skip
    assert done.returncode == 2
    assert "--dicom-seg needs DICOM input" in done.stderr  # checked before the (missing) model is loaded
    assert not (tmp_path / "x.seg.nrrd").exists() and not (tmp_path / "x.dcm").exists()


def test_labelmap_seg_holds_segment_numbers_and_refuses_overlapping_findings(tmp_path):
    write_series(tmp_path / "series")
    loaded = load_image(tmp_path / "series")
    shape = tuple(reversed(loaded.image.GetSize()))
    first, second = np.zeros(shape, bool), np.zeros(shape, bool)
    first[1, 10:20, 30:50] = True
    second[1:3, 60:70, 60:64] = True  # shares slice 1 with the first, not its voxels
    records = [_record("nodule", "Nodule in the left upper lobe.", 0), _record("mass", "Mass in the liver.", 1)]
    sources = dicom_source_files(tmp_path / "series", None)
    output = tmp_path / "labelmap.dcm"
    write_dicom_seg(output, [first, second], records, loaded.image, sources, Algorithm("9.9", "ab" * 32), seg_type="labelmap")
    seg = hd.seg.segread(output)
    assert seg.SegmentationType == "LABELMAP"
    labels = {int(item.SegmentNumber): item.SegmentLabel for item in seg.SegmentSequence}
    assert labels[1] == "nodule" and labels[2] == "mass"  # (a LABELMAP SEG may also describe background as 0)
    assert seg.NumberOfFrames < 2 * SLICES  # one frame per slice, not one per segment and slice
    volume = seg.get_volume(combine_segments=True)
    assert set(np.unique(volume.array).tolist()) == {0, 1, 2}
    assert int((volume.array == 1).sum()) == int(first.sum()) and int((volume.array == 2).sum()) == int(second.sum())

    overlapping = second.copy()
    overlapping[1, 15, 35] = True
    with pytest.raises(TMCAError, match="overlap"):
        write_dicom_seg(tmp_path / "x.dcm", [first, overlapping], records, loaded.image, sources, Algorithm("9.9", "ab"), seg_type="labelmap")
    assert not (tmp_path / "x.dcm").exists()
