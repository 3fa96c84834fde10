"""The files a study-folder run exchanges with ``tmca batch``: the reports CSV and the summary."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from tmca.atomic import write_text_atomic
from tmca.errors import TMCAError

PathLike = Union[str, os.PathLike]


def write_reports_csv(reports: Mapping[str, str], path: PathLike) -> Path:
    """Write ``case,report`` rows for ``tmca batch --reports`` (atomically, UTF-8)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "report"])
    writer.writerows([case, text] for case, text in reports.items())
    write_text_atomic(path, buffer.getvalue())
    return Path(path)


def read_batch_summary(path: PathLike) -> list[dict[str, Any]]:
    """Rows of a ``tmca batch`` ``summary.json`` (a list of row objects, or ``{"rows": [...]}``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TMCAError(f"batch summary {path} was not written; see the batch log for the cause") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise TMCAError(f"batch summary {path} is not a list of rows")
    return rows
