"""Training counted in optimizer steps: validation every N steps, patience in validations, the minimum
before early stopping, and a learning-rate schedule that follows the real budget (steps or time)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch.utils.data import Dataset

from tmca.errors import TMCAError
from tmca.training import LR_FLOOR, BudgetSchedule, Trainer, TrainOptions, auto_val_every, planned_steps

TINY_IMAGE_ONLY = {"encoder": "small", "encoder_pretrained": False, "image_size": 32, "embed_dim": 32,
                   "decoder_channels": [32, 16, 16, 8, 8], "text": False}  # fmt: skip


class TinySlices(Dataset):
    """A stand-in dataset: ``count`` random 32 x 32 slices with a square target."""

    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(count)
        self.images = torch.rand(count, 1, 32, 32, generator=generator)
        self.mask = torch.zeros(1, 32, 32)
        self.mask[:, 8:20, 8:20] = 1.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.mask, "report": "Nodule."}


class ScriptedTrainer(Trainer):
    """A Trainer whose validation Dice follows a script (a noisy small Val set) and whose clock advances
    TICK seconds at each reading (a machine of fixed speed), so stopping decisions are exact."""

    scores: list[float] = []
    TICK = 0.05

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        readings = iter(range(10**9))
        self.clock = lambda: self.TICK * next(readings)

    def validate(self) -> float:
        return self.scores[min(self.validations, len(self.scores) - 1)]


def _fit(tmp_path, scores: list[float], **options) -> tuple[dict, list[dict]]:
    ScriptedTrainer.scores = scores
    values = dict(data="stand-in", format="csv", output=str(tmp_path / "run"), batch_size=2, device="cpu", warmup_steps=0,
                  model=TINY_IMAGE_ONLY)  # fmt: skip
    values.update(options)
    summary = ScriptedTrainer(TrainOptions(**values), TinySlices(4), TinySlices(2)).fit()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    return summary, rows


FALLING = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0]


def test_early_stopping_waits_for_half_the_budget(tmp_path):
    summary, rows = _fit(tmp_path, FALLING, max_steps=20, val_every=2, patience=1, min_progress=0.5)
    assert [int(row["step"]) for row in rows] == [2, 4, 6, 8, 10]  # one row per validation, every 2 steps
    assert summary["stopped_by"] == "early stopping" and summary["steps"] == 10 and summary["validations"] == 5
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4", "5"]  # 4 items, batch 2: 2 steps an epoch


def test_without_a_minimum_patience_alone_stops(tmp_path):
    summary, _ = _fit(tmp_path, FALLING, max_steps=20, val_every=2, patience=1, min_progress=0.0)
    assert summary["stopped_by"] == "early stopping" and summary["steps"] == 4


def test_early_stopping_waits_for_the_minimum_steps_and_patience_counts_validations(tmp_path):
    summary, _ = _fit(tmp_path, FALLING, max_steps=40, val_every=2, patience=1, min_progress=0.0, min_steps=14)
    assert summary["stopped_by"] == "early stopping" and summary["steps"] == 14
    summary, rows = _fit(tmp_path / "patient", [0.5, 0.6, 0.55, 0.5, 0.45, 0.4], max_steps=40, val_every=3, patience=3, min_progress=0.0)
    assert summary["steps"] == 15 and summary["best_val_dice"] == 0.6  # best at the 2nd validation, 3 stale ones after it
    assert len(rows) == 5


def test_a_time_limit_ends_the_cosine_schedule(tmp_path):
    summary, rows = _fit(tmp_path, [0.5], time_limit_minutes=0.025, val_every=10, lr=1e-3)
    assert summary["stopped_by"] == "time limit" and summary["planned_steps"] is None
    assert float(rows[-1]["lr"]) < 0.25e-3  # the rate decayed towards its floor by the time limit, whatever a step cost
    assert summary["steps"] > 20 and len(rows) == math.ceil(summary["steps"] / 10)


def test_early_stopping_waits_for_half_the_time_limit(tmp_path):
    summary, _ = _fit(tmp_path, FALLING, time_limit_minutes=0.05, val_every=1, patience=1, min_progress=0.5)
    assert summary["stopped_by"] == "early stopping" and summary["minutes"] * 60 >= 1.5


def test_budget_schedule_follows_steps_or_time_whichever_is_further():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = BudgetSchedule(optimizer, [1.0], warmup=10, total_steps=110)
    assert schedule.factor(0, None) == pytest.approx(0.1)  # warm-up
    assert schedule.factor(60, None) == pytest.approx(LR_FLOOR + (1 - LR_FLOOR) * 0.5)  # half the steps after warm-up
    assert schedule.factor(60, 0.9) == pytest.approx(schedule.factor(100, None))  # time is further: time places it
    assert schedule.apply(110, 0.1) == pytest.approx(LR_FLOOR) and optimizer.param_groups[0]["lr"] == pytest.approx(LR_FLOOR)
    timed = BudgetSchedule(optimizer, [1.0], warmup=10, total_steps=None, time_start=0.6)  # resumed with 60 % of the time used
    assert timed.time_share(0.5) == pytest.approx(0.8) and timed.factor(500, timed.time_share(1.0)) == pytest.approx(LR_FLOOR)


def test_validation_interval_and_budget_defaults():
    assert [auto_val_every(n) for n in (1, 2, 3, 30, 80, 500)] == [50, 50, 51, 60, 80, 500]
    base = dict(data="d", format="csv", output="o")
    assert planned_steps(TrainOptions(**base), 2) == (1000, "steps")  # tiny data: at least 1000 steps
    assert planned_steps(TrainOptions(**base), 100) == (3000, "epochs")
    assert planned_steps(TrainOptions(**base, epochs=26), 80) == (2080, "epochs")
    assert planned_steps(TrainOptions(**base, max_steps=300), 2) == (300, "steps")
    assert planned_steps(TrainOptions(**base, time_limit_minutes=15), 2) == (None, "time limit")
    with pytest.raises(TMCAError, match="--epochs or --steps"):
        TrainOptions(**base, epochs=3, max_steps=10).check()
    with pytest.raises(TMCAError, match="val_every must be at least 1"):
        TrainOptions(**base, val_every=0).check()


def test_a_tiny_validation_set_trains_the_whole_budget_unless_patience_is_given(tmp_path):
    summary, _ = _fit(tmp_path / "default", FALLING, max_steps=20, val_every=2, min_progress=0.0)
    assert summary["stopped_by"] == "steps" and summary["steps"] == 20  # 2 validation items: no early stopping
    summary, _ = _fit(tmp_path / "asked", FALLING, max_steps=20, val_every=2, min_progress=0.0, patience=2)
    assert summary["stopped_by"] == "early stopping"


def test_default_patience_needs_enough_validation_items():
    from tmca.training import DEFAULT_PATIENCE, MIN_VAL_ITEMS_TO_STOP, default_patience

    assert default_patience(MIN_VAL_ITEMS_TO_STOP) == DEFAULT_PATIENCE
    assert default_patience(MIN_VAL_ITEMS_TO_STOP - 1) is None
