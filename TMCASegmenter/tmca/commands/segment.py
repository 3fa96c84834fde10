"""``tmca segment``: one scan and its report in, a Slicer segmentation out."""

from __future__ import annotations

import argparse
from pathlib import Path

from tmca.atomic import check_writable
from tmca.devices import DEVICE_CHOICES
from tmca.errors import TMCAError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        help="segment the findings of a report in a scan",
        description="Segment the targets a report describes. INPUT: NIfTI, NRRD/NHDR, MHA/MHD, a DICOM file or series folder, PNG/JPEG.",
    )
    parser.add_argument("input", help="image file or DICOM folder")
    report = parser.add_mutually_exclusive_group(required=True)
    report.add_argument("--report", help="the report text")
    report.add_argument("--report-file", type=Path, help="a UTF-8 text file holding the report")
    parser.add_argument("--output", "-o", required=True, type=Path, help="output segmentation (.seg.nrrd)")
    parser.add_argument("--probability", type=Path, help="also write the probability map (.nrrd/.nii.gz/.mha)")
    parser.add_argument("--relevance", type=Path, help="also write the language relevance map")
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    parser.add_argument("--batch-size", type=int, help="slices per forward pass (default 16 on CPU, 64 on GPU)")
    parser.add_argument("--plane", choices=("axial", "coronal", "sagittal"), help="slicing plane for 2D models (default: the plane the model was trained on)")
    parser.add_argument("--series", help="DICOM SeriesInstanceUID to use when a folder holds several series")
    parser.add_argument("--modality", choices=("CT", "MR", "US", "XR", "OT"), type=str.upper, help="override the modality")
    parser.add_argument("--no-split-findings", dest="split_findings", action="store_false", help="one segment for the whole report")
    parser.add_argument("--progress", choices=("json", "bar"), default="bar", help="json: one JSON object per line on stdout")
    return parser


def read_report(args: argparse.Namespace) -> str:
    if args.report is not None:
        return args.report
    try:
        return args.report_file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TMCAError(f"report file not found: {args.report_file}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TMCAError(f"cannot read report file {args.report_file}: {error}; save it as UTF-8 text") from None


def check_output(path: Path | None, suffixes: tuple[str, ...], what: str) -> None:
    """Fail before any work when an output has the wrong kind of name or cannot be written."""
    if path is None:
        return
    if not str(path).lower().endswith(suffixes):
        raise TMCAError(f"{what} {path} must end with {' or '.join(suffixes)}")
    check_writable(path)


VOLUME_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".nhdr")


def run(args: argparse.Namespace) -> int:
    from tmca.interrupts import cancel_on_signals
    from tmca.progress import make_progress

    report = read_report(args)
    check_output(args.output, (".seg.nrrd", ".nrrd"), "output")
    check_output(args.probability, VOLUME_SUFFIXES, "probability map")
    check_output(args.relevance, VOLUME_SUFFIXES, "relevance map")
    if not Path(args.input).exists():
        raise TMCAError(f"input not found: {args.input}")
    progress = make_progress(args.progress)
    try:
        with cancel_on_signals():
            result = segment_to_files(args, report, progress)
    finally:
        progress.close()
    if args.progress == "json":
        from tmca.protocol import result_event

        relevance = str(args.relevance) if args.relevance else None
        progress.emit(result_event(str(args.output), result.records, args.probability, relevance=relevance))
    else:
        print(f"wrote {args.output}")
        for record in result.records:
            print(f"  {record.name}: {record.volume_ml:.2f} mL, {record.components} component(s), {record.voxels} voxels")
    return 0


def segment_to_files(args: argparse.Namespace, report: str, progress):
    from tmca.inference import Segmenter
    progress(0, 1, "loading model")
    segmenter = Segmenter(args.model, device=args.device, batch_size=args.batch_size)
    result = segmenter.segment(
        args.input,
        report,
        threshold=args.threshold,
        split_findings=args.split_findings,
        progress=progress,
        plane=args.plane,
        modality=args.modality,
        series_uid=args.series,
        with_relevance=args.relevance is not None,
    )
    progress(0, 1, "writing")
    result.save(args.output, args.probability, args.relevance)
    progress(1, 1, "writing")
    return result
