"""tmca.networks.layers against the MONAI classes they replace: same weight names, same seeded
initial weights (same random stream), same outputs in training and eval mode."""

from __future__ import annotations

import pytest
import torch

monai_blocks = pytest.importorskip("monai.networks.blocks")
monai_nets = pytest.importorskip("monai.networks.nets")

from tmca.networks import layers  # noqa: E402
from tmca.networks.encoders import LITE0_BLOCKS  # noqa: E402


def _same_state(ours: torch.nn.Module, theirs: dict[str, torch.Tensor]) -> None:
    state = ours.state_dict()
    assert sorted(state) == sorted(theirs)
    for key, value in state.items():
        assert torch.equal(value, theirs[key]), key


def _built_alike(make_ours, make_theirs):
    torch.manual_seed(3)
    theirs = make_theirs()
    after_theirs = torch.rand(4)
    torch.manual_seed(3)
    ours = make_ours()
    after_ours = torch.rand(4)
    assert torch.equal(after_ours, after_theirs), "construction drew a different amount of random numbers"
    return ours, theirs


@pytest.mark.parametrize("dims,kernel,stride,bias", [(2, 3, 1, False), (2, 1, 1, False), (3, 3, 2, True), (2, 3, 2, True)])
def test_convolution_matches_monai(dims, kernel, stride, bias):
    ours, theirs = _built_alike(
        lambda: layers.Convolution(dims, 5, 7, strides=stride, kernel_size=kernel, bias=bias),
        lambda: monai_blocks.Convolution(dims, 5, 7, strides=stride, kernel_size=kernel, act="RELU", norm="BATCH", bias=bias),
    )
    _same_state(ours, theirs.state_dict())
    x = torch.randn((3, 5) + (9,) * dims)
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("dims,stride,channels", [(2, 2, (1, 16)), (3, 2, (4, 8)), (2, 1, (6, 6)), (2, 1, (6, 10))])
def test_residual_unit_matches_monai(dims, stride, channels):
    ours, theirs = _built_alike(
        lambda: layers.ResidualUnit(dims, *channels, strides=stride, kernel_size=3, subunits=2),
        lambda: monai_blocks.ResidualUnit(dims, *channels, strides=stride, kernel_size=3, subunits=2, norm="BATCH", act="RELU"),
    )
    _same_state(ours, theirs.state_dict())
    x = torch.randn((2, channels[0]) + (8,) * dims)
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        assert torch.equal(ours(x), theirs(x))


def _monai_lite0(dims: int, size: int):
    net = monai_nets.EfficientNet(list(LITE0_BLOCKS), spatial_dims=dims, in_channels=3, image_size=size, drop_connect_rate=0.0)
    for module in net.modules():
        if hasattr(module, "_swish"):
            module._swish = torch.nn.ReLU6()
    return net


@pytest.mark.parametrize("dims,size", [(2, 64), (2, 96), (3, 32)])
def test_efficientnet_trunk_matches_monai(dims, size):
    trunk, net = _built_alike(lambda: layers.efficientnet_trunk(list(LITE0_BLOCKS), dims, 3, size), lambda: _monai_lite0(dims, size))
    holder = torch.nn.Module()
    holder._conv_stem, holder._conv_stem_padding, holder._bn0, holder._blocks = trunk.stem, trunk.stem_padding, trunk.stem_norm, trunk.blocks
    _same_state(holder, {k: v for k, v in net.state_dict().items() if not k.startswith(("_conv_head.", "_bn1.", "_fc."))})
    assert repr(trunk.stem_padding) == repr(net._conv_stem_padding)
    for ours, theirs in zip(trunk.blocks.modules(), net._blocks.modules()):
        assert type(ours).__name__ == type(theirs).__name__
        if isinstance(ours, (torch.nn.ConstantPad2d, torch.nn.ConstantPad3d)):
            assert ours.padding == theirs.padding

    def run(stem_padding, stem, norm, blocks, x):
        x = torch.nn.functional.relu6(norm(stem(stem_padding(x))))
        return blocks(x)

    x = torch.rand((2, 3) + (size,) * dims)
    for mode in (True, False):
        holder.train(mode), net.train(mode)
        assert torch.equal(
            run(trunk.stem_padding, trunk.stem, trunk.stem_norm, trunk.blocks, x), run(net._conv_stem_padding, net._conv_stem, net._bn0, net._blocks, x)
        )


def test_block_strings_are_checked():
    assert layers.BlockArgs.from_string("r2_k5_s22_e6_i24_o40") == layers.BlockArgs(2, 5, 2, 6, 24, 40)
    for bad in ("r1_k3_s12_e1_i32_o16", "r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s11_e1_i32_o16_noskip", "r1_k3_e1_i32_o16", "rX_k3_s11_e1_i32_o16"):
        with pytest.raises(ValueError):
            layers.BlockArgs.from_string(bad)
    with pytest.raises(ValueError):
        layers.Convolution(4, 1, 1)
