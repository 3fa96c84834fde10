"""``tmca synth``: write a synthetic dataset (phantoms with lesions at named locations, and reports)."""

from __future__ import annotations

import argparse
import time

from tmca.choices import SYNTH_MODALITIES
from tmca.commands.arguments import add_modality
from tmca.errors import TMCAError
from tmca.synth import DEFAULT_DEPTH, DEFAULT_SIZE_2D, DEFAULT_SIZE_3D, NO_FINDING_PROBABILITY, SUBSET_PROBABILITY
from tmca.synth_fine import DEFAULT_CASES as DEFAULT_FINE_CASES
from tmca.synth_fine import DEFAULT_SIZE as DEFAULT_FINE_SIZE

KINDS = ("phantom", "fine-structure")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic dataset: phantoms, lesion masks and reports",
        description=(
            "Write synthetic cases whose reports describe some or all of their lesions; the mask is the union "
            "of the described lesions. 2D: LViT layout ({Train,Val,Test}_Folder/{img,labelcol}, {Split}_text.xlsx). "
            "3D: images/, masks/ (NIfTI), reports/ and manifest.csv."
        ),
    )
    parser.add_argument("--output", required=True, help="folder to write into (created if missing)")
    parser.add_argument("--kind", choices=KINDS, default="phantom",
                        help="phantom (default): medical phantoms with lesions at named places; fine-structure: colour "
                             "histology-like images with hundreds of blobs 3-10 px wide, targets told from distractors by hue, "
                             "one sentence on where targets are dense (LViT's released layout, tables inside the split folders; "
                             "uses --cases, --seed and --size only)")
    parser.add_argument("--cases", type=int, default=None,
                        help=f"number of cases (default 20; fine-structure {DEFAULT_FINE_CASES}: Train 24, Val 6, Test 10)")
    add_modality(parser, "what to generate (XR is 2D only; default CT)", allowed=SYNTH_MODALITIES, default="CT")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2 (PNG slices) or 3 (NIfTI volumes); default 2")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default 0)")
    parser.add_argument("--size", type=int, default=None,
                        help=f"in-plane size in pixels (default {DEFAULT_SIZE_2D} for 2D, {DEFAULT_SIZE_3D} for 3D, "
                             f"{DEFAULT_FINE_SIZE} for fine-structure)")
    parser.add_argument("--subset-fraction", type=float, default=SUBSET_PROBABILITY,
                        help=f"share of multi-lesion cases whose report names only some lesions (default {SUBSET_PROBABILITY})")
    parser.add_argument("--no-finding-fraction", type=float, default=NO_FINDING_PROBABILITY,
                        help=f"share of cases without any lesion, reported as 'No focal lesion.' (default {NO_FINDING_PROBABILITY})")
    parser.add_argument("--reports-per-case", type=int, default=1,
                        help="Train cases with several lesions get up to this many reports in all, each naming another set "
                             "of their lesions with its own mask (default 1: one report per case)")
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help=f"slices per 3D volume (default {DEFAULT_DEPTH})")
    return parser


def run(args: argparse.Namespace) -> int:
    from tmca.synth import write_dataset

    start = time.perf_counter()
    if args.kind == "fine-structure":
        return _run_fine(args, start)
    args.cases = 20 if args.cases is None else args.cases
    for option, value in (("--subset-fraction", args.subset_fraction), ("--no-finding-fraction", args.no_finding_fraction)):
        if not 0.0 <= value <= 1.0:
            raise TMCAError(f"{option} must be between 0 and 1, not {value}")
    splits = write_dataset(
        args.output, args.cases, args.modality, args.dims, args.seed, args.size, args.depth, args.subset_fraction, args.reports_per_case,
        args.no_finding_fraction,
    )
    counts = ", ".join(f"{split} {len(names)}" for split, names in splits.items())
    print(f"wrote {args.cases} {args.modality} {args.dims}D cases to {args.output} ({counts}) in {time.perf_counter() - start:.1f} s")
    return 0


def _run_fine(args: argparse.Namespace, start: float) -> int:
    from tmca.synth_fine import write_fine_dataset

    if args.dims != 2:
        raise TMCAError("--kind fine-structure writes 2D colour images; drop --dims 3")
    if args.reports_per_case != 1:
        raise TMCAError("--kind fine-structure writes one sentence per image; drop --reports-per-case")
    cases = DEFAULT_FINE_CASES if args.cases is None else args.cases
    splits = write_fine_dataset(args.output, cases, args.seed, args.size)
    counts = ", ".join(f"{split} {len(names)}" for split, names in splits.items())
    print(f"wrote {cases} fine-structure images to {args.output} ({counts}) in {time.perf_counter() - start:.1f} s")
    return 0
