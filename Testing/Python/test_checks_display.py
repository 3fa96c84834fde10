"""The results table's check mark and tooltip, from the engine's own checks."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from TMCASegmenterLib.checks_display import AGREE_MARK, DISAGREE_MARK, NOT_STATED_MARK, checks_cell, checks_mark, checks_tooltip
from tmca.reconcile import check_finding


def _checks(text: str, mask: np.ndarray) -> list[dict]:
    image = sitk.Image([60, 60, 40], sitk.sitkUInt8)
    return [check.as_dict() for check in check_finding(text, mask, image)]


def _ball(centre_x: int) -> np.ndarray:
    z, y, x = np.ogrid[:40, :60, :60]
    return (z - 8) ** 2 + (y - 30) ** 2 + (x - centre_x) ** 2 <= 36


def test_disagreement_is_marked_and_explained_first():
    checks = _checks("Two nodules in the right lower lobe, the larger 14 mm.", _ball(45))
    mark, tooltip = checks_cell(checks)
    assert mark == DISAGREE_MARK
    lines = tooltip.splitlines()
    assert lines[0] == "2 check(s) disagree with the report"
    assert lines[1:3] == ["count: disagree (report: 2, mask: 1)", "side: disagree (report: right, mask: left)"]
    assert lines[-1].startswith("size: agree (report: 14 mm, mask: ")


def test_agreement_and_nothing_stated():
    agreeing = _checks("A nodule in the lower left lung.", _ball(45))
    assert checks_mark(agreeing) == AGREE_MARK
    assert checks_tooltip(agreeing).splitlines()[0] == "The mask agrees with what the report states"
    silent = _checks("Abnormal enhancement.", _ball(45))
    assert checks_mark(silent) == NOT_STATED_MARK and "enhancement" not in checks_tooltip(silent)
    assert checks_cell([]) == (NOT_STATED_MARK, "No report-to-mask checks.")


def test_display_module_stays_free_of_slicer():
    tree = ast.parse((Path(__file__).parents[2] / "TMCASegmenter" / "TMCASegmenterLib" / "checks_display.py").read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"slicer", "qt", "vtk", "ctk"}
