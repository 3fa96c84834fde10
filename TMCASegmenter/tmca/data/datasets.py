"""Datasets of (image, mask, report) samples, and a torch Dataset of 2D training slices.

Formats understood by :func:`load_samples`:

- ``lvit`` (LViT): ``ROOT/{Train,Val,Test}_Folder/{img,labelcol}/`` and the table
  ``{Split}_text.xlsx`` (or ``.csv``) with columns ``Image`` and ``Description``, inside the split
  folder as LViT releases it (``ROOT/Train_Folder/Train_text.xlsx``), else in ``ROOT``. Files are
  matched by stem, ignoring the extension and a ``mask_`` prefix (real releases keep ``img/X.tif``
  beside ``labelcol/X.png`` and name it ``X.png`` in the sheet, and some masks ``mask_<stem>``).
- ``qata`` (GuideDecoder's QaTa-COV19): ``ROOT/{Train,Test}/{Images,GTs}/`` and a CSV
  (``ROOT/{Split}_text.csv``, else a CSV in ROOT or one folder below whose name contains the split)
  with ``Image`` = the mask's file name (the image is that name without ``mask_``) and
  ``Description``. ``Val`` is the last 20 % of the training CSV's rows, ``Train`` the first 80 %.
- ``csv``: a manifest (``ROOT`` is the CSV file, or a folder holding ``manifest.csv``) with columns
  ``image``, ``mask``, ``report`` and optional ``split`` and ``case``; paths are relative to the
  CSV's folder, 2D files or 3D volumes. ``report`` is the text, or a path to a ``.txt`` file
  holding it. Rows are selected by ``split`` (``"all"``: every row); without a ``split`` column a
  row's split follows from a hash of its case id (70/10/20, stable across runs).

Bad rows (a missing file, an unreadable image, a mask of another size, an empty report) are
skipped, logged with ``logging.warning`` (file, row number, reason) and returned in
:attr:`LoadResult.skipped`. Row numbers are spreadsheet rows: the header is row 1. Completely
empty rows are ignored.
"""

from __future__ import annotations

import csv
import io
import logging
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image

from tmca.choices import PLANE_AXIS, check_plane
from tmca.config import LARGE_IMAGE_MODES
from tmca.data.augment import Augmentation, native_crop, plan_augmentation
from tmca.errors import TMCAError, reason
from tmca.formats import DATASET_FORMATS, is_raster, strip_suffix
from tmca.imageio import is_colour_file, load_image
from tmca.preprocess import model_input, preprocess_channels
from tmca.textio import read_text_file

log = logging.getLogger(__name__)

SPLITS = ("Train", "Val", "Test")
QATA_VAL_FRACTION = 0.2
HASH_SPLIT_FRACTIONS = (0.7, 0.1)  # Train, Val; Test takes the rest (csv without a split column)
TARGET_SLICE_PROBABILITY = 0.8
HARD_NEGATIVE_PROBABILITY = 0.5  # of target-free picks, when another report of the scan has a target there
VOLUME_CACHE_BYTES = 2 * 1024**3  # per process (each DataLoader worker has its own cache)
MASK_PREFIX = "mask_"
_SPLIT_ALIASES = {
    "train": "Train",
    "training": "Train",
    "val": "Val",
    "valid": "Val",
    "validation": "Val",
    "test": "Test",
    "testing": "Test",
}


@dataclass
class Sample:
    """One training or evaluation sample: an image file, its mask file and its report."""

    image: Path
    mask: Path
    report: str
    case_id: str
    split: str


@dataclass
class SkippedRow:
    """A row that :func:`load_samples` left out, and why."""

    source: Path
    row: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source} row {self.row}: {self.reason}"


@dataclass
class LoadResult:
    """What :func:`load_samples` found: usable samples, and the rows it skipped."""

    samples: list[Sample]
    skipped: list[SkippedRow] = field(default_factory=list)


@dataclass
class _Row:
    """A table row resolved to files; ``problem`` says why it cannot be used, if it cannot."""

    number: int
    image: Path | None
    mask: Path | None
    report: str
    case_id: str
    split: str
    problem: str | None = None


