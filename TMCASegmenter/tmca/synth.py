"""Synthetic phantoms with lesions at named anatomical locations, and reports that describe them.

Each case shows 0-3 lesions at distinct named locations; its report describes some or all of
them and the target mask is the union of the *described* lesions only, so the text decides the
target. Modalities (codes of :mod:`tmca.choices`, any case; images in modality units, arrays in numpy order):

- ``CT``: chest CT in HU. 3D: axial slices, DICOM-like LPS geometry (columns run to the patient's
  left, rows to posterior, slices to superior); 2D: a coronal slice (rows run superior to inferior)
  so that "upper/middle/lower lung" are image rows, as in a radiograph.
- ``XR``: PA chest radiograph (2D only), detector-like units 0..4095, bones bright, lungs dark.
- ``MR``: axial brain MR, FLAIR-like contrast (CSF dark, lesions bright), bias field, Rician noise,
  arbitrary units (about 0..1200).
- ``US``: ultrasound sector (fan) with speckle and hypo-echoic lesions, echo units 0..255.

Radiological convention everywhere: the patient's left is the image's right (larger column index).
Locations: chest ``"{upper|middle|lower} {left|right} lung"`` (thirds of the lung extent: rows in
2D, slices in 3D); brain ``"{left|right} {frontal|parietal|occipital} lobe"`` (thirds of the brain
from anterior to posterior); ultrasound ``"{superficial|deep} {left|central|right} region"`` (depth
halves and angle thirds of the fan; left/right of the image).

Report styles (see :func:`describe`): ``sentences`` ("Small nodule in the upper left lung. Large
nodule in the lower right lung."), ``qata`` for chest ("Bilateral pulmonary infection, two infected
areas, upper left lung and lower right lung."), ``list`` ("Two lesions: small hyperintense lesion
in the left frontal lobe; large ...") and ``numbered`` ("1. Small ... 2. Large ...") for MR and US.
A one-lesion report in ``list``/``numbered`` style is a plain sentence, and :func:`tmca.findings.
split_findings` turns every multi-lesion report into findings that each equal the report the
generator writes for that lesion alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Protocol

import numpy as np

from tmca.atomic import atomic_path, write_text_atomic
from tmca.choices import SYNTH_MODALITIES, check_modality
from tmca.errors import TMCAError

DEFAULT_SIZE_2D = 256
DEFAULT_SIZE_3D = 160  # with DEFAULT_DEPTH: the volumes the bundled demo model was trained on
DEFAULT_DEPTH = 80
SIZE_WORDS = ("small", "large")
SPLITS = ("Train", "Val", "Test")
SPLIT_FRACTIONS = (0.7, 0.1)  # Train, Val; Test takes the rest
NO_FINDING_REPORT = "No focal lesion."
NO_FINDING_PROBABILITY = 0.05
SUBSET_PROBABILITY = 0.4  # a multi-lesion case describes a non-empty strict subset
LESION_COUNT_WEIGHTS = (0.4, 0.35, 0.25)  # one, two, three lesions
COUNT_WORDS = ("no", "one", "two", "three")
MIN_SIZE, MAX_SIZE, MIN_DEPTH = 64, 2048, 12

# Field of view in mm: (z extent, in-plane extent) per modality; spacing = extent / voxels.
_FIELD_OF_VIEW_MM = {"CT": (320.0, 380.0), "XR": (0.0, 400.0), "MR": (160.0, 230.0), "US": (40.0, 60.0)}
# Where a 3D volume's centre lies in patient coordinates (LPS, mm): a non-identity origin.
_VOLUME_CENTRE_MM = (0.0, 30.0, -180.0)
# Display window (low, high) for 8-bit PNGs; None: 0.5th to 99.8th percentile of the image.
_PNG_WINDOW = {"CT": (-1100.0, 500.0), "XR": (0.0, 4095.0), "MR": None, "US": (0.0, 255.0)}


class Tissue(IntEnum):
    """Labels of :attr:`SynthCase.labels` (the phantom's anatomy, lesions not included)."""

    OUTSIDE = 0
    SOFT_TISSUE = 1
    LUNG = 2
    BONE = 3
    FAT = 4
    FLUID = 5
    BRAIN = 6


@dataclass(frozen=True)
class _Vocabulary:
    noun: str
    styles: tuple[str, ...]
    radius_mm: dict[str, tuple[float, float]]  # size word -> (min, max) lesion radius


VOCABULARY = {
    "CT": _Vocabulary("nodule", ("sentences", "qata"), {"small": (5.0, 9.0), "large": (13.0, 22.0)}),
    "XR": _Vocabulary("opacity", ("sentences", "qata"), {"small": (10.0, 18.0), "large": (22.0, 36.0)}),
    "MR": _Vocabulary("hyperintense lesion", ("sentences", "list", "numbered"), {"small": (4.0, 8.0), "large": (10.0, 18.0)}),
    "US": _Vocabulary("hypoechoic lesion", ("sentences", "list", "numbered"), {"small": (1.5, 3.0), "large": (4.0, 7.0)}),
}


@dataclass
class Lesion:
    """One lesion: where it is, how big, whether the report describes it, its centre voxel."""

    location: str
    size: str
    described: bool
    centre: tuple[int, ...]
    voxels: int


@dataclass
class SynthCase:
    """A generated case. Arrays are (H, W) for 2D and (D, H, W) for 3D (numpy order z, y, x).

    ``image`` float32 in modality units; ``mask`` uint8 {0, 1}: union of the described lesions;
    ``lesion_masks[i]`` bool mask of ``lesions[i]`` (described or not); ``labels`` uint8
    :class:`Tissue` map of the anatomy; ``spacing`` mm per axis in the same order.
    """

    image: np.ndarray
    mask: np.ndarray
    lesion_masks: list[np.ndarray]
    lesions: list[Lesion]
    report: str
    style: str
    labels: np.ndarray
    spacing: tuple[float, ...]
    modality: str


# ---------------------------------------------------------------------------------------------
# Reports



def _gaussian_filter(*args, **kwargs) -> np.ndarray:
    """scipy.ndimage.gaussian_filter, imported when first used (the command line imports this module for its defaults)."""
    from scipy import ndimage

    return ndimage.gaussian_filter(*args, **kwargs)

def report_styles(modality: str) -> tuple[str, ...]:
    """The report styles the generator uses for ``modality`` (any case)."""
    return VOCABULARY[_modality(modality)].styles


def describe(lesions: Sequence[Lesion], modality: str, style: str) -> str:
    """The report for the (described) ``lesions``, in order, in ``style``.

    No lesion: ``"No focal lesion."``. One lesion: ``"Small nodule in the upper left lung."``
    (``qata``: ``"Unilateral pulmonary infection, one infected area, upper left lung."``).
    """
    modality = _modality(modality)
    if style not in report_styles(modality):
        raise ValueError(f"style {style!r} is not used for {modality}; use one of {report_styles(modality)}")
    if not lesions:
        return NO_FINDING_REPORT
    if style == "qata":
        return _qata_report([lesion.location for lesion in lesions])
    noun = VOCABULARY[modality].noun
    phrases = [f"{lesion.size} {noun} in the {lesion.location}" for lesion in lesions]
    sentences = [f"{phrase[0].upper()}{phrase[1:]}." for phrase in phrases]
    if len(lesions) == 1 or style == "sentences":
        return " ".join(sentences)
    if style == "numbered":
        return " ".join(f"{number}. {sentence}" for number, sentence in enumerate(sentences, start=1))
    return f"{COUNT_WORDS[len(lesions)].capitalize()} lesions: {'; '.join(phrases)}."


def _qata_report(locations: list[str]) -> str:
    """QaTa-COV19 phrasing: laterality, count, then the locations joined by commas and "and"."""
    sides = {side for location in locations for side in ("left", "right") if side in location.split()}
    laterality = "Bilateral" if len(sides) == 2 else "Unilateral"
    count = len(locations)
    noun = "infected area" if count == 1 else "infected areas"
    joined = locations[0] if count == 1 else f"{', '.join(locations[:-1])} and {locations[-1]}"
    return f"{laterality} pulmonary infection, {COUNT_WORDS[count]} {noun}, {joined}."


# ---------------------------------------------------------------------------------------------
# Geometry helpers


@dataclass(frozen=True)
class _Grid:
    """Voxel grid (D, H, W) (D == 1 for 2D) with normalised in-plane coordinates.

    ``u`` (1, W) runs -1..1 from the image's left (patient's right) to its right; ``v`` (H, 1)
    runs -1..1 from the top row to the bottom row. ``level(k)`` runs -1..1 from the first slice
    (inferior) to the last (superior).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm along z, y, x

    @property
    def u(self) -> np.ndarray:
        return _centred(self.shape[2])[None, :]

    @property
    def v(self) -> np.ndarray:
        return _centred(self.shape[1])[:, None]

    def level(self, k: int) -> float:
        return -1.0 + 2.0 * (k + 0.5) / self.shape[0]

    def z_mm(self, k: int) -> float:
        return self.level(k) * self.shape[0] * self.spacing[0] / 2.0


def _centred(n: int) -> np.ndarray:
    """Pixel-centre coordinates of n pixels spanning -1..1, float32 (n,)."""
    return (np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0


def _inside(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """Bool (H, W): inside the ellipse centred (cu, cv) with half-axes a (along u) and b (along v)."""
    if a <= 0 or b <= 0:
        return np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    return ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2 <= 1.0


def _ellipse_depth(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """Float32 (H, W): chord length through an ellipsoid, 1 at the centre, 0 outside (projection)."""
    r2 = ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, None)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit std, float32 of ``shape``."""
    field = _gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


class _CoarseNoise:
    """A smooth random field over (D, H, W) stored on a coarse grid, served one slice at a time.

    Cheap for large volumes: the coarse grid has one node per ``cell_vox`` voxels in-plane and
    per ``cell_slices`` slices; a slice is interpolated (bi)linearly, float32 (H, W), about unit std.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], cell_vox: float, cell_slices: float) -> None:
        depth, height, width = shape
        coarse = (
            max(2, math.ceil(depth / cell_slices) + 1),
            max(2, math.ceil(height / cell_vox) + 1),
            max(2, math.ceil(width / cell_vox) + 1),
        )
        self._coarse = _smooth_noise(rng, coarse, 0.8)
        self._depth = depth
        self._rows = _interpolation_matrix(height, coarse[1])
        self._cols = _interpolation_matrix(width, coarse[2])

    def plane(self, k: int) -> np.ndarray:
        position = (k + 0.5) / self._depth * (self._coarse.shape[0] - 1)
        low = min(int(position), self._coarse.shape[0] - 2)
        frac = position - low
        plane = (1 - frac) * self._coarse[low] + frac * self._coarse[low + 1]
        return self._rows @ plane @ self._cols.T


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """float32 (n_out, n_in): linear interpolation from n_in nodes spanning n_out samples."""
    position = np.linspace(0.0, n_in - 1.0, n_out)
    low = np.minimum(position.astype(int), n_in - 2)
    frac = (position - low).astype(np.float32)
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    matrix[np.arange(n_out), low] = 1.0 - frac
    matrix[np.arange(n_out), low + 1] = frac
    return matrix


@dataclass
class _Cell:
    """A named location: ``box`` (slices over D, H, W) and where a lesion may lie inside it."""

    location: str
    box: tuple[slice, slice, slice]
    allowed: np.ndarray  # bool, the box's shape


def _thirds(present: np.ndarray) -> list[tuple[int, int]]:
    """Split the index range where ``present`` (1D bool) is true into three (start, stop) parts."""
    indices = np.flatnonzero(present)
    if indices.size < 3:
        return []
    edges = np.linspace(indices[0], indices[-1] + 1, 4).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(3)]


def _grid_cells(labels: np.ndarray, tissue: Tissue, axis: int, names: Sequence[str], pattern: str) -> list[_Cell]:
    """Cells = thirds of ``tissue``'s extent along ``axis`` x image halves (columns).

    ``names`` name the thirds in index order; ``pattern`` formats ``{third}`` and ``{side}``
    (the patient's side: image left half = "right").
    """
    present = labels == tissue
    other_axes = tuple(a for a in range(3) if a != axis)
    thirds = _thirds(present.any(axis=other_axes))
    width = labels.shape[2]
    halves = (("right", slice(0, width // 2)), ("left", slice(width // 2, width)))
    cells = []
    for name, (start, stop) in zip(names, thirds):
        for side, columns in halves:
            parts = [slice(None), slice(None), columns]
            parts[axis] = slice(start, stop)
            box = (parts[0], parts[1], parts[2])
            cells.append(_Cell(pattern.format(third=name, side=side), box, present[box]))
    return cells


# ---------------------------------------------------------------------------------------------
# Phantoms: each builds the anatomy slice by slice, names its cells, paints lesions, finishes.


class _Phantom(Protocol):
    grid: _Grid

    def anatomy(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice k: (field float32 (H, W) in pre-finish units, labels uint8 (H, W))."""

    def cells(self, labels: np.ndarray) -> list[_Cell]:
        """Named locations where lesions may go (labels (D, H, W))."""

    def paint(self, field: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> None:
        """Add one lesion in place: ``field`` is the lesion's box, ``weight`` its soft mask (same shape)."""

    def finish(self, field: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """Slice k (H, W) -> image in modality units (noise, bias field, speckle, projection)."""


def _lung_profile(level: float, base: float = -0.75, apex: float = 0.92) -> float:
    """Relative lung cross-section (0..1) at a level: full near the base, domed, tapering to the apex."""
    t = (level - base) / (apex - base)
    if not 0.0 < t < 1.0:
        return 0.0
    return math.sqrt(1.0 - t * t) * min(1.0, math.sqrt(t / 0.12))


class _ChestCTAxial:
    """Axial chest CT in HU: body with fat, lungs with vessels, heart, aorta, spine, ribs."""

    def __init__(self, grid: _Grid, rng: np.random.Generator) -> None:
        self.grid = grid
        u, v = grid.u, grid.v
        self.texture = _CoarseNoise(rng, grid.shape, cell_vox=18.0 / grid.spacing[2], cell_slices=18.0 / grid.spacing[0])
        self.static_field = np.full(np.broadcast_shapes(u.shape, v.shape), -1000.0, dtype=np.float32)
        self.static_labels = np.zeros(self.static_field.shape, dtype=np.uint8)
        layers = [
            (_inside(u, v, 0.0, 0.05, 0.86, 0.62), -100.0, Tissue.FAT),
            (_inside(u, v, 0.0, 0.05, 0.80, 0.56), 40.0, Tissue.SOFT_TISSUE),
            (_inside(u, v, 0.0, 0.40, 0.10, 0.09), 700.0, Tissue.BONE),  # vertebral body cortex
            (_inside(u, v, 0.0, 0.40, 0.08, 0.07), 250.0, Tissue.BONE),  # cancellous bone
            (_inside(u, v, 0.0, 0.56, 0.045, 0.05), 15.0, Tissue.FLUID),  # spinal canal
            (_inside(u, v, 0.0, 0.68, 0.025, 0.06), 700.0, Tissue.BONE),  # spinous process
            (_inside(u, v, 0.0, -0.49, 0.07, 0.03), 500.0, Tissue.BONE),  # sternum
        ]
        for inside, value, tissue in layers:
            self.static_field[inside] = value
            self.static_labels[inside] = tissue
        self.rib_ring = _inside(u, v, 0.0, 0.05, 0.79, 0.55) & ~_inside(u, v, 0.0, 0.05, 0.75, 0.51) & ~(np.abs(u) < 0.12)
        self.rib_phase = 0.6 * (0.5 - 0.5 * (v - 0.05) / np.sqrt(u**2 + (v - 0.05) ** 2 + 1e-6)) + rng.uniform()
        self.heart_shift = rng.uniform(-0.03, 0.03)

    def anatomy(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        u, v, level = self.grid.u, self.grid.v, self.grid.level(k)
        field, labels = self.static_field.copy(), self.static_labels.copy()
        scale = _lung_profile(level)
        lungs = _inside(u, v, -0.40, 0.0, 0.30 * scale, 0.42 * scale) | _inside(u, v, 0.40, 0.0, 0.30 * scale, 0.42 * scale)
        if lungs.any():
            vessels = np.exp(-((self.texture.plane(k) / 0.1) ** 2))
            field[lungs] = (-870.0 + 650.0 * vessels)[lungs]
            labels[lungs] = Tissue.LUNG
        heart_scale = max(0.0, math.sin(math.pi * (level + 0.8) / 0.85)) if -0.8 < level < 0.05 else 0.0
        heart = _inside(u, v, 0.10 + self.heart_shift, -0.16, 0.30 * heart_scale, 0.26 * heart_scale)
        aorta = _inside(u, v, 0.13, 0.30, 0.05, 0.05) if level < 0.6 else _inside(u, v, 0.0, -0.1, 0.06, 0.06)
        liver = _inside(u, v, -0.25, 0.0, 0.55, 0.45) & ~lungs if level < -0.55 else np.zeros_like(lungs)
        for inside, value in ((heart, 45.0), (aorta, 40.0), (liver, 60.0)):
            field[inside] = value
            labels[inside] = Tissue.SOFT_TISSUE
        ribs = self.rib_ring & (np.mod(self.grid.z_mm(k) / 28.0 + self.rib_phase, 1.0) < 0.3)
        field[ribs] = 700.0
        labels[ribs] = Tissue.BONE
        return field, labels

    def cells(self, labels: np.ndarray) -> list[_Cell]:
        return _grid_cells(labels, Tissue.LUNG, 0, ("lower", "middle", "upper"), "{third} {side} lung")

    def paint(self, field: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> None:
        _paint_ct(field, weight, rng)

    def finish(self, field: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return _finish_ct(field, rng)


class _ChestCTCoronal:
    """Coronal chest CT slice in HU (rows superior -> inferior): the 2D chest CT phantom."""

    def __init__(self, grid: _Grid, rng: np.random.Generator) -> None:
        self.grid = grid
        u, v = grid.u, grid.v
        field = np.full(np.broadcast_shapes(u.shape, v.shape), -1000.0, dtype=np.float32)
        labels = np.zeros(field.shape, dtype=np.uint8)
        torso = ((u / 0.88) ** 6 + ((v - 0.25) / 1.25) ** 6 <= 1.0) | ((np.abs(u) < 0.26) & (v < -0.5))
        muscle = ((u / 0.82) ** 6 + ((v - 0.25) / 1.2) ** 6 <= 1.0) | ((np.abs(u) < 0.2) & (v < -0.5))
        dome = [0.30 + 0.18 * ((u - cu) / 0.30) ** 2 + rng.uniform(-0.04, 0.04) for cu in (-0.40, 0.40)]
        lungs = (_inside(u, v, -0.40, -0.12, 0.30, 0.60) & (v < dome[0])) | (_inside(u, v, 0.40, -0.12, 0.30, 0.60) & (v < dome[1]))
        heart = _inside(u, v, 0.12 + rng.uniform(-0.03, 0.03), 0.24, 0.28, 0.22)
        liver = muscle & (u < 0.15) & (v >= dome[0]) & ~lungs
        vessels = np.exp(-((_smooth_noise(rng, field.shape, 2.5 * field.shape[0] / 256) / 0.1) ** 2))
        layers = [
            (torso, -100.0, Tissue.FAT),
            (muscle, 40.0, Tissue.SOFT_TISSUE),
            (liver, 60.0, Tissue.SOFT_TISSUE),
            (lungs, -870.0 + 650.0 * vessels, Tissue.LUNG),
            (heart, 45.0, Tissue.SOFT_TISSUE),
            (self._vertebrae(u, v), 650.0, Tissue.BONE),
            (self._ribs(u, v), 700.0, Tissue.BONE),
        ]
        for inside, value, tissue in layers:
            field[inside] = value[inside] if isinstance(value, np.ndarray) else value
            labels[inside] = tissue
        self.field, self.labels = field, labels

    @staticmethod
    def _vertebrae(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Vertebral bodies stacked along the midline, separated by discs."""
        return (np.abs(u) < 0.07) & (np.mod((v + 1.0) / 0.14, 1.0) < 0.8) & (v > -0.9) & (v < 0.95)

    @staticmethod
    def _ribs(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Rib cross-sections along the lateral chest wall and the clavicles at the top."""
        ribs = _inside(u, v, -0.37, -0.76, 0.25, 0.035) | _inside(u, v, 0.37, -0.76, 0.25, 0.035)
        for row in np.arange(-0.66, 0.45, 0.14):
            lateral = 0.72 - 0.1 * abs(row + 0.1)
            ribs |= _inside(u, v, -lateral, row, 0.04, 0.03) | _inside(u, v, lateral, row, 0.04, 0.03)
        return ribs

    def anatomy(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.field.copy(), self.labels.copy()

    def cells(self, labels: np.ndarray) -> list[_Cell]:
        return _grid_cells(labels, Tissue.LUNG, 1, ("upper", "middle", "lower"), "{third} {side} lung")

    def paint(self, field: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> None:
        _paint_ct(field, weight, rng)

    def finish(self, field: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return _finish_ct(field, rng)


def _paint_ct(field: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> None:
    """A soft-tissue nodule (about 20-50 HU, textured) blended in with partial-volume edges."""
    value = rng.uniform(20.0, 50.0) + 12.0 * _smooth_noise(rng, field.shape, 1.5)
    field *= 1.0 - weight
    field += weight * value


def _finish_ct(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Quantum noise (sigma 12 HU), clipped to the CT range."""
    noisy = field + 12.0 * rng.standard_normal(field.shape, dtype=np.float32)
    return np.clip(noisy, -1024.0, 3071.0)


class _ChestXR:
    """PA chest radiograph: soft-tissue thickness minus lung air, plus bones, then 1 - exp(-attenuation)."""

    def __init__(self, grid: _Grid, rng: np.random.Generator) -> None:
        self.grid = grid
        u, v = grid.u, grid.v
        shape = np.broadcast_shapes(u.shape, v.shape)
        width = np.where(v < -0.62, 0.3, 0.9).astype(np.float32)
        body = np.sqrt(np.clip(1.0 - (u / width) ** 2, 0.0, None))
        dome = [0.28 + 0.2 * ((u - cu) / 0.3) ** 2 + rng.uniform(-0.05, 0.05) for cu in (-0.40, 0.40)]
        lung_depth = _ellipse_depth(u, v, -0.40, -0.15, 0.31, 0.62) * (v < dome[0]) + _ellipse_depth(u, v, 0.40, -0.15, 0.31, 0.62) * (
            v < dome[1]
        )
        heart = _ellipse_depth(u, v, 0.12 + rng.uniform(-0.03, 0.03), 0.22, 0.30, 0.24)
        spine = (np.abs(u) < 0.06) & (v > -1.0)
        ribs = self._ribs(u, v)
        abdomen = (v >= np.minimum(dome[0], dome[1])) & (body > 0)
        attenuation = 1.3 * body - 0.9 * lung_depth + 0.6 * heart + 0.3 * abdomen + 0.5 * spine + 0.35 * ribs
        attenuation += 0.03 * _smooth_noise(rng, shape, 3.0 * shape[0] / 256)
        labels = np.where(body > 0, Tissue.SOFT_TISSUE, Tissue.OUTSIDE).astype(np.uint8)
        labels[(lung_depth > 0.05) & (heart == 0)] = Tissue.LUNG
        labels[(spine | ribs) & (labels != Tissue.LUNG) & (body > 0)] = Tissue.BONE
        self.field, self.labels = np.clip(attenuation, 0.0, None).astype(np.float32), labels

    @staticmethod
    def _ribs(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Posterior ribs (bands sloping down laterally) and clavicles."""
        lateral = np.abs(u)
        ribs = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
        for start in np.arange(-0.74, 0.3, 0.12):
            centre = start + 0.14 * (lateral / 0.8) + 0.18 * (lateral / 0.8) ** 2
            ribs |= (np.abs(v - centre) < 0.022) & (lateral > 0.06) & (lateral < 0.78)
        clavicles = (np.abs(v - (-0.68 - 0.12 * lateral)) < 0.03) & (lateral > 0.08) & (lateral < 0.55)
        return ribs | clavicles

    def anatomy(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.field.copy(), self.labels.copy()

    def cells(self, labels: np.ndarray) -> list[_Cell]:
        return _grid_cells(labels, Tissue.LUNG, 1, ("upper", "middle", "lower"), "{third} {side} lung")

    def paint(self, field: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> None:
        """Patchy airspace opacity: extra attenuation, modulated by texture."""
        field += weight * rng.uniform(0.35, 0.6) * (0.8 + 0.25 * _smooth_noise(rng, field.shape, 2.0))

    def finish(self, field: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        image = 4095.0 * (1.0 - np.exp(-0.9 * field)) + 25.0 * rng.standard_normal(field.shape, dtype=np.float32)
        return np.clip(image, 0.0, 4095.0)


class _BrainMR:
    """Axial brain MR, FLAIR-like: scalp fat bright, skull and CSF dark, grey > white matter."""

    LEVEL_2D = 0.25  # a 2D case is the slice through the lateral ventricles

    def __init__(self, grid: _Grid, rng: np.random.Generator) -> None:
        self.grid = grid
        self.texture = _CoarseNoise(rng, grid.shape, cell_vox=10.0 / grid.spacing[2], cell_slices=10.0 / grid.spacing[0])
        self.gyri_phase = rng.uniform(0, 2 * math.pi)
        self.bias = rng.uniform(-0.15, 0.15, size=4)
        self.angle = np.arctan2(grid.v, grid.u)

    def _level(self, k: int) -> float:
        return self.LEVEL_2D if self.grid.shape[0] == 1 else self.grid.level(k)

    def anatomy(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        u, v, level = self.grid.u, self.grid.v, self._level(k)
        scale = math.sqrt(max(0.0, 1.0 - (level / 1.08) ** 2))
        texture = self.texture.plane(k)
        field = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.float32)
        labels = np.zeros(field.shape, dtype=np.uint8)
        folds = 0.025 * np.sin(11.0 * self.angle + self.gyri_phase + 3.0 * level) + 0.05 * texture
        layers = [
            (1.00, 0.85, Tissue.FAT),  # scalp
            (0.94, 0.06, Tissue.BONE),  # skull
            (0.90, 0.12, Tissue.FLUID),  # CSF
            (0.87, 0.72, Tissue.BRAIN),  # cortex
        ]
        for radius, value, tissue in layers:
            inside = _inside(u, v, 0.0, 0.0, 0.74 * scale * radius, 0.90 * scale * radius)
            field[inside], labels[inside] = value, tissue
        white = (u / (0.74 * scale)) ** 2 + (v / (0.90 * scale)) ** 2 <= (0.68 + folds) ** 2
        field[white] = 0.55 + 0.03 * texture[white]
        ventricle_scale = max(0.0, 1.0 - abs(level - 0.15) / 0.3)
        ventricles = _inside(u, v, -0.09, -0.05, 0.06 * ventricle_scale, 0.26 * ventricle_scale)
        ventricles |= _inside(u, v, 0.09, -0.05, 0.06 * ventricle_scale, 0.26 * ventricle_scale)
        field[ventricles], labels[ventricles] = 0.1, Tissue.FLUID
        return field, labels

    def cells(self, labels: np.ndarray) -> list[_Cell]:
        return _grid_cells(labels, Tissue.BRAIN, 1, ("frontal", "parietal", "occipital"), "{side} {third} lobe")

    def paint(self, field: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> None:
        """A hyperintense lesion (above grey matter), textured."""
        value = rng.uniform(1.0, 1.2) + 0.06 * _smooth_noise(rng, field.shape, 1.5)
        field *= 1.0 - weight
        field += weight * value

    def finish(self, field: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """Smooth multiplicative bias field, Rician noise, arbitrary units (x1000)."""
        u, v, level = self.grid.u, self.grid.v, self._level(k)
        c = self.bias
        bias = 1.0 + c[0] * u + c[1] * v + c[2] * u * v + c[3] * (u**2 + v**2 - 0.5) + 0.05 * level
        sigma = 0.025
        real = field * bias + sigma * rng.standard_normal(field.shape, dtype=np.float32)
        imaginary = sigma * rng.standard_normal(field.shape, dtype=np.float32)
        return (1000.0 * np.sqrt(real**2 + imaginary**2)).astype(np.float32)


class _Ultrasound:
    """Ultrasound sector image: skin, fat and fascia layers over parenchyma, speckle, depth falloff."""

    HALF_ANGLE = 0.65  # radians
    APEX_V = -1.12
    NEAR, FAR, SPLIT = 0.16, 2.02, 1.15  # radial extent of the fan; superficial/deep boundary

    def __init__(self, grid: _Grid, rng: np.random.Generator) -> None:
        self.grid = grid
        u, v = grid.u, grid.v
        self.radius = np.sqrt(u**2 + (v - self.APEX_V) ** 2)
        self.angle = np.arctan2(u, v - self.APEX_V)
        self.fan = (np.abs(self.angle) < self.HALF_ANGLE) & (self.radius > self.NEAR) & (self.radius < self.FAR)
        self.texture = _CoarseNoise(rng, grid.shape, cell_vox=4.0 / grid.spacing[2], cell_slices=4.0 / grid.spacing[0])
        self.fascia = 0.42 + rng.uniform(-0.03, 0.03)
        self.speckle_sigma = (max(0.6, 0.15 / grid.spacing[1]), max(0.8, 0.35 / grid.spacing[2]))  # axial, lateral (px)

    def anatomy(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.radius
        field = np.zeros(self.fan.shape, dtype=np.float32)
        labels = np.zeros(self.fan.shape, dtype=np.uint8)
        parenchyma = self.fan & (r >= self.fascia + 0.03)
        fat = self.fan & (r < self.fascia)
        field[parenchyma] = (0.55 + 0.1 * self.texture.plane(k))[parenchyma]
        labels[parenchyma] = Tissue.SOFT_TISSUE
        field[fat], labels[fat] = 0.3, Tissue.FAT
        bright = self.fan & ((r < self.NEAR + 0.04) | (np.abs(r - self.fascia - 0.015) < 0.015))
        field[bright], labels[bright] = 0.95, Tissue.FAT
        return field, labels

    def cells(self, labels: np.ndarray) -> list[_Cell]:
        third = 2 * self.HALF_ANGLE / 3
        lateral = (
            ("left", self.angle < -self.HALF_ANGLE + third),
            ("central", np.abs(self.angle) <= third / 2),
            ("right", self.angle > self.HALF_ANGLE - third),
        )
        depths = (("superficial", self.radius < self.SPLIT), ("deep", self.radius >= self.SPLIT))
        tissue = labels == Tissue.SOFT_TISSUE
        cells = []
        for depth_name, depth_mask in depths:
            for side, side_mask in lateral:
                region = depth_mask & side_mask & self.fan
                rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
                box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
                cells.append(_Cell(f"{depth_name} {side} region", box, tissue[box] & region[box[1:]][None]))
        return cells

    def paint(self, field: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> None:
        """A hypo-echoic lesion: echogenicity reduced to 20-40 %."""
        field *= 1.0 - weight * rng.uniform(0.6, 0.8)

    def finish(self, field: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """Fully developed speckle (smoothed complex Gaussian -> Rayleigh), depth gain, 0..255."""
        real = _gaussian_filter(rng.standard_normal(field.shape, dtype=np.float32), self.speckle_sigma)
        imaginary = _gaussian_filter(rng.standard_normal(field.shape, dtype=np.float32), self.speckle_sigma)
        speckle = np.sqrt(real**2 + imaginary**2)
        speckle /= speckle[self.fan].mean() + 1e-6
        gain = 1.05 - 0.12 * self.radius
        return np.clip(180.0 * field * speckle * gain, 0.0, 255.0) * self.fan


_PHANTOMS = {
    ("CT", 3): _ChestCTAxial,
    ("CT", 2): _ChestCTCoronal,
    ("XR", 2): _ChestXR,
    ("MR", 2): _BrainMR,
    ("MR", 3): _BrainMR,
    ("US", 2): _Ultrasound,
    ("US", 3): _Ultrasound,
}


# ---------------------------------------------------------------------------------------------
# Cases


def generate_case(
    rng: np.random.Generator, modality: str, dims: int, size: int = 256, depth: int = 32, subset_probability: float = SUBSET_PROBABILITY,
    no_finding_probability: float = NO_FINDING_PROBABILITY,
) -> SynthCase:
    """Generate one case: a ``size`` x ``size`` image (x ``depth`` slices in 3D), lesions, a report.

    Deterministic for the state of ``rng``. See :class:`SynthCase` for the arrays' shapes.
    """
    modality = _modality(modality)
    _check_arguments(modality, dims, size, depth)
    grid = _make_grid(modality, dims, size, depth)
    phantom: _Phantom = _PHANTOMS[(modality, dims)](grid, rng)
    field = np.empty(grid.shape, dtype=np.float32)
    labels = np.empty(grid.shape, dtype=np.uint8)
    for k in range(grid.shape[0]):
        field[k], labels[k] = phantom.anatomy(k)
    cells = [cell for cell in phantom.cells(labels) if cell.allowed.any()]
    lesions, lesion_masks = _add_lesions(rng, phantom, field, cells, modality, subset_probability, no_finding_probability)
    style = str(rng.choice(report_styles(modality)))
    report = describe([lesion for lesion in lesions if lesion.described], modality, style)
    for k in range(grid.shape[0]):
        field[k] = phantom.finish(field[k], k, rng)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    for lesion, lesion_mask in zip(lesions, lesion_masks):
        if lesion.described:
            mask[lesion_mask] = 1
    squeeze = (lambda array: array[0]) if dims == 2 else (lambda array: array)
    return SynthCase(
        image=squeeze(field),
        mask=squeeze(mask),
        lesion_masks=[squeeze(m) for m in lesion_masks],
        lesions=[_squeeze_lesion(lesion) for lesion in lesions] if dims == 2 else lesions,
        report=report,
        style=style,
        labels=squeeze(labels),
        spacing=grid.spacing[1:] if dims == 2 else grid.spacing,
        modality=modality,
    )


def _modality(name: str) -> str:
    """The registry code (:data:`tmca.choices.SYNTH_MODALITIES`) of ``name``, given in any case."""
    return check_modality(name, SYNTH_MODALITIES)


def _check_arguments(modality: str, dims: int, size: int, depth: int) -> None:
    if dims not in (2, 3):
        raise TMCAError(f"dims must be 2 or 3, not {dims}")
    if (modality, dims) not in _PHANTOMS:
        raise TMCAError(f"{modality} phantoms are 2D only (a projection radiograph has no slices); use --dims 2")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise TMCAError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, not {size}")
    if dims == 3 and depth < MIN_DEPTH:
        raise TMCAError(f"depth must be at least {MIN_DEPTH} slices for 3D phantoms, not {depth}")


def _make_grid(modality: str, dims: int, size: int, depth: int) -> _Grid:
    z_extent, in_plane = _FIELD_OF_VIEW_MM[modality]
    pixel = round(in_plane / size, 4)
    if dims == 2:
        return _Grid((1, size, size), (1.0, pixel, pixel))
    return _Grid((depth, size, size), (round(z_extent / depth, 4), pixel, pixel))


def _squeeze_lesion(lesion: Lesion) -> Lesion:
    """A 2D case's lesion: centre as (row, column)."""
    return Lesion(lesion.location, lesion.size, lesion.described, lesion.centre[1:], lesion.voxels)


def _add_lesions(
    rng: np.random.Generator, phantom: _Phantom, field: np.ndarray, cells: list[_Cell], modality: str, subset_probability: float,
    no_finding_probability: float,
) -> tuple[list[Lesion], list[np.ndarray]]:
    """Choose 0-3 cells, grow a lesion in each, paint it into ``field`` (D, H, W) in place.

    Returns the lesions and their bool masks (D, H, W); which ones are described follows
    ``no_finding_probability``, LESION_COUNT_WEIGHTS and ``subset_probability``. Both probabilities
    act on draws every case makes, so changing one leaves the cases it does not select unchanged.
    """
    if rng.random() < no_finding_probability or not cells:
        return [], []
    count = min(len(cells), int(rng.choice((1, 2, 3), p=LESION_COUNT_WEIGHTS)))
    chosen = rng.choice(len(cells), size=count, replace=False)
    described = np.ones(count, dtype=bool)
    if count >= 2 and rng.random() < subset_probability:
        described[:] = False
        described[rng.choice(count, size=int(rng.integers(1, count)), replace=False)] = True
    lesions, masks = [], []
    for index, is_described in zip(chosen, described):
        cell = cells[int(index)]
        size_word = str(rng.choice(SIZE_WORDS))
        radius_mm = rng.uniform(*VOCABULARY[modality].radius_mm[size_word])
        box, local, centre = _grow_lesion(rng, cell, radius_mm, phantom.grid)
        weight = np.maximum(local, _gaussian_filter(local.astype(np.float32), 0.7))  # full inside, soft edge outside
        region = field[box]
        phantom.paint(region, weight, rng)
        mask = np.zeros(field.shape, dtype=bool)
        mask[box] = local
        lesions.append(Lesion(cell.location, size_word, bool(is_described), centre, int(local.sum())))
        masks.append(mask)
    return lesions, masks


def _grow_lesion(
    rng: np.random.Generator, cell: _Cell, radius_mm: float, grid: _Grid
) -> tuple[tuple[slice, slice, slice], np.ndarray, tuple[int, int, int]]:
    """Place an irregular blob of about ``radius_mm`` in ``cell``.

    Returns the blob's box (global slices, inside the cell's box), its bool mask (box shape,
    restricted to the cell's allowed voxels) and its centre voxel (global).
    """
    radii = np.array([max(radius_mm / s, 1.5) for s in grid.spacing], dtype=np.float32)
    if grid.shape[0] == 1:
        radii[0] = 1.0
    radii[1:] *= rng.uniform(0.75, 1.25, size=2).astype(np.float32)
    starts = np.array([cell.box[a].indices(grid.shape[a])[0] for a in range(3)])
    centre_local = _pick_centre(rng, cell.allowed, radii)
    low = np.maximum(centre_local - np.ceil(1.3 * radii).astype(int), 0)
    high = np.minimum(centre_local + np.ceil(1.3 * radii).astype(int) + 1, cell.allowed.shape)
    local_box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    blob = _blob(rng, tuple(int(b - a) for a, b in zip(low, high)), centre_local - low, radii)
    blob &= cell.allowed[local_box]
    blob[tuple(centre_local - low)] = True
    box = tuple(slice(int(a + s), int(b + s)) for a, b, s in zip(low, high, starts))
    return box, blob, tuple(int(c + s) for c, s in zip(centre_local, starts))


def _pick_centre(rng: np.random.Generator, allowed: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """A random allowed voxel (index into ``allowed``), preferably a radius away from the box faces."""
    shape = np.array(allowed.shape)
    margin = np.minimum(np.floor(radii), (shape - 1) // 4).astype(int)
    candidates = rng.integers(margin, shape - margin, size=(256, 3))
    hits = candidates[allowed[tuple(candidates.T)]]
    if len(hits):
        return hits[0]
    voxels = np.argwhere(allowed)
    return voxels[rng.integers(len(voxels))]


def _blob(rng: np.random.Generator, shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Bool (shape): a roundish blob with irregular edges, rotated at random in-plane."""
    z, y, x = (np.arange(n, dtype=np.float32) - c for n, c in zip(shape, centre))
    angle = rng.uniform(0, math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    y, x = y[:, None], x[None, :]
    along, across = cos * x + sin * y, -sin * x + cos * y
    distance2 = (z[:, None, None] / radii[0]) ** 2 + (along / radii[2])[None] ** 2 + (across / radii[1])[None] ** 2
    edge = 1.0 + 0.22 * _smooth_noise(rng, shape, np.maximum(radii / 2.0, 0.8))
    return distance2 <= np.clip(edge, 0.4, None) ** 2


# ---------------------------------------------------------------------------------------------
# Datasets on disk


def write_dataset(
    output: str | Path, cases: int, modality: str, dims: int, seed: int, size: int | None = None, depth: int = DEFAULT_DEPTH,
    subset_probability: float = SUBSET_PROBABILITY, reports_per_case: int = 1, no_finding_probability: float = NO_FINDING_PROBABILITY,
) -> dict[str, list[str]]:
    """Generate ``cases`` cases and write them under ``output``; returns split -> case names.

    2D: LViT's layout ``{Train,Val,Test}_Folder/{img,labelcol}/<case>.png`` (8-bit image after a
    display window; mask 0/255) and ``{Split}_text.xlsx`` (columns ``Image``, ``Description``).
    3D: ``images/<case>.nii.gz`` (CT int16 HU, MR int16, US uint8; LPS, identity direction,
    non-zero origin), ``masks/<case>.nii.gz`` (uint8 0/1), ``reports/<case>.txt`` and
    ``manifest.csv`` (``image,mask,report,split,case``, paths relative to ``output``).
    Both: ``synth.json`` with the parameters and every case's lesions. Case i is generated from
    ``np.random.default_rng([seed, i])``; the 70/10/20 split is a permutation by ``seed``.

    ``reports_per_case`` > 1 gives each Train case with several lesions up to that many reports in
    all, each naming another non-empty set of its lesions with its own mask (written as case
    ``<case>_r<k>``; 3D rows share the case's image file, 2D rows get a copy of it). The cases
    themselves and the Val and Test splits are the same as with 1. Every file is written atomically.
    """
    size = size or (DEFAULT_SIZE_2D if dims == 2 else DEFAULT_SIZE_3D)
    modality = _modality(modality)
    _check_arguments(modality, dims, size, depth)
    if cases < 1:
        raise TMCAError(f"--cases must be at least 1, not {cases}")
    if seed < 0:
        raise TMCAError(f"--seed must be >= 0, not {seed}")
    if reports_per_case < 1:
        raise TMCAError(f"--reports-per-case must be at least 1, not {reports_per_case}")
    root = Path(output)
    names = [f"{modality.lower()}_{i:0{max(4, len(str(cases - 1)))}d}" for i in range(cases)]
    splits = _assign_splits(cases, seed)
    records = []
    for i, name in enumerate(names):
        case = generate_case(np.random.default_rng([seed, i]), modality, dims, size, depth, subset_probability, no_finding_probability)
        variants = []
        if splits[i] == SPLITS[0] and reports_per_case > 1:
            variants = report_variants(np.random.default_rng([seed, i, 1]), case, reports_per_case - 1)
        named = [(name, case), *((f"{name}_r{k}", variant) for k, variant in enumerate(variants, start=1))]
        for row_name, row in named:
            if dims == 2:
                _write_png_case(root, row_name, splits[i], row)
            else:
                _write_volume_case(root, row_name, row, image=row is case)
        records.append(
            {
                "case": name,
                "split": splits[i],
                "report": case.report,
                "style": case.style,
                "lesions": [asdict(lesion) for lesion in case.lesions],
                "variants": [
                    {"case": row_name, "report": row.report, "described": [lesion.described for lesion in row.lesions]}
                    for row_name, row in named[1:]
                ],
            }
        )
    if dims == 2:
        _write_sheets(root, records)
    else:
        _write_manifest(root, records)
    parameters = {"modality": modality, "dims": dims, "seed": seed, "size": size, "depth": depth if dims == 3 else 1}
    write_text_atomic(root / "synth.json", json.dumps({**parameters, "reports_per_case": reports_per_case, "cases": records}, indent=1))
    return {split: [r["case"] for r in records if r["split"] == split] for split in SPLITS}


def report_variants(rng: np.random.Generator, case: SynthCase, count: int) -> list[SynthCase]:
    """Up to ``count`` copies of ``case`` whose reports name other non-empty sets of its lesions.

    Each copy shares the image and lesions, with ``described``, ``mask`` and ``report`` (in a
    random style) for its own set; the sets differ from each other and from the case's own.
    A case with fewer than two lesions has no variants.
    """
    n = len(case.lesions)
    if n < 2:
        return []
    own = sum(1 << j for j, lesion in enumerate(case.lesions) if lesion.described)
    others = [bits for bits in range(1, 1 << n) if bits != own]
    chosen = [others[j] for j in rng.permutation(len(others))[:count]]
    variants = []
    for bits in chosen:
        lesions = [replace(lesion, described=bool(bits >> j & 1)) for j, lesion in enumerate(case.lesions)]
        mask = np.any([m for m, lesion in zip(case.lesion_masks, lesions) if lesion.described], axis=0).astype(np.uint8)
        style = str(rng.choice(report_styles(case.modality)))
        report = describe([lesion for lesion in lesions if lesion.described], case.modality, style)
        variants.append(replace(case, mask=mask, lesions=lesions, report=report, style=style))
    return variants


def _assign_splits(cases: int, seed: int) -> list[str]:
    """Train/Val/Test for each case index: 70/10/20 (rounded) of a permutation seeded by ``seed``."""
    n_train = round(cases * SPLIT_FRACTIONS[0])
    n_val = round(cases * SPLIT_FRACTIONS[1])
    order = np.random.default_rng(seed).permutation(cases)
    splits = [""] * cases
    for rank, index in enumerate(order):
        splits[index] = SPLITS[0] if rank < n_train else SPLITS[1] if rank < n_train + n_val else SPLITS[2]
    return splits


def display_window(image: np.ndarray, modality: str) -> np.ndarray:
    """uint8 image (same shape) after the modality's display window (``_PNG_WINDOW``)."""
    window = _PNG_WINDOW[_modality(modality)]
    low, high = window if window else (float(np.percentile(image, 0.5)), float(np.percentile(image, 99.8)))
    scaled = (image.astype(np.float32) - low) / max(high - low, 1e-6)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write_png_case(root: Path, name: str, split: str, case: SynthCase) -> None:
    from PIL import Image

    for folder, array in (("img", display_window(case.image, case.modality)), ("labelcol", case.mask * np.uint8(255))):
        path = root / f"{split}_Folder" / folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")


def _write_volume_case(root: Path, name: str, case: SynthCase, image: bool = True) -> None:
    """``masks/<name>.nii.gz``, ``reports/<name>.txt`` and, with ``image``, ``images/<name>.nii.gz``."""
    import SimpleITK as sitk

    dtypes = {"CT": np.int16, "MR": np.int16, "US": np.uint8}
    arrays = [("masks", case.mask)]
    if image:
        arrays.insert(0, ("images", np.round(case.image).astype(dtypes[case.modality])))
    for folder, array in arrays:
        volume = sitk.GetImageFromArray(array)
        spacing_xyz = tuple(float(s) for s in reversed(case.spacing))
        volume.SetSpacing(spacing_xyz)
        volume.SetOrigin(tuple(c - (n - 1) * s / 2.0 for c, n, s in zip(_VOLUME_CENTRE_MM, volume.GetSize(), spacing_xyz)))
        path = root / folder / f"{name}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            sitk.WriteImage(volume, str(tmp), True, 1)
    (root / "reports").mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / "reports" / f"{name}.txt", case.report + "\n")


def _write_sheets(root: Path, records: list[dict]) -> None:
    """``{Split}_text.xlsx`` with columns Image, Description (LViT)."""
    from openpyxl import Workbook

    for split in SPLITS:
        workbook = Workbook()
        sheet = workbook.active
        sheet.append(["Image", "Description"])
        for record in records:
            if record["split"] == split:
                for row in (record, *record["variants"]):
                    sheet.append([f"{row['case']}.png", row["report"]])
        root.mkdir(parents=True, exist_ok=True)
        with atomic_path(root / f"{split}_text.xlsx") as tmp:
            workbook.save(tmp)


def _write_manifest(root: Path, records: list[dict]) -> None:
    """``manifest.csv``: image, mask, report (a .txt path), split, case; paths relative to ``root``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "mask", "report", "split", "case"])
    for record in records:
        image = f"images/{record['case']}.nii.gz"
        for row in (record, *record["variants"]):
            name = row["case"]
            writer.writerow([image, f"masks/{name}.nii.gz", f"reports/{name}.txt", record["split"], name])
    write_text_atomic(root / "manifest.csv", buffer.getvalue())
