"""Accuracy parity: TMCA against an image-only U-Net baseline, same data and same wall-clock budget.

For each set, ``tmca train`` (defaults) and ``tmca train --ablation BASELINE`` get the same
``--time-limit``; each best checkpoint is scored with ``tmca evaluate --split Test --eval-size 224``
with the correct reports and with shuffled ones (``--shuffle-text``). Sets:

- ``fine``: ``tmca synth --kind fine-structure`` (colour, hundreds of blobs 3-10 px wide per image,
  few images, targets told from same-luminance distractors by hue; LViT's released layout);
- ``grounding``: ``tmca synth --dims 2`` (several lesions per case; a share of the reports names only
  some of them: those "subset" cases are also scored on their own, see ``demo_grounding.subset_cases``);
- ``real``: slices of the MRIs in ``<shared data>/real`` (``*_image.nrrd`` with ``*_label.nrrd``) as
  single-slice MR volumes in a csv manifest, only slices with label; a sanity check of real
  intensities, not a benchmark. Split by case (volume and slice): per volume, the labelled slices in
  order go Train, Test, Train, Val, Train, Test, ... Without the shared data, two ``tmca synth``
  MR volumes stand in.

Run by hand; the lead's numbers (15 minutes each on the 2-core CPU) go to docs/ACCURACY.md::

    python bench/parity.py --out runs/parity --minutes 15 --concurrent

Quick end-to-end check of the script (a few minutes; small sets)::

    python bench/parity.py --out runs/parity-smoke --minutes 0.3 --fine-size 256 --fine-cases 8 \\
        --grounding-cases 20 --baseline image-only

Writes OUT/data/<set> (generated once, reused), OUT/runs/<set>/<model>/ (reused when it holds a
summary.json), OUT/eval/<set>-<model>[-shuffled].json, OUT/parity.json and OUT/parity.md, and
prints the Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tmca.atomic import atomic_path, write_text_atomic
from tmca.checkpoint import read_checkpoint_config
from tmca.commands.train import ABLATIONS

sys.path.insert(0, str(Path(__file__).parent))
from demo_grounding import mean_dice, subset_cases  # noqa: E402

SETS = ("fine", "grounding", "real")
EVAL_SIZE = 224
REAL_SPLIT_CYCLE = ("Train", "Test", "Train", "Val")  # labelled slices of one volume, in order
REPO = Path(__file__).resolve().parents[1]


@dataclass
class DataSet:
    name: str
    folder: Path
    format: str
    modality: str | None  # passed to tmca train when set
    subset: set[str]  # cases whose report names only some of their lesions (grounding set)


def tmca(arguments: list[str], threads: int, log: Path | None = None, wait: bool = True) -> subprocess.Popen:
    """Run ``python -m tmca.cli ARGUMENTS`` with ``threads`` OpenMP/MKL threads (stdout to ``log``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "TMCASegmenter"), env.get("PYTHONPATH")]))
    stdout = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "tmca.cli", *arguments], env=env, stdout=stdout, stderr=subprocess.STDOUT)
    if wait and process.wait() != 0:
        raise SystemExit(f"tmca {' '.join(arguments)} failed (exit {process.returncode}){f'; see {log}' if log else ''}")
    return process


# ---------------------------------------------------------------------------------------------
# Data


def fine_set(args: argparse.Namespace, folder: Path) -> DataSet:
    if not (folder / "synth.json").is_file():
        tmca(["synth", "--kind", "fine-structure", "--output", str(folder), "--cases", str(args.fine_cases),
              "--size", str(args.fine_size), "--seed", str(args.seed)], args.threads)
    return DataSet("fine", folder, "lvit", None, set())


def grounding_set(args: argparse.Namespace, folder: Path) -> DataSet:
    if not (folder / "synth.json").is_file():
        tmca(["synth", "--dims", "2", "--output", str(folder), "--cases", str(args.grounding_cases), "--seed", str(args.seed),
              "--subset-fraction", str(args.subset_fraction)]
             + (["--no-finding-fraction", str(args.no_finding_fraction)] if args.no_finding_fraction is not None else []), args.threads)
    return DataSet("grounding", folder, "lvit", None, subset_cases(folder))


