"""Report-to-mask reconciliation: the report grammar, the measurements in the patient frame, the checks."""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from tmca.findings import split_findings
from tmca.reconcile import check_finding, checks_text, disagreements, measure_mask, parse_statement


@pytest.mark.parametrize(
    "text, count, at_least",
    [
        ("Two nodules in the right lower lobe, the larger 14 mm.", 2, False),
        ("A nodule in the left upper lobe.", 1, False),
        ("An irregular mass.", 1, False),
        ("Small nodule in the upper left lung.", 1, False),
        ("Solitary pulmonary nodule.", 1, False),
        ("Three small well-defined nodules.", 3, False),
        ("3 nodules in the right lung.", 3, False),
        ("A 12 mm nodule.", 1, False),
        ("12 mm nodule.", 1, False),
        ("Several nodules in both lungs.", 2, True),
        ("Multiple metastases in the liver.", 2, True),
        ("Nodules in the left lung.", 2, True),
        ("Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.", 2, False),
        ("Unilateral pulmonary infection, one infected area, lower left lung.", 1, False),
        ("Four cysts in the right kidney.", 4, False),
        ("Ten foci of haemorrhage.", 10, False),
        ("Left pleural effusion.", None, False),
        ("Consolidation in the right lower lobe.", None, False),
    ],
)
def test_stated_count(text, count, at_least):
    statement = parse_statement(text)
    assert (statement.count, statement.at_least) == (count, at_least)


@pytest.mark.parametrize(
    "text, side",
    [
        ("Nodule in the left upper lobe.", "left"),
        ("Right lower lobe consolidation.", "right"),
        ("Bilateral pulmonary infection, two infected areas.", "bilateral"),
        ("Opacities in both lungs.", "bilateral"),
        ("Infected areas in the upper left and lower right lung.", "bilateral"),
        ("Nodule in the LUL.", "left"),
        ("RLL mass.", "right"),
        ("Unilateral pulmonary infection.", None),
        ("Mass in segment IV of the liver.", None),
    ],
)
def test_stated_side(text, side):
    assert parse_statement(text).side == side


@pytest.mark.parametrize(
    "text, zones, region",
    [
        ("Small nodule in the upper left lung.", ("upper",), "upper"),
        ("One infected area, middle lower left lung.", ("lower", "middle"), "middle lower"),
        ("Infected area, all right lung.", ("lower", "middle", "upper"), "all"),
        ("Nodule in the left upper lobe.", ("middle", "upper"), "upper lobe"),
        ("Upper lobe of the right lung.", ("middle", "upper"), "upper lobe"),
        ("RML nodule.", ("middle",), "middle lobe"),
        ("Consolidation of the right lower lobe.", ("lower", "middle"), "lower lobe"),
        ("Opacity in the lower zone.", ("lower",), "lower"),
        ("Apical scarring.", ("upper",), "apical"),
        ("Effusion at the left base.", ("lower",), "base"),
        ("Mass in the left kidney.", (), None),
    ],
)
def test_stated_region(text, zones, region):
    statement = parse_statement(text)
    assert (statement.zones, statement.region) == (zones, region)


@pytest.mark.parametrize(
    "text, size_mm",
    [
        ("A 12 mm nodule.", 12.0),
        ("12mm nodule.", 12.0),
        ("Mass of 3 cm.", 30.0),
        ("Mass measuring 1.5 x 2 cm.", 20.0),
        ("Lesion of 15 x 12 x 10 mm.", 15.0),
        ("Nodule of 0,8 cm.", 8.0),
        ("Two nodules, the larger 14 mm.", 14.0),
        ("Nodules of 8 mm and 14 mm.", 14.0),
        ("Cyst, 2.5 centimetres.", 25.0),
        ("Large nodule in the upper left lung.", None),
    ],
)
def test_stated_size(text, size_mm):
    assert parse_statement(text).size_mm == size_mm


