"""Render the module panel (TMCASegmenter.ui) to a PNG with plain Qt, without 3D Slicer.

Slicer's own widget classes (qMRML*, ctk*) are swapped for their closest Qt stand-ins in a
temporary copy of the .ui, sample content is filled in, and the panel is grabbed offscreen.
Needs PySide6 (``pip install PySide6-Essentials`` in a separate environment; it is not a
project dependency):

    QT_QPA_PLATFORM=offscreen python bench/render_panel_screenshot.py [--output PNG]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "TMCASegmenter"))

from TMCASegmenterLib.results import finding_table_rows  # noqa: E402
from tmca.protocol import FindingRecord  # noqa: E402

UI_FILE = REPO / "Resources" / "UI" / "TMCASegmenter.ui"
DEFAULT_OUTPUT = REPO / "Resources" / "Screenshots" / "panel.png"
STAND_INS = {  # Slicer class -> (Qt class, properties the stand-in understands)
    "qMRMLWidget": ("QWidget", set()),
    "ctkCollapsibleButton": ("QGroupBox", {"text"}),
    "qMRMLNodeComboBox": ("QComboBox", {"toolTip"}),
    "ctkPathLineEdit": ("QLineEdit", {"toolTip", "enabled"}),
    "ctkSliderWidget": ("QWidget", {"toolTip"}),
}
SAMPLE_REPORT = "Two infected areas, lower left lung and lower right lung."
SAMPLE_FINDINGS = [
    FindingRecord("infected area, lower left lung", segment_id="Segment_1", volume_ml=23.41, components=2),
    FindingRecord("infected area, lower right lung", segment_id="Segment_2", volume_ml=17.86, components=1),
]


def qt_only_ui(source: Path) -> str:
    """The .ui text with Slicer's classes replaced by Qt classes and Slicer-only parts removed."""
    tree = ET.parse(source)
    root = tree.getroot()
    for widget in root.iter("widget"):
        if widget.get("class") not in STAND_INS:
            continue
        qt_class, kept = STAND_INS[widget.get("class")]
        widget.set("class", qt_class)
        for prop in list(widget.findall("property")):
            if prop.get("name") not in kept:
                widget.remove(prop)
            elif qt_class == "QGroupBox" and prop.get("name") == "text":
                prop.set("name", "title")
    for section in ("customwidgets", "connections"):
        for element in root.findall(section):
            root.remove(element)
    return ET.tostring(root, encoding="unicode")


def fill_sample_content(panel, widgets) -> None:
    """Sample scene: a chest CT, a report, a finished run with two findings."""
    from PySide6.QtWidgets import QDoubleSpinBox, QHBoxLayout, QHeaderView, QSlider, QTableWidgetItem
    from PySide6.QtCore import Qt

    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    find(widgets.QComboBox, "inputSelector").addItem("chest CT")
    find(widgets.QComboBox, "outputSegmentationSelector").addItem("chest CT TMCA")
    find(widgets.QTextEdit, "reportTextEdit").setPlainText(SAMPLE_REPORT)
    slider_host = find(widgets.QWidget, "thresholdSliderWidget")
    layout = QHBoxLayout(slider_host)
    layout.setContentsMargins(0, 0, 0, 0)
    slider = QSlider(Qt.Horizontal)
    slider.setRange(1, 99)
    slider.setValue(50)
    spin = QDoubleSpinBox()
    spin.setRange(0.01, 0.99)
    spin.setSingleStep(0.01)
    spin.setValue(0.5)
    layout.addWidget(slider)
    layout.addWidget(spin)
    table = find(widgets.QTableWidget, "resultsTableWidget")
    rows = finding_table_rows(SAMPLE_FINDINGS)
    table.setRowCount(len(rows))
    for row, values in enumerate(rows):
        for column, text in enumerate(values):
            table.setItem(row, column, QTableWidgetItem(text))
    header = table.horizontalHeader()  # as TMCASegmenterWidget.setup does
    header.setSectionResizeMode(0, QHeaderView.Stretch)
    header.setSectionResizeMode(1, QHeaderView.ResizeToContents)
    header.setSectionResizeMode(2, QHeaderView.ResizeToContents)
    table.setMaximumHeight(110)
    find(widgets.QProgressBar, "progressBar").hide()
    find(widgets.QLabel, "statusLabel").setText("Done: 2 finding(s).")
    find(widgets.QPushButton, "applyButton").setEnabled(True)
    for name in ("editInSegmentEditorButton", "show3DButton"):
        find(widgets.QPushButton, name).setEnabled(True)
    find(widgets.QPushButton, "show3DButton").setChecked(True)


def render(output: Path, width: int = 420) -> Path:
    """Load the Qt-only .ui, fill it and save a PNG of the panel."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtWidgets
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    app.setStyle("Fusion")
    with tempfile.TemporaryDirectory() as folder:
        ui_path = Path(folder) / "panel.ui"
        ui_path.write_text(qt_only_ui(UI_FILE), encoding="utf-8")
        ui_file = QFile(str(ui_path))
        ui_file.open(QIODevice.ReadOnly)
        panel = QUiLoader().load(ui_file)
        ui_file.close()
    if panel is None:
        raise SystemExit(f"Qt could not load {UI_FILE}")
    fill_sample_content(panel, QtWidgets)
    panel.resize(width, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    panel.resize(width, panel.minimumSizeHint().height() + 20)
    app.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise SystemExit(f"could not write {output}")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"PNG to write (default {DEFAULT_OUTPUT})")
    print(f"wrote {render(parser.parse_args().output)}")


if __name__ == "__main__":
    main()
