"""The module's Correct section without Slicer: real PyQt5 widgets (offscreen) behind the PythonQt-style
names the module uses, the module's widget and logic imported with fake_slicer's stand-ins, and a
fake warm engine process behind the real EngineClient."""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import time
from types import SimpleNamespace
from unittest import mock

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PyQt5.QtCore import QEventLoop, QTimer
from PyQt5.QtWidgets import QApplication, QComboBox, QLabel, QPushButton, QWidget

from fake_slicer import slicer_module
from TMCASegmenterLib.warm_engine import WarmEngine
from tmca.protocol import FindingRecord


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])


class PythonQtStyle:
    """A PyQt5 widget with PythonQt's spelling (``button.enabled = False``, ``combo.currentIndex``, ``connect("sig(int)", f)``)."""

    _PROPERTIES = {"enabled": ("isEnabled", "setEnabled"), "checked": ("isChecked", "setChecked"), "text": ("text", "setText"),
                   "currentIndex": ("currentIndex", "setCurrentIndex"), "count": ("count", None),
                   "toolTip": ("toolTip", "setToolTip")}

    def __init__(self, widget) -> None:
        object.__setattr__(self, "widget", widget)

    def __getattr__(self, name):
        widget = object.__getattribute__(self, "widget")
        if name == "visible":
            return not widget.isHidden()
        if name in self._PROPERTIES:
            return getattr(widget, self._PROPERTIES[name][0])()
        return getattr(widget, name)

    def __setattr__(self, name, value):
        widget = object.__getattribute__(self, "widget")
        if name == "visible":
            widget.setVisible(value)
        else:
            getattr(widget, self._PROPERTIES[name][1])(value)

    def connect(self, signature: str, slot) -> None:
        getattr(self.widget, signature.split("(")[0]).connect(slot)


def _checkable(text: str) -> QPushButton:
    button = QPushButton(text)
    button.setCheckable(True)
    return button


def _ui() -> SimpleNamespace:
    widgets = {"correctReasonLabel": QLabel(), "correctControlsWidget": QWidget(), "correctFindingComboBox": QComboBox(),
               "includePointsButton": _checkable("Include"), "excludePointsButton": _checkable("Exclude"),
               "useMyEditsButton": QPushButton(), "undoClickButton": QPushButton(), "doneCorrectingButton": QPushButton(),
               "statusLabel": QLabel()}
    return SimpleNamespace(**{name: PythonQtStyle(widget) for name, widget in widgets.items()})


class PointList:
    """A markups point list as far as the widget uses it (control points with ids and world positions)."""

    PointPositionDefinedEvent = 20001

    def __init__(self, name: str) -> None:
        self.name, self.points, self.display = name, [], mock.MagicMock(name=f"{name} display")
        self._ids = 0

    def place(self, ras) -> None:
        self._ids += 1
        self.points.append((f"p{self._ids}", tuple(ras)))

    def GetNumberOfControlPoints(self):
        return len(self.points)

    def GetNthControlPointID(self, index):
        return self.points[index][0]

    def GetNthControlPointPositionWorld(self, index, out):
        out[:] = self.points[index][1]

    def GetNthControlPointIndexByID(self, pointId):
        return next((i for i, (pid, _) in enumerate(self.points) if pid == pointId), -1)

    def RemoveNthControlPoint(self, index):
        del self.points[index]

    def RemoveAllControlPoints(self):
        self.points = []

    def GetDisplayNode(self):
        return self.display

    def GetID(self):
        return self.name

    def __getattr__(self, name):  # CreateDefaultDisplayNodes, SetMarkupLabelFormat, SetSaveWithScene
        return lambda *args: None


