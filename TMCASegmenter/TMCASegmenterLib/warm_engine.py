"""The Slicer module's side of the warm engine: one engine for Apply and clicks, its state, its runs, its input files.

:class:`WarmEngine` holds one :class:`TMCASegmenterLib.engine_client.EngineClient` (made by the
factory passed in, so tests use a fake) for the chosen model and device: a new choice stops the old
engine and starts another; an engine that died is started again by the client on the next request.
A Qt timer (passed in) polls it. :class:`EngineRun` is one ``segment`` or ``refine`` request seen the
way the module's one-shot runs are (``outcome()``, ``result``, ``cancel()``, ``discard()``,
``cleanup()``), so the module imports both alike. :class:`VolumeFiles` writes a scan once per
version, so a second report on the same scan reuses the engine's loaded volume. No slicer, qt or vtk.
"""

from __future__ import annotations

import enum
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from TMCASegmenterLib.process import RunOutcome

WORK_OPS = ("segment", "refine")


class EngineState(str, enum.Enum):
    """Where the warm engine is, as the panel says it."""

    STOPPED = "not started"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEAD = "stopped unexpectedly"


class WarmEngine:
    """One warm engine, started on the first request, replaced when the model or device changes.

    make_client: ``command -> EngineClient``; timer: a Qt timer (anything with ``setInterval``,
    ``timeout.connect``, ``start``, ``stop``) that polls the client, or None to poll by hand.
    """

    def __init__(self, make_client: Callable[[list[str]], Any], timer=None, interval_ms: int = 50) -> None:
        self._make_client = make_client
        self._client = None
        self._busy: set = set()
        self._timer = timer
        if timer is not None:
            timer.setInterval(interval_ms)
            timer.timeout.connect(self.poll)

    @property
    def client(self):
        return self._client

    @property
    def state(self) -> EngineState:
        client = self._client
        if client is None:
            return EngineState.STOPPED
        if not client.running:
            return EngineState.DEAD if client.generation > 0 else EngineState.STOPPED
        if client.info is None:
            return EngineState.STARTING
        return EngineState.BUSY if self._busy else EngineState.READY

    @property
    def can_refine(self) -> bool | None:
        """What the running engine said in ``hello``; None before it answered (or with no engine)."""
        client = self._client
        if client is None or client.info is None:
            return None
        return bool(client.info.get("can_refine"))

    @property
    def max_results(self) -> int:
        """Results the running engine keeps for refine (its ``hello``; 8, the engine's default, before it answered)."""
        client = self._client
        info = client.info if client is not None else None
        return int(info.get("max_results") or 8) if info else 8

    def request(self, command: Sequence[str], op: str, on_event: Callable[[Any], None] | None = None, **fields: Any):
        """Send ``op`` to the engine for ``command`` (starting or replacing it); returns the request id at once."""
        client = self._client_for([str(part) for part in command])
        request_id = None

        def delivered(event) -> None:
            if event.terminal:
                self._busy.discard(request_id)
            if on_event is not None:
                on_event(event)

        request_id = client.request(op, on_event=delivered, **fields)
        if op in WORK_OPS:
            self._busy.add(request_id)
        if self._timer is not None:
            self._timer.start()
        return request_id

    def _client_for(self, command: list[str]):
        if self._client is not None and list(self._client.command) != command:
            self.stop()  # another model or device: its results cannot be refined by the new engine anyway
        if self._client is None:
            self._client = self._make_client(command)
        return self._client

    def cancel(self, request_id) -> None:
        if self._client is not None:
            self._client.cancel(request_id)

    def poll(self) -> list:
        """Deliver the engine's events to their requests' callbacks (the timer calls this)."""
        return self._client.poll() if self._client is not None else []

    def stop(self) -> None:
        """Shut the engine down (its running request is cancelled) and stop polling."""
        client, self._client = self._client, None
        if self._timer is not None:
            self._timer.stop()
        if client is not None:
            client.stop()
        self._busy.clear()


class EngineRun:
    """One ``segment``/``refine`` request of the warm engine, with the interface of a one-shot run.

    on_events gets ``[Progress]`` lists; on_finished is called once, after the last event.
    """

    def __init__(self, engine: WarmEngine, temp_dir: str | None = None) -> None:
        self.engine = engine
        self.temp_dir = temp_dir
        self.request_id = None
        self.on_events: Callable[[list], None] | None = None
        self.on_finished: Callable[[], None] | None = None
        self.finished = False
        self.cancelled = False
        self.discarded = False
        self.error: str | None = None
        self.result = None  # tmca.protocol.Result
        self.data: dict = {}  # the result event's whole data (result_id, seconds, volume_cached, finding, ...)

    def send(self, command: Sequence[str], op: str, **fields: Any) -> "EngineRun":
        self.request_id = self.engine.request(command, op, self._on_event, **fields)
        return self

    def _on_event(self, event) -> None:
        if not event.terminal:
            if event.name == "progress" and self.on_events is not None:
                self.on_events([event.parsed])
            return
        if event.name == "result":
            self.result, self.data = event.parsed, dict(event.data)
        elif event.name == "cancelled":
            self.cancelled = True
        else:
            self.error = event.message or f"the engine answered {event.name!r}"
        self.finished = True
        if self.on_finished is not None:
            self.on_finished()

    @property
    def result_id(self) -> str | None:
        return self.data.get("result_id")

    def wait(self, on_poll: Callable[[list], None] | None = None, interval_s: float = 0.02) -> None:
        """Block until the request ended, polling the engine (``on_poll`` keeps a GUI alive)."""
        while not self.finished:
            self.engine.poll()
            if on_poll is not None:
                on_poll([])
            if not self.finished:
                time.sleep(interval_s)

    def cancel(self) -> None:
        if not self.finished and self.request_id is not None:
            self.engine.cancel(self.request_id)

    def discard(self) -> None:
        """Never import this run's result, even if it has just arrived."""
        self.discarded = True
        self.cancel()

    def outcome(self) -> RunOutcome:
        if self.discarded or self.cancelled:
            return RunOutcome(cancelled=True)
        if self.error is not None or self.result is None:
            return RunOutcome(error=self.error or "the engine gave no result")
        return RunOutcome(findings=tuple(self.result.findings))

    def cleanup(self) -> None:
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class VolumeFiles:
    """The scans written for the engine, one file per scan and version (a new version replaces the old file).

    The engine keeps a loaded volume by path, size and modification time, so an unchanged scan must
    keep its file: a second report on it then skips reading and preprocessing.
    """

    def __init__(self, parent_dir: str | None = None) -> None:
        self._parent_dir = parent_dir
        self._folder: str | None = None
        self._files: dict[str, tuple[Any, str]] = {}
        self._written = 0

    def path_for(self, key: str, stamp: Any, write: Callable[[str], None]) -> tuple[str, bool]:
        """The file of scan ``key`` at version ``stamp``, written with ``write(path)`` when new; (path, written)."""
        known = self._files.get(key)
        if known is not None and known[0] == stamp and os.path.exists(known[1]):
            return known[1], False
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="TMCASegmenter-scans-", dir=self._parent_dir)
        self._written += 1
        path = os.path.join(self._folder, f"scan-{self._written}.nrrd")
        write(path)
        if known is not None:
            Path(known[1]).unlink(missing_ok=True)
        self._files[key] = (stamp, path)
        return path, True

    def clear(self) -> None:
        """Delete every written scan."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder, self._files = None, {}
