"""``tmca finetune``: fine-tune a model on a site dataset of corrections; keep it only if it is not worse."""

from __future__ import annotations

import argparse
from pathlib import Path

from tmca.commands.arguments import add_device, add_progress
from tmca.formats import DATASET_FORMATS


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a model on saved corrections (kept only if not worse)",
        description="Fine-tune BASE on a site dataset's Train split, score BASE and the result on its Val split, and promote the "
                    "result only if its Val Dice is not lower (exit 1 otherwise). Works under torchrun.",
    )
    parser.add_argument("--model", default=None, help="base checkpoint folder or training run folder (default: the bundled demo model)")
    parser.add_argument("--data", required=True, type=Path, help="site dataset folder (manifest.csv, as 'Save correction' writes it)")
    parser.add_argument("--output", required=True, type=Path, help="new folder for the fine-tuned model and finetune.json")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time limit in minutes (default 5; evaluation comes on top)")
    add_device(parser)
    parser.add_argument("--replay", type=Path, help="the base model's own kind of data, mixed in against forgetting")
    parser.add_argument("--replay-format", choices=DATASET_FORMATS, default="csv", help="layout of --replay (default csv)")
    parser.add_argument("--replay-share", type=float, default=0.5, help="share of training slices taken from --replay (default 0.5)")
    parser.add_argument("--force", action="store_true", help="keep the fine-tuned model even if it is worse than the base")
    parser.add_argument("--epochs", type=int, default=8, help="at most this many epochs (default 8)")
    parser.add_argument("--steps-per-epoch", type=int, default=20, help="optimizer steps per epoch (default 20)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4; the encoder's is scaled as in tmca train)")
    parser.add_argument("--seed", type=int, default=0)
    add_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from tmca.finetune import FinetuneOptions, finetune
    from tmca.progress import make_progress

    options = FinetuneOptions(
        data=str(args.data), output=str(args.output), model=args.model, minutes=args.minutes, device=args.device,
        replay=str(args.replay) if args.replay else None, replay_format=args.replay_format, replay_share=args.replay_share,
        force=args.force, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed,
    )
    progress = make_progress(args.progress)
    try:
        result = finetune(options, progress)
    finally:
        progress.close()
    if result is None:  # another process of a torchrun job: rank 0 reports
        return 0
    print(result.message)
    return 0 if result.promoted else 1
