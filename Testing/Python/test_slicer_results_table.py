"""The results table (issue #15, panel part): checks marks and tooltips, findings of absence, a real QTableWidget.

The findings are real engine records: checks computed by tmca.reconcile on a mask, sent through the
event protocol as the engine sends them, and parsed back as the module receives them.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import SimpleITK as sitk
from PyQt5.QtWidgets import QAbstractItemView, QApplication, QTableWidget, QTableWidgetItem

from TMCASegmenterLib import corrections, results, widgets
from TMCASegmenterLib.checks_display import AGREE_MARK, DISAGREE_MARK
from tmca.errors import TMCAError
from tmca.protocol import FindingRecord, Result, encode_event, parse_event_line, result_event, segment_id
from tmca.reconcile import check_finding

SHAPE = (20, 40, 40)  # (z, y, x), 2 mm voxels, LPS: patient left is +x


def _reference() -> sitk.Image:
    image = sitk.Image(SHAPE[2], SHAPE[1], SHAPE[0], sitk.sitkUInt8)
    image.SetSpacing((2.0, 2.0, 2.0))
    return image


def _blob(z, y, x, radius=3) -> np.ndarray:
    zz, yy, xx = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return ((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2).astype(np.uint8)


def _engine_result() -> Result:
    """Two positive findings with their checks, one finding of absence, through the protocol."""
    reference = _reference()
    texts = ["Two nodules in the right lower lobe, the larger 14 mm.", "Consolidation."]
    masks = [_blob(4, 20, 32), _blob(10, 20, 20)]  # one component, on the patient's left
    records = [FindingRecord(text.split(",")[0].rstrip("."), text, segment_id(i), label_value=i + 1,
                             voxels=int(mask.sum()), volume_ml=float(mask.sum()) * 8 / 1000, components=1,
                             checks=[c.as_dict() for c in check_finding(text, mask, reference)])
               for i, (text, mask) in enumerate(zip(texts, masks))]
    absent = [FindingRecord("No pleural effusion", "No pleural effusion.", negative=True)]
    event = parse_event_line(encode_event(result_event("out.seg.nrrd", records, None, absent)))
    assert isinstance(event, Result)
    return event


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])


def test_a_disagreeing_finding_is_marked_and_its_tooltip_names_what_disagrees():
    result = _engine_result()
    rows = results.result_rows(result.findings, ["Segment_7", "Segment_8"], result.negative_findings)
    nodules = rows[0]
    assert nodules.cells[0] == "Two nodules in the right lower lobe" and nodules.cells[1] == DISAGREE_MARK
    assert nodules.segment_id == "Segment_7" and not nodules.absent
    assert nodules.tooltip.startswith("2 check(s) disagree with the report")
    assert "count: disagree (report: 2, mask: 1)" in nodules.tooltip
    assert "side: disagree (report: right, mask: left)" in nodules.tooltip
    assert nodules.cells[2:] == (results.format_volume_ml(nodules.finding.volume_ml), "1")


def test_a_finding_that_states_nothing_checkable_has_no_mark():
    result = _engine_result()
    consolidation = results.result_rows(result.findings, ["a", "b"])[1]
    assert consolidation.cells[1] not in (DISAGREE_MARK, AGREE_MARK)
    assert "disagree" not in consolidation.tooltip.split("\n")[0]


def test_findings_of_absence_are_rows_without_a_segment():
    result = _engine_result()
    rows = results.result_rows(result.findings, ["a", "b"], result.negative_findings)
    absent = rows[-1]
    assert len(rows) == 3 and absent.absent and absent.segment_id == ""
    assert absent.cells == ("No pleural effusion.", results.ABSENT, "", "")
    assert "no segment" in absent.tooltip
    assert [c.segment_id for c in corrections.chosen_corrections(rows, [])] == ["a", "b"]
    with pytest.raises(TMCAError, match="finding of absence"):
        corrections.chosen_corrections(rows, [2])


def test_each_finding_needs_its_segment_id():
    result = _engine_result()
    with pytest.raises(TMCAError, match="2 findings but 1 segment ids"):
        results.result_rows(result.findings, ["a"])


def test_the_table_shows_the_marks_and_tooltips_and_forgets_the_old_selection(app):
    table = QTableWidget(0, 4)
    table.setSelectionBehavior(QAbstractItemView.SelectRows)
    result = _engine_result()
    rows = results.result_rows(result.findings, ["a", "b"], result.negative_findings)
    widgets.fill_results_table(table, rows, QTableWidgetItem)
    table.selectRow(2)
    assert [i.row() for i in table.selectionModel().selectedRows()] == [2]

    widgets.fill_results_table(table, rows[:2], QTableWidgetItem)
    assert table.rowCount() == 2 and table.selectionModel().selectedRows() == []
    assert table.item(0, 1).text() == DISAGREE_MARK
    assert table.item(0, 0).toolTip() == rows[0].tooltip == table.item(0, 1).toolTip()

    widgets.fill_results_table(table, rows, QTableWidgetItem)
    assert table.item(2, 1).text() == results.ABSENT and "no segment" in table.item(2, 0).toolTip()
