"""What a checkpoint says about itself: architecture, training, and its lineage (parent, Val Dice)."""

from __future__ import annotations

import os
from typing import Any

from tmca.checkpoint import checkpoint_id, read_checkpoint_config
from tmca.models import resolve_model

ARCHITECTURE_KEYS = ("encoder", "text_encoder", "spatial_dims", "image_size", "modality", "plane")


def model_summary(model: str | os.PathLike | None) -> dict[str, Any]:
    """Path, manifest sha256, architecture, training summary and lineage of a verified checkpoint.

    ``lineage`` is None for a model trained from scratch; for a fine-tuned one it holds the parent's
    manifest sha256 and Val Dice and the model's own Val Dice on the same split.
    """
    path = resolve_model(model)
    config = read_checkpoint_config(path)
    architecture = config.get("model", {})
    return {
        "path": str(path),
        "manifest_sha256": checkpoint_id(path),
        **{key: architecture.get(key) for key in ARCHITECTURE_KEYS},
        "training": config.get("training"),
        "lineage": config.get("lineage"),
    }


def describe_lineage(summary: dict[str, Any]) -> list[str]:
    """Lines for a terminal: the model's id and, for a fine-tuned model, its parent and both Val Dice."""
    lines = [f"model: {summary['path']}", f"  manifest sha256: {summary['manifest_sha256']}"]
    lines.append("  architecture: " + ", ".join(f"{key}={summary[key]}" for key in ARCHITECTURE_KEYS if summary.get(key) is not None))
    lineage = summary.get("lineage")
    if not lineage:
        lines.append("  lineage: trained from scratch (no parent)")
        return lines
    parent = lineage["parent"]
    lines.append(f"  parent: {parent['manifest_sha256']} ({parent['path']})")
    lines.append(f"  Val Dice: {lineage['val_dice']:.4f} (parent {parent['val_dice']:.4f}, n={lineage['val_examples']}; "
                 f"shuffled reports {lineage['val_dice_shuffled_reports']:.4f})")
    return lines
