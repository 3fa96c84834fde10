"""Inference backends: ONNX Runtime and OpenVINO against eager PyTorch (masks and probabilities), the export
cache they share (reused when valid, rebuilt when stale or modified, user cache when the model folder cannot be
written), and what ``auto`` picks and falls back to."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from datapaths import real_data_file
from tmca import backends
from tmca.errors import TMCAError
from tmca.inference import Segmenter
from tmca.metrics import dice

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

EXPORTED = ["onnx", "openvino"]

REPORT = "Small nodule in the upper left lung. Large consolidation in the lower right lung with effusion."


def _compare(eager, other, image, report, **options):
    a = eager.segment(image, report, with_relevance=True, **options)
    b = other.segment(image, report, with_relevance=True, **options)
    assert a.probabilities.shape == b.probabilities.shape
    return [dice(x, y) for x, y in zip(a.masks, b.masks)], float(np.abs(a.probabilities - b.probabilities).max()), float(np.abs(a.relevance - b.relevance).max())


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


@pytest.mark.parametrize("backend", EXPORTED)
def test_exported_backend_matches_eager_on_a_real_mri(model_copy, backend):
    image = real_data_file("brain1_image.nrrd")
    eager = Segmenter(model_copy, device="cpu", batch_size=4, backend="eager")
    exported = Segmenter(model_copy, device="cpu", batch_size=4, backend=backend)  # 25 slices: batches of 4 and a last one of 1
    assert exported.runner.name == backend and eager.runner.name == "eager"
    dices, max_probability, max_relevance = _compare(eager, exported, image, REPORT, plane="axial")  # two findings, different lengths
    assert len(dices) == 2 and min(dices) >= 0.99, dices
    assert max_probability < 1e-3 and max_relevance < 1e-3


def test_exported_backends_match_eager_with_the_demo_model(tmp_path):
    from tmca.models import default_model_path

    demo = default_model_path()
    if demo is None:
        pytest.skip("the bundled demo model is not installed")
    model = shutil.copytree(demo, tmp_path / "demo", ignore=shutil.ignore_patterns(".tmca-cache"))
    done = subprocess.run(
        [sys.executable, "-m", "tmca.cli", "synth", "--output", str(tmp_path / "data"), "--cases", "1", "--modality", "ct", "--dims", "3", "--seed", "7"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    image = sitk.ReadImage(str(next((tmp_path / "data" / "images").glob("*.nii.gz"))), sitk.sitkFloat32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(next((tmp_path / "data" / "masks").glob("*.nii.gz")))))
    rows = np.flatnonzero(truth.any(axis=(0, 2)))  # the coronal slices (the demo model's plane) that hold lesions
    image = image[:, int(rows.min()) : int(rows.max()) + 1, :]
    report = next((tmp_path / "data" / "reports").glob("*.txt")).read_text()
    eager = Segmenter(model, device="cpu", backend="eager")
    result = eager.segment(image, report)
    assert result.masks.any(), "the demo case should give a mask"
    for backend in EXPORTED:
        dices, max_probability, _ = _compare(eager, Segmenter(model, device="cpu", backend=backend), image, report)
        assert min(dices) >= 0.99, (backend, dices)
        assert max_probability < 1e-3, backend


def test_export_is_cached_verified_and_rebuilt_when_stale(model_copy, monkeypatch):
    first = Segmenter(model_copy, device="cpu", backend="onnx").runner.folder
    assert first == model_copy / ".tmca-cache" / "onnx"
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["checkpoint"]["model.safetensors"] == json.loads((model_copy / "manifest.json").read_text())["files"]["model.safetensors"]["sha256"]

    calls = []
    real_export = backends._export
    monkeypatch.setattr(backends, "_export", lambda *args: (calls.append(1), real_export(*args)))
    Segmenter(model_copy, device="cpu", backend="onnx")
    assert calls == []  # a valid cache is reused

    with open(first / "decoder.onnx", "ab") as stream:  # modified after the export
        stream.write(b"\0")
    Segmenter(model_copy, device="cpu", backend="onnx")
    assert calls == [1]


def test_export_of_another_checkpoint_is_not_used(model_copy, tiny_model_dir, tmp_path, monkeypatch):
    from tmca.checkpoint import load_checkpoint, save_checkpoint

    Segmenter(model_copy, device="cpu", backend="onnx")
    other = tmp_path / "other"
    model, _ = load_checkpoint(tiny_model_dir)
    with torch.no_grad():
        model.decoder.head.bias.add_(1.0)
    save_checkpoint(other, model)
    shutil.copytree(model_copy / ".tmca-cache", other / ".tmca-cache")  # a cache copied along from another model
    calls = []
    real_export = backends._export
    monkeypatch.setattr(backends, "_export", lambda *args: (calls.append(1), real_export(*args)))
    eager = Segmenter(other, device="cpu", backend="eager")
    onnx = Segmenter(other, device="cpu", backend="onnx")
    assert calls == [1]
    volume = sitk.GetImageFromArray(np.random.default_rng(0).random((3, 40, 40), dtype=np.float32))
    a, b = eager.segment(volume, REPORT), onnx.segment(volume, REPORT)
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-3


def test_read_only_model_folder_uses_the_user_cache(model_copy, tmp_path, monkeypatch):
    (model_copy / ".tmca-cache").write_text("not a folder")  # the cache cannot be created beside the model
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "user-cache"))
    folder = Segmenter(model_copy, device="cpu", backend="onnx").runner.folder
    assert folder.is_relative_to(tmp_path / "user-cache")
    assert (folder / "manifest.json").is_file()


def test_backend_choice():
    from tmca.config import TMCAConfig

    class Model:
        config = TMCAConfig(encoder="small", encoder_pretrained=False, spatial_dims=3, image_size=32)

    assert backends.resolve_backend("auto", Model(), torch.device("cpu")) == "eager"  # 3D
    with pytest.raises(TMCAError, match="2D"):
        backends.resolve_backend("onnx", Model(), torch.device("cpu"))
    Model.config = TMCAConfig(encoder="small", encoder_pretrained=False)
    assert backends.resolve_backend("auto", Model(), torch.device("cpu")) == "openvino"
    assert backends.auto_candidates(Model(), torch.device("cpu")) == ["openvino", "onnx", "eager"]
    assert backends.resolve_backend("auto", Model(), torch.device("cuda")) == "eager"
    with pytest.raises(TMCAError, match="CPU"):
        backends.resolve_backend("onnx", Model(), torch.device("cuda"))
    with pytest.raises(TMCAError, match="unknown backend"):
        backends.check_backend("tensorrt")


def test_the_bundled_model_is_exported_to_the_user_cache(tmp_path, monkeypatch):
    from tmca.models import default_model_path

    demo = default_model_path()
    if demo is None:
        pytest.skip("the bundled demo model is not installed")
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path))
    assert [folder.is_relative_to(tmp_path) for folder in backends._cache_candidates(demo)] == [True]


def test_openvino_keeps_its_compiled_model_beside_the_export(model_copy):
    first = Segmenter(model_copy, device="cpu", backend="openvino").runner
    compiled = first.folder / "openvino"
    assert any(compiled.iterdir()), "the compiled model is cached for the next process"
    volume = sitk.GetImageFromArray(np.random.default_rng(1).random((3, 40, 40), dtype=np.float32))
    again = Segmenter(model_copy, device="cpu", backend="openvino")  # loads the cached blob
    a, b = Segmenter(model_copy, device="cpu", backend="eager").segment(volume, REPORT), again.segment(volume, REPORT)
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-3


def test_auto_falls_back_to_the_next_backend_when_one_fails(model_copy, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setitem(backends.RUNNERS, "openvino", broken)
    assert Segmenter(model_copy, device="cpu", backend="auto").runner.name == "onnx"
    assert "openvino backend unavailable" in caplog.text
    with pytest.raises(TMCAError, match="openvino backend failed.*use --backend eager"):
        Segmenter(model_copy, device="cpu", backend="openvino")
    monkeypatch.setitem(backends.RUNNERS, "onnx", broken)
    assert Segmenter(model_copy, device="cpu", backend="auto").runner.name == "eager"


def test_reports_are_encoded_by_the_exported_text_encoder(model_copy, monkeypatch, caplog):
    reports = [REPORT, "Nodule."]  # two lengths: padding and the attention mask go through the export
    expected = Segmenter(model_copy, device="cpu", backend="eager").model.encode_text(reports)
    for backend in EXPORTED:
        model = Segmenter(model_copy, device="cpu", backend=backend).model
        assert model.text_encoder.runtime is not None, backend
        got = model.encode_text(reports)
        assert torch.equal(got.mask, expected.mask)
        torch.testing.assert_close(got.tokens, expected.tokens, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.sentence, expected.sentence, atol=1e-4, rtol=1e-4)

    def untraceable(self, *inputs):
        raise RuntimeError("simulated exporter failure")

    shutil.rmtree(model_copy / ".tmca-cache")
    monkeypatch.setattr(backends._TextGraph, "forward", untraceable)
    segmenter = Segmenter(model_copy, device="cpu", backend="openvino")  # the image graphs are still exported and used
    assert segmenter.runner.name == "openvino" and segmenter.model.text_encoder.runtime is None
    assert "was not exported" in caplog.text and not (segmenter.runner.folder / "text.onnx").exists()
    torch.testing.assert_close(segmenter.model.encode_text(reports).tokens, expected.tokens)


def test_export_is_rebuilt_when_the_text_encoder_files_change(model_copy, monkeypatch):
    first = Segmenter(model_copy, device="cpu", backend="onnx").runner.folder
    identity = json.loads((first / "manifest.json").read_text())["text_encoder"]
    assert identity["reference"] and "model.safetensors" in identity["files"]
    calls = []
    real_export = backends._export
    monkeypatch.setattr(backends, "_export", lambda *args: (calls.append(1), real_export(*args)))
    Segmenter(model_copy, device="cpu", backend="onnx")
    assert calls == []
    changed = {**identity, "files": {**identity["files"], "model.safetensors": [1, 2]}}  # another size and time: an updated encoder
    monkeypatch.setattr(backends, "_text_encoder_identity", lambda model: changed)
    Segmenter(model_copy, device="cpu", backend="onnx")
    assert calls == [1]
