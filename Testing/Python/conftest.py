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
