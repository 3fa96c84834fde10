"""Widget helpers that run with any Qt binding (Slicer's PythonQt, PyQt5): the report box, the results table.

Slicer's ``parameterNodeWrapper`` binds a QTextEdit through ``QTextEditPlainTextToStrConnector``,
whose ``write`` calls ``setPlainText`` even when the text is unchanged, and the wrapper rewrites
every bound widget on each parameter change: every typed key puts the cursor back at the start
("two areas" comes out "saera owt"). :class:`PlainTextSync` replaces that binding for one box.
Works with any Qt binding whose QTextEdit has ``toPlainText``, ``setPlainText`` and a
``textChanged`` signal with ``connect``/``disconnect`` (Slicer's PythonQt, PyQt5).
"""

from __future__ import annotations

from collections.abc import Callable


class PlainTextSync:
    """Edits in ``textEdit`` go to ``store``; :meth:`show` writes a value back only when it differs."""

    def __init__(self, textEdit, store: Callable[[str], None]) -> None:
        self._textEdit = textEdit
        self._store = store
        self._showing = False
        textEdit.textChanged.connect(self._onEdited)

    def _onEdited(self) -> None:
        if not self._showing:
            self._store(self._textEdit.toPlainText())

    def show(self, text: str) -> bool:
        """Put ``text`` in the box unless it is already there (rewriting moves the cursor); True if written."""
        if self._textEdit.toPlainText() == text:
            return False
        self._showing = True
        try:
            self._textEdit.setPlainText(text)
        finally:
            self._showing = False
        cursor = self._textEdit.textCursor()  # setPlainText leaves it at the start; typing goes on at the end
        cursor.setPosition(self._textEdit.document().characterCount() - 1)
        self._textEdit.setTextCursor(cursor)
        return True

    def disconnect(self) -> None:
        """Stop sending edits to the store."""
        self._textEdit.textChanged.disconnect(self._onEdited)


def fill_results_table(table, rows, make_item) -> None:
    """Show ``rows`` (:class:`TMCASegmenterLib.results.ResultRow`) in a QTableWidget, each cell with its row's tooltip.

    ``make_item(text)`` makes a QTableWidgetItem (``qt.QTableWidgetItem`` in Slicer). The old
    selection is cleared: it named rows of the previous result.
    """
    table.clearSelection()
    table.setRowCount(len(rows))
    for rowIndex, row in enumerate(rows):
        for columnIndex, text in enumerate(row.cells):
            item = make_item(text)
            if row.tooltip:
                item.setToolTip(row.tooltip)
            table.setItem(rowIndex, columnIndex, item)
