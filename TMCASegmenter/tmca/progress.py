"""Progress reporting for the command line: JSON lines for programs, a bar for people."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tmca.protocol import encode_event, progress_event


class JsonProgress:
    """One JSON object per line on stdout: ``{"event": "progress", "stage", "done", "total"}``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, done: int, total: int, stage: str, **extra: Any) -> None:
        self.emit(progress_event(done, total, stage, **extra))

    def emit(self, payload: dict[str, Any]) -> None:
        self.stream.write(encode_event(payload) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class TerminalProgress:
    """A one-line progress bar on stderr with the time left; silent when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.width = width
        self.started = time.monotonic()
        self._shown = False

    def __call__(self, done: int, total: int, stage: str, **extra: Any) -> None:
        if not self.enabled:
            return
        fraction = done / total if total else 0.0
        filled = int(self.width * fraction)
        elapsed = time.monotonic() - self.started
        left = f", {elapsed / fraction - elapsed:.0f} s left" if 0 < fraction < 1 else ""
        self.stream.write(f"\r{stage:<15} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}{left}   ")
        self.stream.flush()
        self._shown = True

    def emit(self, payload: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def make_progress(kind: str | None) -> JsonProgress | TerminalProgress:
    return JsonProgress() if kind == "json" else TerminalProgress()
