"""``tmca serve --stdio``: the warm engine as a real process with the bundled demo model.

One engine serves most tests (loading it costs seconds); each test sends its own requests and reads
the events of their ids. The request schema is also tested on its own, without a process.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from tmca import protocol
from tmca.checkpoint import checkpoint_id
from tmca.cli import main
from tmca.models import resolve_model
from tmca.protocol import TERMINAL_EVENTS, ClickRequest, RequestError, encode_request, parse_request_line

REPORT_A = "Unilateral pulmonary infection, one infected area, middle left lung."
REPORT_B = "Nodule in the upper right lung. No pleural effusion."
BATCH = "4"  # small batches: many progress events, prompt cancellation
TIMEOUT_S = 180.0


class Engine:
    """A ``tmca serve --stdio`` process: requests as dicts or raw lines in, parsed events out."""

    def __init__(self, *extra: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tmca.cli", "serve", "--stdio", "--device", "cpu", "--batch-size", BATCH, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env)
        self.events: queue.Queue[dict | None] = queue.Queue()
        self.raw_stdout: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        self.seen: list[dict] = []

    def _read(self) -> None:
        for line in self.process.stdout:
            self.raw_stdout.append(line)
            self.events.put(json.loads(line))  # every stdout line must be a JSON event
        self.events.put(None)

    def send(self, request: dict | str) -> None:
        line = request if isinstance(request, str) else json.dumps(request)
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def until(self, request_id, timeout: float = TIMEOUT_S) -> list[dict]:
        """The events of ``request_id`` up to its last one (events of other ids stay available)."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [e for e in self.seen if e["id"] == request_id]
            if mine and mine[-1]["event"] in TERMINAL_EVENTS:
                self.seen = [e for e in self.seen if e["id"] != request_id]
                return mine
            event = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert event is not None, f"the engine ended: {''.join(self.stderr)[-2000:]}"
            self.seen.append(event)

    def ask(self, request: dict, timeout: float = TIMEOUT_S) -> list[dict]:
        self.send(request)
        return self.until(request["id"], timeout)

    def close(self) -> int:
        if self.process.poll() is None:
            with_stdin = not self.process.stdin.closed
            if with_stdin:
                self.send({"op": "shutdown", "id": "bye"})
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()



@pytest.fixture(scope="module")
def engine():
    engine = Engine()
    hello = engine.ask({"op": "hello", "id": "hello"})
    engine.hello = hello[-1]
    engine.hello_seconds = time.perf_counter() - engine.started
    yield engine
    engine.close()


def _segment(engine: Engine, request_id, image: Path, out: Path, report: str = REPORT_A, **fields) -> list[dict]:
    return engine.ask({"op": "segment", "id": request_id, "image": str(image), "report": report, "output": str(out), **fields})


# --------------------------------------------------------------------------- the request schema


def test_requests_written_by_clients_parse_back_in_the_engine():
    clicks = [ClickRequest((1.0, -2.5, 3.0), True), {"point": [0, 0, 7], "positive": False}]
    line = encode_request("refine", "r1", result_id="result-x-1", finding="nodule, left lung", clicks=clicks,
                          output=Path("/tmp/o.seg.nrrd"), probability=None)
    request = parse_request_line(line)
    assert request.op == "refine" and request.id == "r1" and request.get("finding") == "nodule, left lung"
    assert request.get("clicks") == (ClickRequest((1.0, -2.5, 3.0), True), ClickRequest((0.0, 0.0, 7.0), False))
    assert request.get("output") == "/tmp/o.seg.nrrd" and "probability" not in request.fields
    assert parse_request_line('{"op": "segment", "id": 7, "image": "a.nii", "report": "r", "output": "o.seg.nrrd", '
                              '"threshold": 1}').get("threshold") == 1.0