def load_samples(root: str | Path, fmt: str, split: str) -> LoadResult:
    """Read the ``split`` ("train", "val", "test"; ``csv`` also "all") of the dataset at ``root``.

    ``fmt`` is ``"lvit"``, ``"qata"`` or ``"csv"`` (see the module docstring). Raises
    :class:`TMCAError` when the layout itself is wrong (missing folder or table, missing columns);
    bad rows are skipped and reported instead.
    """
    root = Path(root)
    if fmt not in DATASET_FORMATS:
        raise TMCAError(f"unknown dataset format {fmt!r}; use one of {', '.join(DATASET_FORMATS)}")
    if not root.exists():
        raise TMCAError(f"dataset not found: {root}; check the path")
    split_name = _split_name(split, allow_all=fmt == "csv")
    readers = {"lvit": _lvit_rows, "qata": _qata_rows, "csv": _csv_rows}
    source, rows = readers[fmt](root, split_name)
    return _validated(source, rows)


def load_split(root: str | Path, fmt: str, split: str) -> list[Sample]:
    """The usable samples of one split (:func:`load_samples`; skipped rows are logged there)."""
    return load_samples(root, fmt, split).samples


def _split_name(split: str, allow_all: bool) -> str:
    name = "all" if allow_all and split.strip().lower() == "all" else _SPLIT_ALIASES.get(split.strip().lower())
    if name is None:
        choices = "train, val, test" + (" or all" if allow_all else "")
        raise TMCAError(f"unknown split {split!r}; use {choices}")
    return name


# ---------------------------------------------------------------------------------------------
# Tables