@contextlib.contextmanager
def _panel(engine_factory, temp_dir):
    """The module's widget with the Correct section on real Qt widgets and a logic holding a two-finding result."""
    with slicer_module() as module:
        slicer = module.slicer
        errors: list = []

        @contextlib.contextmanager
        def try_with_error_display(message, waitCursor=False):
            try:
                yield
            except Exception as error:  # Slicer shows it in a dialog
                errors.append(f"{message} {error}")

        lists: dict = {}
        slicer.app.temporaryPath = str(temp_dir)
        slicer.util.tryWithErrorDisplay = try_with_error_display
        slicer.util.arrayFromSegmentBinaryLabelmap = mock.MagicMock(name="arrayFromSegmentBinaryLabelmap")
        slicer.mrmlScene.AddNewNodeByClass = lambda cls, name: lists.setdefault(name, PointList(name))
        slicer.mrmlScene.IsNodePresent = lambda node: True
        slicer.modules = SimpleNamespace()
        widget = module.TMCASegmenterWidget()
        widget.ui = _ui()
        widget.addObserver = mock.MagicMock(name="addObserver")
        widget._showResult = lambda: widget._updateCorrectSection()
        logic = widget.logic = module.TMCASegmenterLogic()
        volume = mock.MagicMock(name="volume")
        volume.GetParentTransformNode.return_value = None
        segmentation = mock.MagicMock(name="segmentation")
        logic.lastSegmentation, logic.lastInputVolume = segmentation, volume
        logic.lastResultId = "r0"
        logic.lastImported = [(0, "Segment_1"), (1, "Segment_2")]
        logic.lastResultFindings = [FindingRecord("nodule"), FindingRecord("effusion")]
        logic._engine = engine_factory()
        logic._engineCommandLine = getattr(logic._engine, "command", ["serve"])
        widget._parameterNode = SimpleNamespace(inputVolume=volume, outputSegmentation=segmentation)
        widget._rows = [object()]
        widget._connectCorrectSection()
        try:
            yield SimpleNamespace(module=module, widget=widget, logic=logic, ui=widget.ui, lists=lists, errors=errors,
                                  slicer=slicer)
        finally:
            logic.stopEngine()


class SaysHello:
    """A warm engine that has answered ``hello`` and records requests (nothing is ever answered)."""

    def __init__(self, can_refine: bool | None) -> None:
        self.can_refine, self.requests, self.command, self.client = can_refine, [], ["serve"], None
        self.state = "ready"
        self.max_results = 8

    def request(self, command, op, on_event=None, **fields):
        self.requests.append((op, fields))
        return f"q{len(self.requests)}"

    def stop(self):
        pass


def test_the_section_lists_the_findings_and_enables_its_controls_as_the_session_goes(app, tmp_path):
    engine = SaysHello(True)
    with _panel(lambda: engine, tmp_path) as panel:
        ui, widget = panel.ui, panel.widget
        widget._updateCorrectSection()
        combo = ui.correctFindingComboBox.widget
        assert [combo.itemText(i) for i in range(combo.count())] == ["1. nodule", "2. effusion"]
        assert ui.correctControlsWidget.visible and ui.includePointsButton.enabled and ui.correctFindingComboBox.enabled
        assert not ui.undoClickButton.enabled and not ui.doneCorrectingButton.enabled

        combo.setCurrentIndex(1)
        ui.includePointsButton.widget.click()  # a real toggle: the session starts on the chosen finding
        assert panel.logic.clickSession.choice.segment_id == "Segment_2" and ui.doneCorrectingButton.enabled
        ui.excludePointsButton.widget.click()
        assert ui.excludePointsButton.checked and not ui.includePointsButton.checked, "one kind of point at a time"

        excluded = panel.lists["TMCA exclude points"]
        excluded.place((10.0, -20.0, 5.0))
        widget._onPointDefined(excluded, excluded.PointPositionDefinedEvent)
        op, fields = engine.requests[-1]
        assert op == "refine" and fields["finding"] == 1 and fields["result_id"] == "r0"
        assert fields["clicks"] == [{"point": [-10.0, 20.0, 5.0], "positive": False}], "RAS placed, LPS sent"
        assert not ui.correctFindingComboBox.enabled and not ui.useMyEditsButton.enabled, "not while refining"
        assert ui.correctReasonLabel.text == "Refining..."

        excluded.place((11.0, -20.0, 5.0))
        widget._onPointDefined(excluded, excluded.PointPositionDefinedEvent)
        assert len(engine.requests) == 1, "the second point waits for the running refine"

        ui.doneCorrectingButton.widget.click()
        assert panel.logic.clickSession is None and excluded.points == [] and not ui.excludePointsButton.checked
        excluded.display.SetVisibility.assert_called_with(False)
        assert ui.correctFindingComboBox.enabled
        assert not panel.errors