@pytest.mark.parametrize(("line", "request_id", "words"), [
    ("not json", None, "one JSON object per line"),
    ('["op"]', None, "JSON object"),
    ('{"op": "hello"}', None, '"id"'),
    ('{"op": "hello", "id": true}', None, '"id"'),
    ('{"op": "explode", "id": "x"}', "x", "unknown op 'explode'"),
    ('{"op": "segment", "id": "x", "image": "a.nii", "report": "r"}', "x", "needs the field 'output'"),
    ('{"op": "segment", "id": "x", "image": "a.nii", "report": "r", "output": "o", "treshold": 0.3}', "x", "unknown field 'treshold'"),
    ('{"op": "segment", "id": "x", "image": "a.nii", "report": "r", "output": "o", "threshold": true}', "x", "must be a number"),
    ('{"op": "segment", "id": "x", "image": " ", "report": "r", "output": "o"}', "x", "must not be empty"),
    ('{"op": "refine", "id": 3, "result_id": "r", "finding": 0, "clicks": [], "output": "o"}', 3, "at least one click"),
    ('{"op": "refine", "id": 3, "result_id": "r", "finding": 0, "clicks": [{"point": [1, 2], "positive": true}], "output": "o"}',
     3, "click 1 must be"),
    ('{"op": "refine", "id": 3, "result_id": "r", "finding": -1, "clicks": [{"point": [1, 2, 3], "positive": true}], "output": "o"}',
     3, "0 or more"),
])
def test_bad_request_lines_are_refused_with_their_id_and_the_reason(line, request_id, words):
    with pytest.raises(RequestError) as caught:
        parse_request_line(line)
    assert caught.value.request_id == request_id and words in str(caught.value)
    data = json.loads(line) if line.startswith("{") else None
    if isinstance(data, dict) and isinstance(data.get("op"), str) and request_id is not None:
        with pytest.raises(RequestError):  # the client's writer refuses what the engine would
            encode_request(data.pop("op"), data.pop("id"), **data)


# --------------------------------------------------------------------------- the engine process


@pytest.mark.slow
def test_hello_names_the_model_and_what_it_can_do(engine):
    hello = engine.hello
    assert hello["event"] == "hello" and hello["id"] == "hello" and hello["protocol"] == protocol.PROTOCOL_VERSION
    demo = resolve_model(None)
    assert Path(hello["model"]) == demo and hello["model_id"] == checkpoint_id(demo)
    assert hello["device"] == "cpu" and set(hello["ops"]) == set(protocol.REQUEST_FIELDS)
    from tmca.checkpoint import read_checkpoint_config

    assert hello["can_refine"] is bool(read_checkpoint_config(demo)["model"].get("click_inputs"))
    print(f"\nprocess start to hello: {engine.hello_seconds:.2f} s")