def _read_table(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(row number, {lower-case header: cell text}) for each non-empty row of a .csv or .xlsx."""
    if path.suffix.lower() == ".xlsx":
        records = _xlsx_records(path)
    else:
        records = list(csv.reader(io.StringIO(read_text_file(path, "table"), newline="")))
    if not records:
        raise TMCAError(f"{path} is empty; it needs a header row and one row per sample")
    headers = [str(h or "").strip().lower() for h in records[0]]
    rows = []
    for number, record in enumerate(records[1:], start=2):
        cells = ["" if value is None else str(value).strip() for value in record]
        if any(cells):
            rows.append((number, dict(zip(headers, cells))))
    return rows


def _xlsx_records(path: Path) -> list[list[Any]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several types for damaged files
        raise TMCAError(f"cannot read {path}: {exc}; is it a valid .xlsx workbook?") from exc
    try:
        return [list(row) for row in workbook.worksheets[0].iter_rows(values_only=True)]
    finally:
        workbook.close()


def _require_columns(path: Path, rows: list[tuple[int, dict[str, str]]], columns: Sequence[str]) -> None:
    present = set(rows[0][1]) if rows else set()
    missing = [c for c in columns if c not in present]
    if rows and missing:
        raise TMCAError(f"{path} lacks the column(s) {', '.join(missing)}; it has {', '.join(sorted(present)) or 'none'}")


def _child(folder: Path, *names: str) -> Path | None:
    """The entry of ``folder`` whose name matches one of ``names`` (case-insensitive), or None."""
    if not folder.is_dir():
        return None
    entries = {entry.name.lower(): entry for entry in folder.iterdir()}
    return next((entries[n.lower()] for n in names if n.lower() in entries), None)


def _need_child(folder: Path, *names: str) -> Path:
    found = _child(folder, *names)
    if found is None:
        raise TMCAError(f"{folder} has no {' or '.join(names)}; is this the right dataset folder and format?")
    return found


# ---------------------------------------------------------------------------------------------
# File matching by stem


def file_key(name: str) -> str:
    """Matching key of a file name: the stem (``.nii.gz`` aware), lower-case, without ``mask_``."""
    stem = strip_suffix(Path(name).name).lower()
    return stem[len(MASK_PREFIX) :] if stem.startswith(MASK_PREFIX) else stem


def _index_folder(folder: Path) -> dict[str, Path]:
    """{file_key: path} for the image files in ``folder`` (the first by name wins a tie)."""
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            index.setdefault(file_key(path.name), path)
    return index


def _matched_row(
    number: int, name: str, report: str, split: str, images: dict[str, Path], masks: dict[str, Path], folders: tuple[Path, Path]
) -> _Row:
    key = file_key(name)
    image, mask = images.get(key), masks.get(key)
    problem = None
    if not key:
        problem = "no file name in the Image column"
    elif image is None:
        problem = f"no image named {key}.* (or {MASK_PREFIX}{key}.*) in {folders[0]}"
    elif mask is None:
        problem = f"no mask named {key}.* or {MASK_PREFIX}{key}.* in {folders[1]}"
    return _Row(number, image, mask, report, key, split, problem)


# ---------------------------------------------------------------------------------------------
# Formats


def _lvit_rows(root: Path, split: str) -> tuple[Path, list[_Row]]:
    folder = _need_child(root, f"{split}_Folder")
    image_dir, mask_dir = _need_child(folder, "img"), _need_child(folder, "labelcol")
    names = (f"{split}_text.xlsx", f"{split}_text.csv")
    table = _child(folder, *names) or _child(root, *names)
    if table is None:
        raise TMCAError(
            f"no {split}_text.xlsx or {split}_text.csv (columns Image, Description) in {folder} or {root}; "
            "put the split's table inside its folder, as LViT releases it"
        )
    rows = _read_table(table)
    _require_columns(table, rows, ("image", "description"))
    images, masks = _index_folder(image_dir), _index_folder(mask_dir)
    return table, [_matched_row(n, r["image"], r["description"], split, images, masks, (image_dir, mask_dir)) for n, r in rows]


def _qata_rows(root: Path, split: str) -> tuple[Path, list[_Row]]:
    folder_split = "Train" if split == "Val" else split
    folder = _need_child(root, folder_split, f"{folder_split} Set")
    image_dir = _need_child(folder, "Images", "Imgs", "img")
    mask_dir = _need_child(folder, "GTs", "Ground-truths", "masks", "labelcol")
    table = _qata_table(root, folder_split)
    rows = _read_table(table)
    _require_columns(table, rows, ("image", "description"))
    if split != "Test":
        cut = round(len(rows) * (1.0 - QATA_VAL_FRACTION))
        rows = rows[cut:] if split == "Val" else rows[:cut]
    images, masks = _index_folder(image_dir), _index_folder(mask_dir)
    return table, [_matched_row(n, r["image"], r["description"], split, images, masks, (image_dir, mask_dir)) for n, r in rows]


def _qata_table(root: Path, split: str) -> Path:
    """``ROOT/{split}_text.csv``, else the shortest-named CSV in ROOT (or one level below) naming the split."""
    exact = _child(root, f"{split}_text.csv")
    if exact is not None:
        return exact
    candidates = [p for p in (*root.glob("*.csv"), *root.glob("*/*.csv")) if split.lower() in p.stem.lower()]
    if not candidates:
        raise TMCAError(f"{root} has no {split}_text.csv (or another CSV named after {split}) with columns Image, Description")
    return min(candidates, key=lambda p: (len(p.name), str(p)))


def _csv_rows(root: Path, split: str) -> tuple[Path, list[_Row]]:
    table = root if root.is_file() else root / "manifest.csv"
    if not table.is_file():
        raise TMCAError(f"no manifest at {table}; give the CSV file or a folder with manifest.csv (columns image, mask, report)")
    rows = _read_table(table)
    _require_columns(table, rows, ("image", "mask", "report"))
    folder = table.parent
    selected = []
    for number, record in rows:
        image, mask = folder / record["image"], folder / record["mask"]
        case_id = record.get("case") or file_key(image.name)
        row_split = _row_split(record.get("split", ""), case_id)
        if split != "all" and row_split != split:
            continue
        report, problem = _report_text(folder, record["report"])
        selected.append(_Row(number, image, mask, report, case_id, row_split, problem))
    return table, selected


def _row_split(value: str, case_id: str) -> str:
    """The split a csv row belongs to: its ``split`` cell, else a stable hash of its case id."""
    if value:
        return _SPLIT_ALIASES.get(value.strip().lower(), value.strip())
    fraction = zlib.crc32(case_id.encode("utf-8")) / 2**32
    train, val = HASH_SPLIT_FRACTIONS
    return "Train" if fraction < train else "Val" if fraction < train + val else "Test"


def _report_text(folder: Path, value: str) -> tuple[str, str | None]:
    """(report text, problem): ``value`` itself, or the content of the .txt file it names."""
    if not value.lower().endswith(".txt"):
        return value, None
    path = folder / value
    try:
        return read_text_file(path, "report file").strip(), None
    except TMCAError as error:
        return "", str(error)


# ---------------------------------------------------------------------------------------------
# Validation


def _validated(source: Path, rows: list[_Row]) -> LoadResult:
    result = LoadResult([])
    for row in rows:
        problem = row.problem or _file_problem(row)
        if problem:
            skipped = SkippedRow(source, row.number, problem)
            log.warning("%s; skipped", skipped)
            result.skipped.append(skipped)
        else:
            assert row.image is not None and row.mask is not None
            result.samples.append(Sample(row.image, row.mask, row.report, row.case_id, row.split))
    return result


def _file_problem(row: _Row) -> str | None:
    """Why the row's files cannot be used (missing, unreadable, sizes differ, no text), or None."""
    if not row.report.strip():
        return "empty report text"
    for kind, path in (("image", row.image), ("mask", row.mask)):
        if path is None or not path.is_file():
            return f"{kind} not found: {path}"
    sizes = {}
    for kind, path in (("image", row.image), ("mask", row.mask)):
        try:
            sizes[kind] = image_shape(path)
        except (OSError, RuntimeError, ValueError) as exc:
            return f"unreadable {kind} {path}: {reason(exc)}"
    image_size, mask_size = sizes["image"], sizes["mask"]
    if image_size != mask_size:
        return f"mask size {_size_text(mask_size)} differs from image size {_size_text(image_size)}"
    return None


def image_shape(path: Path) -> tuple[int, ...]:
    """Array shape (z, y, x) or (y, x) of an image file from its header, size-1 axes dropped."""
    if is_raster(path):
        with Image.open(path) as picture:
            width, height = picture.size
        return (height, width)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(n for n in reversed(reader.GetSize()) if n != 1)


def _size_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in reversed(shape))


