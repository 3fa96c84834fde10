"""Learn from corrections: does fine-tuning on a few corrected findings help a site whose scans differ?

Run by hand (minutes on CPU); results go to docs/ACCURACY.md::

    python bench/finetune.py --work runs/bench-finetune --sizes 25 10 50 --json runs/bench-finetune/results.json

The base model is the bundled demo model (synthetic chest CT, CT window [-1000, 1000] HU). The
simulated site has another CT scanner profile (:func:`site_scan`): an uncalibrated, low-contrast
reconstruction (HU x 0.6 - 250) with more noise (sigma 35 HU) and ground-glass nodules (the lesion
voxels pulled two thirds of the way towards the lung background). Corrections are built with
:func:`tmca.site.add_example` from the phantoms' true masks, one per described finding. Every
size gets the same Val split (for the promotion rule) and is scored on the same held-out site
cases and on held-out cases of the base model's own kind of data (forgetting), base and
fine-tuned side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tmca.data import load_split
from tmca.evaluation import evaluate
from tmca.finetune import FinetuneOptions, finetune
from tmca.inference import Segmenter
from tmca.models import resolve_model
from tmca.site import add_example
from tmca.synth import SynthCase, describe, generate_case, write_dataset

SIZE, DEPTH = 80, 40  # the demo data's field of view (160 x 160 x 80 voxels) on a coarser grid: cheaper to score on 2 cores
SITE_SEED, BASE_SEED, REPLAY_SEED = 21, 11, 0


def site_scan(case: SynthCase, rng: np.random.Generator) -> np.ndarray:
    """The site's scanner: ground-glass lesions, then HU x 0.6 - 250 and extra noise (sigma 35)."""
    image = case.image.astype(np.float32).copy()
    lesions = np.zeros(image.shape, dtype=bool)
    for mask in case.lesion_masks:
        lesions |= mask
    image[lesions] = image[lesions] + (2.0 / 3.0) * (-800.0 - image[lesions])
    image = 0.6 * image - 250.0 + 35.0 * rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image, -1024.0, 3071.0)


def _volume(array: np.ndarray, case: SynthCase) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in reversed(case.spacing)))
    return image


def _site_cases(start: int, count: int):
    for i in range(start, start + count):
        case = generate_case(np.random.default_rng([SITE_SEED, i]), "CT", 3, SIZE, DEPTH, subset_probability=0.8, no_finding_probability=0.0)
        if case.mask.any():
            yield i, case, _volume(site_scan(case, np.random.default_rng([SITE_SEED, i, 7])), case)


def build_site(folder: Path, train_examples: int, val_examples: int) -> None:
    """Corrections, one per described finding: Val from cases 1000.., Train from cases 0.. (disjoint)."""
    for split, start, wanted in (("Val", 1000, val_examples), ("Train", 0, train_examples)):
        saved = 0
        for i, case, image in _site_cases(start, 10 * wanted):
            for lesion, mask in zip(case.lesions, case.lesion_masks):
                if lesion.described and saved < wanted:
                    add_example(folder, image, describe([lesion], "CT", "sentences"), mask, case=f"site{i}", split=split)
                    saved += 1
            if saved >= wanted:
                break


def build_site_test(folder: Path, cases: int) -> None:
    """Held-out site scans with their whole report and the union of the described lesions (cases 2000..)."""
    for i, case, image in _site_cases(2000, cases):
        add_example(folder, image, case.report, case.mask, case=f"test{i}", split="Val")


def score(model: str | Path | None, samples: list, device: str) -> float:
    return evaluate(Segmenter(model, device=device), samples)["dice"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-finetune"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--val", type=int, default=6, help="site Val examples (the promotion rule's split)")
    parser.add_argument("--test-cases", type=int, default=10)
    parser.add_argument("--base-test-cases", type=int, default=10)
    parser.add_argument("--replay-cases", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--replay-share", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = args.work
    base = resolve_model(None)
    started = time.monotonic()
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_at_start": os.getloadavg()},
               "options": {key: str(value) for key, value in vars(args).items()},
               "base_model": str(base), "site": site_scan.__doc__, "sizes": {}}
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "replay" / "manifest.csv").is_file():
        write_dataset(work / "replay", args.replay_cases, "CT", 3, REPLAY_SEED, SIZE, DEPTH, subset_probability=0.8)
    if not (work / "base-test" / "manifest.csv").is_file():
        write_dataset(work / "base-test", args.base_test_cases, "CT", 3, BASE_SEED, SIZE, DEPTH, subset_probability=0.8)
    if not (work / "site-test" / "manifest.csv").is_file():
        build_site_test(work / "site-test", args.test_cases)
    site_test = load_split(work / "site-test", "csv", "val")
    base_test = load_split(work / "base-test", "csv", "all")
    cached = work / "base-scores.json"  # the base model's scores on the fixed test sets: computed once per work folder
    if cached.is_file():
        results["base"] = json.loads(cached.read_text())
    else:
        results["base"] = {"site_dice": score(base, site_test, args.device), "base_data_dice": score(base, base_test, args.device),
                           "site_test_cases": len(site_test), "base_test_cases": len(base_test)}
        cached.write_text(json.dumps(results["base"], indent=2))
    print(f"base: site Dice {results['base']['site_dice']:.4f}, base-data Dice {results['base']['base_data_dice']:.4f}", flush=True)
    for size in args.sizes:
        site, new = work / f"site-{size}", work / f"new-{size}"
        shutil.rmtree(site, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)
        build_site(site, size, args.val)
        options = FinetuneOptions(data=str(site), output=str(new), model=str(base), minutes=args.minutes, device=args.device,
                                  replay=str(work / "replay"), replay_format="csv", replay_share=args.replay_share,
                                  epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr)
        size_started = time.monotonic()
        outcome = finetune(options)
        minutes = (time.monotonic() - size_started) / 60
        candidate = new if outcome.promoted else new / "rejected"
        row = {"promoted": outcome.promoted, "val_dice_base": outcome.report["base"]["val"]["dice"],
               "val_dice_new": outcome.report["new"]["val"]["dice"], "site_dice": score(candidate, site_test, args.device),
               "base_data_dice": score(candidate, base_test, args.device), "finetune_minutes": round(minutes, 2),
               "training": outcome.report["training"], "load_after": os.getloadavg()}
        results["sizes"][str(size)] = row
        print(f"{size} examples: site Dice {row['site_dice']:.4f} (base {results['base']['site_dice']:.4f}), base-data Dice "
              f"{row['base_data_dice']:.4f} (base {results['base']['base_data_dice']:.4f}), fine-tune {minutes:.1f} min, "
              f"promoted={row['promoted']}", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
    results["minutes_total"] = round((time.monotonic() - started) / 60, 2)
    results["machine"]["load_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
