"""Colour input: colour images keep R, G, B for colour models, end to end (read, prepare, train, segment, evaluate)."""

from __future__ import annotations

import contextlib
import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from tmca.checkpoint import load_checkpoint
from tmca.cli import main
from tmca.data import SliceDataset
from tmca.data.datasets import Sample, survey_colour
from tmca.evaluation import resize_case
from tmca.imageio import LUMINANCE_WEIGHTS, is_colour_file, load_image
from tmca.inference import Segmenter
from tmca.preprocess import normalize_intensity, preprocess, preprocess_channels

SIZE = 32
TINY_MODEL = {"encoder": "small", "encoder_pretrained": False, "image_size": SIZE, "embed_dim": 32, "decoder_channels": [32, 16, 16, 8, 8]}
HUE_SHIFT = np.array([60, -36, 28])  # 0.299 * 60 - 0.587 * 36 + 0.114 * 28 == 0: a change of hue, not of luminance


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _colour(seed: int, size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8: a reddish blob on a bluish background, with noise."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((size, size, 3))
    pixels[...] = (70, 90, 160)
    y, x = rng.integers(6, size - 6, 2)
    pixels[y - 4 : y + 4, x - 4 : x + 4] = (200, 80, 90)
    return np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)


def _mask_of(pixels: np.ndarray) -> np.ndarray:
    return np.where(pixels[..., 0] > 150, 255, 0).astype(np.uint8)


def _same_luminance_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two colour pictures whose luminance is equal everywhere and whose hue differs in a square."""
    base = np.tile(np.linspace(70, 180, SIZE)[None, :, None], (SIZE, 1, 3)).round()
    shift = np.zeros_like(base)
    shift[8:20, 10:24] = HUE_SHIFT
    return (base + shift).astype(np.uint8), (base - shift).astype(np.uint8)


def _write_split(root: Path, split: str, images: list[np.ndarray]) -> None:
    folder = root / f"{split}_Folder"
    rows = []
    for index, pixels in enumerate(images):
        name = f"{split.lower()}{index}.png"
        _save(folder / "img" / name, pixels)
        _save(folder / "labelcol" / name, _mask_of(pixels) if pixels.ndim == 3 else np.where(pixels > 150, 255, 0))
        rows.append([name, "Red lesion in the upper left."])
    with (folder / f"{split}_text.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["Image", "Description"], *rows])


@pytest.fixture(scope="module")
def colour_training(tmp_path_factory) -> tuple[Path, str]:
    """(run folder, what tmca train printed on stderr): a tiny model trained a few steps on colour PNGs (and
    one grey PNG) in LViT's layout, in_channels left to tmca train."""
    import yaml

    root = tmp_path_factory.mktemp("colour")
    _write_split(root / "data", "Train", [_colour(seed) for seed in range(7)] + [_colour(7)[..., 0]])
    _write_split(root / "data", "Val", [_colour(seed) for seed in range(8, 12)])
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_MODEL, "train": {"warmup_steps": 1, "val_items": 4}}))
    run, printed = root / "run", io.StringIO()
    with contextlib.redirect_stderr(printed):
        code = main(["train", "--data", str(root / "data"), "--format", "lvit", "--output", str(run), "--config", str(config),
                     "--batch-size", "4", "--steps-per-epoch", "2", "--epochs", "1", "--device", "cpu", "--seed", "0"])
    assert code == 0
    return run, printed.getvalue()


@pytest.fixture(scope="module")
def colour_run(colour_training) -> Path:
    return colour_training[0]


# ---------------------------------------------------------------------------------------------
# Reading and preparing


