"""Multi-level contrastive alignment: symmetric InfoNCE on TSD distances plus a target-vs-background margin."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tmca.networks.tsd import LevelEmbedding, semantic_distance

log = logging.getLogger(__name__)


def positive_pairs(report_keys: Sequence[str]) -> torch.Tensor:
    """(B, B) float: 1 where two reports have the same normalised text (templated reports are positives)."""
    index = {key: n for n, key in enumerate(dict.fromkeys(report_keys))}
    ids = torch.tensor([index[key] for key in report_keys])
    return (ids[:, None] == ids[None, :]).float()


def soft_info_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets (rows of ``positives`` normalised). logits, positives: (N, N)."""
    targets = positives / positives.sum(1, keepdim=True)
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    targets_t = positives.T / positives.T.sum(1, keepdim=True)
    text_to_image = -(targets_t * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (image_to_text + text_to_image)


class MultiLevelAlignmentLoss(nn.Module):
    """L_align = sum_l w_l (L_nce_l + L_tb_l) / sum_l w_l over the active levels.

    Samples with an empty mask take no part (TSD on); how many were left out is logged
    and returned in the stats.
    """

    def __init__(self, levels: Sequence[int], weights: Sequence[float], tau_init: float, beta: float, margin: float, target_sensitive: bool) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.weights = tuple(weights)
        self.beta = beta
        self.margin = margin
        self.target_sensitive = target_sensitive
        self.tau = nn.Parameter(torch.full((len(self.levels),), float(tau_init)))

    def temperature(self, position: int) -> torch.Tensor:
        return self.tau[position].clamp(0.01, 1.0)

    def forward(self, embeddings: dict[int, LevelEmbedding], mask: torch.Tensor | None, report_keys: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """embeddings: level -> LevelEmbedding over the batch; mask (B, 1, *spatial); report_keys: normalised texts."""
        any_embedding = next(iter(embeddings.values()))
        device = any_embedding.V.device
        if self.target_sensitive and mask is not None:
            keep = mask.flatten(1).sum(1) > 0
        else:
            keep = torch.ones(any_embedding.V.shape[0], dtype=torch.bool, device=device)
        stats = {"align_excluded_empty": float((~keep).sum())}
        if int(keep.sum()) < 1:
            log.debug("alignment skipped: no sample with a target in this batch")
            return any_embedding.V.sum() * 0.0, stats
        kept_keys = [key for key, k in zip(report_keys, keep.tolist()) if k]
        positives = positive_pairs(kept_keys).to(device)
        total = any_embedding.V.new_zeros(())
        for position, level in enumerate(self.levels):
            embedding = _select(embeddings[level], keep)
            level_mask = mask[keep] if mask is not None else None
            result = semantic_distance(embedding, level_mask, self.beta, self.target_sensitive)
            logits = -result.distance / self.temperature(position)
            nce = soft_info_nce(logits, positives)
            term = nce
            if result.target is not None:
                u = embedding.u
                margin_loss = F.relu(self.margin - (result.target * u).sum(-1) + (result.background * u).sum(-1)).mean()
                term = term + margin_loss
                stats[f"tb_l{level}"] = float(margin_loss.detach())
            stats[f"nce_l{level}"] = float(nce.detach())
            total = total + self.weights[position] * term
        return total / sum(self.weights), stats


def _select(embedding: LevelEmbedding, keep: torch.Tensor) -> LevelEmbedding:
    return LevelEmbedding(embedding.V[keep], embedding.u[keep], embedding.K[keep], embedding.token_mask[keep])
