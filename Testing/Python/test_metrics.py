"""Dice, IoU and HD95 on known cases, empty masks, physical spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from tmca.metrics import dice, hd95, iou


def _square(shape=(40, 40), rows=slice(10, 20), cols=slice(10, 20)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_dice_and_iou_of_half_overlapping_squares():
    a, b = _square(), _square(cols=slice(15, 25))
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(1 / 3)
    assert dice(a, a) == iou(a, a) == 1.0
    assert dice(a, _square(cols=slice(25, 35))) == 0.0


def test_masks_may_be_0_255_or_0_1():
    a = _square().astype(np.uint8) * 255
    b = _square(cols=slice(15, 25)).astype(np.uint8)
    assert dice(a, b) == pytest.approx(0.5)


def test_hd95_of_a_shifted_square_in_voxels_and_millimetres():
    a, b = _square(), _square(cols=slice(15, 25))
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(10.0)  # columns are 2 mm wide
    assert hd95(a, b, spacing=(3.0, 1.0)) == pytest.approx(5.0)  # a row shift of 0: row spacing does not matter
    assert hd95(a, a) == 0.0


def test_hd95_3d_with_anisotropic_spacing_matches_brute_force():
    rng = np.random.default_rng(3)
    a = ndimage.binary_dilation(rng.random((12, 30, 30)) > 0.995, iterations=2)
    b = ndimage.binary_dilation(rng.random((12, 30, 30)) > 0.995, iterations=2)
    spacing = (2.5, 0.8, 0.7)

    def surface_points(mask):
        surface = mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))
        return np.argwhere(surface) * np.array(spacing)

    distances = cdist(surface_points(a), surface_points(b))
    expected = max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-6)


def test_empty_masks():
    empty, full = np.zeros((5, 8, 8), bool), _square((5, 8, 8), slice(1, 3), slice(2, 5))
    assert (dice(empty, empty), iou(empty, empty), hd95(empty, empty)) == (1.0, 1.0, 0.0)
    assert dice(empty, full) == dice(full, empty) == 0.0
    assert iou(empty, full) == 0.0
    assert math.isnan(hd95(empty, full)) and math.isnan(hd95(full, empty))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(_square(), _square(), spacing=(1.0,))
    with pytest.raises(ValueError, match="2D or 3D"):
        iou(np.zeros(4), np.zeros(4))
