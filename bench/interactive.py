"""Clicks to Dice: the standard protocol of interactive segmentation, on held-out cases.

Each case starts from the report-only prediction; then one simulated click at a time is placed at
the centre of the largest error region (positive inside a missed part, negative inside a false
part: ``tmca.interactive.next_click``), and the finding is refined with every click so far, up to
``--clicks`` clicks. Prints and writes the mean Dice after 0, 1, 2, 3, 5, 10 clicks, NoC@85 and
NoC@90 (mean number of clicks to reach that Dice; the maximum when never), how often a click lowered
Dice, and, for cases where the report-only mask missed the target, how often one click recovered it
(Dice at least 0.5, or at least half of the clicked lesion inside the mask).

    python bench/interactive.py --model Resources/Models/tmca-demo --data runs/demo-data --format csv --json interactive.json
    python bench/interactive.py --model Resources/Models/tmca-demo --real /work/shared/data/real
    python bench/interactive.py ... --wrong-reports   # each case gets another case's report: the report misses, clicks must recover

Cases without target (a "No focal lesion." report) are skipped and listed. ``--real`` runs the real MRIs of the shared data (image + label files, one finding per label) instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import tmca
from tmca.atomic import write_text_atomic
from tmca.data import load_split
from tmca.data.datasets import read_mask
from tmca.imageio import load_image
from tmca.inference import Segmenter
from tmca.interactive import next_click
from tmca.metrics import dice

REPORTED_CLICKS = (0, 1, 2, 3, 5, 10)
MISSED_DICE = 0.1  # a report-only mask below this Dice missed the target
RECOVERED_DICE = 0.5


def click_curve(segmenter: Segmenter, image, report: str, truth: np.ndarray, clicks: int) -> tuple[list[float], list[float], float | None]:
    """Dice after 0..clicks clicks, the seconds each refine took, and the share of the lesion under the
    first click that the mask holds after it (None when the first click was negative)."""
    result = segmenter.segment(image, report, split_findings=False)
    reference = result.reference
    scores, seconds, placed, lesion_recall = [dice(result.masks[0], truth)], [], [], None
    for _ in range(clicks):
        click = next_click(result.masks[0], truth)
        if click is None:  # perfect: every later click would change nothing
            scores.append(scores[-1])
            continue
        (z, y, x), positive = click
        placed.append(tmca.Click(reference.TransformIndexToPhysicalPoint((int(x), int(y), int(z))), positive))
        started = time.perf_counter()
        result = segmenter.refine(result, 0, placed)
        seconds.append(time.perf_counter() - started)
        scores.append(dice(result.masks[0], truth))
        if len(placed) == 1 and positive:
            lesion_recall = clicked_lesion_recall(result.masks[0], truth, (z, y, x))
    return scores, seconds, lesion_recall


def clicked_lesion_recall(mask: np.ndarray, truth: np.ndarray, voxel: tuple[int, int, int]) -> float:
    """The share of the connected part of ``truth`` holding ``voxel`` that ``mask`` covers."""
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(truth.astype(np.uint8)), True))
    lesion = labels == labels[voxel]
    return float(np.count_nonzero(mask & lesion) / max(np.count_nonzero(lesion), 1))


def clicks_to_reach(curve: list[float], target: float) -> int:
    reached = [count for count, score in enumerate(curve) if score >= target]
    return reached[0] if reached else len(curve) - 1


def summarise(curves: list[list[float]], seconds: list[float], recalls: list[float | None]) -> dict:
    curves_array = np.array(curves)
    drops = np.diff(curves_array, axis=1) < -1e-6
    missed = [(curve, recall) for curve, recall in zip(curves, recalls) if curve[0] < MISSED_DICE]
    return {
        "n": len(curves),
        "dice_after": {str(k): round(float(curves_array[:, k].mean()), 4) for k in REPORTED_CLICKS if k < curves_array.shape[1]},
        "noc85": round(float(np.mean([clicks_to_reach(c, 0.85) for c in curves])), 2),
        "noc90": round(float(np.mean([clicks_to_reach(c, 0.90) for c in curves])), 2),
        "mean_change_per_click": [round(float(v), 4) for v in np.diff(curves_array.mean(axis=0))],
        "clicks_that_lowered_dice": int(drops.sum()),
        "missed_cases": len(missed),
        "missed_recovered_by_one_click": sum(1 for c, _ in missed if len(c) > 1 and c[1] >= RECOVERED_DICE),
        "missed_lesion_half_recovered_by_one_click": sum(1 for _, recall in missed if recall is not None and recall >= 0.5),
        "missed_lesion_recall_after_one_click": round(float(np.mean([r for _, r in missed if r is not None])), 4) if missed else None,
        "refine_seconds_median": round(float(np.median(seconds)), 3) if seconds else None,
        "refine_seconds_max": round(float(np.max(seconds)), 3) if seconds else None,
    }


def with_wrong_reports(cases: list[tuple]) -> list[tuple]:
    """Each case with the report of the nearest earlier case (cyclically) that has a target and another report."""
    reports = [case[2] for case in cases if case[3].any()]  # "No focal lesion." would give the model nothing to refine
    moved = []
    for index, (name, image, report, truth) in enumerate(cases):
        others = [reports[(index - step) % len(reports)] for step in range(1, len(reports) + 1)]
        moved.append((name, image, next((other for other in others if other != report), report), truth))
    return moved


def dataset_cases(data: Path, fmt: str, split: str, limit: int | None):
    samples = load_split(data, fmt, split)[:limit]
    for sample in samples:
        yield sample.case_id, load_image(sample.image), sample.report, read_mask(sample.mask) > 0


def real_cases(shared: Path):
    """(name, image, report, truth) for each labelled real MRI: ``NAME_image.nrrd`` beside ``NAME_label.nrrd``."""
    for image_path in sorted(shared.glob("*_image.nrrd")):
        label = image_path.with_name(image_path.name.replace("_image", "_label"))
        if label.is_file():
            name = image_path.name.removesuffix("_image.nrrd")
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0
            yield name, load_image(image_path, modality="MR"), f"Lesion in the {name.rstrip('0123456789')}.", truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--format", default="csv")
    parser.add_argument("--split", default="Test")
    parser.add_argument("--real", type=Path, help="folder of real MRIs with label files instead of --data")
    parser.add_argument("--cases", type=int, help="use the first N cases")
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--wrong-reports", action="store_true", help="give each case the previous case's report, so the "
                        "report-only mask misses the target and the clicks must recover it")
    args = parser.parse_args()
    segmenter = Segmenter(args.model, device="cpu")
    if not segmenter.can_refine:
        raise SystemExit(f"model {segmenter.model_path} has no click inputs")
    cases = real_cases(args.real) if args.real else dataset_cases(args.data, args.format, args.split, args.cases)
    if args.wrong_reports:
        cases = with_wrong_reports(list(cases))
    curves, seconds, names, recalls = [], [], [], []
    skipped = []
    for name, image, report, truth in cases:
        if not truth.any():  # "No focal lesion.": nothing to click on
            skipped.append(name)
            continue
        curve, times, recall = click_curve(segmenter, image, report, truth, args.clicks)
        curves.append(curve)
        recalls.append(recall)
        seconds += times
        names.append(name)
        print(name, " ".join(f"{score:.3f}" for score in curve), flush=True)
    summary = {"model": str(segmenter.model_path), "data": str(args.real or args.data), "wrong_reports": args.wrong_reports, **summarise(curves, seconds, recalls),
               "skipped_without_target": skipped,
               "cases": {name: [round(s, 4) for s in curve] for name, curve in zip(names, curves)}}
    print(json.dumps({k: v for k, v in summary.items() if k != "cases"}, indent=2))
    if args.json:
        write_text_atomic(args.json, json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
