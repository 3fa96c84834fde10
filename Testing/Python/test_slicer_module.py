"""The Slicer module without Slicer: its .ui, parameter node, build and packaging files.

TMCASegmenter.py is imported with stand-ins for slicer, qt and vtk (fake_slicer.py) to check its classes
and signatures; checks of what its methods call read its source with ``ast``. Its helpers in
TMCASegmenterLib run for real in test_slicer_lib.py, test_slicer_process.py, test_slicer_segments.py
and test_slicer_widgets.py.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import tomllib
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

from fake_slicer import slicer_module
from TMCASegmenterLib import commands, dependencies

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
    """Field name -> (base type name, annotation class names) of the imported TMCASegmenterParameterNode."""
    with slicer_module() as module:
        hints = typing.get_type_hints(module.TMCASegmenterParameterNode, include_extras=True)
    fields = {}
    for name, hint in hints.items():
        extras = set()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *metadata = typing.get_args(hint)
            extras = {type(m).__name__ for m in metadata}
        fields[name] = (hint.__name__, extras)
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


def _method(class_name: str, name: str) -> ast.FunctionDef:
    return next(f for f in _class(_module_tree(), class_name).body if isinstance(f, ast.FunctionDef) and f.name == name)


def _calls(node: ast.AST) -> set[str]:
    """Unparsed callees of every call under ``node`` (e.g. ``self.logic.discard``)."""
    return {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}


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
    assert bound == set(fields) - {"modelPath", "report"}  # both are synced in code


def test_module_follows_the_scripted_module_template():
    tree = _module_tree()
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"TMCASegmenter", "TMCASegmenterWidget", "TMCASegmenterLogic", "TMCASegmenterTest"} <= classes
    with slicer_module() as module:
        logic = module.TMCASegmenterLogic()
        process = inspect.signature(logic.process)
        study = inspect.signature(logic.processStudyFolder)
        parameters = module.TMCASegmenterParameterNode
        device_choice = typing.get_args(typing.get_type_hints(parameters, include_extras=True)["device"])[1]
    assert list(process.parameters)[:9] == ["inputVolume", "report", "outputSegmentation", "model", "device", "threshold",
                                            "splitFindings", "waitForCompletion", "progressCallback"]
    assert list(study.parameters)[:7] == ["folder", "reports", "outputFolder", "model", "device", "threshold", "loadResults"]
    assert process.parameters["device"].default == parameters.device == "auto"
    assert device_choice.choices == list(commands.DEVICES) and "mps" in device_choice.choices
    assert process.parameters["threshold"].default == parameters.threshold == 0.5
    module_init = next(f for f in _class(tree, "TMCASegmenter").body if isinstance(f, ast.FunctionDef))
    assert "Segmentation" in ast.unparse(module_init)


def test_dependencies_are_only_installed_from_apply():
    callers = [node for node in ast.walk(_module_tree()) if isinstance(node, ast.FunctionDef)
               and "ensureDependencies" in ast.unparse(node)]
    assert [f.name for f in callers] == ["onApplyButton"]
    bridge = ast.parse((MODULE_DIR / "TMCASegmenterLib" / "slicer_bridge.py").read_text(encoding="utf-8"))
    top_level_imports = {ast.unparse(n) for n in bridge.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert not any("torch" in line or "PyTorchUtils" in line for line in top_level_imports)


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
    requirements = dependencies.read_requirements(MODULE_DIR.parent / "Resources" / "requirements.txt")
    names = {re.split(r"[=<>!~]", line)[0].lower() for line in requirements}
    assert "torch" not in names
    engine = {name.lower() for name in pins if name.lower() not in {"torch", "pytest", "pydicom-data", "pyqt5"}}
    assert engine - {"psutil"} <= names <= engine
    for line in requirements:
        if "==" in line:
            name, version = line.split("==")
            assert lower[name.lower()] == version, line




# --------------------------------------------------------------------------- issue 12: the panel as clinicians use it


def test_the_report_box_is_synced_by_hand_not_by_the_wrapper():
    """Item 1: the wrapper's QTextEdit connector rewrites the box on every change (typed text comes out reversed)."""
    report = _ui_widgets()["reportTextEdit"]
    assert report.find("property[@name='SlicerParameterName']") is None
    setup = ast.unparse(_method("TMCASegmenterWidget", "setup"))
    assert "widgets.PlainTextSync(self.ui.reportTextEdit, self._storeReport)" in setup
    assert "self._reportSync.show(self._parameterNode.report)" in ast.unparse(_method("TMCASegmenterWidget", "_onParameterNodeModified"))


