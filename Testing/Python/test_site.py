"""Site dataset: corrections saved as training examples that `tmca train` reads as they are."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from datapaths import pydicom_test_file
from tmca import site
from tmca.data.datasets import load_samples
from tmca.errors import TMCAError


def _scan(seed: int = 0, size=(12, 10, 6)) -> sitk.Image:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(size=tuple(reversed(size))).astype(np.float32))
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-10.0, 4.0, 30.0))
    return image


def _mask(scan: sitk.Image, corner: int = 2) -> np.ndarray:
    mask = np.zeros(tuple(reversed(scan.GetSize())), dtype=np.uint8)
    mask[1:4, corner:corner + 3, corner:corner + 4] = 1
    return mask


def test_findings_of_a_scan_share_one_image_and_train_reads_the_folder(tmp_path):
    scan = _scan()
    first = site.add_example(tmp_path, scan, "Nodule in the left upper lobe.", _mask(scan, 1), case="ct-1")
    second = site.add_example(tmp_path, scan, "Cyst in the right lobe.", _mask(scan, 5), case="ct-1")
    assert first.image == second.image and first.mask != second.mask
    assert len(list((tmp_path / "images").iterdir())) == 1
    assert first.split == second.split
    samples = load_samples(tmp_path, "csv", "all").samples
    assert sorted(s.report for s in samples) == ["Cyst in the right lobe.", "Nodule in the left upper lobe."]
    stored = sitk.ReadImage(str(tmp_path / first.mask))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), _mask(scan, 1))
    np.testing.assert_allclose(stored.GetOrigin(), scan.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(stored.GetSpacing(), scan.GetSpacing(), atol=1e-5)  # NIfTI stores float32
    assert "no DICOM header" in (tmp_path / "README.md").read_text()


def test_saving_the_same_finding_again_replaces_it(tmp_path):
    scan = _scan()
    site.add_example(tmp_path, scan, "Nodule, left lung.", _mask(scan, 1), case="a")
    again = site.add_example(tmp_path, scan, "Nodule,  left lung .", _mask(scan, 4), case="a")
    rows = site.read_manifest(tmp_path)
    assert len(rows) == 1 and rows[0] == again
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / again.mask))), _mask(scan, 4))


def test_a_case_keeps_one_split_and_cases_spread_over_train_and_val(tmp_path):
    scan = _scan()
    splits = {site.add_example(tmp_path, scan, f"finding {i}", _mask(scan), case=f"case-{i}").split for i in range(40)}
    assert splits == {"Train", "Val"}
    counts = site.split_counts(tmp_path)
    assert 3 <= counts["Val"] <= 16 and counts["Train"] + counts["Val"] == 40
    kept = site.read_manifest(tmp_path)[0]
    other = "Val" if kept.split == "Train" else "Train"
    with pytest.raises(TMCAError, match="stays in one split"):
        site.add_example(tmp_path, scan, "another finding", _mask(scan), case=kept.case, split=other)
    assert site.add_example(tmp_path, scan, "another finding", _mask(scan), case=kept.case).split == kept.split


@pytest.mark.parametrize("mask, report, message", [
    (np.zeros((6, 10, 12), np.uint8), "nodule", "segment is empty"),
    (np.ones((6, 12, 10), np.uint8), "nodule", "another grid|resample"),
    (np.ones((6, 10, 12), np.uint8), "   ", "no sentence"),
])
def test_bad_corrections_are_refused_and_change_nothing(tmp_path, mask, report, message):
    scan = _scan()
    site.add_example(tmp_path, scan, "kept finding", _mask(scan), case="a")
    before = (tmp_path / site.MANIFEST).read_bytes()
    with pytest.raises(TMCAError, match=message):
        site.add_example(tmp_path, scan, report, mask, case="b")
    assert (tmp_path / site.MANIFEST).read_bytes() == before


def test_mask_image_on_another_grid_is_refused(tmp_path):
    scan = _scan()
    shifted = sitk.GetImageFromArray(_mask(scan))
    shifted.CopyInformation(scan)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(TMCAError, match="another grid"):
        site.add_example(tmp_path, scan, "nodule", shifted)


def test_damaged_manifest_row_is_reported_and_kept(tmp_path):
    scan = _scan()
    site.add_example(tmp_path, scan, "nodule", _mask(scan), case="a")
    manifest = tmp_path / site.MANIFEST
    manifest.write_text(manifest.read_text() + "images/x.nii.gz,masks/y.nii.gz\n")
    damaged = manifest.read_bytes()
    with pytest.raises(TMCAError, match="row 3 is damaged"):
        site.add_example(tmp_path, scan, "cyst", _mask(scan), case="b")
    assert manifest.read_bytes() == damaged


def test_unwritable_site_folder_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TMCAError, match="cannot create the site dataset"):
        site.add_example(blocker / "site", _scan(), "nodule", _mask(_scan()))


def test_too_small_dataset_says_how_many_more(tmp_path):
    scan = _scan()
    site.add_example(tmp_path, scan, "nodule", _mask(scan), case="a", split="Train")
    with pytest.raises(TMCAError, match="2 more Val example"):
        site.check_trainable(tmp_path)
    for case in ("v1", "v2"):
        site.add_example(tmp_path, scan, "nodule", _mask(scan), case=case, split="Val")
    assert site.check_trainable(tmp_path) == {"Train": 1, "Val": 2}


def _save_many(folder: str, worker: int, barrier) -> None:
    scan = _scan(worker)
    barrier.wait(60)  # both processes save at the same time
    for index in range(20):
        site.add_example(folder, scan, f"finding {worker}-{index}", _mask(scan), case=f"w{worker}")


def test_concurrent_saves_from_two_processes_lose_no_row(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_save_many, args=(str(tmp_path), w, barrier)) for w in (1, 2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    rows = site.read_manifest(tmp_path)
    assert sorted(r.report for r in rows) == sorted(f"finding {w}-{i}" for w in (1, 2) for i in range(20))
    assert len(list((tmp_path / "images").iterdir())) == 2


def test_dicom_header_is_not_copied(tmp_path):
    import pydicom

    source = pydicom_test_file("CT_small.dcm")
    name = str(pydicom.dcmread(source).PatientName)
    assert name
    from tmca.imageio import load_image

    scan = load_image(source).image
    example = site.add_example(tmp_path, source, "nodule", np.ones(tuple(reversed(scan.GetSize())), np.uint8))
    stored = (tmp_path / example.image).read_bytes()
    import gzip

    assert name.encode() not in gzip.decompress(stored)
    assert Path(example.image).suffixes == [".nii", ".gz"]
