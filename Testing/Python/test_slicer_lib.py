"""The module's Slicer-free helpers (TMCASegmenterLib): geometry, command lines, results, reports, dependencies."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from datapaths import real_data_file
from TMCASegmenterLib import batchfiles, commands, dependencies, geometry, paths, reports, results
from tmca.errors import TMCAError
from tmca.metrics import mask_statistics
from tmca.protocol import FindingRecord

MODULE_DIR = Path(__file__).resolve().parents[2] / "TMCASegmenter"
LIB_DIR = MODULE_DIR / "TMCASegmenterLib"


def test_the_lib_imports_neither_slicer_nor_torch():
    """Slicer loads the module before torch is installed: everything but slicer_bridge imports without them."""
    modules = sorted(p.stem for p in LIB_DIR.glob("*.py") if p.stem not in {"__init__", "slicer_bridge"})
    code = (f"import sys; from TMCASegmenterLib import {', '.join(modules)}; "
            "print(sorted(m for m in ('torch', 'slicer', 'qt', 'vtk', 'ctk') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(MODULE_DIR)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("name", ["brain1_image.nrrd", "breast1_image.nrrd"])
def test_ijk_to_ras_matches_simpleitk_on_real_mri(name):
    image = sitk.ReadImage(str(real_data_file(name)))
    assert any(abs(v) > 1 for v in image.GetOrigin()) and len(set(np.round(image.GetSpacing(), 3))) > 1
    matrix = geometry.ijk_to_ras_matrix(image)
    rng = np.random.default_rng(0)
    for index in rng.uniform(0, np.array(image.GetSize()) - 1, size=(20, 3)).tolist() + [[0, 0, 0]]:
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint(index))
        ras = matrix @ np.append(index, 1.0)
        assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
    origin, spacing, direction = geometry.geometry_from_ijk_to_ras(matrix)
    assert np.allclose(origin, image.GetOrigin()) and np.allclose(spacing, image.GetSpacing())
    assert np.allclose(direction, image.GetDirection())


def test_ijk_to_ras_round_trips_an_oblique_anisotropic_grid():
    image = sitk.Image(5, 6, 7, sitk.sitkUInt8)
    image.SetDirection(sitk.VersorTransform((0.2, 0.5, 0.8), 0.7).GetMatrix())
    image.SetOrigin((-12.5, 40.0, 3.25))
    image.SetSpacing((0.7, 1.1, 3.0))
    matrix = geometry.ijk_to_ras_matrix(image)
    lps = np.array(image.TransformIndexToPhysicalPoint((4, 5, 6)))
    assert np.allclose((matrix @ [4, 5, 6, 1])[:3], lps * [-1, -1, 1])
    assert geometry.same_geometry(geometry.ijk_to_ras_from_geometry(*geometry.geometry_from_ijk_to_ras(matrix)), matrix)
    assert not geometry.same_geometry(matrix, geometry.ijk_to_ras_from_geometry((0, 0, 0), (1, 1, 1), np.eye(3).ravel()))


def test_resources_are_found_from_the_source_tree_and_from_a_build_tree(tmp_path):
    assert Path(paths.resource_dir(MODULE_DIR)) == MODULE_DIR.parent / "Resources"
    built = tmp_path / "qt-scripted-modules"
    (built / "Resources" / "UI").mkdir(parents=True)
    assert Path(paths.resource_dir(built)) == built / "Resources"


# --------------------------------------------------------------------------- command lines


def test_devices_are_the_engines_and_include_mps():
    from tmca.choices import DEVICES as engine_devices

    assert commands.DEVICES == tuple(engine_devices) and "mps" in commands.DEVICES
    assert commands.segment_command("py", "in", "r", "o.seg.nrrd", device="mps")[-3:] == ["0.5", "--progress", "json"]


def test_segment_command_line():
    args = commands.segment_command("py", "in.nrrd", "r.txt", "out.seg.nrrd", "p.nrrd", device="cpu", threshold=0.35)
    assert args == ["py", "-m", "tmca.cli", "segment", "in.nrrd", "--report-file", "r.txt", "--output", "out.seg.nrrd",
                    "--probability", "p.nrrd", "--device", "cpu", "--threshold", "0.35", "--progress", "json"]


def test_segment_command_with_model_and_one_segment(tmp_path):
    args = commands.segment_command("py", "in", "r", "o.seg.nrrd", model=tmp_path, split_findings=False)
    assert args[args.index("--model") + 1] == str(tmp_path)
    assert args[-1] == "--no-split-findings" and "--probability" not in args


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "gpu"}, "unknown device"),
    ({"threshold": 0.0}, "between 0 and 1"),
    ({"threshold": 1.0}, "between 0 and 1"),
    ({"model": "/nonexistent/model"}, "does not exist"),
])
def test_segment_command_rejects_bad_options(kwargs, message):
    with pytest.raises(TMCAError, match=message):
        commands.segment_command("py", "in", "r", "o.seg.nrrd", **kwargs)


def test_segment_and_batch_commands_are_accepted_by_the_engine_cli(tmp_path):
    from tmca.cli import build_parser

    parser = build_parser()
    args = commands.segment_command("py", "in.nrrd", "r.txt", "o.seg.nrrd", "p.nrrd", model=tmp_path, split_findings=False,
                                    device="mps")
    parsed = parser.parse_args(args[3:])
    assert (parsed.command, parsed.progress, parsed.split_findings, parsed.threshold, parsed.device) == (
        "segment", "json", False, 0.5, "mps")
    assert parser.parse_args(commands.batch_command("py", "study", "out", "r.csv")[3:]).command == "batch"


def test_batch_command_line(tmp_path):
    args = commands.batch_command("py", "study", "out", tmp_path / "reports.csv", device="cuda", threshold=0.4)
    assert args == ["py", "-m", "tmca.cli", "batch", "study", "--output", "out", "--reports", str(tmp_path / "reports.csv"),
                    "--device", "cuda", "--threshold", "0.4", "--progress", "json"]
    assert "--probability" in commands.batch_command("py", "s", "o", probability=True)


def test_synth_command_line():
    assert commands.synth_command("py", "out") == ["py", "-m", "tmca.cli", "synth", "--output", "out", "--cases", "1",
                                                   "--modality", "ct", "--dims", "3", "--seed", "3"]


def test_child_environment_puts_the_module_folder_first(tmp_path):
    env = commands.child_environment(tmp_path, {"PYTHONPATH": os.pathsep.join(["/a", str(tmp_path)]), "X": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/a"]
    assert env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_python_slicer_is_found_on_path_or_beside_slicer(tmp_path):
    assert commands.python_executable(lambda name: "/slicer/bin/PythonSlicer") == "/slicer/bin/PythonSlicer"
    beside = tmp_path / "bin" / "PythonSlicer"
    beside.parent.mkdir()
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    assert commands.python_executable(lambda name: None, [beside.parent]) == str(beside)


def test_without_python_slicer_the_engine_does_not_start_with_the_application_itself(tmp_path):
    """Inside Slicer sys.executable is the application: no fallback to it, a message that says what is missing."""
    with pytest.raises(TMCAError, match="PythonSlicer") as error:
        commands.python_executable(lambda name: None, [tmp_path])
    assert str(tmp_path) in str(error.value) and sys.executable not in str(error.value)


# --------------------------------------------------------------------------- results


def test_finding_table_rows_and_volume_format():
    findings = [FindingRecord("nodule, upper left lung", volume_ml=12.345, components=1),
                FindingRecord("tiny", volume_ml=0.001, components=1), FindingRecord("none")]
    assert results.finding_table_rows(findings) == [("nodule, upper left lung", "12.35", "1"), ("tiny", "<0.01", "1"),
                                                    ("none", "0.00", "0")]


def test_probability_channels_and_thresholding():
    scalar = np.random.default_rng(1).random((4, 5, 6), dtype=np.float32)
    assert results.probability_channels(scalar, 1).shape == (1, 4, 5, 6)
    vector = np.stack([scalar, 1 - scalar], axis=-1)
    channels = results.probability_channels(vector, 2)
    assert channels.shape == (2, 4, 5, 6) and np.array_equal(channels[1], 1 - scalar)
    mask = results.threshold_probability(channels[0], 0.5)
    assert mask.dtype == np.uint8 and np.array_equal(mask, (scalar >= 0.5).astype(np.uint8))
    with pytest.raises(TMCAError, match="3 findings"):
        results.probability_channels(vector, 3)
    with pytest.raises(TMCAError):
        results.probability_channels(np.zeros((2, 2)))


def test_finding_statistics_follow_the_mask():
    mask = np.zeros((4, 10, 10), dtype=np.uint8)
    mask[1, 1:3, 1:3] = 1
    mask[2, 6:9, 6:9] = 1
    assert mask_statistics(mask, voxel_volume_mm3=2.0) == (13, 0.026, 2)
    finding = results.update_finding_statistics(FindingRecord("x", segment_id="Segment_1", volume_ml=9.0), mask, 2.0)
    assert (finding.name, finding.segment_id, finding.voxels, finding.components) == ("x", "Segment_1", 13, 2)


def test_a_threshold_moved_during_a_run_is_applied_when_it_ends():
    shown = results.ShownThreshold(0.5)
    assert shown.pending(0.5, running=False) is None
    assert shown.pending(0.7, running=True) is None  # the run's segments are made at 0.5; wait
    shown.shown(0.5)  # the run ended: its segments are on screen
    assert shown.pending(0.7, running=False) == 0.7
    shown.shown(0.7)
    assert shown.pending(0.7, running=False) is None


def test_a_threshold_moved_while_idle_is_applied_at_once():
    shown = results.ShownThreshold(0.5)
    assert shown.pending(0.3, running=False) == 0.3


# --------------------------------------------------------------------------- reports and batch files


def test_recent_reports():
    recent = reports.remember_report(["b", "a"], " a ")
    assert recent == ["a", "b"]
    assert reports.remember_report(recent, "   ") == ["a", "b"]
    assert len(reports.remember_report([str(i) for i in range(20)], "new", limit=5)) == 5
    assert reports.elide("one\ntwo   three", 9) == "one two \u2026"


def test_reports_csv_and_batch_summary(tmp_path):
    path = batchfiles.write_reports_csv({"case1": "two areas, lower left and lower right lung", "c2": 'a "quoted", text'},
                                        tmp_path / "reports.csv")
    with open(path, newline="", encoding="utf-8") as stream:
        assert list(csv.DictReader(stream)) == [{"case": "case1", "report": "two areas, lower left and lower right lung"},
                                                {"case": "c2", "report": 'a "quoted", text'}]
    rows = [{"case": "case1", "status": "ok"}]
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    assert batchfiles.read_batch_summary(tmp_path / "summary.json") == rows
    (tmp_path / "wrapped.json").write_text(json.dumps({"rows": rows}))
    assert batchfiles.read_batch_summary(tmp_path / "wrapped.json") == rows
    with pytest.raises(TMCAError, match="was not written"):
        batchfiles.read_batch_summary(tmp_path / "missing.json")


# --------------------------------------------------------------------------- dependencies


def _installed(versions):
    def lookup(name):
        if name not in versions:
            raise PackageNotFoundError(name)
        return versions[name]
    return lookup


def test_requirements_reading_and_checking(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n\nmonai==1.6.1  # pinned\n-c constraints.txt\nnumpy>=1.24\nabsent-pkg\n")
    lines = dependencies.read_requirements(path)
    assert lines == ["monai==1.6.1", "numpy>=1.24", "absent-pkg"]
    assert dependencies.missing_requirements(lines, _installed({"monai": "1.5.0", "numpy": "2.4.6"})) == [
        "monai==1.6.1", "absent-pkg"]


def test_missing_engine_packages_name_torch_first(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("monai==1.6.1\n")
    installed = _installed({"monai": "1.6.1"})
    assert dependencies.missing_engine_packages(path, installed, torch_present=lambda: True) == []
    assert dependencies.missing_engine_packages(path, installed, torch_present=lambda: False) == ["torch"]
    assert dependencies.missing_engine_packages(path, _installed({}), torch_present=lambda: False) == ["torch", "monai==1.6.1"]


def test_the_installed_torch_is_pinned_as_a_pip_constraint(tmp_path):
    path = dependencies.write_torch_constraint(tmp_path / "constraints.txt", _installed({"torch": "2.13.0+cu128"}))
    assert path.read_text(encoding="utf-8") == "torch==2.13.0+cu128\n"
    assert dependencies.pip_install_arguments(["monai==1.6.1", "transformers==5.24.0"], path) == [
        "monai==1.6.1", "transformers==5.24.0", "-c", str(path)]
    assert dependencies.write_torch_constraint(tmp_path / "none.txt", _installed({})) is None
    assert dependencies.pip_install_arguments(["monai==1.6.1"], None) == ["monai==1.6.1"]


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A minimal pure-Python wheel (metadata only), enough for pip's resolver."""
    import zipfile

    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{info}/METADATA", metadata)
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


