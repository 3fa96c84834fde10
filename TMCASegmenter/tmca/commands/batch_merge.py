"""``tmca batch-merge``: combine the summaries of ``tmca batch --shard I/N`` runs into one."""

from __future__ import annotations

import argparse
from pathlib import Path

from tmca.errors import TMCAError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "batch-merge",
        help="merge the summaries of sharded batch runs",
        description=(
            "Combine summary-shard-I-of-N.csv/.json (or summary.json) of each OUT_DIR into MERGED/summary.csv and "
            "summary.json, checking that every shard is there and that no case appears twice. "
            "Exit status: 0 when every shard finished and no case failed, 1 otherwise, 2 for bad or incomplete input."
        ),
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="OUT_DIR", help="output folders of the shard runs")
    parser.add_argument("--output", "-o", type=Path, metavar="MERGED", help="folder for the merged summary (default: the only OUT_DIR)")
    return parser


def run(args: argparse.Namespace) -> int:
    from tmca.batch import merge_summaries, report_outcome

    if args.output is None and len(args.folders) > 1:
        raise TMCAError("several OUT_DIRs given: choose where the merged summary goes with --output MERGED")
    output = args.output or args.folders[0]
    merged = merge_summaries(args.folders, output)
    report_outcome(merged["rows"], output / "summary")
    if not merged["finished"]:
        print(f"warning: some runs did not finish; the merged summary lists {len(merged['rows'])} of {merged['total']} cases; rerun them and merge again")
        return 1
    return 1 if merged["counts"]["failed"] else 0