def test_results_are_imported_by_segment_id_under_the_volumes_transform():
    """Items 2 and 3 and #10: the import goes through TMCASegmenterLib.segments with Slicer's own array functions."""
    importer = _method("TMCASegmenterLogic", "_importResult")
    assert "segments.import_findings" in _calls(importer)
    assert "slicer.util.arrayFromSegmentBinaryLabelmap" in ast.unparse(importer)
    assert "slicer.util.updateSegmentBinaryLabelmapFromArray" in ast.unparse(importer)
    sources = [MODULE_SCRIPT.read_text(encoding="utf-8")] + [p.read_text(encoding="utf-8") for p in (MODULE_DIR / "TMCASegmenterLib").glob("*.py")]
    assert not any("match_findings_to_segments" in text or "slicer_support" in text for text in sources)
    assert not (MODULE_DIR / "tmca" / "slicer_support.py").exists()


def test_a_threshold_moved_during_a_run_is_applied_when_it_ends():
    """Item 4: the slider's value is remembered while the engine runs and applied on completion."""
    rethreshold = ast.unparse(_method("TMCASegmenterWidget", "_rethresholdIfChanged"))
    assert "self._shownThreshold.pending(parameters.threshold, self.logic.isRunning)" in rethreshold
    completed = _method("TMCASegmenterWidget", "_onCompleted")
    assert {"self._shownThreshold.shown", "self._rethresholdIfChanged"} <= _calls(completed)


def test_a_run_is_discarded_when_the_scene_closes_or_its_nodes_go():
    """Item 5: scene close discards the run; the finish checks the input and output nodes are still in the scene."""
    assert "self.logic.discard" in _calls(_method("TMCASegmenterWidget", "onSceneStartClose"))
    assert "self._run.process.discard" in _calls(_method("TMCASegmenterLogic", "discard"))
    finish = _method("TMCASegmenterLogic", "_finishRun")
    assert "self._removedNodes" in _calls(finish)
    assert "slicer.mrmlScene.IsNodePresent" in _calls(_method("TMCASegmenterLogic", "_removedNodes"))


def test_the_engine_runs_only_in_python_slicer():
    """Item 6: no sys.executable fallback inside Slicer."""
    for path in [MODULE_SCRIPT, *(MODULE_DIR / "TMCASegmenterLib").glob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        uses = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and ast.unparse(n) == "sys.executable"]
        assert not uses, path.name
    python = next(f for f in _module_tree().body if isinstance(f, ast.FunctionDef) and f.name == "enginePython")
    assert "commands.python_executable" in _calls(python)


def test_surfaces_are_built_only_when_show_3d_is_on():
    """Item 7: no closed surface on every import; Show 3D is not switched on by a finished run."""
    builders = [node.name for node in ast.walk(_module_tree()) if isinstance(node, ast.FunctionDef)
                and "CreateClosedSurfaceRepresentation" in _calls(node).__str__()]
    assert builders == ["show3D"]
    assert "if show" in ast.unparse(_method("TMCASegmenterLogic", "show3D"))
    assert "show3DButton.checked = True" not in ast.unparse(_method("TMCASegmenterWidget", "_onCompleted"))


