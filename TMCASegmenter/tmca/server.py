"""The warm engine: ``tmca serve --stdio`` keeps the model, the loaded volumes and the results between requests.

Requests arrive one JSON object per line on stdin (:func:`tmca.protocol.parse_request_line`); events
leave one per line on stdout, each with its request's ``id`` (docs/ENGINE_PROTOCOL.md). The thread
that reads stdin checks every request and answers ``hello``, ``cancel``, ``forget`` and ``shutdown``
at once; one worker thread runs ``segment`` and ``refine`` in arrival order, so a cancel or a
shutdown reaches a running job (through the Segmenter's ``cancel`` flag). A bad request gets one
``error`` event and the engine keeps serving. The end of stdin lets the queued work finish, then
the process exits 0.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tmca import __version__
from tmca.checkpoint import MANIFEST_FILE, sha256_of
from tmca.choices import check_modality, check_plane
from tmca.engine_state import (
    EngineState, check_clicks_inside, finding_index, input_stamp, load_volume, read_start_mask,
)  # fmt: skip
from tmca.errors import CancelledError, TMCAError
from tmca.formats import SEGMENTATION_SUFFIXES, WRITABLE_VOLUME_SUFFIXES
from tmca.outputs import check_output_name, check_outputs_apart
from tmca.protocol import (
    PROTOCOL_VERSION, REQUEST_FIELDS, Request, RequestError, RequestId, encode_event, engine_event, error_event,
    parse_request_line, progress_event, result_event,
)  # fmt: skip

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_S = 10.0
"""How long ``shutdown`` waits for a cancelled job to stop before the process exits anyway."""


class EventWriter:
    """Writes events as UTF-8 JSON lines, one thread at a time; once the reader has gone, drops them (``broken``)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.broken = False
        self._lock = threading.Lock()

    def __call__(self, event: Mapping[str, Any]) -> None:
        line = (encode_event(event) + "\n").encode("utf-8")
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):  # a closed pipe: the client has gone
                self.broken = True


@dataclass
class _Job:
    """A queued or running ``segment``/``refine``; ``state``: queued, running, or dropped (cancelled while queued)."""

    request: Request
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"


