"""Findings of absence: marked by the splitter, never segmented, listed as negative findings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from tmca.findings import split_findings
from tmca.negation import is_negative, split_negated_clauses


@pytest.mark.parametrize(
    "text",
    [
        "No pleural effusion.",
        "No focal lesion.",
        "no effusion",
        "None.",
        "Lungs are clear.",
        "The lungs are clear.",
        "Lung is clear",
        "Lungs are otherwise clear.",
        "Clear lungs.",
        "Without focal lesion.",
        "Without pleural effusion or pneumothorax.",
        "There is no pleural effusion.",
        "There are no nodules.",
        "No evidence of metastasis.",
        "Negative for malignancy.",
        "Absence of consolidation.",
        "Free of lesions.",
        "Pleural effusion is not seen.",
        "Pneumothorax is absent.",
        "Metastatic disease ruled out.",
        "Unremarkable study.",
        "Normal study.",
        "The liver is normal.",
        "Within normal limits.",
        "No acute abnormality.",
        "Impression: no focal lesion.",
    ],
)
def test_negative_phrasings(text):
    assert is_negative(text)


@pytest.mark.parametrize(
    "text",
    [
        "Small nodule in the upper left lung.",
        "Nodule without calcification in the right lower lobe.",
        "Nodular opacity in the left upper lobe.",
        "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.",
        "A 12 mm nodule, not calcified.",
        "Mass in segment IV of the liver.",
        "Known metastasis, not resected.",
    ],
)
def test_positive_phrasings(text):
    assert not is_negative(text)


def test_mixed_report_keeps_only_the_positive_finding_positive():
    findings = split_findings("A nodule in the left upper lobe; no effusion.")
    assert [(f.text, f.negative) for f in findings] == [("A nodule in the left upper lobe.", False), ("No effusion.", True)]
    findings = split_findings("A nodule in the left upper lobe, no effusion.")
    assert [(f.text, f.negative) for f in findings] == [("A nodule in the left upper lobe.", False), ("No effusion.", True)]
    findings = split_findings("Small nodule in the upper left lung. Lungs are otherwise clear. No pleural effusion.")
    assert [f.negative for f in findings] == [False, True, True]


def test_clause_split_leaves_negative_and_plain_items_alone():
    assert split_negated_clauses("No nodule, no effusion.") == ["No nodule, no effusion."]
    assert split_negated_clauses("Nodule without calcification.") == ["Nodule without calcification."]
    assert split_negated_clauses("Mass in the liver and no ascites.") == ["Mass in the liver.", "No ascites."]
    assert split_negated_clauses("No nodule in the left lung, but a 5 mm nodule in the right upper lobe.") == [
        "No nodule in the left lung.", "A 5 mm nodule in the right upper lobe."
    ]
    assert split_negated_clauses("Nodule in the left lung, but smaller than before.") == ["Nodule in the left lung, but smaller than before."]


def test_only_negative_findings_give_no_segments_without_running_the_model(tmp_path, monkeypatch):
    from tmca.inference import Segmenter

    segmenter = Segmenter(device="cpu")
    monkeypatch.setattr(segmenter, "_encode_findings", lambda findings: pytest.fail("the model must not run"))
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 300, (6, 32, 32)).astype(np.float32))
    result = segmenter.segment(image, "No focal lesion. Lungs are clear.")
    assert result.records == [] and result.masks.shape == (0, 6, 32, 32)
    assert [(r.name, r.negative, r.segment_id) for r in result.negative_records] == [
        ("no focal lesion", True, ""), ("lungs are clear", True, "")
    ]
    result.save(tmp_path / "x.seg.nrrd", tmp_path / "p.nrrd")
    from tmca.segio import read_segmentation

    masks, specs, _ = read_segmentation(tmp_path / "x.seg.nrrd")
    assert masks == [] and specs == []
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p.nrrd"))).max() == 0


def test_cli_negative_only_report_is_a_clear_result(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 300, (6, 32, 32)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "x.nii.gz"))
    command = [sys.executable, "-m", "tmca.cli", "segment", str(tmp_path / "x.nii.gz"), "--report", "No pleural effusion.",
               "--output", str(tmp_path / "x.seg.nrrd")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "negative finding (no segment): No pleural effusion." in done.stdout
    assert "no positive finding" in done.stdout
    done = subprocess.run([*command, "--progress", "json"], capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["findings"] == [] and result["negative_findings"][0]["negative"] is True
    assert result["negative_findings"][0]["terminology"]["type"]["meaning"] == "Effusion"
    assert "no positive finding" in result["message"]
