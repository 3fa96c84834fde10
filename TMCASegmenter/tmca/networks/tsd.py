"""Target-sensitive semantic distance (TSD): image-report distances that look at the target.

At encoder level l the image features are projected to a shared space, V_l (B, D, *spatial),
and the report to a sentence vector u_l (B, D) and token vectors K_l (B, L, D), all unit-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tmca.networks.blocks import MLP, resize_mask

EPS = 1e-6


@dataclass
class LevelEmbedding:
    """One level's projections. V: (B, D, *spatial); u: (B, D); K: (B, L, D); token_mask: (B, L) bool.

    Without the pixel embeddings (inference: only the LGTE relevance reads them) V is None and
    ``cosine`` holds cos(V, u) per pixel, (B, 1, *spatial).
    """

    V: torch.Tensor | None
    u: torch.Tensor
    K: torch.Tensor
    token_mask: torch.Tensor
    cosine: torch.Tensor | None = None

    def sentence_cosine(self) -> torch.Tensor:
        """cos(V, u) per pixel: (B, 1, *spatial)."""
        if self.cosine is not None:
            return self.cosine
        return (self.V * self.u[(...,) + (None,) * (self.V.ndim - 2)]).sum(1, keepdim=True)


class LevelProjection(nn.Module):
    """Project one encoder level and the report into the shared D-dimensional space."""

    def __init__(self, spatial_dims: int, image_channels: int, text_channels: int, embed_dim: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.image = conv(image_channels, embed_dim, kernel_size=1)
        self.sentence = MLP(text_channels, embed_dim)
        self.tokens = MLP(text_channels, embed_dim)

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor, sentence: torch.Tensor, pixels: bool = True
    ) -> LevelEmbedding:
        """features (B, C, *spatial), tokens (B, L, d_t), token_mask (B, L), sentence (B, d_t).

        ``pixels=False``: V is not built, only cos(V, u) (see :meth:`pixel_sentence_cosine`).
        """
        u = F.normalize(self.sentence(sentence), dim=-1)
        K = F.normalize(self.tokens(tokens), dim=-1)
        if not pixels:
            return LevelEmbedding(None, u, K, token_mask, cosine=self.pixel_sentence_cosine(features, u))
        return LevelEmbedding(F.normalize(self.image(features), dim=1), u, K, token_mask)

    def pixel_sentence_cosine(self, features: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """cos(V, u) per pixel without the D-channel map V: features (B, C, *s), unit u (B, D) -> (B, 1, *s).

        With y = W f + b (the 1x1 projection), y.u = (W^T u).f + b.u and |y|^2 = f.(W^T W) f + 2 (W^T b).f + b.b,
        so only C-channel maps are built (D is about ten times C at the finest guided level).
        """
        weight, bias = self.image.weight.flatten(1), self.image.bias  # (D, C), (D,)
        spatial = (None,) * (features.ndim - 2)
        numerator = (features * (u @ weight)[(..., *spatial)]).sum(1, keepdim=True) + (u @ bias)[(..., None, *spatial)]
        conv = F.conv2d if features.ndim == 4 else F.conv3d
        gram = (weight.T @ weight)[(..., *spatial)]  # a 1x1 convolution's weight (C, C, 1, ...)
        squared = (features * conv(features, gram, 2 * weight.T @ bias)).sum(1, keepdim=True) + bias @ bias
        return numerator / squared.clamp_min(0).sqrt().clamp_min(1e-12)  # F.normalize's eps


def masked_mean_embedding(V: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of pixel embeddings, normalised: V (B, D, *s), weights (B, 1, *s) -> (B, D)."""
    total = (V * weights).flatten(2).sum(-1)
    return F.normalize(total / (weights.flatten(2).sum(-1) + EPS), dim=-1)


def token_match_scores(V: torch.Tensor, M: torch.Tensor, K: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Fine-grained term g(i, j): target pixels of image i matched to their best token of report j.

    V (B, D, *s), M (B, 1, *s) soft mask, K (B, L, D), token_mask (B, L) -> (B, B).
    """
    pixels = V.flatten(2)  # (B, D, P)
    weights = M.flatten(2)[:, 0]  # (B, P)
    invalid = ~token_mask  # (B, L)
    rows = []
    for i in range(V.shape[0]):  # one image at a time keeps memory at B * P * L
        similarity = torch.einsum("dp,jld->jpl", pixels[i], K)  # (B_reports, P, L)
        best = similarity.masked_fill(invalid[:, None, :], -2.0).amax(-1)  # (B_reports, P)
        rows.append((best * weights[i]).sum(-1) / (weights[i].sum() + EPS))
    return torch.stack(rows)


@dataclass
class LevelDistance:
    """Distances d(i, j) (B, B) between image i and report j, and the target/background embeddings."""

    distance: torch.Tensor
    target: torch.Tensor | None
    background: torch.Tensor | None


def semantic_distance(embedding: LevelEmbedding, mask: torch.Tensor | None, beta: float, target_sensitive: bool) -> LevelDistance:
    """d(i, j) = 1 - [beta cos(z+_i, u_j) + (1 - beta) g(i, j)] (TSD on), or 1 - cos(GAP(V_i), u_j) (TSD off).

    mask: (B, 1, *full-res spatial) ground truth, area-downsampled to the level's grid.
    """
    V, u = embedding.V, embedding.u
    if not target_sensitive or mask is None:
        pooled = F.normalize(V.flatten(2).mean(-1), dim=-1)
        return LevelDistance(1.0 - pooled @ u.T, None, None)
    M = resize_mask(mask, tuple(V.shape[2:]))
    target = masked_mean_embedding(V, M)
    background = masked_mean_embedding(V, 1.0 - M)
    fine = token_match_scores(V, M, embedding.K, embedding.token_mask)
    return LevelDistance(1.0 - (beta * (target @ u.T) + (1.0 - beta) * fine), target, background)
