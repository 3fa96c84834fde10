"""Dataset loaders (lvit, qata, csv) on small fixtures, bad-row reports, and the training slice dataset."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from openpyxl import Workbook
from PIL import Image

from tmca.data import SliceDataset, load_samples
from tmca.data.augment import swap_sides
from tmca.errors import TMCAError


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _grey(size=(32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)


def _mask(size=(32, 32), value=255) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    mask[8:16, 20:28] = value
    return mask


def _xlsx(path: Path, rows: list[tuple[str, str]]) -> None:
    workbook = Workbook()
    workbook.active.append(["Image", "Description"])
    for row in rows:
        workbook.active.append(list(row))
    workbook.save(path)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def lvit_root(tmp_path: Path) -> Path:
    folder = tmp_path / "Train_Folder"
    Image.fromarray(_grey()).save(_png(folder / "img" / "a.png", _grey()).with_suffix(".tif"))  # sheet says .png
    (folder / "img" / "a.png").unlink()
    _png(folder / "img" / "b.png", _grey(seed=1))
    _png(folder / "img" / "d.png", _grey(seed=2))
    _png(folder / "img" / "e.png", _grey(seed=3))
    _png(folder / "labelcol" / "mask_a.png", _mask(value=255))  # mask_ prefix, 0/255
    _png(folder / "labelcol" / "b.png", _mask(value=1))  # 0/1
    _png(folder / "labelcol" / "d.png", _mask())
    _png(folder / "labelcol" / "e.png", _mask(size=(16, 16)))  # another size
    _xlsx(
        tmp_path / "Train_text.xlsx",
        [
            ("a.png", "Small nodule in the upper left lung."),
            ("b.png", "Large nodule in the lower right lung."),
            ("c.png", "Missing files."),
            ("d.png", "   "),
            ("e.png", "Mask of another size."),
        ],
    )
    return tmp_path


def test_lvit_matches_by_stem_and_reports_bad_rows(lvit_root, caplog):
    with caplog.at_level(logging.WARNING):
        result = load_samples(lvit_root, "lvit", "train")
    assert [(s.case_id, s.image.name, s.mask.name, s.split) for s in result.samples] == [
        ("a", "a.tif", "mask_a.png", "Train"),
        ("b", "b.png", "b.png", "Train"),
    ]
    assert result.samples[0].report == "Small nodule in the upper left lung."
    reasons = {skipped.row: skipped.reason for skipped in result.skipped}
    assert sorted(reasons) == [4, 5, 6]
    assert "no image named c" in reasons[4]
    assert "empty report" in reasons[5]
    assert "mask size 16x16 differs from image size 32x32" in reasons[6]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert all(f"Train_text.xlsx row {row}:" in logged for row in (4, 5, 6))


@pytest.fixture
def lvit_release(tmp_path: Path) -> Path:
    """Laid out exactly like LViT's released datasets (MoNuSeg): each split's table inside its
    folder, colour TIFF images in img/, PNG masks in labelcol/, the sheet naming the image X.png."""
    root = tmp_path / "MoNuSeg"
    for index, split in enumerate(("Train", "Val", "Test")):
        folder = root / f"{split}_Folder"
        names = [f"TCGA-{split}-{k}" for k in range(2)]
        for k, name in enumerate(names):
            colour = np.random.default_rng([index, k]).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            (folder / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(colour).save(folder / "img" / f"{name}.tif")
            _png(folder / "labelcol" / f"{name}.png", _mask(size=(40, 48)))
        _xlsx(folder / f"{split}_text.xlsx", [(f"{name}.png", f"Dense nuclei in the {side} half.") for name, side in zip(names, ("left", "right"))])
    return root


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_lvit_released_layout_reads_the_table_inside_each_split_folder(lvit_release, split):
    result = load_samples(lvit_release, "lvit", split)
    assert result.skipped == []
    name = split.capitalize()
    assert [(s.image.name, s.mask.name, s.report) for s in result.samples] == [
        (f"TCGA-{name}-0.tif", f"TCGA-{name}-0.png", "Dense nuclei in the left half."),
        (f"TCGA-{name}-1.tif", f"TCGA-{name}-1.png", "Dense nuclei in the right half."),
    ]
    item = SliceDataset(result.samples, image_size=32)[0]
    assert item["image"].shape == (1, 32, 32) and item["mask"].shape == (1, 32, 32) and item["mask"].max() == 1


def test_lvit_table_inside_the_split_folder_wins_over_one_in_root(lvit_release):
    _xlsx(lvit_release / "Train_text.xlsx", [("TCGA-Train-0.png", "The root table's report.")])
    assert [s.report for s in load_samples(lvit_release, "lvit", "train").samples] == [
        "Dense nuclei in the left half.", "Dense nuclei in the right half."]
    (lvit_release / "Train_Folder" / "Train_text.xlsx").unlink()
    assert [s.report for s in load_samples(lvit_release, "lvit", "train").samples] == ["The root table's report."]
    (lvit_release / "Train_text.xlsx").unlink()
    with pytest.raises(TMCAError, match="no Train_text.xlsx or Train_text.csv .* in .*Train_Folder or .*MoNuSeg"):
        load_samples(lvit_release, "lvit", "train")


def test_lvit_missing_split_folder_is_a_clear_error(lvit_root):
    with pytest.raises(TMCAError, match="Test_Folder"):
        load_samples(lvit_root, "lvit", "test")
    with pytest.raises(TMCAError, match="unknown split"):
        load_samples(lvit_root, "lvit", "holdout")


def test_qata_layout_val_is_the_last_fifth_of_train(tmp_path):
    for i in range(10):
        _png(tmp_path / "Train" / "Images" / f"covid_{i}.png", _grey(seed=i))
        _png(tmp_path / "Train" / "GTs" / f"mask_covid_{i}.png", _mask())
    _write_csv(tmp_path / "Train_text.csv", ["Image", "Description"], [[f"mask_covid_{i}.png", f"Report {i}."] for i in range(10)])
    _png(tmp_path / "Test" / "Images" / "covid_t.jpg", _grey(seed=20))  # extension differs from the CSV
    _png(tmp_path / "Test" / "GTs" / "mask_covid_t.png", _mask())
    _write_csv(tmp_path / "prompt" / "test.csv", ["Image", "Description"], [["mask_covid_t.png", "Test report."]])
    train, val = load_samples(tmp_path, "qata", "train"), load_samples(tmp_path, "qata", "val")
    assert [s.case_id for s in train.samples] == [f"covid_{i}" for i in range(8)]
    assert [s.case_id for s in val.samples] == ["covid_8", "covid_9"]
    assert val.samples[0].image.name == "covid_8.png" and val.samples[0].mask.name == "mask_covid_8.png"
    test = load_samples(tmp_path, "qata", "test")
    assert [(s.image.name, s.report) for s in test.samples] == [("covid_t.jpg", "Test report.")]


def _volume(path: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    volume = np.zeros((10, 24, 24), dtype=np.int16)
    volume[:, 4:20, 4:20] = 100
    target = np.zeros((10, 24, 24), dtype=np.uint8)
    target[2:4, 6:10, 14:18] = 1
    _volume(tmp_path / "images" / "v1.nii.gz", volume)
    _volume(tmp_path / "masks" / "v1.nii.gz", target)
    _png(tmp_path / "images" / "p1.png", _grey())
    _png(tmp_path / "masks" / "p1.png", _mask())
    (tmp_path / "images" / "broken.nii.gz").write_bytes(b"not an image")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "v1.txt").write_text("Small nodule in the upper left lung.\n")
    _write_csv(
        tmp_path / "manifest.csv",
        ["image", "mask", "report", "split", "case"],
        [
            ["images/v1.nii.gz", "masks/v1.nii.gz", "reports/v1.txt", "train", "vol1"],
            ["images/p1.png", "masks/p1.png", "A 2D report.", "Train", ""],
            ["images/broken.nii.gz", "masks/v1.nii.gz", "Broken.", "train", ""],
            ["images/p1.png", "masks/p1.png", "reports/missing.txt", "train", ""],
            ["images/p1.png", "masks/p1.png", "Held out.", "test", ""],
        ],
    )
    return tmp_path


def test_csv_manifest_with_volumes_report_files_and_bad_rows(csv_root):
    result = load_samples(csv_root / "manifest.csv", "csv", "train")
    assert [(s.case_id, s.report) for s in result.samples] == [("vol1", "Small nodule in the upper left lung."), ("p1", "A 2D report.")]
    assert [(s.row, s.reason.split(":")[0]) for s in result.skipped] == [
        (4, "unreadable image " + str(csv_root / "images" / "broken.nii.gz")),
        (5, "report file not found"),
    ]
    assert [s.report for s in load_samples(csv_root, "csv", "test").samples] == ["Held out."]
    assert len(load_samples(csv_root, "csv", "all").samples) == 3


def test_csv_without_split_column_splits_by_case_hash(tmp_path):
    _png(tmp_path / "i.png", _grey())
    _png(tmp_path / "m.png", _mask())
    _write_csv(tmp_path / "manifest.csv", ["image", "mask", "report", "case"], [["i.png", "m.png", "r.", f"c{i}"] for i in range(60)])
    splits = [load_samples(tmp_path, "csv", split).samples for split in ("train", "val", "test")]
    ids = [{s.case_id for s in samples} for samples in splits]
    assert sum(len(x) for x in ids) == 60 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(ids[0]) > len(ids[2]) > 0
    assert ids == [{s.case_id for s in load_samples(tmp_path, "csv", split).samples} for split in ("train", "val", "test")]


def test_slice_dataset_2d_shapes_ranges_and_rgb(tmp_path, lvit_root):
    samples = load_samples(lvit_root, "lvit", "train").samples
    dataset = SliceDataset(samples, image_size=48, augment=True)
    assert len(dataset) == 2
    for index in range(2):
        item = dataset[index]
        assert item["image"].shape == item["mask"].shape == (1, 48, 48)
        assert item["image"].dtype == item["mask"].dtype == torch.float32
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
        assert item["report"] in (samples[index].report, swap_sides(samples[index].report))  # mirrored with the sides swapped
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(32, dtype=np.uint8)[None, :] * 8  # red ramp
    rgb[..., 1] = 100
    samples[1].image = _png(tmp_path / "rgb.png", rgb)
    plain = SliceDataset(samples, image_size=32)
    grey = 0.299 * rgb[..., 0].astype(np.float32) + 0.587 * 100
    assert np.allclose(plain[1]["image"][0].numpy(), (grey - grey.min()) / (grey.max() - grey.min()), atol=1e-5)
    expected = np.asarray(Image.open(samples[0].image), dtype=np.float32)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.allclose(plain[0]["image"][0].numpy(), expected, atol=1e-5)  # no augmentation, same size: unchanged
    assert np.array_equal(plain[0]["mask"][0].numpy() > 0, _mask() > 0)
    assert SliceDataset(samples, image_size=16)[1]["mask"].shape == (1, 16, 16)


def test_masks_count_any_colour_or_palette_index_but_never_alpha(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque everywhere
    rgba[8:16, 20:28, 1] = 180  # a green target
    _png(tmp_path / "img" / "x.png", _grey())
    _png(tmp_path / "img" / "y.png", _grey(seed=1))
    _png(tmp_path / "mask" / "x.png", rgba)
    palette = Image.fromarray((_mask() > 0).astype(np.uint8), mode="L").convert("P")
    palette.save(tmp_path / "mask" / "y.png")
    _write_csv(
        tmp_path / "manifest.csv", ["image", "mask", "report"], [["img/x.png", "mask/x.png", "r."], ["img/y.png", "mask/y.png", "r."]]
    )
    dataset = SliceDataset(load_samples(tmp_path, "csv", "all").samples, image_size=32)
    for index in range(2):
        assert np.array_equal(dataset[index]["mask"][0].numpy() > 0, _mask() > 0)


def test_slice_dataset_volume_slices_prefer_the_target(csv_root):
    samples = [s for s in load_samples(csv_root, "csv", "train").samples if s.case_id == "vol1"]
    dataset = SliceDataset(samples, image_size=24)
    assert len(dataset) == 10
    with_target = [bool(dataset[i % 10]["mask"].any()) for i in range(300)]
    assert 0.7 < np.mean(with_target) < 0.9


def test_reports_of_one_scan_share_its_image_and_show_each_other_target_slices(tmp_path):
    volume = np.zeros((20, 24, 24), dtype=np.int16)
    volume[:, 4:20, 4:20] = 100
    volume[np.arange(20), 1, np.arange(20)] = 1000  # slice k has a marker at column k
    upper, lower = np.zeros_like(volume, dtype=np.uint8), np.zeros_like(volume, dtype=np.uint8)
    upper[2:4, 6:10, 6:10] = 1
    lower[15:17, 14:18, 14:18] = 1
    _volume(tmp_path / "scan.nii.gz", volume)
    _volume(tmp_path / "other.nii.gz", volume)
    _volume(tmp_path / "upper.nii.gz", upper)
    _volume(tmp_path / "lower.nii.gz", lower)
    _write_csv(
        tmp_path / "manifest.csv",
        ["image", "mask", "report", "case"],
        [
            ["scan.nii.gz", "upper.nii.gz", "Upper nodule.", "a"],
            ["scan.nii.gz", "lower.nii.gz", "Lower nodule.", "b"],
            ["other.nii.gz", "upper.nii.gz", "Upper nodule.", "c"],
        ],
    )
    dataset = SliceDataset(load_samples(tmp_path, "csv", "all").samples, image_size=24)
    assert len(dataset) == 60  # 20 slices per sample
    upper_items = [dataset[i % 20] for i in range(400)]  # items 0-19 belong to the first sample
    assert {item["report"] for item in upper_items} == {"Upper nodule."}
    slices = np.array([int(item["image"][0, 1].argmax()) for item in upper_items])
    with_target = np.array([bool(item["mask"].any()) for item in upper_items])
    assert set(slices[with_target]) == {2, 3} and 0.7 < with_target.mean() < 0.9
    # of the target-free picks, about half are the other report's target slices (uniform: 2 of 18)
    other_target = np.isin(slices[~with_target], [15, 16])
    assert len(other_target) > 30 and 0.35 < other_target.mean() < 0.75
    assert len(dataset._cache._entries) == 3  # one cached image for both reports, and two masks


def test_augmentation_never_flips_up_down_and_mirrors_only_with_the_sides_swapped(tmp_path):
    image = np.zeros((64, 64), dtype=np.uint8)
    image[:, 48:] = 255  # bright band on the image's right
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:20, 40:56] = 255  # target in the upper right
    _png(tmp_path / "img" / "x.png", image)
    _png(tmp_path / "mask" / "x.png", mask)
    _write_csv(tmp_path / "manifest.csv", ["image", "mask", "report"], [["img/x.png", "mask/x.png", "Target in the upper left lung."]])
    dataset = SliceDataset(load_samples(tmp_path, "csv", "all").samples, image_size=64, augment=True, seed=1)
    changed, mirrored = 0, 0
    for _ in range(40):
        item = dataset[0]
        rows, cols = np.nonzero(item["mask"][0].numpy())
        brightness = item["image"][0].numpy()
        assert rows.mean() < 24  # "upper" stays true
        if item["report"] == "Target in the upper left lung.":
            assert cols.mean() > 36 and brightness[:, 48:].mean() > brightness[:, :16].mean() + 0.5
        else:
            assert item["report"] == "Target in the upper right lung."
            assert cols.mean() < 28 and brightness[:, :16].mean() > brightness[:, 48:].mean() + 0.5
            mirrored += 1
        changed += not np.array_equal(item["mask"][0].numpy() > 0, mask > 0)
    assert changed > 10 and 5 < mirrored < 35  # the augmentation does move things