def test_a_colour_png_keeps_its_rgb_beside_its_luminance(tmp_path) -> None:
    pixels = _colour(0)
    loaded = load_image(_save(tmp_path / "c.png", pixels))
    assert loaded.channels == 3 and loaded.was_rgb and is_colour_file(tmp_path / "c.png")
    assert loaded.rgb.shape == (1, SIZE, SIZE, 3)
    np.testing.assert_array_equal(loaded.rgb[0], pixels)
    luminance = pixels.astype(np.float32) @ np.asarray(LUMINANCE_WEIGHTS, np.float32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded.image)[0], luminance)


def test_grey_and_grey_stored_as_rgb_are_grey(tmp_path) -> None:
    grey = _colour(1)[..., 0]
    as_rgb = load_image(_save(tmp_path / "g3.png", np.stack([grey] * 3, axis=-1)))
    plain = load_image(_save(tmp_path / "g.png", grey))
    assert as_rgb.rgb is None and as_rgb.channels == 1 and as_rgb.was_rgb and is_colour_file(tmp_path / "g3.png")
    assert plain.rgb is None and not plain.was_rgb and not is_colour_file(tmp_path / "g.png")
    np.testing.assert_allclose(sitk.GetArrayFromImage(as_rgb.image), sitk.GetArrayFromImage(plain.image), rtol=1e-6)


def test_an_rgb_nrrd_as_slicer_writes_a_vector_volume_is_colour(tmp_path) -> None:
    volume = np.stack([_colour(seed) for seed in range(3)])  # (z, y, x, 3) uint8
    image = sitk.GetImageFromArray(volume, isVector=True)
    image.SetSpacing((0.5, 0.5, 2.0))
    sitk.WriteImage(image, str(tmp_path / "rgb.nrrd"))
    loaded = load_image(tmp_path / "rgb.nrrd")
    assert is_colour_file(tmp_path / "rgb.nrrd") and loaded.rgb.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_array_equal(loaded.rgb, volume)


def test_colour_is_scaled_with_one_set_of_bounds_so_the_hue_stays(tmp_path) -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[..., 0], pixels[..., 2] = 200, 100  # red twice the blue
    pixels[0, 0] = (0, 0, 0)
    loaded = load_image(_save(tmp_path / "c.png", pixels))
    colour = preprocess_channels(loaded, "OT", channels=3)
    assert colour.shape == (3, 1, 4, 4) and colour.dtype == np.float32 and colour.flags.c_contiguous
    np.testing.assert_allclose(colour[:, 0, 1, 1], [1.0, 0.0, 0.5])
    grey = preprocess_channels(loaded, "OT", channels=1)
    np.testing.assert_array_equal(grey[0], preprocess(loaded, "OT"))
    np.testing.assert_array_equal(grey[0], normalize_intensity(sitk.GetArrayFromImage(loaded.image), "OT"))


def test_a_grey_image_is_repeated_for_a_colour_model(tmp_path) -> None:
    loaded = load_image(_save(tmp_path / "g.png", _colour(2)[..., 1]))
    three = preprocess_channels(loaded, "OT", channels=3)
    assert three.shape == (3, 1, SIZE, SIZE)
    for channel in three:
        np.testing.assert_array_equal(channel, preprocess(loaded, "OT"))