def real_volumes(shared: Path, scratch: Path, seed: int) -> list[tuple[str, Path, Path, str]]:
    """(name, image, label, report) of each MRI in ``shared``/real, else of two synthetic MR stand-ins."""
    found = []
    for image in sorted((shared / "real").glob("*_image.nrrd")):
        label = image.with_name(image.name.replace("_image", "_label"))
        if label.is_file():
            name = image.name.removesuffix("_image.nrrd")
            found.append((name, image, label, f"Lesion in the {name.rstrip('0123456789')}."))
    if found:
        return found
    print(f"no MRIs with labels in {shared / 'real'}; using two synthetic MR volumes instead", flush=True)
    if not (scratch / "manifest.csv").is_file():
        tmca(["synth", "--modality", "mr", "--dims", "3", "--cases", "2", "--seed", str(seed), "--size", "96", "--depth", "25",
              "--no-finding-fraction", "0", "--output", str(scratch)], 1)
    return [(image.name.removesuffix(".nii.gz"), image, scratch / "masks" / image.name,
             (scratch / "reports" / image.name.replace(".nii.gz", ".txt")).read_text().strip())
            for image in sorted((scratch / "images").glob("*.nii.gz"))]


def real_set(args: argparse.Namespace, folder: Path) -> DataSet:
    """A csv dataset of one-slice MR volumes (only slices with label), split by case as the module docstring says."""
    if not (folder / "manifest.csv").is_file():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "mask", "report", "split", "case"])
        for name, image_path, label_path, report in real_volumes(args.shared, folder / "source", args.seed):
            image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
            labelled = np.flatnonzero(sitk.GetArrayFromImage(label).reshape(label.GetSize()[2], -1).any(axis=1))
            for order, k in enumerate(labelled):
                case = f"{name}_z{int(k):03d}"
                one_slice = slice(int(k), int(k) + 1)  # keeps spacing and direction; the origin moves to that slice
                for kind, volume in (("images", image[:, :, one_slice]), ("masks", sitk.Cast(label[:, :, one_slice] > 0, sitk.sitkUInt8))):
                    path = folder / kind / f"{case}.nii.gz"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(path) as tmp:
                        sitk.WriteImage(volume, str(tmp), True)
                writer.writerow([f"images/{case}.nii.gz", f"masks/{case}.nii.gz", report, REAL_SPLIT_CYCLE[order % 4], case])
        write_text_atomic(folder / "manifest.csv", buffer.getvalue())
    return DataSet("real", folder, "csv", "MR", set())


# ---------------------------------------------------------------------------------------------
# Training and scoring


