"""The engine poller (TMCASegmenterLib.poller) on a real Qt event loop (PyQt5, offscreen)."""

from __future__ import annotations

import os
import sys
import textwrap
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from qt_loop import run_until
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication

from TMCASegmenterLib.poller import ProcessPoller
from TMCASegmenterLib.process import BackgroundProcess, LogLine
from tmca.protocol import Progress


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])



def _child(tmp_path, body: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(script)]


def test_events_and_the_end_of_a_run_arrive_through_the_timer(app, tmp_path):
    args = _child(tmp_path, """
        import json
        for done in range(3):
            print(json.dumps({"event": "progress", "stage": "inference", "done": done, "total": 2}), flush=True)
        print(json.dumps({"event": "result", "output": "o.seg.nrrd", "findings": [{"name": "a", "segment_id": "Segment_1"}]}), flush=True)
    """)
    process = BackgroundProcess(args).start()
    events, finished = [], []
    poller = ProcessPoller(process, events.extend, lambda: finished.append(process.outcome()), QTimer(), intervalMs=20)
    poller.start()
    run_until(lambda: finished, 30)
    assert [e.done for e in events if isinstance(e, Progress)] == [0, 1, 2]
    (outcome,) = finished
    assert outcome.ok and outcome.findings[0].segment_id == "Segment_1"


def test_cancel_keeps_the_event_loop_running_until_the_engine_is_gone(app, tmp_path):
    """Item 7: the engine ignores SIGTERM for the whole grace period; the GUI thread keeps serving events."""
    args = _child(tmp_path, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("started", flush=True)
        time.sleep(120)
    """)
    process = BackgroundProcess(args).start()
    finished, lines = [], []
    poller = ProcessPoller(process, lines.extend, lambda: finished.append(process.outcome()), QTimer(), intervalMs=50)
    poller.start()
    run_until(lambda: any(isinstance(e, LogLine) and e.text == "started" for e in lines), 30)
    time.sleep(0.2)  # the handler is installed

    ticks = []
    heartbeat = QTimer()
    heartbeat.setInterval(20)
    heartbeat.timeout.connect(lambda: ticks.append(time.monotonic()))
    heartbeat.start()
    started = time.monotonic()
    process.cancel(grace_seconds=1.5)
    assert time.monotonic() - started < 0.5
    run_until(lambda: finished, 30)
    heartbeat.stop()

    (outcome,) = finished
    assert outcome.cancelled and outcome.error is None
    assert time.monotonic() - started >= 1.5
    gaps = [b - a for a, b in zip([started] + ticks, ticks)]
    assert len(ticks) > 30 and max(gaps) < 0.5, "the event loop stalled while the engine was being stopped"
