"""The engine's event protocol: what the engine writes is what its callers parse."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from tmca import protocol
from tmca.progress import JsonProgress


def test_written_events_parse_back_to_the_same_records():
    stream = io.StringIO()
    writer = JsonProgress(stream)
    writer(3, 12, "segmenting")
    records = [protocol.FindingRecord("lesion, lower left lung", "lesion in the lower left lung", "Segment_1", 0, 1, 10, 0.5, 2),
               protocol.FindingRecord("nodule, 左肺", "结节", "Segment_2", 1, 1, 4, 0.1, 1)]
    writer.emit(protocol.result_event("o.seg.nrrd", records, None, relevance=None))
    lines = stream.getvalue().splitlines()
    progress = protocol.parse_event_line(lines[0])
    assert progress == protocol.Progress("segmenting", 3, 12)
    assert progress.fraction == 0.25 and progress.message == "segmenting 3/12"
    result = protocol.parse_event_line(lines[1])
    assert result.output == "o.seg.nrrd" and result.probability is None
    assert result.findings == tuple(records)
    assert json.loads(lines[1])["protocol"] == protocol.PROTOCOL_VERSION
    assert "结节" in lines[1]  # non-ASCII text stays readable


def test_unknown_event_and_unknown_fields_are_kept_or_ignored():
    assert protocol.parse_event_line('{"event": "case", "case": "a"}') == protocol.Event("case", {"event": "case", "case": "a"})
    record = protocol.FindingRecord.from_dict({"name": "a", "label_value": "2", "future_field": [1]})
    assert record == protocol.FindingRecord("a", label_value=2)
    assert protocol.Progress("loading model", 0, 0).fraction is None


@pytest.mark.parametrize("line", ["", "loading weights...", "{not json", "[1, 2]", '{"stage": "x"}', '{"event": 3}'])
def test_non_protocol_lines_are_tolerated(line):
    assert protocol.parse_event_line(line) is None


def test_malformed_known_event_becomes_a_generic_event():
    event = protocol.parse_event_line('{"event": "progress", "done": "many"}')
    assert isinstance(event, protocol.Event) and event.name == "progress"


def test_engine_error_message_reads_the_error_line():
    lines = ["warning: slow CPU", protocol.error_line("segment", "input not found: x.nrrd"), ""]
    assert protocol.engine_error_message(lines) == "input not found: x.nrrd"
    assert protocol.engine_error_message(["Traceback", "ValueError: boom"]) == "ValueError: boom"
    assert protocol.engine_error_message([]) is None


def test_cli_error_line_is_the_protocol_error_line(tmp_path):
    missing = tmp_path / "missing.nrrd"
    completed = subprocess.run([sys.executable, "-m", "tmca.cli", "segment", str(missing), "--report", "a nodule",
                                "--output", str(tmp_path / "o.seg.nrrd")], capture_output=True, text=True)
    assert completed.returncode == 2
    assert protocol.engine_error_message(completed.stderr.splitlines()).startswith("input not found")


def test_overlapping_findings_keep_their_segment_ids_layers_and_labels(tmp_path):
    from tmca.inference import SegmentationResult
    from tmca.findings import Finding
    from tmca.segio import read_segmentation
    import slicerio

    reference = sitk.Image([6, 5, 4], sitk.sitkFloat32)
    probabilities = np.zeros((3, 4, 5, 6), dtype=np.float32)
    probabilities[0, :, :, :3] = 0.9  # left half
    probabilities[1, :, :, 2:] = 0.9  # overlaps the first in column 2
    probabilities[2, :, :, 5:] = 0.9  # overlaps only the second
    findings = [Finding(name=n, text=n) for n in ("a", "b", "c")]
    result = SegmentationResult(reference, findings, probabilities, 0.5)
    result.save(tmp_path / "r.seg.nrrd")
    written = {s["id"]: s for s in slicerio.read_segmentation(str(tmp_path / "r.seg.nrrd"))["segments"]}
    for record in result.records:
        segment = written[record.segment_id]
        assert segment["name"] == record.name
        assert (segment["layer"], segment["labelValue"]) == (record.layer, record.label_value)
    assert [r.segment_id for r in result.records] == ["Segment_1", "Segment_2", "Segment_3"]
    assert result.records[1].layer == 1  # the overlapping finding sits in its own layer
    _, specs, _ = read_segmentation(tmp_path / "r.seg.nrrd")
    assert [s.segment_id for s in specs] == ["Segment_1", "Segment_2", "Segment_3"]
