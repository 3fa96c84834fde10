"""Correct a finding with clicks: which findings can be corrected, the clicks on one, and its refine requests.

A :class:`ClickSession` holds the include / exclude points placed on one finding (LPS, mm, as the
engine reads the scan; :func:`TMCASegmenterLib.geometry.click_point_lps` converts Slicer's) and turns
them into the warm engine's ``refine`` requests, one at a time: every request carries all the
points so far and the finding's latest result, so points placed while a request runs are sent
together once it has answered. A refused or failed request drops the points it carried and the
edited mask; nothing is resent until the user adds a point or presses a button. Undo goes back one
applied refine, at most ``max_results - 1`` times (the engine keeps only its last ``max_results``
results, the current one included). :func:`correct_controls` says which controls of the
panel's Correct section are usable. No slicer, qt or vtk here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tmca.protocol import FindingRecord


@dataclass(frozen=True)
class FindingChoice:
    """A finding that can be corrected: its label in the combo box, its index in the engine's result, its segment."""

    label: str
    index: int
    segment_id: str


def finding_choices(findings: Sequence[FindingRecord], imported: Sequence[tuple[int, str]],
                    present: Callable[[str], bool] = lambda segment_id: True) -> list[FindingChoice]:
    """The findings of the last result whose segment is still in the user's segmentation, in the result's order.

    ``imported`` holds ``(finding_index, segment_id)`` pairs (the index among the result's segmented
    findings, which the engine's ``refine`` takes); ``present`` says whether a segment still exists.
    """
    choices = []
    for index, segment_id in imported:
        if 0 <= index < len(findings) and present(segment_id):
            choices.append(FindingChoice(f"{index + 1}. {findings[index].name}", index, segment_id))
    return choices


def choice_index(choices: Sequence[FindingChoice], segment_id: str | None) -> int:
    """Where the finding with ``segment_id`` is among ``choices`` (to keep the user's choice across updates); 0 if gone."""
    for position, choice in enumerate(choices):
        if choice.segment_id == segment_id:
            return position
    return 0


@dataclass(frozen=True)
class PlacedClick:
    """One placed point: ``point`` (x, y, z) in the scan's LPS millimetres; ``positive``: include."""

    point: tuple[float, float, float]
    positive: bool

    def as_dict(self) -> dict[str, Any]:
        return {"point": [float(value) for value in self.point], "positive": bool(self.positive)}


@dataclass
class _Applied:
    """One applied refine, for undo: the result and the number of points before it."""

    result_id: str
    clicks_before: int


