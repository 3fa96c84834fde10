"""Evaluation: Dice, IoU and HD95 per case, with correct or shuffled reports."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk
import torch

from tmca.atomic import write_text_atomic
from tmca.data.datasets import read_mask
from tmca.imageio import LoadedImage, load_image
from tmca.inference import Segmenter
from tmca.metrics import dice, hd95, iou
from tmca.preprocess import resize_slices

log = logging.getLogger(__name__)


@dataclass
class CaseScore:
    case: str
    report: str
    dice: float
    iou: float
    hd95: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def derangement(count: int, seed: int) -> list[int]:
    """A seeded permutation that moves every index (reports never stay with their own image)."""
    if count < 2:
        return list(range(count))
    generator = np.random.default_rng(seed)
    while True:
        order = generator.permutation(count)
        if not np.any(order == np.arange(count)):
            return order.tolist()


def resize_case(image: LoadedImage, mask: np.ndarray, size: int) -> tuple[LoadedImage, np.ndarray]:
    """Resize every slice of image and mask (z, y, x) to size x size (bilinear without antialiasing /
    nearest), as LViT and GuideDecoder evaluate; the model's own input preparation follows in ``segment``.
    A colour image's ``rgb`` (z, y, x, 3) is resized alike (float32)."""
    array = sitk.GetArrayFromImage(image.image)  # (z, y, x)
    resized = resize_slices(torch.from_numpy(array), size, antialias=False)[:, 0].numpy()
    rgb = None
    if image.rgb is not None:
        channels_first = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image.rgb, -1, 1), dtype=np.float32))  # (z, 3, y, x)
        rgb = np.ascontiguousarray(np.moveaxis(resize_slices(channels_first, size, antialias=False).numpy(), 1, -1))
    resized_mask = resize_slices(torch.from_numpy(mask.astype(np.float32)), size, mode="nearest")[:, 0].numpy() > 0.5
    out = sitk.GetImageFromArray(resized)
    spacing = image.image.GetSpacing()
    out.SetSpacing((spacing[0] * array.shape[2] / size, spacing[1] * array.shape[1] / size, spacing[2]))
    out.SetOrigin(image.image.GetOrigin())
    out.SetDirection(image.image.GetDirection())
    return LoadedImage(out, image.modality, image.source, image.series_uid, image.was_2d, image.was_rgb, rgb), resized_mask


def evaluate(
    segmenter: Segmenter,
    samples: list,
    shuffle_text: bool = False,
    eval_size: int | None = None,
    seed: int = 0,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Score ``samples`` (objects with image, mask, report, case_id); returns means and per-case scores.

    eval_size: score at eval_size x eval_size: image and mask are resized first (:func:`resize_case`), or,
    when the segmenter slides a window over large slices, its prediction at native resolution and the
    mask are (nearest), so that the model sees the image at the scale it was trained on.
    """
    reports = [sample.report for sample in samples]
    if shuffle_text:
        reports = [reports[i] for i in derangement(len(reports), seed)]
    scores: list[CaseScore] = []
    for index, (sample, report) in enumerate(zip(samples, reports)):
        image = load_image(sample.image)
        truth = read_mask(sample.mask)  # may be empty ("No focal lesion."), which load_image would refuse
        if eval_size and segmenter.large_images == "tile":  # windows at native resolution, then scored at eval_size
            predicted = segmenter.segment(image, report).masks.any(axis=0)
            image, truth = resize_case(image, truth, eval_size)
            predicted = resize_slices(torch.from_numpy(predicted.astype(np.float32)), eval_size, mode="nearest")[:, 0].numpy() > 0.5
        else:
            if eval_size:
                image, truth = resize_case(image, truth, eval_size)
            predicted = segmenter.segment(image, report).masks.any(axis=0)
        spacing = image.image.GetSpacing()[::-1]
        scores.append(CaseScore(sample.case_id, report, dice(predicted, truth), iou(predicted, truth), hd95(predicted, truth, spacing)))
        if progress:
            progress(index + 1, len(samples), "evaluating")
    finite_hd = [s.hd95 for s in scores if math.isfinite(s.hd95)]
    return {
        "dice": _mean([s.dice for s in scores]),
        "iou": _mean([s.iou for s in scores]),
        "hd95": _mean(finite_hd),
        "hd95_undefined": len(scores) - len(finite_hd),
        "n": len(scores),
        "shuffle_text": shuffle_text,
        "eval_size": eval_size,
        "cases": [s.as_dict() for s in scores],
    }


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4) if values else float("nan")


def write_json(path: str | Path, results: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(results, indent=2, allow_nan=True))
