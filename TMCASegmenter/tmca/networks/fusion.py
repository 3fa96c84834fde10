"""Inference-only rewrites that keep outputs the same: batch norm folded into the convolution before it,
symmetric constant padding moved into the convolution, activations computed in place, and the decoder's
convolutions of concatenated tensors split by input (the concatenation is never built)."""

from __future__ import annotations

import torch
from torch import nn

from tmca.networks.decoder import UpStage
from tmca.networks.layers import Convolution

_CONV = (nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm2d, nn.BatchNorm3d)
# (convolution, batch norm, padding) attribute names inside MONAI's EfficientNet blocks.
_MBCONV_PAIRS = (("_expand_conv", "_bn0", "_expand_conv_padding"), ("_depthwise_conv", "_bn1", "_depthwise_conv_padding"),
                 ("_project_conv", "_bn2", "_project_conv_padding"))


@torch.no_grad()
def fold_batch_norm(conv: nn.Module, norm: nn.Module) -> nn.Module:
    """A convolution equal to ``norm(conv(x))`` for a batch norm in eval mode."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    fused = type(conv)(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, *([1] * (conv.weight.ndim - 1))))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused.bias.copy_(norm.bias + (bias - norm.running_mean) * scale)
    return fused


def _absorb_symmetric_padding(owner: nn.Module, conv_name: str, pad_name: str) -> None:
    pad = getattr(owner, pad_name, None)
    conv = getattr(owner, conv_name)
    if not isinstance(pad, (nn.ConstantPad2d, nn.ConstantPad3d)) or pad.value != 0:
        return
    pairs = list(zip(pad.padding[::2], pad.padding[1::2]))  # (before, after) per axis, last axis first
    if any(before != after for before, after in pairs):
        return
    conv.padding = tuple(before for before, _ in reversed(pairs))
    setattr(owner, pad_name, nn.Identity())


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Rewrite ``model`` in place for faster inference; call only on a model in eval mode."""
    if model.training:
        raise RuntimeError("fuse_for_inference needs a model in eval mode")
    for module in list(model.modules()):
        if isinstance(module, Convolution) and isinstance(getattr(module, "conv", None), _CONV):
            norm = getattr(getattr(module, "adn", None), "N", None)
            if isinstance(norm, _NORM):
                module.conv = fold_batch_norm(module.conv, norm)
                module.adn.N = nn.Identity()
        for conv_name, norm_name, pad_name in _MBCONV_PAIRS:
            if isinstance(getattr(module, conv_name, None), _CONV) and isinstance(getattr(module, norm_name, None), _NORM):
                setattr(module, conv_name, fold_batch_norm(getattr(module, conv_name), getattr(module, norm_name)))
                setattr(module, norm_name, nn.Identity())
                _absorb_symmetric_padding(module, conv_name, pad_name)
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = True  # no autograd at inference: each activation's input is not read again
        if isinstance(getattr(module, "stem", None), _CONV) and isinstance(getattr(module, "stem_norm", None), _NORM):
            module.stem = fold_batch_norm(module.stem, module.stem_norm)
            module.stem_norm = nn.Identity()
    for module in list(model.modules()):
        if isinstance(module, UpStage):
            module.split_concatenation()  # after the folding above, so that the split convolutions carry it
    return model
