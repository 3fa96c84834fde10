"""Training: AdamW with a warm-up and a cosine schedule over the real budget, the TMCA loss, validation
Dice every few hundred images, early stopping, checkpoints.

Counted in optimizer steps, so that a small dataset (an epoch of 24 images is one or two steps)
trains as long and validates as often as a large one:

- **Budget**: ``max_steps``, else ``epochs`` x steps per epoch; with only ``time_limit_minutes``,
  until the time limit; with none of them, DEFAULT_EPOCHS epochs but at least DEFAULT_MIN_STEPS steps.
  A time limit also caps a step budget.
- **Validation** every ``val_every`` steps (default :func:`auto_val_every`: once an epoch, but at
  least MIN_VAL_INTERVAL steps apart, at an epoch's end) and when training stops; one row of
  ``metrics.csv`` per validation.
- **Early stopping** after ``patience`` validations without a better Dice, but never before
  ``min_steps`` steps and ``min_progress`` of the budget (of the steps, or of the time limit): a noisy
  validation set of a few images cannot end a 15-minute run after 3 minutes. With fewer than
  MIN_VAL_ITEMS_TO_STOP validation items there is no early stopping unless ``patience`` is given.
- **Learning rate**: linear warm-up over ``warmup_steps``, then a cosine from the base rates to
  LR_FLOOR of them, placed by the share of the budget used: the larger of steps / planned steps and
  elapsed time / time limit. With ``--time-limit`` the schedule therefore ends near the time limit
  whatever a step costs on this machine (no estimate of the step time to get wrong); seeded runs
  without a time limit repeat exactly. On ``resume`` the steps go on, and the time share goes on
  from where the run stopped, spread over the new time limit.

Runs on one device, or under ``torchrun`` with DistributedDataParallel (gloo on CPU, nccl on CUDA);
rank 0 keeps the clock and every process takes its decisions.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from tmca.atomic import atomic_path, write_text_atomic
from tmca.checkpoint import load_checkpoint, save_checkpoint, transfer_weights
from tmca.click_training import simulated_click_maps, wants_clicks
from tmca.config import TMCAConfig
from tmca.errors import TMCAError
from tmca.losses import TMCALoss
from tmca.networks.factory import build_network

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16

METRIC_FIELDS = ("epoch", "step", "lr", "loss", "dice_loss", "bce", "align", "deep_supervision", "align_excluded_empty", "val_dice", "seconds")
DEFAULT_EPOCHS = 30
DEFAULT_MIN_STEPS = 1000
MIN_VAL_INTERVAL = 50  # steps: a small dataset validates every 50-100 steps, not every one or two
LR_FLOOR = 0.02
SLIDING_WINDOW_OVERLAP = 0.25
CPU_IMAGE_SIZE = 128  # the default training size on a CPU (default_image_size)
DEFAULT_PATIENCE = 8
MIN_VAL_ITEMS_TO_STOP = 5  # fewer validation items: no early stopping by default (default_patience)


@dataclass
class TrainOptions:
    """What ``tmca train`` is asked to do (the model's own settings live in :class:`TMCAConfig`).

    The budget, validation, early stopping and schedule are described in the module docstring.
    """

    data: str
    format: str
    output: str
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None  # None: default_batch_size(training items)
    lr: float = 1e-3
    encoder_lr_scale: float = 0.3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    patience: int | None = None  # validations without a better validation Dice (None: default_patience)
    val_every: int | None = None  # optimizer steps between validations (None: auto_val_every)
    min_steps: int = 0  # early stopping waits for this many steps ...
    min_progress: float = 0.5  # ... and this share of the budget (steps or time)
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    steps_per_epoch: int | None = None
    val_items: int = 256
    time_limit_minutes: float | None = None
    resume: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # a checkpoint folder whose architecture and weights training starts from (fine-tuning)
    init_weights: str | None = None  # a checkpoint whose weights start the configured architecture where names and shapes match

    def check(self) -> None:
        """TMCAError for options that cannot make a run."""
        problems = []
        if self.epochs is not None and self.max_steps is not None:
            problems.append("give --epochs or --steps, not both")
        for name in ("epochs", "max_steps", "batch_size", "val_every", "patience", "steps_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be at least 1, not {value}")
        if self.init_from and self.init_weights:
            problems.append("give init_from (that model's architecture) or init_weights (the configured one), not both")
        if self.time_limit_minutes is not None and self.time_limit_minutes <= 0:
            problems.append(f"the time limit must be positive, not {self.time_limit_minutes}")
        if not 0.0 <= self.min_progress <= 1.0:
            problems.append(f"min_progress must be between 0 and 1, not {self.min_progress}")
        if problems:
            raise TMCAError("invalid training options: " + "; ".join(problems))


def auto_val_every(steps_per_epoch: int) -> int:
    """Steps between validations: once an epoch, or every few epochs so that at least MIN_VAL_INTERVAL
    steps lie between two validations (1-2 steps an epoch: every 50; 30: every 60; 500: every 500)."""
    return steps_per_epoch * max(1, math.ceil(MIN_VAL_INTERVAL / steps_per_epoch))


def planned_steps(options: TrainOptions, steps_per_epoch: int) -> tuple[int | None, str]:
    """(the step budget, or None to train until the time limit; what ends it: "steps" or "epochs")."""
    if options.max_steps:
        return options.max_steps, "steps"
    if options.epochs:
        return options.epochs * steps_per_epoch, "epochs"
    if options.time_limit_minutes:
        return None, "time limit"
    by_epochs = DEFAULT_EPOCHS * steps_per_epoch
    return (by_epochs, "epochs") if by_epochs >= DEFAULT_MIN_STEPS else (DEFAULT_MIN_STEPS, "steps")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingStep(nn.Module):
    """Model and loss in one module, so DistributedDataParallel sees every parameter the loss uses."""

    def __init__(self, model: nn.Module, loss: TMCALoss, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.click_rng = np.random.default_rng(seed)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, reports: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        text = self.model.encode_text(reports) if self.model.config.text else None
        features = self.model.encoder(image)
        clicks = None
        if self.model.config.click_inputs and wants_clicks(self.click_rng):
            clicks = simulated_click_maps(self.model, [f.detach() for f in features], image, text, mask, self.click_rng)
        output = self.model.decode(features, image, text, clicks=clicks)
        stats_loss, stats = self.loss(self.model, output, mask, reports)
        stats["clicks"] = float(clicks is not None)
        return stats_loss, stats


class BudgetSchedule:
    """Learning rates of an optimizer's groups: linear warm-up over ``warmup`` steps from their
    ``base_lrs``, then a cosine to LR_FLOOR x base placed by :meth:`progress` (see the module docstring).

    ``total_steps`` None: time alone places the cosine. ``time_start``: the time share already used
    when this process started (resume).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lrs: list[float], warmup: int, total_steps: int | None,
                 time_start: float = 0.0) -> None:
        self.optimizer, self.base_lrs, self.warmup, self.total_steps, self.time_start = optimizer, base_lrs, warmup, total_steps, time_start

    def time_share(self, elapsed_fraction: float) -> float:
        """Share of the time budget used after ``elapsed_fraction`` of this process's time limit."""
        return self.time_start + (1.0 - self.time_start) * min(1.0, elapsed_fraction)

    def progress(self, step: int, time_share: float | None) -> float:
        """Share of the budget used, 0..1: the larger of the step share (after warm-up) and ``time_share``."""
        steps = (step - self.warmup) / max(1, self.total_steps - self.warmup) if self.total_steps else 0.0
        return min(1.0, max(0.0, steps, time_share or 0.0))

    def factor(self, step: int, time_share: float | None) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * self.progress(step, time_share)))

    def apply(self, step: int, time_share: float | None) -> float:
        """Set the rates for ``step``; returns the last group's rate."""
        factor = self.factor(step, time_share)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.optimizer.param_groups[-1]["lr"]


