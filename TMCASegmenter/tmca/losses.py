"""The TMCA training loss: Dice + BCE + lambda_align * L_align + lambda_ds * L_ds."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from tmca.findings import normalize_report
from tmca.networks.blocks import resize_mask
from tmca.networks.tmca_net import TMCANet, TMCAOutput


class TMCALoss(torch.nn.Module):
    """Segmentation loss plus the alignment and deep-supervision terms of TMCA_SPEC.md.

    ``forward(model, output, mask (B, 1, *spatial) in {0, 1}, reports)`` -> (total, stats),
    where stats holds every term as a float for logging.
    """

    def __init__(self, lambda_align: float = 0.1, lambda_ds: float = 0.1) -> None:
        super().__init__()
        self.lambda_align = lambda_align
        self.lambda_ds = lambda_ds
        self.dice = DiceLoss(sigmoid=True, batch=False, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, model: TMCANet, output: TMCAOutput, mask: torch.Tensor, reports: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = output.logits.float()
        dice = self.dice(logits, mask)
        bce = F.binary_cross_entropy_with_logits(logits, mask)
        total = dice + bce
        stats = {"dice_loss": float(dice.detach()), "bce": float(bce.detach())}
        if output.embeddings:
            align, align_stats = model.alignment(output.embeddings, mask, [normalize_report(r) for r in reports])
            total = total + self.lambda_align * align
            stats["align"] = float(align.detach())
            stats.update(align_stats)
        if output.relevance:
            ds = torch.stack(
                [F.binary_cross_entropy_with_logits(r.float(), resize_mask(mask, tuple(r.shape[2:]))) for r in output.relevance]
            ).mean()
            total = total + self.lambda_ds * ds
            stats["deep_supervision"] = float(ds.detach())
        stats["loss"] = float(total.detach())
        return total, stats
