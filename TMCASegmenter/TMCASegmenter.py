"""TMCASegmenter: type the report, get the described targets as a Slicer segmentation.

The engine (the ``tmca`` package beside this file) runs in a separate ``PythonSlicer`` process;
this module writes the inputs, follows the engine's JSON progress and imports the result.
Everything that does not need Slicer lives in ``TMCASegmenterLib/`` (process runner and its
poller, command lines, geometry, results, segment copying, dependencies, widget syncing); the
dependency installs in ``TMCASegmenterLib/slicer_bridge.py``. Needs Slicer 5.10 or later (Python 3.12).
"""

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from TMCASegmenterLib import (batchfiles, commands, corrections, corrections_clicks, dependencies, dicom_export, geometry,
                              models, paths, process as engineProcess, reports, results, segments, slicer_bridge,
                              warm_engine, widgets)
from TMCASegmenterLib.poller import ProcessPoller
from tmca.errors import TMCAError
from tmca.metrics import dice
from tmca.protocol import Progress
from tmca.site import split_counts

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
RESOURCES_DIR = paths.resource_dir(MODULE_DIR)
RECENT_REPORTS_SETTING = "TMCASegmenter/RecentReports"
EDITS_PREFIX = "TMCASegmenter-edits-"  # folders of edited masks exported for "Use my edits"


#
# TMCASegmenter
#


class TMCASegmenter(ScriptedLoadableModule):
    """The module's title, category, help and acknowledgement."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TMCA Segmenter")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []  # PyTorch is used when present; see slicer_bridge
        self.parent.contributors = ["TMCASegmenter developers"]
        self.parent.helpText = _("""
