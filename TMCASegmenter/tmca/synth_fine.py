"""A histology-like fine-structure dataset: colour images with hundreds of small blobs, one sentence each.

Each image is a textured pink stain background holding TARGET blobs (purple "nuclei") and
DISTRACTOR blobs (brown "pigment") 3-10 pixels wide. Both kinds have the same grey luminance
(ITU-R 601: 0.299 R + 0.587 G + 0.114 B) but another hue, so colour is what tells them apart in
the image. Targets are dense in one or two regions of a 3 x 3 grid and sparse elsewhere; the
sentence says where they are dense. The mask is every target blob (0/255).

Written in LViT's released layout: ``ROOT/{Train,Val,Test}_Folder/{img,labelcol}/<case>.png`` and
``ROOT/{Split}_Folder/{Split}_text.xlsx`` (columns ``Image``, ``Description``), plus
``ROOT/synth.json`` with the parameters and each case's regions and blob counts. Case i is drawn
from ``np.random.default_rng([seed, i])``; the same seed gives the same PNG bytes.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tmca.atomic import atomic_path, write_text_atomic
from tmca.errors import TMCAError

DEFAULT_SIZE = 1000
DEFAULT_CASES = 40  # Train 24, Val 6, Test 10
SPLIT_FRACTIONS = (0.15, 0.25)  # Val, Test; Train takes the rest
MIN_WIDTH, MAX_WIDTH = 3.0, 10.0  # blob diameters in pixels (minor and major axis)
BLOBS_PER_MEGAPIXEL = {"target": 260, "distractor": 240}
DENSE_SHARE = 0.8  # of the targets that fall in the dense regions
MIN_SIZE = 64

REGIONS = {
    (0, 0): "upper left", (0, 1): "upper central", (0, 2): "upper right",
    (1, 0): "left central", (1, 1): "central", (1, 2): "right central",
    (2, 0): "lower left", (2, 1): "lower central", (2, 2): "lower right",
}
_TEMPLATES_ONE = (
    "Dense clusters of small purple nuclei in the {a} region.",
    "Purple-stained nuclei are crowded in the {a} part of the field.",
    "Most of the small purple cells lie in the {a} area.",
    "Hyperchromatic nuclei concentrate in the {a} region of the section.",
    "A dense infiltrate of small purple nuclei occupies the {a} area.",
)
_TEMPLATES_TWO = (
    "Dense clusters of small purple nuclei in the {a} and {b} regions.",
    "Purple-stained nuclei are crowded in the {a} and the {b} parts of the field.",
    "Small purple cells concentrate in two areas: {a} and {b}.",
    "Hyperchromatic nuclei are dense in the {a} region and in the {b} region.",
)
_TARGET_RGB = (118.0, 66.0, 158.0)  # hematoxylin purple
_DISTRACTOR_HUE = 0.08  # brown (hue in [0, 1)); its value is solved for the target's luminance
_BACKGROUND_RGB = (236.0, 184.0, 204.0)  # eosin pink


@dataclass
class FineCase:
    """One image: ``image`` uint8 (H, W, 3), ``mask`` and ``distractors`` bool (H, W), the report and its regions."""

    image: np.ndarray
    mask: np.ndarray
    distractors: np.ndarray
    report: str
    dense_regions: list[str]
    targets: int
    distractor_count: int


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 grey value of ``rgb`` (..., 3): what ``tmca.imageio`` makes of a colour pixel for a grey model."""
    from tmca.imageio import LUMINANCE_WEIGHTS  # here: the command line imports this module for its defaults

    return np.asarray(rgb, dtype=np.float32) @ np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)


def _same_luminance(hue: float, saturation: float, target: np.ndarray) -> np.ndarray:
    """RGB (3,) of ``hue`` and ``saturation`` whose luminance equals that of ``target``."""
    rgb = np.array(colorsys.hsv_to_rgb(hue, saturation, 1.0), dtype=np.float32) * 255.0
    return rgb * (luminance(target) / luminance(rgb))


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smoothed white noise with zero mean and unit std, float32 ``shape``."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-6)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 (H, W, 3): pink stain with coarse density variation, fibres and grain."""
    scale = size / DEFAULT_SIZE
    coarse = _smooth(rng, (size, size), max(2.0, 40.0 * scale))
    fibres = _smooth(rng, (size, size), (max(1.0, 1.5 * scale), max(2.0, 12.0 * scale)))
    tint = _BACKGROUND_RGB + rng.normal(0.0, 6.0, 3)
    stain = 1.0 + 0.06 * coarse + 0.04 * fibres
    image = tint[None, None, :] * stain[..., None]
    return image + rng.normal(0.0, 3.0, (size, size, 3)).astype(np.float32)


