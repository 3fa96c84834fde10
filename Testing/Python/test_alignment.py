"""Target-sensitive distance and multi-level contrastive alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tmca.networks.alignment import MultiLevelAlignmentLoss, positive_pairs, soft_info_nce
from tmca.networks.tsd import LevelEmbedding, semantic_distance


def _aligned_batch(batch: int = 6, dim: int = 16, size: int = 8, seed: int = 0):
    """Images whose target pixels carry a per-sample concept vector; reports that name that concept."""
    generator = torch.Generator().manual_seed(seed)
    concepts = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    V = F.normalize(torch.randn(batch, dim, size, size, generator=generator), dim=1)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 2:5, 2:5] = 1.0
    V = torch.where(mask.bool(), concepts[:, :, None, None].expand_as(V), V)
    tokens = F.normalize(torch.randn(batch, 5, dim, generator=generator), dim=-1)
    tokens[:, 2] = concepts
    return V, concepts, tokens, mask


def _embeddings(V, u, K):
    return {4: LevelEmbedding(V, u, K, torch.ones(K.shape[:2], dtype=torch.bool))}


def test_contrastive_loss_is_lower_for_matched_pairs_than_shuffled():
    V, concepts, tokens, mask = _aligned_batch()
    loss_fn = MultiLevelAlignmentLoss([4], [1.0], tau_init=0.07, beta=0.5, margin=0.2, target_sensitive=True)
    keys = [f"report {i}" for i in range(6)]
    matched, _ = loss_fn(_embeddings(V, concepts, tokens), mask, keys)
    permutation = torch.tensor([1, 2, 3, 4, 5, 0])
    shuffled, _ = loss_fn(_embeddings(V, concepts[permutation], tokens[permutation]), mask, keys)
    assert matched < shuffled - 1.0


def test_identical_reports_are_positives_not_negatives():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    closer = logits.clone()
    closer[0, 1] = 2.0  # image 0 now as similar to report 1 as to its own report
    same = positive_pairs(["two infected areas", "two infected areas", "one infected area"])
    distinct = positive_pairs(["a", "b", "c"])
    assert same[0, 1] == 1 and distinct[0, 1] == 0
    assert soft_info_nce(closer, same) < soft_info_nce(logits, same)  # rewarded, not punished
    assert soft_info_nce(closer, distinct) > soft_info_nce(logits, distinct)


def test_target_embedding_depends_only_on_pixels_inside_the_mask():
    V, concepts, tokens, mask = _aligned_batch()
    embedding = LevelEmbedding(V, concepts, tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))
    reference = semantic_distance(embedding, mask, beta=0.5, target_sensitive=True)
    noise = F.normalize(torch.randn_like(V), dim=1)
    changed_V = torch.where(mask.bool(), V, noise)
    changed = semantic_distance(LevelEmbedding(changed_V, concepts, tokens, embedding.token_mask), mask, beta=0.5, target_sensitive=True)
    assert torch.allclose(reference.target, changed.target, atol=1e-6)
    assert torch.allclose(reference.distance, changed.distance, atol=1e-6)
    assert not torch.allclose(reference.background, changed.background)
    inside = V.clone()
    inside[:, :, 3, 3] = noise[:, :, 3, 3]
    moved = semantic_distance(LevelEmbedding(inside, concepts, tokens, embedding.token_mask), mask, beta=0.5, target_sensitive=True)
    assert not torch.allclose(reference.target, moved.target)


def test_empty_masks_are_left_out_of_the_contrast():
    V, concepts, tokens, mask = _aligned_batch()
    mask[0] = 0.0
    mask[3] = 0.0
    loss_fn = MultiLevelAlignmentLoss([4], [1.0], 0.07, 0.5, 0.2, True)
    keys = [f"r{i}" for i in range(6)]
    loss, stats = loss_fn(_embeddings(V, concepts, tokens), mask, keys)
    assert stats["align_excluded_empty"] == 2.0
    assert torch.isfinite(loss)
    V2 = V.clone()
    V2[0] = F.normalize(torch.randn_like(V2[0]), dim=0)  # an excluded sample cannot change the loss
    again, _ = loss_fn(_embeddings(V2, concepts, tokens), mask, keys)
    assert torch.allclose(loss, again)


def test_padding_tokens_are_ignored_by_the_fine_grained_term():
    V, concepts, tokens, mask = _aligned_batch()
    token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
    token_mask[:, 4] = False
    noisy = tokens.clone()
    noisy[:, 4] = concepts.roll(1, dims=0)  # a padding token that would match another image
    a = semantic_distance(LevelEmbedding(V, concepts, tokens, token_mask), mask, 0.5, True)
    b = semantic_distance(LevelEmbedding(V, concepts, noisy, token_mask), mask, 0.5, True)
    assert torch.allclose(a.distance, b.distance)
