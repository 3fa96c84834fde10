"""Report normalisation, finding splitting (on the real QaTa-COV19 reports) and segment colours."""

from __future__ import annotations

import re

import pytest

from datapaths import qata_reports
from tmca.errors import TMCAError
from tmca.findings import MAX_NAME_LENGTH, normalize_report, segment_color, split_findings

COUNTS = {"one": 1, "two": 2, "three": 3}


def _sides(text: str) -> list[str]:
    return re.findall(r"\b(left|right) lung\b", text.lower())


def test_all_real_reports_split_into_the_stated_number_of_single_location_findings():
    reports = qata_reports()
    assert len(reports) >= 30
    for report in reports:
        stated = COUNTS[re.search(r"\b(one|two|three) infected areas?\b", report).group(1)]
        findings = split_findings(report)
        assert len(findings) == stated, report
        for finding in findings:
            assert len(_sides(finding.text)) == 1, (report, finding)
            assert finding.text.startswith("Unilateral pulmonary infection, one infected area, "), finding.text
            assert finding.name.startswith("infected area, ") and len(finding.name) <= MAX_NAME_LENGTH
            assert [f.text for f in split_findings(finding.text)] == [finding.text]  # a finding is a one-target report
        assert sorted({side for f in findings for side in _sides(f.text)}) == sorted(set(_sides(report))), report
        assert len({f.name for f in findings}) == len(findings)


@pytest.mark.parametrize(
    "report, locations",
    [
        ("Bilateral pulmonary infection, two infected areas, all left lung and all right lung.", ["all left lung", "all right lung"]),
        ("Bilateral pulmonary infection, two infected areas,lower left lung and all right lung.", ["lower left lung", "all right lung"]),
        (
            "Bilateral pulmonary infection, two infected areas, upper midlle left lung and lower right lung.",
            ["upper middle left lung", "lower right lung"],
        ),
        (
            "Bilateral pulmonary infection, two infected areas, middle upper left lung and all right lung.",
            ["upper middle left lung", "all right lung"],
        ),
        (
            "Bilateral pulmonary infection, three infected areas, middle left lung and upper lower right lung.",
            ["middle left lung", "upper right lung", "lower right lung"],
        ),
        (
            "Bilateral pulmonary infection, three infected areas, all left lung and upper lower right lung.",
            ["all left lung", "upper right lung", "lower right lung"],
        ),
        (
            "Bilateral pulmonary infection, three infected areas, upper middle left lung and lower right lung.",
            ["upper left lung", "middle left lung", "lower right lung"],
        ),
        ("Unilateral pulmonary infection, one infected area, middle lower left lung.", ["middle lower left lung"]),
    ],
)
def test_real_report_locations(report, locations):
    findings = split_findings(report)
    assert [f.name for f in findings] == [f"infected area, {location}" for location in locations]
    if len(findings) > 1:
        assert [f.text for f in findings] == [f"Unilateral pulmonary infection, one infected area, {location}." for location in locations]


def test_single_finding_report_keeps_its_text():
    report = "Unilateral pulmonary infection, one infected area, lower left lung."
    assert [(f.name, f.text) for f in split_findings(report)] == [("infected area, lower left lung", report)]


@pytest.mark.parametrize(
    "report, texts",
    [
        (
            "Small nodule in the upper left lung. Large nodule in the lower right lung.",
            ["Small nodule in the upper left lung.", "Large nodule in the lower right lung."],
        ),
        (
            "Two lesions: small lesion in the left frontal lobe; large lesion in the right occipital lobe.",
            ["Small lesion in the left frontal lobe.", "Large lesion in the right occipital lobe."],
        ),
        (
            "1. Small mass in the deep left region. 2. Large mass in the superficial right region.",
            ["Small mass in the deep left region.", "Large mass in the superficial right region."],
        ),
        ("- nodule in the left lung\n- effusion on the right", ["Nodule in the left lung.", "Effusion on the right."]),
        ("nodule in the left lung;  mass in the right lung", ["Nodule in the left lung.", "Mass in the right lung."]),
    ],
)
def test_lists_and_sentences_split_one_finding_each(report, texts):
    assert [f.text for f in split_findings(report)] == texts


def test_sentence_finding_names_are_short_descriptions():
    names = [f.name for f in split_findings("Small nodule in the upper left lung. Large nodule in the lower right lung.")]
    assert names == ["small nodule, upper left lung", "large nodule, lower right lung"]


def test_unsplittable_report_stays_one_finding_with_all_its_text():
    report = "Ill-defined   opacity , approx. 3 cm, with air bronchograms"
    findings = split_findings(report)
    assert len(findings) == 1
    assert findings[0].text == "Ill-defined opacity, approx. 3 cm, with air bronchograms."
    assert len(findings[0].name) <= MAX_NAME_LENGTH


def test_names_are_unique_and_bounded():
    long_sentence = "Very " * 30 + "large mass in the left lung."
    findings = split_findings(f"{long_sentence} {long_sentence} {long_sentence}")
    names = [f.name for f in findings]
    assert len(names) == 3 and len(set(names)) == 3
    assert all(len(name) <= MAX_NAME_LENGTH for name in names)
    assert names[1].endswith(" 2") and names[2].endswith(" 3")


@pytest.mark.parametrize("report", ["", "   \n\t ", " . ; "])
def test_empty_report_is_an_error(report):
    with pytest.raises(TMCAError, match="empty report"):
        split_findings(report)


def test_a_report_in_another_script_is_not_called_empty():
    with pytest.raises(TMCAError, match="has no words in Latin letters: the model understands English reports") as refused:
        split_findings("左额叶肿块。")
    assert "empty" not in str(refused.value)


@pytest.mark.parametrize("report, texts", [
    ("Lésion hypoéchogène à gauche.", ["Lésion hypoéchogène à gauche."]),
    ("Mass in the left frontal lobe. 右侧另见结节。", ["Mass in the left frontal lobe.", "右侧另见结节。"]),
    ("Masse im linken Frontallappen, Größe 2 cm", ["Masse im linken Frontallappen, Größe 2 cm."]),
])
def test_non_ascii_text_is_kept_unchanged(report, texts):
    assert [finding.text for finding in split_findings(report)] == texts


def test_normalize_report_identifies_the_same_report():
    a = "Bilateral pulmonary infection, two infected areas,lower left lung and all right lung."
    b = "  bilateral pulmonary infection , two infected areas, lower left lung  and all right lung . "
    assert (
        normalize_report(a)
        == normalize_report(b)
        == ("bilateral pulmonary infection, two infected areas, lower left lung and all right lung.")
    )
    assert normalize_report("Nodule 3.5 cm.") == "nodule 3.5 cm."
    assert normalize_report(a) != normalize_report(a.replace("lower left", "upper left"))


def test_segment_colours_are_distinct_and_valid():
    colours = [segment_color(i) for i in range(30)]
    assert all(len(c) == 3 and all(0.0 <= x <= 1.0 for x in c) for c in colours)
    assert len(set(colours)) == 30
    first = colours[:10]
    closest = min(sum((p - q) ** 2 for p, q in zip(a, b)) ** 0.5 for i, a in enumerate(first) for b in first[i + 1 :])
    assert closest > 0.2
    with pytest.raises(ValueError):
        segment_color(-1)


def test_the_clinician_shorthand_splits_into_one_finding_per_area():
    for report in ("two infected areas, lower left and lower right lung", "Two infected areas, lower left lung and lower right lung."):
        findings = split_findings(report)
        assert [f.name for f in findings] == ["infected area, lower left lung", "infected area, lower right lung"]
        assert findings[0].text == "One infected area, lower left lung."
