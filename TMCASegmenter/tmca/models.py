"""Where models live: the bundled demo model and user checkpoint folders."""

from __future__ import annotations

import os
from pathlib import Path

from tmca.errors import TMCAError

DEFAULT_MODEL_NAME = "tmca-demo"
MODEL_ENV = "TMCA_DEFAULT_MODEL"


def _candidates() -> list[Path]:
    package = Path(__file__).resolve().parent
    candidates = []
    if os.environ.get(MODEL_ENV):
        candidates.append(Path(os.environ[MODEL_ENV]))
    # source tree: <repo>/TMCASegmenter/tmca; Slicer install: <qt-scripted-modules>/tmca next to Resources/
    for root in (package.parents[1], package.parent):
        candidates.append(root / "Resources" / "Models" / DEFAULT_MODEL_NAME)
    return candidates


def default_model_path() -> Path | None:
    """The bundled demo model folder, or None when this installation has none."""
    for candidate in _candidates():
        if (candidate / "config.json").is_file():
            return candidate
    return None


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A checkpoint folder from a user's argument; None or '' means the bundled demo model."""
    if model:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise TMCAError(f"model folder not found: {path}; pass a checkpoint folder (config.json, model.safetensors, manifest.json)")
        if (path / "best" / "config.json").is_file() and not (path / "config.json").is_file():
            return path / "best"  # a training run folder
        return path
    path = default_model_path()
    if path is None:
        looked = ", ".join(str(p) for p in _candidates())
        raise TMCAError(f"the bundled demo model is not installed (looked in {looked}); pass --model DIR or set {MODEL_ENV}")
    return path