def default_image_size(device: torch.device) -> tuple[int, str]:
    """(training input size, why) for a model whose size nobody chose: CPU_IMAGE_SIZE on a CPU, where a step
    at the model's full size costs several times as much (3.8 on the development machine) and a short
    budget gains more from the extra steps than from the extra pixels (docs/ACCURACY.md); the model's
    full size on a GPU."""
    full = TMCAConfig().image_size
    if device.type == "cpu":
        return CPU_IMAGE_SIZE, (f"image size {CPU_IMAGE_SIZE} px, the default on a CPU (a {full} px step has "
                                f"{(full / CPU_IMAGE_SIZE) ** 2:.0f} times the pixels); pass --image-size {full} to train at full size")
    return full, f"image size {full} px on {device.type}"


def default_patience(val_items: int) -> int | None:
    """DEFAULT_PATIENCE validations, or None (no early stopping: the whole budget is trained and the
    learning rate reaches its floor) with fewer than MIN_VAL_ITEMS_TO_STOP validation items, whose Dice
    swings by more than the models differ: on one real MRI slice, 0.6 to 0.8 between validations."""
    return DEFAULT_PATIENCE if val_items >= MIN_VAL_ITEMS_TO_STOP else None


def default_batch_size(items: int) -> int:
    """DEFAULT_BATCH_SIZE, but at most a sixth of the training items (at least 2), so that a small dataset
    still gives several optimizer steps per pass and each step costs little on a CPU."""
    return max(2, min(DEFAULT_BATCH_SIZE, items // 6))


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _parameter_groups(model: nn.Module, options: TrainOptions) -> list[dict]:
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in model.trainable_parameters() if id(p) not in encoder_ids and p.requires_grad]
    pretrained = model.config.encoder_pretrained and model.config.architecture == "tmca"  # the unet baseline starts from scratch
    scale = options.encoder_lr_scale if pretrained else 1.0
    return [{"params": encoder, "lr": options.lr * scale}, {"params": rest, "lr": options.lr}]


def _dice(logits: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """Dice per item of (B, 1, *spatial) logits thresholded at 0 against (B, 1, *spatial) {0, 1}; 1 when both are empty."""
    predicted, truth = (logits > 0).float().flatten(1), truth.flatten(1)
    intersection = (predicted * truth).sum(1)
    denominator = predicted.sum(1) + truth.sum(1)
    return torch.where(denominator > 0, 2 * intersection / denominator.clamp(min=1), torch.ones_like(denominator)).tolist()


class Trainer:
    """Trains a model on a dataset and writes ``RUN/best``, ``RUN/last``, ``RUN/metrics.csv``, ``RUN/summary.json``."""

    def __init__(self, options: TrainOptions, train_set, val_set, progress: Callable[..., None] | None = None) -> None:
        from tmca.devices import resolve_device

        options.check()
        self.options = options
        self.rank, self.world = _distributed()
        self.device = resolve_device(options.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.run_dir = Path(options.output)
        self.progress = progress if progress and self.rank == 0 else (lambda *a, **k: None)  # rank 0 reports for all
        seed_everything(options.seed + self.rank)
        self.started_from: str | None = None
        if options.init_from and not options.resume:
            self._start_from(Path(options.init_from))
        else:
            self.config = TMCAConfig.from_dict(options.model) if options.model else TMCAConfig()
            try:
                self.model = build_network(self.config).to(self.device)
            except (ValueError, OSError) as error:  # the networks' library errors, for the user
                raise TMCAError(f"cannot build the network: {error}") from error
            if options.init_weights and not options.resume:
                self._take_weights(Path(options.init_weights))
        self.memory_format = torch.channels_last if self.config.spatial_dims == 2 else torch.contiguous_format
        self.train_set, self.val_set = train_set, val_set
        if options.batch_size is None:
            options.batch_size = default_batch_size(len(train_set))
            log.info("batch size %d for %d training items", options.batch_size, len(train_set))
        self.early_stopping_note: str | None = None
        if options.patience is None:
            options.patience = default_patience(len(val_set))
            if options.patience is None:
                self.early_stopping_note = (f"early stopping off: {len(val_set)} validation item(s) are too few to tell when the model "
                                            f"stops improving (at least {MIN_VAL_ITEMS_TO_STOP}); training the whole budget, "
                                            "pass --patience N to stop earlier")
        self.best_dice, self.step, self.stale_validations, self.validations, self.time_start = -1.0, 0, 0, 0, 0.0
        if options.resume:
            self._resume()
        self.model = self.model.to(memory_format=self.memory_format)
        self.step_module = TrainingStep(self.model, TMCALoss(self.config.lambda_align, self.config.lambda_ds), options.seed + self.rank)
        self.trainer_module = (
            nn.parallel.DistributedDataParallel(self.step_module, find_unused_parameters=True) if self.world > 1 else self.step_module
        )
        self.sampler = DistributedSampler(train_set, seed=options.seed) if self.world > 1 else None
        self.loader = DataLoader(
            train_set,
            batch_size=options.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=options.workers,
            drop_last=len(train_set) > options.batch_size,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(options.seed),
        )
        self.steps_per_epoch = options.steps_per_epoch or len(self.loader)
        self.total_steps, self.budget = planned_steps(options, self.steps_per_epoch)
        self.val_every = options.val_every or auto_val_every(self.steps_per_epoch)
        self.optimizer = torch.optim.AdamW(_parameter_groups(self.model, options), weight_decay=options.weight_decay)
        base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        if options.resume and (self.run_dir / "state" / "optimizer.safetensors").is_file():
            _load_optimizer(self.optimizer, self.run_dir / "state")
        self.schedule = BudgetSchedule(self.optimizer, base_lrs, options.warmup_steps, self.total_steps, self.time_start)
        self._batches: Iterator | None = None
        self._passes = 0
        self.clock: Callable[[], float] = time.monotonic  # seconds; rank 0's decides the time limit and the schedule

    def fit(self) -> dict[str, Any]:
        """Train to the end of the budget, early stopping or the time limit; returns the summary written to RUN/summary.json."""
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "options.json", json.dumps(asdict(self.options), indent=2))
        self.started = self.clock()
        self.limit_s = 60 * self.options.time_limit_minutes if self.options.time_limit_minutes else None
        log.info("training: %s steps (%s), validation every %d steps, %d steps an epoch",
                 self.total_steps or "time-limited", self.budget, self.val_every, self.steps_per_epoch)
        stopped = self.budget if self.total_steps is not None and self.step >= self.total_steps else None
        while stopped is None:
            interval_started = self.clock()
            stats, time_share, out_of_time = self._train_interval()
            val_dice = self._from_rank_zero(self.validate() if self.rank == 0 else 0.0)
            self.validations += 1
            improved = val_dice > self.best_dice  # the same on every rank: best_dice and patience agree
            if improved:
                self.best_dice, self.stale_validations = val_dice, 0
            else:
                self.stale_validations += 1
            progress = self.schedule.progress(self.step, time_share)
            if self.rank == 0:
                row = {**stats, "epoch": self.epochs_done, "step": self.step, "lr": self.optimizer.param_groups[-1]["lr"], "val_dice": val_dice,
                       "seconds": round(self.clock() - interval_started, 1)}
                self._log_metrics(row)
                self._save(improved, time_share)
                log.info("step %d (epoch %s): loss %.4f, validation Dice %.4f", self.step, self.epochs_done, stats.get("loss", float("nan")), val_dice)
            self.progress(self.step, self._total_estimate(progress), "validation", val_dice=round(val_dice, 4), best_dice=round(self.best_dice, 4))
            if self.total_steps is not None and self.step >= self.total_steps:
                stopped = self.budget
            elif out_of_time:
                stopped = "time limit"
            elif self._agree(self._may_stop_early(progress)):
                stopped = "early stopping"
        summary = {"best_val_dice": round(self.best_dice, 4), "epochs_run": self.epochs_done, "steps": self.step,
                   "validations": self.validations, "val_every": self.val_every, "planned_steps": self.total_steps,
                   "stopped_by": stopped, "minutes": round((self.clock() - self.started) / 60, 2)}
        if self.rank == 0:
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if self.world > 1:
            dist.barrier()
        return summary

    @property
    def epochs_done(self) -> float:
        """Optimizer steps in epochs (of ``steps_per_epoch`` steps), to 2 decimals; whole numbers as int."""
        epochs = round(self.step / self.steps_per_epoch, 2)
        return int(epochs) if epochs == int(epochs) else epochs

    def _may_stop_early(self, progress: float) -> bool:
        """Patience spent, and both the minimum steps and the minimum share of the budget reached."""
        options = self.options
        if options.patience is None:
            return False
        return self.stale_validations >= options.patience and self.step >= options.min_steps and progress >= options.min_progress

    def _total_estimate(self, progress: float) -> int:
        """The step budget, or (time-limited runs) the steps the time limit will allow at the pace so far."""
        if self.total_steps is not None:
            return self.total_steps
        return max(self.step, round(self.step / progress)) if progress > 0 else self.step

    def _agree(self, flag: bool) -> bool:
        """Every process takes rank 0's decision."""
        return bool(self._from_rank_zero(1.0 if flag else 0.0))

    def _from_rank_zero(self, value: float) -> float:
        """Rank 0's ``value`` on every process (``value`` itself on one process)."""
        if self.world == 1:
            return value
        shared = torch.tensor([float(value)], dtype=torch.float64)
        dist.broadcast(shared, src=0)
        return float(shared.item())

    def _clock(self) -> tuple[float | None, bool]:
        """(time share of the budget used or None without a time limit, out of time), rank 0's on every process."""
        if self.limit_s is None:
            return None, False
        elapsed = (self.clock() - self.started) / self.limit_s
        share, out = self.schedule.time_share(elapsed), elapsed >= 1.0
        if self.world > 1:
            shared = torch.tensor([share, float(out)], dtype=torch.float64)
            dist.broadcast(shared, src=0)
            share, out = float(shared[0]), bool(shared[1])
        return share, out

    def _next_batch(self) -> dict[str, Any]:
        """The next batch; a new shuffled pass over the data when one ends."""
        while True:
            if self._batches is None:
                if self.sampler is not None:
                    self.sampler.set_epoch(self._passes + self.step)  # another order after a resume too
                self._batches = iter(self.loader)
                self._passes += 1
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None

    def _train_interval(self) -> tuple[dict[str, float], float | None, bool]:
        """Optimizer steps up to the next validation (every ``val_every`` steps), the end of the budget or of
        the time; returns (mean loss terms, time share, out of time)."""
        self.trainer_module.train()
        totals: dict[str, float] = {}
        count = 0
        time_share, out_of_time = self._clock()
        while True:
            batch = self._next_batch()
            lr = self.schedule.apply(self.step, time_share)
            image = batch["image"].to(self.device).contiguous(memory_format=self.memory_format)
            mask = batch["mask"].to(self.device)
            loss, stats = self.trainer_module(image, mask, batch["report"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.trainable_parameters(), 5.0)
            self.optimizer.step()
            self.step += 1
            count += 1
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            time_share, out_of_time = self._clock()
            progress = self.schedule.progress(self.step, time_share)
            self.progress(self.step, self._total_estimate(progress), "training", loss=round(stats["loss"], 4), lr=float(f"{lr:.3g}"))
            if self.step % self.val_every == 0 or out_of_time or (self.total_steps is not None and self.step >= self.total_steps):
                break
        return {key: round(value / max(count, 1), 5) for key, value in totals.items()}, time_share, out_of_time

    @torch.no_grad()
    def validate(self) -> float:
        """Mean Dice over (at most ``val_items``) validation items, thresholded at 0.5.

        At the model's input size; a model that tiles large slices (``large_images="tile"``) is scored
        on whole slices at native resolution by a sliding window of its input size.
        """
        self.model.eval()
        indices = list(range(len(self.val_set)))
        if len(indices) > self.options.val_items:  # a fixed, evenly spread subset keeps validation cheap
            indices = np.linspace(0, len(indices) - 1, self.options.val_items).astype(int).tolist()
        if self.config.large_images == "tile" and hasattr(self.val_set, "native_item"):
            scores = [self._native_dice(self.val_set.native_item(index)) for index in indices]
        else:
            scores = []
            loader = DataLoader(Subset(self.val_set, indices), batch_size=self.options.batch_size, shuffle=False, collate_fn=collate)
            for batch in loader:
                logits = self.model(batch["image"].to(self.device), batch["report"] if self.config.text else None).logits
                scores.extend(_dice(logits, batch["mask"].to(self.device)))
        self.model.train()
        return float(np.mean(scores)) if scores else 0.0

    def _native_dice(self, item: dict[str, Any]) -> float:
        """Dice of one whole native-resolution slice, predicted by a sliding window of the model's input size."""
        from monai.inferers import sliding_window_inference

        size = self.config.image_size
        text = self.model.encode_text([item["report"]]) if self.config.text else None

        def predict(windows: torch.Tensor) -> torch.Tensor:
            return self.model(windows, None if text is None else text.expand(len(windows))).logits

        image = item["image"][None].to(self.device)
        logits = sliding_window_inference(image, (size, size), self.options.batch_size, predict, overlap=SLIDING_WINDOW_OVERLAP)
        return _dice(logits.as_subclass(torch.Tensor), item["mask"][None].to(self.device))[0]

    def _summary_for_checkpoint(self) -> dict[str, Any]:
        return {
            "training": {
                "data": str(self.options.data),
                "format": self.options.format,
                "train_samples": len(self.train_set),
                "val_samples": len(self.val_set),
                "epochs": self.epochs_done,
                "steps": self.step,
                "validations": self.validations,
                "best_val_dice": round(self.best_dice, 4),
                "seed": self.options.seed,
                **({"init_weights": self.options.init_weights} if self.options.init_weights else {}),
            }
        }

    def _save(self, improved: bool, time_share: float | None) -> None:
        extra = self._summary_for_checkpoint()
        save_checkpoint(self.run_dir / "last", self.model, extra)
        if improved:
            save_checkpoint(self.run_dir / "best", self.model, extra)
        state = {"epoch": self.epochs_done, "step": self.step, "best_dice": self.best_dice, "stale_validations": self.stale_validations,
                 "validations": self.validations, "time_share": time_share or 0.0}
        _save_optimizer(self.optimizer, self.run_dir / "state", state)

    def _log_metrics(self, row: dict[str, Any]) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _start_from(self, checkpoint: Path) -> None:
        """Take the architecture and weights of ``checkpoint`` (the step count and optimizer start afresh)."""
        model, _ = load_checkpoint(checkpoint, self.device)
        self.config = model.config
        self.model = model.train()
        log.info("starting from the weights of %s", checkpoint)

    def _take_weights(self, checkpoint: Path) -> None:
        """Start the configured architecture from ``checkpoint``'s weights wherever they fit."""
        copied, total, fresh = transfer_weights(self.model, checkpoint)
        parts = sorted({".".join(name.split(".")[:3]) for name in fresh})
        self.started_from = (f"starting from the weights of {checkpoint}: {100.0 * copied / total:.1f}% of {total} parameters; "
                             f"fresh: {', '.join(parts) or 'nothing'}")
        log.info(self.started_from)

    def _resume(self) -> None:
        last = self.run_dir / "last"
        if not (last / "config.json").is_file():
            raise TMCAError(f"cannot resume: {last} has no checkpoint; start without --resume")
        model, _ = load_checkpoint(last, self.device)
        self.config = model.config
        self.model = model.train()
        state = json.loads((self.run_dir / "state" / "trainer.json").read_text())
        self.step, self.best_dice = state["step"], state["best_dice"]
        self.stale_validations = state.get("stale_validations", state.get("stale_epochs", 0))  # runs of tmca before steps
        self.validations = state.get("validations", 0)
        self.time_start = min(1.0, state.get("time_share", 0.0))
        log.info("resuming %s at step %d", self.run_dir, self.step)


def collate(items: list[dict]) -> dict[str, Any]:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
        "report": [item["report"] for item in items],
    }


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path, trainer_state: dict[str, Any]) -> None:
    """Optimizer tensors to safetensors and its scalars to JSON (no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.detach().cpu().contiguous() for index, entries in state["state"].items() for key, value in entries.items()}
    with atomic_path(folder / "optimizer.safetensors") as tmp:
        save_file(tensors, str(tmp))
    groups = [{k: v for k, v in group.items()} for group in state["param_groups"]]
    write_text_atomic(folder / "optimizer.json", json.dumps(groups))
    write_text_atomic(folder / "trainer.json", json.dumps(trainer_state))


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        entries.setdefault(int(index), {})[key] = value
    groups = json.loads((folder / "optimizer.json").read_text())
    optimizer.load_state_dict({"state": entries, "param_groups": groups})
