"""``tmca segment``: one scan and its report in, a Slicer segmentation out."""

from __future__ import annotations

import argparse
from pathlib import Path

from tmca.choices import DICOM_SEG_TYPES
from tmca.commands.arguments import add_backend, add_device, add_modality, add_plane, add_progress, add_resize_large, large_images_of
from tmca.errors import TMCAError
from tmca.formats import READABLE_TEXT, SEGMENTATION_SUFFIXES, WRITABLE_VOLUME_SUFFIXES
from tmca.outputs import check_output_name, check_outputs_apart
from tmca.textio import read_text_file

_VOLUMES = "/".join(WRITABLE_VOLUME_SUFFIXES)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        help="segment the findings of a report in a scan",
        description=f"Segment the targets a report describes. INPUT: {READABLE_TEXT} file, or a DICOM series folder.",
    )
    parser.add_argument("input", help="image file or DICOM folder")
    report = parser.add_mutually_exclusive_group(required=True)
    report.add_argument("--report", help="the report text")
    report.add_argument("--report-file", type=Path, help="a text file holding the report (UTF-8, UTF-16 with BOM, or Latin-1)")
    parser.add_argument("--output", "-o", required=True, type=Path, help="output segmentation (.seg.nrrd)")
    parser.add_argument("--probability", type=Path, help=f"also write the probability map ({_VOLUMES})")
    parser.add_argument("--relevance", type=Path, help=f"also write the language relevance map ({_VOLUMES})")
    parser.add_argument("--dicom-seg", type=Path, help="also write a DICOM Segmentation (.dcm); the input must be DICOM")
    parser.add_argument("--dicom-seg-type", choices=DICOM_SEG_TYPES, default="binary",
                        help="binary (default; every reader) or labelmap (compact; findings must not overlap)")
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    add_device(parser)
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    parser.add_argument("--batch-size", type=int, help="slices (windows, when a window slides over large slices) per forward pass (default 16 on CPU, 64 on GPU)")
    add_backend(parser)
    add_resize_large(parser)
    add_plane(parser, "slicing plane for 2D models (default: the plane the model was trained on)")
    parser.add_argument("--series", help="DICOM SeriesInstanceUID to use when a folder holds several series")
    add_modality(parser, "override the image's modality")
    parser.add_argument("--no-split-findings", dest="split_findings", action="store_false", help="one segment for the whole report")
    add_progress(parser)
    return parser


def read_report(args: argparse.Namespace) -> str:
    if args.report is not None:
        return args.report
    return read_text_file(args.report_file, "report file")


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs with a wrong name, unwritable, or overwriting the input or each other."""
    check_output_name(args.output, SEGMENTATION_SUFFIXES, "output")
    check_output_name(args.probability, WRITABLE_VOLUME_SUFFIXES, "probability map")
    check_output_name(args.relevance, WRITABLE_VOLUME_SUFFIXES, "relevance map")
    check_output_name(getattr(args, "dicom_seg", None), (".dcm",), "DICOM SEG")
    if not Path(args.input).exists():
        raise TMCAError(f"input not found: {args.input}")
    outputs = {"output": args.output, "probability map": args.probability, "relevance map": args.relevance}
    outputs["DICOM SEG"] = getattr(args, "dicom_seg", None)
    check_outputs_apart(Path(args.input), outputs, other_inputs=[args.report_file])


def run(args: argparse.Namespace) -> int:
    from tmca.interrupts import cancel_on_signals
    from tmca.progress import make_progress

    report = read_report(args)
    check_outputs(args)
    dicom_sources = None
    if getattr(args, "dicom_seg", None):
        from tmca.dicomseg import dicom_source_files

        dicom_sources = dicom_source_files(args.input, args.series)  # refuses non-DICOM input before the model runs
    progress = make_progress(args.progress)
    try:
        with cancel_on_signals():
            result = segment_to_files(args, report, progress)
            dicom_seg = write_dicom_output(args, result, dicom_sources)
    finally:
        progress.close()
    if args.progress == "json":
        from tmca.protocol import result_event

        relevance = str(args.relevance) if args.relevance else None
        extra = {"relevance": relevance, "dicom_seg": dicom_seg, "message": outcome_message(result)}
        progress.emit(result_event(str(args.output), result.records, args.probability, result.negative_records, **extra))
    else:
        print(f"wrote {args.output}" + (f" and {dicom_seg}" if dicom_seg else ""))
        from tmca.reconcile import checks_text

        for record in result.records:
            print(f"  {record.name}: {record.volume_ml:.2f} mL, {record.components} component(s), {record.voxels} voxels")
            print(f"    {record.terminology['type']['meaning']}, checks: {checks_text(record.checks)}")
        for record in result.negative_records:
            print(f"  negative finding (no segment): {record.text}")
        if not result.records:
            print(outcome_message(result) + ("; no DICOM SEG written (it needs a segment)" if dicom_sources else ""))
    return 0


def outcome_message(result) -> str:
    """One line for a report with no positive finding; '' otherwise."""
    if result.records:
        return ""
    return "the report states no positive finding (only absences); no segment was drawn"


def write_dicom_output(args: argparse.Namespace, result, sources) -> str | None:
    """Write the DICOM SEG when asked and there is a segment; returns its path, else None."""
    if sources is None or not result.records:
        return None
    from tmca.dicomseg import algorithm_of, write_dicom_seg
    from tmca.models import resolve_model

    write_dicom_seg(args.dicom_seg, list(result.masks), result.records, result.reference, sources,
                    algorithm_of(resolve_model(args.model)), seg_type=args.dicom_seg_type)
    return str(args.dicom_seg)


def segment_to_files(args: argparse.Namespace, report: str, progress):
    from tmca.inference import Segmenter

    progress(0, 1, "loading model")
    segmenter = Segmenter(args.model, device=args.device, batch_size=args.batch_size, backend=args.backend, large_images=large_images_of(args))
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
