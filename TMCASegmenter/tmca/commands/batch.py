"""``tmca batch``: segment every case of a study folder; resumable, shardable, one summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from tmca.commands.arguments import add_backend, add_device, add_progress, add_resize_large, large_images_of


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "batch",
        help="segment every image and DICOM series of a study folder",
        description=(
            "Segment every NIfTI, NRRD/NHDR and MHA/MHD image and every DICOM series under STUDY_DIR with its report "
            "(from --reports, else a <case>.txt sidecar). Writes OUT_DIR/<case>.seg.nrrd and summary.csv/.json "
            "(updated after every case). A rerun skips cases whose outputs are up to date. "
            "Exit status: 0 when no case failed, 1 when some did, 2 for bad arguments, 130 when interrupted."
        ),
    )
    parser.add_argument("study_dir", type=Path, metavar="STUDY_DIR", help="folder holding the study (searched recursively)")
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="OUT_DIR", help="output folder (created if missing)")
    parser.add_argument("--reports", type=Path, metavar="CSV", help="CSV with columns case,report (other columns are kept in the summary)")
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    add_device(parser)
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    parser.add_argument("--batch-size", type=int, help="slices (windows, when a window slides over large slices) per forward pass (default 16 on CPU, 64 on GPU)")
    add_backend(parser)
    add_resize_large(parser)
    parser.add_argument("--probability", action="store_true", help="also write OUT_DIR/<case>.probability.nrrd")
    parser.add_argument("--dicom-seg", action="store_true", help="also write OUT_DIR/<case>.dcm, a DICOM Segmentation (DICOM cases only)")
    parser.add_argument("--shard", metavar="I/N", help="I/N: run only shard I of N (1 <= I <= N); merge the shards with tmca batch-merge")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose outputs are up to date")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing case")
    add_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from tmca.batch import Shard, report_outcome, run_batch
    from tmca.interrupts import cancel_on_signals
    from tmca.progress import make_progress

    shard = Shard.parse(args.shard) if args.shard else None
    progress = make_progress(args.progress)
    try:
        with cancel_on_signals():
            rows = run_batch(
                args.study_dir, args.output, reports=args.reports, model=args.model, device=args.device,
                threshold=args.threshold, probability=args.probability, shard=shard, overwrite=args.overwrite,
                fail_fast=args.fail_fast, progress=_with_case_lines(progress), batch_size=args.batch_size,
                dicom_seg=args.dicom_seg, backend=args.backend, large_images=large_images_of(args),
            )  # fmt: skip
    finally:
        progress.close()
    summary = args.output / (shard.summary_stem if shard else "summary")
    report_outcome(rows, summary, progress if args.progress == "json" else None)
    return 1 if any(row["status"] == "failed" for row in rows) else 0


def _with_case_lines(progress):
    """Add one stdout line per finished case where no bar is shown (a log file, a cluster job)."""
    if getattr(progress, "enabled", True):  # JSON lines, or a live bar
        return progress

    def report(done: int, total: int, stage: str, **extra) -> None:
        if "status" in extra:
            error = f" ({extra['error']})" if extra.get("error") else ""
            print(f"[{done}/{total}] {extra['case']}: {extra['status']}{error}", flush=True)

    return report
