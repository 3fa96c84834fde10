"""The inference engine's Python API: geometry, findings, thresholds, progress and cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk

from datapaths import real_data_file
from tmca.errors import CancelledError, TMCAError
from tmca.inference import Segmenter

TWO_FINDINGS = "Small nodule in the upper left lung. Large mass in the lower right lung."


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir):
    return Segmenter(tiny_model_dir, device="cpu", batch_size=8)


def _phantom(size=(40, 32, 6)) -> sitk.Image:
    array = np.random.default_rng(0).normal(0, 1, size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 3.0))
    image.SetOrigin((-12.5, 30.0, 7.25))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )


@pytest.mark.parametrize("name", ["brain1_image.nrrd", "breast1_image.nrrd"])
def test_outputs_lie_on_the_real_mri_grid(segmenter, name):
    path = real_data_file(name)
    source = sitk.ReadImage(str(path))
    result = segmenter.segment(path, "Enhancing tumour in the left frontal lobe.")
    assert _same_grid(result.labelmap, source)
    assert _same_grid(result.probability, source)
    assert result.probabilities.shape == (1,) + source.GetSize()[::-1]
    assert result.probabilities.dtype == np.float32
    assert 0.0 <= result.probabilities.min() and result.probabilities.max() <= 1.0


def test_each_finding_gets_its_own_mask_name_and_record(segmenter):
    result = segmenter.segment(_phantom(), TWO_FINDINGS)
    assert [r.name for r in result.records] == ["small nodule, upper left lung", "large mass, lower right lung"]
    assert [r.label_value for r in result.records] == [1, 2]
    assert result.masks.shape[0] == 2
    assert len({spec.color for spec in result.segments}) == 2
    spacing = np.prod(result.reference.GetSpacing())
    for record, mask in zip(result.records, result.masks):
        assert record.voxels == int(mask.sum())
        assert record.volume_ml == pytest.approx(mask.sum() * spacing / 1000, rel=1e-3)
    assert result.probability.GetNumberOfComponentsPerPixel() == 2
    assert not np.allclose(result.probabilities[0], result.probabilities[1])  # each finding is its own query
    single = segmenter.segment(_phantom(), TWO_FINDINGS, split_findings=False)
    assert len(single.records) == 1 and single.records[0].text == TWO_FINDINGS


def test_threshold_changes_masks_without_a_new_run(segmenter):
    result = segmenter.segment(_phantom(), "Nodule in the upper left lung.", threshold=0.5)
    low, high = result.with_threshold(0.01), result.with_threshold(0.99)
    assert low.records[0].voxels >= result.records[0].voxels >= high.records[0].voxels
    assert low.probabilities is result.probabilities
    np.testing.assert_array_equal(low.masks, result.probabilities >= 0.01)
    with pytest.raises(TMCAError, match="threshold"):
        result.with_threshold(1.5)


def test_planes_give_the_same_grid(segmenter):
    image = _phantom()
    for plane in ("axial", "coronal", "sagittal"):
        result = segmenter.segment(image, "Nodule in the upper left lung.", plane=plane)
        assert _same_grid(result.labelmap, image)
    with pytest.raises(TMCAError, match="plane"):
        segmenter.segment(image, "Nodule.", plane="oblique")


def test_progress_reports_every_batch(segmenter):
    events = []
    segmenter.segment(_phantom((40, 32, 20)), "Nodule in the upper left lung.", progress=lambda d, t, s: events.append((d, t, s)))
    segmenting = [(d, t) for d, t, s in events if s == "segmenting"]
    assert segmenting[0] == (0, 20) and segmenting[-1] == (20, 20)
    assert [d for d, _ in segmenting] == sorted(d for d, _ in segmenting)
    assert events[-1][2] == "postprocessing"


def test_cancel_stops_promptly(segmenter):
    flag = threading.Event()
    seen = []

    def progress(done, total, stage):
        seen.append(done)
        if stage == "segmenting" and done >= 8:
            flag.set()

    with pytest.raises(CancelledError):
        segmenter.segment(_phantom((40, 32, 40)), "Nodule.", progress=progress, cancel=flag)
    assert max(seen) < 40  # stopped before the last batch


def test_exception_in_progress_callback_stops_the_work(segmenter):
    def progress(done, total, stage):
        if stage == "segmenting" and done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segmenter.segment(_phantom((40, 32, 24)), "Nodule.", progress=progress)


def test_relevance_map_is_optional_and_on_the_grid(segmenter):
    image = _phantom()
    assert segmenter.segment(image, "Nodule.").relevance_image is None
    result = segmenter.segment(image, "Nodule.", with_relevance=True)
    assert _same_grid(result.relevance_image, image)
    assert 0.0 <= result.relevance.min() and result.relevance.max() <= 1.0


@pytest.mark.parametrize(
    "array,message",
    [
        (np.full((3, 8, 8), 5.0, dtype=np.float32), "constant"),
        (np.where(np.eye(8)[None] > 0, np.nan, 1.0).repeat(3, 0).astype(np.float32), "NaN"),
    ],
)
def test_bad_images_are_refused(segmenter, array, message):
    with pytest.raises(TMCAError, match=message):
        segmenter.segment(sitk.GetImageFromArray(array), "Nodule.")


def test_empty_report_is_refused(segmenter):
    with pytest.raises(TMCAError, match="empty report"):
        segmenter.segment(_phantom(), "   ")


def test_long_report_warns_and_truncates(segmenter):
    with pytest.warns(UserWarning, match="longer than the text encoder"):
        result = segmenter.segment(_phantom(), "Nodule in the upper left lung with " + "irregular spiculated margins " * 30)
    assert len(result.records) == 1


def test_bad_model_and_device_are_refused(tmp_path, tiny_model_dir):
    with pytest.raises(TMCAError, match="model folder not found"):
        Segmenter(tmp_path / "missing")
    with pytest.raises(TMCAError, match="unknown device"):
        Segmenter(tiny_model_dir, device="tpu")


def test_gpu_out_of_memory_halves_the_batch_then_falls_back_to_cpu(tiny_model_dir, monkeypatch):
    import torch

    segmenter = Segmenter(tiny_model_dir, device="cpu", batch_size=4)
    real_predict = segmenter._predict_batch
    failures = {"left": 3}
    sizes = []

    def flaky_predict(slices, *args):
        sizes.append(len(slices))
        if failures["left"]:
            failures["left"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_predict(slices, *args)

    monkeypatch.setattr(segmenter, "_predict_batch", flaky_predict)
    with pytest.warns(UserWarning, match="continuing on the CPU"):
        result = segmenter.segment(_phantom((40, 32, 6)), "Nodule in the upper left lung.")
    assert sizes == [4, 2, 1, 6]  # halved twice; then on the CPU with its own batch size
    assert segmenter.device.type == "cpu"
    assert result.probabilities.shape == (1, 6, 32, 40)


def test_a_3d_checkpoint_is_refused_with_a_clear_message(tmp_path, small_config, text_encoder):
    from tmca.checkpoint import save_checkpoint
    from tmca.networks.tmca_net import TMCANet

    folder = save_checkpoint(tmp_path / "volume-model", TMCANet(small_config(spatial_dims=3, image_size=32), text_encoder))
    with pytest.raises(TMCAError, match="is a 3D model; tmca segments with 2D models only"):
        Segmenter(folder, device="cpu")
