"""Paths to test data that lives outside the repository.

- shared data: ``$TMCA_SHARED_DATA`` or ``<repo>/../shared/data`` (``real/``, ``reports/``). Where it
  is missing, ``tmca synth`` writes stand-ins of the same kind (an MR volume with its lesion label,
  QaTa-style reports), so a clean clone runs every test;
- pydicom's bundled test files (``pydicom/data/test_files``);
- pydicom-data's files (package ``pydicom-data``, module ``data_store``, folder ``data_store/data``).
"""

from __future__ import annotations

import csv
import functools
import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# name in <shared>/real -> (synth seed, in-plane size, slices) of its stand-in: MR volumes with a lesion label,
# anisotropic voxels and a non-zero origin, as the real brain (256x256x25) and breast (45x120x21) MRIs have.
_REAL_STAND_INS = {"brain1": (1, 64, 25), "breast1": (2, 64, 21)}


def shared_data_dir() -> Path:
    """The shared data folder (may not exist)."""
    configured = os.environ.get("TMCA_SHARED_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


def real_data_file(name: str) -> Path:
    """A file of ``<shared data>/real`` (``brain1_image.nrrd``, ``breast1_label.nrrd``, ...), else its synthetic stand-in."""
    path = shared_data_dir() / "real" / name
    if path.is_file():
        return path
    case, _, kind = name.removesuffix(".nrrd").rpartition("_")
    if case not in _REAL_STAND_INS or kind not in ("image", "label"):
        pytest.fail(f"{path} is missing and no synthetic stand-in exists for {name}")
    return _stand_in_volume(case) / f"{case}_{kind}.nrrd"


def qata_reports() -> list[str]:
    """The Description column of ``<shared data>/reports/qata_test_reports.csv`` (38 real QaTa-COV19
    reports), else the QaTa-style reports of ``tmca synth --modality xr`` cases."""
    path = shared_data_dir() / "reports" / "qata_test_reports.csv"
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            return [row["Description"] for row in csv.DictReader(handle)]
    import json

    folder = _synth(("--modality", "xr", "--dims", "2", "--cases", "120", "--seed", "5", "--size", "64", "--no-finding-fraction", "0"))
    cases = json.loads((folder / "synth.json").read_text(encoding="utf-8"))["cases"]
    return [case["report"] for case in cases if case["style"] == "qata"]


@functools.lru_cache(maxsize=None)
def _stand_in_volume(case: str) -> Path:
    """``<folder>/<case>_image.nrrd`` and ``<case>_label.nrrd`` from one ``tmca synth`` MR case."""
    import SimpleITK as sitk

    seed, size, depth = _REAL_STAND_INS[case]
    folder = _synth(("--modality", "mr", "--dims", "3", "--cases", "1", "--seed", str(seed), "--size", str(size),
                     "--depth", str(depth), "--no-finding-fraction", "0"))
    for kind, subfolder in (("image", "images"), ("label", "masks")):
        source = next((folder / subfolder).glob("*.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(source)), str(folder / f"{case}_{kind}.nrrd"), useCompression=True)
    return folder


@functools.lru_cache(maxsize=None)
def _synth(arguments: tuple[str, ...]) -> Path:
    """A folder written by ``tmca synth`` with ``arguments`` (once per test process)."""
    from tmca.cli import main

    folder = Path(tempfile.mkdtemp(prefix="tmca-test-data-"))
    if main(["synth", "--output", str(folder), *arguments]) != 0:
        pytest.fail(f"tmca synth {' '.join(arguments)} failed")
    return folder


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