def test_the_section_is_hidden_with_its_reason_when_the_model_cannot_refine(app, tmp_path):
    with _panel(lambda: SaysHello(False), tmp_path) as panel:
        panel.widget._updateCorrectSection()
        assert not panel.ui.correctControlsWidget.visible
        assert "cannot refine" in panel.ui.correctReasonLabel.text
    with _panel(lambda: SaysHello(None), tmp_path) as panel:
        panel.logic.lastResultId = None  # a one-shot result
        panel.widget._updateCorrectSection()
        assert panel.ui.correctControlsWidget.visible and not panel.ui.includePointsButton.enabled
        assert "Apply again" in panel.ui.correctReasonLabel.text


FAKE_ENGINE = textwrap.dedent('''
    """A warm engine stand-in: hello at once, each refine answered after a delay with a new result id."""
    import json, sys, time
    count = 0
    for line in sys.stdin:
        request = json.loads(line)
        answer = {"id": request["id"]}
        if request["op"] == "hello":
            answer.update(event="hello", protocol=1, can_refine=True, model="fake", model_id="0")
        elif request["op"] == "refine" and any(c["point"][0] > 500 for c in request["clicks"]):
            answer.update(event="error", message="click 2: the click lies outside the image; click inside the scan")
        elif request["op"] == "refine":
            time.sleep(float(sys.argv[1]))
            count += 1
            answer.update(event="result", protocol=1, output=request["output"], probability=None, result_id=f"r{count}",
                          finding=request["finding"], refined_from=request["result_id"], seconds=0.1,
                          clicks=len(request["clicks"]), findings=[{"name": "nodule", "segment_id": "Segment_1"}],
                          negative_findings=[])
        elif request["op"] == "shutdown":
            print(json.dumps(dict(answer, event="done", op="shutdown")), flush=True)
            break
        else:
            answer.update(event="done", op=request["op"])
        print(json.dumps(answer), flush=True)
''')


def test_a_click_round_trip_with_an_engine_process_never_blocks_the_event_loop(app, tmp_path):
    from TMCASegmenterLib.engine_client import EngineClient

    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE, encoding="utf-8")
    command = [sys.executable, str(script), "0.4"]

    def engine():
        warm = WarmEngine(EngineClient, QTimer())
        warm.command = command
        return warm

    with _panel(engine, tmp_path) as panel:
        logic, widget, ui = panel.logic, panel.widget, panel.ui
        applied = []
        logic._applyRefined = lambda session, run: applied.append((run.result_id, run.data["clicks"], run.data["refined_from"]))
        widget._updateCorrectSection()
        ui.includePointsButton.widget.click()
        included = panel.lists["TMCA include points"]

        ticks = []
        ticker = QTimer()
        ticker.setInterval(10)
        ticker.timeout.connect(lambda: ticks.append(time.perf_counter()))
        ticker.start()
        started = time.perf_counter()
        for ras in [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)]:
            included.place(ras)
            widget._onPointDefined(included, included.PointPositionDefinedEvent)
        placed_in = time.perf_counter() - started
        loop = QEventLoop()
        waiter = QTimer()
        waiter.timeout.connect(lambda: len(applied) == 2 and loop.quit())
        waiter.start(10)
        QTimer.singleShot(20000, loop.quit)
        loop.exec_()
        ticker.stop()
        print(f"\npanel: 2 points placed in {placed_in * 1000:.1f} ms; both refinements applied after "
              f"{time.perf_counter() - started:.2f} s (engine 2 x 0.4 s + its start)")

        assert placed_in < 0.3, f"placing two points took {placed_in:.2f} s: the panel waited for the engine"
        assert applied == [("r1", 1, "r0"), ("r2", 2, "r1")], "the second point went with the first's result"
        gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:])]
        assert len(ticks) > 40 and max(gaps) < 0.25, "the event loop kept running while the engine worked"
        assert logic.lastResultId == "r2" and ui.undoClickButton.enabled and not panel.errors
        assert "Refined" in ui.statusLabel.text