def test_installing_packages_keeps_the_installed_torch():
    """Item 8: both install paths pass the torch constraints file."""
    bridge = (MODULE_DIR / "TMCASegmenterLib" / "slicer_bridge.py").read_text(encoding="utf-8")
    tree = ast.parse(bridge)
    ensure = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "ensurePythonPackages")
    text = ast.unparse(ensure)
    assert "dependencies.write_torch_constraint" in text
    assert "constraints=constraints" in text and "dependencies.pip_install_arguments(missing, constraints)" in text


def test_license_is_apache_2_0_as_pyproject_says():
    """Item 9: the Extensions Index refuses an extension without a LICENSE file."""
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"] == {"text": "Apache-2.0"}


def test_minimum_slicer_is_one_with_python_3_10_or_later():
    """Item 10: Slicer 5.10 ships Python 3.12 (5.8 and earlier: 3.9); no code for Slicer that cannot run the engine."""
    assert tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"] == ">=3.10"
    assert "setMasterVolumeNode" not in MODULE_SCRIPT.read_text(encoding="utf-8")
    root = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert root.startswith("cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)")  # Slicer's extension template
    assert re.search(r'if\(Slicer_REQUIRED_PYTHON_VERSION VERSION_LESS "3\.10"\)\s*message\(FATAL_ERROR', root)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "Slicer 5.2" not in readme and "Slicer 5.10 or later" in readme
    assert "Slicer 5.10" in MODULE_SCRIPT.read_text(encoding="utf-8")


def test_self_test_skips_when_the_engine_packages_are_missing():
    """Item 11: the extension build machines have no torch and install nothing in testing mode."""
    selfTest = _method("TMCASegmenterTest", "test_TMCASegmenter_synthetic_case")
    first = selfTest.body[1]  # after the docstring
    assert "dependencies.missing_engine_packages" in ast.unparse(first)
    check = selfTest.body[2]
    assert isinstance(check, ast.If) and "self.skipTest" in _calls(check)
    assert "assertFalse(missing" not in ast.unparse(selfTest)


def test_the_device_choice_is_the_engines_and_includes_mps():
    """#10: one list of devices; the parameter node's used to omit mps."""
    device = next(s for s in _class(_module_tree(), "TMCASegmenterParameterNode").body
                  if isinstance(s, ast.AnnAssign) and s.target.id == "device")
    assert ast.unparse(device.annotation) == "Annotated[str, Choice(list(commands.DEVICES))]"
    items = [i.findtext("property[@name='text']/string") for i in _ui_widgets()["deviceComboBox"].findall("item")]
    assert tuple(items) == commands.DEVICES and "mps" in items


def test_no_template_placeholder_docstrings():
    text = MODULE_SCRIPT.read_text(encoding="utf-8")
    for placeholder in ("Uses ScriptedLoadableModule", "This is the test case for your scripted module",
                        "Do whatever is needed", "This class should implement", "Run as few or as many tests"):
        assert placeholder not in text, placeholder


def test_architecture_map_lists_every_lib_module():
    architecture = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for path in (MODULE_DIR / "TMCASegmenterLib").glob("*.py"):
        if path.stem != "__init__":
            assert f"`{path.name}`" in architecture, path.name
    assert "slicer_support" not in architecture


# --------------------------------------------------------------------------- issue 14: Save correction


def test_save_correction_is_usable_from_the_console():
    save = _method("TMCASegmenterLogic", "saveCorrection")
    assert [a.arg for a in save.args.args[1:]] == ["inputVolume", "segmentation", "segmentId", "report", "dataset", "case"]
    assert [ast.unparse(d) for d in save.args.defaults] == ["None", "None"]
    many = _method("TMCASegmenterLogic", "saveCorrections")
    assert "corrections.save_corrections" in _calls(many)
    assert "slicer.util.arrayFromSegmentBinaryLabelmap" in _calls(many)
    assert "self.caseId" in _calls(many) and "self.siteDatasetFolder" in _calls(many)