class EngineServer:
    """Answer requests with one loaded :class:`tmca.inference.Segmenter`; ``emit`` writes one event."""

    def __init__(self, segmenter: Any, emit: Callable[[Mapping[str, Any]], None], max_results: int = 8, max_volumes: int = 2) -> None:
        self.segmenter = segmenter
        self.emit = emit
        self.state = EngineState(max_results, max_volumes)
        self.model_id = sha256_of(Path(segmenter.model_path) / MANIFEST_FILE)
        self._lock = threading.Lock()
        self._jobs: dict[RequestId, _Job] = {}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="tmca-engine-worker", daemon=True)

    # ------------------------------------------------------------------ the reading thread

    def serve(self, lines: Iterable[str]) -> int:
        """Answer every line until ``shutdown`` or the end of ``lines``; returns the exit status."""
        self._worker.start()
        for line in lines:
            if line.strip() and self.handle_line(line) == "shutdown":
                return 0
        self._queue.put(None)  # end of input: finish the queued work, then stop
        self._worker.join()
        return 0

    def handle_line(self, line: str) -> str | None:
        """Check and answer (or queue) one request line; returns its op when it was accepted."""
        try:
            request = parse_request_line(line)
        except RequestError as error:
            self.emit(error_event(error.request_id, str(error)))
            return None
        try:
            self._dispatch(request)
        except TMCAError as error:
            self.emit(error_event(request.id, str(error)))
            return None
        except Exception as error:  # a bug in the engine: report it and keep serving
            log.error("request %r failed", request.id, exc_info=True)
            self.emit(error_event(request.id, _internal(error)))
            return None
        return request.op

    def _dispatch(self, request: Request) -> None:
        if request.op == "hello":
            self.emit(self.hello(request.id))
        elif request.op == "segment":
            self._check_segment(request)
            self._submit(request)
        elif request.op == "refine":
            self._check_refine(request)
            self._submit(request)
        elif request.op == "cancel":
            self._cancel(request.get("target"), request.id)
        elif request.op == "forget":
            self._forget(request)
        elif request.op == "shutdown":
            self._shutdown(request.id)

    def hello(self, request_id: RequestId | None) -> dict[str, Any]:
        """The ``hello`` event: who this engine is and what it can do."""
        return engine_event(
            "hello", request_id, protocol=PROTOCOL_VERSION, tmca=__version__, model=str(self.segmenter.model_path),
            model_id=self.model_id, can_refine=self.segmenter.can_refine, device=str(self.segmenter.device),
            backend=getattr(getattr(self.segmenter, "runner", None), "name", "eager"), ops=list(REQUEST_FIELDS),
            max_results=self.state.results.capacity, max_volumes=self.state.volumes.capacity,
            feature_cache_mb=getattr(getattr(self.segmenter, "runner", None), "max_bytes", 0) // 2**20, pid=os.getpid(),
        )  # fmt: skip


    def _check_segment(self, request: Request) -> None:
        """Refuse, before queueing, a missing input, bad outputs and bad choices."""
        image = Path(request.get("image"))
        if not image.exists():
            raise TMCAError(f"image not found: {image}; check the path")
        output, probability = _outputs(request)
        check_outputs_apart(image, {"output": output, "probability map": probability})
        _check_threshold(request.get("threshold"))
        if request.get("plane"):
            check_plane(request.get("plane"))
        if request.get("modality"):
            check_modality(request.get("modality"))

    def _check_refine(self, request: Request) -> None:
        """Refuse, before queueing, an unknown result or finding, clicks off the image and bad outputs."""
        result_id = request.get("result_id")
        with self._lock:
            stored = self.state.stored(result_id)
        finding_index(stored.result, request.get("finding"), result_id)
        check_clicks_inside(request.get("clicks"), stored.result.reference)
        output, probability = _outputs(request)
        start_mask = Path(request.get("start_mask")) if request.get("start_mask") else None
        if start_mask is not None and not start_mask.is_file():
            raise TMCAError(f"start mask not found: {start_mask}; check the path")
        check_outputs_apart(stored.image, {"output": output, "probability map": probability}, other_inputs=[start_mask])
        _check_threshold(request.get("threshold"))

    def _submit(self, request: Request) -> None:
        with self._lock:
            if request.id in self._jobs:
                raise TMCAError(f"request id {request.id!r} is still in use by a queued or running request; use a new id")
            job = _Job(request)
            self._jobs[request.id] = job
        self._queue.put(job)

    def _cancel(self, target: RequestId, request_id: RequestId) -> None:
        with self._lock:
            job = self._jobs.get(target)
            dropped = job is not None and job.state == "queued"
            if dropped:
                job.state = "dropped"
                del self._jobs[target]
            elif job is not None:
                job.cancel.set()
        if dropped:
            self.emit(engine_event("cancelled", target, message="cancelled before it started; nothing was written"))
        self.emit(engine_event("done", request_id, op="cancel", target=target, found=job is not None))

    def _forget(self, request: Request) -> None:
        result_id, image, everything = request.get("result_id"), request.get("image"), request.get("all", False)
        if not (result_id or image or everything):
            raise TMCAError('forget needs "result_id", "image" or "all": true')
        with self._lock:
            results = self.state.results.clear() if everything else int(bool(result_id) and self.state.results.pop(result_id))
            volumes = self.state.volumes.clear() if everything else (self.state.forget_image(Path(image)) if image else 0)
        if everything and callable(getattr(self.segmenter.runner, "clear", None)):
            self.segmenter.runner.clear()  # the kept encoder features too
        self.emit(engine_event("done", request.id, op="forget", results=results, volumes=volumes))

    def _shutdown(self, request_id: RequestId) -> None:
        """Drop the queued jobs, stop the running one, and answer once the worker has stopped."""
        self.stop_jobs()
        self.emit(engine_event("done", request_id, op="shutdown"))

    def stop_jobs(self) -> None:
        """Drop the queued jobs (``cancelled``), cancel the running one and wait (a while) for the worker to end."""
        with self._lock:
            dropped = [job for job in self._jobs.values() if job.state == "queued"]
            for job in self._jobs.values():
                job.cancel.set()
                if job.state == "queued":
                    job.state = "dropped"
        for job in dropped:
            self.emit(engine_event("cancelled", job.request.id, message="the engine shut down before it started; nothing was written"))
        self._queue.put(None)
        if self._worker.is_alive():
            self._worker.join(SHUTDOWN_WAIT_S)

    # ------------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state == "dropped":
                    continue
                job.state = "running"
            last = self._run(job)
            with self._lock:
                self._jobs.pop(job.request.id, None)  # before its last event: a cancel after it finds nothing
            self.emit(last)

    def _run(self, job: _Job) -> dict[str, Any]:
        """Run a job; returns its last event."""
        request = job.request
        try:
            return self._segment(job) if request.op == "segment" else self._refine(job)
        except CancelledError as error:
            return engine_event("cancelled", request.id, message=str(error))
        except TMCAError as error:
            return error_event(request.id, str(error))
        except Exception as error:  # a bug in the engine: report it and keep serving
            log.error("request %r failed", request.id, exc_info=True)
            return error_event(request.id, _internal(error))

    def _progress(self, job: _Job) -> Callable[[int, int, str], None]:
        last: list[tuple[int, int, str]] = []

        def notify(done: int, total: int, stage: str) -> None:
            if getattr(self.emit, "broken", False):
                job.cancel.set()  # nobody reads the events any more
            if last and last[0] == (done, total, stage):
                return  # the Segmenter repeats "loading" after the engine's own
            last[:] = [(done, total, stage)]
            self.emit(progress_event(done, total, stage, id=job.request.id))

        return notify

    def _segment(self, job: _Job) -> dict[str, Any]:
        request, started = job.request, time.perf_counter()
        notify = self._progress(job)
        image = Path(request.get("image"))
        modality = check_modality(request.get("modality")) if request.get("modality") else None
        loaded, stamp, cached = self._volume(image, request.get("series_uid"), modality, notify)
        _stop_if_cancelled(job)
        hits = getattr(self.segmenter.runner, "hits", 0)
        result = self.segmenter.segment(
            loaded, request.get("report"), threshold=request.get("threshold", 0.5),
            split_findings=request.get("split_findings", True), progress=notify, cancel=job.cancel, plane=request.get("plane"),
        )  # fmt: skip
        reused = getattr(self.segmenter.runner, "hits", 0) - hits
        return self._finish(job, result, image, stamp, started, volume_cached=cached, encoder_batches_reused=reused)

    def _volume(self, image: Path, series_uid: str | None, modality: str | None, notify) -> tuple[Any, tuple, bool]:
        """The loaded volume: the kept one when its files are unchanged, else read now and kept."""
        key = self.state.volume_key(image, series_uid, modality)
        stamp = input_stamp(image)
        with self._lock:
            loaded = self.state.cached_volume(key, stamp)
        if loaded is not None:
            return loaded, stamp, True
        notify(0, 1, "loading")
        loaded, stamp = load_volume(image, series_uid, modality)
        with self._lock:
            self.state.keep_volume(key, loaded, stamp)
        return loaded, stamp, False

    def _refine(self, job: _Job) -> dict[str, Any]:
        request, started = job.request, time.perf_counter()
        result_id = request.get("result_id")
        with self._lock:
            stored = self.state.stored(result_id)
        if input_stamp(stored.image) != stored.stamp:
            raise TMCAError(f"{stored.image} changed since result {result_id!r} was computed; segment it again (that result is unchanged)")
        from tmca.interactive import Click

        index = finding_index(stored.result, request.get("finding"), result_id)
        start_mask = None
        if request.get("start_mask"):
            start_mask = read_start_mask(Path(request.get("start_mask")), stored.result.records[index].segment_id, stored.result.reference)
        clicks = [Click(click.point, click.positive) for click in request.get("clicks")]
        _stop_if_cancelled(job)
        result = self.segmenter.refine(stored.result, index, clicks, threshold=request.get("threshold"), start_mask=start_mask)
        return self._finish(job, result, stored.image, stored.stamp, started, refined_from=result_id, finding=index)

    def _finish(self, job: _Job, result: Any, image: Path, stamp: tuple, started: float, **extra: Any) -> dict[str, Any]:
        """Write the outputs (atomically) and keep the result; returns its ``result`` event."""
        from tmca.commands.segment import outcome_message

        _stop_if_cancelled(job)
        notify = self._progress(job)
        output, probability = _outputs(job.request)
        notify(0, 1, "writing")
        result.save(output, probability)
        notify(1, 1, "writing")
        with self._lock:
            result_id = self.state.keep_result(result, image, stamp)
        return result_event(
            str(output), result.records, str(probability) if probability else None, result.negative_records, id=job.request.id,
            relevance=None, dicom_seg=None, message=outcome_message(result), result_id=result_id,
            seconds=round(time.perf_counter() - started, 3), **extra,
        )  # fmt: skip