def test_resize_case_keeps_colour(tmp_path) -> None:
    loaded = load_image(_save(tmp_path / "c.png", _colour(3, size=48)))
    resized, mask = resize_case(loaded, np.zeros((1, 48, 48), bool), SIZE)
    assert resized.rgb.shape == (1, SIZE, SIZE, 3) and mask.shape == (1, SIZE, SIZE)
    luminance = resized.rgb @ np.asarray(LUMINANCE_WEIGHTS, np.float32)  # resizing is linear: it commutes with luminance
    np.testing.assert_allclose(luminance, sitk.GetArrayFromImage(resized.image), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Training data


def test_the_dataset_yields_the_models_channels(tmp_path) -> None:
    colour = Sample(_save(tmp_path / "c.png", _colour(4)), _save(tmp_path / "m.png", _mask_of(_colour(4))), "Lesion.", "c", "Train")
    grey = Sample(_save(tmp_path / "g.png", _colour(5)[..., 0]), colour.mask, "Lesion.", "g", "Train")
    volume = tmp_path / "v.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, SIZE, SIZE)).astype(np.float32)), str(volume))
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, SIZE, SIZE), np.uint8)), str(tmp_path / "vm.nii.gz"))
    scan = Sample(volume, tmp_path / "vm.nii.gz", "Lesion.", "v", "Train")

    colour_items = SliceDataset([colour, grey, scan], image_size=16, in_channels=3)
    shapes = [tuple(colour_items[index]["image"].shape) for index in range(len(colour_items))]
    assert set(shapes) == {(3, 16, 16)} and colour_items[0]["mask"].shape == (1, 16, 16)
    assert not torch.equal(colour_items[0]["image"][0], colour_items[0]["image"][2])  # red and blue differ
    assert torch.equal(colour_items[1]["image"][0], colour_items[1]["image"][2])  # grey repeated
    grey_items = SliceDataset([colour, grey, scan], image_size=16)
    assert {tuple(grey_items[index]["image"].shape) for index in range(len(grey_items))} == {(1, 16, 16)}
    with pytest.raises(Exception, match="in_channels"):
        SliceDataset([colour], image_size=16, in_channels=2)


def test_survey_colour_picks_colour_when_any_image_holds_colour(tmp_path) -> None:
    def sample(name: str, pixels: np.ndarray) -> Sample:
        return Sample(_save(tmp_path / name, pixels), tmp_path / "m.png", "Lesion.", name, "Train")

    grey = [sample(f"g{i}.png", _colour(i)[..., 0]) for i in range(3)]
    grey_as_rgb = [sample(f"r{i}.png", np.stack([_colour(i)[..., 1]] * 3, axis=-1)) for i in range(2)]
    assert not survey_colour(grey).colour and survey_colour(grey).in_channels == 1
    stored_rgb = survey_colour(grey + grey_as_rgb)
    assert (stored_rgb.colour, stored_rgb.colour_files, stored_rgb.checked) == (False, 2, 2)
    mixed = survey_colour(grey + grey_as_rgb + [sample("c.png", _colour(7))])
    assert mixed.colour and mixed.in_channels == 3 and mixed.files == 6


# ---------------------------------------------------------------------------------------------
# Training and inference


def test_tmca_train_records_a_colour_model_and_says_so(colour_training) -> None:
    run, printed = colour_training
    for folder in ("best", "last"):
        model, config = load_checkpoint(run / folder)
        assert model.config.in_channels == 3 and config["model"]["in_channels"] == 3
    lines = [line for line in printed.splitlines() if "colour model" in line]
    assert len(lines) == 1 and "7 of 8 files store colour" in lines[0] and "in_channels 3, 1 grey image(s) repeated" in lines[0]


def test_in_channels_set_in_the_config_or_by_a_resumed_run_wins(tmp_path, colour_run) -> None:
    from tmca.commands.train import choose_in_channels
    from tmca.training import TrainOptions

    colour = [Sample(_save(tmp_path / "c.png", _colour(0)), tmp_path / "m.png", "Lesion.", "c", "Train")]
    chosen = TrainOptions(data="d", format="lvit", output="o", model={"in_channels": 1})
    assert choose_in_channels(chosen, colour) is None and chosen.model["in_channels"] == 1
    detected = TrainOptions(data="d", format="lvit", output="o", model={})
    assert "in_channels 3" in choose_in_channels(detected, colour) and detected.model["in_channels"] == 3
    grey = [Sample(_save(tmp_path / "g.png", _colour(0)[..., 0]), tmp_path / "m.png", "Lesion.", "g", "Train")]
    resumed = TrainOptions(data="d", format="lvit", output=str(colour_run), resume=True, model={})
    assert choose_in_channels(resumed, grey) is None and resumed.model["in_channels"] == 3


