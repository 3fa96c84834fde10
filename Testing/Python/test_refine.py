"""Click inputs and Segmenter.refine: only the clicked finding and slices change; bad clicks are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import tmca
from tmca.config import TMCAConfig
from tmca.interactive import click_maps, next_click
from tmca.networks.tmca_net import TMCANet



@pytest.fixture(scope="module")
def segmenter(click_model_dir):
    return tmca.Segmenter(click_model_dir, device="cpu")


@pytest.fixture
def volume():
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((10, 80, 96), dtype=np.float32))
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    return image


def test_refine_changes_only_the_finding_and_slices_near_the_click(segmenter, volume):
    assert segmenter.can_refine
    result = segmenter.segment(volume, "Nodule in the left lobe. Effusion on the right.")
    assert len(result.findings) == 2
    point = volume.TransformIndexToPhysicalPoint((40, 30, 5))  # x, y, z
    refined = segmenter.refine(result, 1, [tmca.Click(point, positive=True)])
    np.testing.assert_array_equal(refined.probabilities[0], result.probabilities[0])
    changed = np.flatnonzero(np.abs(refined.probabilities[1] - result.probabilities[1]).max(axis=(1, 2)) > 1e-6)
    assert 5 in changed and set(changed) <= set(range(5 - 12, 5 + 13))
    assert refined.records[1].segment_id == result.records[1].segment_id
    by_name = segmenter.refine(result, result.findings[1].name, [tmca.Click(point, positive=True)])
    np.testing.assert_array_equal(by_name.probabilities, refined.probabilities)


def test_a_new_click_leaves_the_slices_of_earlier_clicks_as_they_were(segmenter, volume):
    """Redrawing an already clicked slice again from its own refined mask would drift it away from what the user saw."""
    result = segmenter.segment(volume, "Nodule in the left lobe.")
    first = tmca.Click(volume.TransformIndexToPhysicalPoint((40, 30, 1)))
    second = tmca.Click(volume.TransformIndexToPhysicalPoint((50, 40, 8)), positive=False)
    once = segmenter.refine(result, 0, [first])
    twice = segmenter.refine(once, 0, [first, second])
    np.testing.assert_array_equal(twice.probabilities[0, 1], once.probabilities[0, 1])
    assert not np.array_equal(twice.probabilities[0, 8], once.probabilities[0, 8])
    again = segmenter.refine(once, 0, [first, second], start_mask=once.masks[0])  # the user's own edits: every clicked slice is redrawn
    assert not np.array_equal(again.probabilities[0, 1], once.probabilities[0, 1])


def test_start_mask_is_the_prior(segmenter, volume):
    result = segmenter.segment(volume, "Nodule in the left lobe.")
    point = volume.TransformIndexToPhysicalPoint((40, 30, 5))
    edited = np.zeros((10, 80, 96), dtype=np.uint8)
    edited[5, 20:40, 30:50] = 1
    plain = segmenter.refine(result, 0, [tmca.Click(point)])
    from_edits = segmenter.refine(result, 0, [tmca.Click(point)], start_mask=edited)
    assert not np.allclose(plain.probabilities[0, 5], from_edits.probabilities[0, 5])
    with pytest.raises(tmca.TMCAError, match="shape"):
        segmenter.refine(result, 0, [tmca.Click(point)], start_mask=edited[:5])
    edited[8, 10:20, 10:20] = 1
    outside = tmca.Click(volume.TransformIndexToPhysicalPoint((90, 75, 5)), positive=False)  # nothing to carry to other slices
    kept = segmenter.refine(result, 0, [outside], start_mask=edited)
    others = [k for k in range(10) if k != 5]
    np.testing.assert_array_equal(kept.masks[0][others], edited[others] > 0)


@pytest.mark.parametrize(
    "finding, clicks, message",
    [
        (0, [tmca.Click((1e4, 0.0, 0.0))], "outside the image"),
        (3, None, "no finding 3"),
        ("spleen", None, "no finding named 'spleen'"),
        (0, [], "at least one click"),
        (0, [((10, 20, 30), True)], "tmca.Click"),
    ],
)
def test_bad_refine_requests_raise_and_leave_the_result(segmenter, volume, finding, clicks, message):
    result = segmenter.segment(volume, "Nodule in the left lobe.")
    before = result.probabilities.copy()
    if clicks is None:
        clicks = [tmca.Click(volume.TransformIndexToPhysicalPoint((40, 30, 5)))]
    with pytest.raises(tmca.TMCAError, match=message):
        segmenter.refine(result, finding, clicks)
    np.testing.assert_array_equal(result.probabilities, before)


def test_a_click_point_must_be_three_finite_numbers():
    with pytest.raises(tmca.TMCAError, match="three"):
        tmca.Click((1.0, 2.0))
    with pytest.raises(tmca.TMCAError, match="finite"):
        tmca.Click((1.0, float("nan"), 2.0))


def test_model_without_click_inputs_says_it_cannot_refine(tiny_model_dir, volume):
    segmenter = tmca.Segmenter(tiny_model_dir, device="cpu")
    assert not segmenter.can_refine
    result = segmenter.segment(volume, "Nodule in the left lobe.")
    assert result.source is None
    with pytest.raises(tmca.TMCAError, match="without click inputs"):
        segmenter.refine(result, 0, [tmca.Click(volume.TransformIndexToPhysicalPoint((40, 30, 5)))])


def test_zero_click_maps_give_the_report_only_prediction(small_config, text_encoder):
    model = TMCANet(small_config(click_inputs=True), text_encoder).eval()
    for head in model.decoder.clicks.heads:
        torch.nn.init.normal_(head.weight)
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        plain = model(image, ["nodule", "nodule"]).logits
        zeros = model(image, ["nodule", "nodule"], clicks=torch.zeros(2, 3, 64, 64)).logits
        clicked = model(image, ["nodule", "nodule"], clicks=click_maps((64, 64), 64, [(30, 30)], [], None)[None].expand(2, -1, -1, -1)).logits
    torch.testing.assert_close(plain, zeros)
    assert not torch.allclose(plain, clicked)


def test_models_saved_before_click_inputs_load_with_their_old_decoder():
    legacy = TMCAConfig.from_saved({"encoder": "small", "encoder_pretrained": False, "decoder_channels": [128, 64, 32, 16, 8]})
    assert (legacy.fine_depth, legacy.fine_guidance, legacy.click_inputs) == (1, False, False)
    assert TMCAConfig.from_dict({}).fine_guidance


def test_next_click_is_at_the_centre_of_the_largest_error():
    truth = np.zeros((40, 40), dtype=bool)
    truth[5:15, 5:15] = True  # found
    truth[20:35, 20:35] = True  # missed, the largest error
    prediction = np.zeros_like(truth)
    prediction[5:15, 5:15] = True
    prediction[0:3, 30:33] = True  # a small false part
    (row, column), positive = next_click(prediction, truth)
    assert positive and (row, column) in {(27, 27), (27, 28), (28, 27), (28, 28)}
    prediction[20:35, 20:35] = True
    (row, column), positive = next_click(prediction, truth)
    assert not positive and 0 <= row < 3 and 30 <= column < 33
    assert next_click(truth, truth) is None


def test_training_with_click_inputs_simulates_clicks_on_half_the_batches(small_config, text_encoder):
    from tmca.losses import TMCALoss
    from tmca.training import TrainingStep

    model = TMCANet(small_config(click_inputs=True), text_encoder)
    step = TrainingStep(model, TMCALoss(), seed=0)
    image, mask = torch.rand(2, 1, 64, 64), (torch.rand(2, 1, 64, 64) > 0.8).float()
    used = []
    for _ in range(12):
        loss, stats = step(image, mask, ["nodule", "nodule"])
        loss.backward()
        used.append(stats["clicks"])
    assert 0 < sum(used) < 12
    assert all(p.grad is not None for p in model.decoder.clicks.parameters())


def test_feature_cache_reuses_the_encoder_for_a_second_report_with_identical_results(tiny_model_dir, volume):
    plain = tmca.Segmenter(tiny_model_dir, device="cpu")
    warm = tmca.Segmenter(tiny_model_dir, device="cpu", feature_cache_mb=64)
    loaded = plain._load(volume, None, None)
    first = warm.segment(loaded, "Nodule in the left lobe.")
    misses = warm.runner.misses
    second = warm.segment(loaded, "Effusion on the right.")
    assert warm.runner.misses == misses and warm.runner.hits >= misses
    np.testing.assert_array_equal(second.probabilities, plain.segment(loaded, "Effusion on the right.").probabilities)
    np.testing.assert_array_equal(first.probabilities, plain.segment(loaded, "Nodule in the left lobe.").probabilities)
    changed = sitk.GetImageFromArray(sitk.GetArrayFromImage(volume)[::-1].copy())
    warm.segment(changed, "Nodule in the left lobe.")
    assert warm.runner.misses > misses


def test_a_refined_result_measures_the_changed_finding_like_a_fresh_result(segmenter, volume):
    from tmca.inference import SegmentationResult

    result = segmenter.segment(volume, "Nodule in the left lobe. Effusion on the right.")
    refined = segmenter.refine(result, 0, [tmca.Click(volume.TransformIndexToPhysicalPoint((40, 30, 5)))])
    fresh = SegmentationResult(refined.reference, refined.findings, refined.probabilities, refined.threshold)
    assert refined.records == fresh.records


def test_a_click_model_segments_alike_with_onnx_and_refines_from_its_result(click_model_dir, volume):
    pytest.importorskip("onnxruntime")
    eager = tmca.Segmenter(click_model_dir, device="cpu")
    onnx = tmca.Segmenter(click_model_dir, device="cpu", backend="onnx")
    from_eager, from_onnx = eager.segment(volume, "Nodule in the left lobe."), onnx.segment(volume, "Nodule in the left lobe.")
    np.testing.assert_allclose(from_onnx.probabilities, from_eager.probabilities, atol=1e-4)
    clicks = [tmca.Click(volume.TransformIndexToPhysicalPoint((40, 30, 5)))]
    np.testing.assert_allclose(onnx.refine(from_onnx, 0, clicks).probabilities, eager.refine(from_eager, 0, clicks).probabilities, atol=1e-4)


def test_an_erased_segment_is_an_empty_start_mask(tmp_path, volume):
    from tmca.engine_state import read_start_mask

    erased = sitk.Image(volume.GetSize(), sitk.sitkUInt8)
    erased.CopyInformation(volume)
    sitk.WriteImage(erased, str(tmp_path / "erased.nrrd"))
    mask = read_start_mask(tmp_path / "erased.nrrd", "Segment_1", volume)
    assert mask.shape == sitk.GetArrayViewFromImage(volume).shape and not mask.any()


def test_the_engine_forgets_old_results_beyond_its_byte_budget(segmenter, volume):
    from tmca.engine_state import EngineState

    result = segmenter.segment(volume, "Nodule in the left lobe.")
    state = EngineState(max_results=8, max_result_bytes=int(2.5 * (result.probabilities.nbytes + result.masks.nbytes)))
    ids = [state.keep_result(result, Path("scan.nrrd"), ()) for _ in range(4)]
    assert state.results.keys() == ids[-2:]
    with pytest.raises(tmca.TMCAError, match="unknown result"):
        state.stored(ids[0])


def test_a_tile_model_pads_small_slices_at_native_scale_and_does_not_offer_refine(tmp_path, text_encoder, volume):
    from tmca.checkpoint import save_checkpoint

    config = TMCAConfig(encoder="small", encoder_pretrained=False, image_size=64, embed_dim=32, decoder_channels=(32, 16, 16, 8, 8),
                        click_inputs=True, large_images="tile")  # fmt: skip
    segmenter = tmca.Segmenter(save_checkpoint(tmp_path / "tile", TMCANet(config, text_encoder)), device="cpu")
    assert not segmenter.can_refine
    seen = []
    encode = segmenter.runner.encode
    segmenter.runner.encode = lambda x: seen.append(x.clone()) or encode(x)
    small = sitk.GetImageFromArray(np.random.default_rng(1).random((1, 40, 50), dtype=np.float32) + 0.5)
    result = segmenter.segment(small, "Nodule in the left lobe.")
    assert result.probabilities.shape == (1, 1, 40, 50)
    window = seen[0][0, 0]
    assert window.shape == (64, 64) and (window != 0).sum() == 40 * 50 - 1  # padded, not stretched (the minimum scales to 0)
    with pytest.raises(tmca.TMCAError, match="sliding window"):
        segmenter.refine(result, 0, [tmca.Click(small.TransformIndexToPhysicalPoint((10, 10, 0)))])


def test_a_click_changes_only_the_region_of_the_mask_it_lands_on():
    from tmca.refine import local_change

    old = np.zeros((20, 20), dtype=np.float32)
    old[2:6, 2:6] = 0.9  # a lesion the user is happy with
    new = np.zeros_like(old)
    new[2:4, 2:6] = 0.9  # the redraw also shrank it ...
    new[12:16, 12:16] = 0.8  # ... while drawing the missed lesion under the click
    kept = local_change(new, old, [(13, 13)], 0.5)
    np.testing.assert_array_equal(kept[2:6, 2:6], old[2:6, 2:6])
    np.testing.assert_array_equal(kept[12:16, 12:16], new[12:16, 12:16])
    removed = local_change(new, old, [(5, 5)], 0.5)  # a negative click on the part that went
    np.testing.assert_array_equal(removed[4:6, 2:6], new[4:6, 2:6])
    assert (removed[12:16, 12:16] == 0).all()
