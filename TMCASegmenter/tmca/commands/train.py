"""``tmca train``: train a TMCA model on image-report-mask data."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmca.commands.arguments import add_device, add_modality, add_plane, add_progress
from tmca.config import ENCODERS, LARGE_IMAGE_MODES
from tmca.errors import TMCAError
from tmca.formats import DATASET_FORMATS

if TYPE_CHECKING:
    from tmca.config import TMCAConfig
    from tmca.data import Sample
    from tmca.training import TrainOptions

log = logging.getLogger(__name__)

ABLATIONS = {
    "none": {},
    "no-tsd": {"tsd": False},
    "no-multilevel": {"multilevel": False},
    "no-lgte": {"lgte": False},
    "image-only": {"text": False},
    "unet": {"architecture": "unet", "text": False, "encoder_pretrained": False},  # MONAI BasicUNet, the image-only baseline
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train a model on your data", description="Train TMCA. Works under torchrun.")
    parser.add_argument("--data", required=True, type=Path, help="dataset folder")
    parser.add_argument("--format", required=True, choices=DATASET_FORMATS, help="dataset layout")
    parser.add_argument("--output", required=True, type=Path, help="run folder (best/, last/, metrics.csv)")
    parser.add_argument("--config", type=Path, help="YAML with 'model:' (architecture) and 'train:' (options) sections")
    parser.add_argument("--epochs", type=int, help="passes over the data (default: 30, at least 1000 steps; with --time-limit alone: "
                        "until the time limit)")
    parser.add_argument("--steps", type=int, help="optimizer steps to train (instead of --epochs)")
    parser.add_argument("--batch-size", type=int, help="slices per optimizer step (default 16, at most a sixth of the training "
                        "items, at least 2)")
    parser.add_argument("--image-size", type=int, help="training input size, a multiple of 32 (default: 128 on a CPU, 224 on a GPU)")
    parser.add_argument("--lr", type=float)
    add_device(parser, default=None)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--encoder", choices=ENCODERS)
    add_modality(parser, "modality of the images without a DICOM modality of their own")
    add_plane(parser, "slicing plane for 3D volumes")
    parser.add_argument("--ablation", choices=tuple(ABLATIONS), default="none",
                        help="switch off one TMCA component, or 'unet': train the image-only MONAI BasicUNet baseline instead")
    parser.add_argument("--click-training", action="store_true",
                        help="give the model click inputs and train it with simulated corrective clicks, so that it can refine a "
                             "finding from the user's clicks (tmca.Segmenter.refine, the Slicer panel's Correct section)")
    parser.add_argument("--init-weights", type=Path, metavar="MODEL",
                        help="start from a trained model's weights wherever names and shapes match (to add --click-training or "
                             "a newer decoder to a model you trained); the other parts start fresh")
    parser.add_argument("--large-images", choices=("auto", *LARGE_IMAGE_MODES), default="auto",
                        help="slices much larger than --image-size: 'tile' trains on native-resolution crops (inference slides a "
                             "window), 'resize' squeezes each slice; 'auto' tiles when slices exceed 1.5x the size and no report "
                             "names a side or position")
    parser.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch (default: one pass over the data)")
    parser.add_argument("--time-limit", type=float, help="stop after this many minutes (checkpoints kept); the learning-rate "
                        "schedule ends near it")
    parser.add_argument("--val-every", type=int, help="optimizer steps between validations (default: once an epoch, at least 50 "
                        "steps apart)")
    parser.add_argument("--patience", type=int, help="early stopping: validations without a better validation Dice (default 8; "
                        "with fewer than 5 validation items no early stopping)")
    parser.add_argument("--min-steps", type=int, help="early stopping waits for at least this many optimizer steps (default 0)")
    parser.add_argument("--min-progress", type=float, help="early stopping waits for this share of the budget, steps or time "
                        "(default 0.5)")
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    add_progress(parser)
    return parser


def read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise TMCAError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise TMCAError(f"config file {path} is not valid YAML: {error}") from None
    unknown = set(values) - {"model", "train"}
    if unknown:
        raise TMCAError(f"config file {path}: unknown sections {sorted(unknown)}; use 'model' and 'train'")
    return values


def build_options(args: argparse.Namespace):
    from tmca.config import TMCAConfig
    from tmca.training import TrainOptions

    values = read_yaml(args.config)
    model = dict(values.get("model") or {})
    for key, arg in (("image_size", args.image_size), ("encoder", args.encoder), ("modality", args.modality), ("plane", args.plane)):
        if arg is not None:
            model[key] = arg
    model.update(ABLATIONS[args.ablation])
    if args.click_training:
        model["click_inputs"] = True
    config = TMCAConfig.from_dict(model)  # fail early on a bad architecture
    if config.spatial_dims != 2:
        raise TMCAError(f"spatial_dims {config.spatial_dims} in {args.config}: tmca trains 2D models only (3D volumes are trained slice by slice)")
    train = dict(values.get("train") or {})
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    if set(train) - known:
        raise TMCAError(f"unknown 'train' options in {args.config}: {sorted(set(train) - known)}")
    overrides = {"epochs": args.epochs, "max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
                 "seed": args.seed, "steps_per_epoch": args.steps_per_epoch, "time_limit_minutes": args.time_limit,
                 "val_every": args.val_every, "patience": args.patience, "min_steps": args.min_steps,
                 "min_progress": args.min_progress, "workers": args.workers}
    train.update({key: value for key, value in overrides.items() if value is not None})
    if args.large_images != "auto":
        model["large_images"] = args.large_images
    if args.init_weights is not None:
        train["init_weights"] = str(args.init_weights)
    options = TrainOptions(data=str(args.data), format=args.format, output=str(args.output), resume=args.resume, model=model, **train)
    options.check()
    return options


def _image_size(options: TrainOptions) -> None:
    """The training input size: the user's choice (--image-size or the YAML), else by the device
    (:func:`tmca.training.default_image_size`); says why on stderr."""
    from tmca.devices import resolve_device
    from tmca.training import default_image_size

    if "image_size" not in options.model:
        options.model["image_size"], why = default_image_size(resolve_device(options.device))
        _tell(why)


def _large_images(options: TrainOptions, train_samples: list[Sample], config: TMCAConfig) -> str:
    """How the model will see large slices: the user's choice (--large-images or the YAML), else by the
    training slices' size and reports (:func:`tmca.data.augment.choose_large_images`); says why on stderr."""
    from tmca.data.augment import choose_large_images

    if "large_images" in options.model:
        return options.model["large_images"]
    mode, why = choose_large_images(train_samples, config.image_size, config.plane)
    _tell(f"large images: {why} (large_images={mode})")
    return mode


