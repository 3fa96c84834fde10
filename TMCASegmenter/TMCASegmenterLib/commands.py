"""The engine's command lines and the process environment they run in."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Union

from tmca.choices import DEVICES
from tmca.errors import TMCAError

PathLike = Union[str, os.PathLike]


def python_executable(which: Callable[[str], str | None] = shutil.which, search_dirs: Iterable[PathLike] = ()) -> str:
    """The ``PythonSlicer`` that runs the engine: on PATH (Slicer's launcher puts it there) or in ``search_dirs``.

    Inside Slicer, ``sys.executable`` is the application, not a Python interpreter, so there is no fallback.
    """
    found = which("PythonSlicer")
    if found:
        return found
    names = ("PythonSlicer.exe", "PythonSlicer") if os.name == "nt" else ("PythonSlicer",)
    for folder in search_dirs:
        for name in names:
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    looked = ", ".join(str(Path(folder)) for folder in search_dirs) or "no other folder"
    raise TMCAError(f"PythonSlicer, the Python interpreter that ships with 3D Slicer, was not found on PATH or in {looked}; "
                    "the engine cannot start. Reinstall 3D Slicer or start it with its own launcher.")


def child_environment(module_dir: PathLike, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an engine process: ``module_dir`` (the folder holding ``tmca``) first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    paths = [str(module_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive while the engine runs
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _engine_options(model: PathLike | None, device: str, threshold: float) -> list[str]:
    if device not in DEVICES:
        raise TMCAError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if not 0.0 < threshold < 1.0:
        raise TMCAError(f"threshold {threshold:g} must be between 0 and 1 (exclusive); move the threshold slider")
    options: list[str] = []
    if model:
        if not Path(model).is_dir():
            raise TMCAError(f"model folder {model} does not exist; choose a trained model folder or the bundled demo")
        options += ["--model", str(model)]
    return options + ["--device", device, "--threshold", f"{threshold:g}"]


def segment_command(python: str, input_path: PathLike, report_file: PathLike, output: PathLike,
                    probability: PathLike | None = None, model: PathLike | None = None, device: str = "auto",
                    threshold: float = 0.5, split_findings: bool = True) -> list[str]:
    """Command line for ``tmca segment`` with JSON progress (``model`` None or "" = bundled demo)."""
    args = [python, "-m", "tmca.cli", "segment", str(input_path), "--report-file", str(report_file), "--output", str(output)]
    if probability:
        args += ["--probability", str(probability)]
    args += _engine_options(model, device, threshold) + ["--progress", "json"]
    if not split_findings:
        args.append("--no-split-findings")
    return args


def batch_command(python: str, study_dir: PathLike, output_dir: PathLike, reports_csv: PathLike | None = None,
                  model: PathLike | None = None, device: str = "auto", threshold: float = 0.5,
                  probability: bool = False) -> list[str]:
    """Command line for ``tmca batch`` with JSON progress."""
    args = [python, "-m", "tmca.cli", "batch", str(study_dir), "--output", str(output_dir)]
    if reports_csv:
        args += ["--reports", str(reports_csv)]
    args += _engine_options(model, device, threshold)
    if probability:
        args.append("--probability")
    return args + ["--progress", "json"]


def synth_command(python: str, output: PathLike, cases: int = 1, modality: str = "ct", dims: int = 3, seed: int = 3) -> list[str]:
    """Command line for ``tmca synth`` (synthetic cases for the module's self-test)."""
    return [python, "-m", "tmca.cli", "synth", "--output", str(output), "--cases", str(cases),
            "--modality", modality, "--dims", str(dims), "--seed", str(seed)]


def finetune_command(python: str, base_model: PathLike | None, site_dataset: PathLike, output: PathLike,
                     minutes: float = 5.0, device: str = "auto") -> list[str]:
    """Command line for ``tmca finetune`` with JSON progress (``base_model`` None or "" = bundled demo).

    Exit 0: ``output`` holds the promoted model; exit 1: it was worse (``output/finetune.json`` says by how much).
    """
    if device not in DEVICES:
        raise TMCAError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if not minutes > 0:
        raise TMCAError(f"the fine-tuning time limit must be positive, not {minutes:g} minutes")
    args = [python, "-m", "tmca.cli", "finetune"]
    if base_model:
        if not Path(base_model).is_dir():
            raise TMCAError(f"model folder {base_model} does not exist; choose a trained model folder or the bundled demo")
        args += ["--model", str(base_model)]
    return args + ["--data", str(site_dataset), "--output", str(output), "--minutes", f"{minutes:g}",
                   "--device", device, "--progress", "json"]
