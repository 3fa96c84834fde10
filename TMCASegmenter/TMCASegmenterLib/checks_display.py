"""How the results table shows a finding's report-to-mask checks: a mark on the row and its tooltip.

Plain functions (no slicer, qt or vtk), so that the module, its tests and other front ends show the
checks the same way. The checks are the ``checks`` of a finding record of the engine's result
(``tmca.protocol.FindingRecord.checks``): dicts with ``name``, ``status`` (``agree``, ``disagree``,
``not stated``), ``stated`` and ``measured``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DISAGREE_MARK = "\u26a0"  # warning sign: the mask contradicts the report
AGREE_MARK = "\u2713"  # check mark: every stated item agrees
NOT_STATED_MARK = ""  # the report states nothing the mask can be checked against


def checks_mark(checks: Sequence[Mapping[str, Any]]) -> str:
    """The row mark: the warning sign when any check disagrees, a check mark when every stated one agrees."""
    statuses = [check.get("status") for check in checks]
    if "disagree" in statuses:
        return DISAGREE_MARK
    return AGREE_MARK if "agree" in statuses else NOT_STATED_MARK


def checks_tooltip(checks: Sequence[Mapping[str, Any]]) -> str:
    """One line per check, disagreements first: ``"side: disagree (report: right, mask: left)"``."""
    if not checks:
        return "No report-to-mask checks."
    order = {"disagree": 0, "agree": 1, "not stated": 2}
    lines = []
    for check in sorted(checks, key=lambda c: order.get(str(c.get("status")), 3)):
        status = str(check.get("status", ""))
        detail = f" (report: {check.get('stated')}, mask: {check.get('measured')})" if status in ("agree", "disagree") else ""
        lines.append(f"{check.get('name', '?')}: {status}{detail}")
    disagreeing = sum(1 for c in checks if c.get("status") == "disagree")
    header = f"{disagreeing} check(s) disagree with the report" if disagreeing else "The mask agrees with what the report states"
    return "\n".join([header, *lines])


def checks_cell(checks: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(mark, tooltip) for a finding's row."""
    return checks_mark(checks), checks_tooltip(checks)
