"""Drive a :class:`TMCASegmenterLib.process.BackgroundProcess` from a Qt timer so the GUI never blocks.

The timer is passed in (Slicer's ``qt.QTimer()``; any Qt binding's QTimer works), so this runs and
is tested without Slicer.
"""

from __future__ import annotations

from collections.abc import Callable

from TMCASegmenterLib.process import BackgroundProcess


class ProcessPoller:
    """Every ``intervalMs``: hand new events to ``onEvents``; once the process has gone, stop and call ``onFinished``."""

    def __init__(self, process: BackgroundProcess, onEvents: Callable[[list], None], onFinished: Callable[[], None],
                 timer, intervalMs: int = 200) -> None:
        self._process = process
        self._onEvents = onEvents
        self._onFinished = onFinished
        self._timer = timer
        self._timer.setInterval(intervalMs)
        self._timer.timeout.connect(self._poll)

    def start(self) -> None:
        """Start polling."""
        self._timer.start()

    def stop(self) -> None:
        """Stop polling (the process keeps running)."""
        self._timer.stop()

    def _poll(self) -> None:
        events = self._process.poll()
        if events:
            self._onEvents(events)
        if self._process.finished:
            self._timer.stop()
            self._onFinished()
