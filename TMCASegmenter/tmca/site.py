"""A site dataset: corrected findings saved as (image, finding sentence, mask) training examples.

The folder is the engine's ``csv`` dataset format, so ``tmca train --format csv`` and
``tmca evaluate --format csv`` read it as is::

    SITE/manifest.csv          image,mask,report,split,case
    SITE/images/<hash>.nii.gz  one per scan, named by a hash of its voxels and geometry
    SITE/masks/<case>-<hash>.nii.gz  one per (scan, finding sentence)
    SITE/README.md             what the folder holds (written once)

Images are written as NIfTI, so no DICOM header (names, dates, identifiers) reaches the folder.
Each case is put in Train or Val once, by a stable hash of its id, so validation never leaks into
training. Saving the same finding of the same case again replaces its mask. ``manifest.csv`` is
rewritten atomically under a lock file, so a crash or two Slicer instances saving at once never
leave it corrupt or lose a row.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tmca.atomic import atomic_path, check_writable, write_text_atomic
from tmca.errors import TMCAError, reason
from tmca.findings import tidy_text

MANIFEST = "manifest.csv"
COLUMNS = ("image", "mask", "report", "split", "case")
VAL_FRACTION = 0.2
MIN_VAL_EXAMPLES = 2
LOCK_TIMEOUT_SECONDS = 30.0
README_TEXT = """# TMCASegmenter site dataset

Corrected segmentations saved from TMCASegmenter, one row per (scan, finding) in `manifest.csv`
(columns image, mask, report, split, case): the engine's `csv` dataset format, so
`tmca train --data THIS_FOLDER --format csv` and `tmca evaluate` read it as is.

- `images/`: the scans, as NIfTI, named by a hash of their voxels and geometry. Only voxels and
  geometry are stored: no DICOM header, so no patient names, dates or identifiers.
- `masks/`: one binary mask per finding, on its scan's grid.
- `report`: the finding's sentence as the radiologist's report stated it. Check that report
  sentences hold no identifying text before sharing this folder.
- `split`: Train or Val, fixed per case by a hash of the case id.

This folder stays on this computer; nothing is uploaded.
"""


@dataclass(frozen=True)
class SiteExample:
    """One saved example: paths relative to the dataset folder."""

    image: str
    mask: str
    report: str
    split: str
    case: str


def add_example(
    dataset: str | os.PathLike,
    image: sitk.Image | str | os.PathLike,
    report: str,
    mask: np.ndarray | sitk.Image,
    case: str | None = None,
    split: str | None = None,
) -> SiteExample:
    """Save ``mask`` of the finding ``report`` on ``image`` into the site dataset ``dataset``.

    image: a scalar 3D SimpleITK image or an image file. mask: a (z, y, x) array or an image on
    ``image``'s grid; any non-zero voxel is the finding. case: the scan's id (default: the image
    hash). split: "Train" or "Val" (default: the case's existing split, else a stable hash).
    Returns the saved row. Raises :class:`TMCAError` for an empty or misplaced mask, an empty
    report, an unwritable folder or a damaged manifest; nothing is changed then.
    """
    folder = Path(dataset)
    sentence = tidy_text(report or "")
    if not sentence:
        raise TMCAError("the finding has no sentence; type the finding's report text before saving the correction")
    volume = _as_image(image)
    labels = _mask_array(mask, volume)
    image_hash = _image_hash(volume)
    case_id = (case or "").strip() or image_hash
    _prepare_folder(folder)
    with _locked(folder):
        rows = read_manifest(folder)
        chosen = _split_of(case_id, split, rows)
        image_name = f"images/{image_hash}.nii.gz"
        mask_name = f"masks/{_safe(case_id)}-{_text_hash(sentence)}.nii.gz"
        if not (folder / image_name).is_file():
            _write_image(volume, folder / image_name)
        mask_image = sitk.GetImageFromArray(labels)
        mask_image.CopyInformation(volume)
        _write_image(mask_image, folder / mask_name)
        example = SiteExample(image_name, mask_name, sentence, chosen, case_id)
        kept = [row for row in rows if not (row.case == case_id and row.report == sentence)]
        _write_manifest(folder, kept + [example])
    return example


def read_manifest(dataset: str | os.PathLike) -> list[SiteExample]:
    """The rows of ``dataset``'s manifest (none for a new folder); TMCAError for a damaged file."""
    path = Path(dataset) / MANIFEST
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TMCAError(f"cannot read {path}: {error}; restore it from a backup or move it away") from None
    records = list(csv.reader(io.StringIO(text)))
    if not records or tuple(h.strip().lower() for h in records[0]) != COLUMNS:
        raise TMCAError(f"{path} is not a site manifest (header {', '.join(COLUMNS)}); choose another site dataset folder")
    rows = []
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(COLUMNS) or record[3] not in ("Train", "Val") or not all(c.strip() for c in record):
            raise TMCAError(f"{path} row {number} is damaged ({record!r}); fix or delete that row, nothing was changed")
        rows.append(SiteExample(*record))
    return rows


def split_counts(dataset: str | os.PathLike) -> dict[str, int]:
    """How many examples each split of ``dataset`` holds."""
    counts = {"Train": 0, "Val": 0}
    for row in read_manifest(dataset):
        counts[row.split] += 1
    return counts


def check_trainable(dataset: str | os.PathLike, min_val: int = MIN_VAL_EXAMPLES) -> dict[str, int]:
    """Split counts, or TMCAError saying how many more examples a Train and a Val split need."""
    counts = split_counts(dataset)
    if counts["Train"] >= 1 and counts["Val"] >= min_val:
        return counts
    missing = []
    if counts["Train"] < 1:
        missing.append("1 more Train example")
    if counts["Val"] < min_val:
        missing.append(f"{min_val - counts['Val']} more Val example(s)")
    raise TMCAError(
        f"site dataset {dataset} is too small to fine-tune ({counts['Train']} Train, {counts['Val']} Val): it needs "
        f"{' and '.join(missing)}; save more corrections (cases are assigned to Val by a hash, about 1 in 5)"
    )


def _as_image(image: sitk.Image | str | os.PathLike) -> sitk.Image:
    if not isinstance(image, sitk.Image):
        from tmca.imageio import load_image

        image = load_image(image).image
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise TMCAError("the scan must be a scalar 3D image; convert colour or 2D images before saving a correction")
    return image


def _mask_array(mask: np.ndarray | sitk.Image, image: sitk.Image) -> np.ndarray:
    if isinstance(mask, sitk.Image):
        if mask.GetSize() != image.GetSize() or not np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3):
            raise TMCAError("the corrected mask is on another grid than the scan; resample it onto the scan before saving")
        mask = sitk.GetArrayFromImage(mask)
    array = np.asarray(mask)
    expected = tuple(reversed(image.GetSize()))
    if array.shape != expected:
        raise TMCAError(f"the corrected mask has shape {array.shape} but the scan is (z, y, x) = {expected}; "
                        "resample it onto the scan before saving")
    labels = (array != 0).astype(np.uint8)
    if not labels.any():
        raise TMCAError("the corrected segment is empty; draw the finding (or delete the finding) before saving")
    return labels