# ---------------------------------------------------------------------------------------------
# Reading pixels


def read_mask(path: Path) -> np.ndarray:
    """Bool (D, H, W) mask (D == 1 for a 2D file): any non-zero value (0/1, 0/255, colour, palette index) is inside."""
    if is_raster(path):
        with Image.open(path) as picture:
            pixels = np.asarray(picture)
        if pixels.ndim == 3:  # colour or grey+alpha: any colour channel, never the alpha channel
            pixels = pixels[..., : 3 if pixels.shape[-1] >= 3 else 1].max(axis=-1)
        return (pixels > 0)[None]
    image = sitk.ReadImage(str(path))
    inside = sitk.GetArrayFromImage(image) > 0
    if image.GetNumberOfComponentsPerPixel() > 1:
        inside = inside.any(axis=-1)
    return inside if inside.ndim == 3 else inside[None]


def read_image(path: Path, modality: str | None, policy: Mapping[str, Mapping[str, Any]] | None, channels: int = 1) -> np.ndarray:
    """Float32 (C, D, H, W) in [0, 1] with C = ``channels``, prepared as inference prepares it: read by
    :func:`tmca.imageio.load_image`, scaled by :func:`tmca.preprocess.preprocess_channels` (an image
    without a modality of its own is taken as ``modality``, "OT" if None)."""
    return preprocess_channels(load_image(path), modality or "OT", policy, channels)


@dataclass
class ColourSurvey:
    """Whether a dataset's images are colour (:func:`survey_colour`)."""

    files: int  # distinct image files
    colour_files: int  # files that store colour channels (header)
    checked: int  # colour files whose pixels were read
    colour: bool  # some checked file holds colour pixels (not R = G = B everywhere)

    @property
    def in_channels(self) -> int:
        return 3 if self.colour else 1


COLOUR_PIXEL_CHECKS = 16  # colour files read to tell colour pixels from grey stored as RGB


def survey_colour(samples: Sequence[Sample]) -> ColourSurvey:
    """Colour or grey, for choosing a model's ``in_channels``: colour when any image holds colour pixels.

    Every file's header is read; of the files that store colour channels, up to
    COLOUR_PIXEL_CHECKS (spread over the list) are read in full, since grey pictures are often
    saved as RGB. Raises :class:`TMCAError` for an unreadable file.
    """
    files = list(dict.fromkeys(sample.image for sample in samples))
    colour_files = [path for path in files if is_colour_file(path)]
    picks = np.unique(np.linspace(0, len(colour_files) - 1, min(len(colour_files), COLOUR_PIXEL_CHECKS)).round().astype(int))
    checked = 0
    for index in picks:
        checked += 1
        if load_image(colour_files[index]).rgb is not None:
            return ColourSurvey(len(files), len(colour_files), checked, True)
    return ColourSurvey(len(files), len(colour_files), checked, False)


# ---------------------------------------------------------------------------------------------
# Training slices


