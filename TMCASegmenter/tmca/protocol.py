"""The engine's event protocol: JSON lines written by the engine and parsed by its callers.

``tmca segment --progress json``, ``tmca batch --progress json`` (and the warm engine to come)
print one JSON object per line on stdout; the warm engine (``tmca serve --stdio``) reads requests
one per line on stdin and answers with the same events plus an ``id``. The same code here writes them (:func:`encode_event`,
:func:`progress_event`, :func:`result_event`) and reads them back (:func:`parse_event_line`), so
the two sides cannot drift. Events:

- ``{"event": "progress", "stage": str, "done": int, "total": int, ...}``
- ``{"event": "result", "protocol": 1, "output": str, "probability": str | None, "findings": [...]}``
  with one :class:`FindingRecord` object per finding, and ``"negative_findings": [...]`` (records
  with ``negative: true`` and no segment) for the findings of absence ("No effusion.").

On failure the process exits non-zero and prints ``tmca <command>: error: <message>`` on stderr
(:func:`error_line`, read back by :func:`engine_error_message`).

The warm engine's requests (:func:`encode_request`, :func:`parse_request_line`, one schema
``REQUEST_FIELDS``) and its events (:func:`engine_event`, :func:`parse_engine_event`) are at the
end; docs/ENGINE_PROTOCOL.md describes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from tmca.errors import TMCAError

PROTOCOL_VERSION = 1
"""Version of the events and of the warm engine's requests; ``hello`` and every ``result`` carry it."""


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
    data = _event_object(line)
    return None if data is None else _parsed(data)


def _event_object(line: str) -> dict[str, Any] | None:
    """The JSON object of an event line, or None when the line is not one."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return None
    return data


def _parsed(data: Mapping[str, Any]) -> ParsedEvent:
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


# --------------------------------------------------------------------------- the warm engine

RequestId = Union[str, int]
"""A request's ``id``: chosen by the client, echoed as ``"id"`` in every event the request causes."""

TERMINAL_EVENTS = ("hello", "result", "done", "error", "cancelled")
"""Every request gets exactly one of these, after any number of ``progress`` events."""


@dataclass(frozen=True)
class FieldSpec:
    """A request field: the JSON types it accepts and whether it must be given (``null`` counts as absent)."""

    types: tuple[type, ...]
    required: bool = False


_TEXT = (str,)
_NUMBER = (float,)  # a JSON number: int or float, never true/false
_PATH_OUT = FieldSpec(_TEXT, True)

REQUEST_FIELDS: dict[str, dict[str, FieldSpec]] = {
    "hello": {},
    "segment": {
        "image": FieldSpec(_TEXT, True),
        "report": FieldSpec(_TEXT, True),
        "output": _PATH_OUT,
        "probability": FieldSpec(_TEXT),
        "threshold": FieldSpec(_NUMBER),
        "plane": FieldSpec(_TEXT),
        "modality": FieldSpec(_TEXT),
        "series_uid": FieldSpec(_TEXT),
        "split_findings": FieldSpec((bool,)),
    },
    "refine": {
        "result_id": FieldSpec(_TEXT, True),
        "finding": FieldSpec((int, str), True),
        "clicks": FieldSpec((list,), True),
        "output": _PATH_OUT,
        "probability": FieldSpec(_TEXT),
        "threshold": FieldSpec(_NUMBER),
        "start_mask": FieldSpec(_TEXT),
    },
    "cancel": {"target": FieldSpec((str, int), True)},
    "forget": {"result_id": FieldSpec(_TEXT), "image": FieldSpec(_TEXT), "all": FieldSpec((bool,))},
    "shutdown": {},
}
"""Each op's fields besides ``op`` and ``id``; the one schema the engine and its clients check requests with."""

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


