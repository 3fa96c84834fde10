"""The TMCA network: image encoder, frozen text encoder, TSD projections, alignment and LGTE decoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from tmca.config import LEVELS, TMCAConfig
from tmca.networks.alignment import MultiLevelAlignmentLoss
from tmca.networks.decoder import GUIDED_LEVELS, TMCADecoder
from tmca.networks.encoders import build_encoder
from tmca.networks.text_encoder import FrozenTextEncoder, TextFeatures
from tmca.networks.tsd import LevelEmbedding, LevelProjection

TEXT_ENCODER_PREFIX = "text_encoder."


@dataclass
class TMCAOutput:
    """logits (B, 1, *spatial); relevance: LGTE relevance logits at strides 16, 8, 4;
    embeddings: level -> projections used by the alignment loss (training only)."""

    logits: torch.Tensor
    relevance: list[torch.Tensor] = field(default_factory=list)
    embeddings: dict[int, LevelEmbedding] = field(default_factory=dict)


class TMCANet(nn.Module):
    """Language-guided segmentation network (TMCA_SPEC.md).

    ``forward(image (B, C, *spatial) in [0, 1], text)`` where ``text`` is a list of B reports
    or :class:`TextFeatures`; returns :class:`TMCAOutput`. The frozen text encoder is a
    submodule (so ``.to(device)`` moves it) but is never trained and never saved with the
    trainable weights (see :meth:`trainable_state_dict`).
    """

    def __init__(self, config: TMCAConfig, text_encoder: FrozenTextEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(
            config.encoder, config.spatial_dims, config.in_channels, config.image_size, config.encoder_pretrained, config.encoder_weights
        )
        channels = self.encoder.channels
        text_mode = None
        text_channels = 0
        if config.text:
            self.text_encoder = text_encoder or FrozenTextEncoder(config.text_encoder, config.max_length)
            text_channels = self.text_encoder.hidden_size
            self.projections = nn.ModuleDict(
                {str(level): LevelProjection(config.spatial_dims, channels[level], text_channels, config.embed_dim) for level in LEVELS}
            )
            levels = config.active_align_levels
            self.alignment = MultiLevelAlignmentLoss(
                levels, [config.level_weight(level) for level in levels], config.tau_init, config.beta, config.margin, config.tsd
            )
            text_mode = "lgte" if config.lgte else "cross_attention"
        self.decoder = TMCADecoder(
            config.spatial_dims, config.in_channels, channels, config.decoder_channels, config.embed_dim, text_channels, config.lgte_heads,
            text_mode, config.fine_guidance, config.fine_depth, config.click_inputs,
        )  # fmt: skip

    def encode_text(self, reports: Sequence[str]) -> TextFeatures:
        return self.text_encoder(list(reports))

    def forward(
        self,
        image: torch.Tensor,
        text: Sequence[str] | TextFeatures | None = None,
        with_alignment: bool | None = None,
        clicks: torch.Tensor | None = None,
    ) -> TMCAOutput:
        return self.decode(self.encoder(image), image, text, with_alignment, clicks)

    def decode(
        self,
        features: list[torch.Tensor],
        image: torch.Tensor,
        text: Sequence[str] | TextFeatures | None = None,
        with_alignment: bool | None = None,
        clicks: torch.Tensor | None = None,
    ) -> TMCAOutput:
        """The text- and click-dependent part: reuse one image's encoder ``features`` for several reports
        and refinement rounds. ``clicks``: (B, 3, *spatial) maps for a model with click inputs."""
        if clicks is not None and not self.config.click_inputs:
            raise ValueError("this model was trained without click inputs; it cannot refine with clicks")
        if not self.config.text:
            logits, _ = self.decoder(features, image, clicks=clicks)
            return TMCAOutput(logits)
        if text is None:
            raise ValueError("this model is language-guided: pass the reports")
        if not isinstance(text, TextFeatures):
            text = self.encode_text(text)
        text = text.to(image.device, image.dtype if image.dtype != torch.float32 else None)
        alignment_levels = self.config.active_align_levels if (self.training if with_alignment is None else with_alignment) else ()
        embeddings = {
            level: self.projections[str(level)](
                features[level], text.tokens, text.mask, text.sentence, pixels=self.training or level in alignment_levels
            )
            for level in sorted(set(GUIDED_LEVELS) | set(alignment_levels))
        }
        logits, relevance = self.decoder(features, image, embeddings, text.sentence, clicks)
        return TMCAOutput(logits, relevance, {level: embeddings[level] for level in alignment_levels})

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight except the frozen text encoder's (that one is referenced by name in the config)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(TEXT_ENCODER_PREFIX)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state, strict=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith(TEXT_ENCODER_PREFIX)]
