"""Grounding check of a model on held-out synthetic cases (``tmca synth`` data with its synth.json).

Scores every Test case with its own report and with a shuffled one, and separately the cases that
hold several lesions of which the report names only some (the text must pick the target).

    python bench/demo_grounding.py --model Resources/Models/tmca-demo --data runs/demo-data --format csv
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np

from tmca.atomic import write_text_atomic
from tmca.data import load_split
from tmca.evaluation import evaluate
from tmca.inference import Segmenter


def subset_cases(data: Path) -> set[str]:
    """Cases with two or more lesions where the report describes a non-empty strict subset."""
    meta = json.loads((data / "synth.json").read_text())
    chosen = set()
    for case in meta["cases"]:
        described = [lesion["described"] for lesion in case["lesions"]]
        if len(described) >= 2 and 0 < sum(described) < len(described):
            chosen.add(case["case"])
    return chosen


def mean_dice(results: dict, cases: set[str] | None = None) -> float:
    values = [c["dice"] for c in results["cases"] if cases is None or c["case"] in cases]
    return round(float(np.mean(values)), 4) if values else float("nan")


def write_per_case(path: Path, correct: dict, shuffled: dict, subset: set[str]) -> None:
    shuffled_dice = {c["case"]: c["dice"] for c in shuffled["cases"]}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "subset", "dice_correct", "dice_shuffled", "report"])
    for c in correct["cases"]:
        writer.writerow([c["case"], c["case"] in subset, round(c["dice"], 4), round(shuffled_dice[c["case"]], 4), c["report"]])
    write_text_atomic(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--format", default="csv")
    parser.add_argument("--split", default="Test")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--per-case", type=Path, help="write a CSV of every case: subset, Dice correct, Dice shuffled, report")
    args = parser.parse_args()
    samples = load_split(args.data, args.format, args.split)
    segmenter = Segmenter(args.model, device="cpu")
    correct = evaluate(segmenter, samples)
    shuffled = evaluate(segmenter, samples, shuffle_text=True, seed=0)
    subset = subset_cases(args.data) & {s.case_id for s in samples}
    summary = {
        "model": args.model,
        "data": str(args.data),
        "split": args.split,
        "n": correct["n"],
        "dice_correct": correct["dice"],
        "dice_shuffled": shuffled["dice"],
        "iou_correct": correct["iou"],
        "hd95_correct": correct["hd95"],
        "subset_n": len(subset),
        "subset_dice_correct": mean_dice(correct, subset),
        "subset_dice_shuffled": mean_dice(shuffled, subset),
    }
    print(json.dumps(summary, indent=2))
    if args.per_case:
        write_per_case(args.per_case, correct, shuffled, subset)
    if args.json:
        write_text_atomic(args.json, json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
