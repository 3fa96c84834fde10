"""Intensity normalisation: per-modality defaults, policy overrides, edge cases."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tmca.errors import TMCAError
from tmca.preprocess import DEFAULT_INTENSITY_POLICY, normalize_intensity


def test_ct_default_window_maps_minus_1000_to_1000_hu_onto_0_to_1() -> None:
    hu = np.array([[[-3000.0, -1000.0, 0.0, 500.0, 1000.0, 3000.0]]], dtype=np.float32)
    out = normalize_intensity(hu, "CT")
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out.ravel(), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-6)


def test_mr_default_clips_to_half_and_99_5_percentiles() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(100.0, 10.0, size=(8, 16, 16)).astype(np.float32)
    volume[0, 0, 0] = 1e6  # outlier that min-max scaling would let dominate
    out = normalize_intensity(volume, "MR")
    low, high = np.percentile(volume, [0.5, 99.5])
    np.testing.assert_allclose(out, (np.clip(volume, low, high) - low) / (high - low), atol=1e-5)
    assert out[0, 0, 0] == pytest.approx(1.0)
    assert np.median(out) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("modality", ["US", "XR", "OT", "xr"])
def test_us_xr_other_use_min_max(modality: str) -> None:
    volume = np.array([[[10.0, 20.0, 30.0, 50.0]]])
    np.testing.assert_allclose(normalize_intensity(volume, modality).ravel(), [0.0, 0.25, 0.5, 1.0])


def test_policy_overrides_only_the_modalities_it_names() -> None:
    policy = {"CT": {"window": [-1350, 150]}, "MR": {"percentiles": [0, 100]}}
    hu = np.array([[[-1350.0, -600.0, 150.0, 400.0]]])
    np.testing.assert_allclose(normalize_intensity(hu, "CT", policy).ravel(), [0.0, 0.5, 1.0, 1.0])
    mr = np.array([[[0.0, 1.0, 3.0, 4.0]]])
    np.testing.assert_allclose(normalize_intensity(mr, "MR", policy).ravel(), [0.0, 0.25, 0.75, 1.0])
    us = np.array([[[2.0, 4.0, 6.0]]])
    np.testing.assert_allclose(normalize_intensity(us, "US", policy).ravel(), [0.0, 0.5, 1.0])


def test_min_max_policy_for_ct_and_custom_modality_key() -> None:
    hu = np.array([[[-100.0, 0.0, 100.0]]])
    np.testing.assert_allclose(normalize_intensity(hu, "CT", {"CT": {}}).ravel(), [0.0, 0.5, 1.0])
    assert normalize_intensity(hu, "PT", {"PT": {"window": [0, 100]}}).ravel().tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "XR", "OT"])
def test_constant_input_gives_zeros_not_nan(modality: str) -> None:
    out = normalize_intensity(np.full((3, 4, 5), 7.0), modality)
    assert out.dtype == np.float32 and out.shape == (3, 4, 5)
    assert not np.isnan(out).any() and (out == 0).all()


def test_mostly_empty_mr_falls_back_to_min_max_instead_of_zeros() -> None:
    volume = np.zeros((10, 10, 10), dtype=np.float32)
    volume[0, 0, :3] = [5.0, 10.0, 20.0]  # 0.3 % of voxels: the 99.5th percentile is still 0
    out = normalize_intensity(volume, "MR")
    assert out.max() == pytest.approx(1.0) and out[0, 0, 1] == pytest.approx(0.5)


def test_input_and_default_policy_are_not_modified() -> None:
    volume = np.array([[[-2000.0, 0.0, 2000.0]]], dtype=np.float32)
    before_volume, before_policy = volume.copy(), copy.deepcopy(DEFAULT_INTENSITY_POLICY)
    normalize_intensity(volume, "CT", {"CT": {"window": [-10, 10]}})
    np.testing.assert_array_equal(volume, before_volume)
    assert DEFAULT_INTENSITY_POLICY == before_policy


def test_default_policy_is_json_serialisable_and_covers_all_modalities() -> None:
    assert json.loads(json.dumps(DEFAULT_INTENSITY_POLICY)) == DEFAULT_INTENSITY_POLICY
    assert set(DEFAULT_INTENSITY_POLICY) == {"CT", "MR", "US", "XR", "OT"}
    assert DEFAULT_INTENSITY_POLICY["CT"] == {"window": [-1000.0, 1000.0]}
    assert DEFAULT_INTENSITY_POLICY["MR"] == {"percentiles": [0.5, 99.5]}


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"CT": {"window": [100, -100]}}, "low < high"),
        ({"MR": {"percentiles": [1, 101]}}, "0 <= low < high <= 100"),
        ({"CT": {"windw": [0, 1]}}, "windw"),
        ({"CT": {"window": [0, 1], "percentiles": [1, 99]}}, "give one of"),
        ({"CT": {"window": "wide"}}, "two numbers"),
        ({"CT": {"window": [0, float("inf")]}}, "finite"),
        ({"CT": [0, 1]}, "must be an object"),
    ],
)
def test_invalid_policy_is_a_user_error(policy: dict, message: str) -> None:
    with pytest.raises(TMCAError, match=message.replace("(", r"\(")):
        normalize_intensity(np.arange(8.0).reshape(2, 2, 2), "CT" if "CT" in policy else "MR", policy)


def test_unknown_modality_is_a_user_error() -> None:
    with pytest.raises(TMCAError, match="no intensity rule for modality 'PET'"):
        normalize_intensity(np.arange(8.0).reshape(2, 2, 2), "PET")


# ---------------------------------------------------------------------------------------------
# One model-input path for training, inference and evaluation


def test_training_and_inference_give_the_model_the_same_input(tmp_path, tiny_model_dir, monkeypatch) -> None:
    import torch
    from PIL import Image

    import tmca.inference
    from tmca.data import SliceDataset
    from tmca.data.datasets import Sample
    from tmca.inference import Segmenter

    image, mask = tmp_path / "scan.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(image)
    Image.fromarray(np.zeros((48, 40), np.uint8)).save(mask)
    trained_on = SliceDataset([Sample(image, mask, "Nodule.", "scan", "Train")], image_size=64, modality="OT")[0]["image"]

    seen = []
    prepare = tmca.inference.model_input
    monkeypatch.setattr(tmca.inference, "model_input", lambda slices, size: seen.append(prepare(slices, size)) or seen[-1])
    Segmenter(tiny_model_dir, device="cpu").segment(image, "Nodule.")
    assert trained_on.shape == (1, 64, 64) and seen[0].shape == (1, 1, 64, 64)
    assert torch.equal(seen[0][0], trained_on)


def test_an_image_without_a_modality_is_taken_as_the_models(tmp_path) -> None:
    import SimpleITK as sitk

    from tmca.imageio import LoadedImage
    from tmca.preprocess import preprocess

    hu = sitk.GetImageFromArray(np.array([[[-2000.0, 0.0, 500.0, 3000.0]]], np.float32))
    as_ct = preprocess(LoadedImage(hu, "OT", "x", None, False, False), "CT")
    np.testing.assert_allclose(as_ct.ravel(), [0.0, 0.5, 0.75, 1.0])
    own = preprocess(LoadedImage(hu, "MR", "x", None, False, False), "CT")  # its own modality wins
    np.testing.assert_allclose(own, normalize_intensity(sitk.GetArrayFromImage(hu), "MR"))


def test_model_input_resizes_slices_to_the_square_and_adds_the_channel() -> None:
    import torch

    from tmca.preprocess import model_input

    slices = torch.rand(3, 48, 40)
    out = model_input(slices, 32)
    assert out.shape == (3, 1, 32, 32)
    assert model_input(torch.rand(2, 32, 32), 32).shape == (2, 1, 32, 32)
    flat = model_input(torch.full((1, 50, 30), 0.25), 32)
    assert torch.allclose(flat, torch.full_like(flat, 0.25))
