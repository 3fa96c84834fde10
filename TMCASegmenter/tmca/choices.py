"""The values a user chooses among: devices, backends, modalities and slicing planes, each validated once.

The command line (argparse ``choices`` and ``type``), the Python API (:class:`tmca.inference.Segmenter`,
:func:`tmca.batch.run_batch`, :mod:`tmca.synth`), the model config and the Slicer module all use
these tuples and checkers, so their spellings cannot drift. Imports nothing heavy (no torch).
"""

from __future__ import annotations

from tmca.errors import TMCAError

DEVICES = ("auto", "cpu", "cuda", "mps")
"""Compute devices; ``cuda:N`` picks one GPU. ``auto``: CUDA, then Apple MPS, then the CPU."""

MODALITIES = ("CT", "MR", "US", "XR", "OT")
"""Modality codes; ``OT`` means other or unknown (then the model's training modality is assumed)."""

SYNTH_MODALITIES = ("CT", "MR", "US", "XR")
"""Modalities :mod:`tmca.synth` can generate."""

DICOM_MODALITY = {
    **{code: code for code in ("CT", "MR", "US", "OT")},
    # Projection X-ray: computed/digital radiography, mammography, radiographic imaging,
    # angiography, fluoroscopy, intra-oral and panoramic X-ray.
    **dict.fromkeys(("XR", "CR", "DX", "MG", "RG", "XA", "RF", "IO", "PX"), "XR"),
}
"""DICOM Modality (0008,0060) codes -> :data:`MODALITIES`."""

BACKENDS = ("auto", "eager", "onnx", "openvino")
"""Inference backends (:mod:`tmca.backends`): ``eager`` PyTorch, ``onnx`` ONNX Runtime and ``openvino``
OpenVINO (CPU, 2D models), ``auto`` the fastest installed one where it applies, else eager."""

DICOM_SEG_TYPES = ("binary", "labelmap")
"""DICOM SEG types (:mod:`tmca.dicomseg`): BINARY for every reader, LABELMAP (compact) for findings that do not overlap."""

PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
"""Slicing plane -> the numpy (z, y, x) axis its 2D slices walk along."""
PLANES = tuple(PLANE_AXIS)


def check_device(name: str | None) -> str:
    """``name`` lower-cased (None or "" -> "auto"); one of :data:`DEVICES` or ``cuda:N``, else TMCAError."""
    device = (name or "auto").strip().lower()
    index = device.partition(":")[2]
    if device in DEVICES or (device.startswith("cuda:") and index.isdigit()):
        return device
    raise TMCAError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} (or cuda:N for GPU N)")


def check_backend(name: str) -> str:
    """``name`` lower-cased, one of :data:`BACKENDS`, else TMCAError."""
    backend = str(name).strip().lower()
    if backend not in BACKENDS:
        raise TMCAError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def check_modality(name: str, allowed: tuple[str, ...] = MODALITIES) -> str:
    """The modality code of ``name`` (any case; DICOM codes such as ``CR`` map to ``XR``), one of ``allowed``."""
    code = DICOM_MODALITY.get(str(name).strip().upper(), "")
    if code not in allowed:
        raise TMCAError(f"unknown modality {name!r}; use one of {', '.join(allowed)}")
    return code


def check_plane(name: str) -> str:
    """``name`` lower-cased, one of :data:`PLANES`, else TMCAError."""
    plane = str(name).strip().lower()
    if plane not in PLANE_AXIS:
        raise TMCAError(f"unknown plane {name!r}; choose one of {', '.join(PLANES)}")
    return plane