class SliceDataset(torch.utils.data.Dataset):
    """2D training items from samples: ``{"image": (C, S, S) float32 in [0, 1], "mask": (1, S, S)
    float32 in {0, 1}, "report": str}``, C = ``in_channels`` (1: grey, colour images as their
    luminance; 3: colour, grey images repeated in the three channels).

    A 2D sample is one item. A 3D volume contributes one item per slice along ``plane``'s axis; each such item serves
    a random slice of its volume: with probability TARGET_SLICE_PROBABILITY one that contains the
    target (when the volume has any), otherwise one that does not. Several samples may share one
    image file (one scan, several reports that each name other findings, each with its own mask);
    they teach the text the most on each other's target slices, so with probability
    HARD_NEGATIVE_PROBABILITY a target-free pick comes from a slice where another sample of the
    same scan has its target. Volumes are cached after the first read (normalised float16 images
    once per file, masks per sample, up to ``VOLUME_CACHE_BYTES`` per process, least recently used
    out).

    Images are prepared as inference prepares them (:func:`tmca.preprocess.preprocess_channels` with
    ``modality``, ``intensity_policy``; :func:`tmca.preprocess.model_input` to S x S); masks go through
    the same resize, then are thresholded at 0.5. With ``large_images="tile"`` an item is instead an
    S x S window of the slice at its native resolution (:func:`tmca.data.augment.native_crop`, usually
    one with target) and :meth:`native_item` gives the whole slice (validation). ``augment`` adds the
    transforms of :mod:`tmca.data.augment` (flips and 90-degree rotations only when no report names a
    side or position, else left-right mirroring with the report's sides swapped; :attr:`augmentation`
    says what is on). Randomness is seeded by ``seed`` and
    ``torch.initial_seed()`` (so DataLoader workers differ and seeded runs repeat).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        augment: bool = False,
        modality: str | None = None,
        intensity_policy: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        plane: str = "axial",
        in_channels: int = 1,
        large_images: str = "resize",
    ) -> None:
        if image_size < 8:
            raise TMCAError(f"image_size must be at least 8, not {image_size}")
        if in_channels not in (1, 3):
            raise TMCAError(f"in_channels must be 1 (grey) or 3 (colour), not {in_channels}")
        if large_images not in LARGE_IMAGE_MODES:
            raise TMCAError(f"large_images must be one of {', '.join(LARGE_IMAGE_MODES)}, not {large_images!r}")
        self.samples = list(samples)
        self.image_size = image_size
        self.in_channels = in_channels
        self.modality = modality
        self.slice_axis = PLANE_AXIS[check_plane(plane)]
        self.intensity_policy = intensity_policy
        self.seed = seed
        self.tiles = large_images == "tile"
        self._item_sample = np.repeat(np.arange(len(self.samples)), [_slice_count(s.image, self.slice_axis) for s in self.samples])
        by_image: dict[Path, list[int]] = {}
        for index, sample in enumerate(self.samples):
            by_image.setdefault(sample.image, []).append(index)
        self._siblings = {index: [j for j in by_image[s.image] if j != index] for index, s in enumerate(self.samples)}
        self._targets: dict[int, np.ndarray] = {}  # sample -> bool (D,) slices with target, kept when its mask is evicted
        self.augmentation = plan_augmentation([s.report for s in self.samples], self.tiles, image_size, check_plane(plane)) if augment else None
        self._transforms = Augmentation(self.augmentation) if self.augmentation else None
        if self.augmentation:
            log.info("%s", self.augmentation.describe())
        self._cache = _LRUCache(VOLUME_CACHE_BYTES)
        self._rng: np.random.Generator | None = None
        self._rng_key: int | None = None

    def __len__(self) -> int:
        return len(self._item_sample)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self._random()
        sample_index = int(self._item_sample[index])
        image, mask = self._slice(sample_index, rng)
        if self.tiles:  # a native-resolution window instead of the whole slice squeezed (tmca.data.augment)
            image, mask = native_crop(image, mask, self.image_size, rng)
        image_t = model_input(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None], self.image_size)[0]
        mask_t = (model_input(torch.from_numpy(mask.astype(np.float32))[None], self.image_size)[0] >= 0.5).float()
        item = {"image": image_t, "mask": mask_t, "report": self.samples[sample_index].report}
        return item if self._transforms is None else self._transforms(item)

    def native_item(self, index: int) -> dict[str, Any]:
        """Item ``index`` as the whole slice at its native resolution, not augmented:
        ``{"image": (C, H, W) float32, "mask": (1, H, W) float32, "report": str}`` (sliding-window validation)."""
        sample_index = int(self._item_sample[index])
        image, mask = self._slice(sample_index, self._random())
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        image_t = image_t[None] if image_t.ndim == 2 else image_t
        return {"image": image_t, "mask": torch.from_numpy(mask[None].astype(np.float32)), "report": self.samples[sample_index].report}

    def _random(self) -> np.random.Generator:
        """This process's generator, reseeded when torch's seed changes (e.g. in a new worker)."""
        key = torch.initial_seed()
        if self._rng is None or key != self._rng_key:
            self._rng = np.random.default_rng([self.seed, key % 2**63])
            self._rng_key = key
            if self._transforms is not None:
                self._transforms.set_random_state(seed=int(self._rng.integers(2**31)))
        return self._rng

    def _slice(self, sample_index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(image (C, H, W) float32 in [0, 1], mask (H, W) bool) of one sample, a random slice of a volume."""
        sample = self.samples[sample_index]
        if is_raster(sample.image):
            image = self._read_image(sample)
            return image[:, 0], self._read_mask(sample, image.shape[1:])[0]
        image = self._volume_image(sample)
        shape = (image.shape[0], *image.shape[2:])  # (D, H, W)
        mask = self._volume_mask(sample_index, shape)
        others = np.zeros(len(image), dtype=bool)
        for j in self._siblings[sample_index]:
            others |= self._target(j, shape)
        k = _pick_slice(rng, self._targets[sample_index], others)
        return image[k].astype(np.float32), mask[k]

    def _read_image(self, sample: Sample) -> np.ndarray:
        """Float32 (C, D, H, W)."""
        return read_image(sample.image, self.modality, self.intensity_policy, self.in_channels)

    def _read_mask(self, sample: Sample, image_shape: tuple[int, ...]) -> np.ndarray:
        mask = read_mask(sample.mask)
        if mask.shape != tuple(image_shape):
            raise TMCAError(f"mask {sample.mask} has shape {mask.shape}, image {sample.image} has {tuple(image_shape)}; they must match")
        return mask

    def _volume_image(self, sample: Sample) -> np.ndarray:
        """Float16 (D, C, H, W), slices first, cached per image file."""
        key = ("image", sample.image)
        image = self._cache.get(key)
        if image is None:
            image = np.ascontiguousarray(np.moveaxis(self._read_image(sample), self.slice_axis + 1, 0), dtype=np.float16)
            self._cache.put(key, image)
        return image

    def _volume_mask(self, sample_index: int, slices_first_shape: tuple[int, ...]) -> np.ndarray:
        """Bool (D, H, W), slices first, cached per sample; records the sample's target slices."""
        key = ("mask", sample_index)
        mask = self._cache.get(key)
        if mask is None:
            sample = self.samples[sample_index]
            file_shape = list(slices_first_shape[1:])
            file_shape.insert(self.slice_axis, slices_first_shape[0])
            mask = np.ascontiguousarray(np.moveaxis(self._read_mask(sample, file_shape), self.slice_axis, 0))
            self._cache.put(key, mask)
            self._targets[sample_index] = mask.any(axis=(1, 2))
        return mask

    def _target(self, sample_index: int, slices_first_shape: tuple[int, ...]) -> np.ndarray:
        """Bool (D,): the sample's slices with target (reads its mask the first time)."""
        if sample_index not in self._targets:
            self._volume_mask(sample_index, slices_first_shape)
        return self._targets[sample_index]


