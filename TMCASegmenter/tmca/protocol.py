"""The engine's event protocol: JSON lines written by the engine and parsed by its callers.

``tmca segment --progress json``, ``tmca batch --progress json`` (and the warm engine to come)
print one JSON object per line on stdout. The same code here writes them (:func:`encode_event`,
:func:`progress_event`, :func:`result_event`) and reads them back (:func:`parse_event_line`), so
the two sides cannot drift. Events:

- ``{"event": "progress", "stage": str, "done": int, "total": int, ...}``
- ``{"event": "result", "protocol": 1, "output": str, "probability": str | None, "findings": [...]}``
  with one :class:`FindingRecord` object per finding, and ``"negative_findings": [...]`` (records
  with ``negative: true`` and no segment) for the findings of absence ("No effusion.").

On failure the process exits non-zero and prints ``tmca <command>: error: <message>`` on stderr
(:func:`error_line`, read back by :func:`engine_error_message`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

PROTOCOL_VERSION = 1


def segment_id(index: int) -> str:
    """The segment id of finding ``index`` (0-based), the same in the engine, the file and the module."""
    return f"Segment_{index + 1}"


@dataclass(frozen=True)
class FindingRecord:
    """One finding of a result: what the model saw, where its segment is, and what it found.

    ``segment_id``, ``layer`` and ``label_value`` name the finding's segment in the written
    ``.seg.nrrd`` exactly (overlapping findings sit in other layers). ``terminology`` is
    :meth:`tmca.terminology.Terminology.as_dict`; ``checks`` are :meth:`tmca.reconcile.Check.as_dict`
    dicts; ``negative`` marks a finding of absence (no segment).
    """

    name: str
    text: str = ""
    segment_id: str = ""
    layer: int = 0
    label_value: int = 0
    voxels: int = 0
    volume_ml: float = 0.0
    components: int = 0
    negative: bool = False
    terminology: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FindingRecord":
        """Build from a JSON record; unknown keys are ignored, missing ones take their defaults."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            if key in known and value is not None:
                default = known[key].default
                if isinstance(default, (int, float, str)):
                    value = type(default)(value)
                elif key in _CONTAINERS:
                    value = _container(key, value)
                values[key] = value
        return cls(**values)


_CONTAINERS = {"terminology": dict, "checks": list}


def _container(key: str, value: Any) -> Any:
    """A dict or list field's JSON value, checked for its type."""
    expected = _CONTAINERS[key]
    if not isinstance(value, expected):
        raise ValueError(f"finding field {key!r} must be a {expected.__name__}, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Progress:
    """``{"event": "progress", "stage", "done", "total"}``."""

    stage: str
    done: int
    total: int

    @property
    def fraction(self) -> float | None:
        """Completed fraction in 0..1, or None when the total is unknown."""
        return min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else None

    @property
    def message(self) -> str:
        """Short status text, e.g. ``"segmenting 3/10"``."""
        return f"{self.stage} {self.done}/{self.total}" if self.total > 0 else self.stage


@dataclass(frozen=True)
class Result:
    """``{"event": "result", "output", "probability", "findings"}``."""

    output: str
    probability: str | None
    findings: tuple[FindingRecord, ...]
    negative_findings: tuple[FindingRecord, ...] = ()


@dataclass(frozen=True)
class Event:
    """Any other JSON event (kept whole for callers that know it)."""

    name: str
    data: Mapping[str, Any]


ParsedEvent = Union[Progress, Result, Event]


def progress_event(done: int, total: int, stage: str, **extra: Any) -> dict[str, Any]:
    """A ``progress`` event."""
    return {"event": "progress", "stage": stage, "done": int(done), "total": int(total), **extra}


def result_event(
    output: str,
    findings: Iterable[FindingRecord],
    probability: str | None = None,
    negative_findings: Iterable[FindingRecord] = (),
    **extra: Any,
) -> dict[str, Any]:
    """A ``result`` event."""
    return {
        "event": "result",
        "protocol": PROTOCOL_VERSION,
        "output": str(output),
        "probability": str(probability) if probability else None,
        **extra,
        "findings": [record.as_dict() for record in findings],
        "negative_findings": [record.as_dict() for record in negative_findings],
    }


def encode_event(event: Mapping[str, Any]) -> str:
    """One protocol line (no newline); non-ASCII text is kept as is."""
    return json.dumps(event, ensure_ascii=False)


def parse_event_line(line: str) -> ParsedEvent | None:
    """Parse one stdout line; None when it is not a JSON event object."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return None
    try:
        return _event_from_dict(data)
    except (TypeError, ValueError):
        return Event(data["event"], data)


def _event_from_dict(data: Mapping[str, Any]) -> ParsedEvent:
    if data["event"] == "progress":
        return Progress(str(data.get("stage", "")), int(data.get("done") or 0), int(data.get("total") or 0))
    if data["event"] == "result":
        findings = tuple(FindingRecord.from_dict(f) for f in data.get("findings") or ())
        negative = tuple(FindingRecord.from_dict(f) for f in data.get("negative_findings") or ())
        return Result(str(data.get("output", "")), data.get("probability") or None, findings, negative)
    return Event(data["event"], data)


def error_line(command: str, message: str) -> str:
    """The stderr line of a failed command."""
    return f"tmca {command}: error: {message}"


def engine_error_message(stderr_lines: Iterable[str]) -> str | None:
    """The user-facing message of :func:`error_line`, else the last stderr line, else None."""
    lines = [line.strip() for line in stderr_lines if line.strip()]
    for line in reversed(lines):
        head, marker, message = line.partition(": error: ")
        if marker and head.startswith("tmca "):
            return message
    return lines[-1] if lines else None
