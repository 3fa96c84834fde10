"""Pure helpers for the TMCASegmenter Slicer module.

Everything the module computes lives here so that it runs, and is tested, in plain Python:
image geometry (IJK <-> RAS), array order, the ``tmca`` command lines, the JSON progress
protocol, result tables, re-thresholding, requirement checks and a background process
runner that works without Qt (the module's QTimer only calls :meth:`BackgroundProcess.poll`).

This module never imports slicer, qt or vtk; psutil and scipy are imported only when used.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from tmca.atomic import write_text_atomic
from tmca.errors import TMCAError
from tmca.metrics import mask_statistics
from tmca.protocol import Event, FindingRecord as Finding, Progress, Result, engine_error_message, parse_event_line

DEVICES = ("auto", "cpu", "cuda", "mps")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- geometry


def ijk_to_ras_from_geometry(origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """Return Slicer's 4x4 IJK-to-RAS matrix for an ITK geometry (LPS origin, spacing, 3x3 direction)."""
    direction_matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction_matrix @ np.diag(np.asarray(spacing, dtype=float))
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=float)
    return matrix


def ijk_to_ras_matrix(image: Any) -> np.ndarray:
    """Return the IJK-to-RAS matrix of a 3D SimpleITK image (anything with GetOrigin/GetSpacing/GetDirection)."""
    return ijk_to_ras_from_geometry(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Invert :func:`ijk_to_ras_from_geometry`: return the ITK (origin, spacing, direction) in LPS."""
    matrix = np.asarray(matrix, dtype=float)
    scaled_axes = LPS_TO_RAS @ matrix[:3, :3]
    spacing = np.linalg.norm(scaled_axes, axis=0)
    direction = scaled_axes / spacing
    origin = LPS_TO_RAS @ matrix[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def same_geometry(first: np.ndarray, second: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether two IJK-to-RAS matrices describe the same grid (within ``tolerance`` mm)."""
    return bool(np.allclose(np.asarray(first, dtype=float), np.asarray(second, dtype=float), atol=tolerance))


def to_slicer_array_order(array_ijk: np.ndarray) -> np.ndarray:
    """Reorder an array indexed ``[i, j, k(, component)]`` to Slicer's and SimpleITK's ``[k, j, i(, component)]``."""
    if array_ijk.ndim not in (3, 4):
        raise ValueError(f"expected a 3D array with an optional component axis, got shape {array_ijk.shape}")
    axes = (2, 1, 0) if array_ijk.ndim == 3 else (2, 1, 0, 3)
    return np.transpose(array_ijk, axes)


def from_slicer_array_order(array_kji: np.ndarray) -> np.ndarray:
    """Reorder a Slicer/SimpleITK array ``[k, j, i(, component)]`` to ``[i, j, k(, component)]``."""
    return to_slicer_array_order(array_kji)  # the axis swap is its own inverse


# --------------------------------------------------------------------------- command lines


def python_executable(which: Callable[[str], str | None] = shutil.which) -> str:
    """The Python that runs the engine: ``PythonSlicer`` inside Slicer, else the current interpreter."""
    return which("PythonSlicer") or sys.executable


def child_environment(module_dir: PathLike, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an engine process: ``module_dir`` (the folder holding ``tmca``) first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    paths = [str(module_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive while the engine runs
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _engine_options(model: PathLike | None, device: str, threshold: float) -> list[str]:
    if device not in DEVICES:
        raise TMCAError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if not 0.0 < threshold < 1.0:
        raise TMCAError(f"threshold {threshold:g} must be between 0 and 1 (exclusive); move the threshold slider")
    options: list[str] = []
    if model:
        if not Path(model).is_dir():
            raise TMCAError(f"model folder {model} does not exist; choose a trained model folder or the bundled demo")
        options += ["--model", str(model)]
    return options + ["--device", device, "--threshold", f"{threshold:g}"]


def segment_command(
    python: str,
    input_path: PathLike,
    report_file: PathLike,
    output: PathLike,
    probability: PathLike | None = None,
    model: PathLike | None = None,
    device: str = "auto",
    threshold: float = 0.5,
    split_findings: bool = True,
) -> list[str]:
    """Command line for ``tmca segment`` with JSON progress (``model`` None or "" = bundled demo)."""
    args = [python, "-m", "tmca.cli", "segment", str(input_path), "--report-file", str(report_file), "--output", str(output)]
    if probability:
        args += ["--probability", str(probability)]
    args += _engine_options(model, device, threshold) + ["--progress", "json"]
    if not split_findings:
        args.append("--no-split-findings")
    return args


def batch_command(
    python: str,
    study_dir: PathLike,
    output_dir: PathLike,
    reports_csv: PathLike | None = None,
    model: PathLike | None = None,
    device: str = "auto",
    threshold: float = 0.5,
    probability: bool = False,
) -> list[str]:
    """Command line for ``tmca batch`` with JSON progress."""
    args = [python, "-m", "tmca.cli", "batch", str(study_dir), "--output", str(output_dir)]
    if reports_csv:
        args += ["--reports", str(reports_csv)]
    args += _engine_options(model, device, threshold)
    if probability:
        args.append("--probability")
    return args + ["--progress", "json"]


def synth_command(python: str, output: PathLike, cases: int = 1, modality: str = "ct", dims: int = 3, seed: int = 3) -> list[str]:
    """Command line for ``tmca synth`` (synthetic cases for the module's self-test)."""
    return [python, "-m", "tmca.cli", "synth", "--output", str(output), "--cases", str(cases),
            "--modality", modality, "--dims", str(dims), "--seed", str(seed)]


@dataclass(frozen=True)
class LogLine:
    """A line that is not a protocol event (library warnings, stderr)."""

    text: str
    stream: str = "stdout"


ProcessEvent = Union[Progress, Result, Event, LogLine]


# --------------------------------------------------------------------------- results


def format_volume_ml(volume_ml: float) -> str:
    """Volume for display: two decimals, ``<0.01`` for tiny non-zero volumes."""
    if 0 < volume_ml < 0.005:
        return "<0.01"
    return f"{volume_ml:.2f}"


def finding_table_rows(findings: Iterable[Finding]) -> list[tuple[str, str, str]]:
    """Rows of the results table: (finding, volume mL, components)."""
    return [(f.name, format_volume_ml(f.volume_ml), str(f.components)) for f in findings]


def match_findings_to_segments(findings: Sequence[Finding], segments: Sequence[tuple[str, str, int]]) -> list[tuple[int, str]]:
    """Pair findings with the segments ``(segment_id, name, label_value)`` of a result file.

    Returns ``(finding_index, segment_id)`` pairs; matches by name, then by label value, then by
    position. Findings without a segment are left out.
    """
    unused = list(segments)
    pairs: list[tuple[int, str]] = []
    for index, finding in enumerate(findings):
        match = next((s for s in unused if s[1] == finding.name), None)
        match = match or next((s for s in unused if finding.label_value and s[2] == finding.label_value), None)
        if match is None and index < len(segments) and segments[index] in unused:
            match = segments[index]
        if match is not None:
            unused.remove(match)
            pairs.append((index, match[0]))
    return pairs


def update_finding_statistics(finding: Finding, mask: np.ndarray, voxel_volume_mm3: float) -> Finding:
    """The finding with voxels, volume and components recomputed from ``mask``."""
    voxels, volume_ml, components = mask_statistics(mask, voxel_volume_mm3)
    return dataclasses.replace(finding, voxels=voxels, volume_ml=volume_ml, components=components)


# --------------------------------------------------------------------------- probability maps


def probability_channels(array: np.ndarray, count: int | None = None) -> np.ndarray:
    """Probability map as ``[finding, k, j, i]`` float32 from a scalar ``[k, j, i]`` or vector ``[k, j, i, c]`` array."""
    if array.ndim == 3:
        channels = array[np.newaxis]
    elif array.ndim == 4:
        channels = np.moveaxis(array, -1, 0)
    else:
        raise TMCAError(f"probability map has shape {array.shape}; expected a 3D scalar or vector image")
    if count is not None and channels.shape[0] != count:
        raise TMCAError(f"probability map has {channels.shape[0]} channels but the result has {count} findings")
    return np.ascontiguousarray(channels, dtype=np.float32)


def threshold_probability(channel: np.ndarray, threshold: float) -> np.ndarray:
    """Binary uint8 mask of ``channel >= threshold``."""
    return (channel >= threshold).astype(np.uint8)


# --------------------------------------------------------------------------- batch and reports


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


def remember_report(recent: Sequence[str], report: str, limit: int = 8) -> list[str]:
    """Most-recent-first list of reports with ``report`` moved to the front (blank reports ignored)."""
    report = report.strip()
    if not report:
        return list(recent)[:limit]
    return ([report] + [r for r in recent if r != report])[:limit]


def elide(text: str, width: int = 70) -> str:
    """One-line preview of ``text`` at most ``width`` characters long."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "\u2026"


# --------------------------------------------------------------------------- requirements


def read_requirements(path: PathLike) -> list[str]:
    """Requirement lines of a requirements.txt (comments, blanks and pip options skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def missing_requirements(requirements: Iterable[str], installed_version: Callable[[str], str] | None = None) -> list[str]:
    """The requirements that are not installed at an acceptable version.

    ``installed_version(name)`` returns the installed version or raises
    ``importlib.metadata.PackageNotFoundError`` (the default looks it up in this interpreter).
    Without the ``packaging`` library only presence is checked.
    """
    from importlib import metadata

    lookup = installed_version or metadata.version
    return [line for line in requirements if not _requirement_satisfied(line, lookup, metadata.PackageNotFoundError)]


def _requirement_satisfied(line: str, lookup: Callable[[str], str], not_found: type[Exception]) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:
        name, specifier = _requirement_name(line), None
    else:
        requirement = Requirement(line)
        name, specifier = requirement.name, requirement.specifier
    try:
        version = lookup(name)
    except not_found:
        return False
    return specifier is None or specifier.contains(version, prereleases=True)


def _requirement_name(line: str) -> str:
    for separator in ("[", ";", "=", "<", ">", "!", "~", " "):
        line = line.split(separator, 1)[0]
    return line.strip()


# --------------------------------------------------------------------------- background process


@dataclass
class RunOutcome:
    """How an engine run ended: ``output`` is what the caller made of the result (e.g. a Slicer node)."""

    cancelled: bool = False
    error: str | None = None
    findings: tuple[Finding, ...] = ()
    output: Any = None

    @property
    def ok(self) -> bool:
        """Finished without error and was not cancelled."""
        return not self.cancelled and self.error is None


def kill_process_tree(pid: int, grace_seconds: float = 3.0) -> None:
    """Terminate ``pid`` and all its descendants (children first), killing those that outlive ``grace_seconds``."""
    try:
        import psutil
    except ImportError:
        _kill_process_group(pid)
        return
    try:
        parent = psutil.Process(pid)
        processes = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_seconds)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_seconds)


def _kill_process_group(pid: int) -> None:
    """Fallback without psutil: the child leads its own process group (POSIX) or taskkill /T (Windows)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class BackgroundProcess:
    """Run a ``tmca`` command without blocking the caller.

    Two reader threads put stdout/stderr lines on a queue; :meth:`poll` drains it and returns
    parsed events (:class:`Progress`, :class:`Result`, :class:`Event`, :class:`LogLine`), so a
    GUI timer or a plain loop (:meth:`wait`) can drive it. :meth:`cancel` kills the whole process
    tree; :meth:`cleanup` removes ``temp_dir``. Use as a context manager to always clean up.
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
        """Kill the process and everything it started, then remove ``temp_dir``.

        Does nothing once the process has exited, so a finished result can still be read.
        """
        if self._process is None or self._process.poll() is not None:
            return
        self.cancelled = True
        kill_process_tree(self._process.pid, grace_seconds)
        self._process.wait(timeout=grace_seconds + 5)
        for reader in self._readers:
            reader.join(timeout=grace_seconds)
        self.cleanup()

    def cleanup(self) -> None:
        """Remove ``temp_dir`` (call after reading the results)."""
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "BackgroundProcess":
        return self if self._process is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.running:
            self.cancel()
        self.cleanup()


def _platform_popen_options() -> dict[str, Any]:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def resource_dir(module_dir: str | os.PathLike) -> str:
    """The module's Resources folder: beside the module in a build or install tree, one level up
    (the extension's top-level ``Resources/``) when Slicer loads the module from its source folder."""
    beside = Path(module_dir) / "Resources"
    return str(beside if beside.is_dir() else Path(module_dir).parent / "Resources")