def test_a_point_the_engine_refuses_is_removed_and_the_segment_kept(app, tmp_path):
    from TMCASegmenterLib.engine_client import EngineClient

    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE, encoding="utf-8")

    def engine():
        warm = WarmEngine(EngineClient, QTimer())
        warm.command = [sys.executable, str(script), "0.05"]
        return warm

    with _panel(engine, tmp_path) as panel:
        logic, widget, ui = panel.logic, panel.widget, panel.ui
        applied = []
        logic._applyRefined = lambda session, run: applied.append(run.result_id)
        widget._updateCorrectSection()
        ui.includePointsButton.widget.click()
        included = panel.lists["TMCA include points"]
        for ras in [(1.0, 2.0, 3.0), (-1000.0, 2.0, 3.0)]:  # the second lies outside the scan (LPS x = 1000)
            included.place(ras)
            widget._onPointDefined(included, included.PointPositionDefinedEvent)
            loop = QEventLoop()
            waiter = QTimer()
            waiter.timeout.connect(lambda: not logic.clickSession.in_flight and loop.quit())
            waiter.start(10)
            QTimer.singleShot(20000, loop.quit)
            loop.exec_()
        assert applied == ["r1"] and logic.lastResultId == "r1"
        assert [position for _, position in included.points] == [(1.0, 2.0, 3.0)], "the refused point's markup is gone"
        assert len(logic.clickSession.clicks) == 1 and "outside the image" in ui.statusLabel.text


def test_a_refined_segment_replaces_only_its_own_undoes_and_leaves_the_threshold_slider(app, tmp_path):
    """The logic's import of a refined result, undo and re-threshold, on the model of Slicer's shared layers."""
    import numpy as np
    from slicer_segmentation_model import (SHAPE, ModelNode, ModelSegmentation, ModelTransforms,
                                           array_from_segment_binary_labelmap as read_mask,
                                           update_segment_binary_labelmap_from_array as write_mask)
    from TMCASegmenterLib.corrections_clicks import FindingChoice

    def box(k, j, i, size=3):
        mask = np.zeros(SHAPE, dtype=np.uint8)
        mask[k:k + 2, j:j + size, i:i + size] = 1
        return mask

    nodule, effusion, bigger = box(2, 6, 6), box(4, 2, 8), box(2, 6, 6, size=5)
    transforms = ModelTransforms()
    shared = ModelSegmentation()
    shared.add_written_layer({"Segment_1": ("nodule", nodule), "Segment_2": ("effusion", effusion)})
    with _panel(lambda: SaysHello(True), tmp_path) as panel:
        logic, module, slicer = panel.logic, panel.module, panel.slicer
        volume = ModelNode(transforms)
        volume.GetSpacing = lambda: (1.0, 1.0, 1.0)
        volume.GetIJKToRASMatrix = lambda matrix: None
        segmentation = ModelNode(transforms, shared)
        logic.lastSegmentation, logic.lastInputVolume = segmentation, volume
        logic.lastFindings = [FindingRecord("nodule", segment_id="Segment_1"), FindingRecord("effusion", segment_id="Segment_2")]
        logic.lastSegmentIds = ["Segment_1", "Segment_2"]
        slicer.util.arrayFromSegmentBinaryLabelmap = read_mask
        slicer.util.updateSegmentBinaryLabelmapFromArray = write_mask
        slicer.util.arrayFromVTKMatrix = lambda matrix: np.eye(4)
        refined = ModelSegmentation()
        refined.add_written_layer({"Segment_1": ("nodule", bigger), "Segment_2": ("effusion", effusion)})
        logic._readSegmentationFile = lambda path: ModelNode(transforms, refined)
        probability = np.stack([nodule * 0.9, effusion * 0.9]).astype(np.float32)
        logic._thresholdTarget = module._ThresholdTarget(probability, segmentation, ["Segment_1", "Segment_2"], volume,
                                                         list(logic.lastFindings))

        session = logic.startCorrecting(FindingChoice("1. nodule", 0, "Segment_1"))
        session.add((1.0, 1.0, 1.0), True)
        session.next_request("/tmp/out.seg.nrrd")
        run = SimpleNamespace(result=SimpleNamespace(findings=(FindingRecord("nodule", segment_id="Segment_1", voxels=50),
                                                               FindingRecord("effusion", segment_id="Segment_2")),
                                                     output="/tmp/out.seg.nrrd"),
                              data={"finding": 0, "result_id": "r1"})
        logic._applyRefined(session, run)
        session.finished("r1")
        assert np.array_equal(read_mask(segmentation, "Segment_1", volume), bigger)
        assert np.array_equal(read_mask(segmentation, "Segment_2", volume), effusion), "the other finding is untouched"
        assert logic.lastFindings[0].voxels == 50 and logic._thresholdTarget.segmentIds == ["Segment_2"]

        logic.applyThreshold(0.5)
        assert np.array_equal(read_mask(segmentation, "Segment_1", volume), bigger), "the slider leaves a corrected segment"
        assert [f.name for f in logic.lastFindings] == ["nodule", "effusion"]

        assert logic.undoClick() == [0]
        assert np.array_equal(read_mask(segmentation, "Segment_1", volume), nodule), "undo restores the previous mask"
        assert logic.lastResultId == "r0" and not session.can_undo


