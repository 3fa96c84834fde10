"""Shared fixtures: one frozen text encoder per session and small, fast model configurations."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def text_encoder():
    from tmca.networks.text_encoder import FrozenTextEncoder

    return FrozenTextEncoder()


@pytest.fixture
def small_config():
    """A TMCA configuration small enough for CPU tests (random-init MONAI encoder, 64x64)."""
    from tmca.config import TMCAConfig

    def make(**overrides):
        values = dict(encoder="small", encoder_pretrained=False, image_size=64, embed_dim=32, decoder_channels=(32, 16, 16, 8, 8))
        values.update(overrides)
        return TMCAConfig(**values)

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, text_encoder):
    """A small, randomly initialised TMCA checkpoint (real weights and format, not a stub)."""
    from tmca.checkpoint import save_checkpoint
    from tmca.config import TMCAConfig
    from tmca.networks.tmca_net import TMCANet

    torch.manual_seed(0)
    config = TMCAConfig(encoder="small", encoder_pretrained=False, image_size=64, embed_dim=32, decoder_channels=(32, 16, 16, 8, 8))
    return save_checkpoint(tmp_path_factory.mktemp("models") / "tiny", TMCANet(config, text_encoder))


@pytest.fixture(scope="session")
def click_model_dir(tmp_path_factory, text_encoder):
    """A small checkpoint with click inputs whose click branch is switched on (random, not zero, weights)."""
    from tmca.checkpoint import save_checkpoint
    from tmca.config import TMCAConfig
    from tmca.networks.tmca_net import TMCANet

    torch.manual_seed(0)
    config = TMCAConfig(encoder="small", encoder_pretrained=False, image_size=64, embed_dim=32, decoder_channels=(32, 16, 16, 8, 8),
                        click_inputs=True)  # fmt: skip
    model = TMCANet(config, text_encoder)
    for head in model.decoder.clicks.heads:
        torch.nn.init.normal_(head.weight, std=0.5)
    return save_checkpoint(tmp_path_factory.mktemp("models") / "clicks", model)


@pytest.fixture(scope="session")
def small_and_large_ct(tmp_path_factory) -> dict:
    """Two synthetic CT volumes: "small" (64 x 64 x 24, quick) and "large" (160 x 160 x 80, long enough to cancel)."""
    from tmca.synth import write_dataset

    root = tmp_path_factory.mktemp("ct-pair")
    write_dataset(root / "small", 1, "CT", 3, seed=3, size=64, depth=24)
    write_dataset(root / "large", 1, "CT", 3, seed=4, size=160, depth=80)
    return {name: next((root / name / "images").glob("*.nii.gz")) for name in ("small", "large")}