class _LRUCache:
    """Arrays by key, least recently used out beyond ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, key: Any) -> np.ndarray | None:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        return None

    def put(self, key: Any, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        while self._entries and self._bytes + value.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
        self._entries[key] = value
        self._bytes += value.nbytes


def _slice_count(path: Path, axis: int = 0) -> int:
    """Items a sample contributes: 1 for a 2D image, the number of slices along ``axis`` for a volume."""
    if is_raster(path):
        return 1
    shape = image_shape(path)
    return shape[axis] if len(shape) == 3 else 1


def _pick_slice(rng: np.random.Generator, target: np.ndarray, others: np.ndarray | None = None) -> int:
    """A slice index: one with target (bool (D,)) with probability TARGET_SLICE_PROBABILITY, else one
    without; of those, with probability HARD_NEGATIVE_PROBABILITY one where ``others`` (bool (D,),
    the targets of other reports of the same scan) is true, when there is such a slice."""
    with_target, without = np.flatnonzero(target), np.flatnonzero(~target)
    use_target = len(with_target) > 0 and (len(without) == 0 or rng.random() < TARGET_SLICE_PROBABILITY)
    if use_target:
        pool = with_target
    else:
        hard = np.flatnonzero(others & ~target) if others is not None else without[:0]
        pool = hard if len(hard) and rng.random() < HARD_NEGATIVE_PROBABILITY else without
    return int(pool[rng.integers(len(pool))])
