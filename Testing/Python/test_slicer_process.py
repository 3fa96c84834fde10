"""The module's background engine runner (TMCASegmenterLib.process), with real child processes."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from datapaths import real_data_file
from TMCASegmenterLib import commands, geometry, results
from TMCASegmenterLib.process import BackgroundProcess, LogLine
from tmca.protocol import Progress

MODULE_DIR = Path(__file__).resolve().parents[2] / "TMCASegmenter"


def _child(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(script)]


def _wait_for_line(process: BackgroundProcess, prefix: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in process.poll():
            if isinstance(event, LogLine) and event.text.startswith(prefix):
                return event.text
        time.sleep(0.02)
    raise AssertionError(f"no line starting with {prefix!r}")


def test_background_process_streams_progress_and_result(tmp_path):
    args = _child(tmp_path, """
        import json, sys, time
        for done in range(3):
            print(json.dumps({"event": "progress", "stage": "inference", "done": done, "total": 2}), flush=True)
            time.sleep(0.05)
        print("a library warning", flush=True)
        print("note on stderr", file=sys.stderr, flush=True)
        print(json.dumps({"event": "result", "output": "o.seg.nrrd", "probability": "p.nrrd",
                          "findings": [{"name": "a", "segment_id": "Segment_1", "volume_ml": 1.5, "components": 1}]}), flush=True)
    """)
    temp_dir = tmp_path / "run"
    temp_dir.mkdir()
    process = BackgroundProcess(args, temp_dir=temp_dir).start()
    events: list = []
    assert process.wait(timeout=60, on_poll=events.extend) == 0
    assert [e.done for e in events if isinstance(e, Progress)] == [0, 1, 2]
    assert LogLine("a library warning") in events and LogLine("note on stderr", "stderr") in events
    assert process.result.findings[0].segment_id == "Segment_1" and process.finished and not process.running
    outcome = process.outcome()
    assert outcome.ok and outcome.findings == process.result.findings
    process.cancel()  # a no-op once the process has exited: the results stay readable
    assert process.outcome().ok and temp_dir.is_dir()
    process.cleanup()
    assert not temp_dir.exists()


def test_background_process_reports_the_engine_error(tmp_path):
    args = _child(tmp_path, """
        import sys
        print("tmca segment: error: input not found: scan.nrrd", file=sys.stderr)
        sys.exit(2)
    """)
    with BackgroundProcess(args) as process:
        assert process.wait(timeout=60) == 2
        assert process.error_message() == "input not found: scan.nrrd"
        assert process.outcome().error == "input not found: scan.nrrd"


def test_background_process_without_result_is_an_error(tmp_path):
    with BackgroundProcess(_child(tmp_path, "print('done')")) as process:
        process.wait(timeout=60)
        assert "without reporting a result" in process.outcome().error


def test_cancel_returns_at_once_and_later_polls_kill_what_ignores_it(tmp_path):
    """Cancel must not block the GUI: the child and its grandchild ignore SIGTERM, the grace period is 2 s."""
    psutil = pytest.importorskip("psutil")
    args = _child(tmp_path, """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"])
        print(f"grandchild {grandchild.pid}", flush=True)
        time.sleep(120)
    """)
    temp_dir = tmp_path / "run"
    temp_dir.mkdir()
    process = BackgroundProcess(args, temp_dir=temp_dir).start()
    grandchild_pid = int(_wait_for_line(process, "grandchild ").split()[1])
    time.sleep(0.3)  # both have installed their SIGTERM handlers
    child_pid = process.pid

    started = time.monotonic()
    process.cancel(grace_seconds=2.0)
    assert time.monotonic() - started < 0.5
    assert process.cancelled and process.running

    assert process.wait(timeout=30) is not None
    assert time.monotonic() - started >= 2.0
    for pid in (child_pid, grandchild_pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    outcome = process.outcome()
    assert outcome.cancelled and outcome.error is None and not outcome.ok
    process.cleanup()
    assert not temp_dir.exists()


def test_cancel_stops_a_cooperative_child_without_waiting_for_the_grace_period(tmp_path):
    args = _child(tmp_path, "import time; print('started', flush=True); time.sleep(120)")
    process = BackgroundProcess(args).start()
    _wait_for_line(process, "started")
    started = time.monotonic()
    process.cancel(grace_seconds=30.0)
    process.wait(timeout=20)
    assert time.monotonic() - started < 10 and process.outcome().cancelled


def test_discard_drops_a_run_that_has_already_finished(tmp_path):
    """Scene closed in the last poll interval: the process has exited, its result is not yet imported."""
    args = _child(tmp_path, """
        import json
        print(json.dumps({"event": "result", "output": "o.seg.nrrd", "findings": [{"name": "a"}]}), flush=True)
    """)
    process = BackgroundProcess(args).start()
    process.wait(timeout=60)
    process.cancel()
    assert process.outcome().ok, "cancel leaves a finished run importable"
    process.discard()
    outcome = process.outcome()
    assert outcome.cancelled and not outcome.ok


@pytest.mark.slow
def test_background_segment_run_gives_what_the_module_imports(tmp_path, tiny_model_dir):
    """The module's flow without Slicer: command line, child environment, progress, result files."""
    source = real_data_file("brain1_image.nrrd")
    report = tmp_path / "report.txt"
    report.write_text("Small nodule in the upper left lung. Large mass in the lower right lung.", encoding="utf-8")
    output, probability = tmp_path / "result.seg.nrrd", tmp_path / "probability.nrrd"
    args = commands.segment_command(sys.executable, source, report, output, probability, model=tiny_model_dir,
                                    device="cpu", threshold=0.5)
    env = commands.child_environment(MODULE_DIR, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    env["OMP_NUM_THREADS"] = "2"
    with BackgroundProcess(args, env=env) as process:
        events: list = []
        assert process.wait(timeout=600, on_poll=events.extend) == 0, list(process.stderr_tail)
    assert any(isinstance(e, Progress) for e in events)
    result = process.result
    assert Path(result.output) == output and Path(result.probability) == probability
    assert len(result.findings) == 2

    from tmca.segio import read_segmentation

    masks, specs, _ = read_segmentation(output)
    image = sitk.ReadImage(str(probability))
    assert geometry.same_geometry(geometry.ijk_to_ras_matrix(image), geometry.ijk_to_ras_matrix(sitk.ReadImage(str(source))))
    channels = results.probability_channels(sitk.GetArrayFromImage(image), len(result.findings))
    masks_by_id = {spec.segment_id: mask for spec, mask in zip(specs, masks)}
    for index, finding in enumerate(result.findings):
        assert finding.segment_id in masks_by_id, finding
        assert np.array_equal(results.threshold_probability(channels[index], 0.5), masks_by_id[finding.segment_id])