Language-guided segmentation: select a scan, type the report (for example "two infected areas,
lower left and lower right lung") and click Apply. Each finding becomes a segment that you can
correct in Segment Editor. The threshold slider updates the last result without a new run.
""")
        self.parent.acknowledgementText = _("""
Implements TMCA (Target-informed Multi-level Contrastive Alignments) for text-guided medical image
segmentation. The module layout follows the 3D Slicer scripted module template.
""")


#
# TMCASegmenterParameterNode
#


@parameterNodeWrapper
class TMCASegmenterParameterNode:
    """
    The parameters of the module.

    inputVolume - The scan to segment.
    report - The report text that describes the targets.
    modelPath - A trained model folder; "" uses the bundled demo model.
    device - One of the engine's devices (commands.DEVICES: "auto", "cpu", "cuda", "mps").
    splitFindings - One segment per finding (True) or one segment for the whole report.
    threshold - Probability threshold, strictly between 0 and 1.
    outputSegmentation - Segmentation that receives the findings; None creates a new one.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    report: str = ""
    modelPath: str = ""
    device: Annotated[str, Choice(list(commands.DEVICES))] = "auto"
    splitFindings: bool = True
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5  # the engine needs 0 < threshold < 1
    outputSegmentation: vtkMRMLSegmentationNode


#
# TMCASegmenterWidget
#


class TMCASegmenterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the widgets to the parameter node and hands the work to the logic.

    The report box is synced by hand (:class:`TMCASegmenterLib.widgets.PlainTextSync`), not through
    ``SlicerParameterName``: the wrapper's QTextEdit connector rewrites the box on every change.
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._reportSync = None
        self._shownThreshold = results.ShownThreshold()
        self._runThreshold = None
        self._rows: list = []
        self._pointLists: dict = {}  # positive (include) -> its point list, made on demand
        self._placed: list = []  # (positive, control point id) per click of the click session, in its order
        self._choices: list = []  # the Correct section's findings (corrections_clicks.FindingChoice)
        self._savedPersistence = None  # (interaction node, its place-mode persistence before placing points)
        self._observedInteraction = None

    def resourcePath(self, filename: str) -> str:
        """Resources sit beside the module when built, and at the extension's top level in a source tree."""
        return os.path.join(RESOURCES_DIR, filename)

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TMCASegmenter.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. Make sure that in Qt designer the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal in is connected to each MRML widget's.
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = TMCASegmenterLogic()

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Widgets without a parameter of their own (the others carry a SlicerParameterName)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.recentReportsComboBox.connect("activated(int)", self.onRecentReportChosen)
        self.ui.modelSourceComboBox.connect("currentIndexChanged(int)", self.onModelChoiceChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelChoiceChanged)
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        self.ui.saveCorrectionButton.connect("clicked(bool)", self.onSaveCorrection)
        self.ui.improveModelButton.connect("clicked(bool)", self.onImproveModel)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self._connectCorrectSection()
        slicer.app.connect("aboutToQuit()", self.logic.stopEngine)  # also stopped by cleanup(), on module unload
        self.ui.siteDatasetPathLineEdit.currentPath = self.logic.siteDatasetFolder()
        self.ui.siteDatasetPathLineEdit.connect("currentPathChanged(QString)", self.onSiteDatasetChanged)
        self._reportSync = widgets.PlainTextSync(self.ui.reportTextEdit, self._storeReport)
        header = self.ui.resultsTableWidget.horizontalHeader()
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(1, qt.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, qt.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(3, qt.QHeaderView.ResizeToContents)
        self.ui.progressBar.hide()
        self._fillRecentReports()
        self._showSiteDatasetCount()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self.logic:
            self.logic.cancel()
            self._stopPlacing()
            self.logic.stopEngine()
        if self._reportSync:
            self._reportSync.disconnect()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()
        self._showSiteDatasetCount()  # another Slicer may have saved corrections meanwhile

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: a running segmentation is dropped, never imported."""
        self.logic.discard()
        self._stopPlacing()
        self.logic.forgetResults()
        self._pointLists, self._placed, self._observedInteraction = {}, [], None  # removed with the scene
        self.setParameterNode(None)
        self._rows = []
        self.ui.resultsTableWidget.setRowCount(0)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[TMCASegmenterParameterNode]) -> None:
        """Set and observe parameter node; widgets with a SlicerParameterName follow it automatically."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._showModelChoice(self._parameterNode.modelPath)
            self._shownThreshold.shown(self._parameterNode.threshold)
            self._onParameterNodeModified()

    def _storeReport(self, text: str) -> None:
        if self._parameterNode:
            self._parameterNode.report = text

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode:
            self._reportSync.show(self._parameterNode.report)
        self._checkCanApply()
        self._updateResultButtons()
        self._rethresholdIfChanged()

    def _updateResultButtons(self) -> None:
        parameters = self._parameterNode
        hasOutput = parameters is not None and parameters.outputSegmentation is not None
        self.ui.editInSegmentEditorButton.enabled = hasOutput
        inputVolume = parameters.inputVolume if parameters else None
        outputSegmentation = parameters.outputSegmentation if parameters else None
        # the table's rows belong to the last result: its scan and its segmentation must still be the selected ones
        shown = bool(self._rows) and self.logic.isLastResult(inputVolume, outputSegmentation)
        self.ui.saveCorrectionButton.enabled = shown and not self.logic.isRunning
        route = self.logic.dicomSegRoute(inputVolume, outputSegmentation)
        self.ui.exportDicomSegButton.enabled = route.possible and not self.logic.isRunning
        self.ui.exportDicomSegButton.toolTip = route.reason
        improving = self.logic.isImproving
        self.ui.improveModelButton.text = _("Cancel improving") if improving else _("Improve model")
        self.ui.improveModelButton.enabled = improving or not self.logic.isRunning  # not while a segmentation runs
        self._updateCorrectSection()

    # ------------------------------------------------------------------ Correct with clicks

    def _connectCorrectSection(self) -> None:
        self.ui.correctFindingComboBox.connect("currentIndexChanged(int)", self.onCorrectFindingChanged)
        self.ui.includePointsButton.connect("toggled(bool)", lambda on: self.onPlacePoints(True, on))
        self.ui.excludePointsButton.connect("toggled(bool)", lambda on: self.onPlacePoints(False, on))
        self.ui.useMyEditsButton.connect("clicked(bool)", lambda checked=False: self.onUseMyEdits())
        self.ui.undoClickButton.connect("clicked(bool)", lambda checked=False: self.onUndoClick())
        self.ui.doneCorrectingButton.connect("clicked(bool)", lambda checked=False: self.onDoneCorrecting())

    def _updateCorrectSection(self) -> None:
        """Show the Correct section's controls as the engine, the last result and the click session allow."""
        parameters = self._parameterNode
        shown = (parameters is not None and bool(self._rows)
                 and self.logic.isLastResult(parameters.inputVolume, parameters.outputSegmentation))
        choices = self.logic.correctableFindings() if shown else []
        if [c.segment_id for c in choices] != [c.segment_id for c in self._choices]:
            self._fillFindingCombo(choices)
        session = self.logic.clickSession
        controls = corrections_clicks.correct_controls(self.logic.canRefine, len(choices), bool(self.logic.lastResultId),
                                                       self.logic.isRunning, session)
        self.ui.correctReasonLabel.text = controls.reason
        self.ui.correctControlsWidget.visible = controls.visible
        self.ui.correctFindingComboBox.enabled = controls.choose
        for button in (self.ui.includePointsButton, self.ui.excludePointsButton):
            button.enabled = controls.place
            if not controls.place and button.checked:
                button.checked = False
        self.ui.useMyEditsButton.enabled = controls.use_edits
        self.ui.undoClickButton.enabled = controls.undo
        self.ui.doneCorrectingButton.enabled = controls.done

    def _fillFindingCombo(self, choices: list) -> None:
        combo = self.ui.correctFindingComboBox
        current = self._choices[combo.currentIndex].segment_id if 0 <= combo.currentIndex < len(self._choices) else None
        self._choices = list(choices)
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for choice in choices:
            combo.addItem(choice.label)
        combo.currentIndex = corrections_clicks.choice_index(choices, current) if choices else -1
        combo.blockSignals(wasBlocked)
        session = self.logic.clickSession
        if session is not None and session.choice.segment_id not in [c.segment_id for c in choices]:
            self.onDoneCorrecting()  # its segment was deleted

    def _chosenFinding(self):
        index = self.ui.correctFindingComboBox.currentIndex
        return self._choices[index] if 0 <= index < len(self._choices) else None

    def onCorrectFindingChanged(self, index: int) -> None:
        """Another finding: the points placed so far belonged to the previous one."""
        session = self.logic.clickSession
        if session is not None and session.choice != self._chosenFinding():
            self.onDoneCorrecting()

    def onPlacePoints(self, positive: bool, on: bool) -> None:
        """Include (``positive``) or exclude placement on or off; the other kind goes off."""
        button, other = ((self.ui.includePointsButton, self.ui.excludePointsButton) if positive
                         else (self.ui.excludePointsButton, self.ui.includePointsButton))
        if not on:
            if not other.checked:
                self._stopPlacing()
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot place points."), waitCursor=False):
            choice = self._chosenFinding()
            session = self.logic.clickSession
            try:
                if choice is None:
                    raise TMCAError(_("apply a report first; there is no finding to correct"))
                if session is None or session.choice != choice:
                    self._clearPoints()
                    self.logic.startCorrecting(choice)
            except TMCAError:
                button.checked = False
                raise
            if other.checked:
                wasBlocked = other.blockSignals(True)
                other.checked = False
                other.blockSignals(wasBlocked)
            self._startPlacing(self._pointList(positive))
            self.ui.statusLabel.text = _("Click on the scan: each point refines {finding}.").format(finding=choice.label)
        self._updateCorrectSection()

    def _pointList(self, positive: bool):
        """The include (green) or exclude (red) point list, made on demand and shown."""
        node = self._pointLists.get(positive)
        if node is None or not slicer.mrmlScene.IsNodePresent(node):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                                      "TMCA include points" if positive else "TMCA exclude points")
            node.CreateDefaultDisplayNodes()
            node.SetMarkupLabelFormat("+" if positive else "-")
            node.SetSaveWithScene(False)
            color = (0.1, 0.85, 0.1) if positive else (0.95, 0.1, 0.1)
            display = node.GetDisplayNode()
            display.SetColor(*color)
            display.SetSelectedColor(*color)
            # PointAddedEvent comes with the preview point that follows the mouse in place mode;
            # PointPositionDefinedEvent only once the user has clicked
            self.addObserver(node, node.PointPositionDefinedEvent, self._onPointDefined)
            self._pointLists[positive] = node
        node.GetDisplayNode().SetVisibility(True)
        return node

    def _startPlacing(self, pointList) -> None:
        appLogic = slicer.app.applicationLogic()
        selection = appLogic.GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(pointList.GetID())
        interaction = appLogic.GetInteractionNode()
        if self._observedInteraction is not interaction:
            self.addObserver(interaction, interaction.InteractionModeChangedEvent, self._onInteractionModeChanged)
            self._observedInteraction = interaction
        if self._savedPersistence is None:
            self._savedPersistence = (interaction, interaction.GetPlaceModePersistence())
        interaction.SetPlaceModePersistence(1)  # keep placing until the button is released
        interaction.SetCurrentInteractionMode(interaction.Place)

    def _stopPlacing(self) -> None:
        interaction = self._observedInteraction
        if interaction is not None and interaction.GetCurrentInteractionMode() == interaction.Place:
            interaction.SwitchToViewTransformMode()  # keeps the persistence as it is
        self._restorePersistence()

    def _restorePersistence(self) -> None:
        """Give place mode back the persistence it had before the Correct section switched it on."""
        saved, self._savedPersistence = self._savedPersistence, None
        if saved is not None:
            interaction, persistence = saved
            interaction.SetPlaceModePersistence(persistence)

    def _onInteractionModeChanged(self, caller, event) -> None:
        """The user left place mode (Escape, right-click, the toolbar): the buttons follow."""
        if caller.GetCurrentInteractionMode() != caller.Place:
            self._releasePlaceButtons()
            self._restorePersistence()

    def _releasePlaceButtons(self) -> None:
        for button in (self.ui.includePointsButton, self.ui.excludePointsButton):
            if button.checked:
                wasBlocked = button.blockSignals(True)
                button.checked = False
                button.blockSignals(wasBlocked)

    def _onPointDefined(self, caller, event) -> None:
        """A point was placed: refine at once (or with the next request when one runs)."""
        positive = caller is self._pointLists.get(True)
        index = caller.GetNumberOfControlPoints() - 1
        if index < 0 or self.logic.clickSession is None:
            return
        pointId = caller.GetNthControlPointID(index)
        worldRas = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(index, worldRas)
        self._placed.append((positive, pointId))
        try:
            self.logic.addClick(worldRas, positive, self._onRefined)
        except Exception as error:
            self._removePoints([len(self._placed) - 1])
            self.ui.statusLabel.text = _("Point not used: {error}").format(error=error)
            logging.exception("TMCASegmenter: a click could not be sent")
        else:
            self.ui.statusLabel.text = _("Refining {finding}...").format(finding=self.logic.clickSession.choice.label)
        self._updateCorrectSection()

    def _onRefined(self, error: Optional[str], dropped: list) -> None:
        self._removePoints(dropped)
        if error:
            self.ui.statusLabel.text = _("Correction not applied: {error}").format(error=error)
        else:
            self.ui.statusLabel.text = _("Refined; place another point, or Undo click.")
        self._showResult()

    def _removePoints(self, positions: list) -> None:
        """Remove the markups of the click session's points at ``positions``."""
        for position in sorted(positions, reverse=True):
            if 0 <= position < len(self._placed):
                positive, pointId = self._placed.pop(position)
                node = self._pointLists.get(positive)
                index = node.GetNthControlPointIndexByID(pointId) if node is not None else -1
                if index >= 0:
                    node.RemoveNthControlPoint(index)

    def _clearPoints(self) -> None:
        for node in self._pointLists.values():
            if slicer.mrmlScene.IsNodePresent(node):
                node.RemoveAllControlPoints()
        self._placed = []

    def onUseMyEdits(self) -> None:
        """Start the next refinement from the segment as the user edited it."""
        with slicer.util.tryWithErrorDisplay(_("Cannot use the edited segment."), waitCursor=True):
            choice = self._chosenFinding()
            if choice is None:
                raise TMCAError(_("apply a report first; there is no finding to correct"))
            if self.logic.clickSession is None or self.logic.clickSession.choice != choice:
                self._clearPoints()
                self.logic.startCorrecting(choice)
            sent = self.logic.useMyEdits(self._onRefined)
            self.ui.statusLabel.text = (_("Refining from your edits...") if sent is not None
                                        else _("Your edits are the start of the next point's refinement."))
        self._updateCorrectSection()

    def onUndoClick(self) -> None:
        """Back one refinement: the previous mask and points."""
        with slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            self._removePoints(self.logic.undoClick())
            self._showResult()
            self.ui.statusLabel.text = _("Undone.")

    def onDoneCorrecting(self) -> None:
        """Stop placing, remove and hide the points; the corrected segment stays."""
        self._stopPlacing()
        self._releasePlaceButtons()
        self._clearPoints()
        for node in self._pointLists.values():
            if slicer.mrmlScene.IsNodePresent(node) and node.GetDisplayNode():
                node.GetDisplayNode().SetVisibility(False)
        self.logic.stopCorrecting()
        self._updateCorrectSection()

    def _checkCanApply(self) -> None:
        if self.logic.isRunning:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = (_("Stop the running fine-tuning; the current model stays") if self.logic.isImproving
                                           else _("Stop the running segmentation; the scene stays unchanged"))
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        problem = self._missingInput()
        self.ui.applyButton.toolTip = problem or _("Segment the targets described in the report")
        self.ui.applyButton.enabled = not problem

    def _missingInput(self) -> str:
        parameters = self._parameterNode
        if not parameters or not parameters.inputVolume:
            return _("Select an input volume")
        if not parameters.report.strip():
            return _("Type the report that describes the targets")
        if self.ui.modelSourceComboBox.currentIndex == 1 and not parameters.modelPath:
            return _("Choose a model folder")
        return ""

    def _rethresholdIfChanged(self) -> None:
        """Apply the slider's threshold to the last result, unless a run is going on (then when it ends)."""
        parameters = self._parameterNode
        if not parameters:
            return
        threshold = self._shownThreshold.pending(parameters.threshold, self.logic.isRunning)
        if threshold is None:
            return
        self._shownThreshold.shown(threshold)
        if not self.logic.hasProbabilityMapFor(parameters.outputSegmentation):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to apply the threshold."), waitCursor=True):
            self.logic.applyThreshold(threshold)
            self._showResult()

    def onApplyButton(self) -> None:
        """Run the segmentation, or cancel the one that is running."""
        if self.logic.isRunning:
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation.")):
            if not slicer_bridge.ensureDependencies(self.resourcePath("requirements.txt")):
                self.ui.statusLabel.text = _("Python packages are missing; segmentation not started.")
                return
            self._rememberReport(parameters.report)
            self.logic.process(
                parameters.inputVolume, parameters.report, parameters.outputSegmentation,
                model=parameters.modelPath or None, device=parameters.device, threshold=parameters.threshold,
                splitFindings=parameters.splitFindings, waitForCompletion=False,
                progressCallback=self._onProgress, completedCallback=self._onCompleted,
                show3D=self.ui.show3DButton.checked)
            self._runThreshold = parameters.threshold
            self._setRunning(True)

    def _setRunning(self, running: bool) -> None:
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.setRange(0, 0)  # busy indicator until the first progress event
            self.ui.statusLabel.text = _("Starting the engine...")
        self._checkCanApply()
        self._updateResultButtons()

    def _onProgress(self, event: Progress) -> None:
        if event.total > 0:
            self.ui.progressBar.setRange(0, event.total)
            self.ui.progressBar.value = event.done
        self.ui.statusLabel.text = event.message

    def _onCompleted(self, outcome: engineProcess.RunOutcome) -> None:
        self._setRunning(False)
        if outcome.cancelled:
            self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
        elif outcome.error:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=outcome.error)
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=outcome.error))
        else:
            self.ui.statusLabel.text = _("Done: {count} finding(s), {absent} finding(s) of absence.").format(
                count=len(outcome.findings), absent=len(self.logic.lastNegativeFindings))
            self._shownThreshold.shown(self._runThreshold)
            self._stopPlacing()
            self._clearPoints()  # the new result starts without points
            self._showResult()
            if self._parameterNode:
                self._parameterNode.outputSegmentation = outcome.output
        self._rethresholdIfChanged()  # the slider may have moved during the run

    def _showResult(self) -> None:
        """Fill the results table from the logic's last result."""
        self._rows = results.result_rows(self.logic.lastFindings, self.logic.lastSegmentIds,
                                         self.logic.lastNegativeFindings)
        widgets.fill_results_table(self.ui.resultsTableWidget, self._rows, qt.QTableWidgetItem)
        self._updateResultButtons()

    def onSaveCorrection(self) -> None:
        """Save the selected findings (all when none is selected) with their corrected segments to the site dataset."""
        parameters = self._parameterNode
        selected = [index.row() for index in self.ui.resultsTableWidget.selectionModel().selectedRows()]
        with slicer.util.tryWithErrorDisplay(_("The correction was not saved."), waitCursor=True):
            try:
                saved = self.logic.saveCorrections(parameters.inputVolume, parameters.outputSegmentation,
                                                   corrections.chosen_corrections(self._rows, selected))
            except TMCAError as error:
                self.ui.statusLabel.text = _("Correction not saved: {error}").format(error=error)
                raise
            self.ui.statusLabel.text = _("Saved {count} correction(s) to the site dataset.").format(count=len(saved))
            self._showSiteDatasetCount()

    def onImproveModel(self) -> None:
        """Fine-tune the current model on the site dataset in the background, or cancel the fine-tuning that runs."""
        if self.logic.isImproving:
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start improving the model.")):
            # no dependency install here (only Apply installs): corrections to learn from exist only after an Apply
            siteDataset = self.logic.siteDatasetFolder()
            self.logic.improveModel(parameters.modelPath or None, siteDataset, models.new_model_folder(siteDataset),
                                    device=parameters.device, waitForCompletion=False,
                                    progressCallback=self._onProgress, completedCallback=self._onImproved)
            self._setRunning(True)
            self.ui.statusLabel.text = _("Fine-tuning {model} on the site dataset...").format(
                model=models.model_label(parameters.modelPath))

    def _onImproved(self, promoted: bool, message: str, output: str) -> None:
        self._setRunning(False)
        self.ui.statusLabel.text = message
        if promoted and slicer.util.confirmYesNoDisplay(
                _("{message}\n\nUse the new model {label} from now on?").format(message=message, label=models.model_label(output))):
            self._showModelChoice(output)
            self.onModelChoiceChanged()

    def onExportDicomSeg(self) -> None:
        """Write the last result as a DICOM SEG into a folder the user chooses."""
        parameters = self._parameterNode
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export DICOM SEG to folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("DICOM SEG export failed."), waitCursor=True):
            try:
                written = self.logic.exportDicomSeg(parameters.inputVolume, parameters.outputSegmentation, folder)
            except TMCAError as error:
                self.ui.statusLabel.text = _("DICOM SEG not written: {error}").format(error=error)
                raise
            self.ui.statusLabel.text = _("DICOM SEG written to {path}.").format(path=written)

    def onSiteDatasetChanged(self, folder: str) -> None:
        """Remember the site dataset folder in the application settings."""
        self.logic.setSiteDatasetFolder(folder)
        self._showSiteDatasetCount()

    def _showSiteDatasetCount(self) -> None:
        self.ui.siteDatasetCountLabel.text = corrections.dataset_summary(self.logic.siteDatasetFolder())

    def onModelChoiceChanged(self, *unused) -> None:
        """Store the chosen model folder ("" = bundled demo) in the parameter node."""
        useFolder = self.ui.modelSourceComboBox.currentIndex == 1
        self.ui.modelPathLineEdit.enabled = useFolder
        if self._parameterNode:
            self._parameterNode.modelPath = self.ui.modelPathLineEdit.currentPath if useFolder else ""
        self._showModelLabel(self.ui.modelPathLineEdit.currentPath if useFolder else "")
        self._checkCanApply()

    def _showModelLabel(self, modelPath: str) -> None:
        """The chosen model's lineage and Val Dice, in the model widgets' tooltips."""
        label = models.model_label(modelPath)
        self.ui.modelPathLineEdit.toolTip = label
        self.ui.modelSourceComboBox.toolTip = label

    def _showModelChoice(self, modelPath: str) -> None:
        wasBlocked = self.ui.modelSourceComboBox.blockSignals(True)
        self.ui.modelSourceComboBox.currentIndex = 1 if modelPath else 0
        self.ui.modelSourceComboBox.blockSignals(wasBlocked)
        self.ui.modelPathLineEdit.enabled = bool(modelPath)
        if modelPath:
            self.ui.modelPathLineEdit.currentPath = modelPath
        self._showModelLabel(modelPath)

    def onRecentReportChosen(self, index: int) -> None:
        """Put the chosen recent report into the report box."""
        report = self.ui.recentReportsComboBox.itemData(index)
        if report and self._parameterNode:
            self._parameterNode.report = report  # the parameter node's observer shows it in the box
        self.ui.recentReportsComboBox.currentIndex = 0

    def _rememberReport(self, report: str) -> None:
        settings = qt.QSettings()
        recent = reports.remember_report(self._recentReports(), report)
        settings.setValue(RECENT_REPORTS_SETTING, json.dumps(recent))
        self._fillRecentReports()

    def _recentReports(self) -> list:
        try:
            recent = json.loads(qt.QSettings().value(RECENT_REPORTS_SETTING) or "[]")
        except (TypeError, ValueError):
            return []
        return [r for r in recent if isinstance(r, str)]

    def _fillRecentReports(self) -> None:
        combo = self.ui.recentReportsComboBox
        while combo.count > 1:
            combo.removeItem(1)
        for report in self._recentReports():
            combo.addItem(reports.elide(report), report)
            combo.setItemData(combo.count - 1, report, qt.Qt.ToolTipRole)

    def onEditInSegmentEditor(self) -> None:
        """Open the output segmentation in Segment Editor."""
        parameters = self._parameterNode
        self.logic.editInSegmentEditor(parameters.outputSegmentation, parameters.inputVolume)

    def onShow3D(self, show: bool) -> None:
        """Show or hide the output segmentation as surfaces in 3D."""
        self.logic.show3D(self._parameterNode.outputSegmentation, show)


