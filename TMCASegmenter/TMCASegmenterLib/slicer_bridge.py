"""The one small bridge to Slicer's API: installing the engine's Python dependencies.

Dependencies are checked only when the user first clicks Apply, never at import or start-up:
PyTorch through the PyTorch extension (``PyTorchUtils``), the other packages of
``Resources/requirements.txt`` through ``slicer.packaging.pip_ensure`` (Slicer 5.12 and later)
or, on Slicer 5.10 and 5.11, ``slicer.util.pip_install`` after one confirmation that lists every
package. Either way the installed torch is pinned by a pip constraints file, so that monai and
transformers (which depend on torch) cannot replace the build the PyTorch extension chose.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from types import ModuleType

import qt
import slicer

from TMCASegmenterLib import dependencies

REQUESTER = "TMCASegmenter"
PYTORCH_MISSING_MESSAGE = (
    "TMCASegmenter needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
    "restart Slicer, then click Apply again (or install torch into Slicer's Python yourself)."
)

_dependenciesReady = False


def ensureDependencies(requirementsPath: str) -> bool:
    """Make sure torch and the engine's packages are installed; False if the user declined or torch is missing."""
    global _dependenciesReady
    if not _dependenciesReady:
        _dependenciesReady = ensureTorch() and ensurePythonPackages(requirementsPath)
    return _dependenciesReady


def torchAvailable() -> bool:
    """Whether torch is importable, without importing it."""
    return importlib.util.find_spec("torch") is not None


def ensureTorch() -> bool:
    """Install torch with the PyTorch extension (asking first); show how to get it when that extension is missing."""
    if torchAvailable():
        return True
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        slicer.util.errorDisplay(PYTORCH_MISSING_MESSAGE, windowTitle=f"{REQUESTER} - PyTorch required")
        return False
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
    if torch is None:
        logging.info("PyTorch installation was declined")
    return torch is not None


def ensurePythonPackages(requirementsPath: str) -> bool:
    """Install the missing packages of ``requirementsPath``; False if the user declined."""
    constraints = dependencies.write_torch_constraint(os.path.join(slicer.app.temporaryPath, f"{REQUESTER}-constraints.txt"))
    packaging = _slicerPackaging()
    if packaging is not None:
        try:
            packaging.pip_ensure(packaging.load_requirements(requirementsPath), constraints=constraints,
                                 requester=REQUESTER)
        except RuntimeError as error:  # raised when the user declines
            logging.info(str(error))
            return False
        return True
    missing = dependencies.missing_requirements(dependencies.read_requirements(requirementsPath))
    if not missing:
        return True
    message = (f"{REQUESTER} needs {len(missing)} Python package(s) in Slicer's Python environment. "
               "Install them now? This can take a few minutes.")
    if not slicer.util.confirmOkCancelDisplay(message, f"{REQUESTER} - Install Python packages",
                                              detailedText="\n".join(missing)):
        return False
    qt.QApplication.setOverrideCursor(qt.Qt.BusyCursor)
    try:
        slicer.util.pip_install(dependencies.pip_install_arguments(missing, constraints))
    finally:
        qt.QApplication.restoreOverrideCursor()
    return True


def _slicerPackaging() -> ModuleType | None:
    """``slicer.packaging`` when this Slicer has ``pip_ensure`` (5.12 and later), else None."""
    try:
        module = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return module if hasattr(module, "pip_ensure") and hasattr(module, "load_requirements") else None


def clickPointLps(volumeNode, worldRas) -> tuple[float, float, float]:
    """A point placed in Slicer's world (RAS) as the engine reads ``volumeNode`` (LPS, mm, without its parent transform).

    A linear parent transform goes through :func:`TMCASegmenterLib.geometry.click_point_lps` as a
    matrix; a non-linear one is applied by Slicer (``vtkMRMLTransformableNode.TransformPointFromWorld``).
    """
    import numpy as np
    import vtk

    from TMCASegmenterLib import geometry

    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is None:
        return geometry.click_point_lps(worldRas)
    if transformNode.IsTransformToWorldLinear():
        matrix = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformFromWorld(matrix)
        return geometry.click_point_lps(worldRas, slicer.util.arrayFromVTKMatrix(matrix))
    local = [0.0, 0.0, 0.0]
    volumeNode.TransformPointFromWorld([float(v) for v in worldRas], local)
    return geometry.click_point_lps(np.asarray(local))
