"""Training: AdamW with a cosine schedule, the TMCA loss, validation Dice, early stopping, checkpoints.

Runs on one device, or under ``torchrun`` with DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
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
from tmca.checkpoint import load_checkpoint, save_checkpoint
from tmca.click_training import simulated_click_maps, wants_clicks
from tmca.config import TMCAConfig
from tmca.errors import TMCAError
from tmca.losses import TMCALoss
from tmca.networks.tmca_net import TMCANet

log = logging.getLogger(__name__)

METRIC_FIELDS = ("epoch", "step", "lr", "loss", "dice_loss", "bce", "align", "deep_supervision", "align_excluded_empty", "val_dice", "seconds")


@dataclass
class TrainOptions:
    """What ``tmca train`` is asked to do (the model's own settings live in :class:`TMCAConfig`)."""

    data: str
    format: str
    output: str
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    encoder_lr_scale: float = 0.3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    patience: int = 8
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    steps_per_epoch: int | None = None
    val_items: int = 256
    time_limit_minutes: float | None = None
    resume: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # a checkpoint folder whose architecture and weights training starts from (fine-tuning)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingStep(nn.Module):
    """Model and loss in one module, so DistributedDataParallel sees every parameter the loss uses."""

    def __init__(self, model: TMCANet, loss: TMCALoss, seed: int = 0) -> None:
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


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _parameter_groups(model: TMCANet, options: TrainOptions) -> list[dict]:
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in model.trainable_parameters() if id(p) not in encoder_ids and p.requires_grad]
    scale = options.encoder_lr_scale if model.config.encoder_pretrained else 1.0
    return [{"params": encoder, "lr": options.lr * scale}, {"params": rest, "lr": options.lr}]


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """Trains a TMCA model on a dataset and writes ``RUN/best``, ``RUN/last``, ``RUN/metrics.csv``."""

    def __init__(self, options: TrainOptions, train_set, val_set, progress: Callable[..., None] | None = None) -> None:
        from tmca.devices import resolve_device

        self.options = options
        self.rank, self.world = _distributed()
        self.device = resolve_device(options.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.run_dir = Path(options.output)
        self.progress = progress if progress and self.rank == 0 else (lambda *a, **k: None)  # rank 0 reports for all
        seed_everything(options.seed + self.rank)
        if options.init_from and not options.resume:
            self._start_from(Path(options.init_from))
        else:
            self.config = TMCAConfig.from_dict(options.model) if options.model else TMCAConfig()
            try:
                self.model = TMCANet(self.config).to(self.device)
            except (ValueError, OSError) as error:  # the networks' library errors, for the user
                raise TMCAError(f"cannot build the network: {error}") from error
        self.memory_format = torch.channels_last if self.config.spatial_dims == 2 else torch.contiguous_format
        self.train_set, self.val_set = train_set, val_set
        self.start_epoch, self.best_dice, self.step, self.stale_epochs = 0, -1.0, 0, 0
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
        self.optimizer = torch.optim.AdamW(_parameter_groups(self.model, options), weight_decay=options.weight_decay)
        resumed = options.resume and (self.run_dir / "state" / "optimizer.safetensors").is_file()
        if resumed:
            _load_optimizer(self.optimizer, self.run_dir / "state")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            cosine_with_warmup(options.warmup_steps, options.epochs * self.steps_per_epoch),
            last_epoch=self.step - 1 if resumed else -1,
        )

    def fit(self) -> dict[str, Any]:
        """Train to the end, early stopping or time limit; returns the summary written to RUN/summary.json."""
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "options.json", json.dumps(asdict(self.options), indent=2))
        started = time.monotonic()
        deadline = started + 60 * self.options.time_limit_minutes if self.options.time_limit_minutes else None
        stopped = "epochs"
        for epoch in range(self.start_epoch, self.options.epochs):
            epoch_started = time.monotonic()
            stats = self._train_epoch(epoch, deadline)
            val_dice = self._from_rank_zero(self.validate() if self.rank == 0 else 0.0)
            improved = val_dice > self.best_dice  # the same on every rank: best_dice and patience agree
            if improved:
                self.best_dice, self.stale_epochs = val_dice, 0
            else:
                self.stale_epochs += 1
            if self.rank == 0:
                row = {**stats, "epoch": epoch + 1, "step": self.step, "lr": self.scheduler.get_last_lr()[-1], "val_dice": val_dice}
                row["seconds"] = round(time.monotonic() - epoch_started, 1)
                self._log_metrics(row)
                self._save(epoch + 1, improved)
                log.info("epoch %d: loss %.4f, validation Dice %.4f", epoch + 1, stats.get("loss", float("nan")), val_dice)
            self.progress(epoch + 1, self.options.epochs, "training", val_dice=round(val_dice, 4), best_dice=round(self.best_dice, 4))
            if self._agree(self.stale_epochs >= self.options.patience):
                stopped = "early stopping"
                break
            if self._agree(deadline is not None and time.monotonic() > deadline):
                stopped = "time limit"
                break
        summary = {"best_val_dice": round(self.best_dice, 4), "epochs_run": epoch + 1, "steps": self.step, "stopped_by": stopped,
                   "minutes": round((time.monotonic() - started) / 60, 2)}
        if self.rank == 0:
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if self.world > 1:
            dist.barrier()
        return summary

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

    def _train_epoch(self, epoch: int, deadline: float | None) -> dict[str, float]:
        self.trainer_module.train()
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        totals: dict[str, float] = {}
        count = 0
        iterator = iter(self.loader)
        for batch_index in range(self.steps_per_epoch):
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(self.loader)
                batch = next(iterator)
            image = batch["image"].to(self.device).contiguous(memory_format=self.memory_format)
            mask = batch["mask"].to(self.device)
            loss, stats = self.trainer_module(image, mask, batch["report"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.trainable_parameters(), 5.0)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            count += 1
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            self.progress(batch_index + 1, self.steps_per_epoch, f"epoch {epoch + 1}", loss=round(stats["loss"], 4))
            if deadline is not None and time.monotonic() > deadline:
                break
        return {key: round(value / max(count, 1), 5) for key, value in totals.items()}

    @torch.no_grad()
    def validate(self) -> float:
        """Mean Dice over (at most ``val_items``) validation slices, thresholded at 0.5, at the model's input size."""
        self.model.eval()
        subset = self.val_set
        if len(subset) > self.options.val_items:  # a fixed, evenly spread subset keeps validation cheap
            subset = Subset(subset, np.linspace(0, len(subset) - 1, self.options.val_items).astype(int).tolist())
        loader = DataLoader(subset, batch_size=self.options.batch_size, shuffle=False, collate_fn=collate)
        scores = []
        for batch in loader:
            logits = self.model(batch["image"].to(self.device), batch["report"] if self.config.text else None).logits
            predicted = (logits > 0).float().flatten(1)
            truth = batch["mask"].to(self.device).flatten(1)
            intersection = (predicted * truth).sum(1)
            denominator = predicted.sum(1) + truth.sum(1)
            dice = torch.where(denominator > 0, 2 * intersection / denominator.clamp(min=1), torch.ones_like(denominator))
            scores.extend(dice.tolist())
        self.model.train()
        return float(np.mean(scores)) if scores else 0.0

    def _summary_for_checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            "training": {
                "data": str(self.options.data),
                "format": self.options.format,
                "train_samples": len(self.train_set),
                "val_samples": len(self.val_set),
                "epochs": epoch,
                "steps": self.step,
                "best_val_dice": round(self.best_dice, 4),
                "seed": self.options.seed,
            }
        }

    def _save(self, epoch: int, improved: bool) -> None:
        extra = self._summary_for_checkpoint(epoch)
        save_checkpoint(self.run_dir / "last", self.model, extra)
        if improved:
            save_checkpoint(self.run_dir / "best", self.model, extra)
        state = {"epoch": epoch, "step": self.step, "best_dice": self.best_dice, "stale_epochs": self.stale_epochs}
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

    def _resume(self) -> None:
        last = self.run_dir / "last"
        if not (last / "config.json").is_file():
            raise TMCAError(f"cannot resume: {last} has no checkpoint; start without --resume")
        model, _ = load_checkpoint(last, self.device)
        self.config = model.config
        self.model = model.train()
        state = json.loads((self.run_dir / "state" / "trainer.json").read_text())
        self.start_epoch, self.step = state["epoch"], state["step"]
        self.best_dice, self.stale_epochs = state["best_dice"], state["stale_epochs"]
        log.info("resuming %s at epoch %d", self.run_dir, self.start_epoch + 1)


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
