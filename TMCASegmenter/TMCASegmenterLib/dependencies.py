"""The engine's Python packages: what is missing, and the constraint that keeps the installed torch."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Union

PathLike = Union[str, os.PathLike]
VersionLookup = Callable[[str], str]


def read_requirements(path: PathLike) -> list[str]:
    """Requirement lines of a requirements.txt (comments, blanks and pip options skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def missing_requirements(requirements: Iterable[str], installed_version: VersionLookup = metadata.version) -> list[str]:
    """The requirements that are not installed at an acceptable version.

    ``installed_version(name)`` returns the installed version or raises
    ``importlib.metadata.PackageNotFoundError``.
    """
    from packaging.requirements import Requirement

    missing = []
    for line in requirements:
        requirement = Requirement(line)
        try:
            version = installed_version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def missing_engine_packages(requirements_path: PathLike, installed_version: VersionLookup = metadata.version,
                            torch_present: Callable[[], bool] = lambda: importlib.util.find_spec("torch") is not None) -> list[str]:
    """Everything the engine needs that this Python lacks: torch first, then the requirements file's lines."""
    missing = missing_requirements(read_requirements(requirements_path), installed_version)
    return missing if torch_present() else ["torch"] + missing


def write_torch_constraint(path: PathLike, installed_version: VersionLookup = metadata.version) -> Path | None:
    """Write a pip constraints file that pins the installed torch; None when torch is not installed.

    monai and transformers depend on torch, so without it pip may replace the build that the
    PyTorch extension chose for this machine's GPU.
    """
    try:
        version = installed_version("torch")
    except metadata.PackageNotFoundError:
        return None
    path = Path(path)
    path.write_text(f"torch=={version}\n", encoding="utf-8")
    return path


def pip_install_arguments(requirements: Iterable[str], constraints: PathLike | None) -> list[str]:
    """Arguments for ``slicer.util.pip_install``: the requirements, then ``-c constraints`` when given."""
    args = list(requirements)
    return args + ["-c", str(constraints)] if constraints else args
