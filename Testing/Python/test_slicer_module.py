"""The Slicer module without Slicer: its .ui, parameter node, build files and pure helpers.

TMCASegmenter.py imports slicer, so it is parsed with ``ast`` here, never imported. The pure
helpers of ``tmca.slicer_support`` run for real, including a background ``tmca segment`` run.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import textwrap
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from datapaths import real_data_file
from tmca import slicer_support as support
from tmca.errors import TMCAError
from tmca.metrics import dice, mask_statistics

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "TMCASegmenter"
MODULE_SCRIPT = MODULE_DIR / "TMCASegmenter.py"
UI_FILE = MODULE_DIR.parent / "Resources" / "UI" / "TMCASegmenter.ui"
SCHEMA_V101_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                          "build_subdirectory", "enabled", "tier"}

# Widget classes Slicer's parameterNodeWrapper can bind, per parameter type
# (Slicer/Slicer Base/Python/slicer/parameterNodeWrapper/guiConnectors.py).
BINDABLE_WIDGETS = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSlider", "QSpinBox", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "QComboBox"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
}


# --------------------------------------------------------------------------- parsing helpers


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_SCRIPT.read_text(encoding="utf-8"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == name)


def _parameter_fields() -> dict[str, tuple[str, set[str]]]:
    """Field name -> (base type name, names of the annotations) of TMCASegmenterParameterNode."""
    node = _class(_module_tree(), "TMCASegmenterParameterNode")
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)
    fields = {}
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign):
            annotation = statement.annotation
            if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
                base, *extras = annotation.slice.elts
                fields[statement.target.id] = (ast.unparse(base), {ast.unparse(e.func) for e in extras})
            else:
                fields[statement.target.id] = (ast.unparse(annotation), set())
    return fields


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def _ui_names_used_by_module() -> set[str]:
    names = set()
    for node in ast.walk(_module_tree()):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    lines = (line.split("#", 1)[0] for line in match.group(1).splitlines())
    return [item.replace("${MODULE_NAME}", "TMCASegmenter") for line in lines for item in line.split()]


def _cmake_extension_fields() -> dict[str, str]:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'set\(EXTENSION_(\w+)\s+"([^"]*)"\)', text))


def _s4ext_fields() -> dict[str, str]:
    fields = {}
    for line in (REPO / "TMCASegmenter.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key.lower()] = value.strip()
    return fields


def _catalog_entry() -> dict:
    return json.loads((REPO / "TMCASegmenter.json").read_text(encoding="utf-8"))


def _files_under(folder: Path, suffix: str | None = None, exclude_suffix: str | None = None) -> set[str]:
    found = set()
    for path in folder.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        if (suffix and path.suffix != suffix) or (exclude_suffix and path.suffix == exclude_suffix):
            continue
        found.add(path.relative_to(MODULE_DIR).as_posix())
    return found


# --------------------------------------------------------------------------- .ui and parameter node


def test_ui_has_every_widget_the_module_uses():
    layouts = {layout.get("name") for layout in ET.parse(UI_FILE).getroot().iter("layout")}
    missing = _ui_names_used_by_module() - set(_ui_widgets()) - layouts
    assert not missing, f"TMCASegmenter.py uses self.ui names missing from {UI_FILE.name}: {sorted(missing)}"


def test_ui_top_level_is_a_mrml_widget_that_passes_the_scene_to_node_selectors():
    root = ET.parse(UI_FILE).getroot()
    assert root.find("widget").get("class") == "qMRMLWidget"
    node_selectors = {name for name, w in _ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    receivers = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert node_selectors and node_selectors <= receivers
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in _ui_widgets().values()}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= custom


def test_every_slicer_parameter_name_is_a_bindable_parameter_node_field():
    fields = _parameter_fields()
    for name, widget in _ui_widgets().items():
        parameter = widget.findtext("property[@name='SlicerParameterName']/string")
        if parameter is None:
            continue
        assert parameter in fields, f"widget {name} is bound to unknown parameter {parameter!r}"
        base, annotations = fields[parameter]
        kind = "node" if base.startswith("vtkMRML") else base
        assert widget.get("class") in BINDABLE_WIDGETS[kind], f"{name} ({widget.get('class')}) cannot hold a {base}"
        if widget.get("class") == "QComboBox":
            assert "Choice" in annotations, f"{parameter} needs a Choice annotation for {name}"
        if widget.get("class") == "ctkSliderWidget":
            assert "WithinRange" in annotations, f"{parameter} must be bounded for {name}"


def test_parameter_node_has_the_specified_fields():
    fields = _parameter_fields()
    assert {name: base for name, (base, _) in fields.items()} == {
        "inputVolume": "vtkMRMLScalarVolumeNode", "report": "str", "modelPath": "str", "device": "str",
        "splitFindings": "bool", "threshold": "float", "outputSegmentation": "vtkMRMLSegmentationNode",
    }
    bound = {w.findtext("property[@name='SlicerParameterName']/string") for w in _ui_widgets().values()} - {None}
    assert bound == set(fields) - {"modelPath"}  # modelPath follows the model chooser in code


def test_module_follows_the_scripted_module_template():
    tree = _module_tree()
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"TMCASegmenter", "TMCASegmenterWidget", "TMCASegmenterLogic", "TMCASegmenterTest"} <= classes
    logic = _class(tree, "TMCASegmenterLogic")
    methods = {f.name: f for f in logic.body if isinstance(f, ast.FunctionDef)}
    process_args = [a.arg for a in methods["process"].args.args[1:]]
    assert process_args[:9] == ["inputVolume", "report", "outputSegmentation", "model", "device", "threshold",
                                "splitFindings", "waitForCompletion", "progressCallback"]
    study_args = [a.arg for a in methods["processStudyFolder"].args.args[1:]]
    assert study_args[:7] == ["folder", "reports", "outputFolder", "model", "device", "threshold", "loadResults"]
    module_init = next(f for f in _class(tree, "TMCASegmenter").body if isinstance(f, ast.FunctionDef))
    assert "Segmentation" in ast.unparse(module_init)


def test_dependencies_are_only_installed_from_apply():
    callers = [node for node in ast.walk(_module_tree()) if isinstance(node, ast.FunctionDef)
               and "ensureDependencies" in ast.unparse(node)]
    assert [f.name for f in callers] == ["onApplyButton"]
    bridge = ast.parse((MODULE_DIR / "TMCASegmenterLib" / "slicer_bridge.py").read_text(encoding="utf-8"))
    top_level_imports = {ast.unparse(n) for n in bridge.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert not any("torch" in line or "PyTorchUtils" in line for line in top_level_imports)


def test_slicer_support_never_imports_slicer_qt_or_vtk():
    tree = ast.parse(Path(support.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"slicer", "qt", "vtk", "ctk", "torch"}


# --------------------------------------------------------------------------- build files


def test_cmake_lists_every_module_script_and_resource_on_disk():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed_scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    listed_resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    on_disk_scripts = {"TMCASegmenter.py"} | _files_under(MODULE_DIR / "TMCASegmenterLib", ".py") | _files_under(MODULE_DIR / "tmca", ".py")
    resources = MODULE_DIR.parent / "Resources"
    on_disk_resources = {p.relative_to(resources).as_posix() for p in resources.rglob("*") if p.is_file()}
    on_disk_resources = {r for r in on_disk_resources if not r.startswith("Screenshots/")}  # shown by URL, not shipped
    assert not _files_under(MODULE_DIR / "tmca", exclude_suffix=".py"), "the engine package holds only Python files"
    assert len(listed_scripts) == len(set(listed_scripts)) and len(listed_resources) == len(set(listed_resources))
    assert set(listed_scripts) == on_disk_scripts, (
        f"TMCASegmenter/CMakeLists.txt MODULE_PYTHON_SCRIPTS: add {sorted(on_disk_scripts - set(listed_scripts))}, "
        f"remove {sorted(set(listed_scripts) - on_disk_scripts)}")
    assert set(listed_resources) == on_disk_resources, (
        f"TMCASegmenter/CMakeLists.txt MODULE_PYTHON_RESOURCES: add {sorted(on_disk_resources - set(listed_resources))}, "
        f"remove {sorted(set(listed_resources) - on_disk_resources)}")


def test_cmake_registers_the_module_and_its_self_test():
    root = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    module = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(TMCASegmenter)" in root
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module
    assert "add_subdirectory(Python)" in (MODULE_DIR / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_extension_metadata_is_consistent():
    cmake, s4ext, entry = _cmake_extension_fields(), _s4ext_fields(), _catalog_entry()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert cmake[key] == s4ext[key.lower()], key
    assert cmake["DEPENDS"].split(";") == s4ext["depends"].split() == entry["build_dependencies"] == ["PyTorch"]
    assert entry["category"] == cmake["CATEGORY"] == "Segmentation"
    assert entry["scm_url"] == s4ext["scmurl"] and entry["scm_revision"] == s4ext["scmrevision"]
    assert entry.get("scm_type", "git") == s4ext["scm"]


def test_catalog_entry_follows_schema_v1_0_1():
    entry = _catalog_entry()
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert {"$schema", "category", "scm_url"} <= set(entry) <= SCHEMA_V101_PROPERTIES
    assert entry.get("tier", 5) in (1, 3, 5)
    assert all(isinstance(d, str) for d in entry["build_dependencies"])


def test_icon_and_screenshot_urls_point_at_files_in_the_repository():
    from PIL import Image

    cmake = _cmake_extension_fields()
    for url in [cmake["ICONURL"], *cmake["SCREENSHOTURLS"].split()]:
        relative = url.split("/main/", 1)[1]
        assert (REPO / relative).is_file(), f"{url} has no file {relative}"
    with Image.open(MODULE_DIR.parent / "Resources" / "Icons" / "TMCASegmenter.png") as icon:
        assert icon.size == (128, 128)


def test_requirements_match_pyproject_pins():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pins = dict(re.match(r"([A-Za-z0-9_.-]+)==(\S+)", d).groups() for d in pyproject["project"]["dependencies"])
    pins.update(re.match(r"([A-Za-z0-9_.-]+)==(\S+)", d).groups() for d in pyproject["project"]["optional-dependencies"]["dev"])
    lower = {name.lower(): version for name, version in pins.items()}
    requirements = support.read_requirements(MODULE_DIR.parent / "Resources" / "requirements.txt")
    names = {re.split(r"[=<>!~]", line)[0].lower() for line in requirements}
    assert "torch" not in names
    engine = {name.lower() for name in pins if name.lower() not in {"torch", "pytest", "pydicom-data"}}
    assert engine - {"psutil"} <= names <= engine
    for line in requirements:
        if "==" in line:
            name, version = line.split("==")
            assert lower[name.lower()] == version, line


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("name", ["brain1_image.nrrd", "breast1_image.nrrd"])
def test_ijk_to_ras_matches_simpleitk_on_real_mri(name):
    image = sitk.ReadImage(str(real_data_file(name)))
    assert any(abs(v) > 1 for v in image.GetOrigin()) and len(set(np.round(image.GetSpacing(), 3))) > 1
    matrix = support.ijk_to_ras_matrix(image)
    rng = np.random.default_rng(0)
    for index in rng.uniform(0, np.array(image.GetSize()) - 1, size=(20, 3)).tolist() + [[0, 0, 0]]:
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint(index))
        ras = matrix @ np.append(index, 1.0)
        assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
    origin, spacing, direction = support.geometry_from_ijk_to_ras(matrix)
    assert np.allclose(origin, image.GetOrigin()) and np.allclose(spacing, image.GetSpacing())
    assert np.allclose(direction, image.GetDirection())


def test_ijk_to_ras_round_trips_an_oblique_anisotropic_grid():
    image = sitk.Image(5, 6, 7, sitk.sitkUInt8)
    rotation = sitk.VersorTransform((0.2, 0.5, 0.8), 0.7).GetMatrix()
    image.SetDirection(rotation)
    image.SetOrigin((-12.5, 40.0, 3.25))
    image.SetSpacing((0.7, 1.1, 3.0))
    matrix = support.ijk_to_ras_matrix(image)
    lps = np.array(image.TransformIndexToPhysicalPoint((4, 5, 6)))
    assert np.allclose((matrix @ [4, 5, 6, 1])[:3], lps * [-1, -1, 1])
    assert support.same_geometry(support.ijk_to_ras_from_geometry(*support.geometry_from_ijk_to_ras(matrix)), matrix)
    assert not support.same_geometry(matrix, support.ijk_to_ras_from_geometry((0, 0, 0), (1, 1, 1), np.eye(3).ravel()))


def test_array_order_matches_slicer_and_simpleitk():
    array_ijk = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # [i, j, k]
    image = sitk.GetImageFromArray(support.to_slicer_array_order(array_ijk))
    assert image.GetSize() == (2, 3, 4)
    assert image[1, 2, 3] == array_ijk[1, 2, 3]
    vector = np.stack([array_ijk, -array_ijk], axis=-1)
    assert support.to_slicer_array_order(vector).shape == (4, 3, 2, 2)
    assert np.array_equal(support.from_slicer_array_order(support.to_slicer_array_order(vector)), vector)
    with pytest.raises(ValueError):
        support.to_slicer_array_order(np.zeros((2, 2)))


# --------------------------------------------------------------------------- command lines and protocol


def test_segment_command_line():
    args = support.segment_command("py", "in.nrrd", "r.txt", "out.seg.nrrd", "p.nrrd", device="cpu", threshold=0.35)
    assert args == ["py", "-m", "tmca.cli", "segment", "in.nrrd", "--report-file", "r.txt", "--output", "out.seg.nrrd",
                    "--probability", "p.nrrd", "--device", "cpu", "--threshold", "0.35", "--progress", "json"]


def test_segment_command_with_model_and_one_segment(tmp_path):
    args = support.segment_command("py", "in", "r", "o.seg.nrrd", model=tmp_path, split_findings=False)
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
        support.segment_command("py", "in", "r", "o.seg.nrrd", **kwargs)


def test_segment_command_is_accepted_by_the_engine_cli(tmp_path):
    from tmca.cli import build_parser

    args = support.segment_command("py", "in.nrrd", "r.txt", "o.seg.nrrd", "p.nrrd", model=tmp_path, split_findings=False)
    parsed = build_parser().parse_args(args[3:])
    assert (parsed.command, parsed.progress, parsed.split_findings, parsed.threshold) == ("segment", "json", False, 0.5)


def test_batch_command_line(tmp_path):
    args = support.batch_command("py", "study", "out", tmp_path / "reports.csv", device="cuda", threshold=0.4)
    assert args == ["py", "-m", "tmca.cli", "batch", "study", "--output", "out", "--reports", str(tmp_path / "reports.csv"),
                    "--device", "cuda", "--threshold", "0.4", "--progress", "json"]
    assert "--probability" in support.batch_command("py", "s", "o", probability=True)


def test_batch_command_is_accepted_by_the_engine_cli():
    from tmca.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    if "batch" not in commands:
        pytest.skip("tmca batch is not built yet")
    parsed = parser.parse_args(support.batch_command("py", "study", "out", "r.csv")[3:])
    assert parsed.command == "batch"


def test_synth_command_line():
    assert support.synth_command("py", "out") == ["py", "-m", "tmca.cli", "synth", "--output", "out", "--cases", "1",
                                                  "--modality", "ct", "--dims", "3", "--seed", "3"]


def test_child_environment_puts_the_module_folder_first(tmp_path):
    env = support.child_environment(tmp_path, {"PYTHONPATH": os.pathsep.join(["/a", str(tmp_path)]), "X": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/a"]
    assert env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert support.python_executable(lambda name: "/slicer/bin/PythonSlicer") == "/slicer/bin/PythonSlicer"
    assert support.python_executable(lambda name: None) == sys.executable


# --------------------------------------------------------------------------- results and probability maps


def test_finding_table_rows_and_volume_format():
    findings = [support.Finding("nodule, upper left lung", volume_ml=12.345, components=1),
                support.Finding("tiny", volume_ml=0.001, components=1), support.Finding("none")]
    assert support.finding_table_rows(findings) == [("nodule, upper left lung", "12.35", "1"), ("tiny", "<0.01", "1"),
                                                   ("none", "0.00", "0")]


def test_findings_are_matched_to_result_segments():
    findings = [support.Finding("a", label_value=1), support.Finding("b", label_value=2), support.Finding("c", label_value=7)]
    segments = [("Segment_2", "b", 2), ("Segment_1", "renamed", 1), ("Segment_3", "other", 3)]
    assert support.match_findings_to_segments(findings, segments) == [(0, "Segment_1"), (1, "Segment_2"), (2, "Segment_3")]
    assert support.match_findings_to_segments(findings, []) == []


def test_probability_channels_and_thresholding():
    scalar = np.random.default_rng(1).random((4, 5, 6), dtype=np.float32)
    assert support.probability_channels(scalar, 1).shape == (1, 4, 5, 6)
    vector = np.stack([scalar, 1 - scalar], axis=-1)
    channels = support.probability_channels(vector, 2)
    assert channels.shape == (2, 4, 5, 6) and np.array_equal(channels[1], 1 - scalar)
    mask = support.threshold_probability(channels[0], 0.5)
    assert mask.dtype == np.uint8 and np.array_equal(mask, (scalar >= 0.5).astype(np.uint8))
    with pytest.raises(TMCAError, match="3 findings"):
        support.probability_channels(vector, 3)
    with pytest.raises(TMCAError):
        support.probability_channels(np.zeros((2, 2)))


def test_mask_statistics_and_dice():
    mask = np.zeros((4, 10, 10), dtype=np.uint8)
    mask[1, 1:3, 1:3] = 1
    mask[2, 6:9, 6:9] = 1
    voxels, volume_ml, components = mask_statistics(mask, voxel_volume_mm3=2.0)
    assert (voxels, volume_ml, components) == (13, 0.026, 2)
    finding = support.update_finding_statistics(support.Finding("x", volume_ml=9.0), mask, 2.0)
    assert (finding.name, finding.voxels, finding.components) == ("x", 13, 2)
    assert dice(mask, mask) == 1.0 and dice(mask, np.zeros_like(mask)) == 0.0
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # masks are 2D or 3D


def test_reports_csv_and_batch_summary(tmp_path):
    path = support.write_reports_csv({"case1": "two areas, lower left and lower right lung", "c2": 'a "quoted", text'},
                                     tmp_path / "reports.csv")
    import csv

    with open(path, newline="", encoding="utf-8") as stream:
        assert list(csv.DictReader(stream)) == [{"case": "case1", "report": "two areas, lower left and lower right lung"},
                                                {"case": "c2", "report": 'a "quoted", text'}]
    rows = [{"case": "case1", "status": "ok"}]
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    assert support.read_batch_summary(tmp_path / "summary.json") == rows
    (tmp_path / "wrapped.json").write_text(json.dumps({"rows": rows}))
    assert support.read_batch_summary(tmp_path / "wrapped.json") == rows
    with pytest.raises(TMCAError, match="was not written"):
        support.read_batch_summary(tmp_path / "missing.json")


def test_recent_reports():
    recent = support.remember_report(["b", "a"], " a ")
    assert recent == ["a", "b"]
    assert support.remember_report(recent, "   ") == ["a", "b"]
    assert len(support.remember_report([str(i) for i in range(20)], "new", limit=5)) == 5
    assert support.elide("one\ntwo   three", 9) == "one two \u2026"


def test_requirements_reading_and_checking(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n\nmonai==1.6.1  # pinned\n-c constraints.txt\nnumpy>=1.24\nabsent-pkg\n")
    lines = support.read_requirements(path)
    assert lines == ["monai==1.6.1", "numpy>=1.24", "absent-pkg"]
    from importlib.metadata import PackageNotFoundError

    def installed(name):
        versions = {"monai": "1.5.0", "numpy": "2.4.6"}
        if name not in versions:
            raise PackageNotFoundError(name)
        return versions[name]

    assert support.missing_requirements(lines, installed) == ["monai==1.6.1", "absent-pkg"]


# --------------------------------------------------------------------------- background process


def _child(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(script)]


def test_background_process_streams_progress_and_result(tmp_path):
    args = _child(tmp_path, """
        import json, sys, time
        for done in range(3):
            print(json.dumps({"event": "progress", "stage": "inference", "done": done, "total": 2}), flush=True)
            time.sleep(0.05)
        print("a library warning", flush=True)
        print("note on stderr", file=sys.stderr, flush=True)
        print(json.dumps({"event": "result", "output": "o.seg.nrrd", "probability": "p.nrrd",
                          "findings": [{"name": "a", "volume_ml": 1.5, "components": 1}]}), flush=True)
    """)
    temp_dir = tmp_path / "run"
    temp_dir.mkdir()
    process = support.BackgroundProcess(args, temp_dir=temp_dir).start()
    events: list = []
    assert process.wait(timeout=60, on_poll=events.extend) == 0
    assert [e.done for e in events if isinstance(e, support.Progress)] == [0, 1, 2]
    assert support.LogLine("a library warning") in events and support.LogLine("note on stderr", "stderr") in events
    assert process.result.findings[0].name == "a" and process.finished and not process.running
    outcome = process.outcome()
    assert outcome.ok and outcome.findings == process.result.findings
    process.cancel()  # a no-op once the process has exited: the results stay readable
    assert temp_dir.is_dir()
    process.cleanup()
    assert not temp_dir.exists()


def test_background_process_reports_the_engine_error(tmp_path):
    args = _child(tmp_path, """
        import sys
        print("tmca segment: error: input not found: scan.nrrd", file=sys.stderr)
        sys.exit(2)
    """)
    with support.BackgroundProcess(args) as process:
        assert process.wait(timeout=60) == 2
        assert process.error_message() == "input not found: scan.nrrd"
        assert process.outcome().error == "input not found: scan.nrrd"


def test_background_process_without_result_is_an_error(tmp_path):
    with support.BackgroundProcess(_child(tmp_path, "print('done')")) as process:
        process.wait(timeout=60)
        assert "without reporting a result" in process.outcome().error


def test_cancel_kills_the_child_and_its_grandchild_and_removes_the_temp_folder(tmp_path):
    psutil = pytest.importorskip("psutil")
    args = _child(tmp_path, """
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(f"grandchild {grandchild.pid}", flush=True)
        time.sleep(120)
    """)
    temp_dir = tmp_path / "run"
    temp_dir.mkdir()
    process = support.BackgroundProcess(args, temp_dir=temp_dir).start()
    grandchild_pid = None
    deadline = time.monotonic() + 30
    while grandchild_pid is None and time.monotonic() < deadline:
        for event in process.poll():
            if isinstance(event, support.LogLine) and event.text.startswith("grandchild "):
                grandchild_pid = int(event.text.split()[1])
        time.sleep(0.02)
    assert grandchild_pid is not None
    child_pid = process.pid
    started = time.monotonic()
    process.cancel(grace_seconds=2.0)
    assert time.monotonic() - started < 15
    for pid in (child_pid, grandchild_pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert process.cancelled and process.outcome().cancelled and process.outcome().error is None
    assert not temp_dir.exists()
    process.wait(timeout=10)
    assert process.finished


@pytest.mark.slow
def test_background_segment_run_gives_what_the_module_imports(tmp_path, tiny_model_dir):
    """The module's flow without Slicer: command line, child environment, progress, result files."""
    source = real_data_file("brain1_image.nrrd")
    report = tmp_path / "report.txt"
    report.write_text("Small nodule in the upper left lung. Large mass in the lower right lung.", encoding="utf-8")
    output, probability = tmp_path / "result.seg.nrrd", tmp_path / "probability.nrrd"
    args = support.segment_command(sys.executable, source, report, output, probability, model=tiny_model_dir,
                                   device="cpu", threshold=0.5)
    env = support.child_environment(MODULE_DIR, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    env["OMP_NUM_THREADS"] = "2"
    with support.BackgroundProcess(args, env=env) as process:
        events: list = []
        assert process.wait(timeout=600, on_poll=events.extend) == 0, list(process.stderr_tail)
    assert any(isinstance(e, support.Progress) for e in events)
    result = process.result
    assert Path(result.output) == output and Path(result.probability) == probability
    assert len(result.findings) == 2

    from tmca.segio import read_segmentation

    masks, specs, geometry = read_segmentation(output)
    image = sitk.ReadImage(str(probability))
    input_image = sitk.ReadImage(str(source))
    assert support.same_geometry(support.ijk_to_ras_matrix(image), support.ijk_to_ras_matrix(input_image))
    channels = support.probability_channels(sitk.GetArrayFromImage(image), len(result.findings))
    segments = [(f"Segment_{i}", spec.name, i + 1) for i, spec in enumerate(specs)]
    pairs = support.match_findings_to_segments(result.findings, segments)
    assert [index for index, _ in pairs] == [0, 1]
    for finding_index, segment_id in pairs:
        mask = masks[int(segment_id.split("_")[1])]
        assert np.array_equal(support.threshold_probability(channels[finding_index], 0.5), mask)


def test_resources_are_found_from_the_source_tree_and_from_a_build_tree(tmp_path):
    assert Path(support.resource_dir(MODULE_DIR)) == MODULE_DIR.parent / "Resources"
    built = tmp_path / "qt-scripted-modules"
    (built / "Resources" / "UI").mkdir(parents=True)
    assert Path(support.resource_dir(built)) == built / "Resources"
