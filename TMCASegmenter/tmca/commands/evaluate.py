"""``tmca evaluate``: Dice, IoU and HD95 of a model on a dataset split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tmca.commands.arguments import add_device, add_progress, add_resize_large, large_images_of
from tmca.formats import DATASET_FORMATS


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="score a model on a dataset split")
    parser.add_argument("--model", required=True, help="checkpoint folder or training run folder")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--format", required=True, choices=DATASET_FORMATS, help="dataset layout")
    parser.add_argument("--split", default="Test")
    parser.add_argument("--shuffle-text", action="store_true", help="give each image another case's report")
    parser.add_argument("--eval-size", type=int, metavar="S",
                        help="score at SxS, as LViT/GuideDecoder report: image and mask resized to SxS before the model runs; "
                             "for a model that slides a window over large slices, the prediction at native resolution and the "
                             "mask are resized to SxS (nearest)")
    parser.add_argument("--json", type=Path, help="write the scores (per case and means) to this file")
    add_device(parser)
    add_resize_large(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the report shuffle")
    add_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from tmca.data import load_split
    from tmca.errors import TMCAError
    from tmca.evaluation import evaluate, write_json
    from tmca.inference import Segmenter
    from tmca.progress import make_progress

    samples = load_split(args.data, args.format, args.split)
    if not samples:
        raise TMCAError(f"no usable samples in the {args.split} split of {args.data}")
    segmenter = Segmenter(args.model, device=args.device, large_images=large_images_of(args))
    progress = make_progress(args.progress)
    try:
        results = evaluate(segmenter, samples, args.shuffle_text, args.eval_size, args.seed, progress)
    finally:
        progress.close()
    results.update({"model": str(segmenter.model_path), "split": args.split, "data": str(args.data)})
    if args.json:
        write_json(args.json, results)
    summary = {key: results[key] for key in ("dice", "iou", "hd95", "n", "shuffle_text")}
    print(json.dumps(summary) if args.progress == "json" else
          f"n={summary['n']} Dice {summary['dice']:.4f}  IoU {summary['iou']:.4f}  HD95 {summary['hd95']:.2f}"
          + ("  (shuffled reports)" if args.shuffle_text else ""))
    return 0