def _outputs(request: Request) -> tuple[Path, Path | None]:
    output = Path(request.get("output"))
    probability = Path(request.get("probability")) if request.get("probability") else None
    check_output_name(output, SEGMENTATION_SUFFIXES, "output")
    check_output_name(probability, WRITABLE_VOLUME_SUFFIXES, "probability map")
    return output, probability


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise TMCAError(f"threshold must be between 0 and 1 (exclusive), not {threshold:g}")


def _stop_if_cancelled(job: _Job) -> None:
    if job.cancel.is_set():
        raise CancelledError("cancelled by the user; nothing was written")


def _internal(error: Exception) -> str:
    return f"internal error: {type(error).__name__}: {error} (the engine's stderr has the details)"


def serve_stdio(model: str | None = None, device: str = "auto", batch_size: int | None = None, backend: str = "auto",
                max_results: int = 8, max_volumes: int = 2, feature_cache_mb: int = 1024) -> int:
    """Load the model, then answer requests from stdin on stdout until ``shutdown`` or the end of stdin.

    SIGTERM or SIGINT cancel the running job (nothing half-written is left) and end the process (130).
    """
    from tmca.inference import Segmenter
    from tmca.interrupts import cancel_on_signals

    events = sys.stdout.buffer
    stdout, sys.stdout = sys.stdout, sys.stderr  # a stray print must not break the event stream
    server = None
    try:
        with cancel_on_signals():
            segmenter = Segmenter(model, device=device, batch_size=batch_size, backend=backend, feature_cache_mb=feature_cache_mb)
            server = EngineServer(segmenter, EventWriter(events), max_results, max_volumes)
            lines = (raw.decode("utf-8", errors="replace") for raw in iter(sys.stdin.buffer.readline, b""))
            return server.serve(lines)
    except CancelledError:
        if server is not None:
            server.stop_jobs()
        raise
    finally:
        sys.stdout = stdout
