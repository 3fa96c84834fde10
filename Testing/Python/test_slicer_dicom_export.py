"""Export DICOM SEG (issue #15, panel part): the choice of export way, and the engine's way for real."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from TMCASegmenterLib import dicom_export, geometry
from tmca.errors import TMCAError
from tmca.models import resolve_model
from tmca.protocol import FindingRecord

UIDS = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
FILES = ["/db/dicom/a", "/db/dicom/b", "/db/dicom/c"]


@pytest.mark.parametrize("has_result, uids, plugin, files, way, reason", [
    (False, UIDS, True, FILES, "", "Segment a report first"),
    (True, [], True, None, "", "not loaded from DICOM"),
    (True, [], False, [], "", "Save the segmentation as .seg.nrrd instead"),
    (True, UIDS, True, ["/db/a", "", "/db/c"], "", "1 of the input series' 3 images are not in Slicer's DICOM database"),
    (True, UIDS, False, [], "", "3 of the input series' 3 images"),
    (True, UIDS, True, FILES, dicom_export.SLICER, "QuantitativeReporting"),
    (True, UIDS, True, None, dicom_export.SLICER, "Slicer's DICOM export"),
    (True, UIDS, False, FILES, dicom_export.ENGINE, "with the TMCA engine"),
    (True, UIDS, False, None, dicom_export.ENGINE, "install QuantitativeReporting"),
])
def test_export_route(has_result, uids, plugin, files, way, reason):
    route = dicom_export.export_route(has_result, uids, plugin, files)
    assert route.way == way and route.possible == bool(way)
    assert reason in route.reason


def test_instance_uids_come_from_the_space_separated_attribute():
    assert dicom_export.instance_uids("1.2.3.1 1.2.3.2  1.2.3.3") == UIDS
    assert dicom_export.instance_uids(None) == [] and dicom_export.instance_uids("") == []


def test_seg_file_name_is_safe_on_every_file_system():
    assert dicom_export.seg_file_name("3: CT chest") == "3_ CT chest TMCA SEG.dcm"
    assert dicom_export.seg_file_name('a/b\\c?"d') == "a_b_c_d TMCA SEG.dcm"
    assert dicom_export.seg_file_name("...") == "scan TMCA SEG.dcm"


def test_the_model_identity_is_its_manifests_sha256_without_torch(tmp_path):
    bundled = resolve_model(None)
    expected = hashlib.sha256((bundled / "manifest.json").read_bytes()).hexdigest()
    assert dicom_export.model_manifest_sha256(bundled) == expected
    with pytest.raises(TMCAError, match="no readable manifest.json"):
        dicom_export.model_manifest_sha256(tmp_path)


def test_reference_image_has_the_scans_grid():
    matrix = geometry.ijk_to_ras_from_geometry((-12.0, 30.0, 5.0), (0.7, 0.7, 3.0),
                                               sitk.VersorTransform((0.0, 0.2, 1.0), 0.3).GetMatrix())
    image = dicom_export.reference_image((6, 20, 30), matrix)
    assert image.GetSize() == (30, 20, 6)
    assert geometry.same_geometry(geometry.ijk_to_ras_matrix(image), matrix, tolerance=1e-6)


def test_the_engine_way_refuses_a_result_without_segments(tmp_path):
    with pytest.raises(TMCAError, match="only findings of absence"):
        dicom_export.write_with_engine(tmp_path / "x.dcm", [], [], np.eye(4), [], None)
    assert not (tmp_path / "x.dcm").exists()


def test_the_engine_way_says_when_highdicom_is_missing(tmp_path, monkeypatch):
    real = dicom_export.importlib.util.find_spec
    monkeypatch.setattr(dicom_export.importlib.util, "find_spec", lambda name: None if name == "highdicom" else real(name))
    with pytest.raises(TMCAError, match="needs the highdicom package"):
        dicom_export.write_with_engine(tmp_path / "x.dcm", [np.zeros((2, 3, 4))], [FindingRecord("nodule")],
                                       np.eye(4), ["a.dcm", "b.dcm"], None)


def test_the_engine_way_writes_the_current_masks_on_their_source_slices(tmp_path):
    """The engine's writer fed as the module feeds it: masks on the scan's grid, its IJK-to-RAS, the database's files."""
    import highdicom as hd
    import pydicom

    from dicom_series import SLICE_SPACING, SLICES, write_series
    from tmca.imageio import load_image
    from tmca.protocol import FindingRecord
    from tmca.terminology import code_finding

    files = write_series(tmp_path / "series")
    scan = load_image(tmp_path / "series").image  # the grid Slicer's DICOM loader gives this series
    shape = tuple(reversed(scan.GetSize()))
    nodule, effusion = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    nodule[2, 10:20, 30:50] = 1  # as corrected by the user
    effusion[4:6, 60:70, 60:64] = 1
    texts = ["A 12 mm nodule in the left upper lobe.", "Small right pleural effusion."]
    records = [FindingRecord(name, text, f"Segment_{i + 1}", terminology=code_finding(text).as_dict())
               for i, (name, text) in enumerate(zip(["nodule", "effusion"], texts))]

    written = dicom_export.write_with_engine(tmp_path / dicom_export.seg_file_name("3: CT"), [nodule, effusion], records,
                                             geometry.ijk_to_ras_matrix(scan), [str(f) for f in files], None)

    seg = hd.seg.segread(written)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["nodule", "effusion"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == records[0].terminology["type"]["meaning"]
    parameters = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert dicom_export.model_manifest_sha256(resolve_model(None)) in parameters.AlgorithmParameters
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    origin_z = float(scan.GetOrigin()[2])
    for number, mask in ((1, nodule), (2, effusion)):
        for _, _, uid in seg.get_source_image_uids():
            k = int(round((float(sources[uid].ImagePositionPatient[2]) - origin_z) / SLICE_SPACING))
            frame = seg.get_pixels_by_source_instance([uid], segment_numbers=[number],
                                                      assert_missing_frames_are_empty=True)[0, :, :, 0]
            np.testing.assert_array_equal(frame.astype(bool), mask[k].astype(bool))
    assert len(seg.get_source_image_uids()) == SLICES
