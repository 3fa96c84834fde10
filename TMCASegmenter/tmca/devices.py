"""Compute device selection and a description of what this machine offers."""

from __future__ import annotations

import torch

from tmca.choices import check_device
from tmca.errors import TMCAError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` (:data:`tmca.choices.DEVICES`) into a usable :class:`torch.device`."""
    name = check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TMCAError(f"device {name!r} requested but CUDA is not available on this machine; use --device cpu or auto")
        return torch.device(name)
    if not _mps_available():
        raise TMCAError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto")
    return torch.device("mps")


def device_report() -> list[dict]:
    """Every device torch can use here, with name and memory for CUDA devices."""
    devices: list[dict] = [{"type": "cpu", "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"type": "cuda", "index": index, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    if _mps_available():
        devices.append({"type": "mps"})
    return devices
