"""Run an engine command in the background and read its events without blocking.

Modelled on SlicerMONAIAuto3DSeg's ``MONAIAuto3DSegLib/process.py``: a separate process, reader
threads that queue its output lines, a caller (a QTimer in Slicer) that polls the queue, and a
Cancel that stops the whole process tree. Cancel never waits: it asks the processes to stop and
returns; later polls kill whatever outlived the grace period.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from tmca.protocol import Event, FindingRecord, Progress, Result, engine_error_message, parse_event_line

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class LogLine:
    """A line that is not a protocol event (library warnings, stderr)."""

    text: str
    stream: str = "stdout"


ProcessEvent = Union[Progress, Result, Event, LogLine]


@dataclass
class RunOutcome:
    """How an engine run ended: ``output`` is what the caller made of the result (e.g. a Slicer node)."""

    cancelled: bool = False
    error: str | None = None
    findings: tuple[FindingRecord, ...] = ()
    output: Any = None

    @property
    def ok(self) -> bool:
        """Finished without error and was not cancelled."""
        return not self.cancelled and self.error is None


class _ProcessTree:
    """The processes of one run, stopped without waiting: terminate now, kill after a grace period."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.deadline: float | None = None
        self._members: list[Any] = []

    def terminate(self, grace_seconds: float) -> None:
        self.deadline = time.monotonic() + grace_seconds
        try:
            import psutil
        except ImportError:
            self._signal_group(signal.SIGTERM if os.name != "nt" else None)
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(self.pid)
            self._members = parent.children(recursive=True) + [parent]  # children outlive and lose their parent
        for member in self._members:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.terminate()

    def kill_if_overdue(self) -> None:
        if self.deadline is None or time.monotonic() < self.deadline:
            return
        self.deadline = None
        if not self._members:
            self._signal_group(signal.SIGKILL if os.name != "nt" else None)
            return
        import psutil

        for member in self._members:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()

    def _signal_group(self, signum: int | None) -> None:
        """Without psutil: the child leads its own process group (POSIX), or ``taskkill /T`` (Windows)."""
        if os.name == "nt":
            subprocess.Popen(["taskkill", "/F", "/T", "/PID", str(self.pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


class BackgroundProcess:
    """Run a ``tmca`` command without blocking the caller.

    Two reader threads put stdout/stderr lines on a queue; :meth:`poll` drains it and returns
    parsed events (:class:`Progress`, :class:`Result`, :class:`Event`, :class:`LogLine`), so a
    GUI timer or a plain loop (:meth:`wait`) can drive it. :meth:`cancel` stops the whole process
    tree without waiting; :meth:`discard` also drops a run that has already finished.
    :meth:`cleanup` removes ``temp_dir``. Use as a context manager to always clean up.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: PathLike | None = None,
                 temp_dir: PathLike | None = None, stderr_lines_kept: int = 200) -> None:
        self.args = [str(a) for a in args]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.temp_dir = Path(temp_dir) if temp_dir else None
        self.result: Result | None = None
        self.cancelled = False
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines_kept)
        self._process: subprocess.Popen | None = None
        self._tree: _ProcessTree | None = None
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers: list[threading.Thread] = []

    def start(self) -> "BackgroundProcess":
        """Launch the process (console hidden on Windows; own process group on POSIX)."""
        if self._process is not None:
            raise RuntimeError("process already started")
        self._process = subprocess.Popen(
            self.args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1, **_platform_popen_options())
        for stream_name in ("stdout", "stderr"):
            reader = threading.Thread(target=self._read, args=(stream_name,), name=f"tmca-{stream_name}", daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, stream_name: str) -> None:
        stream = getattr(self._process, stream_name)
        for line in iter(stream.readline, ""):
            self._lines.put((stream_name, line.rstrip("\r\n")))
        stream.close()

    @property
    def pid(self) -> int | None:
        """Process id of the launched process."""
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended, else None."""
        return self._process.poll() if self._process else None

    @property
    def running(self) -> bool:
        """Started and not yet finished."""
        return self._process is not None and not self.finished

    @property
    def finished(self) -> bool:
        """The process exited and all its output was read and polled."""
        if self._process is None or self._process.poll() is None:
            return False
        return not any(reader.is_alive() for reader in self._readers) and self._lines.empty()

    def poll(self) -> list[ProcessEvent]:
        """Events received since the last call, in arrival order (never blocks)."""
        if self._tree is not None:
            self._tree.kill_if_overdue()
        events: list[ProcessEvent] = []
        while True:
            try:
                stream_name, line = self._lines.get_nowait()
            except queue.Empty:
                return events
            events.append(self._event(stream_name, line))

    def _event(self, stream_name: str, line: str) -> ProcessEvent:
        if stream_name == "stderr":
            self.stderr_tail.append(line)
            return LogLine(line, "stderr")
        event = parse_event_line(line)
        if isinstance(event, Result):
            self.result = event
        return event if event is not None else LogLine(line, "stdout")

    def wait(self, timeout: float | None = None, on_poll: Callable[[list[ProcessEvent]], None] | None = None,
             interval: float = 0.05) -> int:
        """Poll until the process finishes; ``on_poll`` gets every batch of events (possibly empty)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            events = self.poll()
            if on_poll is not None:
                on_poll(events)
            if self.finished:
                return int(self.returncode)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.args[:4]} did not finish within {timeout} s")
            time.sleep(interval)

    def error_message(self) -> str | None:
        """The engine's one-line error message when the process failed, else None."""
        if self.cancelled or self.returncode in (None, 0):
            return None
        return engine_error_message(self.stderr_tail) or f"the engine stopped with exit code {self.returncode}"

    def outcome(self) -> RunOutcome:
        """Summary of a finished (or cancelled) run."""
        error = self.error_message()
        if error is None and not self.cancelled and self.result is None:
            error = "the engine finished without reporting a result"
        findings = self.result.findings if self.result else ()
        return RunOutcome(cancelled=self.cancelled, error=error, findings=findings)

    def cancel(self, grace_seconds: float = 3.0) -> None:
        """Ask the process and everything it started to stop, and return at once.

        Later :meth:`poll` calls kill what is still alive after ``grace_seconds``; the run counts
        as cancelled. Does nothing once the process has exited, so a finished result stays readable.
        """
        if self._process is None or self._process.poll() is not None or self.cancelled:
            return
        self.cancelled = True
        self._tree = _ProcessTree(self._process.pid)
        self._tree.terminate(grace_seconds)

    def discard(self) -> None:
        """Drop the run whatever its state: cancel it if it runs, and never report its result."""
        self.cancel()
        self.cancelled = True

    def cleanup(self) -> None:
        """Remove ``temp_dir`` (call after reading the results)."""
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "BackgroundProcess":
        return self if self._process is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.running:
            self.cancel(grace_seconds=0.0)
            self.wait(timeout=30)
        self.cleanup()


def _platform_popen_options() -> dict[str, Any]:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}
