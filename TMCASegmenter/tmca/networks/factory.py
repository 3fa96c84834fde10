"""The one place a network is built from a :class:`TMCAConfig` (training, checkpoints, fine-tuning)."""

from __future__ import annotations

from torch import nn

from tmca.config import TMCAConfig
from tmca.networks.text_encoder import FrozenTextEncoder
from tmca.networks.tmca_net import TMCANet


def build_network(config: TMCAConfig, text_encoder: FrozenTextEncoder | None = None) -> nn.Module:
    """The network ``config.architecture`` names: :class:`TMCANet` ("tmca") or the image-only
    :class:`tmca.networks.baseline.UNetBaseline` ("unet", which takes no text encoder).

    Raises ValueError/OSError (library errors) when the network cannot be built; callers facing the
    user turn them into TMCAError.
    """
    if config.architecture == "unet":
        from tmca.networks.baseline import UNetBaseline  # imports MONAI: only for such models

        return UNetBaseline(config)
    return TMCANet(config, text_encoder)
