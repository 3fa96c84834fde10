"""Language-guided target enhancement (LGTE) and its ablation, plain cross-attention (GuideDecoder style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tmca.networks.blocks import sinusoidal_position_encoding
from tmca.networks.tsd import LevelEmbedding


class TextCrossAttention(nn.Module):
    """Visual tokens attend to report tokens: (B, C, *s) x (B, L, D) -> (B, C, *s), the attention output only."""

    def __init__(self, channels: int, text_channels: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, kdim=text_channels, vdim=text_channels, batch_first=True)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        position = sinusoidal_position_encoding(tuple(spatial), x.shape[1], x.device, x.dtype)
        query = self.norm((x + position).flatten(2).transpose(1, 2))  # (B, P, C)
        attended, _ = self.attention(query, tokens, tokens, key_padding_mask=~token_mask, need_weights=False)
        return attended.transpose(1, 2).reshape(x.shape)


class PlainCrossAttentionBlock(nn.Module):
    """X + CrossAttention(X, K): the ``lgte=False`` ablation. Returns (features, None)."""

    def __init__(self, channels: int, embed_dim: int, text_channels: int, heads: int) -> None:
        super().__init__()
        self.cross_attention = TextCrossAttention(channels, embed_dim, heads)

    def forward(self, x: torch.Tensor, embedding: LevelEmbedding, sentence: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x + self.cross_attention(x, embedding.K, embedding.token_mask), None


class LanguageGuidedTargetEnhancement(nn.Module):
    """LGTE at one decoder stage.

    X1 = X + gamma * CrossAttention(X + pos, K);  X2 = X1 * (1 + g(t)) + h(t);
    A = sigmoid((cos(V, u) - b) / tau);  X3 = X2 * (1 + alpha * A).
    Inputs: x (B, C, *s), the level's embedding (V at the same grid as x), sentence t (B, d_t).
    Returns X3 and the relevance logits (B, 1, *s) (A before the sigmoid).
    """

    def __init__(self, channels: int, embed_dim: int, text_channels: int, heads: int, gamma_init: float = 0.1) -> None:
        super().__init__()
        self.cross_attention = TextCrossAttention(channels, embed_dim, heads)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.film = nn.Linear(text_channels, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.tau = nn.Parameter(torch.tensor(0.1))
        self.alpha = nn.Parameter(torch.tensor(1.0))

    def relevance_logits(self, embedding: LevelEmbedding) -> torch.Tensor:
        return (embedding.sentence_cosine() - self.bias) / self.tau.clamp(0.01, 1.0)

    def forward(self, x: torch.Tensor, embedding: LevelEmbedding, sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = x + self.gamma * self.cross_attention(x, embedding.K, embedding.token_mask)
        scale, shift = self.film(sentence).chunk(2, dim=-1)
        view = (...,) + (None,) * (x.ndim - 2)
        x2 = x1 * (1 + scale[view]) + shift[view]
        logits = self.relevance_logits(embedding)
        if logits.shape[2:] != x.shape[2:]:
            logits = F.interpolate(logits, size=x.shape[2:], mode="nearest")
        return x2 * (1 + self.alpha * torch.sigmoid(logits)), logits


class FineTextGate(nn.Module):
    """Report guidance for the fine decoder stages (strides 2 and 1), without attention at full resolution.

    X' = (X * (1 + g(t)) + h(t)) * (1 + alpha * up(sigmoid(A))), where A is the stride-4 LGTE relevance
    logits, upsampled to X's grid after the sigmoid (cheap: one channel at the coarse grid).
    x (B, C, *s), sentence (B, d_t), relevance (B, 1, *s_coarse) -> (B, C, *s).
    """

    def __init__(self, channels: int, text_channels: int) -> None:
        super().__init__()
        self.film = nn.Linear(text_channels, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.alpha = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, sentence: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(sentence).chunk(2, dim=-1)
        view = (...,) + (None,) * (x.ndim - 2)
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        gate = F.interpolate(1 + self.alpha * torch.sigmoid(relevance), size=x.shape[2:], mode=mode, align_corners=False)
        return torch.addcmul(shift[view], x, 1 + scale[view]) * gate
