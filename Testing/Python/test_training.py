"""Training and evaluation end to end on small synthetic data: checkpoints, metrics, resume, torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tmca.checkpoint import load_checkpoint, verify_checkpoint
from tmca.cli import main

TINY_MODEL = {"encoder": "small", "encoder_pretrained": False, "image_size": 64, "embed_dim": 32, "decoder_channels": [32, 16, 16, 8, 8]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "xr"
    assert main(["synth", "--output", str(folder), "--cases", "20", "--modality", "xr", "--dims", "2", "--seed", "3", "--size", "64"]) == 0
    return folder


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    import yaml

    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "train": {"warmup_steps": 2, "val_items": 8}}))
    return path


def _train(dataset: Path, config: Path, output: Path, *extra: str) -> int:
    return main(["train", "--data", str(dataset), "--format", "lvit", "--output", str(output), "--config", str(config),
                 "--batch-size", "4", "--steps-per-epoch", "3", "--val-every", "3", "--device", "cpu", "--seed", "0", *extra])


def test_train_writes_best_last_metrics_and_a_loadable_checkpoint(dataset, config_file, tmp_path):
    run = tmp_path / "run"
    assert _train(dataset, config_file, run, "--epochs", "2") == 0
    verify_checkpoint(run / "best")
    verify_checkpoint(run / "last")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 and float(r["loss"]) > 0 for r in rows)
    assert "align" in rows[0] and rows[0]["align"] != ""
    model, config = load_checkpoint(run / "last")
    assert config["training"]["epochs"] == 2 and config["training"]["train_samples"] > 0
    assert model.config.image_size == 64
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["steps"] == 6


def test_resume_continues_where_the_run_stopped(dataset, config_file, tmp_path):
    run = tmp_path / "run"
    assert _train(dataset, config_file, run, "--epochs", "1") == 0
    assert _train(dataset, config_file, run, "--epochs", "1") != 0  # refuses to overwrite a run
    assert _train(dataset, config_file, run, "--epochs", "3", "--resume") == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["step"]) for r in rows] == [3, 6, 9]


def test_ablation_flag_reaches_the_saved_architecture(dataset, config_file, tmp_path):
    run = tmp_path / "image-only"
    assert _train(dataset, config_file, run, "--epochs", "1", "--ablation", "image-only") == 0
    config = json.loads((run / "last" / "config.json").read_text())
    assert config["model"]["text"] is False


def test_click_training_gives_a_model_that_refines(dataset, config_file, tmp_path):
    import numpy as np

    import tmca

    run = tmp_path / "clicks"
    assert _train(dataset, config_file, run, "--epochs", "1", "--click-training") == 0
    segmenter = tmca.Segmenter(run / "last", device="cpu")
    assert segmenter.can_refine
    image = next((dataset / "Test_Folder" / "img").iterdir())
    result = segmenter.segment(image, "Nodule in the left lung.")
    refined = segmenter.refine(result, 0, [tmca.Click(result.reference.TransformIndexToPhysicalPoint((32, 32, 0)))])
    assert refined.probabilities.shape == result.probabilities.shape and np.isfinite(refined.probabilities).all()


def test_init_weights_adds_click_inputs_to_a_trained_model(dataset, config_file, tmp_path, capsys):
    import tmca

    assert _train(dataset, config_file, tmp_path / "plain", "--epochs", "1") == 0
    capsys.readouterr()
    run = tmp_path / "grown"
    assert _train(dataset, config_file, run, "--epochs", "1", "--click-training", "--init-weights", str(tmp_path / "plain" / "last")) == 0
    told = capsys.readouterr().err
    assert f"starting from the weights of {tmp_path / 'plain' / 'last'}" in told and "fresh: decoder.clicks" in told
    assert tmca.Segmenter(run / "last", device="cpu").can_refine
    assert json.loads((run / "last" / "config.json").read_text())["training"]["init_weights"] == str(tmp_path / "plain" / "last")
    assert _train(dataset, config_file, tmp_path / "bad", "--epochs", "1", "--init-weights", str(dataset)) != 0
    assert "config.json" in capsys.readouterr().err


def test_unet_ablation_trains_saves_segments_and_evaluates(dataset, config_file, tmp_path, capsys):
    import numpy as np
    import SimpleITK as sitk

    from tmca.inference import Segmenter

    run = tmp_path / "unet"
    assert _train(dataset, config_file, run, "--steps", "2", "--ablation", "unet") == 0
    err = capsys.readouterr().err
    assert "tmca train: augmentation: " in err and "flips and 90-degree rotations off" in err  # the synthetic reports name sides
    verify_checkpoint(run / "best")
    model, config = load_checkpoint(run / "last")
    assert config["model"]["architecture"] == "unet" and config["model"]["text"] is False and config["training"]["steps"] == 2
    assert type(model).__name__ == "UNetBaseline" and model.config.in_channels == 1
    image = next((dataset / "Test_Folder" / "img").iterdir())
    output = tmp_path / "unet.seg.nrrd"
    assert main(["segment", str(image), "--model", str(run / "last"), "--report", "Nodule in the left lung.", "--output", str(output),
                 "--device", "cpu", "--backend", "onnx"]) == 0
    eager = Segmenter(run / "last", device="cpu").segment(image, "Nodule in the left lung.")
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output)))[0] > 0, eager.masks[0, 0])  # ONNX export = eager
    scores = tmp_path / "unet.json"
    assert main(["evaluate", "--model", str(run), "--data", str(dataset), "--format", "lvit", "--split", "Test", "--json", str(scores),
                 "--device", "cpu"]) == 0
    assert json.loads(scores.read_text())["n"] > 0


def test_image_size_is_128_on_a_cpu_unless_chosen(dataset, tmp_path, capsys):
    import torch
    import yaml

    from tmca.training import default_image_size

    unsized = tmp_path / "unsized.yaml"
    unsized.write_text(yaml.safe_dump({"model": {k: v for k, v in TINY_MODEL.items() if k != "image_size"}, "train": {"warmup_steps": 2}}))
    assert _train(dataset, unsized, tmp_path / "cpu", "--steps", "1") == 0
    assert load_checkpoint(tmp_path / "cpu" / "last")[0].config.image_size == 128
    assert "image size 128 px, the default on a CPU" in capsys.readouterr().err
    assert _train(dataset, unsized, tmp_path / "chosen", "--steps", "1", "--image-size", "96") == 0
    assert load_checkpoint(tmp_path / "chosen" / "last")[0].config.image_size == 96
    assert "the default on a CPU" not in capsys.readouterr().err
    assert default_image_size(torch.device("cuda"))[0] == 224


def test_bad_training_input_is_one_clear_error(tmp_path, config_file, capsys):
    code = main(["train", "--data", str(tmp_path / "none"), "--format", "lvit", "--output", str(tmp_path / "run"), "--config", str(config_file)])
    assert code != 0
    assert "dataset not found" in capsys.readouterr().err


def test_evaluate_reports_dice_iou_hd95_and_shuffled_text(dataset, config_file, tmp_path):
    run = tmp_path / "run"
    assert _train(dataset, config_file, run, "--epochs", "1") == 0
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--model", str(run), "--data", str(dataset), "--format", "lvit", "--split", "Test", "--json", str(out), "--device", "cpu"]) == 0
    scores = json.loads(out.read_text())
    assert {"dice", "iou", "hd95", "n"} <= set(scores) and scores["n"] == len(scores["cases"]) > 0
    assert all(0.0 <= case["dice"] <= 1.0 for case in scores["cases"])
    shuffled = tmp_path / "shuffled.json"
    assert main(["evaluate", "--model", str(run / "best"), "--data", str(dataset), "--format", "lvit", "--split", "Test",
                 "--json", str(shuffled), "--shuffle-text", "--eval-size", "32", "--device", "cpu"]) == 0
    shuffled_scores = json.loads(shuffled.read_text())
    assert shuffled_scores["shuffle_text"] is True and shuffled_scores["eval_size"] == 32
    original = {case["case"]: case["report"] for case in scores["cases"]}
    assert any(original[case["case"]] != case["report"] for case in shuffled_scores["cases"])


def test_derangement_moves_every_report():
    from tmca.evaluation import derangement

    for count in (2, 3, 10):
        order = derangement(count, seed=count)
        assert sorted(order) == list(range(count)) and all(order[i] != i for i in range(count))


def test_torchrun_two_cpu_processes(dataset, config_file, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "tmca.cli", "train",
         "--data", str(dataset), "--format", "lvit", "--output", str(run), "--config", str(config_file), "--batch-size", "2",
         "--steps-per-epoch", "2", "--epochs", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    verify_checkpoint(run / "last")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1  # written once, by rank 0
    summary = json.loads((run / "summary.json").read_text())
    told = [line for line in result.stdout.splitlines() if line.startswith("best validation Dice")]
    assert told == [f"best validation Dice {summary['best_val_dice']:.4f} after 2 steps, 1 epochs, 1 validations (epochs); model: {run / 'best'}"]


def test_a_3d_model_config_is_refused_before_training(dataset, tmp_path, capsys):
    import yaml

    config = tmp_path / "volume.yaml"
    config.write_text(yaml.safe_dump({"model": {**TINY_MODEL, "spatial_dims": 3, "image_size": 32}}))
    assert _train(dataset, config, tmp_path / "run") == 2
    assert "tmca trains 2D models only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
