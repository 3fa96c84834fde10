"""Coded terminology: vocabulary lookups, Slicer's TerminologyEntry string, and the .seg.nrrd tag."""

from __future__ import annotations

import json

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from slicerio.segmentation import terminology_entry_from_string

from tmca.errors import TMCAError
from tmca.segio import SegmentSpec, read_segmentation, write_segmentation
from tmca.terminology import code_finding, load_vocabulary, stated_laterality
from tmca.vocabulary import VOCABULARY


@pytest.mark.parametrize(
    "text, type_code, region_code, side",
    [
        ("Small nodule in the upper left lung.", "27925004", "281392002", "7771000"),
        ("A 12 mm nodule in the left upper lobe.", "27925004", "45653009", "7771000"),
        ("Nodule in the LUL.", "27925004", "45653009", "7771000"),
        ("RML mass.", "4147007", "72481006", "24028007"),
        ("Two nodules in the right lower lobe, the larger 14 mm.", "27925004", "90572001", "24028007"),
        ("Unilateral pulmonary infection, one infected area, lower right lung.", "309934006", "281394001", "24028007"),
        ("Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.", "309934006", "281392002", "51440002"),
        ("Consolidation in both lower lobes.", "95436008", "90572001", "51440002"),
        ("Left pleural effusion.", "41699000", "3120008", "7771000"),
        ("Metastasis in segment IV of the liver.", "14799000", "277958008", None),
        ("Hepatic cyst, segment 7.", "367643001", "277961009", None),
        ("Cyst in the right kidney.", "367643001", "64033007", "24028007"),
        ("Haemorrhage in the left temporal lobe.", "50960005", "78277001", "7771000"),
        ("Tumour in the right frontal lobe.", "108369006", "83251001", "24028007"),
        ("Hyperintense lesion in the left occipital lobe.", "52988006", "31065004", "7771000"),
        ("Mass in the upper outer quadrant of the left breast.", "4147007", "76365002", "7771000"),
        ("Lesion in the peripheral zone of the prostate.", "52988006", "279706003", None),
        ("Ground-glass opacity in the right upper lobe.", "52988006", "45653009", "24028007"),
    ],
)
def test_vocabulary_codes(text, type_code, region_code, side):
    terminology = code_finding(text)
    assert terminology.category.value == "49755003"
    assert terminology.type.value == type_code
    assert (terminology.region.value if terminology.region else None) == region_code
    assert (terminology.laterality.value if terminology.laterality else None) == side
    assert terminology.generic is False


def test_unknown_words_fall_back_to_a_generic_code():
    terminology = code_finding("Calcified granuloma.")
    assert terminology.generic is True and terminology.type.meaning == "Lesion" and terminology.region is None
    assert terminology.as_dict()["generic"] is True


@pytest.mark.parametrize(
    "text, side",
    [("left", "left"), ("Right kidney", "right"), ("both lungs", "bilateral"), ("bilaterally", "bilateral"),
     ("upper left and lower right lung", "bilateral"), ("unilateral", None), ("brightness", None)],
)  # fmt: skip
def test_stated_laterality(text, side):
    assert stated_laterality(text) == side


def test_slicer_terminology_entry_is_slicers_serialisation():
    entry = code_finding("A nodule in the left upper lobe.").slicer_entry()
    assert entry == (
        "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
        "~SCT^27925004^Nodule~^^~Anatomic codes - DICOM master list~SCT^45653009^Upper lobe of lung~SCT^7771000^Left"
    )
    parsed = terminology_entry_from_string(entry)  # slicerio reads it as Slicer writes it
    assert parsed["anatomicRegionModifier"] == ["SCT", "7771000", "Left"]
    plain = code_finding("Mass.").slicer_entry()
    assert plain.endswith("~SCT^4147007^Mass~^^~Anatomic codes - DICOM master list~^^~^^") and plain.count("~") == 6


def test_terminology_tag_is_written_into_the_seg_nrrd_and_read_back(tmp_path):
    reference = sitk.Image([8, 6, 4], sitk.sitkFloat32)
    masks = [np.zeros((4, 6, 8), bool), np.zeros((4, 6, 8), bool)]
    masks[0][1, 1:3, 1:3] = True
    masks[1][2, 3:5, 4:6] = True
    entries = [code_finding("Nodule in the right lower lobe.").slicer_entry(), ""]
    specs = [SegmentSpec("nodule", (1, 0, 0), "Segment_1", entries[0]), SegmentSpec("other", (0, 1, 0), "Segment_2")]
    write_segmentation(tmp_path / "x.seg.nrrd", masks, reference, specs)
    header = nrrd.read_header(str(tmp_path / "x.seg.nrrd"))
    assert f"TerminologyEntry:{entries[0]}" in header["Segment0_Tags"]
    assert "TerminologyEntry" not in header.get("Segment1_Tags", "")
    _, read_specs, _ = read_segmentation(tmp_path / "x.seg.nrrd")
    assert [spec.terminology for spec in read_specs] == entries


def test_malformed_vocabulary_is_refused_with_its_problem(tmp_path):
    table = json.loads(json.dumps(VOCABULARY))
    table["types"][0]["category"] = "missing"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(table), encoding="utf-8")
    with pytest.raises(TMCAError, match="unknown category 'missing'"):
        load_vocabulary(path)
    table = json.loads(json.dumps(VOCABULARY))
    table["types"][0]["code"] = ["SCT", "1", "a~b"]
    path.write_text(json.dumps(table), encoding="utf-8")
    with pytest.raises(TMCAError, match="none holding"):
        load_vocabulary(path)
    table["types"][0]["code"] = ["SCT", "27925004", "Nodule"]
    table["types"].insert(0, {"words": ["fibrosis", "fibrotic"], "category": "abnormal", "code": ["SCT", "112674009", "Fibrosis"]})
    path.write_text(json.dumps(table), encoding="utf-8")
    extended = load_vocabulary(path)  # a user's own table extends the vocabulary
    assert code_finding("Fibrotic band in the left lower lobe.", extended).type.meaning == "Fibrosis"
    assert code_finding("Fibrotic band in the left lower lobe.").generic is True


def test_bundled_vocabulary_codes_are_well_formed_snomed_ct():
    vocabulary = load_vocabulary()
    codes = [entry.code for entry in vocabulary.types] + [entry.code for entry in vocabulary.regions] + list(vocabulary.lateralities.values())
    assert all(code.scheme == "SCT" and code.value.isdigit() and 6 <= len(code.value) <= 18 for code in codes)
    assert {"nodule", "mass", "lesion", "tumour", "opacity", "consolidation", "infection", "effusion", "cyst", "haemorrhage", "metastasis"} <= {
        word for entry in vocabulary.types for word in entry.words
    }


def test_codes_are_the_concepts_pydicom_knows_under_these_values():
    from pydicom.sr._concepts_dict import concepts

    known: dict[str, set[str]] = {}
    for variants in concepts["SCT"].values():
        for value, (meaning, _) in variants.items():
            known.setdefault(value, set()).add(meaning.lower())
    vocabulary = load_vocabulary()
    codes = [e.code for e in vocabulary.types] + [e.code for e in vocabulary.regions] + list(vocabulary.lateralities.values())
    unchecked = {"95436008"}  # Lung consolidation: not in pydicom's list (docs/TERMINOLOGY.md gives its source)
    for code in codes:
        if code.value in unchecked:
            continue
        assert code.value in known, code
        words = set(code.meaning.lower().replace(",", "").split())
        assert any(words <= set(m.replace(",", "").split()) | {"the", "of"} for m in known[code.value]), (code, known[code.value])