@dataclass
class ClickSession:
    """The points placed on one finding and the refine requests they cause (at most one running)."""

    result_id: str
    choice: FindingChoice
    clicks: list[PlacedClick] = field(default_factory=list)
    start_mask: str | None = None  # an exported edited mask, sent with the next request
    in_flight: bool = False
    max_results: int = 8  # results the engine keeps (its hello's ``max_results``): bounds the undo depth
    _sent: int = 0  # points carried by the running request
    _sent_start_mask: str | None = None
    _applied_clicks: int = 0  # points reflected in the segment
    _history: list[_Applied] = field(default_factory=list)

    def add(self, point_lps: Sequence[float], positive: bool) -> None:
        """Add a point (its request goes out with :meth:`next_request`)."""
        point = tuple(float(value) for value in point_lps)
        if len(point) != 3:
            raise ValueError(f"a point has three coordinates, not {point_lps!r}")
        self.clicks.append(PlacedClick(point, bool(positive)))

    def use_edits(self, start_mask_path: str) -> None:
        """Start the next refine from the user's edited segment (a file on the scan's grid)."""
        self.start_mask = start_mask_path

    @property
    def waiting(self) -> bool:
        """Points (or an edited mask) not yet sent."""
        sent = self._sent if self.in_flight else self._applied_clicks
        return len(self.clicks) > sent or (self.start_mask is not None and bool(self.clicks))

    def next_request(self, output: str, probability: str | None = None,
                     threshold: float | None = None) -> dict[str, Any] | None:
        """The fields of the next ``refine`` (all points so far), or None while one runs or nothing is new.

        ``threshold``: the one the shown segments were made at (the slider's); None: the engine's result's.
        """
        if self.in_flight or not self.clicks or not self.waiting:
            return None
        self.in_flight, self._sent = True, len(self.clicks)
        self._sent_start_mask, self.start_mask = self.start_mask, None
        fields = {"result_id": self.result_id, "finding": self.choice.index,
                  "clicks": [click.as_dict() for click in self.clicks], "output": output,
                  "probability": probability, "start_mask": self._sent_start_mask}
        if threshold is not None:
            fields["threshold"] = float(threshold)
        return fields

    def finished(self, new_result_id: str | None) -> list[int]:
        """The running request ended: with a new result (applied), or refused/failed (None).

        A refused request drops the points it carried that no applied result reflects (the engine
        refuses them all together; they are the ones just placed): returns their positions in
        :attr:`clicks` (before removal), so the caller removes the same markups. An edited mask it
        carried is dropped too (resending it could fail the same way, forever). Applied results
        beyond ``max_results - 1`` undo steps leave the history (the engine forgets them).
        """
        if not self.in_flight:
            return []
        self.in_flight = False
        if new_result_id:
            self._history.append(_Applied(self.result_id, self._applied_clicks))
            self.result_id, self._applied_clicks = new_result_id, self._sent
            self._sent_start_mask = None
            del self._history[:max(0, len(self._history) - self.undo_depth_limit)]
            return []
        dropped = list(range(self._applied_clicks, self._sent))
        del self.clicks[self._applied_clicks:self._sent]
        self._sent_start_mask = None
        return dropped

    @property
    def undo_depth_limit(self) -> int:
        """The most undo steps whose results the engine still keeps (the current result takes one place)."""
        return max(0, int(self.max_results) - 1)

    @property
    def undo_depth(self) -> int:
        """Applied refines that can be undone now."""
        return len(self._history)

    @property
    def can_undo(self) -> bool:
        return bool(self._history) and not self.in_flight

    def undo(self) -> list[int]:
        """Go back one applied refine: its result becomes current again; returns the positions of the points removed."""
        if not self.can_undo:
            return []
        applied = self._history.pop()
        removed = list(range(applied.clicks_before, len(self.clicks)))
        del self.clicks[applied.clicks_before:]
        self.result_id, self._applied_clicks = applied.result_id, applied.clicks_before
        return removed


@dataclass(frozen=True)
class CorrectControls:
    """What the Correct section shows: the controls (or only ``reason``) and which of them are usable."""

    visible: bool
    reason: str
    choose: bool = False
    place: bool = False
    use_edits: bool = False
    undo: bool = False
    done: bool = False


def correct_controls(can_refine: bool | None, choices: int, has_result_id: bool, running: bool,
                     session: ClickSession | None) -> CorrectControls:
    """The Correct section's state.

    ``can_refine``: the warm engine's ``hello`` (None: not asked yet); ``choices``: findings that can be
    corrected; ``has_result_id``: the last result came from the warm engine (one-shot results cannot be
    refined); ``running``: a segmentation or fine-tuning runs.
    """
    if can_refine is False:
        return CorrectControls(False, "This model was trained without click inputs; it cannot refine with clicks.")
    if not choices:
        return CorrectControls(True, "Apply a report first; its findings can then be corrected with clicks.")
    if not has_result_id:
        return CorrectControls(True, "This result was not made by the warm engine; click Apply again to correct it.")
    if running:
        return CorrectControls(True, "Wait for the running segmentation to finish.", choose=False)
    refining = session is not None and session.in_flight
    return CorrectControls(
        True, "Refining..." if refining else "Place include (green) or exclude (red) points on the finding.",
        choose=not refining, place=True, use_edits=not refining, undo=session is not None and session.can_undo,
        done=session is not None)
