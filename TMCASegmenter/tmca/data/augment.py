"""Training augmentation: which augmentations a dataset allows, native-resolution crops, and the transforms.

- **Flips and 90-degree rotations** only when no report of the dataset names a side or a position
  (:func:`names_position`): "left", "upper", "anterior", ... must stay true of the augmented image.
  When reports do, axial and coronal slices are still mirrored left to right with "left" and "right"
  swapped in the report (:func:`swap_sides`), so the words stay true and every case teaches both sides.
- **Native-resolution crops** when the model tiles large slices (``large_images="tile"``): each item
  is an ``image_size`` window of the slice at its own pixel scale, usually one that contains target
  (:func:`native_crop`), instead of the whole slice squeezed to ``image_size``. ``tmca train``
  chooses tiling when the slices are much larger than the model's input and no report names a side
  or position (a crop does not show where in the slice it lies): :func:`choose_large_images`.
- Always: a small random affine (rotation, scaling), intensity scale, shift and contrast, Gaussian
  noise; on 3-channel images also colour (stain) jitter. Every transform takes (C, S, S) images with
  any C and a (1, S, S) mask.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from tmca.findings import SIDES, ZONES
from tmca.terminology import stated_laterality

if TYPE_CHECKING:
    from tmca.data.datasets import Sample

TARGET_CROP_PROBABILITY = 0.8  # of native crops, the share centred near a random target pixel (when the slice has target)
SMALL_TARGET_PIXELS = 4.0  # targets narrower than this after resizing are tiled instead
LARGE_SLICE_FACTOR = 1.5  # slices whose smaller side exceeds this many model sizes are tiled rather than squeezed
ROTATION_DEGREES_POSITIONAL = 10.0  # small enough that "upper" and "left" stay true
ROTATION_DEGREES_FREE = 45.0  # with 90-degree rotations: every orientation
SCALE_RANGE = 0.15
# Words that place a finding in the image; the side words (left, right, both, bilateral) come from tmca.terminology.
POSITION_WORDS = tuple(sorted({*SIDES, *ZONES} - {"middle"} | {
    "anterior", "posterior", "superior", "inferior", "medial", "lateral", "top", "bottom", "apex", "apical", "apices",
    "basal", "cranial", "caudal", "dorsal", "ventral", "frontal", "occipital",
}))  # fmt: skip
_POSITION = re.compile(r"\b(?:" + "|".join(POSITION_WORDS) + r")\b", re.IGNORECASE)
_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)
MIRROR_PLANES = ("axial", "coronal")  # planes whose horizontal axis runs from one side of the patient to the other


def names_position(report: str) -> bool:
    """Whether ``report`` names a side or a position in the image ("left", "upper zone", "anterior", ...)."""
    return stated_laterality(report) is not None or _POSITION.search(report) is not None


def swap_sides(report: str) -> str:
    """``report`` with "left" and "right" exchanged, keeping their case: the report of the mirrored image."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other

    return _SIDE_WORD.sub(swap, report)


@dataclass
class AugmentationPlan:
    """Which augmentations a training set gets, and why.

    ``flips``: flips and 90-degree rotations (False when ``positional_reports`` of ``reports`` name a
    side or position); ``mirror``: without flips, left-right mirroring with the side words swapped in
    the report (slices of a plane in MIRROR_PLANES); ``crops``: native-resolution crops of ``crop_size``
    (the model tiles large slices).
    """

    flips: bool
    positional_reports: int
    reports: int
    crops: bool = False
    crop_size: int = 0
    mirror: bool = False

    @property
    def rotation_degrees(self) -> float:
        return ROTATION_DEGREES_FREE if self.flips else ROTATION_DEGREES_POSITIONAL

    def describe(self) -> str:
        """One line for the log: what is on, what is off and why."""
        on = []
        if self.crops:
            on.append(f"native-resolution {self.crop_size}-px crops (large_images=tile)")
        if self.flips:
            on.append("flips and 90-degree rotations")
        if self.mirror:
            on.append("left-right mirroring with 'left' and 'right' swapped in the report")
        on += [f"rotation +-{self.rotation_degrees:g} degrees", f"scale +-{100 * SCALE_RANGE:g} %", "intensity and contrast",
               "noise", "colour jitter on 3-channel images"]
        text = "augmentation: " + ", ".join(on)
        if not self.flips:
            text += (f"; flips and 90-degree rotations off: {self.positional_reports} of {self.reports} reports "
                     "name a side or position")
        else:
            text += f"; flips on: no report of the {self.reports} names a side or position"
        return text


