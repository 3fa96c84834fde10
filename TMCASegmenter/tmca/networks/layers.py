"""The few MONAI building blocks the network uses, written out so that importing the engine does not import MONAI.

``import monai`` (or any ``monai.*`` submodule: the package's ``__init__`` loads every subpackage)
takes seconds: MONAI's apps, data, transforms and, through ``monai.networks.nets.transchex``,
transformers' BERT. These classes follow MONAI 1.6's modules exactly, attribute names included,
so checkpoints keep their weight names, a seeded model draws the same initial weights, and the
outputs are the same (``Testing/Python/test_layers.py`` compares each one with MONAI's):

- :class:`Convolution`: ``monai.networks.blocks.Convolution`` with batch norm and ReLU (``conv``, ``adn.N``, ``adn.A``);
- :class:`ResidualUnit`: ``monai.networks.blocks.ResidualUnit`` with batch norm and ReLU;
- :func:`efficientnet_trunk`: the stem and blocks of ``monai.networks.nets.EfficientNet`` (TensorFlow
  "same" padding, batch norm eps 1e-3 and momentum 0.01, its weight initialisation), with ReLU6 in
  place of swish and no squeeze-excitation (EfficientNet-Lite).

Errors are ValueError (library code; the engine turns them into TMCAError at its boundary).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_CONSTANT_PAD = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}
_ADAPTIVE_AVG_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, not {spatial_dims}")


class ADN(nn.Sequential):
    """Batch norm then ReLU, named ``N`` and ``A`` as in MONAI's ADN with ordering "NDA"."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.add_module("N", _BATCH_NORM[spatial_dims](channels))
        self.add_module("A", nn.ReLU())


