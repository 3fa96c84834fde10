"""Correct with clicks without Slicer: click geometry, the click session, the Correct section's state,
the refined segment's copy, and the warm engine's state machine (TMCASegmenterLib.corrections_clicks,
geometry, segments, warm_engine)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_segmentation_model import (SHAPE, ModelNode, ModelSegmentation, ModelTransforms,
                                       array_from_segment_binary_labelmap as read_mask,
                                       update_segment_binary_labelmap_from_array as write_mask)
from TMCASegmenterLib import geometry
from TMCASegmenterLib.corrections_clicks import (ClickSession, FindingChoice, choice_index, correct_controls,
                                                 finding_choices)
from TMCASegmenterLib.segments import replace_finding_mask
from TMCASegmenterLib.warm_engine import EngineRun, EngineState, VolumeFiles, WarmEngine
from tmca.protocol import FindingRecord, Progress, Result, segment_id

# --------------------------------------------------------------------------- geometry


def _oblique_image() -> sitk.Image:
    image = sitk.Image(20, 30, 10, sitk.sitkInt16)
    image.SetOrigin((12.5, -40.0, 7.0))
    image.SetSpacing((0.7, 0.8, 2.5))
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(tuple(rotation.ravel()))
    return image


def _rigid(degrees: float, shift) -> np.ndarray:
    angle = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    matrix[:3, 3] = shift
    return matrix


def test_a_point_placed_on_a_voxel_in_slicer_is_that_voxels_lps_point():
    image = _oblique_image()
    ijk_to_ras = geometry.ijk_to_ras_matrix(image)  # how Slicer shows the scan the engine reads
    for index in [(0, 0, 0), (3, 17, 9), (19, 29, 4)]:
        ras = ijk_to_ras @ np.array([*index, 1.0])
        assert np.allclose(geometry.click_point_lps(ras[:3]), image.TransformIndexToPhysicalPoint(index), atol=1e-9)
    assert geometry.ras_to_lps((1.0, 2.0, 3.0)) == (-1.0, -2.0, 3.0)


def test_a_point_on_a_transformed_volume_is_brought_back_through_its_parent_transform():
    image = _oblique_image()
    volume_to_world = _rigid(30, (5.0, -12.0, 40.0))  # the volume's parent transform
    index = (7, 11, 3)
    world = volume_to_world @ geometry.ijk_to_ras_matrix(image) @ np.array([*index, 1.0])  # where the user sees the voxel
    expected = image.TransformIndexToPhysicalPoint(index)
    assert np.allclose(geometry.click_point_lps(world[:3], np.linalg.inv(volume_to_world)), expected, atol=1e-9)
    assert not np.allclose(geometry.click_point_lps(world[:3]), expected, atol=1.0), "ignoring the transform misplaces it"
    with pytest.raises(ValueError, match="three finite"):
        geometry.click_point_lps((1.0, float("nan"), 2.0))


# --------------------------------------------------------------------------- findings and the click session


def test_the_findings_offered_are_those_whose_segment_is_still_there_with_the_engines_index():
    findings = [FindingRecord("nodule, left lung"), FindingRecord("effusion"), FindingRecord("mass, liver")]
    imported = [(0, "Segment_1"), (1, "Segment_2"), (2, "Segment_3")]
    choices = finding_choices(findings, imported, present=lambda sid: sid != "Segment_2")
    assert [(c.index, c.segment_id, c.label) for c in choices] == [(0, "Segment_1", "1. nodule, left lung"),
                                                                     (2, "Segment_3", "3. mass, liver")]
    assert choice_index(choices, "Segment_3") == 1 and choice_index(choices, "Segment_2") == 0


def _session() -> ClickSession:
    return ClickSession("r0", FindingChoice("1. nodule", 2, "Segment_7"))


def test_each_point_sends_all_points_so_far_and_points_placed_meanwhile_go_together_next():
    session = _session()
    session.add((1.0, 2.0, 3.0), True)
    first = session.next_request("/tmp/a.seg.nrrd")
    assert first["result_id"] == "r0" and first["finding"] == 2
    assert first["clicks"] == [{"point": [1.0, 2.0, 3.0], "positive": True}] and first["start_mask"] is None
    session.add((4.0, 5.0, 6.0), False)
    session.add((7.0, 8.0, 9.0), True)
    assert session.next_request("/tmp/b.seg.nrrd") is None, "one request at a time"
    assert session.finished("r1") == [] and session.waiting
    second = session.next_request("/tmp/c.seg.nrrd")
    assert second["result_id"] == "r1" and [c["positive"] for c in second["clicks"]] == [True, False, True]
    assert session.finished("r2") == [] and not session.waiting and session.next_request("/tmp/d") is None


def test_a_refused_request_drops_the_points_it_carried_and_keeps_later_ones():
    session = _session()
    session.add((1.0, 1.0, 1.0), True)
    session.next_request("/tmp/a")
    session.finished("r1")
    session.add((999.0, 0.0, 0.0), True)  # outside the scan
    session.next_request("/tmp/b")
    session.add((2.0, 2.0, 2.0), False)  # placed while the refused request ran
    assert session.finished(None) == [1]
    assert [c.point for c in session.clicks] == [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0)] and session.result_id == "r1"
    retry = session.next_request("/tmp/c")
    assert retry["result_id"] == "r1" and len(retry["clicks"]) == 2


def test_undo_goes_back_one_applied_refinement_with_its_points():
    session = _session()
    session.add((1.0, 1.0, 1.0), True)
    session.next_request("/tmp/a")
    session.finished("r1")
    session.add((2.0, 2.0, 2.0), True)
    session.add((3.0, 3.0, 3.0), False)
    session.next_request("/tmp/b")
    assert not session.can_undo, "not while a request runs"
    session.finished("r2")
    assert session.undo() == [1, 2] and session.result_id == "r1" and len(session.clicks) == 1
    assert session.undo() == [0] and session.result_id == "r0" and not session.clicks
    assert not session.can_undo and session.undo() == []


def test_the_edited_mask_goes_with_the_next_request_once_and_a_failure_drops_it():
    session = _session()
    session.use_edits("/tmp/edited.nrrd")
    assert session.next_request("/tmp/a") is None, "a refine needs at least one point"
    session.add((1.0, 1.0, 1.0), True)
    assert session.next_request("/tmp/a")["start_mask"] == "/tmp/edited.nrrd"
    session.finished("r1")
    session.add((3.0, 3.0, 3.0), True)
    assert session.next_request("/tmp/c")["start_mask"] is None, "the refined result already holds the edits"
    session.finished("r2")
    session.use_edits("/tmp/edited-2.nrrd")
    assert session.next_request("/tmp/d")["start_mask"] == "/tmp/edited-2.nrrd"
    assert session.finished(None) == [] and session.start_mask is None
    assert not session.waiting, "a failed request with edits is not pending again (it would fail again, forever)"
    assert session.next_request("/tmp/e") is None


def test_each_refine_request_carries_the_threshold_of_the_shown_segments():
    session = _session()
    session.add((1.0, 1.0, 1.0), True)
    assert session.next_request("/tmp/a", threshold=0.3)["threshold"] == 0.3
    session.finished("r1")
    session.add((2.0, 2.0, 2.0), True)
    assert "threshold" not in session.next_request("/tmp/b"), "no threshold known: the engine keeps its result's"


def test_undo_never_reaches_further_back_than_the_results_the_engine_keeps():
    session = ClickSession("r0", FindingChoice("1. nodule", 2, "Segment_7"), max_results=3)
    for number in range(1, 6):
        session.add((float(number), 1.0, 1.0), True)
        session.next_request("/tmp/a")
        session.finished(f"r{number}")
    assert session.undo_depth == 2, "the engine keeps r5 (current), r4 and r3"
    session.undo()
    assert session.result_id == "r4"
    session.undo()
    assert session.result_id == "r3" and len(session.clicks) == 3 and not session.can_undo


def test_the_correct_section_is_hidden_with_a_reason_when_the_model_cannot_refine():
    hidden = correct_controls(False, 3, True, False, None)
    assert not hidden.visible and "without click inputs" in hidden.reason and not hidden.place
    assert "Apply a report" in correct_controls(None, 0, False, False, None).reason
    assert "Apply again" in correct_controls(True, 2, False, False, None).reason
    ready = correct_controls(True, 2, True, False, None)
    assert ready.visible and ready.choose and ready.place and ready.use_edits and not ready.undo and not ready.done
    session = _session()
    session.add((1.0, 1.0, 1.0), True)
    session.next_request("/tmp/a")
    busy = correct_controls(True, 2, True, False, session)
    assert busy.place and not busy.choose and not busy.use_edits and not busy.undo and busy.reason == "Refining..."
    session.finished("r1")
    assert correct_controls(True, 2, True, False, session).undo
    assert not correct_controls(True, 2, True, True, session).place, "not while Apply runs"


# --------------------------------------------------------------------------- the refined segment


def _box(k, j, i, size=3) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[k:k + 2, j:j + size, i:i + size] = 1
    return mask


def _engine_result(masks: list[np.ndarray], names: list[str]):
    source = ModelSegmentation()
    source.add_written_layer({segment_id(i): (name, mask) for i, (name, mask) in enumerate(zip(names, masks))})
    return source, [FindingRecord(name, segment_id=segment_id(i), label_value=i + 1) for i, name in enumerate(names)]


def test_a_refined_mask_replaces_only_its_segment_in_a_shared_layer_under_the_volumes_transform():
    transforms = ModelTransforms(moved=(0, 1, 2))
    volume = ModelNode(transforms, transform_id="moved")
    nodule, effusion, liver = _box(2, 6, 6), _box(4, 2, 8), _box(0, 0, 0, size=5)
    shared = ModelSegmentation()  # the findings and the user's liver in one labelmap layer, as Slicer keeps them
    shared.add_written_layer({"Segment_1": ("nodule", nodule), "Segment_2": ("effusion", effusion)})
    liverId = shared.AddEmptySegment("liver", "liver")
    shared.GetSegment(liverId).layer[liver > 0] = shared.GetSegment(liverId).GetLabelValue()
    target = ModelNode(transforms, shared, transform_id="moved")
    imported = [(0, "Segment_1"), (1, "Segment_2")]
    assert shared.layers() == 1

    refinedNodule = _box(2, 6, 6, size=4)
    refined, refinedFindings = _engine_result([refinedNodule, effusion], ["nodule", "effusion"])
    written = replace_finding_mask(ModelNode(transforms, refined), target, volume, refinedFindings[0], imported[0][1],
                                   read_mask, write_mask)
    assert np.array_equal(written, refinedNodule)
    assert np.array_equal(read_mask(target, imported[0][1], volume), refinedNodule)
    assert np.array_equal(read_mask(target, imported[1][1], volume), effusion)
    assert np.array_equal(read_mask(target, liverId, volume), liver)
    assert target.GetSegmentation().GetSegment(imported[0][1]).GetName() == "nodule"
    with pytest.raises(RuntimeError, match="was removed"):
        replace_finding_mask(ModelNode(transforms, refined), target, volume, refinedFindings[0], "Segment_99", read_mask, write_mask)


# --------------------------------------------------------------------------- the warm engine


class FakeClient:
    """The parts of EngineClient that WarmEngine uses; ``answer`` queues events that ``poll`` delivers."""

    def __init__(self, command) -> None:
        self.command, self.generation, self.info, self.alive, self.stopped = list(command), 0, None, False, False
        self.callbacks, self.queued, self.sent = {}, [], []

    @property
    def running(self) -> bool:
        return self.alive

    def request(self, op, on_event=None, **fields):
        if not self.alive:  # like EngineClient: a dead or unstarted engine is started by a request
            self.alive, self.generation, self.info = True, self.generation + 1, None
        request_id = f"q{len(self.sent) + 1}"
        self.sent.append((request_id, op, fields))
        self.callbacks[request_id] = on_event
        return request_id

    def cancel(self, target):
        self.sent.append((None, "cancel", {"target": target}))

    def answer(self, request_id, name, **data):
        parsed = {"progress": lambda: Progress(1, 2, "segmenting"),
                  "result": lambda: Result(data.get("output", ""), None, ())}.get(name, lambda: None)()
        self.queued.append(SimpleNamespace(name=name, request_id=request_id, data=data, parsed=parsed,
                                           terminal=name != "progress", message=data.get("message", "")))

    def poll(self):
        events, self.queued = self.queued, []
        for event in events:
            if self.callbacks.get(event.request_id):
                self.callbacks[event.request_id](event)
        return events

    def stop(self):
        self.alive, self.stopped = False, True


def test_the_engine_starts_on_first_use_is_busy_while_working_and_restarts_after_it_died():
    clients = []
    engine = WarmEngine(lambda command: clients.append(FakeClient(command)) or clients[-1])
    assert engine.state is EngineState.STOPPED and engine.can_refine is None
    request = engine.request(["serve", "cpu"], "segment", image="/s.nrrd")
    client = clients[0]
    assert engine.state is EngineState.STARTING
    assert engine.max_results == 8, "the engine's default before its hello"
    client.info = {"can_refine": True, "max_results": 3}
    assert engine.state is EngineState.BUSY and engine.can_refine is True and engine.max_results == 3
    client.answer(request, "result", result_id="r1")
    engine.poll()
    assert engine.state is EngineState.READY
    client.alive = False  # the engine process died
    assert engine.state is EngineState.DEAD
    engine.request(["serve", "cpu"], "segment", image="/s.nrrd")
    assert len(clients) == 1 and client.generation == 2 and engine.state is EngineState.STARTING, "the same client restarts it"
    engine.request(["serve", "cuda"], "hello")
    assert client.stopped and len(clients) == 2 and clients[1].command == ["serve", "cuda"], "another device: another engine"
    engine.stop()
    assert clients[1].stopped and engine.state is EngineState.STOPPED


def test_an_engine_run_reports_progress_result_cancellation_and_discard_like_a_one_shot_run(tmp_path):
    engine = WarmEngine(FakeClient)
    run = EngineRun(engine, str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    progress, finished = [], []
    run.on_events, run.on_finished = progress.extend, lambda: finished.append(run.outcome())
    run.send(["serve"], "refine", result_id="r1")
    engine.client.answer(run.request_id, "progress")
    engine.client.answer(run.request_id, "result", output="/tmp/x.seg.nrrd", result_id="r2", finding=0)
    engine.poll()
    assert isinstance(progress[0], Progress) and finished[0].ok and run.result_id == "r2" and run.result.output == "/tmp/x.seg.nrrd"
    run.cleanup()
    assert not (tmp_path / "run").exists()

    failed = EngineRun(engine).send(["serve"], "refine", result_id="r9")
    engine.client.answer(failed.request_id, "error", message="click 1: the click lies outside the image")
    failed.wait()
    assert failed.outcome().error == "click 1: the click lies outside the image"

    discarded = EngineRun(engine).send(["serve"], "segment", image="/s.nrrd")
    discarded.discard()
    assert engine.client.sent[-1] == (None, "cancel", {"target": discarded.request_id})
    engine.client.answer(discarded.request_id, "result", result_id="r3")
    engine.poll()
    assert discarded.outcome().cancelled, "a discarded run is never imported, even when its result arrived"


def test_a_scan_is_written_once_per_version(tmp_path):
    files, writes = VolumeFiles(str(tmp_path)), []

    def write(path):
        writes.append(path)
        open(path, "w").close()

    first, written = files.path_for("vtkMRMLScalarVolumeNode1", (5, "grid"), write)
    assert written and os.path.exists(first)
    assert files.path_for("vtkMRMLScalarVolumeNode1", (5, "grid"), write) == (first, False), "a second report reuses it"
    second, written = files.path_for("vtkMRMLScalarVolumeNode1", (6, "grid"), write)
    assert written and second != first and not os.path.exists(first), "edited voxels: a new file, the old one goes"
    other, _ = files.path_for("vtkMRMLScalarVolumeNode2", (1, "grid"), write)
    assert other != second and len(writes) == 3
    files.clear()
    assert not os.path.exists(second) and not os.path.exists(other)
