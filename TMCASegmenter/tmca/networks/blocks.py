"""Small building blocks shared by the TMCA network parts."""

from __future__ import annotations

import math

import torch
from torch import nn

from tmca.networks.layers import Convolution


def conv_block(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    """Convolution, batch norm and ReLU (MONAI's ``Convolution`` layout, see :mod:`tmca.networks.layers`)."""
    return Convolution(spatial_dims, in_channels, out_channels, strides=stride, kernel_size=kernel_size, bias=False)


class MLP(nn.Sequential):
    """Two linear layers with a GELU between: (..., in_features) -> (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, hidden_features: int | None = None) -> None:
        hidden = hidden_features or out_features
        super().__init__(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_features))


def sinusoidal_position_encoding(shape: tuple[int, ...], channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sine/cosine encoding of an N-d grid.

    Returns (channels, *shape). The channels are split evenly between the spatial axes; each
    axis gets interleaved sines and cosines of geometrically spaced frequencies.
    """
    ndim = len(shape)
    per_axis = (channels // ndim) // 2 * 2
    parts = []
    for axis, size in enumerate(shape):
        half = max(per_axis // 2, 1)
        freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-math.log(10000.0) / half))
        position = torch.arange(size, device=device, dtype=torch.float32)
        angles = position[:, None] * freq[None, :]  # (size, half)
        encoding = torch.cat([angles.sin(), angles.cos()], dim=1)[:, :per_axis].T  # (per_axis, size)
        view = [per_axis] + [1] * ndim
        view[axis + 1] = size
        parts.append(encoding.reshape(view).expand(per_axis, *shape))
    encoding = torch.cat(parts, dim=0)
    if encoding.shape[0] < channels:
        encoding = torch.cat([encoding, encoding.new_zeros(channels - encoding.shape[0], *shape)], dim=0)
    return encoding.to(dtype)


def resize_mask(mask: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Area-downsample a (B, 1, *spatial) mask to ``size``: soft values in [0, 1]."""
    if tuple(mask.shape[2:]) == tuple(size):
        return mask
    return nn.functional.adaptive_avg_pool2d(mask, size) if mask.ndim == 4 else nn.functional.adaptive_avg_pool3d(mask, size)
