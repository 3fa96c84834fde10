"""Reports the user typed: the recent list and its one-line previews."""

from __future__ import annotations

from collections.abc import Sequence


def remember_report(recent: Sequence[str], report: str, limit: int = 8) -> list[str]:
    """Most-recent-first list of reports with ``report`` moved to the front (blank reports ignored)."""
    report = report.strip()
    if not report:
        return list(recent)[:limit]
    return ([report] + [r for r in recent if r != report])[:limit]


def elide(text: str, width: int = 70) -> str:
    """One-line preview of ``text`` at most ``width`` characters long."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "\u2026"
