"""U-shaped decoder: LGTE text blocks at strides 16, 8, 4; text-gated stages at strides 2 and 1; optional click inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tmca.networks.blocks import conv_block
from tmca.networks.clicks import ClickEncoder
from tmca.networks.lgte import FineTextGate, LanguageGuidedTargetEnhancement, PlainCrossAttentionBlock
from tmca.networks.tsd import LevelEmbedding

# Decoder stage -> encoder level whose projections guide it (strides 16, 8, 4).
GUIDED_LEVELS = (3, 2, 1)


class UpStage(nn.Module):
    """Reduce channels (1x1, at the coarse grid), upsample x2 to the skip's grid, concatenate the skip,
    then ``depth`` 3x3 convolution blocks: (B, C_in, *s) + (B, C_skip, *2s) -> (B, C_out, *2s)."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int, depth: int) -> None:
        super().__init__()
        self.reduce = conv_block(spatial_dims, in_channels, out_channels, kernel_size=1)
        blocks = [conv_block(spatial_dims, out_channels + skip_channels, out_channels)]
        blocks += [conv_block(spatial_dims, out_channels, out_channels) for _ in range(depth - 1)]
        self.convs = nn.Sequential(*blocks)
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.merge: nn.Module | None = None  # set by split_concatenation()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[2:], mode=self.mode, align_corners=False)
        if self.merge is not None:
            return self.convs(self.merge(x, skip))
        return self.convs(torch.cat([x, skip], dim=1))

    def split_concatenation(self) -> None:
        """Inference rewrite: the first block's convolution of cat([x, skip]) becomes two convolutions
        summed (:class:`ConcatConvolution`), so the concatenated full-resolution tensor is never built."""
        if self.merge is None:
            self.merge = ConcatConvolution(self.convs[0], self.reduce.out_channels)
            self.convs = self.convs[1:]


class ConcatConvolution(nn.Module):
    """``block(cat([a, b], dim=1))`` for a :class:`~tmca.networks.layers.Convolution` block, computed as
    ``block.adn(conv_a(a) + conv_b(b))`` with the convolution's weights split by input channel:
    a (B, C_a, *s) + b (B, C_b, *s) -> (B, C_out, *s)."""

    def __init__(self, block: nn.Module, first_channels: int) -> None:
        super().__init__()
        conv = block.conv
        if conv.groups != 1:
            raise ValueError("a grouped convolution cannot be split by input channel")
        self.first = _input_slice(conv, slice(0, first_channels), bias=True)
        self.second = _input_slice(conv, slice(first_channels, conv.in_channels), bias=False)
        self.adn = block.adn

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.adn(self.first(a) + self.second(b))


@torch.no_grad()
def _input_slice(conv: nn.Module, channels: slice, bias: bool) -> nn.Module:
    """A convolution equal to ``conv``'s contribution from input ``channels`` (with its bias when ``bias``)."""
    part = type(conv)(
        channels.stop - channels.start, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=bias and conv.bias is not None, padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)  # fmt: skip
    part.weight.copy_(conv.weight[:, channels])
    if part.bias is not None:
        part.bias.copy_(conv.bias)
    return part


class TMCADecoder(nn.Module):
    """features [S, F1, F2, F3, F4] (strides 2..32) + image (B, C_in, *full) -> logits (B, 1, *full).

    ``text_mode``: "lgte" (full TMCA), "cross_attention" (the lgte ablation) or None (image only).
    ``fine_guidance``: with "lgte", the stride-2 and stride-1 stages are gated by the sentence and the
    stride-4 relevance map too (:class:`FineTextGate`), so small targets keep the report's guidance.
    ``fine_depth``: convolution blocks in each of the stride-2 and stride-1 stages.
    ``click_inputs``: the decoder takes click maps (B, 3, *full) (:mod:`tmca.networks.clicks`).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        embed_dim: int,
        text_channels: int,
        heads: int,
        text_mode: str | None,
        fine_guidance: bool = False,
        fine_depth: int = 1,
        click_inputs: bool = False,
    ) -> None:
        super().__init__()
        s2, f1, f2, f3, f4 = encoder_channels
        c16, c8, c4, c2, c1 = decoder_channels
        self.stages = nn.ModuleList(
            [
                UpStage(spatial_dims, f4, f3, c16, depth=2),
                UpStage(spatial_dims, c16, f2, c8, depth=2),
                UpStage(spatial_dims, c8, f1, c4, depth=2),
                UpStage(spatial_dims, c4, s2, c2, depth=fine_depth),
                UpStage(spatial_dims, c2, c1, c1, depth=fine_depth),
            ]
        )
        self.input_conv = conv_block(spatial_dims, in_channels, c1)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.head = conv(c1, 1, kernel_size=1)
        self.text_mode = text_mode
        if text_mode == "lgte":
            block = LanguageGuidedTargetEnhancement
        elif text_mode == "cross_attention":
            block = PlainCrossAttentionBlock
        elif text_mode is None:
            block = None
        else:
            raise ValueError(f"unknown text_mode {text_mode!r}")
        self.text_blocks = nn.ModuleList(block(c, embed_dim, text_channels, heads) for c in (c16, c8, c4)) if block else None
        use_fine_gates = fine_guidance and text_mode == "lgte"
        self.fine_gates = nn.ModuleList(FineTextGate(c, text_channels) for c in (c2, c1)) if use_fine_gates else None
        self.clicks = ClickEncoder(spatial_dims, (f3, f2, f1, s2, c1)) if click_inputs else None

    def forward(
        self,
        features: Sequence[torch.Tensor],
        image: torch.Tensor,
        embeddings: dict[int, LevelEmbedding] | None = None,
        sentence: torch.Tensor | None = None,
        clicks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns logits (B, 1, *full) and the relevance logits of the LGTE stages (coarse to fine).

        ``clicks``: (B, 3, *full) click maps for a decoder with click inputs (None: no clicks).
        """
        s2, f1, f2, f3, f4 = features
        skips = [f3, f2, f1, s2, self.input_conv(image)]
        if self.clicks is not None and clicks is not None:  # no clicks: the branch would add exactly zero
            maps = clicks.to(image.dtype)
            skips = [skip + extra for skip, extra in zip(skips, self.clicks(maps, [skip.shape[2:] for skip in skips]))]
        x = f4
        relevance: list[torch.Tensor] = []
        for index in range(3):
            x = self.stages[index](x, skips[index])
            if self.text_blocks is not None:
                x, logits = self.text_blocks[index](x, embeddings[GUIDED_LEVELS[index]], sentence)
                if logits is not None:
                    relevance.append(logits)
        for index in (3, 4):
            x = self.stages[index](x, skips[index])
            if self.fine_gates is not None:
                x = self.fine_gates[index - 3](x, sentence, relevance[-1])
        return self.head(x), relevance
