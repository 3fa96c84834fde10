"""The report box sync (TMCASegmenterLib.widgets) with a real Qt QTextEdit (PyQt5, offscreen)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PyQt5.QtCore import Qt
from PyQt5.QtTest import QTest
from PyQt5.QtWidgets import QApplication, QTextEdit

from TMCASegmenterLib.widgets import PlainTextSync


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])


class ParameterLike:
    """A string parameter that, like Slicer's parameter node, tells its observers after every change."""

    def __init__(self) -> None:
        self.value = ""
        self.observers = []
        self.changes = 0

    def set(self, value: str) -> None:
        if value != self.value:
            self.value = value
            self.changes += 1
            for observer in self.observers:
                observer()


def _wrapper_binding(edit: QTextEdit, parameter: ParameterLike) -> None:
    """What ``parameterNodeWrapper`` does with a QTextEdit: QTextEditPlainTextToStrConnector reads on
    textChanged, and every parameter change calls its ``write`` (``setPlainText``), connector disconnected."""
    def changed():
        parameter.set(edit.toPlainText())

    def write():
        edit.textChanged.disconnect(changed)
        edit.setPlainText(parameter.value)
        edit.textChanged.connect(changed)

    edit.textChanged.connect(changed)
    parameter.observers.append(write)


def _module_binding(edit: QTextEdit, parameter: ParameterLike) -> PlainTextSync:
    """What TMCASegmenterWidget does: PlainTextSync stores edits, the node observer shows the value."""
    sync = PlainTextSync(edit, parameter.set)
    parameter.observers.append(lambda: sync.show(parameter.value))
    return sync


def test_the_wrapper_binding_reverses_typed_text(app):
    edit, parameter = QTextEdit(), ParameterLike()
    _wrapper_binding(edit, parameter)
    QTest.keyClicks(edit, "two areas")
    assert edit.toPlainText() == "saera owt"


def test_typed_text_stays_in_order_through_the_parameter_round_trip(app):
    edit, parameter = QTextEdit(), ParameterLike()
    _module_binding(edit, parameter)
    QTest.keyClicks(edit, "Two infected areas, lower left lung.")
    assert edit.toPlainText() == parameter.value == "Two infected areas, lower left lung."
    assert parameter.changes == len("Two infected areas, lower left lung.")


def test_editing_in_the_middle_keeps_the_cursor(app):
    edit, parameter = QTextEdit(), ParameterLike()
    _module_binding(edit, parameter)
    QTest.keyClicks(edit, "two areas")
    for _ in range(len(" areas")):
        QTest.keyClick(edit, Qt.Key_Left)
    QTest.keyClicks(edit, " infected")
    assert parameter.value == edit.toPlainText() == "two infected areas"
    assert edit.textCursor().position() == len("two infected")


def test_a_value_set_elsewhere_is_shown_once_and_typing_continues_at_its_end(app):
    edit, parameter = QTextEdit(), ParameterLike()
    sync = _module_binding(edit, parameter)
    parameter.set("Mass in the right lung.")  # e.g. a recent report chosen from the list
    assert edit.toPlainText() == "Mass in the right lung." and parameter.changes == 1
    assert not sync.show(parameter.value)
    QTest.keyClicks(edit, " Nodule.")
    assert parameter.value == "Mass in the right lung. Nodule."


def test_non_ascii_reports_survive_the_round_trip(app):
    edit, parameter = QTextEdit(), ParameterLike()
    _module_binding(edit, parameter)
    parameter.set("左额叶肿块。")
    QTest.keyClicks(edit, " CT")
    assert parameter.value == "左额叶肿块。 CT"


def test_disconnect_stops_storing_edits(app):
    edit, parameter = QTextEdit(), ParameterLike()
    sync = _module_binding(edit, parameter)
    sync.disconnect()
    QTest.keyClicks(edit, "abc")
    assert parameter.value == "" and parameter.changes == 0