def test_a_point_on_a_scan_edited_since_the_result_is_refused_before_the_engine_sees_it(app, tmp_path):
    engine = SaysHello(True)
    with _panel(lambda: engine, tmp_path) as panel:
        logic, widget, ui = panel.logic, panel.widget, panel.ui
        stamps = iter([(7, "grid"), (8, "grid")])  # the scan at the result, then after an edit of its voxels
        logic._volumeStamp = lambda volume: next(stamps)
        logic._lastVolumeStamp = logic._volumeStamp(None)
        widget._updateCorrectSection()
        ui.includePointsButton.widget.click()
        included = panel.lists["TMCA include points"]
        included.place((1.0, 2.0, 3.0))
        widget._onPointDefined(included, included.PointPositionDefinedEvent)
        assert engine.requests == [] and included.points == [] and logic.clickSession.clicks == []
        assert "scan changed" in ui.statusLabel.text


class AnswersWhenTold(SaysHello):
    """A warm engine that keeps each request until the test answers it: a refine fails, or gives the next result."""

    def __init__(self, max_results: int = 8) -> None:
        super().__init__(True)
        self.max_results, self.fail, self.unanswered, self.made = max_results, False, [], 0

    def request(self, command, op, on_event=None, **fields):
        request_id = super().request(command, op, on_event, **fields)
        self.unanswered.append(on_event)
        return request_id

    def answer_all(self, limit: int = 20) -> None:
        """Answer until nothing waits; a panel that resends by itself is stopped after ``limit`` answers."""
        for _ in range(limit):
            if not self.unanswered:
                return
            on_event = self.unanswered.pop(0)
            if self.fail:
                on_event(SimpleNamespace(terminal=True, name="error", message="the start mask is empty", data={}, parsed=None))
            else:
                self.made += 1
                on_event(SimpleNamespace(terminal=True, name="result", message=None, data={"result_id": f"r{self.made}"},
                                         parsed=SimpleNamespace(findings=(FindingRecord("nodule"),), output=None, probability=None,
                                                                negative_findings=())))


def _place(panel, positive: bool, ras) -> None:
    points = panel.lists["TMCA include points" if positive else "TMCA exclude points"]
    points.place(ras)
    panel.widget._onPointDefined(points, points.PointPositionDefinedEvent)


def _edits_ready(panel):
    """Show the Correct section with refined results not imported, and let "Use my edits" read a 4 x 5 x 6
    segment on a scan of that shape."""
    panel.logic._applyRefined = lambda session, run: None
    import numpy as np

    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 1:4, 2:5] = 1
    panel.slicer.util.arrayFromSegmentBinaryLabelmap = lambda segmentation, segmentId, volume: mask
    panel.slicer.util.arrayFromVolume = lambda volume: np.zeros(mask.shape, dtype=np.int16)
    panel.slicer.util.arrayFromVTKMatrix = lambda matrix: np.eye(4)
    panel.widget._updateCorrectSection()