@pytest.mark.slow
def test_segment_matches_the_one_shot_command_and_a_second_report_reuses_the_volume(engine, volumes, tmp_path, capsys):
    image = volumes["small"]
    started = time.perf_counter()
    first = _segment(engine, "first", image, tmp_path / "a.seg.nrrd", probability=str(tmp_path / "a-prob.nrrd"))
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    second = _segment(engine, "second", image, tmp_path / "b.seg.nrrd", report=REPORT_B)
    second_s = time.perf_counter() - started

    assert [e["event"] for e in first[:-1]] == ["progress"] * (len(first) - 1) and first[-1]["event"] == "result"
    assert any(e["stage"] == "segmenting" and e["done"] == e["total"] > 0 for e in first[:-1])
    result, again = first[-1], second[-1]
    assert result["volume_cached"] is False and again["volume_cached"] is True
    assert result["encoder_batches_reused"] == 0 and again["encoder_batches_reused"] > 0  # the decoder only
    assert result["result_id"] != again["result_id"]
    assert [f["name"] for f in again["findings"]] == ["nodule, upper right lung"]
    assert [f["text"] for f in again["negative_findings"]] == ["No pleural effusion."]

    code = main(["segment", str(image), "--report", REPORT_A, "--output", str(tmp_path / "one.seg.nrrd"), "--device", "cpu",
                 "--batch-size", BATCH, "--probability", str(tmp_path / "one-prob.nrrd"), "--progress", "json"])
    assert code == 0
    one_shot = json.loads(capsys.readouterr().out.splitlines()[-1])
    with capsys.disabled():
        print(f"\nfirst segment {first_s:.2f} s, second report on the same volume {second_s:.2f} s "
              f"(engine: {result['seconds']:.2f} s, {again['seconds']:.2f} s)")
    engine_only = {"id", "result_id", "seconds", "volume_cached", "encoder_batches_reused"}
    assert set(result) - engine_only == set(one_shot)
    for key in one_shot:
        if key not in ("output", "probability"):
            assert result[key] == one_shot[key], key
    written = slicerio.read_segmentation(result["output"])
    assert [s["name"] for s in written["segments"]] == [f["name"] for f in result["findings"]]
    probability = sitk.GetArrayFromImage(sitk.ReadImage(result["probability"]))
    assert np.allclose(probability, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one-prob.nrrd"))), atol=1e-5)


@pytest.mark.slow
def test_bad_requests_get_one_error_each_and_the_engine_keeps_serving(engine, volumes, tmp_path):
    image = volumes["small"]
    made = _segment(engine, "made", image, tmp_path / "m.seg.nrrd")[-1]
    size = sitk.ReadImage(str(image)).GetSize()
    far = sitk.ReadImage(str(image)).TransformIndexToPhysicalPoint((size[0] + 5, 0, 0))
    segment = {"op": "segment", "image": str(image), "report": REPORT_A, "output": str(tmp_path / "x.seg.nrrd")}
    refine = {"op": "refine", "result_id": made["result_id"], "finding": 0, "output": str(tmp_path / "y.seg.nrrd"),
              "clicks": [{"point": list(far), "positive": True}]}
    bad = [
        ("{broken", None, "one JSON object per line"),
        ({"op": "fly", "id": "b1"}, "b1", "unknown op"),
        ({"op": "segment", "id": "b2", "image": str(image)}, "b2", "needs the field 'report'"),
        ({**segment, "id": "b3", "image": str(tmp_path / "missing.nii.gz")}, "b3", "image not found"),
        ({**segment, "id": "b4", "output": str(tmp_path / "x.png")}, "b4", "must end with .seg.nrrd"),
        ({**segment, "id": "b5", "threshold": 1.5}, "b5", "between 0 and 1"),
        ({**segment, "id": "b6", "probability": str(image)}, "b6", "would overwrite the input"),
        ({**refine, "id": "b7"}, "b7", "click 1: the click at"),
        ({**refine, "id": "b8", "result_id": "result-nope-1"}, "b8", "unknown result"),
        ({**refine, "id": "b9", "finding": 7}, "b9", "finding 7 does not exist"),
        ({**refine, "id": "b10", "finding": "spleen"}, "b10", "no finding named 'spleen'"),
        ({"op": "forget", "id": "b11"}, "b11", "forget needs"),
    ]
    for request, request_id, words in bad:
        if request_id is None:
            engine.send(request)
            events = engine.until(None)
        else:
            events = engine.ask(request)
        assert len(events) == 1 and events[0]["event"] == "error", events
        assert words in events[0]["message"], (words, events[0]["message"])
    assert engine.process.poll() is None
    assert engine.ask({"op": "hello", "id": "still"})[-1]["event"] == "hello"
    assert not (tmp_path / "x.seg.nrrd").exists() and not (tmp_path / "y.seg.nrrd").exists()


@pytest.mark.slow
def test_refine_with_a_model_without_click_inputs_says_why(tiny_model_dir, volumes, tmp_path):
    engine = Engine("--model", str(tiny_model_dir))
    try:
        assert engine.ask({"op": "hello", "id": "hello"})[-1]["can_refine"] is False
        image = volumes["small"]
        made = _segment(engine, "to-refine", image, tmp_path / "r.seg.nrrd")[-1]
        events = engine.ask({"op": "refine", "id": "refine", "result_id": made["result_id"], "finding": made["findings"][0]["name"],
                             "clicks": [{"point": list(_centre(image)), "positive": True}], "output": str(tmp_path / "refined.seg.nrrd")})
        assert events[-1]["event"] == "error" and "without click inputs" in events[-1]["message"]
        assert not (tmp_path / "refined.seg.nrrd").exists()
    finally:
        assert engine.close() == 0


def _centre(image: Path, index: tuple[int, int, int] | None = None) -> tuple[float, float, float]:
    reference = sitk.ReadImage(str(image))
    return reference.TransformIndexToPhysicalPoint(index or tuple(n // 2 for n in reference.GetSize()))



@pytest.mark.slow
def test_refine_redraws_one_finding_as_the_python_api_does(click_model_dir, volumes, tmp_path):
    import tmca

    image = volumes["small"]
    report = "Nodule in the upper left lung. Mass in the lower right lung."
    click = _centre(image)
    engine = Engine("--model", str(click_model_dir))
    try:
        assert engine.ask({"op": "hello", "id": 0})[-1]["can_refine"] is True
        made = _segment(engine, "seg", image, tmp_path / "s.seg.nrrd", report=report)[-1]
        first = engine.ask({"op": "refine", "id": "r1", "result_id": made["result_id"], "finding": 1,
                            "clicks": [{"point": list(click), "positive": True}], "output": str(tmp_path / "r1.seg.nrrd"),
                            "probability": str(tmp_path / "r1-prob.nrrd")})[-1]
        assert first["event"] == "result" and first["refined_from"] == made["result_id"] and first["finding"] == 1
        assert first["findings"][0] == made["findings"][0] and first["result_id"] != made["result_id"]

        segmenter = tmca.Segmenter(click_model_dir, device="cpu", batch_size=int(BATCH), backend="auto")
        expected = segmenter.refine(segmenter.segment(str(image), report), 1, [tmca.Click(click, True)])
        assert first["findings"] == [record.as_dict() for record in expected.records]
        assert np.allclose(sitk.GetArrayFromImage(sitk.ReadImage(first["probability"])),
                           np.moveaxis(expected.probabilities, 0, -1), atol=1e-4)

        reference = sitk.ReadImage(str(image))
        edited = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
        edited[:, 20:40, 20:40] = 1
        mask = sitk.GetImageFromArray(edited)
        mask.CopyInformation(reference)
        sitk.WriteImage(mask, str(tmp_path / "edited.nrrd"))
        second_click = _centre(image, (10, 10, 3))
        chained = engine.ask({"op": "refine", "id": "r2", "result_id": first["result_id"], "finding": "mass, lower right lung",
                              "clicks": [{"point": list(click), "positive": True}, {"point": list(second_click), "positive": False}],
                              "start_mask": str(tmp_path / "edited.nrrd"), "output": str(tmp_path / "r2.seg.nrrd")})[-1]
        assert chained["event"] == "result" and chained["refined_from"] == first["result_id"] and chained["finding"] == 1
        expected = segmenter.refine(expected, 1, [tmca.Click(click, True), tmca.Click(second_click, False)], start_mask=edited)
        assert chained["findings"] == [record.as_dict() for record in expected.records]

        sitk.WriteImage(sitk.GetImageFromArray(edited[:, :, :-1]), str(tmp_path / "cropped.nrrd"))
        refused = engine.ask({"op": "refine", "id": "r3", "result_id": first["result_id"], "finding": 1,
                              "clicks": [{"point": list(click), "positive": True}], "start_mask": str(tmp_path / "cropped.nrrd"),
                              "output": str(tmp_path / "r3.seg.nrrd")})[-1]
        assert refused["event"] == "error" and "not on the scan's grid" in refused["message"]
    finally:
        assert engine.close() == 0


@pytest.mark.slow
def test_a_changed_input_is_read_again_and_its_results_are_not_refined(engine, volumes, tmp_path):
    image = tmp_path / "scan.nii.gz"
    shutil.copy(volumes["small"], image)
    made = _segment(engine, "before", image, tmp_path / "before.seg.nrrd")[-1]
    assert made["volume_cached"] is False
    original = sitk.ReadImage(str(image))
    changed = sitk.GetImageFromArray(sitk.GetArrayFromImage(original)[::-1].copy())
    changed.CopyInformation(original)
    sitk.WriteImage(changed, str(image))
    later = time.time() + 5
    os.utime(image, (later, later))
    centre = original.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in original.GetSize()])
    refused = engine.ask({"op": "refine", "id": "stale", "result_id": made["result_id"], "finding": 0,
                          "clicks": [{"point": list(centre), "positive": True}], "output": str(tmp_path / "stale.seg.nrrd")})
    assert refused[-1]["event"] == "error" and "changed since result" in refused[-1]["message"]
    assert not (tmp_path / "stale.seg.nrrd").exists()
    assert _segment(engine, "after", image, tmp_path / "after.seg.nrrd")[-1]["volume_cached"] is False


@pytest.mark.slow
def test_forget_drops_results_and_volumes(engine, volumes, tmp_path):
    image = volumes["small"]
    made = _segment(engine, "keep", image, tmp_path / "k.seg.nrrd")[-1]
    done = engine.ask({"op": "forget", "id": "f1", "result_id": made["result_id"], "image": str(image)})[-1]
    assert done == {"event": "done", "id": "f1", "op": "forget", "results": 1, "volumes": 1}
    centre = sitk.ReadImage(str(image)).TransformContinuousIndexToPhysicalPoint((10, 10, 5))
    gone = engine.ask({"op": "refine", "id": "f2", "result_id": made["result_id"], "finding": 0,
                       "clicks": [{"point": list(centre), "positive": True}], "output": str(tmp_path / "g.seg.nrrd")})
    assert gone[-1]["event"] == "error" and "unknown result" in gone[-1]["message"]
    assert _segment(engine, "reload", image, tmp_path / "r.seg.nrrd")[-1]["volume_cached"] is False


@pytest.mark.slow
def test_cancel_stops_a_running_segment_and_drops_a_queued_one(engine, volumes, tmp_path):
    large = volumes["large"]
    engine.send({"op": "segment", "id": "long", "image": str(large), "report": REPORT_A, "output": str(tmp_path / "long.seg.nrrd")})
    engine.send({"op": "segment", "id": "queued", "image": str(large), "report": REPORT_B, "output": str(tmp_path / "q.seg.nrrd")})
    deadline = time.monotonic() + TIMEOUT_S
    while not any(e["id"] == "long" and e.get("stage") == "segmenting" and e["done"] > 0 for e in engine.seen):
        assert time.monotonic() < deadline
        engine.seen.append(engine.events.get(timeout=TIMEOUT_S))
    assert engine.ask({"op": "cancel", "id": "c1", "target": "queued"})[-1] == \
        {"event": "done", "id": "c1", "op": "cancel", "target": "queued", "found": True}
    assert engine.until("queued")[-1]["event"] == "cancelled"
    assert engine.ask({"op": "cancel", "id": "c2", "target": "long"})[-1]["found"] is True
    long = engine.until("long")
    assert long[-1]["event"] == "cancelled" and "nothing was written" in long[-1]["message"]
    assert max(e["done"] for e in long if e.get("stage") == "segmenting") < 160
    assert not (tmp_path / "long.seg.nrrd").exists() and not (tmp_path / "q.seg.nrrd").exists()
    assert engine.ask({"op": "cancel", "id": "c3", "target": "long"})[-1]["found"] is False
    assert engine.ask({"op": "hello", "id": "after-cancel"})[-1]["event"] == "hello"


@pytest.mark.slow
def test_end_of_input_finishes_the_queued_work_and_exits_cleanly(volumes, tmp_path):
    engine = Engine()
    engine.send({"op": "segment", "id": 1, "image": str(volumes["small"]), "report": REPORT_A, "output": str(tmp_path / "e.seg.nrrd")})
    engine.process.stdin.close()
    assert engine.process.wait(TIMEOUT_S) == 0
    assert engine.until(1)[-1]["event"] == "result" and (tmp_path / "e.seg.nrrd").is_file()
    assert all(line.startswith("{") for line in engine.raw_stdout)  # nothing but events on stdout


@pytest.mark.slow
def test_sigterm_cancels_the_running_job_and_ends_the_engine(volumes, tmp_path):
    """The client's last resort (terminate) leaves no half-written output."""
    engine = Engine()
    engine.send({"op": "segment", "id": "t", "image": str(volumes["large"]), "report": REPORT_A, "output": str(tmp_path / "t.seg.nrrd")})
    deadline = time.monotonic() + TIMEOUT_S
    while not any(e.get("stage") == "segmenting" and e["done"] > 0 for e in engine.seen):
        assert time.monotonic() < deadline
        engine.seen.append(engine.events.get(timeout=TIMEOUT_S))
    engine.process.terminate()
    assert engine.until("t")[-1]["event"] == "cancelled"
    assert engine.process.wait(60) == 130 and "stopped by SIGTERM" in "".join(engine.stderr)
    assert not list(tmp_path.iterdir())


def test_a_model_that_cannot_load_ends_the_engine_with_its_reason(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tmca.cli", "serve", "--stdio", "--model", str(tmp_path / "none")],
                            input="", capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 2 and result.stdout == ""
    assert protocol.engine_error_message(result.stderr.splitlines()).startswith("model folder not found")


@pytest.fixture(scope="module")
def volumes(small_and_large_ct):
    return small_and_large_ct
