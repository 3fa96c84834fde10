"""Count the voxels the model draws for reports that state only absence ("No focal lesion.").

Writes ``tmca synth`` 3D CT scans without lesions, runs ``tmca segment`` on each with the report,
and counts the voxels of every segment in the written ``.seg.nrrd`` (0 segments counts as 0).
Runs the CLI so that it measures what a user gets, whatever the version of the engine.

    python bench/negative_findings.py --cases 5 --report "No focal lesion." --work /tmp/negbench
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np


def count_voxels(segmentation: Path) -> tuple[int, int]:
    """(segments, voxels over all segments) of a written .seg.nrrd."""
    from tmca.segio import read_segmentation

    masks, _, _ = read_segmentation(segmentation)
    return len(masks), int(sum(np.count_nonzero(mask) for mask in masks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--report", default="No focal lesion.")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder")
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    args = parser.parse_args()
    data = args.work / "data"
    subprocess.run(
        [sys.executable, "-m", "tmca.cli", "synth", "--output", str(data), "--cases", str(args.cases), "--modality", "ct",
         "--dims", "3", "--seed", str(args.seed), "--no-finding-fraction", "1.0"],
        check=True,
    )  # fmt: skip
    total = 0
    for image in sorted((data / "images").glob("*.nii.gz")):
        output = args.work / f"{image.name[: -len('.nii.gz')]}.seg.nrrd"
        output.unlink(missing_ok=True)
        command = [sys.executable, "-m", "tmca.cli", "segment", str(image), "--report", args.report, "--output", str(output)]
        if args.model:
            command += ["--model", args.model]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{image.name}: exit {done.returncode}: {done.stderr.strip()}")
            return 1
        segments, voxels = count_voxels(output) if output.exists() else (0, 0)
        total += voxels
        print(f"{image.name}: {segments} segment(s), {voxels} voxels")
    print(f"report {args.report!r}: {total} voxels drawn over {args.cases} lesion-free scans")
    return 0


if __name__ == "__main__":
    sys.exit(main())