def _tell(line: str) -> None:
    """A line for the person running the command (rank 0 only under torchrun); stderr keeps stdout for --progress json."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"tmca train: {line}", file=sys.stderr, flush=True)


def choose_in_channels(options, train_samples: list) -> str | None:
    """Set ``options.model["in_channels"]`` from the training images unless the config sets it or
    a resumed run has it: 3 when any image holds colour pixels (grey images are then repeated in
    the three channels), else 1. Returns the line that tells the user, or None when not chosen here."""
    from tmca.checkpoint import read_checkpoint_config
    from tmca.data.datasets import survey_colour

    if "in_channels" in options.model:
        return None
    last = Path(options.output) / "last"
    if options.resume and last.is_dir():
        options.model["in_channels"] = read_checkpoint_config(last)["model"].get("in_channels", 1)
        return None
    survey = survey_colour(train_samples)
    options.model["in_channels"] = survey.in_channels
    if not survey.colour:
        return None if not survey.colour_files else (
            f"{survey.colour_files} of {survey.files} training images are stored as colour but hold grey pixels: "
            "training a grey model (in_channels 1)")
    grey = survey.files - survey.colour_files
    mixed = f", {grey} grey image(s) repeated in the three channels" if grey else ""
    return (f"colour training images ({survey.colour_files} of {survey.files} files store colour): training a colour model "
            f"(in_channels 3{mixed}); set 'in_channels: 1' under 'model:' in --config for a grey model")


def run(args: argparse.Namespace) -> int:
    from tmca.config import TMCAConfig
    from tmca.data import SliceDataset, load_split
    from tmca.progress import make_progress
    from tmca.training import Trainer

    options = build_options(args)
    if args.output.exists() and (args.output / "last").exists() and not args.resume:
        raise TMCAError(f"run folder {args.output} already holds a run; pass --resume to continue it or choose another --output")
    train_samples = load_split(args.data, args.format, "train")
    val_samples = load_split(args.data, args.format, "val")
    if not train_samples:
        raise TMCAError(f"no usable training samples in {args.data} ({args.format} layout); check the warnings above")
    if not val_samples:
        raise TMCAError(f"no validation samples in {args.data}; add a Val split (early stopping and 'best' need one)")
    channels_line = choose_in_channels(options, train_samples)
    if channels_line:
        _tell(channels_line)
    if options.resume and (args.output / "last").exists():  # the run's own architecture decides how its data is prepared
        from tmca.checkpoint import read_checkpoint_config

        config = TMCAConfig.from_saved(read_checkpoint_config(args.output / "last")["model"])
    else:
        _image_size(options)
        config = TMCAConfig.from_dict(options.model)
        config.large_images = options.model["large_images"] = _large_images(options, train_samples, config)
    common = dict(image_size=config.image_size, modality=config.modality, intensity_policy=config.intensity_policy or None,
                  plane=config.plane, in_channels=config.in_channels, large_images=config.large_images)
    train_set = SliceDataset(train_samples, augment=True, seed=options.seed, **common)
    val_set = SliceDataset(val_samples, augment=False, seed=options.seed + 1, **common)
    _tell(train_set.augmentation.describe())
    progress = make_progress(args.progress)
    try:
        trainer = Trainer(options, train_set, val_set, progress)
        for line in (trainer.started_from, trainer.early_stopping_note):
            if line:
                _tell(line)
        summary = trainer.fit()
    finally:
        progress.close()
    if trainer.rank != 0:  # under torchrun the summary is rank 0's to tell
        return 0
    print(f"best validation Dice {summary['best_val_dice']:.4f} after {summary['steps']} steps, {summary['epochs_run']} epochs, "
          f"{summary['validations']} validations ({summary['stopped_by']}); model: {args.output / 'best'}")
    return 0