def test_a_failed_refine_from_edits_is_sent_once_its_mask_dropped_and_its_folder_deleted(app, tmp_path):
    engine = AnswersWhenTold()
    with _panel(lambda: engine, tmp_path) as panel:
        logic, ui = panel.logic, panel.ui
        _edits_ready(panel)
        ui.includePointsButton.widget.click()
        _place(panel, True, (1.0, 2.0, 3.0))
        engine.answer_all()
        assert logic.lastResultId == "r1" and len(engine.requests) == 1

        engine.fail = True
        ui.useMyEditsButton.widget.click()
        startMask = engine.requests[-1][1]["start_mask"]
        assert startMask and os.path.isfile(startMask), "the edited segment goes with the request"
        assert os.path.basename(os.path.dirname(startMask)).startswith("TMCASegmenter-edits-")
        engine.answer_all()
        assert len(engine.requests) == 2, "the failed request was resent without the user asking"
        assert logic.clickSession.start_mask is None and not logic.clickSession.in_flight
        assert list(tmp_path.glob("TMCASegmenter-edits-*")) == [], "the edits' folder outlived its request"
        assert "start mask is empty" in ui.statusLabel.text and len(logic.clickSession.clicks) == 1

        engine.fail = False
        _place(panel, True, (4.0, 5.0, 6.0))  # the user's next point sends again, without the dropped edits
        assert len(engine.requests) == 3 and engine.requests[-1][1]["start_mask"] is None
        engine.answer_all()
        assert logic.lastResultId == "r2" and not panel.errors


def test_edits_left_unsent_are_deleted_when_correcting_ends_and_a_sent_ones_folder_after_success(app, tmp_path):
    engine = AnswersWhenTold()
    with _panel(lambda: engine, tmp_path) as panel:
        logic, ui = panel.logic, panel.ui
        _edits_ready(panel)
        ui.useMyEditsButton.widget.click()  # no point yet: the edits wait for the first one
        ui.useMyEditsButton.widget.click()  # newer edits replace them
        assert engine.requests == [] and len(list(tmp_path.glob("TMCASegmenter-edits-*"))) == 1
        ui.includePointsButton.widget.click()
        _place(panel, True, (1.0, 2.0, 3.0))
        assert engine.requests[-1][1]["start_mask"]
        engine.answer_all()
        assert logic.lastResultId == "r1" and list(tmp_path.glob("TMCASegmenter-edits-*")) == []

        ui.useMyEditsButton.widget.click()
        engine.answer_all()
        ui.useMyEditsButton.widget.click()  # sent with the applied point
        ui.doneCorrectingButton.widget.click()
        engine.answer_all()
        assert list(tmp_path.glob("TMCASegmenter-edits-*")) == [] and not panel.errors


def test_a_refine_is_cut_at_the_threshold_of_the_shown_segments(app, tmp_path):
    engine = SaysHello(True)
    with _panel(lambda: engine, tmp_path) as panel:
        panel.logic.shownThreshold = 0.5  # the Apply threshold
        panel.logic.applyThreshold(0.3)  # the slider moved after the result came
        panel.widget._updateCorrectSection()
        panel.ui.includePointsButton.widget.click()
        _place(panel, True, (1.0, 2.0, 3.0))
        op, fields = engine.requests[-1]
        assert op == "refine" and fields["threshold"] == 0.3


