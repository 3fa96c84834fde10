"""The image-only baseline: MONAI's ``BasicUNet`` behind the interface of :class:`TMCANet`.

``tmca train --ablation unet`` trains it through the same data, augmentation, loss, training loop
and evaluation as TMCA, so a user can see what the text adds on their own data. The network is
split into an encoder (the features at strides 1, 2, 4, 8, 16) and a decoder, as the inference
runners (:mod:`tmca.backends`) expect. MONAI is imported only when such a network is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tmca.config import TMCAConfig
from tmca.networks.tmca_net import TMCAOutput


class _UNetEncoder(nn.Module):
    """(B, C_in, *spatial) -> [x0, x1, x2, x3, x4] at strides 1, 2, 4, 8, 16."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.conv_0, self.down_1, self.down_2, self.down_3, self.down_4 = unet.conv_0, unet.down_1, unet.down_2, unet.down_3, unet.down_4

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.conv_0(image)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        return [x0, x1, x2, x3, self.down_4(x3)]


class _UNetDecoder(nn.Module):
    """[x0, x1, x2, x3, x4] -> logits (B, 1, *spatial of x0)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.upcat_4, self.upcat_3, self.upcat_2, self.upcat_1 = unet.upcat_4, unet.upcat_3, unet.upcat_2, unet.upcat_1
        self.final_conv = unet.final_conv

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = features
        u4 = self.upcat_4(x4, x3)
        u3 = self.upcat_3(u4, x2)
        u2 = self.upcat_2(u3, x1)
        return self.final_conv(self.upcat_1(u2, x0))


class UNetBaseline(nn.Module):
    """MONAI ``BasicUNet`` (default features (32, 32, 64, 128, 256, 32), ``config.in_channels`` in, 1 logit out).

    ``forward(image (B, C, *spatial) in [0, 1], text=None)`` -> :class:`TMCAOutput` with logits only
    (no relevance, no alignment embeddings, so the TMCA loss reduces to Dice + BCE). Every weight is
    trainable and saved.
    """

    def __init__(self, config: TMCAConfig) -> None:
        from monai.networks.nets.basic_unet import BasicUNet

        super().__init__()
        if config.text:
            raise ValueError("the unet baseline is image-only: build it with text=False")
        self.config = config
        unet = BasicUNet(spatial_dims=config.spatial_dims, in_channels=config.in_channels, out_channels=1)
        self.encoder = _UNetEncoder(unet)
        self.decoder = _UNetDecoder(unet)

    def encode_text(self, reports: Sequence[str]):
        raise ValueError("the unet baseline is image-only; it encodes no text")

    def forward(self, image: torch.Tensor, text=None, with_alignment: bool | None = None, clicks: torch.Tensor | None = None) -> TMCAOutput:
        return self.decode(self.encoder(image), image)

    def decode(self, features: list[torch.Tensor], image: torch.Tensor, text=None, with_alignment: bool | None = None,
               clicks: torch.Tensor | None = None) -> TMCAOutput:
        """Logits from the encoder's ``features``; ``text`` and ``clicks`` are ignored (the baseline reads neither)."""
        return TMCAOutput(self.decoder(features))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())
