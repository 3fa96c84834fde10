"""``tmca synth --kind fine-structure``: LViT's released layout, blob sizes, colour-only separation, determinism."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tmca.cli import main
from tmca.data import load_split
from tmca.synth_fine import MAX_WIDTH, MIN_WIDTH, generate_fine_case, luminance

SIZE = 200


@pytest.fixture(scope="module")
def fine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fine")
    assert main(["synth", "--kind", "fine-structure", "--output", str(root), "--cases", "8", "--size", str(SIZE), "--seed", "3"]) == 0
    return root


def test_released_lvit_layout_is_read_by_the_loader(fine: Path) -> None:
    for split in ("Train", "Val", "Test"):
        folder = fine / f"{split}_Folder"
        assert (folder / f"{split}_text.xlsx").is_file()  # inside the split folder, as LViT releases it
        assert not (fine / f"{split}_text.xlsx").exists()
    counts = {split: len(load_split(fine, "lvit", split)) for split in ("Train", "Val", "Test")}
    assert counts == {"Train": 5, "Val": 1, "Test": 2}
    sample = load_split(fine, "lvit", "Test")[0]
    image = np.asarray(Image.open(sample.image))
    mask = np.asarray(Image.open(sample.mask))
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
    written = {c["case"]: c for c in json.loads((fine / "synth.json").read_text())["cases"]}[sample.case_id]
    assert sample.report == written["report"] and all(region in sample.report for region in written["dense_regions"])


def test_default_split_counts_match_a_small_released_dataset() -> None:
    from tmca.synth_fine import split_counts

    assert split_counts(40) == (24, 6, 10)
    assert split_counts(8) == (5, 1, 2)
    assert split_counts(3) == (1, 1, 1)


def test_blobs_are_3_to_10_pixels_wide_and_hundreds_per_megapixel() -> None:
    case = generate_fine_case(np.random.default_rng([1, 0]), 400)
    for blobs in (case.mask, case.distractors):
        labels, count = ndimage.label(blobs)
        assert count >= 25  # 400 px side: 0.16 megapixel; about 250 of each kind per megapixel
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            ys, xs = np.nonzero(labels[box] == index)
            points = np.stack([ys, xs], axis=1).astype(float)
            # a filled ellipse of diameter d has variance d^2/16 along that axis
            widths = 4.0 * np.sqrt(np.maximum(np.linalg.eigvalsh(np.cov(points.T)), 0.0)) if len(points) > 2 else np.zeros(2)
            assert MIN_WIDTH - 0.8 <= widths[0] and widths[1] <= MAX_WIDTH + 0.8, (index, widths)
    assert not (case.mask & case.distractors).any()


def test_targets_and_distractors_differ_in_hue_not_in_grey() -> None:
    case = generate_fine_case(np.random.default_rng([2, 0]), 300)
    target = case.image[case.mask].astype(float).mean(axis=0)
    distractor = case.image[case.distractors].astype(float).mean(axis=0)
    background = case.image[~(case.mask | case.distractors)].astype(float).mean(axis=0)
    assert abs(luminance(target) - luminance(distractor)) < 4.0
    assert abs(luminance(target) - luminance(background)) > 40.0  # both kinds stand out from the stain in grey
    hue_t = colorsys.rgb_to_hsv(*(target / 255))[0]
    hue_d = colorsys.rgb_to_hsv(*(distractor / 255))[0]
    assert min(abs(hue_t - hue_d), 1 - abs(hue_t - hue_d)) > 0.25  # over 90 degrees apart on the colour wheel


def test_targets_are_dense_where_the_sentence_says() -> None:
    case = generate_fine_case(np.random.default_rng([4, 0]), 300)
    from tmca.synth_fine import REGIONS

    named = {key for key, name in REGIONS.items() if name in case.dense_regions}
    assert all(name in case.report for name in case.dense_regions)
    third = 100
    density = {key: case.mask[key[0] * third:(key[0] + 1) * third, key[1] * third:(key[1] + 1) * third].mean() for key in REGIONS}
    assert min(density[k] for k in named) > 3 * max(density[k] for k in REGIONS if k not in named)


def test_same_seed_same_bytes_and_another_seed_differs(fine: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(["synth", "--kind", "fine-structure", "--output", str(again), "--cases", "8", "--size", str(SIZE), "--seed", "3"]) == 0
    assert main(["synth", "--kind", "fine-structure", "--output", str(other), "--cases", "8", "--size", str(SIZE), "--seed", "4"]) == 0
    pngs = sorted(p.relative_to(fine) for p in fine.rglob("*.png"))
    assert len(pngs) == 16
    assert all((fine / p).read_bytes() == (again / p).read_bytes() for p in pngs)
    assert (fine / "synth.json").read_bytes() == (again / "synth.json").read_bytes()
    for split in ("Train", "Val", "Test"):
        rows = [[(s.case_id, s.report) for s in load_split(root, "lvit", split)] for root in (fine, again)]
        assert rows[0] == rows[1]
    assert any((fine / p).read_bytes() != (other / p).read_bytes() for p in pngs if (other / p).is_file())


@pytest.mark.parametrize("extra, message", [(["--dims", "3"], "2D colour"), (["--cases", "2"], "at least 3"), (["--size", "32"], "at least 64")])
def test_bad_options_exit_2_with_one_line(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    assert main(["synth", "--kind", "fine-structure", "--output", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err
