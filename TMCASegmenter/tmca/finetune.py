"""Fine-tuning on a site dataset of corrected findings, promoted only when it is not worse.

``finetune`` starts from a base checkpoint (its architecture and weights), trains on the site
dataset's Train split with :class:`tmca.training.Trainer` (optionally mixing in a share of
"replay" examples of the base model's own kind of data, against forgetting), scores the base and
the candidate on the same Val split (Dice, and Dice with shuffled reports) and writes the result
folder in one rename::

    NEW/config.json, model.safetensors, manifest.json   the fine-tuned checkpoint (when promoted)
    NEW/rejected/                                        the candidate instead, when it was worse
    NEW/finetune.json                                    scores, data, time, options, decision
    NEW/training/                                        metrics.csv, summary.json, options.json

A refused candidate never sits where a model is looked for: ``NEW`` then holds no config.json,
so loading ``NEW`` fails with a clear message, and the candidate stays in ``NEW/rejected/`` for
inspection. The checkpoint's config.json records its lineage: the parent's manifest sha256
(:func:`tmca.checkpoint.checkpoint_id`) and both models' Val Dice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from tmca import __version__
from tmca.atomic import write_text_atomic
from tmca.checkpoint import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, checkpoint_id, load_checkpoint, read_checkpoint_config, save_checkpoint, sha256_of
from tmca.errors import TMCAError
from tmca.models import resolve_model
from tmca.site import MANIFEST, check_trainable

log = logging.getLogger(__name__)

RESULT_FILE = "finetune.json"
REJECTED_FOLDER = "rejected"
TRAINING_FOLDER = "training"


@dataclass
class FinetuneOptions:
    """What ``tmca finetune`` is asked to do. ``model`` None or "" means the bundled demo model."""

    data: str
    output: str
    model: str | None = None
    minutes: float | None = 5.0
    device: str = "auto"
    replay: str | None = None
    replay_format: str = "csv"
    replay_share: float = 0.5
    force: bool = False
    epochs: int = 8
    steps_per_epoch: int = 20
    batch_size: int = 8
    lr: float = 3e-4
    seed: int = 0


@dataclass
class FinetuneResult:
    """The decision and the path of what was written (``report`` is the content of finetune.json)."""

    promoted: bool
    forced: bool
    delta_dice: float
    output: Path
    report: dict[str, Any]

    @property
    def message(self) -> str:
        base, new = self.report["base"]["val"]["dice"], self.report["new"]["val"]["dice"]
        scores = f"Val Dice {new:.4f} vs base {base:.4f} ({self.delta_dice:+.4f}, n={self.report['new']['val']['n']})"
        if self.promoted and self.forced and self.delta_dice < 0:
            return f"kept the fine-tuned model in {self.output} although it is worse (--force): {scores}"
        if self.promoted:
            return f"promoted the fine-tuned model {self.output}: {scores}"
        return (f"not promoted: the fine-tuned model is worse than the base by {-self.delta_dice:.4f} Val Dice ({scores}); "
                f"the candidate is kept in {self.output / REJECTED_FOLDER} (pass --force to keep it as the model)")


def check_inputs(options: FinetuneOptions) -> tuple[Path, dict[str, int]]:
    """(base checkpoint folder, site split counts), or TMCAError before anything is written."""
    output = Path(options.output)
    if output.exists():
        raise TMCAError(f"output {output} already exists; choose a new folder for the fine-tuned model (nothing was changed)")
    if not output.parent.is_dir() or not os.access(output.parent, os.W_OK):
        raise TMCAError(f"cannot create {output}: its folder {output.parent} does not exist or is not writable")
    base = resolve_model(options.model)
    config = read_checkpoint_config(base)  # verifies every hash
    if config.get("model", {}).get("spatial_dims", 2) != 2:
        raise TMCAError(f"model {base} is not a 2D model; tmca fine-tunes 2D (slice by slice) models only")
    if not Path(options.data).is_dir():
        raise TMCAError(f"site dataset folder not found: {options.data}")
    counts = check_trainable(options.data)
    if options.replay is not None and not Path(options.replay).exists():
        raise TMCAError(f"replay dataset not found: {options.replay}; pass the folder of the base model's own kind of data")
    if not 0.0 < options.replay_share < 1.0:
        raise TMCAError(f"replay share must be between 0 and 1 (exclusive), not {options.replay_share}")
    if options.minutes is not None and options.minutes <= 0:
        raise TMCAError(f"--minutes must be positive, not {options.minutes}")
    return base, counts


def mix_replay(site: Dataset, replay: Dataset, share: float, seed: int) -> tuple[Dataset, int]:
    """``site`` plus a seeded random subset of ``replay`` sized so that replay items are ``share`` of the
    whole (all of ``replay`` when it is smaller); returns the mixed set and the replay items used."""
    wanted = int(round(len(site) * share / (1.0 - share)))
    count = min(wanted, len(replay))
    chosen = np.random.default_rng(seed).permutation(len(replay))[:count].tolist()
    return ConcatDataset([site, Subset(replay, chosen)]), count


def finetune(options: FinetuneOptions, progress: Callable[..., None] | None = None) -> FinetuneResult | None:
    """Fine-tune, evaluate, decide and write ``options.output``; see the module docstring.

    Returns None on the other processes of a torchrun job (rank 0 evaluates and writes). Raises
    TMCAError for bad input (nothing written).
    """
    from tmca.data import SliceDataset, load_split
    from tmca.training import TrainOptions, Trainer

    started, started_at = time.monotonic(), datetime.now(timezone.utc)
    base, counts = check_inputs(options)
    output = Path(options.output)
    base_config = read_checkpoint_config(base)["model"]
    train_samples = load_split(options.data, "csv", "train")
    val_samples = load_split(options.data, "csv", "val")
    site_sha256 = sha256_of(Path(options.data) / MANIFEST)  # of the rows read now, even if corrections are saved meanwhile
    if not train_samples or len(val_samples) < 2:
        raise TMCAError(f"site dataset {options.data}: its files are missing or unreadable (see the warnings above); "
                        f"{len(train_samples)} Train and {len(val_samples)} Val examples could be read")
    common = dict(image_size=base_config["image_size"], modality=base_config.get("modality"),
                  intensity_policy=base_config.get("intensity_policy") or None, plane=base_config.get("plane", "axial"),
                  in_channels=base_config.get("in_channels", 1), large_images=base_config.get("large_images", "resize"))
    train_set: Dataset = SliceDataset(train_samples, augment=True, seed=options.seed, **common)
    site_slices, replay_info = len(train_set), None
    if options.replay:
        replay_samples = load_split(options.replay, options.replay_format, "train")
        if not replay_samples:
            raise TMCAError(f"no usable Train samples in the replay dataset {options.replay} ({options.replay_format} layout)")
        replay_set = SliceDataset(replay_samples, augment=True, seed=options.seed + 2, **common)
        train_set, used = mix_replay(train_set, replay_set, options.replay_share, options.seed)
        replay_info = {"path": str(options.replay), "format": options.replay_format, "examples": len(replay_samples),
                       "slices_used": used, "share": options.replay_share}
    val_set = SliceDataset(val_samples, augment=False, seed=options.seed + 1, **common)

    staging = output.parent / f".{output.name}.finetune-partial"
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # left by a crashed run: never a result
    train_options = TrainOptions(
        data=str(options.data), format="csv", output=str(staging / TRAINING_FOLDER), epochs=options.epochs,
        batch_size=options.batch_size, lr=options.lr, warmup_steps=min(10, options.steps_per_epoch), patience=options.epochs,
        seed=options.seed, device=options.device, steps_per_epoch=options.steps_per_epoch, val_items=64,
        time_limit_minutes=options.minutes, init_from=str(base),
    )
    try:
        trainer = Trainer(train_options, train_set, val_set, progress)
        summary = trainer.fit()
        if trainer.rank != 0:
            return None
        data = {"site": str(options.data), "manifest_sha256": site_sha256,
                "train_examples": len(train_samples), "val_examples": len(val_samples), "site_split_counts": counts,
                "train_slices": site_slices, "replay": replay_info}
        result = _evaluate_and_write(options, base, staging, val_samples, data, summary, progress)
        result.report.update({"started": started_at.isoformat(timespec="seconds"),
                              "minutes_total": round((time.monotonic() - started) / 60, 2)})
        write_text_atomic(staging / RESULT_FILE, json.dumps(result.report, indent=2))
        os.rename(staging, output)
    except BaseException:
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _evaluate_and_write(options: FinetuneOptions, base: Path, staging: Path, val_samples: list, data: dict[str, Any],
                        summary: dict[str, Any], progress: Callable[..., None] | None) -> FinetuneResult:
    """Score base and candidate on Val, decide, and write the checkpoint (with lineage) into ``staging``.

    The candidate is the run's last checkpoint, not its best: "best" is chosen on this same Val
    split, which would tilt the comparison towards the candidate.
    """
    from tmca.evaluation import evaluate
    from tmca.inference import Segmenter

    run = staging / TRAINING_FOLDER
    candidate_folder = run / "last"
    scores = {}
    for name, folder in (("base", base), ("new", candidate_folder)):
        segmenter = Segmenter(folder, device=options.device)
        plain = evaluate(segmenter, val_samples, progress=progress)
        shuffled = evaluate(segmenter, val_samples, shuffle_text=True, seed=options.seed, progress=progress)
        scores[name] = {"dice": plain["dice"], "dice_shuffled_reports": shuffled["dice"], "n": plain["n"]}
    delta = round(scores["new"]["dice"] - scores["base"]["dice"], 4)
    promoted = delta >= 0 or options.force
    parent = {"path": str(base), "manifest_sha256": checkpoint_id(base), "val_dice": scores["base"]["dice"]}
    lineage = {"parent": parent, "val_dice": scores["new"]["dice"], "val_dice_shuffled_reports": scores["new"]["dice_shuffled_reports"],
               "val_examples": scores["new"]["n"], "site_manifest_sha256": data["manifest_sha256"], "promoted": promoted}
    model, config = load_checkpoint(candidate_folder, "cpu", text_encoder=getattr(segmenter.model, "text_encoder", None))
    extra = {key: value for key, value in config.items() if key not in ("format", "model")}
    target = staging if promoted else staging / REJECTED_FOLDER
    written = save_checkpoint(staging / REJECTED_FOLDER, model, {**extra, "lineage": lineage})
    if promoted:  # save_checkpoint replaces a folder as a whole: move the files up beside finetune.json and training/
        for name in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE):
            os.replace(written / name, staging / name)
        written.rmdir()
    for leftover in ("best", "last", "state"):  # the training run's own checkpoints: the result is saved above
        shutil.rmtree(run / leftover, ignore_errors=True)
    report = {
        "tmca": __version__,
        "promoted": promoted,
        "forced": bool(options.force and delta < 0),
        "delta_dice": delta,
        "rule": "promote when the fine-tuned model's Val Dice is not below the base model's (same Val split)",
        "base": {**parent, "val": scores["base"]},
        "new": {"path": str(Path(options.output) if promoted else Path(options.output) / REJECTED_FOLDER),
                "manifest_sha256": checkpoint_id(target), "val": scores["new"]},
        "data": data,
        "training": summary,
        "options": asdict(options),
    }
    return FinetuneResult(promoted, report["forced"], delta, Path(options.output), report)
