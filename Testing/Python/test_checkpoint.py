"""Checkpoint folders: round trip, hash verification, no pickle."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tmca.checkpoint import load_checkpoint, save_checkpoint, verify_checkpoint
from tmca.errors import TMCAError
from tmca.networks.tmca_net import TMCANet


@pytest.fixture
def saved(tmp_path, small_config, text_encoder):
    torch.manual_seed(1)
    model = TMCANet(small_config(), text_encoder).eval()
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # make sure weights are not the init
    folder = save_checkpoint(tmp_path / "ckpt", model, extra={"training": {"epochs": 1}})
    return model, folder


def test_round_trip_gives_identical_outputs(saved, text_encoder):
    model, folder = saved
    loaded, config = load_checkpoint(folder, text_encoder=text_encoder)
    image = torch.rand(2, 1, 64, 64)
    reports = ["nodule in the upper left lung", "two infected areas"]
    with torch.no_grad():
        assert torch.equal(model(image, reports).logits, loaded(image, reports).logits)
    assert config["training"] == {"epochs": 1}
    assert loaded.config == model.config


def test_loading_builds_the_config_once_and_keeps_the_trained_pretrained_flag(tmp_path, small_config, text_encoder, monkeypatch):
    from tmca.config import TMCAConfig
    from tmca.networks import tmca_net

    folder = save_checkpoint(tmp_path / "ckpt", TMCANet(small_config(encoder_pretrained=True), text_encoder))
    built, flags_seen_by_the_network = [], []
    validate = TMCAConfig.validate
    monkeypatch.setattr(TMCAConfig, "validate", lambda self: (built.append(1), validate(self))[1])
    build_encoder = tmca_net.build_encoder
    monkeypatch.setattr(tmca_net, "build_encoder", lambda *a: (flags_seen_by_the_network.append(a[4]), build_encoder(*a))[1])
    loaded, _ = load_checkpoint(folder, text_encoder=text_encoder)
    assert len(built) == 1
    assert flags_seen_by_the_network == [False]  # no ImageNet weights are read for a trained model
    assert loaded.config.encoder_pretrained is True


def test_checkpoint_files_and_manifest(saved):
    _, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert {"tmca", "torch", "monai", "transformers"} <= set(manifest["versions"])
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert not any(key.startswith("text_encoder.") for key in weights.keys())  # referenced, not copied
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["text_encoder"] == "minilm"


def test_tampered_weights_are_refused(saved):
    _, folder = saved
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(TMCAError, match="does not match its sha256"):
        load_checkpoint(folder)


def test_truncated_and_incomplete_folders_are_refused(saved, tmp_path):
    _, folder = saved
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TMCAError, match="sha256"):
        verify_checkpoint(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(TMCAError, match="missing manifest.json"):
        verify_checkpoint(folder)
    with pytest.raises(TMCAError, match="not found"):
        verify_checkpoint(tmp_path / "nowhere")


def test_edited_config_is_refused(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["model"]["embed_dim"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TMCAError, match="config.json does not match"):
        load_checkpoint(folder)


def test_saving_over_an_existing_checkpoint_replaces_it_whole(saved, small_config, text_encoder):
    model, folder = saved
    other = TMCANet(small_config(), text_encoder)
    save_checkpoint(folder, other)
    verify_checkpoint(folder)
    assert not list(folder.parent.glob(".ckpt*"))  # no staging or backup folders left


def test_info_json_has_the_documented_keys():
    result = subprocess.run([sys.executable, "-m", "tmca.cli", "info", "--json"], capture_output=True, text=True, check=True)
    info = json.loads(result.stdout)
    assert {"version", "torch", "devices", "default_model"} <= set(info)
    assert info["devices"][0]["type"] == "cpu"


def test_checkpoint_files_get_the_usual_permissions(tmp_path, small_config, text_encoder):
    old = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path / "shared", TMCANet(small_config(), text_encoder))
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700: other users can load the model
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in folder.iterdir())


def test_init_weights_adds_click_inputs_and_a_finer_decoder_to_a_trained_model(saved, small_config, text_encoder):
    """What `tmca train --init-weights` does: every tensor whose name and shape fit is copied, the rest starts fresh."""
    from tmca.checkpoint import transfer_weights

    trained, folder = saved
    torch.manual_seed(2)
    grown = TMCANet(small_config(decoder_channels=(32, 16, 16, 12, 8), click_inputs=True), text_encoder)
    copied, total, fresh = transfer_weights(grown, folder)
    old, new = trained.trainable_state_dict(), grown.trainable_state_dict()
    assert 0 < copied < total
    assert any(name.startswith("decoder.clicks.") for name in fresh)
    assert "decoder.stages.3.reduce.conv.weight" in fresh and "encoder" not in " ".join(fresh)
    for name, tensor in new.items():
        if name not in fresh:
            assert torch.equal(tensor, old[name]), name
    assert copied == sum(new[name].numel() for name in new if name not in fresh)


def test_init_weights_refuses_a_model_with_another_encoder(saved, small_config, text_encoder):
    from tmca.checkpoint import transfer_weights

    _, folder = saved
    other = TMCANet(small_config(in_channels=3), text_encoder)
    with pytest.raises(TMCAError, match="in_channels is 1.*has 3"):
        transfer_weights(other, folder)
