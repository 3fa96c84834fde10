"""Import the Slicer module without Slicer: minimal stand-ins for ``slicer``, ``qt``, ``vtk`` and ``ctk``.

Only what TMCASegmenter.py needs at import time is modelled: the scripted-module base classes,
``parameterNodeWrapper`` with its ``Choice`` and ``WithinRange`` annotations (kept so tests can read
them), the i18n helpers, the MRML node classes and the interaction node (place mode). Anything else is a ``MagicMock``. The real
module code is then imported and its classes and functions are called and introspected.
"""

from __future__ import annotations

import importlib
import sys
import types
from contextlib import contextmanager
from unittest import mock


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


class _Base:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else mock.MagicMock()


class InteractionNode:
    """Slicer's interaction node as far as placing points goes: its mode and place-mode persistence.

    ``SwitchToViewTransformMode`` keeps the persistence, as Slicer's does.
    """

    ViewTransform, Place = 2, 1
    InteractionModeChangedEvent = 19001

    def __init__(self) -> None:
        self.mode, self.persistence = self.ViewTransform, 0

    def GetCurrentInteractionMode(self) -> int:
        return self.mode

    def SetCurrentInteractionMode(self, mode: int) -> None:
        self.mode = mode

    def SwitchToViewTransformMode(self) -> None:
        self.mode = self.ViewTransform

    def GetPlaceModePersistence(self) -> int:
        return self.persistence

    def SetPlaceModePersistence(self, persistence: int) -> None:
        self.persistence = int(persistence)


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@contextmanager
def slicer_module():
    """Yield the imported TMCASegmenter module, with fake Slicer packages in ``sys.modules`` meanwhile."""
    node_classes = {name: type(name, (), {}) for name in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode")}
    fakes = {
        "qt": mock.MagicMock(name="qt"),
        "vtk": mock.MagicMock(name="vtk"),
        "ctk": mock.MagicMock(name="ctk"),
        "slicer.i18n": _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.ScriptedLoadableModule": _module(
            "slicer.ScriptedLoadableModule",
            **{name: type(name, (_Base,), {}) for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic",
                                                           "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget")}),
        "slicer.util": _module("slicer.util", VTKObservationMixin=type("VTKObservationMixin", (), {"__init__": lambda self: None})),
        "slicer.parameterNodeWrapper": _module("slicer.parameterNodeWrapper", Choice=Choice, WithinRange=WithinRange,
                                               parameterNodeWrapper=lambda cls: cls),
    }
    slicer = _module("slicer", app=mock.MagicMock(name="slicer.app"), mrmlScene=mock.MagicMock(name="mrmlScene"),
                     **node_classes, **{name.split(".")[1]: fakes[name] for name in fakes if name.startswith("slicer.")})
    slicer.app.applicationLogic.return_value.GetInteractionNode.return_value = InteractionNode()
    fakes["slicer"] = slicer
    saved = {name: sys.modules.get(name) for name in [*fakes, "TMCASegmenter"]}
    sys.modules.update(fakes)
    sys.modules.pop("TMCASegmenter", None)
    try:
        yield importlib.import_module("TMCASegmenter")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