def plan_augmentation(reports: Sequence[str], crops: bool = False, crop_size: int = 0, plane: str = "axial") -> AugmentationPlan:
    """The plan for a training set with these ``reports`` of ``plane`` slices (flips only when none names a
    side or position; otherwise mirroring with the side words swapped, on axial and coronal slices)."""
    positional = sum(names_position(report) for report in reports)
    return AugmentationPlan(flips=positional == 0, positional_reports=positional, reports=len(reports), crops=crops, crop_size=crop_size,
                            mirror=positional > 0 and plane in MIRROR_PLANES)


def choose_large_images(samples: Sequence[Sample], image_size: int, plane: str = "axial") -> tuple[str, str]:
    """("tile" or "resize", why) for a model of ``image_size`` trained on ``samples``.

    "tile" when the median smaller side of the training slices exceeds LARGE_SLICE_FACTOR x
    ``image_size`` and either the typical target would be narrower than SMALL_TARGET_PIXELS after
    resizing (fine structures vanish when squeezed) or no report names a side or position (a
    native-resolution crop does not show where in the slice it lies, so such reports need the whole
    slice); else "resize".
    """
    from tmca.choices import PLANE_AXIS
    from tmca.data.datasets import image_shape

    sides = []
    for sample in samples:
        shape = list(image_shape(sample.image))
        if len(shape) == 3:
            del shape[PLANE_AXIS[plane]]
        sides.append(min(shape))
    if not sides:
        return "resize", "no training slices"
    side = float(np.median(sides))
    if side <= LARGE_SLICE_FACTOR * image_size:
        return "resize", f"median slice side {side:g} px is at most {LARGE_SLICE_FACTOR:g} x the model's {image_size} px"
    positional = sum(names_position(sample.report) for sample in samples)
    width = typical_target_width(samples)
    if width is not None and width * image_size / side < SMALL_TARGET_PIXELS:
        return "tile", (f"median slice side {side:g} px > {LARGE_SLICE_FACTOR:g} x {image_size} px and the typical target, "
                        f"{width:.1f} px wide, would be {width * image_size / side:.1f} px after resizing: training on "
                        "native-resolution crops")
    if positional:
        return "resize", (f"median slice side {side:g} px, but {positional} of {len(samples)} reports name a side or position, "
                          f"which a crop cannot show: slices are resized to {image_size} px")
    return "tile", f"median slice side {side:g} px > {LARGE_SLICE_FACTOR:g} x {image_size} px: training on native-resolution crops"


def typical_target_width(samples: Sequence[Sample], limit: int = 8) -> float | None:
    """Median equivalent-circle diameter (px, native) of the target components in up to ``limit`` 2D masks, or None
    (volumes are not measured: their slices' targets are judged by the side rule alone)."""
    from scipy import ndimage

    from tmca.data.datasets import read_mask

    widths: list[float] = []
    for sample in list(samples)[:limit]:
        mask = read_mask(sample.mask)
        if mask.ndim == 3 and mask.shape[0] > 1:
            continue
        labels, count = ndimage.label(mask.reshape(mask.shape[-2:]))
        if count:
            widths += list(2 * np.sqrt(np.bincount(labels.ravel())[1:] / math.pi))
    return float(np.median(widths)) if widths else None