def train_pair(args: argparse.Namespace, data: DataSet) -> dict[str, dict]:
    """Train TMCA and the baseline on ``data`` (at the same time with ``--concurrent``); model -> summary.json."""
    models = {"tmca": "none", "baseline": args.baseline}
    threads = max(1, args.threads // 2) if args.concurrent else args.threads
    running = []
    for model, ablation in models.items():
        run = args.out / "runs" / data.name / model
        if (run / "summary.json").is_file():
            print(f"{data.name}/{model}: reusing {run}", flush=True)
            continue
        shutil.rmtree(run, ignore_errors=True)  # an interrupted run: start it again, the budget must be whole
        run.parent.mkdir(parents=True, exist_ok=True)
        command = ["train", "--data", str(data.folder), "--format", data.format, "--output", str(run), "--time-limit", str(args.minutes),
                   "--seed", str(args.seed), "--ablation", ablation, "--progress", "json"]
        command += ["--modality", data.modality] if data.modality else []
        print(f"{data.name}/{model}: training {args.minutes} min with {threads} thread(s) (--ablation {ablation})", flush=True)
        process = tmca(command, threads, run.parent / f"{model}.log", wait=not args.concurrent)
        running.append((model, run, process))
    for model, run, process in running:
        if process.wait() != 0:
            raise SystemExit(f"training {data.name}/{model} failed (exit {process.returncode}); see {run.parent / f'{model}.log'}")
    return {model: json.loads((args.out / "runs" / data.name / model / "summary.json").read_text()) for model in models}


def score(args: argparse.Namespace, data: DataSet, model: str, shuffle: bool) -> dict:
    out = args.out / "eval" / f"{data.name}-{model}{'-shuffled' if shuffle else ''}.json"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmca(["evaluate", "--model", str(args.out / "runs" / data.name / model / "best"), "--data", str(data.folder), "--format", data.format,
              "--split", "Test", "--eval-size", str(EVAL_SIZE), "--json", str(out), "--progress", "json", "--seed", str(args.seed)]
             + (["--shuffle-text"] if shuffle else []), args.threads)
    return json.loads(out.read_text())


def rows_for(args: argparse.Namespace, data: DataSet) -> list[dict]:
    summaries = train_pair(args, data)
    rows = []
    for model, summary in summaries.items():
        run = args.out / "runs" / data.name / model
        trained = read_checkpoint_config(run / "best")["model"]
        batch = json.loads((run / "options.json").read_text())["batch_size"]
        correct, shuffled = score(args, data, model, False), score(args, data, model, True)
        subset = data.subset & {case["case"] for case in correct["cases"]}
        rows.append({"set": data.name, "model": model, "ablation": "none" if model == "tmca" else args.baseline,
                     "dice": correct["dice"], "dice_shuffled": shuffled["dice"], "n_test": correct["n"],
                     "subset_n": len(subset), "subset_dice": mean_dice(correct, subset) if subset else None,
                     "subset_dice_shuffled": mean_dice(shuffled, subset) if subset else None,
                     "image_size": trained["image_size"], "large_images": trained["large_images"], "batch_size": batch,
                     "steps": summary["steps"], "stopped_by": summary["stopped_by"], "minutes": summary["minutes"],
                     "best_val_dice": summary["best_val_dice"]})
    return rows


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(rows: list[dict], header: dict) -> str:
    lines = [f"Mode: {header['mode']}; budget {header['minutes']} min per model; Dice at {EVAL_SIZE}x{EVAL_SIZE} on Test; "
             f"baseline `--ablation {header['baseline']}`; {header['machine']['cpus']} CPUs, load "
             f"{' '.join(f'{x:.1f}' for x in header['machine']['load_at_start'])} at start.", "",
             "| set | model | Dice correct | Dice shuffled | subset Dice correct | subset Dice shuffled | trained at | batch | steps | stop reason | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        subset = (f"{_number(row['subset_dice'])} (n={row['subset_n']})", _number(row["subset_dice_shuffled"])) if row["subset_n"] else ("-", "-")
        lines.append(f"| {row['set']} (n={row['n_test']}) | {row['model']} | {row['dice']:.3f} | {row['dice_shuffled']:.3f} | {subset[0]} | "
                     f"{subset[1]} | {row['image_size']} px, {row['large_images']} | {row['batch_size']} | {row['steps']} | {row['stopped_by']} | {row['minutes']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/parity"))
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per model (tmca train --time-limit)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for one training (halved with --concurrent)")
    parser.add_argument("--concurrent", action="store_true",
                        help="train TMCA and the baseline of a set at the same time, each with half the threads, so machine noise hits both")
    parser.add_argument("--baseline", default="unet", help="tmca train --ablation of the image-only baseline (default unet)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fine-size", type=int, default=1000)
    parser.add_argument("--fine-cases", type=int, default=40)
    parser.add_argument("--grounding-cases", type=int, default=100)
    parser.add_argument("--subset-fraction", type=float, default=0.6, help="tmca synth --subset-fraction of the grounding set")
    parser.add_argument("--no-finding-fraction", type=float,
                        help="tmca synth --no-finding-fraction of the grounding set (default: synth's). Cases reported 'No focal "
                             "lesion.' score 1 for an empty prediction, so shuffling reports moves even an image-only model's Dice")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder (holds real/)")
    args = parser.parse_args()
    if args.baseline not in ABLATIONS:
        parser.error(f"--baseline {args.baseline!r} is not a tmca train ablation here; choose one of {', '.join(ABLATIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    header = {"mode": f"concurrent ({max(1, args.threads // 2)} threads each)" if args.concurrent else f"sequential ({args.threads} threads)",
              "minutes": args.minutes, "baseline": args.baseline, "options": {k: str(v) for k, v in vars(args).items()},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_at_start": os.getloadavg()}}
    builders = {"fine": fine_set, "grounding": grounding_set, "real": real_set}
    rows: list[dict] = []
    started = time.monotonic()
    for name in args.sets:
        data = builders[name](args, args.out / "data" / name)
        rows += rows_for(args, data)
        header["machine"]["load_now"] = os.getloadavg()
        header["minutes_total"] = round((time.monotonic() - started) / 60, 2)
        write_text_atomic(args.out / "parity.json", json.dumps({**header, "rows": rows}, indent=2))
        write_text_atomic(args.out / "parity.md", markdown(rows, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