class Convolution(nn.Sequential):
    """Convolution ("same" padding for odd kernels), batch norm and ReLU: MONAI's ``Convolution`` with
    ``act="RELU", norm="BATCH"`` (children ``conv`` and ``adn``)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int = 1,
        kernel_size: int = 3,
        bias: bool = True,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for same padding, not {kernel_size}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.add_module(
            "conv", _CONV[spatial_dims](in_channels, out_channels, kernel_size=kernel_size, stride=strides, padding=padding, bias=bias)
        )
        self.add_module("adn", ADN(spatial_dims, out_channels))


class ResidualUnit(nn.Module):
    """``subunits`` Convolution blocks plus a residual path: MONAI's ``ResidualUnit`` with
    ``act="RELU", norm="BATCH"`` (children ``conv.unit0..`` and ``residual``)."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, strides: int = 1, kernel_size: int = 3, subunits: int = 2, bias: bool = True
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = nn.Sequential()
        self.residual: nn.Module = nn.Identity()
        padding = (kernel_size - 1) // 2
        channels, stride = in_channels, strides
        for index in range(max(1, subunits)):
            self.conv.add_module(f"unit{index:d}", Convolution(spatial_dims, channels, out_channels, stride, kernel_size, bias, padding))
            channels, stride = out_channels, 1
        if strides != 1 or in_channels != out_channels:
            residual_kernel, residual_padding = (kernel_size, padding) if strides != 1 else (1, 0)
            self.residual = _CONV[spatial_dims](in_channels, out_channels, residual_kernel, strides, residual_padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.residual(x)


# --- EfficientNet-Lite --------------------------------------------------------------------------


class BlockArgs(NamedTuple):
    """One EfficientNet stage: ``r{repeats}_k{kernel}_s{stride}{stride}_e{expand}_i{in}_o{out}``."""

    num_repeat: int
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int

    @staticmethod
    def from_string(text: str) -> "BlockArgs":
        parts = text.split("_")
        if any(part.startswith("se") for part in parts):
            raise ValueError(f"squeeze-excitation is not supported (EfficientNet-Lite has none): {text!r}")
        if "noskip" in text:
            raise ValueError(f"blocks without skip connections are not supported: {text!r}")
        options = {part[:1]: part[1:] for part in parts}
        stride = options.get("s", "")
        if not stride or len(set(stride)) != 1:
            raise ValueError(f"invalid stride in block string {text!r}")
        try:
            return BlockArgs(int(options["r"]), int(options["k"]), int(stride[0]), int(options["e"]), int(options["i"]), int(options["o"]))
        except (KeyError, ValueError) as error:
            raise ValueError(f"invalid block string {text!r}") from error


def same_padding_amounts(image_size: list[int], kernel_size: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TensorFlow "same" padding for a convolution on ``image_size``, in ConstantPadNd order (last axis first)."""
    pads = [max((math.ceil(size / s) - 1) * s + k - size, 0) for size, k, s in zip(image_size, kernel_size, stride)]
    return [amount for pad in reversed(pads) for amount in (pad // 2, pad - pad // 2)]


def _same_padder(conv: nn.Module, image_size: list[int]) -> nn.Module:
    padding = same_padding_amounts(image_size, conv.kernel_size, conv.stride)
    return _CONSTANT_PAD[len(padding) // 2](padding=padding, value=0.0) if sum(padding) > 0 else nn.Identity()


def _output_size(image_size: list[int], stride: int) -> list[int]:
    return [int(math.ceil(size / stride)) for size in image_size]


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation, with ReLU6 (MONAI's ``MBConvBlock`` attribute names)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        image_size: list[int],
        expand_ratio: int,
        eps: float = 1e-3,
        momentum: float = 0.01,
    ) -> None:
        super().__init__()
        conv, norm = _CONV[spatial_dims], _BATCH_NORM[spatial_dims]
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.expand_ratio = expand_ratio
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = conv(in_channels, hidden, kernel_size=1, bias=False)
            self._expand_conv_padding = _same_padder(self._expand_conv, image_size)
            self._bn0 = norm(hidden, eps=eps, momentum=momentum)
        else:
            self._expand_conv = nn.Identity()
            self._expand_conv_padding = nn.Identity()
            self._bn0 = nn.Identity()
        self._depthwise_conv = conv(hidden, hidden, groups=hidden, kernel_size=kernel_size, stride=stride, bias=False)
        self._depthwise_conv_padding = _same_padder(self._depthwise_conv, image_size)
        self._bn1 = norm(hidden, eps=eps, momentum=momentum)
        image_size = _output_size(image_size, stride)
        self._project_conv = conv(hidden, out_channels, kernel_size=1, bias=False)
        self._project_conv_padding = _same_padder(self._project_conv, image_size)
        self._bn2 = norm(out_channels, eps=eps, momentum=momentum)
        self._swish = nn.ReLU6()  # the name stays MONAI's; EfficientNet-Lite uses ReLU6

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(self._expand_conv_padding(x))))
        x = self._swish(self._bn1(self._depthwise_conv(self._depthwise_conv_padding(x))))
        x = self._bn2(self._project_conv(self._project_conv_padding(x)))
        if self.stride == 1 and self.in_channels == self.out_channels:
            x = x + inputs
        return x


class EfficientNetTrunk(NamedTuple):
    stem_padding: nn.Module
    stem: nn.Module
    stem_norm: nn.Module
    blocks: nn.Sequential


def efficientnet_trunk(block_strings: list[str], spatial_dims: int = 2, in_channels: int = 3, image_size: int = 224) -> EfficientNetTrunk:
    """Stem and stages of MONAI's ``EfficientNet(block_strings, spatial_dims, in_channels, image_size=...,
    drop_connect_rate=0.0)`` with ReLU6 and no squeeze-excitation.

    The classification head (1x1 convolution to 1280 channels and a 1000-way linear layer) is built
    and initialised, then dropped: that keeps a seeded run drawing the same random numbers as MONAI's
    class, so a seeded model starts from the same weights as before.
    """
    _check_dims(spatial_dims)
    conv, norm = _CONV[spatial_dims], _BATCH_NORM[spatial_dims]
    specs = [BlockArgs.from_string(text) for text in block_strings]
    if not specs:
        raise ValueError("EfficientNet needs at least one block")
    size = [image_size] * spatial_dims
    stem = conv(in_channels, 32, kernel_size=3, stride=2, bias=False)
    stem_padding = _same_padder(stem, size)
    stem_norm = norm(32, eps=1e-3, momentum=0.01)
    size = _output_size(size, 2)
    blocks = nn.Sequential()
    index = 0
    for stage, spec in enumerate(specs):
        stack = nn.Sequential()
        in_filters, stride = spec.input_filters, spec.stride
        for repeat in range(spec.num_repeat):
            stack.add_module(
                str(index), MBConvBlock(spatial_dims, in_filters, spec.output_filters, spec.kernel_size, stride, size, spec.expand_ratio)
            )
            index += 1
            if repeat == 0:
                size = _output_size(size, spec.stride)
            in_filters, stride = spec.output_filters, 1
        blocks.add_module(str(stage), stack)
    head = nn.Sequential(  # MONAI's _conv_head, _bn1, _avg_pooling, _dropout, _fc (dropped below)
        conv(specs[-1].output_filters, 1280, kernel_size=1, bias=False),
        norm(1280, eps=1e-3, momentum=0.01),
        _ADAPTIVE_AVG_POOL[spatial_dims](1),
        nn.Dropout(0.2),
        nn.Linear(1280, 1000),
    )
    for module in (stem, stem_norm, *blocks.modules(), *head):
        _initialise(module)
    return EfficientNetTrunk(stem_padding, stem, stem_norm, blocks)


def _initialise(module: nn.Module) -> None:
    """MONAI's EfficientNet._initialize_weights (the TensorFlow EfficientNet scheme) for one module."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        fan_out = math.prod(module.kernel_size) * module.out_channels
        module.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
    elif isinstance(module, nn.Linear):
        init_range = 1.0 / math.sqrt(module.weight.size(0))
        module.weight.data.uniform_(-init_range, init_range)
        module.bias.data.zero_()
