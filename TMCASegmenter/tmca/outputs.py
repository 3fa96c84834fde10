"""Output paths, checked before any work: the right kind of name, writable, never an input, never each other.

A segmentation written over its own scan, or a probability map written over the segmentation, is
refused with one line (exit 2) before the model is even loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tmca.atomic import check_writable
from tmca.errors import TMCAError
from tmca.formats import detached_data_files, has_suffix, strip_suffix

_DATA_FILE_SUFFIX = {".nhdr": ".raw.gz", ".mhd": ".zraw"}  # what SimpleITK writes beside a compressed header


def check_output_name(path: Path | None, suffixes: Sequence[str], what: str) -> None:
    """Refuse an output whose name does not end with one of ``suffixes``, or that cannot be written."""
    if path is None:
        return
    if not has_suffix(path, tuple(suffixes)):
        raise TMCAError(f"{what} {path} must end with {' or '.join(suffixes)}")
    check_writable(path)


def files_written(path: Path) -> list[Path]:
    """The files writing ``path`` creates: the path itself, and a detached header's data file."""
    extra = next((suffix for header, suffix in _DATA_FILE_SUFFIX.items() if has_suffix(path, (header,))), None)
    return [path] if extra is None else [path, path.with_name(strip_suffix(path.name) + extra)]


def check_outputs_apart(source: Path, outputs: Mapping[str, Path | None], other_inputs: Sequence[Path | None] = ()) -> None:
    """Refuse outputs that would overwrite an input or each other.

    ``source`` is the input image file or DICOM folder; ``outputs`` maps a description ("output",
    "probability map") to a path (None: not asked for); ``other_inputs`` are further files read
    (a report file). Refused: an output that is an input file (or a detached header's data file),
    a file inside the input folder, or the same file as another output.
    """
    inputs = [source, *detached_data_files(source)] if source.is_file() else []
    inputs += [path for path in other_inputs if path is not None]
    claimed: list[tuple[Path, str]] = []
    for what, path in outputs.items():
        if path is None:
            continue
        for written in files_written(path):
            if source.is_dir() and _inside(written, source):
                raise TMCAError(f"{what} {path} lies inside the input DICOM folder {source}; write it outside the folder")
            item = next((item for item in inputs if _same_file(written, item)), None)
            if item is not None:
                raise TMCAError(f"{what} {path} would overwrite the input {item}; choose another output path")
            other = next((name for earlier, name in claimed if _same_file(written, earlier)), None)
            if other is not None:
                raise TMCAError(f"the {what} and the {other} are the same file ({written}); give each output its own path")
            claimed.append((written, what))


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file (links and ``..`` resolved; case-folding file systems too)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())
