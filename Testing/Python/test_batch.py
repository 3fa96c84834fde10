"""``tmca batch`` and ``tmca batch-merge`` on real MRIs and real DICOM: cases, reports, summaries,
resuming, interruption, shards, and every bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
from pydicom.uid import generate_uid

from datapaths import pydicom_data_file, pydicom_test_file, real_data_file
from tmca.batch import Shard, find_cases, index_reports, read_summary, run_batch, safe_case_id
from tmca.cli import main
from tmca.imageio import load_image

REPORT = "Small nodule in the upper left lung. Large mass in the lower right lung."


# ---------------------------------------------------------------------------------------------
# Helpers


def _tmca(args: list[str]) -> tuple[int, str, str]:
    """Run the command line in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def _dicom(source: Path, target: Path, new_series: bool = False, **tags) -> Path:
    """Copy a DICOM file; ``new_series`` gives it its own series UID (many test files share one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not new_series and not tags:
        shutil.copyfile(source, target)
        return target
    dataset = pydicom.dcmread(source)
    if new_series:
        dataset.SeriesInstanceUID = generate_uid()
    for name, value in tags.items():
        setattr(dataset, name, value)
    dataset.save_as(target)
    return target


def _link(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


def _slab(target: Path, first: int, count: int) -> Path:
    """A few slices of the real brain MRI (a small, real, fast case)."""
    image = sitk.ReadImage(str(real_data_file("brain1_image.nrrd")))
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image[:, :, first : first + count], str(target))
    return target


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows(rows)
    return path


def _statuses(rows: list[dict]) -> dict[str, str]:
    return {row["case"]: row["status"] for row in rows}


def _files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file() or path.is_symlink()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if ".part" in path.name)


# ---------------------------------------------------------------------------------------------
# A study of real MRIs and real DICOM (including compressed, multi-frame and corrupt files)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("batch")
    study = root / "study"
    _link(real_data_file("brain1_image.nrrd"), study / "mri" / "brain1_image.nrrd")
    (study / "mri" / "brain1_image.txt").write_text("Mass in the left frontal lobe.\n", encoding="utf-8")
    _link(real_data_file("breast1_image.nrrd"), study / "mri" / "breast1_image.nrrd")
    _link(real_data_file("breast1_image.nrrd"), study / "unreported.nrrd")
    _dicom(pydicom_test_file("CT_small.dcm"), study / "dicom" / "ct" / "CT_small.dcm")
    _dicom(pydicom_test_file("MR_small.dcm"), study / "dicom" / "mr" / "MR_small.dcm", new_series=True)
    _dicom(pydicom_test_file("examples_ybr_color.dcm"), study / "us" / "cine" / "image.dcm")  # JPEG baseline, 30 frames
    _dicom(pydicom_data_file("US1_UNCR.dcm"), study / "us" / "still" / "US1_UNCR.dcm", new_series=True)
    _dicom(pydicom_data_file("RG1_UNCR.dcm"), study / "xr" / "RG1_UNCR.dcm", new_series=True)  # 1955 x 1841
    _dicom(pydicom_data_file("explicit_VR-UN.dcm"), study / "ct_j2k" / "slice.dcm")  # CT, JPEG 2000 lossless
    _dicom(pydicom_test_file("CT_small.dcm"), study / "pair" / "ct.dcm", new_series=True, SeriesNumber=7)
    _dicom(pydicom_test_file("examples_rgb_color.dcm"), study / "pair" / "rgb.dcm", new_series=True, SeriesNumber=8)
    spread = generate_uid()
    for index, folder in enumerate(("a", "a", "b")):  # one series whose slices lie in two folders
        _dicom(
            pydicom_test_file("CT_small.dcm"), study / "spread" / folder / f"slice{index}.dcm", SeriesInstanceUID=spread,
            SOPInstanceUID=generate_uid(), InstanceNumber=index + 1, ImagePositionPatient=[-158.0, -179.0, -75.0 + 5 * index],
        )  # fmt: skip
    _dicom(pydicom_test_file("MR_small.dcm"), study / "etc" / "x" / "MR_small.dcm", new_series=True)
    _dicom(pydicom_test_file("MR_truncated.dcm"), study / "broken" / "MR_truncated.dcm")  # real, damaged pixel data
    (study / "bad.nii.gz").write_bytes(os.urandom(2048))
    (study / "bad.txt").write_text(REPORT, encoding="utf-8")
    cases = ["breast1_image.nrrd", "dicom_ct", "dicom_mr", "us_cine", "us_still", "xr", "ct_j2k", "pair_7", "pair_8", "spread", "MR_truncated"]
    reports = _write_csv(
        root / "reports.csv",
        [["case", "report", "site"], *[[case, REPORT, f"site-{case}"] for case in cases], ["../../etc/x", "Lesion in the left lobe.", "escape"],
         ["ghost", "Nodule without an image.", "nowhere"]],
    )  # fmt: skip
    out = root / "out"
    before = _files(root)
    code, stdout, stderr = _tmca(["batch", study, "--output", out, "--reports", reports, "--model", tiny_model_dir, "--probability"])
    return {"root": root, "study": study, "out": out, "code": code, "stdout": stdout, "stderr": stderr, "before": before}


EXPECTED = {
    "brain1_image": "ok", "breast1_image": "ok", "dicom_ct": "ok", "dicom_mr": "ok", "us_cine": "ok", "us_still": "ok", "xr": "ok",
    "ct_j2k": "ok", "pair_7": "ok", "pair_8": "ok", "spread": "ok", "etc_x": "ok",
    "bad": "failed", "MR_truncated": "failed", "ghost": "failed", "unreported": "no-report",
}  # fmt: skip


def test_every_case_has_its_status_and_a_failure_makes_the_exit_code_nonzero(study_run):
    assert study_run["code"] == 1, study_run["stderr"]
    summary = read_summary(study_run["out"] / "summary.json")
    assert _statuses(summary["rows"]) == EXPECTED
    assert summary["finished"] is True and summary["total"] == len(EXPECTED)
    assert summary["counts"] == {"ok": 12, "failed": 3, "no-report": 1, "skipped": 0}
    errors = {row["case"]: row["error"] for row in summary["rows"]}
    assert "bad.nii.gz" in errors["bad"] and "damaged" in errors["MR_truncated"] and "no image" in errors["ghost"]
    assert "Traceback" not in study_run["stderr"]
    assert "failed bad:" in study_run["stdout"] and "summary:" in study_run["stdout"]


def test_outputs_are_slicer_segmentations_on_each_inputs_grid(study_run):
    study, out = study_run["study"], study_run["out"]
    rows = {row["case"]: row for row in read_summary(out / "summary.json")["rows"]}
    for case, status in EXPECTED.items():
        row = rows[case]
        if status != "ok":
            assert row["output"] == "" and not (out / f"{case}.seg.nrrd").exists()
            continue
        source = load_image(study / row["input"], series_uid=row["series_uid"] or None).image
        segmentation = slicerio.read_segmentation(str(out / row["output"]))
        assert [segment["name"] for segment in segmentation["segments"]] == row["findings"]
        assert tuple(segmentation["voxels"].shape[-3:]) == source.GetSize(), case
        assert np.allclose(segmentation["ijkToLPS"][:3, 3], source.GetOrigin(), atol=1e-3), case
        probability = sitk.ReadImage(str(out / row["probability"]))
        assert probability.GetSize() == source.GetSize() and probability.GetNumberOfComponentsPerPixel() == len(row["findings"])
        assert len(row["volume_ml"]) == len(row["components"]) == len(row["findings"]) >= 1
        assert row["input_sha256"] and row["report_sha256"] and row["seconds"] > 0
    assert rows["spread"]["input"] == "spread" and tuple(load_image(study / "spread", rows["spread"]["series_uid"]).image.GetSize())[2] == 3
    assert rows["brain1_image"]["report"] == "Mass in the left frontal lobe."  # the sidecar, stripped
    assert rows["brain1_image"]["findings"] == ["mass, left frontal lobe"]
    assert _leftovers(out) == []


def test_summary_csv_matches_json_and_keeps_the_reports_extra_columns(study_run):
    out = study_run["out"]
    with open(out / "summary.csv", newline="", encoding="utf-8") as stream:
        table = list(csv.DictReader(stream))
    rows = read_summary(out / "summary.json")["rows"]
    assert [(row["case"], row["status"]) for row in table] == [(row["case"], row["status"]) for row in rows]
    by_case = {row["case"]: row for row in table}
    assert by_case["breast1_image"]["site"] == "site-breast1_image.nrrd" and by_case["etc_x"]["site"] == "escape"
    assert by_case["pair_7"]["findings"] == "; ".join(next(r for r in rows if r["case"] == "pair_7")["findings"])
    assert float(by_case["dicom_ct"]["volume_ml"].split("; ")[0]) >= 0


def test_a_report_csv_case_id_with_dot_dots_writes_nothing_outside_the_output_folder(study_run):
    root, out = study_run["root"], study_run["out"]
    created = _files(root) - study_run["before"]
    assert created and all(out in path.parents for path in created)
    assert (out / "etc_x.seg.nrrd").is_file()
    assert not (root.parent / "etc").exists() and not (root / "etc").exists()


def test_rerun_skips_up_to_date_cases_and_redoes_changed_reports_and_overwrite(tmp_path, tiny_model_dir):
    study, out = tmp_path / "study", tmp_path / "out"
    _slab(study / "brain.nrrd", 10, 4)
    (study / "brain.txt").write_text("Mass in the left frontal lobe.", encoding="utf-8")
    _dicom(pydicom_test_file("CT_small.dcm"), study / "ct" / "CT_small.dcm")
    _link(real_data_file("breast1_image.nrrd"), study / "breast.nrrd")  # no report
    rows = run_batch(study, out, reports={"ct": "Nodule in the upper left lung."}, model=tiny_model_dir)
    assert _statuses(rows) == {"brain": "ok", "ct": "ok", "breast": "no-report"}
    written = {path.name: path.stat().st_mtime_ns for path in out.glob("*.seg.nrrd")}

    reports = _write_csv(tmp_path / "reports.csv", [["case", "report"], ["ct", "Nodule in the upper left lung."]])
    args = ["batch", study, "--output", out, "--reports", reports, "--model", tiny_model_dir]
    code, stdout, _ = _tmca(args)
    assert code == 0 and "skipped 2 case(s)" in stdout and "--overwrite" in stdout
    assert _statuses(read_summary(out / "summary.json")["rows"]) == {"brain": "skipped", "ct": "skipped", "breast": "no-report"}
    assert {path.name: path.stat().st_mtime_ns for path in out.glob("*.seg.nrrd")} == written
    skipped = {row["case"]: row for row in read_summary(out / "summary.json")["rows"]}
    assert skipped["brain"]["findings"] == ["mass, left frontal lobe"] and skipped["brain"]["output"] == "brain.seg.nrrd"

    (study / "brain.txt").write_text("Two nodules in the right lobe.", encoding="utf-8")
    assert _tmca(args)[0] == 0
    assert _statuses(read_summary(out / "summary.json")["rows"]) == {"brain": "ok", "ct": "skipped", "breast": "no-report"}
    assert _tmca([*args, "--threshold", "0.6"])[0] == 0  # other settings: other outputs
    assert _statuses(read_summary(out / "summary.json")["rows"]) == {"brain": "ok", "ct": "ok", "breast": "no-report"}
    assert _tmca([*args, "--threshold", "0.6", "--overwrite"])[0] == 0
    assert _statuses(read_summary(out / "summary.json")["rows"]) == {"brain": "ok", "ct": "ok", "breast": "no-report"}


def test_fail_fast_stops_at_the_first_failure(tmp_path, tiny_model_dir):
    study = tmp_path / "study"
    study.mkdir()
    (study / "a_bad.nii.gz").write_bytes(os.urandom(512))
    (study / "a_bad.txt").write_text(REPORT, encoding="utf-8")
    _slab(study / "b_brain.nrrd", 0, 2)
    (study / "b_brain.txt").write_text(REPORT, encoding="utf-8")
    code, _, _ = _tmca(["batch", study, "--output", tmp_path / "out", "--model", tiny_model_dir, "--fail-fast"])
    summary = read_summary(tmp_path / "out" / "summary.json")
    assert code == 1 and _statuses(summary["rows"]) == {"a_bad": "failed"} and summary["finished"] is False
    assert not (tmp_path / "out" / "b_brain.seg.nrrd").exists()


def test_sigterm_mid_run_keeps_a_true_summary_and_a_rerun_finishes_each_case_once(tmp_path, tiny_model_dir):
    study, out = tmp_path / "study", tmp_path / "out"
    for index in range(6):
        _slab(study / f"case{index}.nrrd", 3 * index, 3)
        (study / f"case{index}.txt").write_text(REPORT, encoding="utf-8")
    command = [sys.executable, "-m", "tmca.cli", "batch", str(study), "--output", str(out), "--model", str(tiny_model_dir),
               "--progress", "json", "--batch-size", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if json.loads(line).get("status"):
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "SIGTERM" in stderr and "Traceback" not in stderr
    first = read_summary(out / "summary.json")
    assert first["finished"] is False and _leftovers(out) == []
    done = {row["case"] for row in first["rows"] if row["status"] == "ok"}
    interrupted = [row for row in first["rows"] if row["status"] == "failed"]  # the case in progress, if any
    assert "case0" in done and len(done) < 6 and len(interrupted) <= 1
    assert all("interrupted (stopped by SIGTERM)" in row["error"] for row in interrupted)
    assert {path.name for path in out.glob("*.seg.nrrd")} == {f"{case}.seg.nrrd" for case in done}

    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    rows = read_summary(out / "summary.json")["rows"]
    assert {row["case"] for row in rows if row["status"] == "skipped"} == done
    assert {row["case"] for row in rows if row["status"] == "ok"} == {f"case{index}" for index in range(6)} - done


def test_two_shards_cover_every_case_once_and_merge(tmp_path, tiny_model_dir):
    study, out = tmp_path / "study", tmp_path / "out"
    _slab(study / "brain.nrrd", 12, 2)
    _slab(study / "brain_top.nrrd", 20, 2)
    _dicom(pydicom_test_file("CT_small.dcm"), study / "ct" / "a.dcm")
    _dicom(pydicom_test_file("MR_small.dcm"), study / "mr" / "b.dcm")
    _dicom(pydicom_data_file("US1_UNCR.dcm"), study / "us" / "c.dcm", new_series=True)
    reports = {case: REPORT for case in ("brain", "brain_top", "ct", "mr", "us")}
    first = run_batch(study, out, reports=reports, model=tiny_model_dir, shard="1/2", probability=True)
    second = run_batch(study, out, reports=reports, model=tiny_model_dir, shard=Shard(2, 2), probability=True)
    cases = [row["case"] for row in first + second]
    assert sorted(cases) == sorted(reports) and all(row["status"] == "ok" for row in first + second)
    assert {path.name for path in out.glob("summary-shard-*")} == {f"summary-shard-{i}-of-2.{ext}" for i in (1, 2) for ext in ("csv", "json")}

    code, stdout, stderr = _tmca(["batch-merge", out])
    merged = read_summary(out / "summary.json")
    assert code == 0, stderr
    assert [row["case"] for row in merged["rows"]] == sorted(reports) and merged["finished"] is True
    assert "5 case(s): 5 ok" in stdout

    elsewhere = tmp_path / "merged"
    assert _tmca(["batch-merge", out, "--output", elsewhere])[0] == 0
    for row in read_summary(elsewhere / "summary.json")["rows"]:
        assert (elsewhere / row["output"]).is_file() and (elsewhere / row["probability"]).is_file()

    (out / "summary-shard-2-of-2.json").unlink()
    code, _, stderr = _tmca(["batch-merge", out])
    assert code == 2 and "shard 2/2 is missing" in stderr


def test_shards_of_any_split_cover_every_case_exactly_once():
    cases = list(range(23))
    for count in (1, 2, 3, 7, 30):
        chosen = [case for index in range(1, count + 1) for case in Shard(index, count).select(cases)]
        assert sorted(chosen) == cases


# ---------------------------------------------------------------------------------------------
# Case ids and reports


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../etc/x", "etc_x"), ("brain1_image", "brain1_image"), ("Patient 7: CT/axial", "Patient_7_CT_axial"), ("..", None),
     ("CON", "_CON"), ("nul.seg", "_nul.seg"), ("C:\\data\\scan", "C_data_scan"), ("süß-Fall", "süß-Fall")],
)  # fmt: skip
def test_safe_case_ids_stay_inside_the_output_folder(name, expected):
    safe = safe_case_id(name)
    assert safe == expected if expected else safe.startswith("case_")
    assert "/" not in safe and "\\" not in safe and not safe.startswith(".")


def test_long_case_ids_are_shortened_and_stay_distinct():
    first, second = safe_case_id("x" * 300 + "1"), safe_case_id("x" * 300 + "2")
    assert first != second and len(first.encode()) <= 120 and len(second.encode()) <= 120


def test_case_ids_shared_by_several_inputs_are_flagged(tmp_path):
    for folder, name in (("a", "scan.nrrd"), ("b", "scan.nii.gz"), ("c", "Other.mha"), ("d", "other.nrrd"), ("e", "unique.nrrd")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"")
    problems = {case.input: case.problem for case in find_cases(tmp_path)}
    assert problems["e/unique.nrrd"] is None
    assert all("shared by" in problems[path] for path in ("a/scan.nrrd", "b/scan.nii.gz", "c/Other.mha", "d/other.nrrd"))


def test_output_folder_inside_the_study_is_not_searched(tmp_path):
    (tmp_path / "scan.nrrd").write_bytes(b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.nrrd").write_bytes(b"")
    (tmp_path / "out" / "scan.seg.nrrd").write_bytes(b"")
    assert [case.id for case in find_cases(tmp_path, exclude=tmp_path / "out")] == ["scan"]


def test_detached_headers_are_cases_and_their_data_files_are_their_inputs(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((3, 8, 8)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "a.nhdr"), useCompression=True)  # a.nhdr + a.raw.gz
    sitk.WriteImage(image, str(tmp_path / "b.mhd"))  # b.mhd + b.raw
    sitk.WriteImage(image, str(tmp_path / "c.mha"))
    cases = {case.id: case for case in find_cases(tmp_path)}
    assert sorted(cases) == ["a", "b", "c"]
    assert [path.name for path in cases["a"].inputs] == ["a.nhdr", "a.raw.gz"]
    assert [path.name for path in cases["b"].inputs] == ["b.mhd", "b.raw"]


def test_conflicting_reports_for_one_case_are_flagged():
    reports = index_reports([("../a", "Mass.", "line 2", {}), ("a.nii.gz", "Nodule.", "line 3", {}), ("b", "Cyst.", "line 4", {})])
    assert "line 2 and line 3" in reports["a"].problem and reports["b"].problem is None


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error line, non-zero exit


@pytest.mark.parametrize("problem", ["missing study", "empty study", "missing csv", "csv without columns", "binary csv", "bad shard"])
def test_bad_input_gives_one_error_line(tmp_path, tiny_model_dir, problem):
    study = tmp_path / "study"
    study.mkdir()
    if problem != "empty study":
        (study / "notes.txt").write_text("not an image")
        _slab(study / "brain.nrrd", 0, 2)
    reports = tmp_path / "reports.csv"
    if problem == "csv without columns":
        _write_csv(reports, [["id", "text"], ["brain", REPORT]])
    elif problem == "binary csv":
        reports.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00garbage\x81\xff" * 10)  # a zip file (no UTF-16/32 byte-order mark)
    args = {
        "missing study": [tmp_path / "nope"],
        "empty study": [],
        "missing csv": ["--reports", tmp_path / "nope.csv"],
        "csv without columns": ["--reports", reports],
        "binary csv": ["--reports", reports],
        "bad shard": ["--shard", "0/2"],
    }[problem]
    target = args.pop(0) if problem == "missing study" else study
    code, stdout, stderr = _tmca(["batch", target, "--output", tmp_path / "out", "--model", tiny_model_dir, *args])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tmca batch: error:"), stderr
    expected = {"missing study": "not found", "empty study": "no cases", "missing csv": "not found",
                "csv without columns": "columns case and report", "binary csv": "UTF-8", "bad shard": "I/N"}  # fmt: skip
    assert expected[problem] in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["the study folder", "a folder of study images", "a DICOM series folder"])
def test_outputs_among_the_study_inputs_are_refused_before_any_work(tmp_path, tiny_model_dir, where):
    study = tmp_path / "study"
    _slab(study / "brain.nrrd", 0, 2)
    _slab(study / "more" / "brain2.nrrd", 0, 2)
    _dicom(pydicom_test_file("CT_small.dcm"), study / "dicom" / "CT_small.dcm")
    (study / "brain.txt").write_text(REPORT, encoding="utf-8")
    out = {"the study folder": study, "a folder of study images": study / "more", "a DICOM series folder": study / "dicom"}[where]
    before = _files(tmp_path)
    code, _, stderr = _tmca(["batch", study, "--output", out, "--model", tiny_model_dir, "--probability"])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tmca batch: error: output folder"), stderr
    assert ("is the study folder" if where == "the study folder" else "holds input images of the study") in lines[0]
    assert _files(tmp_path) == before


@pytest.mark.parametrize("encoding, bom", [("latin-1", b""), ("utf-16-le", b"\xff\xfe")])
def test_reports_csv_and_sidecars_in_latin_1_and_utf_16_are_read(tmp_path, tiny_model_dir, encoding, bom):
    study = tmp_path / "study"
    _slab(study / "brain.nrrd", 0, 2)
    _slab(study / "other.nrrd", 2, 2)
    (study / "other.txt").write_bytes(bom + "Lésion frontale gauche.".encode(encoding))
    reports = tmp_path / "reports.csv"
    reports.write_bytes(bom + "case,report\nbrain,Masse hépatique à droite.\n".encode(encoding))
    rows = run_batch(study, tmp_path / "out", reports=reports, model=tiny_model_dir)
    assert {row["case"]: (row["status"], row["report"]) for row in rows} == {
        "brain": ("ok", "Masse hépatique à droite."), "other": ("ok", "Lésion frontale gauche.")}
