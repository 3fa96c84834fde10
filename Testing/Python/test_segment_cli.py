"""``tmca segment``: outputs Slicer can read, the JSON progress stream, and every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from datapaths import real_data_file
from tmca.cli import main

REPORT = "Small nodule in the upper left lung. Large mass in the lower right lung."


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _volume(tmp_path: Path, array: np.ndarray, name: str = "scan.nrrd") -> Path:
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _engine_command(image: Path, out: Path, model: Path, *extra: str) -> list[str]:
    """``tmca segment`` as a separate process, with JSON progress."""
    return [sys.executable, "-m", "tmca.cli", "segment", str(image), "--report", REPORT, "--output", str(out),
            "--model", str(model), "--progress", "json", *extra]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name or p.suffix == ".tmp")


def test_segmentation_file_matches_the_real_mri_in_slicerio_and_simpleitk(tmp_path, tiny_model_dir, capsys):
    source_path = real_data_file("brain1_image.nrrd")
    out = tmp_path / "brain.seg.nrrd"
    prob = tmp_path / "brain-prob.nrrd"
    code, stdout, stderr = _run(
        [
            "segment", str(source_path), "--report", REPORT, "--output", str(out), "--probability", str(prob),
            "--model", str(tiny_model_dir), "--threshold", "0.5",
        ],
        capsys,
    )
    assert code == 0, stderr
    source = sitk.ReadImage(str(source_path))
    segmentation = slicerio.read_segmentation(str(out))
    names = [segment["name"] for segment in segmentation["segments"]]
    assert names == ["small nodule, upper left lung", "large mass, lower right lung"]
    written = sitk.ReadImage(str(out))
    assert written.GetSize()[:3] == source.GetSize()
    assert np.allclose(written.GetSpacing()[:3], source.GetSpacing())
    assert np.allclose(written.GetOrigin()[:3], source.GetOrigin())
    probability = sitk.ReadImage(str(prob))
    assert probability.GetSize() == source.GetSize() and probability.GetNumberOfComponentsPerPixel() == 2
    assert np.allclose(probability.GetOrigin(), source.GetOrigin())
    assert "wrote" in stdout and _leftovers(tmp_path) == []


def test_json_progress_stream_from_a_separate_process(tmp_path, tiny_model_dir):
    image = _volume(tmp_path, np.random.default_rng(0).random((20, 32, 32), dtype=np.float32))
    out = tmp_path / "out.seg.nrrd"
    result = subprocess.run(_engine_command(image, out, tiny_model_dir, "--batch-size", "4"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert all({"stage", "done", "total"} <= set(e) for e in progress)
    segmenting = [e for e in progress if e["stage"] == "segmenting"]
    assert [e["done"] for e in segmenting] == [0, 4, 8, 12, 16, 20] and segmenting[-1]["total"] == 20
    final = events[-1]
    assert final["event"] == "result" and final["output"] == str(out)
    assert [f["name"] for f in final["findings"]] == ["small nodule, upper left lung", "large mass, lower right lung"]
    assert {"name", "text", "label_value", "voxels", "volume_ml", "components"} <= set(final["findings"][0])


def test_sigterm_stops_with_no_output_file(tmp_path, tiny_model_dir):
    image = _volume(tmp_path, np.random.default_rng(0).random((400, 64, 64), dtype=np.float32))
    out = tmp_path / "out.seg.nrrd"
    process = subprocess.Popen(_engine_command(image, out, tiny_model_dir, "--batch-size", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if '"segmenting"' in line and '"done": 0' not in line:
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    assert not out.exists() and _leftovers(tmp_path) == []


def _expect_error(args: list[str], capsys, message: str, folder: Path) -> None:
    code, stdout, stderr = _run(args, capsys)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("tmca segment: error:"), stderr
    assert message in lines[-1]
    assert "Traceback" not in stderr
    assert not (folder / "out.seg.nrrd").exists() and _leftovers(folder) == []


def test_missing_input(tmp_path, tiny_model_dir, capsys):
    _expect_error(["segment", str(tmp_path / "nope.nii.gz"), "--report", REPORT, "--output", str(tmp_path / "out.seg.nrrd"),
                   "--model", str(tiny_model_dir)], capsys, "not found", tmp_path)


def test_unreadable_input(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"this is not an image")
    _expect_error(["segment", str(bad), "--report", REPORT, "--output", str(tmp_path / "out.seg.nrrd"), "--model", str(tiny_model_dir)],
                  capsys, "scan.nii.gz", tmp_path)


def test_4d_input(tmp_path, tiny_model_dir, capsys):
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.random.rand(4, 8, 8).astype(np.float32))] * 3)
    path = tmp_path / "series.nrrd"
    sitk.WriteImage(image, str(path))
    _expect_error(["segment", str(path), "--report", REPORT, "--output", str(tmp_path / "out.seg.nrrd"), "--model", str(tiny_model_dir)],
                  capsys, "4D", tmp_path)


def test_constant_input(tmp_path, tiny_model_dir, capsys):
    path = _volume(tmp_path, np.full((4, 16, 16), 7, dtype=np.float32))
    _expect_error(["segment", str(path), "--report", REPORT, "--output", str(tmp_path / "out.seg.nrrd"), "--model", str(tiny_model_dir)],
                  capsys, "constant", tmp_path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_and_inf_voxels(tmp_path, tiny_model_dir, capsys, bad_value):
    array = np.random.rand(4, 16, 16).astype(np.float32)
    array[1, 2, 3] = bad_value
    path = _volume(tmp_path, array)
    _expect_error(["segment", str(path), "--report", REPORT, "--output", str(tmp_path / "out.seg.nrrd"), "--model", str(tiny_model_dir)],
                  capsys, "NaN" if np.isnan(bad_value) else "nfinite", tmp_path)


def test_empty_report(tmp_path, tiny_model_dir, capsys):
    path = _volume(tmp_path, np.random.rand(4, 16, 16).astype(np.float32))
    report = tmp_path / "report.txt"
    report.write_text("  \n")
    _expect_error(["segment", str(path), "--report-file", str(report), "--output", str(tmp_path / "out.seg.nrrd"),
                   "--model", str(tiny_model_dir)], capsys, "empty report", tmp_path)


def test_long_report_warns_but_succeeds(tmp_path, tiny_model_dir, capsys):
    path = _volume(tmp_path, np.random.rand(4, 16, 16).astype(np.float32))
    long_report = "Nodule in the upper left lung with " + "irregular spiculated margins " * 40
    code, _, stderr = _run(["segment", str(path), "--report", long_report, "--output", str(tmp_path / "out.seg.nrrd"),
                            "--model", str(tiny_model_dir)], capsys)
    assert code == 0 and "warning" in stderr and "longer than the text encoder" in stderr
    assert (tmp_path / "out.seg.nrrd").exists()


@pytest.mark.parametrize("option, value, message", [("--device", "quantum", "unknown device 'quantum'"),
                                                     ("--modality", "PET", "unknown modality 'PET'"),
                                                     ("--plane", "oblique", "unknown plane 'oblique'")])
def test_unknown_choice_is_a_usage_error_before_any_work(tmp_path, tiny_model_dir, capsys, option, value, message):
    path = _volume(tmp_path, np.random.rand(4, 16, 16).astype(np.float32))
    with pytest.raises(SystemExit) as stopped:
        main(["segment", str(path), "--report", REPORT, "--output", str(tmp_path / "out.seg.nrrd"), "--model", str(tiny_model_dir),
              option, value])
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"tmca segment: error: argument {option}: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nrrd"]


def test_dicom_modality_codes_and_any_case_are_accepted(tmp_path, tiny_model_dir, capsys):
    path = _volume(tmp_path, np.random.rand(4, 16, 16).astype(np.float32))
    out = tmp_path / "out.seg.nrrd"
    code, _, stderr = _run(["segment", str(path), "--report", REPORT, "--output", str(out), "--model", str(tiny_model_dir),
                            "--modality", "cr", "--plane", "Coronal"], capsys)
    assert code == 0, stderr and out.is_file()


def test_model_folder_missing_files_or_failing_hashes(tmp_path, tiny_model_dir, capsys):
    import shutil

    path = _volume(tmp_path, np.random.rand(4, 16, 16).astype(np.float32))
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:-100])
    args = ["segment", str(path), "--report", REPORT, "--output", str(tmp_path / "out.seg.nrrd"), "--model", str(broken)]
    _expect_error(args, capsys, "sha256", tmp_path)
    (broken / "config.json").unlink()
    _expect_error(args, capsys, "missing config.json", tmp_path)


def test_unwritable_output(tmp_path, tiny_model_dir, capsys):
    path = _volume(tmp_path, np.random.rand(4, 16, 16).astype(np.float32))
    _expect_error(["segment", str(path), "--report", REPORT, "--output", str(tmp_path / "no" / "such" / "out.seg.nrrd"),
                   "--model", str(tiny_model_dir)], capsys, "does not exist", tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _expect_error(["segment", str(path), "--report", REPORT, "--output", str(locked / "out.seg.nrrd"),
                       "--model", str(tiny_model_dir)], capsys, "not writable", tmp_path)


def test_existing_output_survives_a_failed_run(tmp_path, tiny_model_dir, capsys):
    path = _volume(tmp_path, np.full((4, 16, 16), 1, dtype=np.float32))
    out = tmp_path / "out.seg.nrrd"
    out.write_bytes(b"previous result")
    code, _, _ = _run(["segment", str(path), "--report", REPORT, "--output", str(out), "--model", str(tiny_model_dir)], capsys)
    assert code != 0 and out.read_bytes() == b"previous result"


def test_png_input_gives_a_single_slice_segmentation(tmp_path, tiny_model_dir, capsys):
    from PIL import Image

    rgb = (np.random.default_rng(1).random((48, 40, 3)) * 255).astype(np.uint8)
    png = tmp_path / "frame.png"
    Image.fromarray(rgb).save(png)
    out = tmp_path / "frame.seg.nrrd"
    code, _, stderr = _run(["segment", str(png), "--report", "Hypoechoic lesion.", "--output", str(out), "--model", str(tiny_model_dir)], capsys)
    assert code == 0, stderr
    written = slicerio.read_segmentation(str(out))
    assert written["voxels"].shape == (40, 48, 1)  # slicerio's (i, j, k) = (columns, rows, slices) of a 48-row, 40-column PNG


# --------------------------------------------------------------------------- outputs and file formats


def _segment(tmp_path: Path, tiny_model_dir: Path, image: Path, capsys, *extra: str, output: Path | None = None):
    output = output or tmp_path / "out.seg.nrrd"
    return _run(["segment", str(image), "--report", REPORT, "--output", str(output), "--model", str(tiny_model_dir), *extra], capsys)


@pytest.mark.parametrize("suffix, data_file", [(".nhdr", "p.raw.gz"), (".mhd", "p.zraw")])
def test_probability_map_with_a_detached_header(tmp_path, tiny_model_dir, capsys, suffix, data_file):
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    code, _, stderr = _segment(tmp_path, tiny_model_dir, image, capsys, "--probability", str(tmp_path / f"p{suffix}"))
    assert code == 0, stderr
    probability = sitk.ReadImage(str(tmp_path / f"p{suffix}"))
    assert probability.GetSize() == (16, 16, 4) and probability.GetNumberOfComponentsPerPixel() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["scan.nrrd", "out.seg.nrrd", f"p{suffix}", data_file])


@pytest.mark.parametrize("option", ["--probability", "--relevance"])
def test_a_map_with_an_unwritable_format_is_refused_before_any_work(tmp_path, tiny_model_dir, capsys, option):
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    missing_model = tmp_path / "no-model"  # never loaded: the output is refused first
    code, _, stderr = _run(["segment", str(image), "--report", REPORT, "--output", str(tmp_path / "out.seg.nrrd"),
                            "--model", str(missing_model), option, str(tmp_path / "p.png")], capsys)
    assert code == 2 and "must end with .nii.gz or .nii or .nrrd or .nhdr or .mha or .mhd" in stderr.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nrrd"]


def _refused(tmp_path: Path, args: list[str], capsys, message: str, before: dict[str, bytes]) -> None:
    code, _, stderr = _run(args, capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tmca segment: error:") and message in lines[0], stderr
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written or changed


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_output_that_is_the_input_is_refused(tmp_path, tiny_model_dir, capsys):
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    base = ["segment", str(image), "--report", REPORT, "--model", str(tiny_model_dir)]
    _refused(tmp_path, [*base, "--output", str(image)], capsys, "would overwrite the input", _snapshot(tmp_path))
    same_by_another_name = tmp_path / "sub" / ".." / "scan.nrrd"
    (tmp_path / "sub").mkdir()
    _refused(tmp_path, [*base, "--output", str(tmp_path / "o.seg.nrrd"), "--probability", str(same_by_another_name)], capsys,
             "probability map", _snapshot(tmp_path))


def test_output_over_the_report_file_or_a_link_to_the_input_is_refused(tmp_path, tiny_model_dir, capsys):
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    report = tmp_path / "report.nrrd"  # an odd name, but a report file all the same
    report.write_text(REPORT, encoding="utf-8")
    base = ["segment", str(image), "--report-file", str(report), "--model", str(tiny_model_dir)]
    _refused(tmp_path, [*base, "--output", str(report)], capsys, f"would overwrite the input {report}", _snapshot(tmp_path))
    (tmp_path / "link.nrrd").symlink_to(image)
    _refused(tmp_path, [*base, "--output", str(tmp_path / "o.seg.nrrd"), "--relevance", str(tmp_path / "link.nrrd")], capsys,
             f"relevance map {tmp_path / 'link.nrrd'} would overwrite the input {image}", _snapshot(tmp_path))


def test_output_whose_data_file_is_the_inputs_data_file_is_refused(tmp_path, tiny_model_dir, capsys):
    array = np.random.default_rng(0).random((4, 16, 16), dtype=np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "x.nhdr"), useCompression=True)  # x.nhdr + x.raw.gz
    image = tmp_path / "scan.nhdr"
    (tmp_path / "x.nhdr").rename(image)  # its header still names x.raw.gz
    args = ["segment", str(image), "--report", REPORT, "--model", str(tiny_model_dir), "--output", str(tmp_path / "o.seg.nrrd"),
            "--probability", str(tmp_path / "x.nhdr")]  # writing x.nhdr writes x.raw.gz
    _refused(tmp_path, args, capsys, "would overwrite the input", _snapshot(tmp_path))


def test_output_inside_the_input_dicom_folder_is_refused(tmp_path, tiny_model_dir, capsys):
    from datapaths import pydicom_test_file

    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "CT_small.dcm").write_bytes(pydicom_test_file("CT_small.dcm").read_bytes())
    args = ["segment", str(folder), "--report", REPORT, "--model", str(tiny_model_dir), "--output", str(folder / "ct.seg.nrrd")]
    _refused(tmp_path, args, capsys, "inside the input DICOM folder", _snapshot(tmp_path))


@pytest.mark.parametrize("outputs, message", [
    (["--output", "a.seg.nrrd", "--probability", "a.seg.nrrd"], "the probability map and the output are the same file"),
    (["--output", "a.seg.nrrd", "--probability", "p.nrrd", "--relevance", "p.nrrd"], "the relevance map and the probability map"),
])
def test_two_outputs_in_one_file_are_refused(tmp_path, tiny_model_dir, capsys, outputs, message):
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    paths = [value if value.startswith("--") else str(tmp_path / value) for value in outputs]
    args = ["segment", str(image), "--report", REPORT, "--model", str(tiny_model_dir), *paths]
    _refused(tmp_path, args, capsys, message, _snapshot(tmp_path))


# --------------------------------------------------------------------------- reports in other languages and encodings


def _result_texts(tmp_path: Path, tiny_model_dir: Path, image: Path, report_args: list[str], capsys) -> list[str]:
    code, stdout, stderr = _run(["segment", str(image), *report_args, "--output", str(tmp_path / "out.seg.nrrd"),
                                 "--model", str(tiny_model_dir), "--progress", "json"], capsys)
    assert code == 0, stderr
    return [finding["text"] for finding in json.loads(stdout.splitlines()[-1])["findings"]]


def test_a_report_without_latin_letters_is_refused_as_not_english_not_as_empty(tmp_path, tiny_model_dir, capsys):
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    code, _, stderr = _run(["segment", str(image), "--report", "左额叶肿块。", "--output", str(tmp_path / "out.seg.nrrd"),
                            "--model", str(tiny_model_dir)], capsys)
    assert code == 2 and "empty" not in stderr and "the model understands English reports" in stderr.splitlines()[-1]
    assert "左额叶肿块。" in stderr


def test_accents_and_other_scripts_reach_the_model_unchanged(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from tmca.networks.tmca_net import TMCANet

    seen = []
    encode = TMCANet.encode_text
    monkeypatch.setattr(TMCANet, "encode_text", lambda self, reports: (seen.extend(reports), encode(self, reports))[1])
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    report = "Lésion hypoéchogène du lobe gauche (左额叶肿块)."
    assert _result_texts(tmp_path, tiny_model_dir, image, ["--report", report], capsys) == [report]
    assert seen == [report]


@pytest.mark.parametrize("encoding, bom", [("latin-1", b""), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"), ("utf-8", b"\xef\xbb\xbf")])
def test_report_files_in_latin_1_and_utf_16_with_bom_are_read(tmp_path, tiny_model_dir, capsys, encoding, bom):
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    report = "Lésion hépatique à droite."
    path = tmp_path / "report.txt"
    path.write_bytes(bom + report.encode(encoding))
    assert _result_texts(tmp_path, tiny_model_dir, image, ["--report-file", str(path)], capsys) == [report]


def test_a_binary_report_file_is_refused(tmp_path, tiny_model_dir, capsys):
    image = _volume(tmp_path, np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    path = tmp_path / "report.txt"
    path.write_bytes(b"\x00\x01\x02PK\x03\x04")
    _expect_error(["segment", str(image), "--report-file", str(path), "--output", str(tmp_path / "out.seg.nrrd"),
                   "--model", str(tiny_model_dir)], capsys, "not a text file", tmp_path)
