"""Synthetic phantoms: determinism, modality statistics, locations, targets and the report round trip."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import SimpleITK as sitk
from openpyxl import load_workbook
from PIL import Image

from tmca.cli import main
from tmca.findings import split_findings
from tmca.synth import NO_FINDING_REPORT, Lesion, Tissue, describe, generate_case, report_styles, report_variants, write_dataset

KINDS = [("ct", 2), ("xr", 2), ("mr", 2), ("us", 2), ("ct", 3), ("mr", 3), ("us", 3)]


def _cases(modality: str, dims: int, count: int, size: int = 64, depth: int = 16):
    return [generate_case(np.random.default_rng([11, i]), modality, dims, size, depth) for i in range(count)]


@pytest.mark.parametrize("modality, dims", KINDS)
def test_same_seed_same_case_and_other_seed_other_case(modality, dims):
    a, b = (generate_case(np.random.default_rng(5), modality, dims, 64, 16) for _ in range(2))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.report == b.report
    c = generate_case(np.random.default_rng(6), modality, dims, 64, 16)
    assert not np.array_equal(a.image, c.image)
    expected_shape = (64, 64) if dims == 2 else (16, 64, 64)
    assert a.image.shape == a.mask.shape == a.labels.shape == expected_shape
    assert a.image.dtype == np.float32 and a.mask.dtype == np.uint8 and len(a.spacing) == dims


def _median(case, tissue):
    return float(np.median(case.image[case.labels == tissue]))


@pytest.mark.parametrize("dims", [2, 3])
def test_ct_is_in_hounsfield_units(dims):
    case = generate_case(np.random.default_rng(1), "ct", dims, 96, 24)
    assert _median(case, Tissue.LUNG) < -500
    assert _median(case, Tissue.OUTSIDE) < -900
    assert -50 < _median(case, Tissue.SOFT_TISSUE) < 100
    assert _median(case, Tissue.FAT) < -50
    assert _median(case, Tissue.BONE) > 300
    assert case.image.min() >= -1024 and case.image.max() <= 3071


def test_radiograph_has_dark_lungs_and_bright_bones():
    case = generate_case(np.random.default_rng(1), "xr", 2, 128)
    assert _median(case, Tissue.OUTSIDE) < _median(case, Tissue.LUNG) < _median(case, Tissue.SOFT_TISSUE) < _median(case, Tissue.BONE)
    assert 0.0 <= case.image.min() and case.image.max() <= 4095.0


@pytest.mark.parametrize("dims", [2, 3])
def test_mr_brain_contrast_and_hyperintense_lesions(dims):
    cases = [c for c in _cases("mr", dims, 12) if c.lesions]
    for case in cases:
        brain = _median(case, Tissue.BRAIN)
        assert brain > 10 * _median(case, Tissue.OUTSIDE)  # signal well above the Rician noise floor
        assert _median(case, Tissue.FLUID) < 0.5 * brain  # FLAIR: CSF dark
        for lesion_mask in case.lesion_masks:
            assert np.median(case.image[lesion_mask]) > brain


@pytest.mark.parametrize("dims", [2, 3])
def test_ultrasound_fan_speckle_and_hypoechoic_lesions(dims):
    for case in [c for c in _cases("us", dims, 12) if c.lesions]:
        outside = case.labels == Tissue.OUTSIDE
        assert outside.any() and np.all(case.image[outside] == 0)  # black outside the sector
        tissue = case.image[case.labels == Tissue.SOFT_TISSUE]
        assert tissue.std() > 0.3 * tissue.mean()  # speckle
        for lesion_mask in case.lesion_masks:
            assert case.image[lesion_mask].mean() < 0.6 * tissue.mean()


def _lesion_position_ok(case, lesion, lesion_mask, dims):
    """Side: the patient's left is the image's right (ultrasound: the image's left); zone: thirds of the organ."""
    words = lesion.location.split()
    column = lesion.centre[-1]
    right_half = column >= case.image.shape[-1] // 2
    if case.modality == "US":
        return right_half if "right" in words else not right_half if "left" in words else lesion_mask.any()
    side_ok = right_half if "left" in words else not right_half
    organ = {"lung": Tissue.LUNG, "lobe": Tissue.BRAIN}.get(words[-1])
    if organ is None:
        return side_ok
    axis = 0 if (dims == 3 and organ == Tissue.LUNG) else (-2)
    present = np.flatnonzero(np.moveaxis(case.labels == organ, axis, 0).reshape(case.labels.shape[axis], -1).any(axis=1))
    position = (lesion.centre[axis] - present[0]) / (present[-1] + 1 - present[0])
    order = ["upper", "middle", "lower"] if organ == Tissue.LUNG else ["frontal", "parietal", "occipital"]
    if axis == 0:
        order = order[::-1]  # slice index runs from inferior to superior
    zone = next(word for word in words if word in order)
    third = order.index(zone)
    return side_ok and third / 3 - 0.01 <= position <= (third + 1) / 3 + 0.01 and lesion_mask.any()


@pytest.mark.parametrize("modality, dims", KINDS)
def test_mask_is_the_union_of_described_lesions_at_their_named_places(modality, dims):
    cases = _cases(modality, dims, 25)
    assert any(not lesion.described for case in cases for lesion in case.lesions), "no case describes a strict subset"
    for case in cases:
        described = [m for m, lesion in zip(case.lesion_masks, case.lesions) if lesion.described]
        union = np.any(described, axis=0) if described else np.zeros(case.mask.shape, bool)
        assert np.array_equal(case.mask.astype(bool), union)
        assert len({lesion.location for lesion in case.lesions}) == len(case.lesions)
        total = np.sum(case.lesion_masks, axis=0) if case.lesions else np.zeros(1)
        assert total.max() <= 1  # lesions do not overlap
        for lesion, lesion_mask in zip(case.lesions, case.lesion_masks):
            assert lesion_mask.sum() == lesion.voxels > 0
            assert _lesion_position_ok(case, lesion, lesion_mask, dims), (lesion, case.report)
            assert (lesion.location in case.report) == lesion.described
        assert (case.report == NO_FINDING_REPORT) == (not case.mask.any())


@pytest.mark.parametrize("modality", ["ct", "xr", "mr", "us"])
def test_every_multi_finding_report_splits_into_single_lesion_reports(modality):
    cases = [generate_case(np.random.default_rng([23, i]), modality, 2, 64) for i in range(150)]
    styles, counts = Counter(c.style for c in cases), Counter(sum(l.described for l in c.lesions) for c in cases)
    assert set(styles) == set(report_styles(modality))
    assert counts[2] > 10 and counts[3] > 5 and 0 < counts[0] < 30
    for case in cases:
        described = [lesion for lesion in case.lesions if lesion.described]
        if not described:
            continue
        findings = split_findings(case.report)
        assert len(findings) == len(described), case.report
        for finding in findings:
            matches = [lesion for lesion in described if lesion.location in finding.text]
            assert len(matches) == 1, (case.report, finding)
            own_reports = {describe([matches[0]], modality, style) for style in report_styles(modality)}
            assert finding.text in own_reports, (case.report, finding.text)
        assert {m.location for f in findings for m in described if m.location in f.text} == {d.location for d in described}


def test_report_templates():
    lesion = Lesion("upper left lung", "small", True, (1, 2), 3)
    other = Lesion("lower right lung", "large", True, (4, 5), 6)
    assert describe([lesion, other], "ct", "sentences") == "Small nodule in the upper left lung. Large nodule in the lower right lung."
    assert (
        describe([lesion, other], "xr", "qata")
        == "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    )
    assert describe([lesion], "ct", "qata") == "Unilateral pulmonary infection, one infected area, upper left lung."
    assert describe([], "mr", "list") == NO_FINDING_REPORT


def test_2d_dataset_is_lvit_layout_and_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    splits = write_dataset(first, 10, "xr", 2, seed=3, size=64)
    write_dataset(second, 10, "xr", 2, seed=3, size=64)
    assert [len(splits[s]) for s in ("Train", "Val", "Test")] == [7, 1, 2]
    for split, names in splits.items():
        sheet = load_workbook(first / f"{split}_text.xlsx", read_only=True).worksheets[0]
        rows = list(sheet.iter_rows(values_only=True))
        assert rows[0] == ("Image", "Description") and [r[0] for r in rows[1:]] == [f"{n}.png" for n in names]
        for name in names:
            image = np.asarray(Image.open(first / f"{split}_Folder" / "img" / f"{name}.png"))
            mask = np.asarray(Image.open(first / f"{split}_Folder" / "labelcol" / f"{name}.png"))
            assert image.dtype == np.uint8 and image.shape == mask.shape == (64, 64) and image.std() > 10
            assert set(np.unique(mask)) <= {0, 255}
            for folder in ("img", "labelcol"):
                relative = f"{split}_Folder/{folder}/{name}.png"
                assert (first / relative).read_bytes() == (second / relative).read_bytes()
    assert json.loads((first / "synth.json").read_text()) == json.loads((second / "synth.json").read_text())


def test_3d_dataset_has_geometry_reports_and_manifest(tmp_path):
    write_dataset(tmp_path, 3, "ct", 3, seed=0, size=64, depth=16)
    with (tmp_path / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "mask", "report", "split", "case"] and len(rows) == 3
    for row in rows:
        image, mask = sitk.ReadImage(str(tmp_path / row["image"])), sitk.ReadImage(str(tmp_path / row["mask"]))
        assert image.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
        assert image.GetSize() == mask.GetSize() == (64, 64, 16)
        assert image.GetSpacing()[2] > image.GetSpacing()[0] > 0
        assert any(abs(o) > 1 for o in image.GetOrigin()) and image.GetOrigin() == mask.GetOrigin()
        assert sitk.GetArrayFromImage(image).min() < -900
        assert (tmp_path / row["report"]).read_text().strip()


def test_report_variants_name_other_lesion_sets_of_the_same_scan():
    cases = [c for c in _cases("ct", 2, 40) if len(c.lesions) == 3][:3]
    assert cases
    for case in cases:
        variants = report_variants(np.random.default_rng(0), case, 10)
        sets = [tuple(lesion.described for lesion in v.lesions) for v in variants]
        assert len(variants) == 6  # the seven non-empty sets of three lesions, less the case's own
        assert len(set(sets)) == 6 and tuple(lesion.described for lesion in case.lesions) not in sets and (False,) * 3 not in sets
        for variant, described in zip(variants, sets):
            assert variant.image is case.image
            union = np.any([m for m, d in zip(case.lesion_masks, described) if d], axis=0)
            assert np.array_equal(variant.mask.astype(bool), union)
            assert [lesion.location in variant.report for lesion in variant.lesions] == list(described)
    single = next(c for c in _cases("ct", 2, 40) if len(c.lesions) == 1)
    assert report_variants(np.random.default_rng(0), single, 3) == []


def test_reports_per_case_adds_train_rows_that_share_the_scan_and_keep_the_held_out_splits(tmp_path):
    write_dataset(tmp_path / "one", 12, "ct", 3, seed=4, size=64, depth=16)
    write_dataset(tmp_path / "many", 12, "ct", 3, seed=4, size=64, depth=16, reports_per_case=3)
    rows = {}
    for name in ("one", "many"):
        with (tmp_path / name / "manifest.csv").open(newline="") as handle:
            rows[name] = list(csv.DictReader(handle))
    extra = [row for row in rows["many"] if row["case"].endswith(("_r1", "_r2"))]
    assert extra and {row["split"] for row in extra} == {"Train"}
    assert [row for row in rows["many"] if row not in extra] == rows["one"]
    for row in rows["one"]:
        assert (tmp_path / "one" / row["image"]).read_bytes() == (tmp_path / "many" / row["image"]).read_bytes()
        assert (tmp_path / "one" / row["mask"]).read_bytes() == (tmp_path / "many" / row["mask"]).read_bytes()
    meta = json.loads((tmp_path / "many" / "synth.json").read_text())
    for row in extra:
        case = row["case"].rsplit("_r", 1)[0]
        assert row["image"] == f"images/{case}.nii.gz" and not (tmp_path / "many" / "images" / f"{row['case']}.nii.gz").exists()
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "many" / row["mask"])))
        record = next(c for c in meta["cases"] if c["case"] == case)
        variant = next(v for v in record["variants"] if v["case"] == row["case"])
        assert mask.any() and (tmp_path / "many" / row["report"]).read_text().strip() == variant["report"]
        named = [lesion["location"] for lesion, d in zip(record["lesions"], variant["described"]) if d]
        assert named and all(location in variant["report"] for location in named)