#
# TMCASegmenterLogic
#


@dataclass
class _Run:
    """One engine run: the process and what the result will be imported into."""

    process: object  # engineProcess.BackgroundProcess, or warm_engine.EngineRun
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: Optional[vtkMRMLSegmentationNode]
    outputPath: str
    probabilityPath: str
    progressCallback: Optional[Callable] = None
    completedCallback: Optional[Callable] = None
    show3D: bool = False
    poller: Optional[ProcessPoller] = None
    model: Optional[str] = None
    improving: bool = False  # a ``tmca finetune`` run (outputPath: the new model folder), not a segmentation
    command: Optional[list] = None  # the warm engine's command line (None: a one-shot process)
    threshold: Optional[float] = None  # the threshold the result's segments are made at
    volumeStamp: Optional[tuple] = None  # the scan's voxels and geometry as written for the warm engine


@dataclass
class _ThresholdTarget:
    """The last result's probability map, for re-thresholding without a new run."""

    channels: np.ndarray
    segmentation: vtkMRMLSegmentationNode
    segmentIds: list
    inputVolume: vtkMRMLScalarVolumeNode
    findings: list = field(default_factory=list)


class TMCASegmenterLogic(ScriptedLoadableModuleLogic):
    """Runs the engine on a volume or a study folder and imports its results; usable from the Python console."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._run: Optional[_Run] = None
        self._thresholdTarget: Optional[_ThresholdTarget] = None
        self.lastFindings: list = []
        self.lastSegmentIds: list = []  # the last findings' segments in the output segmentation
        self.lastSegmentation = None
        self.lastInputVolume = None
        self.lastNegativeFindings: list = []  # findings of absence ("No effusion."): no segment
        self.lastModel: Optional[str] = None  # the model folder of the last result; None: the bundled model
        self.lastResultId: Optional[str] = None  # the warm engine's id of the last result (None: a one-shot run)
        self.lastImported: list = []  # (finding index in the engine's result, segment id) of the last result
        self.lastResultFindings: list = []  # the engine's findings of the last result, in its order
        self.clickSession: Optional[corrections_clicks.ClickSession] = None
        self._engine: Optional[warm_engine.WarmEngine] = None
        self._engineCommandLine: Optional[list] = None  # the warm engine that made the last result
        self._volumeFiles = warm_engine.VolumeFiles()
        self._undoMasks: list = []  # (segment id, packed previous mask, shape) per applied refinement
        self._lastVolumeStamp = None  # the scan's voxels and geometry as written for the last result
        self.shownThreshold: Optional[float] = None  # the threshold of the shown segments (the slider's), sent with refines
        self._refineCallback: Optional[Callable] = None

    def getParameterNode(self):
        return TMCASegmenterParameterNode(super().getParameterNode())

    @property
    def isRunning(self) -> bool:
        """Whether an engine process is running."""
        return self._run is not None

    @property
    def isImproving(self) -> bool:
        """Whether the running engine process is a fine-tuning (``improveModel``)."""
        return self._run is not None and self._run.improving

    @property
    def warmEngine(self) -> warm_engine.WarmEngine:
        """The warm engine (``tmca serve --stdio``), made on first use; it starts with its first request."""
        if self._engine is None:
            self._engine = warm_engine.WarmEngine(self._makeEngineClient, qt.QTimer())
        return self._engine

    @staticmethod
    def _makeEngineClient(command: list):
        from TMCASegmenterLib.engine_client import EngineClient

        return EngineClient(command, env=commands.child_environment(MODULE_DIR),
                            on_log=lambda line: logging.info(f"tmca serve: {line.text}"))

    @staticmethod
    def serveCommand(model=None, device: str = "auto") -> list:
        """The warm engine's command line for ``model`` (None or "": the bundled demo) on ``device``."""
        from TMCASegmenterLib.engine_client import serve_command

        return serve_command(enginePython(), model or None, device)

    @property
    def engineState(self) -> warm_engine.EngineState:
        return self._engine.state if self._engine is not None else warm_engine.EngineState.STOPPED

    @property
    def canRefine(self) -> Optional[bool]:
        """Whether the warm engine's model refines with clicks (its ``hello``); None before it answered."""
        return self._engine.can_refine if self._engine is not None else None

    def stopEngine(self) -> None:
        """Stop the warm engine (a running request is cancelled) and delete the scans written for it."""
        self.stopCorrecting()
        if self._engine is not None:
            self._engine.stop()
        self._volumeFiles.clear()

    def forgetResults(self) -> None:
        """The scene was closed: the engine drops its results and volumes (it keeps running), clicks end."""
        self.stopCorrecting()
        self.lastResultId, self.lastImported, self.lastResultFindings = None, [], []
        if self._engine is not None and self._engine.client is not None and self._engine.client.running:
            self._engine.request(self._engine.client.command, "forget", all=True)
        self._volumeFiles.clear()

    # ------------------------------------------------------------------ corrections with clicks

    def correctableFindings(self) -> list:
        """The last result's findings whose segment is still there, as :class:`corrections_clicks.FindingChoice`."""
        segmentation = self.lastSegmentation
        if segmentation is None or not self.lastImported or not slicer.mrmlScene.IsNodePresent(segmentation):
            return []
        return corrections_clicks.finding_choices(
            self.lastResultFindings, self.lastImported,
            lambda segmentId: segmentation.GetSegmentation().GetSegment(segmentId) is not None)

    def startCorrecting(self, choice: corrections_clicks.FindingChoice) -> corrections_clicks.ClickSession:
        """Begin placing points on ``choice`` (from :meth:`correctableFindings`), from the latest result."""
        if not self.lastResultId:
            raise TMCAError(_("this result was not made by the warm engine; click Apply again to correct it with clicks"))
        maxResults = self._engine.max_results if self._engine is not None else 8
        self.clickSession = corrections_clicks.ClickSession(self.lastResultId, choice, max_results=maxResults)
        self._undoMasks = []
        self._segmentEditorFor(self.lastSegmentation, self.lastInputVolume)  # so that Ctrl+Z there undoes clicks
        return self.clickSession

    def addClick(self, worldRas, positive: bool, completedCallback: Optional[Callable] = None,
                 waitForCompletion: bool = False):
        """Add an include (``positive``) or exclude point placed at ``worldRas`` (Slicer's world, RAS) and refine.

        :param completedCallback: called with (error or None, positions of the points dropped) after each refine
        :return: the :class:`warm_engine.EngineRun` sent, or None when one runs (the point goes with the next)
        """
        session = self._requireSession()
        self._checkScanUnchanged()
        session.add(slicer_bridge.clickPointLps(self.lastInputVolume, worldRas), positive)
        return self.sendRefine(completedCallback, waitForCompletion)

    def useMyEdits(self, completedCallback: Optional[Callable] = None, waitForCompletion: bool = False):
        """Start the next refinement from the finding's segment as edited now (sent at once when points exist)."""
        session = self._requireSession()
        self._checkScanUnchanged()
        segmentation, inputVolume = self.lastSegmentation, self.lastInputVolume
        # with the scan as reference the array has the scan's whole grid (origin, spacing, directions, extent)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, session.choice.segment_id, inputVolume)
        scanShape = slicer.util.arrayFromVolume(inputVolume).shape
        if mask is None or tuple(mask.shape) != tuple(scanShape):
            raise TMCAError(_("the edited segment could not be read on the scan's grid; check that the segment exists"))
        import SimpleITK as sitk

        folder = tempfile.mkdtemp(prefix=EDITS_PREFIX, dir=slicer.app.temporaryPath)
        path = os.path.join(folder, "edited.nrrd")
        try:
            sitk.WriteImage(geometry.image_on_grid((mask > 0).astype(np.uint8), volumeIjkToRas(inputVolume)), path, True)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._removeEdits(session.start_mask)  # earlier edits not sent yet: these replace them
        session.use_edits(path)
        return self.sendRefine(completedCallback, waitForCompletion)

    def sendRefine(self, completedCallback: Optional[Callable] = None, waitForCompletion: bool = False):
        """Send the click session's next ``refine`` (all its points); None when one runs or nothing is new."""
        session = self._requireSession()
        if completedCallback is not None:
            self._refineCallback = completedCallback
        tempDir = tempfile.mkdtemp(prefix="TMCASegmenter-refine-", dir=slicer.app.temporaryPath)
        fields = session.next_request(os.path.join(tempDir, "refined.seg.nrrd"), threshold=self.shownThreshold)
        if fields is None:
            shutil.rmtree(tempDir, ignore_errors=True)
            return None
        run = warm_engine.EngineRun(self.warmEngine, tempDir)
        run.on_finished = lambda: self._finishRefine(session, run, fields["start_mask"])
        try:
            run.send(self._engineCommandLine, "refine", **fields)
        except Exception:
            session.finished(None)
            run.cleanup()
            self._removeEdits(fields["start_mask"])
            raise
        if waitForCompletion:
            run.wait(on_poll=lambda events: slicer.app.processEvents())
        return run

    def _checkScanUnchanged(self) -> None:
        """The engine refines the scan as it was written; voxels or geometry edited since then need a new Apply."""
        if self._lastVolumeStamp is not None and self._volumeStamp(self.lastInputVolume) != self._lastVolumeStamp:
            raise TMCAError(_("the scan changed since this result was computed; click Apply again, then correct"))

    def _requireSession(self) -> corrections_clicks.ClickSession:
        if self.clickSession is None:
            raise TMCAError(_("choose the finding to correct first"))
        return self.clickSession

    @staticmethod
    def _removeEdits(path: Optional[str]) -> None:
        """Delete the folder of an exported edited mask (``useMyEdits``), once no request needs it."""
        folder = os.path.dirname(path) if path else ""
        if os.path.basename(folder).startswith(EDITS_PREFIX):
            shutil.rmtree(folder, ignore_errors=True)

    def _finishRefine(self, session: corrections_clicks.ClickSession, run: warm_engine.EngineRun,
                      startMask: Optional[str] = None) -> None:
        error, newId = None, None
        try:
            outcome = run.outcome()
            if session is not self.clickSession:
                error = _("the correction was discarded (another finding or result was chosen)")
            elif not outcome.ok:
                error = outcome.error or _("the refinement was cancelled")
            else:
                self._applyRefined(session, run)
                newId = run.result_id
        except Exception as exception:
            logging.exception("TMCASegmenter: applying the refined mask failed")
            error = str(exception)
        finally:
            run.cleanup()
            self._removeEdits(startMask)  # a failed request drops the edits; a refined result holds them
        dropped = session.finished(newId)
        if newId and session is self.clickSession:
            self.lastResultId = newId
            del self._undoMasks[:max(0, len(self._undoMasks) - session.undo_depth)]  # the engine forgot those results
            logging.info(f"TMCASegmenter: refined {session.choice.label} in {run.data.get('seconds')} s (engine)")
        if self._refineCallback is not None:
            self._refineCallback(error, dropped)
        if newId and session is self.clickSession and session.waiting:
            self.sendRefine()  # points placed while this one ran; never after a failure (it would fail again)

    def _applyRefined(self, session: corrections_clicks.ClickSession, run: warm_engine.EngineRun) -> None:
        """Replace the finding's segment with the refined mask; keep the previous one for undo."""
        segmentation, inputVolume = self.lastSegmentation, self.lastInputVolume
        if not self.isLastResult(inputVolume, segmentation):
            raise RuntimeError(_("the scan or the segmentation of this result was removed"))
        findings = list(run.result.findings)
        index = int(run.data.get("finding", session.choice.index))
        segmentId = session.choice.segment_id
        previous = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, inputVolume)
        loaded = self._readSegmentationFile(run.result.output)
        try:
            self._saveUndoState(segmentation)
            segments.replace_finding_mask(loaded, segmentation, inputVolume, findings[index], segmentId,
                                          slicer.util.arrayFromSegmentBinaryLabelmap,
                                          slicer.util.updateSegmentBinaryLabelmapFromArray)
        finally:
            slicer.mrmlScene.RemoveNode(loaded)
        self._undoMasks.append((segmentId, np.packbits(previous > 0), previous.shape))
        self._dropFromThreshold(segmentId)
        if segmentId in self.lastSegmentIds:
            self.lastFindings[self.lastSegmentIds.index(segmentId)] = findings[index]

    def undoClick(self) -> list:
        """Go back one refinement of the click session: the previous mask and points; returns the points removed."""
        session = self._requireSession()
        if not session.can_undo or not self._undoMasks:
            return []
        removed = session.undo()
        segmentId, packed, shape = self._undoMasks.pop()
        mask = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape)
        self._saveUndoState(self.lastSegmentation)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, self.lastSegmentation, segmentId, self.lastInputVolume)
        self.lastResultId = session.result_id
        return removed

    def stopCorrecting(self) -> None:
        """End the click session; the corrected segment stays."""
        if self.clickSession is not None:
            self._removeEdits(self.clickSession.start_mask)
        self.clickSession = None
        self._undoMasks = []

    def _dropFromThreshold(self, segmentId: str) -> None:
        """A segment corrected by clicks no longer follows the threshold slider (its probability map is the old one)."""
        target = self._thresholdTarget
        if target is None or segmentId not in target.segmentIds:
            return
        keep = [i for i, other in enumerate(target.segmentIds) if other != segmentId]
        target.channels = target.channels[keep]
        target.segmentIds = [target.segmentIds[i] for i in keep]
        target.findings = [target.findings[i] for i in keep]

    def _segmentEditorFor(self, segmentation, inputVolume):
        """Segment Editor's editor holding ``segmentation`` (set when it holds none), else None."""
        widget = getattr(slicer.modules, "SegmentEditorWidget", None)
        editor = getattr(widget, "editor", None)
        if editor is None:
            return None
        if editor.segmentationNode() is None and editor.mrmlSegmentEditorNode() is not None:
            editor.setSegmentationNode(segmentation)
            editor.setSourceVolumeNode(inputVolume)
        return editor if editor.segmentationNode() == segmentation else None

    def improveModel(self, model, siteDataset: str, output: str, minutes: float = 5.0, device: str = "auto",
                     waitForCompletion: bool = True, progressCallback: Optional[Callable] = None,
                     completedCallback: Optional[Callable] = None):
        """
        Fine-tune ``model`` on the site dataset with ``tmca finetune``; the new model is kept only if not worse.

        :param model: the current model folder; None or "" fine-tunes the bundled demo model
        :param siteDataset: the folder "Save correction" writes (see :meth:`siteDatasetFolder`)
        :param output: a new folder for the fine-tuned model (see ``TMCASegmenterLib.models.new_model_folder``)
        :param completedCallback: called with (promoted, message, output)
        :return: (promoted, message) when ``waitForCompletion``, else None
        """
        if self.isRunning:
            raise RuntimeError(_("A segmentation or fine-tuning is already running; cancel it first."))
        args = commands.finetune_command(enginePython(), model or None, siteDataset, output, minutes, device)
        logging.info(f"TMCASegmenter: running {' '.join(args)}")
        process = engineProcess.BackgroundProcess(args, env=commands.child_environment(MODULE_DIR))
        process.start()
        self._run = _Run(process, None, None, str(output), "", progressCallback, completedCallback,
                         model=model or None, improving=True)
        if waitForCompletion:
            process.wait(on_poll=self._onEventsWhileWaiting)
            return self._finishImprove()
        self._run.poller = ProcessPoller(process, self._onEvents, self._finishImprove, qt.QTimer())
        self._run.poller.start()
        return None

    def _finishImprove(self) -> tuple:
        run, self._run = self._run, None
        process = run.process
        if process.cancelled:
            promoted, message = False, _("Fine-tuning cancelled; the current model stays.")
        else:
            promoted, message = models.finetune_outcome(process.returncode, run.outputPath)
            if process.returncode not in (0, 1) and process.error_message():
                message = _("Fine-tuning failed: {error}").format(error=process.error_message())
        process.cleanup()
        if run.completedCallback:
            run.completedCallback(promoted, message, run.outputPath)
        return promoted, message

    def process(self, inputVolume, report: str, outputSegmentation=None, model=None, device: str = "auto",
                threshold: float = 0.5, splitFindings: bool = True, waitForCompletion: bool = True,
                progressCallback: Optional[Callable] = None, completedCallback: Optional[Callable] = None,
                show3D: bool = False, warm: bool = True):
        """
        Segment the targets that ``report`` describes in ``inputVolume``. Can be used without GUI widget.

        :param inputVolume: scalar volume to segment
        :param report: report text, e.g. "two infected areas, lower left and lower right lung"
        :param outputSegmentation: segmentation that receives the findings (its segments are kept);
            None creates a new segmentation
        :param model: trained model folder; None or "" uses the bundled demo model
        :param device: one of ``TMCASegmenterLib.commands.DEVICES`` ("auto", "cpu", "cuda", "mps")
        :param threshold: probability threshold, strictly between 0 and 1
        :param splitFindings: one segment per finding (True) or one for the whole report
        :param waitForCompletion: block (keeping the GUI alive) until the result is imported
        :param progressCallback: called with each :class:`tmca.protocol.Progress`
        :param completedCallback: called with a :class:`TMCASegmenterLib.process.RunOutcome` whose ``output``
            is the segmentation node (None when cancelled, discarded or failed)
        :param show3D: build the 3D surfaces of the result (slow on large volumes)
        :param warm: run in the warm engine (``tmca serve``: kept between runs, its results can be
            corrected with clicks); False runs a one-shot ``tmca segment`` process
        :return: the segmentation node when ``waitForCompletion`` (None if cancelled), else None
        """
        if self.isRunning:
            raise RuntimeError(_("A segmentation is already running; cancel it first."))
        if not inputVolume or not inputVolume.GetImageData():
            raise ValueError(_("Select an input volume with image data."))
        if not report or not report.strip():
            raise ValueError(_("Type the report that describes the targets."))

        tempDir = tempfile.mkdtemp(prefix="TMCASegmenter-", dir=slicer.app.temporaryPath)
        outputPath = os.path.join(tempDir, "result.seg.nrrd")
        probabilityPath = os.path.join(tempDir, "probability.nrrd")
        if warm:
            return self._processWarm(tempDir, inputVolume, report, outputSegmentation, outputPath, probabilityPath,
                                     model, device, threshold, splitFindings, waitForCompletion, progressCallback,
                                     completedCallback, show3D)
        try:
            args = self._engineCommand(tempDir, inputVolume, report, outputPath, probabilityPath, model, device,
                                       threshold, splitFindings)
            logging.info(f"TMCASegmenter: running {' '.join(args)}")
            process = engineProcess.BackgroundProcess(args, env=commands.child_environment(MODULE_DIR), temp_dir=tempDir)
            process.start()
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        self._run = _Run(process, inputVolume, outputSegmentation, outputPath, probabilityPath,
                         progressCallback, completedCallback, show3D, model=model or None)
        if waitForCompletion:
            process.wait(on_poll=self._onEventsWhileWaiting)
            outcome = self._finishRun()
            if outcome.error:
                raise RuntimeError(outcome.error)
            return outcome.output
        self._run.poller = ProcessPoller(process, self._onEvents, self._finishRun, qt.QTimer())
        self._run.poller.start()
        return None

    def _processWarm(self, tempDir: str, inputVolume, report: str, outputSegmentation, outputPath: str, probabilityPath: str,
                     model, device: str, threshold: float, splitFindings: bool, waitForCompletion: bool,
                     progressCallback, completedCallback, show3D: bool):
        """``process`` through the warm engine: the scan is written once per version, the request returns at once."""
        try:
            command = self.serveCommand(model, device)
            volumeStamp = self._volumeStamp(inputVolume)  # edits made while the engine runs must be noticed
            imagePath, written = self._volumeFiles.path_for(inputVolume.GetID(), volumeStamp,
                                                            lambda path: self._writeVolume(inputVolume, path))
            run = warm_engine.EngineRun(self.warmEngine, tempDir)
            run.send(command, "segment", image=imagePath, report=report.strip(), output=outputPath,
                     probability=probabilityPath, threshold=float(threshold), split_findings=bool(splitFindings))
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        logging.info(f"TMCASegmenter: warm engine segment ({'scan written' if written else 'scan reused'}): {imagePath}")
        self._run = _Run(run, inputVolume, outputSegmentation, outputPath, probabilityPath,
                         progressCallback, completedCallback, show3D, model=model or None, command=list(command),
                         threshold=float(threshold), volumeStamp=volumeStamp)
        run.on_events = self._onEvents
        if waitForCompletion:
            run.wait(on_poll=self._onEventsWhileWaiting)
            outcome = self._finishRun()
            if outcome.error:
                raise RuntimeError(outcome.error)
            return outcome.output
        run.on_finished = self._finishRun
        return None

    @staticmethod
    def _volumeStamp(inputVolume) -> tuple:
        """What makes the written scan out of date: its voxels and its geometry (not its name or display)."""
        return inputVolume.GetImageData().GetMTime(), tuple(np.round(volumeIjkToRas(inputVolume), 6).ravel().tolist())

    def _engineCommand(self, tempDir: str, inputVolume, report: str, outputPath: str, probabilityPath: str,
                       model, device: str, threshold: float, splitFindings: bool) -> list:
        """Write the volume and the report into ``tempDir``; return the ``tmca segment`` command line."""
        inputPath = os.path.join(tempDir, "input.nrrd")
        reportPath = os.path.join(tempDir, "report.txt")
        self._writeVolume(inputVolume, inputPath)
        Path(reportPath).write_text(report.strip(), encoding="utf-8")
        return commands.segment_command(enginePython(), inputPath, reportPath, outputPath, probabilityPath,
                                        model=model or None, device=device, threshold=threshold,
                                        split_findings=splitFindings)

    def cancel(self) -> None:
        """Stop the running engine process and everything it started, without waiting; the scene stays unchanged."""
        if self._run is not None:
            self._run.process.cancel()  # the poller reports the cancelled run once the process has gone

    def discard(self) -> None:
        """Drop the running segmentation even if it has just finished: its result is never imported.

        A fine-tuning goes on: it does not touch the scene."""
        if self._run is not None and not self._run.improving:
            self._run.process.discard()

    def _onEventsWhileWaiting(self, events: list) -> None:
        self._onEvents(events)
        slicer.app.processEvents()

    def _onEvents(self, events: list) -> None:
        run = self._run
        for event in events:
            if isinstance(event, engineProcess.LogLine):
                logging.info(f"tmca: {event.text}")
            elif isinstance(event, Progress) and run and run.progressCallback:
                run.progressCallback(event)

    def _finishRun(self) -> engineProcess.RunOutcome:
        run, self._run = self._run, None
        outcome = run.process.outcome()
        removed = self._removedNodes(run)
        if outcome.ok and removed:
            outcome.error = _("{nodes} was removed from the scene during the run; the result was discarded.").format(
                nodes=" and ".join(removed))
        try:
            if outcome.ok:
                outcome.output = self._importResult(run)
                outcome.findings = tuple(self.lastFindings)
        except Exception as error:
            logging.exception("TMCASegmenter: importing the result failed")
            outcome.error = str(error)
        finally:
            run.process.cleanup()
        if run.completedCallback:
            run.completedCallback(outcome)
        return outcome

    @staticmethod
    def _removedNodes(run: _Run) -> list:
        """Names of the run's input and output nodes that are no longer in the scene."""
        nodes = [(_("The input volume"), run.inputVolume), (_("The output segmentation"), run.outputSegmentation)]
        return [name for name, node in nodes if node is not None and not slicer.mrmlScene.IsNodePresent(node)]

    def _writeVolume(self, volumeNode, path: str) -> None:
        """Write the volume with its geometry (origin, spacing, axis directions) as uncompressed NRRD."""
        storageNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        try:
            storageNode.SetFileName(path)
            storageNode.UseCompressionOff()
            if not storageNode.WriteData(volumeNode):
                raise RuntimeError(_("Could not write the input volume to {path}.").format(path=path))
        finally:
            slicer.mrmlScene.RemoveNode(storageNode)

    def _importResult(self, run: _Run):
        """Copy the result's segments into the output segmentation and keep the probability map."""
        result = run.process.result
        findings = list(result.findings)
        loaded = self._readSegmentationFile(result.output or run.outputPath)
        try:
            segmentation = run.outputSegmentation or self._newSegmentation(run.inputVolume)
            self._saveUndoState(segmentation)
            if segmentation.GetSegmentation().GetNumberOfSegments() == 0:
                segmentation.SetReferenceImageGeometryParameterFromVolumeNode(run.inputVolume)
            segmentation.SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(), run.inputVolume.GetID())
            imported = segments.import_findings(loaded, segmentation, run.inputVolume, findings,
                                                slicer.util.arrayFromSegmentBinaryLabelmap,
                                                slicer.util.updateSegmentBinaryLabelmapFromArray)
        finally:
            slicer.mrmlScene.RemoveNode(loaded)
        self._showSegmentation(segmentation, run.inputVolume)
        self.show3D(segmentation, run.show3D)
        self._placeInStudy(segmentation, run.inputVolume)
        self._keepProbabilityMap(result.probability or run.probabilityPath, run.inputVolume, segmentation,
                                 findings, imported)
        self.lastFindings = findings
        self.lastSegmentIds = [segmentId for findingIndex, segmentId in imported]
        self.lastSegmentation, self.lastInputVolume, self.lastModel = segmentation, run.inputVolume, run.model
        self.lastNegativeFindings = list(result.negative_findings)
        self.lastImported, self.lastResultFindings = list(imported), findings
        self.lastResultId = getattr(run.process, "result_id", None)
        self._lastVolumeStamp = run.volumeStamp if self.lastResultId else None
        self.shownThreshold = run.threshold
        self._engineCommandLine = run.command
        self.stopCorrecting()
        return segmentation

    def _readSegmentationFile(self, path: str):
        """Load a .seg.nrrd into a hidden temporary segmentation node."""
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TMCASegmenter temporary")
        node.SetHideFromEditors(True)
        node.AddDefaultStorageNode()
        storageNode = node.GetStorageNode()
        storageNode.SetFileName(path)
        if not storageNode.ReadData(node):
            slicer.mrmlScene.RemoveNode(node)
            raise RuntimeError(_("Could not read the engine's result {path}.").format(path=path))
        slicer.mrmlScene.RemoveNode(storageNode)
        return node

    def _newSegmentation(self, inputVolume):
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} TMCA")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        return segmentation

    def _saveUndoState(self, segmentation) -> None:
        """Let the user undo the import in Segment Editor when it is editing this segmentation."""
        editorWidget = getattr(slicer.modules, "SegmentEditorWidget", None)
        editor = getattr(editorWidget, "editor", None)
        if editor is not None and editor.segmentationNode() == segmentation:
            editor.saveStateForUndo()
        slicer.mrmlScene.SaveStateForUndo()

    def _showSegmentation(self, segmentation, inputVolume) -> None:
        segmentation.CreateDefaultDisplayNodes()
        displayNode = segmentation.GetDisplayNode()
        displayNode.SetVisibility(True)
        displayNode.SetVisibility2D(True)
        slicer.util.setSliceViewerLayers(background=inputVolume)

    def _placeInStudy(self, segmentation, inputVolume) -> None:
        """Put the segmentation under the input volume's study in the subject hierarchy."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        studyItem = shNode.GetItemParent(shNode.GetItemByDataNode(inputVolume))
        shNode.SetItemParent(shNode.GetItemByDataNode(segmentation), studyItem)

    def _keepProbabilityMap(self, path: str, inputVolume, segmentation, findings: list, imported: list) -> None:
        """Load the probability map (float32 on the input grid, one channel per finding) for re-thresholding."""
        self._thresholdTarget = None
        if not path or not os.path.exists(path) or not imported:
            return
        import SimpleITK as sitk

        image = sitk.ReadImage(path)
        if not geometry.same_geometry(geometry.ijk_to_ras_matrix(image), volumeIjkToRas(inputVolume)):
            logging.warning("TMCASegmenter: the probability map is not on the input grid; re-thresholding is off")
            return
        channels = results.probability_channels(sitk.GetArrayFromImage(image), len(findings))
        indices = [findingIndex for findingIndex, segmentId in imported]
        segmentIds = [segmentId for findingIndex, segmentId in imported]
        self._thresholdTarget = _ThresholdTarget(channels[indices], segmentation, segmentIds, inputVolume,
                                                 [findings[i] for i in indices])

    def hasProbabilityMapFor(self, segmentation) -> bool:
        """Whether the last result, imported into ``segmentation``, can be re-thresholded."""
        target = self._thresholdTarget
        return target is not None and segmentation is not None and target.segmentation == segmentation

    def applyThreshold(self, threshold: float) -> list:
        """Re-threshold the last result's segments at ``threshold``; return the updated findings."""
        self.shownThreshold = float(threshold)
        target = self._thresholdTarget
        if target is None:
            return self.lastFindings
        voxelVolume = float(np.prod(target.inputVolume.GetSpacing()))
        grid = geometry.image_on_grid(np.zeros(target.channels.shape[1:], dtype=np.uint8), volumeIjkToRas(target.inputVolume))
        rethresholded = {}
        for channel, segmentId, finding in zip(target.channels, target.segmentIds, target.findings):
            if target.segmentation.GetSegmentation().GetSegment(segmentId) is None:
                continue  # the user deleted this segment
            mask = results.threshold_probability(channel, threshold)
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, target.segmentation, segmentId, target.inputVolume)
            rethresholded[segmentId] = results.update_finding_statistics(finding, mask, voxelVolume, grid)
        # segments corrected with clicks keep their mask (they left the threshold target)
        kept = [(rethresholded.get(segmentId, finding), segmentId) for finding, segmentId in zip(self.lastFindings, self.lastSegmentIds)
                if target.segmentation.GetSegmentation().GetSegment(segmentId) is not None]
        self.lastFindings = [finding for finding, segmentId in kept]
        self.lastSegmentIds = [segmentId for finding, segmentId in kept]
        return self.lastFindings

    def siteDatasetFolder(self) -> str:
        """The site dataset folder chosen in the module (default: ``TMCASegmenter/SiteDataset`` beside Slicer's settings)."""
        chosen = qt.QSettings().value(corrections.SITE_DATASET_SETTING)
        return chosen or corrections.default_dataset_folder(slicer.app.slicerUserSettingsFilePath)

    def setSiteDatasetFolder(self, folder: str) -> None:
        """Choose the site dataset folder for this and later sessions; "" restores the default."""
        qt.QSettings().setValue(corrections.SITE_DATASET_SETTING, folder or "")

    def caseId(self, volumeNode) -> str:
        """The case id of a scan: its DICOM SeriesInstanceUID when loaded from DICOM, else its node name."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        item = shNode.GetItemByDataNode(volumeNode)
        uid = shNode.GetItemUID(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()) if item else ""
        return corrections.case_id(uid, volumeNode.GetName())

    def saveCorrection(self, inputVolume, segmentation, segmentId: str, report: str, dataset=None, case=None):
        """
        Save a corrected segment with its finding's sentence as a training example of the site dataset.

        :param inputVolume: the scan the segment was drawn on (stored as NIfTI: voxels and geometry only)
        :param segmentation: the segmentation node holding the segment
        :param segmentId: the segment's id in ``segmentation``
        :param report: the finding's sentence, e.g. "Nodule in the left upper lobe."
        :param dataset: site dataset folder; None uses the one chosen in the module
        :param case: case id; None uses the DICOM SeriesInstanceUID, else the volume's name
        :return: the saved :class:`tmca.site.SiteExample`
        :raises TMCAError: no such segment, an empty segment, an unwritable folder, a damaged manifest
        """
        correction = corrections.Correction(segmentId, report)
        return self.saveCorrections(inputVolume, segmentation, [correction], dataset, case)[0]

    def saveCorrections(self, inputVolume, segmentation, items: list, dataset=None, case=None) -> list:
        """Save several :class:`TMCASegmenterLib.corrections.Correction`; none is saved if one segment is missing or empty."""
        if not inputVolume or not inputVolume.GetImageData():
            raise TMCAError(_("select the scan the corrections were drawn on"))
        if segmentation is None:
            raise TMCAError(_("there is no segmentation to save; segment a report first"))

        def readMask(segmentId: str):
            if segmentation.GetSegmentation().GetSegment(segmentId) is None:
                return None
            return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, inputVolume)

        image = corrections.scan_image(slicer.util.arrayFromVolume(inputVolume), volumeIjkToRas(inputVolume))
        return corrections.save_corrections(dataset or self.siteDatasetFolder(), image, items, readMask,
                                            case or self.caseId(inputVolume))

    def isLastResult(self, inputVolume, segmentation) -> bool:
        """Whether the last result was made on ``inputVolume`` and imported into ``segmentation``, both still in the scene."""
        return (segmentation is not None and segmentation == self.lastSegmentation and inputVolume == self.lastInputVolume
                and slicer.mrmlScene.IsNodePresent(segmentation) and slicer.mrmlScene.IsNodePresent(inputVolume))

    def dicomSegRoute(self, inputVolume, segmentation, lookUpFiles: bool = False) -> dicom_export.ExportRoute:
        """How "Export DICOM SEG" would write the last result imported into ``segmentation`` (or why it cannot)."""
        uids = dicom_export.instance_uids(inputVolume.GetAttribute("DICOM.instanceUIDs") if inputVolume else None)
        hasResult = self.isLastResult(inputVolume, segmentation) and bool(self.lastSegmentIds)
        hasPlugin = dicom_export.PLUGIN_NAME in getattr(slicer.modules, "dicomPlugins", {})
        files = self._dicomFiles(uids) if lookUpFiles else None
        return dicom_export.export_route(hasResult, uids, hasPlugin, files)

    @staticmethod
    def _dicomFiles(instanceUids: list) -> list:
        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            return []
        return [database.fileForInstance(uid) for uid in instanceUids]

    def exportDicomSeg(self, inputVolume, segmentation, folder: str) -> str:
        """
        Write the last result (its segments as corrected now) as a DICOM SEG into ``folder``.

        Through Slicer's DICOM export when QuantitativeReporting's DICOM SEG plugin is installed (the
        whole segmentation, added to the DICOM database), else with the engine's writer (the result's
        findings, coded with their terminology). The input must have been loaded from DICOM.

        :return: the written file (engine), or ``folder`` (Slicer's export names its own file)
        :raises TMCAError: not DICOM, no result, images missing from the DICOM database, or the writer's message
        """
        route = self.dicomSegRoute(inputVolume, segmentation, lookUpFiles=True)
        if not route.possible:
            raise TMCAError(route.reason)
        uids = dicom_export.instance_uids(inputVolume.GetAttribute("DICOM.instanceUIDs"))
        present = [(finding, segmentId) for finding, segmentId in zip(self.lastFindings, self.lastSegmentIds)
                   if segmentation.GetSegmentation().GetSegment(segmentId) is not None]
        if route.way == dicom_export.SLICER:
            return self._exportWithSlicer(inputVolume, segmentation, [segmentId for finding, segmentId in present], uids, folder)
        masks = [slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, inputVolume) for finding, segmentId in present]
        path = os.path.join(folder, dicom_export.seg_file_name(inputVolume.GetName()))
        return str(dicom_export.write_with_engine(path, masks, [finding for finding, segmentId in present],
                                                  volumeIjkToRas(inputVolume), self._dicomFiles(uids), self.lastModel))

    def _exportWithSlicer(self, inputVolume, segmentation, segmentIds: list, instanceUids: list, folder: str) -> str:
        """QuantitativeReporting's plugin, called as Slicer's script repository shows (examineForExport, export)."""
        self._placeInStudy(segmentation, inputVolume)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        item = shNode.GetItemByDataNode(segmentation)
        # examineForExport offers the segmentation only when this attribute lists images in the database
        shNode.SetItemAttribute(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMReferencedInstanceUIDsAttributeName(),
                                " ".join(instanceUids))
        for segmentId in segmentIds:  # the exporter calls untagged segments MANUAL
            segment = segmentation.GetSegmentation().GetSegment(segmentId)
            segment.SetTag("DICOM.SegmentAlgorithmType", "SEMIAUTOMATIC")
            segment.SetTag("DICOM.SegmentAlgorithmName", "TMCASegmenter")
        plugin = slicer.modules.dicomPlugins[dicom_export.PLUGIN_NAME]()
        exportables = plugin.examineForExport(item)
        if not exportables:
            raise TMCAError(_("Slicer's DICOM SEG export does not accept this segmentation."))
        for exportable in exportables:
            exportable.directory = folder
            exportable.setTag("SeriesDescription", "TMCASegmenter findings")
        error = plugin.export(exportables)
        if error:
            raise TMCAError(error)
        return folder

    def editInSegmentEditor(self, segmentation, inputVolume) -> None:
        """Switch to Segment Editor with ``segmentation`` and ``inputVolume`` selected."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(inputVolume)

    def show3D(self, segmentation, show: bool = True) -> None:
        """Show or hide ``segmentation`` as closed surfaces in the 3D view (surfaces are built only to be shown)."""
        if segmentation is None:
            return
        if show:
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                segmentation.CreateClosedSurfaceRepresentation()
            finally:
                qt.QApplication.restoreOverrideCursor()
        segmentation.CreateDefaultDisplayNodes()
        segmentation.GetDisplayNode().SetVisibility3D(show)
        layoutManager = slicer.app.layoutManager()
        if show and layoutManager and layoutManager.threeDWidget(0):
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    def processStudyFolder(self, folder, reports=None, outputFolder=None, model=None, device: str = "auto",
                           threshold: float = 0.5, loadResults: bool = False,
                           progressCallback: Optional[Callable] = None) -> list:
        """
        Segment every case of a study folder with ``tmca batch`` (blocks, keeping the GUI alive).

        :param folder: study folder (one image or DICOM series per case)
        :param reports: CSV file with columns case,report, or a dict case -> report text;
            None uses the reports the engine finds in the folder
        :param outputFolder: where ``<case>.seg.nrrd``, ``summary.csv`` and ``summary.json`` go
        :param loadResults: load every written ``<case>.seg.nrrd`` into the scene
        :return: the rows of ``summary.json`` (case, input, report, status, error, findings, ...)
        """
        if self.isRunning:
            raise RuntimeError(_("A segmentation is already running; cancel it first."))
        if not outputFolder:
            raise ValueError(_("Choose an output folder."))
        os.makedirs(outputFolder, exist_ok=True)
        tempDir = tempfile.mkdtemp(prefix="TMCASegmenter-batch-", dir=slicer.app.temporaryPath)
        reportsCsv = reports
        if isinstance(reports, Mapping):
            reportsCsv = batchfiles.write_reports_csv(reports, os.path.join(tempDir, "reports.csv"))
        args = commands.batch_command(enginePython(), folder, outputFolder, reportsCsv,
                                      model=model or None, device=device, threshold=threshold)
        logging.info(f"TMCASegmenter: running {' '.join(args)}")
        process = engineProcess.BackgroundProcess(args, env=commands.child_environment(MODULE_DIR), temp_dir=tempDir)
        with process:
            self._run = _Run(process, None, None, "", "", progressCallback)
            try:
                process.wait(on_poll=self._onEventsWhileWaiting)
            finally:
                self._run = None
            summaryPath = os.path.join(outputFolder, "summary.json")
            if process.cancelled or (process.returncode != 0 and not os.path.exists(summaryPath)):
                raise RuntimeError(process.error_message() or _("The batch run was cancelled."))
        rows = batchfiles.read_batch_summary(summaryPath)
        if loadResults:
            self._loadBatchResults(rows, outputFolder)
        return rows

    def _loadBatchResults(self, rows: list, outputFolder: str) -> None:
        for row in rows:
            path = os.path.join(outputFolder, row.get("output") or f"{row.get('case')}.seg.nrrd")
            if row.get("status") == "ok" and os.path.exists(path):
                slicer.util.loadSegmentation(path)


def enginePython() -> str:
    """Slicer's ``PythonSlicer``, which runs the engine (inside Slicer, ``sys.executable`` is the application)."""
    return commands.python_executable(search_dirs=[os.path.join(slicer.app.slicerHome, "bin")])


def volumeIjkToRas(volumeNode) -> np.ndarray:
    """The volume's 4x4 IJK-to-RAS matrix as a numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


#
# TMCASegmenterTest
#


class TMCASegmenterTest(ScriptedLoadableModuleTest):
    """The module's self-test: a synthetic case segmented end to end inside Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TMCASegmenter_synthetic_case()

    def test_TMCASegmenter_synthetic_case(self):
        """Segment a synthetic CT case with the bundled model: one segment per finding, input geometry, Dice >= 0.5."""
        missing = dependencies.missing_engine_packages(os.path.join(RESOURCES_DIR, "requirements.txt"))
        if missing:  # extension build machines have no torch and install nothing in testing mode
            self.skipTest(f"TMCASegmenter self-test skipped: the engine's Python packages are not installed "
                          f"({', '.join(missing)}); click Apply once in the module to install them.")

        self.delayDisplay("Generating a synthetic case")
        caseDir = tempfile.mkdtemp(prefix="TMCASegmenterTest-", dir=slicer.app.temporaryPath)
        subprocess.run(commands.synth_command(enginePython(), caseDir, cases=1, modality="ct", dims=3, seed=3),
                       env=commands.child_environment(MODULE_DIR), check=True, capture_output=True, text=True)
        imagePath = sorted(Path(caseDir, "images").glob("*.nii.gz"))[0]
        case = imagePath.name[: -len(".nii.gz")]
        report = Path(caseDir, "reports", f"{case}.txt").read_text(encoding="utf-8")
        inputVolume = slicer.util.loadVolume(str(imagePath))

        self.delayDisplay("Segmenting")
        logic = TMCASegmenterLogic()
        segmentation = logic.process(inputVolume, report, model=None, device="cpu")
        self.assertIsNotNone(segmentation)
        self.assertGreater(len(logic.lastFindings), 0)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), len(logic.lastFindings))
        for finding in logic.lastFindings:
            self.assertTrue(segmentation.GetSegmentation().GetSegmentIdBySegmentName(finding.name), finding.name)

        self.delayDisplay("Checking geometry and overlap")
        self._assertGeometryMatches(segmentation, inputVolume)
        self._assertDiceAtLeast(segmentation, inputVolume, Path(caseDir, "masks", f"{case}.nii.gz"), 0.5)

        self.delayDisplay("Saving a correction to a site dataset")
        self._assertCorrectionSaved(logic, inputVolume, segmentation, Path(caseDir, "site"))
        logic.applyThreshold(0.9)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), len(logic.lastFindings))
        if logic.canRefine:
            self.delayDisplay("Correcting a finding with a click")
            self._assertClickRefinesAndUndoes(logic, inputVolume, segmentation)
        logic.stopEngine()
        self.delayDisplay("Test passed")

    def _assertClickRefinesAndUndoes(self, logic, inputVolume, segmentation):
        choice = logic.correctableFindings()[0]
        before = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, choice.segment_id, inputVolume).copy()
        inside = np.argwhere(before > 0)
        k, j, i = inside[len(inside) // 2] if len(inside) else np.array(before.shape) // 2
        worldRas = (volumeIjkToRas(inputVolume) @ np.array([i, j, k, 1.0]))[:3]
        firstResult = logic.lastResultId
        logic.startCorrecting(choice)
        errors = []
        logic.addClick(worldRas, positive=False, completedCallback=lambda error, dropped: errors.append(error),
                       waitForCompletion=True)
        self.assertEqual(errors, [None])
        self.assertNotEqual(logic.lastResultId, firstResult)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), len(logic.lastFindings))
        logic.undoClick()
        after = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, choice.segment_id, inputVolume)
        self.assertTrue(np.array_equal(after > 0, before > 0))
        self.assertEqual(logic.lastResultId, firstResult)
        logic.stopCorrecting()

    def _assertCorrectionSaved(self, logic, inputVolume, segmentation, dataset: Path):
        import SimpleITK as sitk

        segmentId, finding = logic.lastSegmentIds[0], logic.lastFindings[0]
        example = logic.saveCorrection(inputVolume, segmentation, segmentId, finding.text, dataset=str(dataset))
        self.assertEqual((example.case, example.report), (inputVolume.GetName(), finding.text))
        mask = sitk.ReadImage(str(dataset / example.mask))
        self.assertTrue(geometry.same_geometry(geometry.ijk_to_ras_matrix(mask), volumeIjkToRas(inputVolume)))
        segment = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, inputVolume) > 0
        self.assertTrue(np.array_equal(sitk.GetArrayFromImage(mask) > 0, segment))
        self.assertEqual(sum(split_counts(dataset).values()), 1)

    def _assertGeometryMatches(self, segmentation, inputVolume):
        converter = slicer.vtkSegmentationConverter
        serialized = segmentation.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
        expected = converter.SerializeImageGeometry(self._ijkToRasVtk(inputVolume), inputVolume.GetImageData())
        self.assertEqual(serialized, expected)

    def _ijkToRasVtk(self, volumeNode):
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return matrix

    def _assertDiceAtLeast(self, segmentation, inputVolume, truthPath: Path, minimum: float):
        import SimpleITK as sitk

        truth = sitk.ReadImage(str(truthPath))
        self.assertTrue(geometry.same_geometry(geometry.ijk_to_ras_matrix(truth), volumeIjkToRas(inputVolume)))
        prediction = np.zeros(slicer.util.arrayFromVolume(inputVolume).shape, dtype=bool)
        segmentIds = vtk.vtkStringArray()
        segmentation.GetSegmentation().GetSegmentIDs(segmentIds)
        for index in range(segmentIds.GetNumberOfValues()):
            prediction |= slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentIds.GetValue(index), inputVolume) > 0
        score = dice(prediction, sitk.GetArrayFromImage(truth))
        self.assertGreaterEqual(score, minimum, f"Dice {score:.3f} against {truthPath.name}")