def test_placing_points_gives_place_mode_its_persistence_back_when_it_stops(app, tmp_path):
    with _panel(lambda: SaysHello(True), tmp_path) as panel:
        ui, widget = panel.ui, panel.widget
        interaction = panel.slicer.app.applicationLogic().GetInteractionNode()
        widget._updateCorrectSection()

        ui.includePointsButton.widget.click()
        assert interaction.GetCurrentInteractionMode() == interaction.Place and interaction.GetPlaceModePersistence() == 1
        ui.excludePointsButton.widget.click()
        ui.doneCorrectingButton.widget.click()
        assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
        assert interaction.GetPlaceModePersistence() == 0, "Done left persistent place mode on for all of Slicer"

        ui.includePointsButton.widget.click()
        interaction.SwitchToViewTransformMode()  # Escape in a view
        widget._onInteractionModeChanged(interaction, interaction.InteractionModeChangedEvent)
        assert interaction.GetPlaceModePersistence() == 0 and not ui.includePointsButton.checked

        interaction.SetPlaceModePersistence(1)  # the user's own choice stays
        ui.includePointsButton.widget.click()
        panel.logic.lastResultId = None  # a one-shot result: the section's controls go
        widget._updateCorrectSection()
        assert not ui.includePointsButton.checked and interaction.GetCurrentInteractionMode() == interaction.ViewTransform
        assert interaction.GetPlaceModePersistence() == 1


def test_undo_stops_at_the_oldest_result_the_engine_still_keeps(app, tmp_path):
    import numpy as np

    engine = AnswersWhenTold(max_results=3)
    with _panel(lambda: engine, tmp_path) as panel:
        logic, widget, ui = panel.logic, panel.widget, panel.ui
        panel.slicer.util.updateSegmentBinaryLabelmapFromArray = mock.MagicMock(name="updateSegmentBinaryLabelmapFromArray")
        logic._applyRefined = lambda session, run: logic._undoMasks.append(("Segment_1", np.packbits(np.ones(8, dtype=np.uint8)), (8,)))
        widget._updateCorrectSection()
        ui.includePointsButton.widget.click()
        for number in range(5):
            _place(panel, True, (float(number), 2.0, 3.0))
            engine.answer_all()
        assert logic.lastResultId == "r5" and len(logic._undoMasks) == 2
        for expected in ("r4", "r3"):
            ui.undoClickButton.widget.click()
            assert logic.lastResultId == expected
        assert not ui.undoClickButton.enabled and logic.undoClick() == [] and logic.lastResultId == "r3"
        _place(panel, True, (9.0, 2.0, 3.0))
        assert engine.requests[-1][1]["result_id"] == "r3", "refined from a result the engine keeps"
        assert not panel.errors


def test_a_scan_edited_while_the_engine_segmented_it_is_noticed_at_the_first_point(app, tmp_path):
    engine = AnswersWhenTold()
    with _panel(lambda: engine, tmp_path) as panel:
        logic, widget, ui, module = panel.logic, panel.widget, panel.ui, panel.module
        volume, segmentation = logic.lastInputVolume, logic.lastSegmentation
        scan = {"stamp": (7, "grid")}
        logic._volumeStamp = lambda node: scan["stamp"]
        logic.serveCommand = lambda model, device: ["serve"]
        logic._writeVolume = lambda node, path: open(path, "w").close()
        logic._readSegmentationFile = mock.MagicMock(name="_readSegmentationFile")
        panel.slicer.util.updateSegmentBinaryLabelmapFromArray = mock.MagicMock(name="updateSegmentBinaryLabelmapFromArray")
        for step in ("_showSegmentation", "show3D", "_placeInStudy", "_keepProbabilityMap"):
            setattr(logic, step, mock.MagicMock(name=step))
        logic.lastResultId = None
        logic.process(volume, "nodule", outputSegmentation=segmentation, threshold=0.4, waitForCompletion=False)
        assert engine.requests[-1][0] == "segment"
        scan["stamp"] = (8, "grid")  # the user edits the scan's voxels while the engine works
        with mock.patch.object(module.segments, "import_findings", return_value=[(0, "Segment_1")]):
            engine.answer_all()
        assert logic.lastResultId == "r1" and logic.shownThreshold == 0.4

        widget._updateCorrectSection()
        ui.includePointsButton.widget.click()
        _place(panel, True, (1.0, 2.0, 3.0))
        assert [op for op, fields in engine.requests] == ["segment"], "a refine on a scan the engine never saw"
        assert "scan changed" in ui.statusLabel.text