def _image_hash(image: sitk.Image) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    geometry = (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetPixelIDTypeAsString())
    digest.update(repr(tuple(np.round(np.asarray(v, dtype=float), 6).tolist() if not isinstance(v, str) else v
                             for v in geometry)).encode())
    return digest.hexdigest()[:16]


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _safe(case_id: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)
    return cleaned[:64] or "case"


def _split_of(case_id: str, requested: str | None, rows: list[SiteExample]) -> str:
    existing = next((row.split for row in rows if row.case == case_id), None)
    if requested:
        name = {"train": "Train", "val": "Val", "validation": "Val"}.get(requested.strip().lower())
        if name is None:
            raise TMCAError(f"unknown split {requested!r}; use Train or Val")
        if existing and existing != name:
            raise TMCAError(f"case {case_id} is already in {existing}; a case stays in one split so validation never leaks")
        return name
    if existing:
        return existing
    return "Val" if zlib.crc32(case_id.encode("utf-8")) / 2**32 < VAL_FRACTION else "Train"


def _prepare_folder(folder: Path) -> None:
    try:
        for sub in (folder, folder / "images", folder / "masks"):
            sub.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TMCAError(f"cannot create the site dataset {folder}: {error.strerror or error}; choose another folder") from None
    check_writable(folder / MANIFEST)
    for sub in ("images", "masks"):
        check_writable(folder / sub / "x")
    if not (folder / "README.md").exists():
        write_text_atomic(folder / "README.md", README_TEXT)


def _write_image(image: sitk.Image, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
    except RuntimeError as error:
        raise TMCAError(f"cannot write {path}: {reason(error)}") from None


def _write_manifest(folder: Path, rows: list[SiteExample]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((row.image, row.mask, row.report, row.split, row.case) for row in rows)
    write_text_atomic(folder / MANIFEST, buffer.getvalue())


@contextlib.contextmanager
def _locked(folder: Path, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively (an OS file lock: released even if the holder crashes)."""
    handle = open(folder / ".lock", "a+b")
    try:
        deadline = time.monotonic() + timeout
        while not _try_lock(handle):
            if time.monotonic() > deadline:
                raise TMCAError(f"the site dataset {folder} is busy (another save holds its lock); try again")
            time.sleep(0.05)
        try:
            yield
        finally:
            _unlock(handle)
    finally:
        handle.close()


def _try_lock(handle) -> bool:
    if os.name == "nt":
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(handle) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
