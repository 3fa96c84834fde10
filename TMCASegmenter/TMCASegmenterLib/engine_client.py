"""Talk to the warm engine (``tmca serve --stdio``) without blocking the caller.

:class:`EngineClient` starts the engine on the first request, writes requests as JSON lines
(:func:`tmca.protocol.encode_request`, the engine's own schema), and reads its events on a
background thread into a queue. :meth:`EngineClient.poll` (a Qt timer in Slicer: :class:`EnginePoller`)
drains the queue and hands each event to the callback of the request it answers. An engine that
died is noticed there: its pending requests get an ``error`` event, and the next request starts a
new engine. :meth:`EngineClient.stop` asks it to shut down and terminates it after a timeout.
No slicer, qt, vtk or torch here.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from tmca.choices import DEVICES
from tmca.errors import TMCAError
from tmca.protocol import (
    PROTOCOL_VERSION, EngineEvent, RequestId, encode_event, encode_request, engine_error_message, engine_event, error_event,
    parse_engine_event,
)  # fmt: skip
from TMCASegmenterLib.process import LogLine, PathLike, _platform_popen_options

EventCallback = Callable[[EngineEvent], None]
ClientEvent = Union[EngineEvent, LogLine]

STOP_TIMEOUT_S = 5.0
"""How long :meth:`EngineClient.stop` waits for a clean shutdown before it terminates the engine."""

CLOSED_GRACE_S = 2.0
"""An engine still alive this long after closing its stdout is terminated (nothing more can come from it)."""


def serve_command(python: str, model: PathLike | None = None, device: str = "auto") -> list[str]:
    """Command line of the warm engine (``model`` None or "" = the bundled demo model)."""
    if device not in DEVICES:
        raise TMCAError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    args = [python, "-m", "tmca.cli", "serve", "--stdio"]
    if model:
        if not Path(model).is_dir():
            raise TMCAError(f"model folder {model} does not exist; choose a trained model folder or the bundled demo")
        args += ["--model", str(model)]
    return args + ["--device", device]


@dataclass
class _Pending:
    op: str
    callback: EventCallback | None
    generation: int


class EngineClient:
    """One warm engine process, started on demand and restarted after it died.

    command: the engine's command line (:func:`serve_command`); env, cwd: its environment and folder.
    on_event: gets every event (all requests', and those of no request); on_log: stderr lines and
    stdout lines that are not events. Callbacks run only inside :meth:`poll` (and :meth:`stop`).
    """

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None, cwd: PathLike | None = None,
                 on_event: EventCallback | None = None, on_log: Callable[[LogLine], None] | None = None,
                 stderr_lines_kept: int = 200) -> None:
        self.command = [str(a) for a in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_event = on_event
        self.on_log = on_log
        self.generation = 0
        self.info: Mapping[str, Any] | None = None
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines_kept)
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[tuple[int, str, str | None]] = queue.Queue()
        self._pending: dict[RequestId, _Pending] = {}
        self._deferred: list[EngineEvent] = []
        self._result_generation: dict[str, int] = {}
        self._stdout_closed_at: float | None = None
        self._stopping = False
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> bool:
        """An engine process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def pending(self) -> list[RequestId]:
        """Requests sent and not yet answered with their last event."""
        return list(self._pending)

    @property
    def can_refine(self) -> bool:
        """The running engine said (in ``hello``) that its model refines with clicks."""
        return bool(self.info and self.info.get("can_refine"))

    # ------------------------------------------------------------------ requests

    def request(self, op: str, on_event: EventCallback | None = None, **fields: Any) -> RequestId:
        """Send a request (starting the engine if needed) and return its id at once.

        ``on_event`` gets each of its events from :meth:`poll`, the last one ``terminal``. A refine of a
        result from an engine that has since been restarted is answered with an ``error`` event.
        A field the protocol refuses raises :class:`tmca.protocol.RequestError` here.
        """
        request_id = f"q{next(self._ids)}"
        line = encode_request(op, request_id, **fields)
        if op == "refine" and self._result_generation.get(fields.get("result_id")) != self._live_generation():
            self._pending[request_id] = _Pending(op, on_event, self.generation)
            self._deferred.append(_event(error_event(
                request_id, f"result {fields.get('result_id')!r} is not from the running engine (it was restarted since); "
                            "apply the report again")))
            return request_id
        self._ensure_started()
        self._pending[request_id] = _Pending(op, on_event, self.generation)
        if not self._write(line):  # the engine died since we last looked: start another and send again
            self._pending.pop(request_id)
            self._ensure_started()
            self._pending[request_id] = _Pending(op, on_event, self.generation)
            self._write(line)
        return request_id

    def cancel(self, target: RequestId) -> RequestId | None:
        """Ask the engine to cancel request ``target``; None when it is not pending."""
        if target not in self._pending or not self.running:
            return None
        return self.request("cancel", target=target)

    def _live_generation(self) -> int | None:
        return self.generation if self.running else None

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._declare_dead()
        if self._process is None:
            self._start()

    def _start(self) -> None:
        self.generation += 1
        self._stdout_closed_at = None
        self._stopping = False
        self.info = None
        self._process = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **_platform_popen_options())
        for stream_name in ("stdout", "stderr"):
            reader = threading.Thread(target=self._read, args=(self._process, stream_name, self.generation),
                                      name=f"tmca-engine-{stream_name}", daemon=True)
            reader.start()
        hello_id = f"q{next(self._ids)}"
        self._pending[hello_id] = _Pending("hello", None, self.generation)
        self._write(encode_request("hello", hello_id))

    def _read(self, process: subprocess.Popen, stream_name: str, generation: int) -> None:
        stream = getattr(process, stream_name)
        for line in iter(stream.readline, ""):
            self._lines.put((generation, stream_name, line.rstrip("\r\n")))
        stream.close()
        self._lines.put((generation, stream_name, None))

    def _write(self, line: str) -> bool:
        """Send one line; False when the engine's stdin is closed (it died)."""
        with self._write_lock:
            try:
                self._process.stdin.write(line + "\n")
                self._process.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    # ------------------------------------------------------------------ events

    def poll(self) -> list[ClientEvent]:
        """Deliver the events received since the last call (never blocks); returns them in order."""
        delivered: list[ClientEvent] = []
        while self._deferred:
            delivered.append(self._deliver(self._deferred.pop(0)))
        while True:
            try:
                generation, stream_name, line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                if stream_name == "stdout" and generation == self.generation:
                    self._stdout_closed_at = time.monotonic()
                continue
            if stream_name == "stderr":
                self.stderr_tail.append(line)
                delivered.append(self._log(LogLine(line, "stderr")))
                continue
            event = parse_engine_event(line) if generation == self.generation else None
            delivered.append(self._deliver(event) if event is not None else self._log(LogLine(line, "stdout")))
        if self._process is not None and self._stdout_closed_at is not None:
            if self._process.poll() is None and time.monotonic() - self._stdout_closed_at > CLOSED_GRACE_S:
                self._process.terminate()  # reaped by a later poll
            if self._process.poll() is not None:
                self._declare_dead()
                while self._deferred:
                    delivered.append(self._deliver(self._deferred.pop(0)))
        return delivered

    def _deliver(self, event: EngineEvent) -> EngineEvent:
        pending = self._pending.get(event.request_id) if event.request_id is not None else None
        if pending is not None:
            if event.terminal:
                del self._pending[event.request_id]
            if event.name == "hello" and pending.op == "hello":
                self._hello(event)
            if event.name == "result" and event.data.get("result_id"):
                self._result_generation[str(event.data["result_id"])] = pending.generation
            if pending.callback is not None:
                pending.callback(event)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def _hello(self, event: EngineEvent) -> None:
        self.info = dict(event.data)
        if event.data.get("protocol") != PROTOCOL_VERSION:
            self._deferred.append(_event(error_event(
                None, f"the engine speaks protocol {event.data.get('protocol')}, this module {PROTOCOL_VERSION}; "
                      "reinstall the TMCASegmenter extension so both match")))

    def _log(self, line: LogLine) -> LogLine:
        if self.on_log is not None:
            self.on_log(line)
        return line

    def _declare_dead(self) -> None:
        """The engine has gone: its pending requests get their last event (deferred to :meth:`poll`)."""
        if self._process is None:
            return
        code = self._process.poll()
        if self._stopping:
            message = "the engine was stopped; nothing more was written"
        else:
            why = engine_error_message(self.stderr_tail) or "no message"
            message = f"the engine stopped unexpectedly (exit code {code}: {why}); it starts again on the next request"
        for request_id, pending in list(self._pending.items()):
            if pending.generation == self.generation:
                name = "cancelled" if self._stopping else "error"
                self._deferred.append(_event(engine_event(name, request_id, message=message, engine_exit=code)))
        self._process = None
        self.info = None

    # ------------------------------------------------------------------ the end

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Shut the engine down (its queued and running requests are cancelled), terminating it after
        ``timeout`` seconds; delivers the last events. Returns its exit code (None when none ran)."""
        process = self._process
        if process is None:
            return None
        self._stopping = True
        if process.poll() is None:
            self._write(encode_request("shutdown", f"q{next(self._ids)}"))
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        deadline = time.monotonic() + CLOSED_GRACE_S
        while self._stdout_closed_at is None and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.01)
        self.poll()
        self._declare_dead()
        self.poll()
        return process.returncode

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EnginePoller:
    """Every ``intervalMs`` (a Qt timer, passed in): deliver the client's events to their callbacks."""

    def __init__(self, client: EngineClient, timer, intervalMs: int = 50) -> None:
        self._client = client
        self._timer = timer
        self._timer.setInterval(intervalMs)
        self._timer.timeout.connect(self._client.poll)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()


def _event(data: dict[str, Any]) -> EngineEvent:
    """An event the client makes itself (an engine that died, a stale result), parsed like the engine's."""
    return parse_engine_event(encode_event(data))
