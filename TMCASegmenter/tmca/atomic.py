"""Atomic file output: write to a temporary file in the target folder, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from tmca.errors import TMCAError


def check_writable(path: str | os.PathLike) -> None:
    """Raise TMCAError unless ``path`` can be created or replaced (its folder exists and is writable)."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise TMCAError(f"cannot write {target}: folder {folder} does not exist; create it or choose another output path")
    if target.is_dir():
        raise TMCAError(f"cannot write {target}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise TMCAError(f"cannot write {target}: folder {folder} is not writable; choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched, so a
    reader never sees a half-written file. ``suffix`` defaults to the full suffix of
    ``path`` (``.seg.nrrd`` stays ``.seg.nrrd``) so writers that pick a format by
    extension still work.
    """
    target = Path(path)
    check_writable(target)
    folder = target.parent
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=folder)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get the usual permissions
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_path_with_companions(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``path``'s name inside a fresh hidden folder beside ``path``, for writers that put
    companion files next to their output (a ``.nhdr`` header and its ``.raw.gz`` data file).

    On success every file written there is moved beside ``path`` (the companions first, ``path``
    last, so a reader never finds a header without its data); on any exception nothing is moved
    and the folder is removed.
    """
    target = Path(path)
    check_writable(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        yield staging / target.name
        give_default_permissions(staging)
        companions = sorted(p for p in staging.iterdir() if p.name != target.name)
        for written in (*companions, staging / target.name):
            os.replace(written, target.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_default_permissions(folder: Path) -> None:
    """``folder`` and the files in it get the permissions a plain ``mkdir``/``open`` would give."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")

