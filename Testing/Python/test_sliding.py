"""Large 2D slices: a model trained on native-resolution crops ("tile") predicts them by sliding a window
of its input size; a "resize" model, or a user who asks for resizing, squeezes them as before."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from tmca.cli import build_parser, main
from tmca.errors import TMCAError
from tmca.inference import Segmenter, _resize_sigmoid
from tmca.preprocess import model_input
from tmca.sliding import predict_by_windows, stitch_windows, window_count

ROI = 64  # the tiny models' image_size
REPORT = "Nodule in the upper left lung."


class PixelwiseRunner:
    """An encoder/decoder whose logits are a known function of each pixel (40 (x - 0.5) + finding offset):
    stitched windows must give that function on the whole grid, whatever the window layout."""

    def __init__(self, relevance_stride: int | None = 4) -> None:
        self.encoded: list[tuple[int, ...]] = []
        self.decoded: list[int] = []
        self.relevance_stride = relevance_stride

    def encode(self, windows: torch.Tensor) -> list[torch.Tensor]:
        self.encoded.append(tuple(windows.shape))
        return [windows * 40 - 20]

    def decode(self, features, windows, text):
        batch = windows.shape[0]
        if isinstance(text, Offset):
            assert text.batch == batch  # the finding's features expanded to the call's windows
        offset = text.value if isinstance(text, Offset) else 0.0  # a real finding's TextFeatures: no offset
        self.decoded.append(batch)
        logits = features[0][:, :1] + offset
        if self.relevance_stride is None:
            return logits, None
        return logits, torch.full((batch, 1, ROI // self.relevance_stride, ROI // self.relevance_stride), offset)


class Offset:
    """Stands for a finding's text features (batch 1): a logit offset; expand(n) as TextFeatures.expand."""

    def __init__(self, value: float, batch: int = 1) -> None:
        self.value, self.batch = value, batch

    def expand(self, batch: int) -> "Offset":
        return Offset(self.value, batch)


def _thin_lines(count: int, height: int, width: int) -> torch.Tensor:
    """(count, 1, H, W): 1-pixel lines (value 1) on a dim ramp (below 0.5), at places that differ per slice."""
    images = torch.linspace(0, 0.3, width).expand(count, 1, height, width).clone()
    for index in range(count):
        images[index, 0, 17 + 5 * index, :] = 1.0
        images[index, 0, :, 101 + 3 * index] = 1.0
    return images


@pytest.fixture(scope="module")
def tile_model_dir(tmp_path_factory, text_encoder):
    """A small, randomly initialised checkpoint that was trained on native-resolution crops."""
    from tmca.checkpoint import save_checkpoint
    from tmca.config import TMCAConfig
    from tmca.networks.tmca_net import TMCANet

    torch.manual_seed(1)
    config = TMCAConfig(encoder="small", encoder_pretrained=False, image_size=ROI, embed_dim=32, decoder_channels=(32, 16, 16, 8, 8),
                        large_images="tile")  # fmt: skip
    return save_checkpoint(tmp_path_factory.mktemp("models") / "tile", TMCANet(config, text_encoder))


