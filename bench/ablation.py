"""Ablation of TMCA's components: same data, same step budget, same seed; Dice with correct and
shuffled reports on the held-out split, overall and on the cases where the text must pick the target.

    python bench/ablation.py --data runs/ablation-data --output runs/ablation [--steps 300]

Prints a Markdown table (docs/ABLATION.md holds the last one with its command and machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from tmca.commands.train import ABLATIONS

sys.path.insert(0, str(Path(__file__).parent))
from demo_grounding import mean_dice, subset_cases  # noqa: E402

NAMES = {"none": "TMCA (full)", "no-tsd": "no TSD", "no-multilevel": "no multi-level", "no-lgte": "no LGTE", "image-only": "image only"}


def train(args: argparse.Namespace, ablation: str) -> Path:
    run = args.output / ablation
    if not (run / "best" / "config.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "tmca.cli", "train", "--data", str(args.data), "--format", args.format, "--output", str(run),
             "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps // args.epochs),
             "--batch-size", "16", "--seed", str(args.seed), "--patience", "100", "--ablation", ablation, "--progress", "json"],
            check=True, stdout=subprocess.DEVNULL,
        )
    return run / "best"


def evaluate(args: argparse.Namespace, model: Path, shuffle: bool) -> dict:
    out = args.output / f"{model.parent.name}{'-shuffled' if shuffle else ''}.json"
    command = [sys.executable, "-m", "tmca.cli", "evaluate", "--model", str(model), "--data", str(args.data), "--format", args.format,
               "--split", "Test", "--json", str(out), "--progress", "json"] + (["--shuffle-text"] if shuffle else [])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--format", default="lvit")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    subset = subset_cases(args.data)
    rows = []
    for ablation in ABLATIONS:
        started = time.monotonic()
        model = train(args, ablation)
        correct, shuffled = evaluate(args, model, False), evaluate(args, model, True)
        picked = subset & {case["case"] for case in correct["cases"]}
        rows.append(
            f"| {NAMES[ablation]} | {correct['dice']:.3f} | {shuffled['dice']:.3f} | {correct['dice'] - shuffled['dice']:+.3f} | "
            f"{mean_dice(correct, picked):.3f} | {mean_dice(shuffled, picked):.3f} | {correct['hd95']:.1f} | {time.monotonic() - started:.0f} s |"
        )
        print(rows[-1], flush=True)
    print(f"\nmachine: {platform.machine()}, {platform.python_version()}; test cases: {correct['n']}, of which {len(picked)} "
          "hold several lesions and a report that names only some")
    print("| model | Dice | Dice, shuffled reports | drop | Dice, subset cases | subset, shuffled | HD95 (px) | time |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