class RequestError(TMCAError):
    """A request the engine cannot accept; ``request_id`` is its id when one could be read, else None."""

    def __init__(self, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class ClickRequest:
    """One click of a ``refine`` request: ``point`` (x, y, z) in the image's physical space (LPS, mm)."""

    point: tuple[float, float, float]
    positive: bool

    def as_dict(self) -> dict[str, Any]:
        return {"point": list(self.point), "positive": self.positive}


@dataclass(frozen=True)
class Request:
    """A checked request: ``fields`` hold the op's fields that were given (``clicks`` as :class:`ClickRequest`)."""

    op: str
    id: RequestId
    fields: Mapping[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def parse_request_line(line: str) -> Request:
    """Parse and check one stdin line; raises :class:`RequestError` with the id when it could be read."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise RequestError(f"a request must be one JSON object per line ({error.msg} at column {error.colno})") from None
    return parse_request(data)


def parse_request(data: Any) -> Request:
    """Check a decoded request against :data:`REQUEST_FIELDS`."""
    if not isinstance(data, dict):
        raise RequestError(f"a request must be a JSON object, not {type(data).__name__}")
    request_id = data.get("id")
    if not _is_id(request_id):
        raise RequestError('every request needs an "id": a non-empty string or an integer, echoed in its events')
    op = data.get("op")
    if op not in REQUEST_FIELDS:
        raise RequestError(f"unknown op {op!r}; the ops are {', '.join(REQUEST_FIELDS)}", request_id)
    specs = REQUEST_FIELDS[op]
    unknown = sorted(set(data) - set(specs) - {"op", "id"})
    if unknown:
        known = ", ".join(specs) or "none"
        raise RequestError(f"unknown field {unknown[0]!r} for op {op!r} (its fields: {known})", request_id)
    fields: dict[str, Any] = {}
    for name, spec in specs.items():
        value = data.get(name)
        if value is None:
            if spec.required:
                raise RequestError(f"op {op!r} needs the field {name!r}", request_id)
            continue
        fields[name] = _checked_field(op, name, value, spec, request_id)
    return Request(op, request_id, fields)


def _is_id(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (isinstance(value, int) and not isinstance(value, bool))


def _checked_field(op: str, name: str, value: Any, spec: FieldSpec, request_id: RequestId) -> Any:
    if not any(_has_type(value, kind) for kind in spec.types):
        expected = " or ".join(_TYPE_NAMES[kind] for kind in spec.types)
        raise RequestError(f"field {name!r} of op {op!r} must be {expected}, not {json.dumps(value)[:40]}", request_id)
    if float in spec.types:
        value = float(value)
        if not math.isfinite(value):
            raise RequestError(f"field {name!r} of op {op!r} must be a finite number", request_id)
    if isinstance(value, str) and value.strip() == "":
        raise RequestError(f"field {name!r} of op {op!r} must not be empty", request_id)
    if name == "finding" and isinstance(value, int) and value < 0:
        raise RequestError(f"finding index {value} must be 0 or more", request_id)
    if name == "clicks":
        return _clicks(value, request_id)
    return value


def _has_type(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _clicks(value: list, request_id: RequestId) -> tuple[ClickRequest, ...]:
    if not value:
        raise RequestError("field 'clicks' of op 'refine' needs at least one click", request_id)
    clicks = []
    for number, click in enumerate(value, start=1):
        point = click.get("point") if isinstance(click, dict) else None
        positive = click.get("positive") if isinstance(click, dict) else None
        if (
            not isinstance(point, list) or len(point) != 3 or not all(_has_type(v, float) and math.isfinite(v) for v in point)
            or not isinstance(positive, bool)
        ):
            raise RequestError(
                f'click {number} must be {{"point": [x, y, z] (mm, LPS), "positive": true or false}}, not {json.dumps(click)[:60]}',
                request_id,
            )
        clicks.append(ClickRequest((float(point[0]), float(point[1]), float(point[2])), positive))
    return tuple(clicks)


def encode_request(op: str, request_id: RequestId, **fields: Any) -> str:
    """One request line (no newline), checked with the engine's own schema; ``None`` fields are left out.

    ``clicks`` may hold :class:`ClickRequest` objects, ``tmca.Click`` objects or their dicts.
    """
    data: dict[str, Any] = {"op": op, "id": request_id}
    for name, value in fields.items():
        if value is None:
            continue
        if name == "clicks" and isinstance(value, (list, tuple)):
            value = [_click_dict(click) for click in value]
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        data[name] = value
    parse_request(data)
    return json.dumps(data, ensure_ascii=False)


def _click_dict(click: Any) -> Any:
    if isinstance(click, Mapping):
        return dict(click)
    if hasattr(click, "point") and hasattr(click, "positive"):
        return {"point": [float(v) for v in click.point], "positive": bool(click.positive)}
    return click


def engine_event(name: str, request_id: RequestId | None, **data: Any) -> dict[str, Any]:
    """An event of the warm engine answering request ``request_id`` (None: a line that was not a request)."""
    return {"event": name, "id": request_id, **data}


def error_event(request_id: RequestId | None, message: str, **data: Any) -> dict[str, Any]:
    """The ``error`` event: one line that names the problem and what to do."""
    return engine_event("error", request_id, message=message, **data)


@dataclass(frozen=True)
class EngineEvent:
    """One event of the warm engine: its name, the request it answers, its whole data and its parsed form.

    ``parsed`` is the :class:`Progress` or :class:`Result` of the one-shot commands (so their
    handlers serve both), or an :class:`Event` for ``hello``, ``done``, ``error`` and ``cancelled``.
    """

    name: str
    request_id: RequestId | None
    data: Mapping[str, Any]
    parsed: ParsedEvent

    @property
    def terminal(self) -> bool:
        """The last event of its request."""
        return self.name in TERMINAL_EVENTS

    @property
    def message(self) -> str:
        """The event's message (errors and cancellations), else ''."""
        return str(self.data.get("message") or "")


def parse_engine_event(line: str) -> EngineEvent | None:
    """Parse one line of the warm engine's stdout; None when it is not an event."""
    data = _event_object(line)
    if data is None:
        return None
    request_id = data.get("id")
    return EngineEvent(data["event"], request_id if _is_id(request_id) else None, data, _parsed(data))
