"""``tmca batch`` clinical outputs: negative findings, terminology, checks, disagreements and DICOM SEGs."""

from __future__ import annotations

import csv
import json

import highdicom as hd
import numpy as np
import SimpleITK as sitk

from dicom_series import write_series
from tmca.batch import read_summary, run_batch
from tmca.cli import main
from tmca.segio import read_segmentation


def _study(tmp_path):
    study = tmp_path / "study"
    write_series(study / "chest")
    image = sitk.GetImageFromArray(np.random.default_rng(2).normal(0, 300, (6, 32, 32)).astype(np.float32))
    sitk.WriteImage(image, str(study / "plain.nii.gz"))
    (study / "chest" / "chest.txt").write_text("Two nodules in the right lower lobe, the larger 14 mm; no pleural effusion.", encoding="utf-8")
    (study / "plain.txt").write_text("No focal lesion. Lungs are clear.", encoding="utf-8")
    return study


def test_summary_lists_negative_findings_terminology_checks_and_disagreements(tmp_path, tiny_model_dir):
    study = _study(tmp_path)
    rows = {row["case"]: row for row in run_batch(study, tmp_path / "out", model=tiny_model_dir, device="cpu", threshold=0.5)}
    chest, plain = rows["chest"], rows["plain"]
    assert chest["status"] == plain["status"] == "ok"
    assert chest["negative_findings"] == ["No pleural effusion."]
    assert chest["terminology"] == ["Nodule (SCT 27925004) | Lower lobe of lung (SCT 90572001) | Right (SCT 24028007)"]
    assert chest["checks"][0].startswith("count ") and "size " in chest["checks"][0]
    masks, _, reference = read_segmentation(tmp_path / "out" / chest["output"])
    from tmca.reconcile import check_finding, disagreements

    expected = check_finding("Two nodules in the right lower lobe, the larger 14 mm.", masks[0], reference)
    assert chest["disagreements"] == disagreements(expected)
    assert plain["findings"] == [] and plain["negative_findings"] == ["No focal lesion.", "Lungs are clear."]
    assert plain["disagreements"] == 0
    with open(tmp_path / "out" / "summary.csv", newline="", encoding="utf-8") as handle:
        by_case = {row["case"]: row for row in csv.DictReader(handle)}
    assert by_case["plain"]["negative_findings"] == "No focal lesion.; Lungs are clear."
    assert by_case["chest"]["checks"] == chest["checks"][0] and by_case["chest"]["disagreements"] == str(chest["disagreements"])
    assert read_summary(tmp_path / "out" / "summary.json")["rows"][0]["checks"] == chest["checks"]


def test_dicom_seg_beside_each_dicom_case_and_a_clear_failure_for_the_others(tmp_path, tiny_model_dir, capsys):
    study = _study(tmp_path)
    code = main(["batch", str(study), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--dicom-seg", "--threshold", "0.5", "--progress", "json"])  # fmt: skip
    assert code == 1  # the NIfTI case cannot have a DICOM SEG
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["counts"]["failed"] == 1 and isinstance(result["disagreements"], int)
    rows = {row["case"]: row for row in read_summary(tmp_path / "out" / "summary.json")["rows"]}
    assert rows["plain"]["status"] == "failed" and "--dicom-seg needs DICOM input" in rows["plain"]["error"]
    assert not (tmp_path / "out" / "plain.seg.nrrd").exists()
    assert rows["chest"]["dicom_seg"] == "chest.dcm"
    seg = hd.seg.segread(tmp_path / "out" / "chest.dcm")
    masks, _, _ = read_segmentation(tmp_path / "out" / "chest.seg.nrrd")
    assert len(seg.SegmentSequence) == len(masks) == 1
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    volume = seg.get_volume(combine_segments=False)  # frames placed in the patient frame by highdicom
    assert int(volume.array.astype(bool).sum()) == int(masks[0].sum())
    again = run_batch(study, tmp_path / "out", model=tiny_model_dir, device="cpu", threshold=0.5, dicom_seg=True)
    assert {row["case"]: row["status"] for row in again}["chest"] == "skipped"
    (tmp_path / "out" / "chest.dcm").unlink()
    redone = run_batch(study, tmp_path / "out", model=tiny_model_dir, device="cpu", threshold=0.5, dicom_seg=True)
    assert {row["case"]: row["status"] for row in redone}["chest"] == "ok" and (tmp_path / "out" / "chest.dcm").is_file()
