"""Where the module finds its resources."""

from __future__ import annotations

import os
from pathlib import Path


def resource_dir(module_dir: str | os.PathLike) -> str:
    """The module's Resources folder: beside the module in a build or install tree, one level up
    (the extension's top-level ``Resources/``) when Slicer loads the module from its source folder."""
    beside = Path(module_dir) / "Resources"
    return str(beside if beside.is_dir() else Path(module_dir).parent / "Resources")