def _image(shape=(40, 60, 60), spacing=(1.0, 1.0, 1.0), direction=None, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.Image([shape[2], shape[1], shape[0]], sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _ball(shape, centre_zyx, radius_voxels) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius_voxels**2


def test_issue_example_count_and_side_disagree_size_agrees():
    image = _image()  # identity direction: +x (column index) is the patient's left
    mask = _ball((40, 60, 60), (8, 30, 45), 6.2)  # one ball on the left, low in the scan, about 13 mm across
    checks = {c.name: c for c in check_finding("Two nodules in the right lower lobe, the larger 14 mm.", mask, image)}
    assert (checks["count"].status, checks["count"].stated, checks["count"].measured) == ("disagree", "2", "1")
    assert (checks["side"].status, checks["side"].stated, checks["side"].measured) == ("disagree", "right", "left")
    assert checks["region"].status == "agree"
    assert checks["size"].status == "agree" and checks["size"].stated == "14 mm"
    assert 12.0 <= float(checks["size"].measured.split()[0]) <= 14.0
    assert disagreements(list(checks.values())) == 2


def test_side_follows_the_patient_frame_not_the_array():
    flipped = _image(direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), origin=(59.0, 0.0, 0.0))
    mask = _ball((40, 60, 60), (20, 30, 45), 4)  # high column index, but the x axis runs towards the patient's right
    assert [c.side for c in measure_mask(mask, flipped)] == ["right"]
    assert [c.side for c in measure_mask(mask, _image())] == ["left"]
    centred = _ball((40, 60, 60), (20, 30, 30), 3)
    assert [c.side for c in measure_mask(centred, _image())] == ["midline"]


def test_region_follows_the_superior_axis():
    upside_down = _image(direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0), origin=(0.0, 0.0, 39.0))
    mask = _ball((40, 60, 60), (5, 30, 20), 3)  # slice 5: low in the array, high in the patient
    assert measure_mask(mask, upside_down)[0].zone == ("upper",)
    assert measure_mask(mask, _image())[0].zone == ("lower",)
    boundary = _ball((40, 60, 60), (14, 30, 20), 2)  # about 1/3 up: agrees with the lower and the middle third
    assert measure_mask(boundary, _image())[0].zone == ("lower", "middle")


def test_single_slice_images_use_rows_for_the_region_and_columns_for_the_side():
    radiograph = _image(shape=(1, 90, 60), spacing=(0.2, 0.2, 1.0))
    mask = np.zeros((1, 90, 60), bool)
    mask[0, 5:15, 40:50] = True  # top rows, image right: upper, patient left
    (component,) = measure_mask(mask, radiograph)
    assert (component.zone, component.side) == (("upper",), "left")
    checks = check_finding("Opacity in the lower right lung zone.", mask, radiograph)
    assert [(c.name, c.status) for c in checks[1:3]] == [("side", "disagree"), ("region", "disagree")]


def test_diameter_in_millimetres_on_anisotropic_voxels():
    image = _image(shape=(10, 40, 40), spacing=(0.5, 0.5, 4.0))
    mask = np.zeros((10, 40, 40), bool)
    mask[5, 10, 5:25] = True  # 20 voxels of 0.5 mm along x: 10 mm
    (component,) = measure_mask(mask, image)
    assert component.diameter_mm == pytest.approx(np.sqrt(10.0**2 + 0.5**2 + 4.0**2), abs=1e-6)  # corner to corner


def test_specks_are_not_counted_and_bilateral_needs_both_sides():
    image = _image()
    mask = _ball((40, 60, 60), (30, 30, 15), 5) | _ball((40, 60, 60), (30, 30, 45), 5)
    mask[2, 2, 2] = True  # a speck
    checks = {c.name: c for c in check_finding("Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.", mask, image)}
    assert [checks[n].status for n in ("count", "side", "region", "size")] == ["agree", "agree", "agree", "not stated"]
    left_only = _ball((40, 60, 60), (30, 30, 45), 5)
    assert {c.name: c.status for c in check_finding("Infection in both lungs.", left_only, image)}["side"] == "disagree"


def test_empty_mask_disagrees_with_what_is_stated():
    checks = check_finding("A 12 mm nodule in the left upper lobe.", np.zeros((40, 60, 60), bool), _image())
    assert [(c.name, c.status, c.measured) for c in checks] == [
        ("count", "disagree", "0"), ("side", "disagree", "nothing segmented"),
        ("region", "disagree", "nothing segmented"), ("size", "disagree", "nothing segmented"),
    ]  # fmt: skip
    assert "side disagree (stated left, found nothing segmented)" in checks_text([c.as_dict() for c in checks])




def test_synthetic_ground_truth_agrees_with_its_reports(tmp_path):
    """tmca synth draws lesions where its reports say; one-finding reports must reconcile with their masks."""
    from tmca.synth import write_dataset

    write_dataset(tmp_path, 24, "ct", 3, 5, 96, 40, 0.0, 1, 0.0)
    checked = 0
    for image_path in sorted((tmp_path / "images").glob("*.nii.gz")):
        case = image_path.name[: -len(".nii.gz")]
        findings = split_findings((tmp_path / "reports" / f"{case}.txt").read_text(encoding="utf-8"))
        if len(findings) != 1:
            continue
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "masks" / f"{case}.nii.gz"))) > 0
        checks = check_finding(findings[0].text, mask, sitk.ReadImage(str(image_path)))
        assert [c.status for c in checks[:3]] == ["agree", "agree", "agree"], (findings[0].text, checks)
        checked += 1
    assert checked >= 6


def test_many_components_are_listed_once_per_region():
    radiograph = _image(shape=(1, 90, 60), spacing=(0.2, 0.2, 1.0))
    mask = np.zeros((1, 90, 60), bool)
    mask[0, 5:25:4, 5:55:4] = True  # 5 x 13 equal specks, all in the upper third
    region = next(c for c in check_finding("Nodules in the lower zone.", mask, radiograph) if c.name == "region")
    assert region.measured == "upper third x65"