def test_the_site_dataset_folder_is_a_setting_beside_slicers_settings():
    folder = ast.unparse(_method("TMCASegmenterLogic", "siteDatasetFolder"))
    assert "qt.QSettings().value(corrections.SITE_DATASET_SETTING)" in folder
    assert "corrections.default_dataset_folder(slicer.app.slicerUserSettingsFilePath)" in folder
    assert "qt.QSettings().setValue" in ast.unparse(_method("TMCASegmenterLogic", "setSiteDatasetFolder"))
    widgets = _ui_widgets()
    assert widgets["siteDatasetPathLineEdit"].get("class") == "ctkPathLineEdit"
    learn = widgets["learnCollapsibleButton"]
    assert learn.get("class") == "ctkCollapsibleButton"
    assert {w.get("name") for w in learn.iter("widget")} >= {"siteDatasetPathLineEdit", "siteDatasetCountLabel"}


def test_the_case_id_is_the_series_uid_slicer_stores_on_the_subject_hierarchy_item():
    """DICOMLib's DICOMPlugin.addSeriesInSubjectHierarchy stores SeriesInstanceUID as the item's UID named GetDICOMUIDName()."""
    case = ast.unparse(_method("TMCASegmenterLogic", "caseId"))
    assert "shNode.GetItemUID(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName())" in case
    assert "corrections.case_id" in case


def test_the_save_button_saves_the_selected_rows_and_shows_errors():
    handler = _method("TMCASegmenterWidget", "onSaveCorrection")
    assert {"corrections.chosen_corrections", "self.logic.saveCorrections", "slicer.util.tryWithErrorDisplay",
            "self._showSiteDatasetCount"} <= _calls(handler)
    assert any(isinstance(n, ast.ExceptHandler) and ast.unparse(n.type) == "TMCAError" for n in ast.walk(handler))
    assert "self.ui.statusLabel.text" in ast.unparse(handler)
    assert "saveCorrectionButton" in ast.unparse(_method("TMCASegmenterWidget", "_updateResultButtons"))


# --------------------------------------------------------------------------- issue 15: Export DICOM SEG


def test_export_dicom_seg_goes_through_the_plugin_or_the_engine():
    export = _method("TMCASegmenterLogic", "exportDicomSeg")
    assert {"self.dicomSegRoute", "self._exportWithSlicer", "dicom_export.write_with_engine",
            "slicer.util.arrayFromSegmentBinaryLabelmap"} <= _calls(export)
    assert "lookUpFiles=True" in ast.unparse(export)
    slicerWay = _method("TMCASegmenterLogic", "_exportWithSlicer")
    text = ast.unparse(slicerWay)
    # QuantitativeReporting's DICOMSegmentationPlugin, as Slicer's script repository calls it
    assert "slicer.modules.dicomPlugins[dicom_export.PLUGIN_NAME]()" in text
    assert {"plugin.examineForExport", "plugin.export"} <= _calls(slicerWay)
    assert "exportable.directory = folder" in text
    assert "GetDICOMReferencedInstanceUIDsAttributeName()" in text  # what examineForExport checks
    route = ast.unparse(_method("TMCASegmenterLogic", "dicomSegRoute"))
    assert "GetAttribute('DICOM.instanceUIDs')" in route and "dicom_export.export_route" in route


def test_the_export_button_says_why_it_is_disabled():
    buttons = ast.unparse(_method("TMCASegmenterWidget", "_updateResultButtons"))
    assert "self.ui.exportDicomSegButton.enabled = route.possible" in buttons
    assert "self.ui.exportDicomSegButton.toolTip = route.reason" in buttons
    assert "self.logic.exportDicomSeg" in _calls(_method("TMCASegmenterWidget", "onExportDicomSeg"))


