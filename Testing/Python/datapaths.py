"""Paths to test data that lives outside the repository; each helper skips the test when absent.

- shared data: ``$TMCA_SHARED_DATA`` or ``<repo>/../shared/data`` (``real/``, ``reports/``);
- pydicom's bundled test files (``pydicom/data/test_files``);
- pydicom-data's files (package ``pydicom-data``, module ``data_store``, folder ``data_store/data``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """The shared data folder (may not exist)."""
    configured = os.environ.get("TMCA_SHARED_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


def shared_data_file(relative: str) -> Path:
    """``<shared data>/<relative>``, e.g. ``real/brain1_image.nrrd``; skips when missing."""
    path = shared_data_dir() / relative
    if not path.is_file():
        pytest.skip(f"shared data file {path} is missing; set TMCA_SHARED_DATA to the folder holding real/ and reports/")
    return path


def real_data_file(name: str) -> Path:
    """A file of ``<shared data>/real`` (real MRIs and labels); skips when missing."""
    return shared_data_file(f"real/{name}")


def pydicom_test_file(name: str) -> Path:
    """A file bundled with pydicom (``pydicom/data/test_files``); skips when missing. Never downloads."""
    pydicom_data = pytest.importorskip("pydicom.data", reason="pydicom is not installed")
    path = pydicom_data.get_testdata_file(name, download=False)
    if path is None or not Path(path).is_file():
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom version")
    return Path(path)


def pydicom_data_file(name: str) -> Path:
    """A file of the pydicom-data package (``data_store/data``); skips when missing."""
    data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed (pip install pydicom-data)")
    path = Path(data_store.__file__).parent / "data" / name
    if not path.is_file():
        pytest.skip(f"pydicom-data file {name} is missing from {path.parent}")
    return path
