"""Model folders for the panel: a display label with lineage and Val Dice, fresh fine-tune folders, and
what a ``tmca finetune`` run decided. Reads JSON only (no torch), so it is cheap to call from the GUI."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional, Union

PathLike = Union[str, os.PathLike]

CONFIG_FILE = "config.json"  # as tmca.checkpoint.CONFIG_FILE
FINETUNE_FILE = "finetune.json"  # as tmca.finetune.RESULT_FILE
MODELS_FOLDER = "models"


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _parent_name(parent: dict[str, Any]) -> str:
    sha = str(parent.get("manifest_sha256") or "")[:8]
    name = Path(str(parent.get("path") or "")).name or "model"
    return f"{name} {sha}".strip()


def model_label(folder: PathLike | None) -> str:
    """e.g. "site-20261203-151000 (from demo a1b2c3d4, Val Dice 0.52 vs 0.00)"; the demo model for None or ""."""
    if not folder:
        return "bundled demo model"
    path = Path(folder)
    name = path.name or str(path)
    config = _read_json(path / CONFIG_FILE)
    if config is None:
        result = _read_json(path / FINETUNE_FILE)
        if result is not None and not result.get("promoted"):
            return f"{name} (not a model: the fine-tuned candidate was not promoted)"
        return f"{name} (no readable {CONFIG_FILE}: not a model folder)"
    lineage = config.get("lineage")
    if not isinstance(lineage, dict) or not isinstance(lineage.get("parent"), dict):
        return f"{name} (trained from scratch)"
    parent = lineage["parent"]
    try:
        scores = f"Val Dice {float(lineage['val_dice']):.2f} vs {float(parent['val_dice']):.2f}"
    except (KeyError, TypeError, ValueError):
        scores = "Val Dice unknown"
    return f"{name} (from {_parent_name(parent)}, {scores})"


def new_model_folder(site_dataset: PathLike, now: Callable[[], datetime] = datetime.now) -> Path:
    """A folder that does not exist yet: ``<site_dataset>/models/site-YYYYmmdd-HHMMSS[-N]`` (its parent is created)."""
    models = Path(site_dataset) / MODELS_FOLDER
    models.mkdir(parents=True, exist_ok=True)
    stem = f"site-{now().strftime('%Y%m%d-%H%M%S')}"
    candidate, number = models / stem, 1
    while candidate.exists() or (models / f".{candidate.name}.finetune-partial").exists():
        number += 1
        candidate = models / f"{stem}-{number}"
    return candidate


def finetune_outcome(returncode: Optional[int], output: PathLike) -> tuple[bool, str]:
    """(promoted, message) for a finished ``tmca finetune``, from its exit code and ``output/finetune.json``."""
    report = _read_json(Path(output) / FINETUNE_FILE)
    if returncode not in (0, 1) or report is None:
        return False, f"fine-tuning failed (exit code {returncode}); no model was written to {output}"
    try:
        base, new = float(report["base"]["val"]["dice"]), float(report["new"]["val"]["dice"])
        delta = float(report["delta_dice"])
        examples = report["new"]["val"]["n"]
    except (KeyError, TypeError, ValueError):
        return False, f"fine-tuning finished but {Path(output) / FINETUNE_FILE} is unreadable; the model was not switched"
    scores = f"Val Dice {new:.4f} vs {base:.4f} on {examples} Val examples"
    if returncode == 0 and report.get("promoted"):
        if report.get("forced"):
            return True, f"kept although worse by {-delta:.4f} (forced): {scores}"
        return True, f"promoted: {scores} ({delta:+.4f})"
    return False, f"not promoted: worse than the current model by {-delta:.4f} Val Dice ({scores}); the current model stays"
