"""The Slicer module's warm-engine client (TMCASegmenterLib.engine_client) with the real engine, on a Qt event loop."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from qt_loop import run_until
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication

from TMCASegmenterLib.commands import child_environment
from TMCASegmenterLib.engine_client import EngineClient, EnginePoller, serve_command
from tmca.errors import TMCAError
from tmca.protocol import RequestError

MODULE_DIR = Path(__file__).resolve().parents[2] / "TMCASegmenter"
REPORT = "Unilateral pulmonary infection, one infected area, middle left lung."
TIMEOUT_S = 180.0


def run_until_done(condition) -> bool:
    return run_until(condition, TIMEOUT_S)


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])




def test_serve_command_runs_the_engine_module_and_refuses_bad_choices(tmp_path):
    assert serve_command("/py", None, "cpu") == ["/py", "-m", "tmca.cli", "serve", "--stdio", "--device", "cpu"]
    assert serve_command("/py", tmp_path, "cuda")[-4:] == ["--model", str(tmp_path), "--device", "cuda"]
    with pytest.raises(TMCAError, match="unknown device"):
        serve_command("/py", None, "tpu")
    with pytest.raises(TMCAError, match="does not exist"):
        serve_command("/py", tmp_path / "missing", "cpu")


@pytest.mark.slow
def test_client_delivers_events_restarts_a_killed_engine_and_stops_it(app, scans, tmp_path):
    everything, logs = [], []
    client = EngineClient(serve_command(sys.executable, None, "cpu") + ["--batch-size", "4"], env=child_environment(MODULE_DIR),
                          on_event=everything.append, on_log=logs.append)
    poller = EnginePoller(client, QTimer())
    poller.start()
    try:
        started = time.perf_counter()
        first: list = []
        request = client.request("segment", on_event=first.append, image=scans["small"], report=REPORT, output=tmp_path / "a.seg.nrrd")
        assert client.running and request in client.pending  # returned at once, the engine still loading
        assert run_until_done(lambda: first and first[-1].terminal)
        print(f"\nclient: engine start + first segment {time.perf_counter() - started:.2f} s")
        assert [e.name for e in first] == ["progress"] * (len(first) - 1) + ["result"]
        assert all(e.request_id == request for e in first) and first[-1].parsed.findings[0].name == "infected area, middle left lung"
        assert client.info["model_id"] and client.can_refine == client.info["can_refine"]
        assert (tmp_path / "a.seg.nrrd").is_file() and request not in client.pending
        result_id = first[-1].data["result_id"]
        with pytest.raises(RequestError, match="needs the field 'output'"):  # refused before it is sent
            client.request("segment", image=scans["small"], report=REPORT)

        first_pid = client.pid
        doomed: list = []
        client.request("segment", on_event=doomed.append, image=scans["large"], report=REPORT, output=tmp_path / "d.seg.nrrd")
        assert run_until_done(lambda: any(e.data.get("stage") == "segmenting" for e in doomed))
        os.kill(first_pid, signal.SIGKILL)
        assert run_until_done(lambda: doomed and doomed[-1].terminal)
        assert doomed[-1].name == "error" and "stopped unexpectedly" in doomed[-1].message and not client.running

        stale: list = []
        client.request("refine", on_event=stale.append, result_id=result_id, finding=0, clicks=[{"point": [0, 0, 0], "positive": True}],
                       output=tmp_path / "r.seg.nrrd")
        assert run_until_done(lambda: stale and stale[-1].terminal)
        assert stale[-1].name == "error" and "restarted" in stale[-1].message and not client.running  # not sent anywhere

        again: list = []
        client.request("segment", on_event=again.append, image=scans["small"], report=REPORT, output=tmp_path / "b.seg.nrrd")
        assert client.running and client.pid != first_pid and client.generation == 2
        assert run_until_done(lambda: again and again[-1].terminal)
        assert again[-1].name == "result" and again[-1].data["volume_cached"] is False  # a new engine: nothing kept

        running: list = []
        client.request("segment", on_event=running.append, image=scans["large"], report=REPORT, output=tmp_path / "c.seg.nrrd")
        assert run_until_done(lambda: any(e.data.get("stage") == "segmenting" for e in running))
    finally:
        poller.stop()
        code = client.stop()
    assert code == 0 and not client.running and client.pending == []
    assert running[-1].name == "cancelled" and not (tmp_path / "c.seg.nrrd").exists()
    assert any(e.name == "done" and e.data.get("op") == "shutdown" for e in everything)
    assert all(line.stream == "stderr" for line in logs)  # the engine writes nothing but events on stdout


def test_stop_terminates_an_engine_that_does_not_answer(tmp_path):
    client = EngineClient([sys.executable, "-c", "import time; time.sleep(120)"])
    answered: list = []
    client.request("hello", on_event=answered.append)
    started = time.monotonic()
    code = client.stop(timeout=0.5)
    assert code not in (0, None) and time.monotonic() - started < 10 and not client.running
    assert answered[-1].name == "cancelled" and "stopped" in answered[-1].message


def test_an_engine_that_cannot_start_answers_with_its_reason(app, tmp_path):
    client = EngineClient([sys.executable, "-m", "tmca.cli", "serve", "--stdio", "--model", str(tmp_path / "none")],
                          env=child_environment(MODULE_DIR))
    answered: list = []
    client.request("hello", on_event=answered.append)
    deadline = time.monotonic() + TIMEOUT_S
    while not (answered and answered[-1].terminal) and time.monotonic() < deadline:
        client.poll()
        time.sleep(0.05)
    assert answered[-1].name == "error" and "model folder not found" in answered[-1].message
    assert answered[-1].data["engine_exit"] == 2 and not client.running


@pytest.fixture(scope="module")
def scans(small_and_large_ct):
    return small_and_large_ct