def _ellipse(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A filled ellipse footprint (bool (n, n)) 3-10 pixels across each axis, random angle; and its half size."""
    minor = rng.uniform(MIN_WIDTH, 7.0)
    major = rng.uniform(minor, MAX_WIDTH)
    angle = rng.uniform(0.0, np.pi)
    half = int(np.ceil(major / 2.0))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    return (u / (major / 2.0)) ** 2 + (v / (minor / 2.0)) ** 2 <= 1.0, half


def _region_of(y: float, x: float, size: int) -> tuple[int, int]:
    return min(int(3 * y / size), 2), min(int(3 * x / size), 2)


def _place(rng: np.random.Generator, size: int, occupied: np.ndarray, count: int, dense: list[tuple[int, int]] | None) -> list[tuple]:
    """Up to ``count`` non-touching ellipses; with ``dense``, DENSE_SHARE of them inside those regions."""
    placed = []
    third = size / 3.0
    for _ in range(count * 20):
        if len(placed) >= count:
            break
        footprint, half = _ellipse(rng)
        if dense is not None and rng.random() < DENSE_SHARE:
            row, col = dense[int(rng.integers(len(dense)))]
            y, x = rng.uniform(row * third, (row + 1) * third), rng.uniform(col * third, (col + 1) * third)
        else:
            y, x = rng.uniform(0, size), rng.uniform(0, size)
        cy, cx = int(y), int(x)
        if cy - half - 1 < 0 or cx - half - 1 < 0 or cy + half + 2 > size or cx + half + 2 > size:
            continue
        window = occupied[cy - half - 1:cy + half + 2, cx - half - 1:cx + half + 2]
        if window.any():  # keep one free pixel around every blob: each blob is its own component
            continue
        occupied[cy - half:cy + half + 1, cx - half:cx + half + 1] |= footprint
        placed.append((cy, cx, half, footprint))
    return placed


def _paint(image: np.ndarray, blobs: list[tuple], colour: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None:
    """Draw ``blobs`` into ``image`` in ``colour`` with chromatin-like grain; mark them in ``out``."""
    for cy, cx, half, footprint in blobs:
        box = (slice(cy - half, cy + half + 1), slice(cx - half, cx + half + 1))
        shade = colour * rng.uniform(0.94, 1.06) + rng.normal(0.0, 5.0, footprint.shape + (3,))
        image[box][footprint] = shade[footprint]
        out[box] |= footprint


def generate_fine_case(rng: np.random.Generator, size: int = DEFAULT_SIZE) -> FineCase:
    """One image of ``size`` x ``size`` pixels with its target mask, distractor mask and sentence."""
    if size < MIN_SIZE:
        raise TMCAError(f"--size must be at least {MIN_SIZE} for fine-structure images, not {size}")
    image = _background(rng, size)
    keys = list(REGIONS)
    dense = [keys[int(k)] for k in rng.permutation(len(keys))[: 1 + int(rng.random() < 0.35)]]
    megapixels = size * size / 1e6
    target_rgb = np.array(_TARGET_RGB, dtype=np.float32) * rng.uniform(0.93, 1.07)
    distractor_rgb = _same_luminance(_DISTRACTOR_HUE + rng.uniform(-0.02, 0.02), 0.72, target_rgb)
    occupied = np.zeros((size, size), dtype=bool)
    targets = _place(rng, size, occupied, max(8, round(BLOBS_PER_MEGAPIXEL["target"] * megapixels)), dense)
    distractors = _place(rng, size, occupied, max(8, round(BLOBS_PER_MEGAPIXEL["distractor"] * megapixels)), None)
    mask = np.zeros((size, size), dtype=bool)
    distractor_mask = np.zeros((size, size), dtype=bool)
    _paint(image, targets, target_rgb, rng, mask)
    _paint(image, distractors, distractor_rgb, rng, distractor_mask)
    names = [REGIONS[key] for key in sorted(dense)]
    templates = _TEMPLATES_ONE if len(names) == 1 else _TEMPLATES_TWO
    report = templates[int(rng.integers(len(templates)))].format(a=names[0], b=names[-1])
    report = report[0].upper() + report[1:]
    pixels = np.round(np.clip(image, 0.0, 255.0)).astype(np.uint8)
    return FineCase(pixels, mask, distractor_mask, report, names, len(targets), len(distractors))


def split_counts(cases: int) -> tuple[int, int, int]:
    """(Train, Val, Test) counts: 60/15/25 rounded, at least one each from 3 cases on (40 -> 24, 6, 10)."""
    if cases < 3:
        raise TMCAError(f"--cases must be at least 3 for fine-structure data (one Train, Val and Test image), not {cases}")
    val = max(1, round(cases * SPLIT_FRACTIONS[0]))
    test = max(1, round(cases * SPLIT_FRACTIONS[1]))
    return cases - val - test, val, test


def write_fine_dataset(output: str | Path, cases: int = DEFAULT_CASES, seed: int = 0, size: int | None = None) -> dict[str, list[str]]:
    """Write ``cases`` images under ``output`` in LViT's released layout; returns split -> case names."""
    from openpyxl import Workbook
    from PIL import Image

    size = size or DEFAULT_SIZE
    if seed < 0:
        raise TMCAError(f"--seed must be >= 0, not {seed}")
    counts = split_counts(cases)
    root = Path(output)
    order = np.random.default_rng(seed).permutation(cases)
    split_of = {}
    for rank, index in enumerate(order):
        split_of[int(index)] = "Train" if rank < counts[0] else "Val" if rank < counts[0] + counts[1] else "Test"
    width = max(4, len(str(cases - 1)))
    records = []
    for i in range(cases):
        case = generate_fine_case(np.random.default_rng([seed, i]), size)
        name, split = f"fine_{i:0{width}d}", split_of[i]
        for folder, array in (("img", case.image), ("labelcol", case.mask.astype(np.uint8) * np.uint8(255))):
            path = root / f"{split}_Folder" / folder / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
        records.append({"case": name, "split": split, "report": case.report, "dense_regions": case.dense_regions,
                        "targets": case.targets, "distractors": case.distractor_count})
    for split in ("Train", "Val", "Test"):
        workbook = Workbook()
        sheet = workbook.active
        sheet.append(["Image", "Description"])
        for record in records:
            if record["split"] == split:
                sheet.append([f"{record['case']}.png", record["report"]])
        folder = root / f"{split}_Folder"
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{split}_text.xlsx") as tmp:
            workbook.save(tmp)
    parameters = {"kind": "fine-structure", "seed": seed, "size": size, "cases": records}
    write_text_atomic(root / "synth.json", json.dumps(parameters, indent=1))
    return {split: [r["case"] for r in records if r["split"] == split] for split in ("Train", "Val", "Test")}