def _image(array: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(array.astype(np.float32))


def _recording(segmenter: Segmenter) -> list[tuple[int, ...]]:
    """Record the shape of every batch the segmenter's image encoder sees."""
    shapes = []
    encode = segmenter.runner.encode

    def spy(x):
        shapes.append(tuple(x.shape))
        return encode(x)

    segmenter.runner.encode = spy
    return shapes


# --- the stitcher -------------------------------------------------------------------------------


def test_windows_give_the_pixelwise_prediction_on_the_full_grid_and_keep_thin_lines():
    runner = PixelwiseRunner()
    images = _thin_lines(3, 3 * ROI, 3 * ROI - 20)  # 192 x 172: not a multiple of the window's step
    texts = [Offset(0.0), Offset(-3.0)]
    probabilities, relevance = predict_by_windows(runner.encode, runner.decode, images, texts, ROI, window_batch=8, with_relevance=True)

    assert probabilities.shape == relevance.shape == (2, 3, 3 * ROI, 3 * ROI - 20)
    for k, text in enumerate(texts):
        expected = torch.sigmoid(images[:, 0] * 40 - 20 + text.value)
        torch.testing.assert_close(probabilities[k], expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(relevance[k], torch.full_like(expected, torch.sigmoid(torch.tensor(text.value)).item()))
    assert torch.equal(probabilities[0] >= 0.5, images[:, 0] >= 0.5)  # every line exactly one pixel wide, none lost

    windows = 3 * window_count((3 * ROI, 3 * ROI - 20), ROI)
    assert windows == 3 * 4 * 4  # steps of 48 (25% overlap): 4 windows along 192 and along 172
    assert all(shape[1:] == (1, ROI, ROI) and shape[0] <= 8 for shape in runner.encoded)
    assert sum(shape[0] for shape in runner.encoded) == windows
    assert len(runner.encoded) == math.ceil(windows / 8)  # windows of several slices share one encoder call
    assert runner.decoded == [shape[0] for shape in runner.encoded for _ in texts]  # one decoder call per call and finding


def test_a_dimension_smaller_than_the_window_is_padded_and_cropped_back():
    runner = PixelwiseRunner(relevance_stride=None)
    images = _thin_lines(1, 40, 3 * ROI)
    probabilities, relevance = predict_by_windows(runner.encode, runner.decode, images, [None], ROI, window_batch=4, with_relevance=True)
    assert probabilities.shape == (1, 1, 40, 3 * ROI)
    torch.testing.assert_close(probabilities[0], torch.sigmoid(images[:, 0] * 40 - 20), atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(relevance) == 0  # a model without a relevance map: zeros, as for whole slices
    assert {shape[2:] for shape in runner.encoded} == {(ROI, ROI)}


def test_a_cancel_check_stops_between_window_batches():
    runner = PixelwiseRunner()
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        predict_by_windows(runner.encode, runner.decode, _thin_lines(1, 4 * ROI, 4 * ROI), [Offset(0.0)], ROI, 4, check=check)
    assert len(runner.encoded) == 1


class ContextRunner:
    """An encoder/decoder whose logits depend on where a pixel lies in its window and on the window's
    content (its mean), so overlapping windows disagree and only the right positions and blending
    weights give MONAI's result; relevance at a quarter of the window."""

    def encode(self, windows: torch.Tensor) -> list[torch.Tensor]:
        return [windows]

    def decode(self, features, windows, text):
        x = features[0][:, :1]
        offset = text.value if isinstance(text, Offset) else 0.0
        ramp = torch.linspace(-2, 2, x.shape[-1])
        logits = 6 * torch.tanh(3 * x - 1) * (1 + x.mean((2, 3), keepdim=True)) + ramp + offset
        return logits, F.avg_pool2d(logits, 4) - offset


def _context_predictor(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A window predictor with two outputs (3 and 1 channels) that depend on position and content."""
    rows = torch.linspace(0, 1, windows.shape[-2])[:, None]
    columns = torch.linspace(-1, 2, windows.shape[-1])
    mean = windows.mean((1, 2, 3), keepdim=True)
    first = torch.cat([torch.sin(5 * windows[:, :1]) + rows * mean, windows[:, 1:] * columns, (windows**2).sum(1, keepdim=True) - rows * columns], 1)
    return first, windows.amax((1, 2, 3), keepdim=True) * rows - columns * windows[:, :1]


@pytest.mark.parametrize(
    "size, overlap, window_batch",
    [
        ((20, 20), 0.25, 4),  # smaller than the window in both dimensions
        ((20, 50), 0.5, 3),  # smaller in one, larger in the other
        ((21, 32), 0.25, 1),  # an odd padding
        ((32, 32), 0.25, 4),  # exactly the window
        ((33, 32), 0.25, 2),  # one pixel more
        ((50, 77), 0.25, 5),  # not multiples of the step
        ((50, 77), 0.0, 4),
        ((50, 77), 0.6, 7),
        ((96, 96), 0.25, 8),  # multiples of the step (24)
        ((70, 45), 0.9, 16),  # a step of 3 pixels
    ],
)  # fmt: skip
def test_the_stitcher_gives_monai_sliding_window_inference_s_result(size, overlap, window_batch):
    from monai.inferers.utils import sliding_window_inference

    roi = 32
    images = torch.rand(3, 2, *size, generator=torch.Generator().manual_seed(size[0] * size[1]))
    ours, theirs = [], []
    stitched = stitch_windows(images, roi, window_batch, lambda w: ours.append(w.clone()) or _context_predictor(w), overlap=overlap)
    expected = sliding_window_inference(images, roi, window_batch, lambda w: theirs.append(w.clone()) or _context_predictor(w), overlap=overlap,
                                        mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0)  # fmt: skip

    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))  # the same windows, batched the same way
    assert sum(len(w) for w in ours) == 3 * window_count(size, roi, overlap)
    assert [tuple(s.shape) for s in stitched] == [(3, 3, *size), (3, 1, *size)]
    for mine, monai_s in zip(stitched, expected):
        torch.testing.assert_close(mine, monai_s, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(3 * ROI - 7, 2 * ROI + 5), (ROI - 9, 2 * ROI)])
def test_predict_by_windows_gives_what_monai_s_stitching_gave(size):
    """The probabilities and relevance of the MONAI-based implementation this one replaced."""
    from monai.inferers.utils import sliding_window_inference

    runner = ContextRunner()
    images = torch.rand(2, 1, *size, generator=torch.Generator().manual_seed(8))
    texts = [Offset(0.5), Offset(-1.0)]
    probabilities, relevance = predict_by_windows(runner.encode, runner.decode, images, texts, ROI, window_batch=5, with_relevance=True)

    def predictor(windows):
        outputs = [runner.decode(runner.encode(windows), windows, text.expand(len(windows))) for text in texts]
        relevance = [F.interpolate(r, size=(ROI, ROI), mode="bilinear", align_corners=False) for _, r in outputs]
        return torch.cat([logits for logits, _ in outputs], 1), torch.cat(relevance, 1)

    logits, relevance_logits = sliding_window_inference(images, ROI, 5, predictor, overlap=0.25, mode="gaussian", sigma_scale=0.125)
    torch.testing.assert_close(probabilities, torch.sigmoid(logits).transpose(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(relevance, torch.sigmoid(relevance_logits).transpose(0, 1), atol=1e-5, rtol=0)


# --- the Segmenter ------------------------------------------------------------------------------


def test_a_tile_model_slides_windows_of_its_size_over_an_image_three_times_larger(tile_model_dir):
    segmenter = Segmenter(tile_model_dir, device="cpu", batch_size=4, backend="eager")
    assert segmenter.large_images == "tile"
    shapes = _recording(segmenter)
    image = np.random.default_rng(0).random((1, 3 * ROI, 3 * ROI))
    steps = []
    result = segmenter.segment(_image(image), REPORT, plane="axial", with_relevance=True, progress=lambda d, t, s: steps.append((d, t, s)))

    assert result.probabilities.shape == result.relevance.shape == (1, 1, 3 * ROI, 3 * ROI)
    assert shapes and all(shape[1:] == (1, ROI, ROI) for shape in shapes)  # windows, never the image squeezed
    assert sum(shape[0] for shape in shapes) == window_count((3 * ROI, 3 * ROI), ROI) == 16
    assert max(shape[0] for shape in shapes) == 4  # batch_size counts windows
    assert ("segmenting" in {s for _, _, s in steps}) and (1, 1, "segmenting") in steps
    assert 0 < result.probabilities.min() and result.probabilities.max() < 1


def test_a_thin_structure_keeps_its_width_with_windows_and_is_lost_when_squeezed(tile_model_dir):
    array = np.zeros((1, 3 * ROI, 3 * ROI), dtype=np.float32)
    array[0, 50, :] = 1.0  # a line one pixel wide
    array[0, :, 120:122] = 1.0  # and one two pixels wide
    line = array[0] >= 0.5
    masks = {}
    for mode in ("tile", "resize"):
        segmenter = Segmenter(tile_model_dir, device="cpu", backend="eager", large_images=mode)
        runner = PixelwiseRunner()
        segmenter.runner = runner  # the network replaced by a known pixelwise function of its input
        masks[mode] = segmenter.segment(_image(array), REPORT, plane="axial").masks[0, 0]
        assert {shape[2:] for shape in runner.encoded} == {(ROI, ROI)}
    assert np.array_equal(masks["tile"], line)
    assert masks["resize"].sum(axis=0)[20] != 1  # squeezed 3x and stretched back: the line is gone or blurred


def test_a_resize_model_still_squeezes_large_slices_bit_identically(tiny_model_dir):
    segmenter = Segmenter(tiny_model_dir, device="cpu", backend="eager")
    assert segmenter.large_images == "resize"
    shapes = _recording(segmenter)
    slices = np.random.default_rng(1).random((2, 3 * ROI, 3 * ROI)).astype(np.float32)
    result = segmenter.segment(_image(slices), REPORT, plane="axial")

    assert shapes == [(2, 1, ROI, ROI)]  # one batch, squeezed
    with torch.inference_mode():
        x = model_input(torch.from_numpy(_preprocessed(segmenter, slices)), ROI).contiguous(memory_format=torch.channels_last)
        text = segmenter.model.encode_text([REPORT])
        logits, _ = segmenter.runner.decode(segmenter.model.encoder(x), x, text.expand(2))
        expected = _resize_sigmoid(logits, (3 * ROI, 3 * ROI)).numpy()
    assert np.array_equal(result.probabilities[0], expected)


def _preprocessed(segmenter: Segmenter, slices: np.ndarray) -> np.ndarray:
    """The preprocessed intensities the segmenter gives the model (min-max for an untagged image)."""
    from tmca.imageio import LoadedImage
    from tmca.preprocess import preprocess

    loaded = LoadedImage(_image(slices), "OT", "<image>", None, False, False)
    return preprocess(loaded, segmenter.config.modality, segmenter.config.intensity_policy or None)


def test_the_large_images_override(tiny_model_dir, tile_model_dir):
    image = _image(np.random.default_rng(2).random((1, 2 * ROI, 3 * ROI)))
    squeezed = Segmenter(tile_model_dir, device="cpu", backend="eager", large_images="resize")
    shapes = _recording(squeezed)
    squeezed.segment(image, REPORT, plane="axial")
    assert shapes == [(1, 1, ROI, ROI)]

    tiled = Segmenter(tiny_model_dir, device="cpu", backend="eager", large_images="tile")  # a resize model, tiled on request
    shapes = _recording(tiled)
    assert tiled.segment(image, REPORT, plane="axial").probabilities.shape == (1, 1, 2 * ROI, 3 * ROI)
    assert sum(shape[0] for shape in shapes) == window_count((2 * ROI, 3 * ROI), ROI) == 3 * 4

    small = _image(np.random.default_rng(3).random((1, ROI, ROI - 10)))  # fits the window: the usual path
    shapes = _recording(tiled)
    tiled.segment(small, REPORT, plane="axial")
    assert shapes == [(1, 1, ROI, ROI)]
    with pytest.raises(TMCAError, match="large_images must be one of resize, tile"):
        Segmenter(tiny_model_dir, device="cpu", large_images="crop")


def test_the_onnx_backend_slides_the_same_windows(tile_model_dir):
    pytest.importorskip("onnxruntime")
    image = _image(np.random.default_rng(4).random((2, 3 * ROI - 7, 2 * ROI + 5)))
    report = "Nodule in the upper left lung. Effusion on the right."
    eager = Segmenter(tile_model_dir, device="cpu", backend="eager").segment(image, report, plane="axial", with_relevance=True)
    onnx = Segmenter(tile_model_dir, device="cpu", backend="onnx").segment(image, report, plane="axial", with_relevance=True)
    assert onnx.probabilities.shape == (2, 2, 3 * ROI - 7, 2 * ROI + 5)
    np.testing.assert_allclose(onnx.probabilities, eager.probabilities, atol=1e-4)
    np.testing.assert_allclose(onnx.relevance, eager.relevance, atol=1e-4)


# --- the command line ---------------------------------------------------------------------------


def _tmca(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def test_resize_large_flag_on_segment_batch_and_evaluate(tmp_path, tile_model_dir, monkeypatch):
    parser = build_parser()
    for command in (["segment", "x.png", "--report", "r", "-o", "o.seg.nrrd"], ["batch", "s", "-o", "o"],
                    ["evaluate", "--model", "m", "--data", "d", "--format", "csv"]):  # fmt: skip
        assert parser.parse_args(command).resize_large is False
        assert parser.parse_args([*command, "--resize-large"]).resize_large is True

    path = tmp_path / "large.nrrd"
    sitk.WriteImage(_image(np.random.default_rng(5).random((1, 3 * ROI, 3 * ROI))), str(path))
    seen = []
    real = Segmenter._predict_batch

    def spy(self, slices, *args):
        seen.append(self.large_images)
        return real(self, slices, *args)

    monkeypatch.setattr(Segmenter, "_predict_batch", spy)
    for flag, mode in (([], "tile"), (["--resize-large"], "resize")):
        out = tmp_path / f"{mode}.seg.nrrd"
        code, _, err = _tmca(["segment", path, "--report", REPORT, "-o", out, "--model", tile_model_dir, "--plane", "axial", *flag])
        assert code == 0, err and out.exists()
        assert seen[-1] == mode

    study = tmp_path / "study"
    study.mkdir()
    sitk.WriteImage(_image(np.random.default_rng(6).random((2, 3 * ROI, 3 * ROI))), str(study / "case.nrrd"))
    (study / "case.txt").write_text(REPORT, encoding="utf-8")
    args = ["batch", study, "-o", tmp_path / "out", "--model", tile_model_dir]
    assert _tmca(args)[0] == 0 and seen[-1] == "tile"
    code, stdout, _ = _tmca([*args, "--resize-large"])  # another way of predicting: the case is redone
    assert code == 0 and seen[-1] == "resize" and "[1/1] case: ok" in stdout
    code, stdout, _ = _tmca(args)
    assert code == 0 and seen[-1] == "tile" and "[1/1] case: ok" in stdout
    count = len(seen)
    code, stdout, _ = _tmca(args)
    assert code == 0 and len(seen) == count and "[1/1] case: skipped" in stdout  # up to date


def test_evaluate_at_eval_size_slides_at_native_resolution_then_resizes_prediction_and_mask(tmp_path, tile_model_dir):
    from tmca.evaluation import evaluate
    from tmca.metrics import dice
    from tmca.preprocess import resize_slices

    rng = np.random.default_rng(7)
    image_path, mask_path = tmp_path / "case.nrrd", tmp_path / "case-mask.nrrd"
    sitk.WriteImage(_image(rng.random((1, 3 * ROI, 3 * ROI))), str(image_path))
    truth = np.zeros((1, 3 * ROI, 3 * ROI), dtype=np.uint8)
    truth[0, 40:150, 30:170] = 1
    sitk.WriteImage(sitk.GetImageFromArray(truth), str(mask_path))
    sample = type("Sample", (), {"image": image_path, "mask": mask_path, "report": REPORT, "case_id": "case"})()

    for mode, seen_size in (("tile", 3 * ROI), ("resize", 96)):
        segmenter = Segmenter(tile_model_dir, device="cpu", backend="eager", large_images=mode)
        results = []
        segment = segmenter.segment
        segmenter.segment = lambda image, report: results.append(segment(image, report)) or results[-1]
        score = evaluate(segmenter, [sample], eval_size=96)
        (result,) = results
        assert result.probabilities.shape[-2:] == (seen_size, seen_size)  # the model ran on the native image only when tiling
        predicted = result.masks.any(axis=0).astype(np.float32)
        if mode == "tile":
            predicted = resize_slices(torch.from_numpy(predicted), 96, mode="nearest")[:, 0].numpy()
        small_truth = resize_slices(torch.from_numpy(truth.astype(np.float32)), 96, mode="nearest")[:, 0].numpy() > 0.5
        assert score["eval_size"] == 96 and score["n"] == 1
        assert score["dice"] == round(dice(predicted > 0.5, small_truth), 4)