def test_saving_and_exporting_need_the_last_results_scan_and_segmentation_selected():
    """The table's rows name segments of the last result: another selected scan must not be paired with them."""
    buttons = ast.unparse(_method("TMCASegmenterWidget", "_updateResultButtons"))
    assert "self.logic.isLastResult(inputVolume, outputSegmentation)" in buttons
    last = ast.unparse(_method("TMCASegmenterLogic", "isLastResult"))
    assert "inputVolume == self.lastInputVolume" in last and "segmentation == self.lastSegmentation" in last
    assert "slicer.mrmlScene.IsNodePresent" in last
    assert "self.isLastResult(inputVolume, segmentation)" in ast.unparse(_method("TMCASegmenterLogic", "dicomSegRoute"))


def test_the_self_test_saves_a_correction_inside_slicer():
    selfTest = _method("TMCASegmenterTest", "test_TMCASegmenter_synthetic_case")
    assert "self._assertCorrectionSaved" in _calls(selfTest)
    check = _method("TMCASegmenterTest", "_assertCorrectionSaved")
    assert {"logic.saveCorrection", "slicer.util.arrayFromSegmentBinaryLabelmap", "split_counts"} <= _calls(check)


def test_the_results_table_has_a_checks_column_and_lists_findings_of_absence():
    table = _ui_widgets()["resultsTableWidget"]
    headers = [c.findtext("property[@name='text']/string") for c in table.findall("column")]
    assert headers == ["Finding", "Checks", "Volume (mL)", "Components"]
    assert table.findtext("property[@name='columnCount']/number") == "4"
    show = ast.unparse(_method("TMCASegmenterWidget", "_showResult"))
    assert "results.result_rows(self.logic.lastFindings, self.logic.lastSegmentIds, self.logic.lastNegativeFindings)" in show
    assert "widgets.fill_results_table(self.ui.resultsTableWidget, self._rows, qt.QTableWidgetItem)" in show
    assert "self.lastNegativeFindings = list(result.negative_findings)" in ast.unparse(_method("TMCASegmenterLogic", "_importResult"))


# --------------------------------------------------------------------------- issue 14: Improve model


def test_improve_model_runs_finetune_through_the_background_machinery():
    improve = _method("TMCASegmenterLogic", "improveModel")
    calls = _calls(improve)
    assert {"commands.finetune_command", "engineProcess.BackgroundProcess", "ProcessPoller", "commands.child_environment"} <= calls
    assert "self._finishImprove" in ast.unparse(improve)  # the poller's end and the blocking path both decide
    assert "models.finetune_outcome" in _calls(_method("TMCASegmenterLogic", "_finishImprove"))
    assert "self.logic.cancel" in _calls(_method("TMCASegmenterWidget", "onImproveModel"))
    assert "models.new_model_folder" in _calls(_method("TMCASegmenterWidget", "onImproveModel"))
    learn = _ui_widgets()["learnCollapsibleButton"]
    assert "improveModelButton" in {w.get("name") for w in learn.iter("widget")}


def test_a_promoted_model_is_offered_and_chosen_and_the_button_waits_for_segmentations():
    improved = _method("TMCASegmenterWidget", "_onImproved")
    assert {"slicer.util.confirmYesNoDisplay", "self._showModelChoice", "self.onModelChoiceChanged"} <= _calls(improved)
    assert "self.ui.statusLabel.text = message" in ast.unparse(improved)
    buttons = ast.unparse(_method("TMCASegmenterWidget", "_updateResultButtons"))
    assert "self.ui.improveModelButton.enabled = improving or not self.logic.isRunning" in buttons
    assert "models.model_label" in _calls(_method("TMCASegmenterWidget", "_showModelLabel"))
    assert "self._showModelLabel" in _calls(_method("TMCASegmenterWidget", "_showModelChoice"))
    assert "self._showModelLabel" in _calls(_method("TMCASegmenterWidget", "onModelChoiceChanged"))