def native_crop(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` window at native resolution: image (..., H, W), mask (H, W) -> (..., size, size), (size, size).

    With probability TARGET_CROP_PROBABILITY (when the mask has target) the window contains a random
    target pixel at a random place; otherwise it lies anywhere. Slices smaller than ``size`` are
    zero-padded at the bottom and right.
    """
    height, width = mask.shape
    pad_y, pad_x = max(0, size - height), max(0, size - width)
    if pad_y or pad_x:
        image = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(0, pad_y), (0, pad_x)])
        mask = np.pad(mask, [(0, pad_y), (0, pad_x)])
        height, width = mask.shape
    if mask.any() and rng.random() < TARGET_CROP_PROBABILITY:
        rows, cols = np.nonzero(mask)
        pick = int(rng.integers(len(rows)))
        top = int(np.clip(rows[pick] - rng.integers(size), 0, height - size))
        left = int(np.clip(cols[pick] - rng.integers(size), 0, width - size))
    else:
        top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    return image[(..., *window)], mask[window]


class Augmentation:
    """Random transforms of ``{"image": (C, S, S) in [0, 1], "mask": (1, S, S) in {0, 1}, "report": str}``
    (the report optional) by an :class:`AugmentationPlan`; returns float tensors, the image clamped to
    [0, 1], the mask binary, and the report, its sides swapped when the plan mirrored the image.

    Seed with :meth:`set_random_state` (SliceDataset does, per process) for repeatable runs.
    """

    def __init__(self, plan: AugmentationPlan) -> None:
        from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised, RandRotate90d,
                                      RandScaleIntensityd, RandShiftIntensityd)  # fmt: skip

        self.plan = plan
        keys = ("image", "mask")
        geometry = []
        if plan.flips:
            geometry += [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
                         RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(0, 1))]  # fmt: skip
        geometry.append(
            RandAffined(
                keys=keys,
                prob=0.8,
                rotate_range=math.radians(plan.rotation_degrees),
                scale_range=(SCALE_RANGE, SCALE_RANGE),
                mode=("bilinear", "nearest"),
                padding_mode="reflection" if plan.flips else "zeros",  # a mirrored border is harmless only where flips are
            )
        )
        intensity = [
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
            RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=0.3),
            RandGaussianNoised(keys="image", std=0.02, prob=0.5),
        ]
        self.transforms = Compose([*geometry, *intensity])
        self.rng = np.random.default_rng(0)

    def set_random_state(self, seed: int) -> None:
        self.transforms.set_random_state(seed=seed)
        self.rng = np.random.default_rng(seed)

    def __call__(self, data: dict) -> dict:
        image, mask, report = data["image"], data["mask"], data.get("report")
        if self.plan.mirror and self.rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
            report = None if report is None else swap_sides(report)
        out = self.transforms({"image": image, "mask": mask})
        image = out["image"].as_subclass(torch.Tensor).float()
        if image.shape[0] == 3:
            image = colour_jitter(image, self.rng)
        result = {"image": image.clamp(0.0, 1.0), "mask": (out["mask"].as_subclass(torch.Tensor) > 0.5).float()}
        return result if report is None else {**result, "report": report}


def colour_jitter(image: torch.Tensor, rng: np.random.Generator, probability: float = 0.8) -> torch.Tensor:
    """Stain and colour variation of a (3, S, S) image in [0, 1]: per-channel gain (0.9-1.1) and
    offset (+-0.04), and saturation (0.7-1.3 of the distance from grey); unchanged with 1 - ``probability``."""
    if rng.random() >= probability:
        return image
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, 3)).float()[:, None, None]
    offset = torch.from_numpy(rng.uniform(-0.04, 0.04, 3)).float()[:, None, None]
    grey = image.mean(dim=0, keepdim=True)
    saturated = grey + float(rng.uniform(0.7, 1.3)) * (image - grey)
    return saturated * gain + offset