def test_reports_per_case_in_2d_gives_each_report_its_own_lvit_image_and_mask(tmp_path):
    splits = write_dataset(tmp_path, 12, "xr", 2, seed=4, size=64, reports_per_case=2)
    sheet = load_workbook(tmp_path / "Train_text.xlsx", read_only=True).worksheets[0]
    names = [row[0][: -len(".png")] for row in list(sheet.iter_rows(values_only=True))[1:]]
    variants = [name for name in names if name.endswith("_r1")]
    assert variants and len(names) == len(splits["Train"]) + len(variants)
    for name in variants:
        case = name[: -len("_r1")]
        folder = tmp_path / "Train_Folder"
        assert (folder / "img" / f"{name}.png").read_bytes() == (folder / "img" / f"{case}.png").read_bytes()
        assert (folder / "labelcol" / f"{name}.png").read_bytes() != (folder / "labelcol" / f"{case}.png").read_bytes()


def test_no_finding_probability_only_empties_the_cases_it_selects():
    def case(i, probability):
        return generate_case(np.random.default_rng([9, i]), "ct", 2, 64, no_finding_probability=probability)

    default, more = [case(i, 0.05) for i in range(60)], [case(i, 0.5) for i in range(60)]
    emptied = [b for a, b in zip(default, more) if a.report != b.report]
    assert len(emptied) > 15 and all(b.report == NO_FINDING_REPORT and not b.lesions and not b.mask.any() for b in emptied)
    for a, b in zip(default, more):
        if a.report == b.report:
            assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert all(c.report == NO_FINDING_REPORT for c in (case(i, 1.0) for i in range(5)))


def test_cli_writes_a_dataset_and_rejects_3d_radiographs(tmp_path, capsys):
    assert main(["synth", "--output", str(tmp_path / "xr"), "--cases", "3", "--modality", "xr", "--size", "64"]) == 0
    assert (tmp_path / "xr" / "Train_text.xlsx").is_file()
    assert main(["synth", "--output", str(tmp_path / "bad"), "--modality", "xr", "--dims", "3"]) == 2
    assert "2D only" in capsys.readouterr().err
    assert main(["synth", "--output", str(tmp_path / "bad"), "--reports-per-case", "0"]) == 2
    assert "--reports-per-case must be at least 1" in capsys.readouterr().err
    assert main(["synth", "--output", str(tmp_path / "bad"), "--no-finding-fraction", "1.5"]) == 2
    assert "--no-finding-fraction must be between 0 and 1" in capsys.readouterr().err
