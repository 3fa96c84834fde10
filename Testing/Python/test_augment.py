"""Training augmentation: native-resolution crops keep the pixel scale, flips only without side words (mirroring
with the sides swapped with them), colour jitter."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tmca.data import SliceDataset, load_samples
from tmca.data.augment import Augmentation, choose_large_images, names_position, native_crop, plan_augmentation, swap_sides


def _dataset(folder: Path, image: np.ndarray, mask: np.ndarray, report: str) -> list:
    """A one-row csv dataset of a PNG image and mask."""
    (folder / "img").mkdir(parents=True)
    (folder / "mask").mkdir()
    Image.fromarray(image).save(folder / "img" / "x.png")
    Image.fromarray(mask).save(folder / "mask" / "x.png")
    with open(folder / "manifest.csv", "w", newline="") as stream:
        csv.writer(stream).writerows([["image", "mask", "report"], ["img/x.png", "mask/x.png", report]])
    return load_samples(folder, "csv", "all").samples


def _line_image(size: int = 400, column: int = 250, width: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A grey noise image with a bright vertical line ``width`` px wide, and the line as mask."""
    image = np.random.default_rng(0).integers(0, 100, (size, size), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    image[:, column : column + width] = 255
    mask[:, column : column + width] = 255
    return image, mask


def test_native_crops_keep_the_pixel_scale_of_a_thin_line(tmp_path):
    image, mask = _line_image()
    samples = _dataset(tmp_path, image, mask, "A thin vessel.")
    tiled = SliceDataset(samples, image_size=64, large_images="tile", seed=0)
    uncut, with_target = 0, 0
    for _ in range(30):
        item = tiled[0]
        assert item["image"].shape == item["mask"].shape == (1, 64, 64)
        line = item["mask"][0].numpy() > 0
        if not line.any():
            continue
        with_target += 1
        crop = item["image"][0].numpy()
        assert crop[line].min() > crop[~line].max()  # image and mask cropped alike
        columns = np.flatnonzero(line.any(axis=0))
        assert line[:, columns].all()  # the line runs through the whole window
        if 0 < columns.min() and columns.max() < 63:  # not cut by the window's edge: its native width
            uncut += 1
            assert len(columns) == 4
    assert with_target >= 18  # biased towards target (a uniform 64 px window meets the line about 17 % of the time)
    assert uncut >= 10
    squeezed = SliceDataset(samples, image_size=64, seed=0)[0]["mask"][0].numpy()
    assert squeezed.sum(axis=1).max() <= 1  # resizing 400 -> 64 thins the same line to at most 1 px
    whole = tiled.native_item(0)
    assert whole["image"].shape == whole["mask"].shape == (1, 400, 400) and whole["mask"].sum() == 400 * 4


def test_native_crop_pads_small_slices_and_works_on_any_channel_count():
    rng = np.random.default_rng(1)
    image, mask = np.ones((3, 40, 90), dtype=np.float32), np.zeros((40, 90), dtype=bool)
    mask[10:12, 80:82] = True
    crop, crop_mask = native_crop(image, mask, 64, rng)
    assert crop.shape == (3, 64, 64) and crop_mask.shape == (64, 64)
    assert crop[:, 40:].sum() == 0 and crop[:, :40].min() == 1.0  # zero rows below the 40 real ones


def test_large_slices_are_tiled_unless_a_report_names_a_position(tmp_path):
    image, mask = _line_image()
    plain = _dataset(tmp_path / "plain", image, mask, "Glands are dense here.")
    sided = _dataset(tmp_path / "sided", image, mask, "Lesion in the upper left lung.")
    assert choose_large_images(plain, 64)[0] == "tile"
    mode, why = choose_large_images(sided, 64)
    assert mode == "resize" and "name a side or position" in why
    assert choose_large_images(plain, 320)[0] == "resize"  # 400 px is not much larger than 320


def test_flips_only_when_no_report_names_a_side_or_position(tmp_path):
    assert names_position("Nodule in the LEFT lung.") and names_position("Anterior wall thickening.") and names_position("Bilateral effusion.")
    assert not names_position("Glands are dense in this section.") and not names_position("Two small nodules.")
    sided = plan_augmentation(["Glands.", "Mass in the right lobe.", "Cyst at the apex."])
    assert not sided.flips
    assert sided.describe().endswith("flips and 90-degree rotations off: 2 of 3 reports name a side or position")
    free = plan_augmentation(["Glands.", "Two small nodules."])
    assert free.flips and "flips and 90-degree rotations" in free.describe().split(";")[0]

    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[4:20, 44:60] = 255  # target in the upper right corner
    dataset = SliceDataset(_dataset(tmp_path / "free", image, mask, "Glands are dense."), image_size=64, augment=True, seed=2)
    assert dataset.augmentation.flips
    quadrants = set()
    for _ in range(40):
        rows, cols = np.nonzero(dataset[0]["mask"][0].numpy())
        quadrants.add((rows.mean() < 32, cols.mean() < 32))
    assert len(quadrants) >= 3  # flipped and rotated into other corners


def test_swap_sides_exchanges_left_and_right_and_keeps_case():
    assert swap_sides("Left lower lobe nodule; right-sided effusion. LEFT apex.") == "Right lower lobe nodule; left-sided effusion. RIGHT apex."
    assert swap_sides("Bilateral infiltrates, upper zones.") == "Bilateral infiltrates, upper zones."
    assert swap_sides("Bright spot, leftover clip.") == "Bright spot, leftover clip."


def test_sided_reports_mirror_the_image_with_the_sides_swapped(tmp_path):
    sided = plan_augmentation(["Mass in the right lobe.", "Cyst at the apex."])
    assert sided.mirror and not sided.flips and "'left' and 'right' swapped" in sided.describe()
    assert not plan_augmentation(["Mass in the right lobe."], plane="sagittal").mirror  # its horizontal axis is front to back
    assert not plan_augmentation(["Glands."]).mirror  # free flips instead

    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[24:40, 4:20] = 255  # a patient's right lung lies on the image's left
    dataset = SliceDataset(_dataset(tmp_path / "sided", image, mask, "Nodule in the right lung."), image_size=64, augment=True, seed=2)
    seen = set()
    for _ in range(40):
        item = dataset[0]
        on_image_left = np.nonzero(item["mask"][0].numpy())[1].mean() < 32
        assert item["report"] == ("Nodule in the right lung." if on_image_left else "Nodule in the left lung.")
        seen.add(on_image_left)
    assert seen == {True, False}


def test_colour_jitter_gives_grey_images_colour_casts_and_keeps_shapes():
    augmentation = Augmentation(plan_augmentation(["Glands."]))
    augmentation.set_random_state(3)
    mask = torch.zeros(1, 32, 32)
    casts = []
    for _ in range(10):
        out = augmentation({"image": torch.full((3, 32, 32), 0.5), "mask": mask})
        assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (1, 32, 32)
        assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
        means = out["image"].mean(dim=(1, 2))
        casts.append(float(means.max() - means.min()))  # intensity transforms and noise keep a grey image grey on average
    assert sum(cast > 0.02 for cast in casts) >= 5
    grey = augmentation({"image": torch.full((1, 32, 32), 0.5), "mask": mask})
    assert grey["image"].shape == (1, 32, 32)


def test_small_targets_are_tiled_even_when_reports_name_a_position(tmp_path):
    image = np.random.default_rng(0).integers(0, 100, (400, 400), dtype=np.uint8)
    mask = np.zeros((400, 400), dtype=np.uint8)
    for row in range(20, 380, 40):
        mask[row : row + 6, row : row + 6] = 255  # blobs 6 px wide: under 1 px at 64 px
    sided = _dataset(tmp_path, image, mask, "Dense small nuclei in the upper left region.")
    mode, why = choose_large_images(sided, 64)
    assert mode == "tile" and "after resizing" in why