def _model_inputs(segmenter: Segmenter, path: Path, monkeypatch) -> list[torch.Tensor]:
    import tmca.inference

    seen: list[torch.Tensor] = []
    prepare = tmca.inference.model_input
    monkeypatch.setattr(tmca.inference, "model_input", lambda slices, size: seen.append(prepare(slices, size)) or seen[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probabilities = segmenter.segment(path, "Red lesion in the upper left.").probabilities
    return [seen[0], torch.from_numpy(probabilities)]


def test_same_luminance_other_hue_differs_for_a_colour_model_only(colour_run, tiny_model_dir, tmp_path, monkeypatch) -> None:
    first, second = _same_luminance_pair()
    paths = _save(tmp_path / "a.png", first), _save(tmp_path / "b.png", second)
    colour = Segmenter(colour_run / "best", device="cpu")
    (input_a, out_a), (input_b, out_b) = (_model_inputs(colour, path, monkeypatch) for path in paths)
    assert input_a.shape == (1, 3, SIZE, SIZE)
    assert not torch.allclose(input_a, input_b) and not torch.allclose(out_a, out_b)
    grey = Segmenter(tiny_model_dir, device="cpu")
    (input_a, out_a), (input_b, out_b) = (_model_inputs(grey, path, monkeypatch) for path in paths)
    assert input_a.shape[1] == 1
    torch.testing.assert_close(input_a, input_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=0)


def test_inference_notes_each_conversion_once_per_kind(colour_run, tiny_model_dir, tmp_path) -> None:
    grey_png, colour_png = _save(tmp_path / "g.png", _colour(1)[..., 0]), _save(tmp_path / "c.png", _colour(1))
    colour, grey = Segmenter(colour_run / "best", device="cpu"), Segmenter(tiny_model_dir, device="cpu")
    with pytest.warns(UserWarning, match="grey image is repeated in its 3 colour channels"):
        colour.segment(grey_png, "Lesion.")
    with pytest.warns(UserWarning, match="converted to grey"):
        grey.segment(colour_png, "Lesion.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conversion, no note
        colour.segment(colour_png, "Lesion.")
        grey.segment(grey_png, "Lesion.")


def test_the_cli_shows_the_conversion_note_once(colour_run, tmp_path, capsys) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    for index in range(3):  # the study runner takes volumes: grey 2D NRRDs
        sitk.WriteImage(sitk.GetImageFromArray(_colour(index)[..., 0]), str(cases / f"case{index}.nrrd"))
    reports = tmp_path / "reports.csv"
    reports.write_text("case,report\n" + "".join(f"case{i},Lesion.\n" for i in range(3)))
    code = main(["batch", str(cases), "--reports", str(reports), "--output", str(tmp_path / "out"), "--model",
                 str(colour_run / "best"), "--device", "cpu"])
    assert code == 0
    assert capsys.readouterr().err.count("grey image is repeated") == 1


def test_a_colour_tile_model_slides_over_a_large_colour_image(tmp_path, text_encoder) -> None:
    from tmca.checkpoint import save_checkpoint
    from tmca.config import TMCAConfig
    from tmca.networks.tmca_net import TMCANet

    torch.manual_seed(0)
    config = TMCAConfig(**{**TINY_MODEL, "in_channels": 3, "large_images": "tile"})
    model = save_checkpoint(tmp_path / "tile", TMCANet(config, text_encoder))
    first, second = _same_luminance_pair()
    large = [_save(tmp_path / f"{name}.png", np.tile(pixels, (3, 2, 1))) for name, pixels in (("a", first), ("b", second))]
    segmenter = Segmenter(model, device="cpu")
    out_a, out_b = (segmenter.segment(path, "Lesion.").probabilities for path in large)
    assert segmenter.large_images == "tile" and out_a.shape == (1, 1, 3 * SIZE, 2 * SIZE)
    assert not np.allclose(out_a, out_b)  # the windows saw the hue
