"""tmca finetune: promotion and refusal, --force, lineage in the checkpoint, finetune.json, bad input.

The decisions are made deterministic by the base models: one whose output bias makes it predict no
voxel (Val Dice exactly 0: any candidate is not worse), and one that predicts every voxel on a
site whose Val masks fill the whole scan (Val Dice exactly 1), fine-tuned with a learning rate so
large that its first Adam step (lr x sign of the gradient) wrecks it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tmca.checkpoint import checkpoint_id, load_checkpoint, save_checkpoint, verify_checkpoint
from tmca.cli import main
from tmca.config import TMCAConfig
from tmca.networks.tmca_net import TMCANet
from tmca.site import add_example, read_manifest
from tmca.synth import generate_case

TINY_CT = {"encoder": "small", "encoder_pretrained": False, "image_size": 64, "embed_dim": 32, "decoder_channels": [32, 16, 16, 8, 8],
           "modality": "CT"}
FAST = ["--device", "cpu", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--progress", "json"]


def _site(folder: Path, val_fills_scan: bool) -> Path:
    """5 Train and 3 Val corrections on 64 x 64 x 12 CT phantoms; Val masks are the whole scan if asked."""
    for i in range(8):
        case = generate_case(np.random.default_rng([5, i]), "CT", 3, size=64, depth=12, no_finding_probability=0.0)
        image = sitk.GetImageFromArray(case.image)
        val = i < 3
        mask = np.ones_like(case.mask) if val and val_fills_scan else case.mask
        add_example(folder, image, case.report, mask, case=f"c{i}", split="Val" if val else "Train")
    return folder


def _base(folder: Path, output_bias: float) -> Path:
    model = TMCANet(TMCAConfig.from_dict(TINY_CT))
    model.decoder.head.bias.data.fill_(output_bias)
    return save_checkpoint(folder, model, {"training": {"note": "test base"}})


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    return {"lesions": _site(root / "lesions", False), "whole": _site(root / "whole", True)}


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {"blind": _base(root / "blind", -1000.0), "everything": _base(root / "everything", 1000.0)}


def test_a_model_not_worse_is_promoted_with_lineage_and_finetune_json(sites, bases, tmp_path, capsys):
    new = tmp_path / "new"
    assert main(["finetune", "--model", str(bases["blind"]), "--data", str(sites["lesions"]), "--output", str(new), "--lr", "1e-3",
                 *FAST]) == 0
    assert "promoted" in capsys.readouterr().out
    verify_checkpoint(new)
    assert not (new / "rejected").exists() and not list(tmp_path.glob(".new*"))  # no staging left
    assert (new / "training" / "metrics.csv").is_file() and (new / "training" / "summary.json").is_file()
    assert not (new / "training" / "best").exists()  # the promoted checkpoint is NEW itself
    report = json.loads((new / "finetune.json").read_text())
    assert report["promoted"] is True and report["forced"] is False
    assert report["base"]["val"]["dice"] == 0.0 and report["delta_dice"] >= 0.0
    assert report["delta_dice"] == pytest.approx(report["new"]["val"]["dice"] - report["base"]["val"]["dice"], abs=1e-4)
    assert set(report["new"]["val"]) == {"dice", "dice_shuffled_reports", "n"} and report["new"]["val"]["n"] == 3
    rows = read_manifest(sites["lesions"])
    assert report["data"]["train_examples"] == sum(r.split == "Train" for r in rows) == 5
    assert report["data"]["val_examples"] == 3 and len(report["data"]["manifest_sha256"]) == 64
    assert report["training"]["steps"] == 2 and report["options"]["lr"] == 1e-3 and report["minutes_total"] >= 0
    assert report["base"]["manifest_sha256"] == checkpoint_id(bases["blind"]) == report["base"]["manifest_sha256"]
    assert report["new"]["manifest_sha256"] == checkpoint_id(new)

    _, config = load_checkpoint(new)
    assert config["lineage"]["parent"]["manifest_sha256"] == checkpoint_id(bases["blind"])
    assert config["lineage"]["val_dice"] == report["new"]["val"]["dice"]
    assert config["model"]["image_size"] == 64 and config["training"]["steps"] == 2  # the base's architecture, trained

    assert main(["info", "--model", str(new), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["lineage"]["parent"]["manifest_sha256"] == checkpoint_id(bases["blind"])
    assert main(["info", "--model", str(new)]) == 0
    text = capsys.readouterr().out
    assert f"parent: {checkpoint_id(bases['blind'])}" in text and "Val Dice" in text
    assert main(["info", "--model", str(bases["blind"])]) == 0
    assert "no parent" in capsys.readouterr().out


def test_a_worse_model_is_refused_and_kept_aside(sites, bases, tmp_path, capsys):
    new = tmp_path / "new"
    code = main(["finetune", "--model", str(bases["everything"]), "--data", str(sites["whole"]), "--output", str(new), "--lr", "1e4",
                 *FAST])
    out = capsys.readouterr().out
    assert code == 1
    report = json.loads((new / "finetune.json").read_text())
    assert report["base"]["val"]["dice"] == 1.0 and report["new"]["val"]["dice"] < 1.0
    assert report["promoted"] is False and report["delta_dice"] < 0
    assert f"worse than the base by {-report['delta_dice']:.4f}" in out
    assert not (new / "config.json").exists()  # nothing promoted where a model is looked for
    verify_checkpoint(new / "rejected")
    assert (new / "training" / "metrics.csv").is_file()
    _, config = load_checkpoint(new / "rejected")
    assert config["lineage"]["promoted"] is False
    image = next((sites["whole"] / "images").iterdir())
    assert main(["segment", str(image), "--model", str(new), "--report", "Nodule.", "--output", str(tmp_path / "s.seg.nrrd")]) == 2
    assert "missing config.json" in capsys.readouterr().err


def test_force_keeps_a_worse_model(sites, bases, tmp_path, capsys):
    new = tmp_path / "new"
    assert main(["finetune", "--model", str(bases["everything"]), "--data", str(sites["whole"]), "--output", str(new), "--lr", "1e4",
                 "--force", *FAST]) == 0
    assert "--force" in capsys.readouterr().out
    report = json.loads((new / "finetune.json").read_text())
    assert report["promoted"] is True and report["forced"] is True and report["delta_dice"] < 0
    verify_checkpoint(new)
    assert not (new / "rejected").exists()


def test_a_site_dataset_too_small_is_one_message_and_nothing_written(bases, tmp_path, capsys):
    site = tmp_path / "site"
    case = generate_case(np.random.default_rng([5, 0]), "CT", 3, size=64, depth=12, no_finding_probability=0.0)
    add_example(site, sitk.GetImageFromArray(case.image), case.report, case.mask, case="only", split="Train")
    code = main(["finetune", "--model", str(bases["blind"]), "--data", str(site), "--output", str(tmp_path / "new"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "too small to fine-tune" in err and "2 more Val example(s)" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_an_existing_output_and_a_missing_model_are_refused(sites, bases, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["finetune", "--model", str(bases["blind"]), "--data", str(sites["lesions"]), "--output", str(existing), *FAST]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert main(["finetune", "--model", str(tmp_path / "nope"), "--data", str(sites["lesions"]), "--output", str(tmp_path / "n"),
                 *FAST]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


def test_torchrun_two_cpu_processes(sites, bases, tmp_path):
    new = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29527", "-m", "tmca.cli", "finetune",
         "--model", str(bases["blind"]), "--data", str(sites["lesions"]), "--output", str(new), "--lr", "1e-3", *FAST],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    verify_checkpoint(new)
    report = json.loads((new / "finetune.json").read_text())
    assert report["promoted"] is True and report["training"]["steps"] == 2
    assert len(list(csv.DictReader(open(new / "training" / "metrics.csv")))) == 1  # written once, by rank 0
    assert sum("promoted the fine-tuned model" in line for line in result.stdout.splitlines()) == 1  # rank 0 reports