def test_with_the_constraint_pip_cannot_replace_the_installed_torch(tmp_path):
    """A package that wants a newer torch than the installed one: pip would replace torch, unless constrained.

    The machine's own pip configuration (files and PIP_* variables) is left out.
    """
    path = dependencies.write_torch_constraint(tmp_path / "constraints.txt")
    assert path is not None
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "torch", "999.0")
    _wheel(wheels, "wants_new_torch", "1.0", ("torch>=999",))
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(wheels), "wants_new_torch"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    unconstrained = subprocess.run(pip, capture_output=True, text=True, env=env)
    assert unconstrained.returncode == 0 and "torch-999.0" in unconstrained.stdout, unconstrained.stdout + unconstrained.stderr
    constrained = subprocess.run(pip + dependencies.pip_install_arguments([], path), capture_output=True, text=True, env=env)
    assert constrained.returncode != 0 and "torch-999.0" not in constrained.stdout


def test_rethresholding_recomputes_the_report_checks():
    ijk_to_ras = geometry.ijk_to_ras_from_geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3).ravel())  # +i is patient left
    grid = geometry.image_on_grid(np.zeros((20, 20, 20), np.uint8), ijk_to_ras)
    two_on_the_right = np.zeros((20, 20, 20), np.uint8)
    two_on_the_right[8:12, 2:5, 2:5] = two_on_the_right[8:12, 12:15, 2:5] = 1
    one_on_the_left = np.zeros_like(two_on_the_right)
    one_on_the_left[8:12, 8:12, 15:18] = 1
    finding = FindingRecord("nodules", "Two nodules in the right lung.", segment_id="Segment_1")
    statuses = lambda f: {c["name"]: c["status"] for c in f.checks}  # noqa: E731
    first = results.update_finding_statistics(finding, two_on_the_right, 1.0, grid)
    assert statuses(first)["count"] == "agree" and statuses(first)["side"] == "agree"
    second = results.update_finding_statistics(first, one_on_the_left, 1.0, grid)
    assert statuses(second)["count"] == "disagree" and statuses(second)["side"] == "disagree"
    assert results.update_finding_statistics(first, one_on_the_left, 1.0).checks == first.checks  # no grid: left as they were
