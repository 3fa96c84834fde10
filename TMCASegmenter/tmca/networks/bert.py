"""A BERT encoder in plain torch, and its fast tokenizer through ``tokenizers``, for frozen text encoding.

``import transformers`` plus its BERT model takes seconds (it loads torch's compiler and distributed
packages); the frozen text encoder only needs BERT's forward pass. :func:`load_bert_folder` reads a
local Hugging Face BERT folder (``config.json`` with ``model_type: bert``, ``model.safetensors``,
``tokenizer.json``) into :class:`BertEncoder` and a ``tokenizers.Tokenizer``; it returns None for any
other folder, which then goes through ``transformers`` as before. ``Testing/Python/test_bert.py``
checks the tokens and hidden states against ``transformers.BertModel`` and its tokenizer.

Errors are ValueError (library code).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int

    @classmethod
    def supported(cls, values: dict) -> "BertConfig | None":
        """The config of a plain BERT (absolute positions, exact GELU, no decoder); None for anything else."""
        if values.get("model_type") != "bert" or values.get("is_decoder") or values.get("add_cross_attention"):
            return None
        if values.get("position_embedding_type", "absolute") != "absolute" or values.get("hidden_act", "gelu") != "gelu":
            return None
        try:
            return cls(
                int(values["vocab_size"]), int(values["hidden_size"]), int(values["num_hidden_layers"]), int(values["num_attention_heads"]),
                int(values["intermediate_size"]), int(values.get("max_position_embeddings", 512)), int(values.get("type_vocab_size", 2)),
                float(values.get("layer_norm_eps", 1e-12)), int(values.get("pad_token_id") or 0),
            )
        except (KeyError, TypeError, ValueError):
            return None


class _Embeddings(nn.Module):
    def __init__(self, config: BertConfig, initialise: bool = True) -> None:
        super().__init__()
        # initialise=False: tables left uninitialised, for weights loaded right after (an embedding's
        # random init on the meta device would import torch's compiler)
        table = (lambda *size: None) if initialise else (lambda *size: torch.empty(*size))  # noqa: E731
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden, padding_idx=config.pad_token_id, _weight=table(config.vocab_size, hidden))
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden, _weight=table(config.max_position_embeddings, hidden))
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden, _weight=table(config.type_vocab_size, hidden))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(positions)[None]
        return self.LayerNorm(embedded)


class _Projection(nn.Module):
    """dense, then LayerNorm of (output + residual): BERT's ``attention.output`` and ``output``."""

    def __init__(self, in_features: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden size {config.hidden_size} is not a multiple of {config.num_attention_heads} heads")
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        split = lambda t: t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)  # noqa: E731
        context = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=mask)
        return context.transpose(1, 2).reshape(batch, length, hidden)


class _Attention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(config)
        self.output = _Projection(config.hidden_size, config.hidden_size, config.layer_norm_eps)


class _Intermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _Projection(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attended = self.attention.output(self.attention.self(x, mask), x)
        return self.output(self.intermediate(attended), attended)


class _Encoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor


class BertEncoder(nn.Module):
    """BERT's embeddings and encoder (no pooler), with the weight names of ``transformers.BertModel``.

    ``initialise=False`` leaves the embedding tables uninitialised (for weights loaded right after).

    ``forward(input_ids, attention_mask, token_type_ids=None)`` returns an object with
    ``last_hidden_state`` (B, L, hidden), like ``BertModel``'s output.
    """

    def __init__(self, config: BertConfig, initialise: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config, initialise)
        self.encoder = _Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> BertOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): every query sees the valid keys
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return BertOutput(x)


class BertTokenizer:
    """``tokenizers.Tokenizer`` from a folder's ``tokenizer.json``, called like a transformers fast tokenizer.

    ``tokenizer(texts, padding=True, truncation=True, max_length=N, return_tensors="pt")`` gives
    ``input_ids``, ``token_type_ids`` and ``attention_mask`` tensors; without ``return_tensors`` lists.
    """

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        padding = json.loads(path.read_text(encoding="utf-8")).get("padding") or {}
        self.pad_token_id = int(padding.get("pad_id", 0))
        self.pad_token = str(padding.get("pad_token", "[PAD]"))

    def __call__(self, texts: list[str], padding: bool = False, truncation: bool = False, max_length: int | None = None, return_tensors: str | None = None):
        tokenizer = self._tokenizer
        if truncation and max_length:
            tokenizer.enable_truncation(max_length)
        else:
            tokenizer.no_truncation()
        if padding:
            tokenizer.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
        else:
            tokenizer.no_padding()
        try:
            encodings = tokenizer.encode_batch(list(texts))
        finally:
            tokenizer.no_padding()
            tokenizer.no_truncation()
        result = {
            "input_ids": [e.ids for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if return_tensors == "pt":
            return {key: torch.tensor(value, dtype=torch.long) for key, value in result.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, not {return_tensors!r}")
        return result


def load_bert_folder(folder: Path) -> tuple[BertTokenizer, BertEncoder] | None:
    """Tokenizer and encoder for a plain BERT folder; None when the folder needs ``transformers`` (another
    architecture, no ``tokenizer.json`` or ``model.safetensors``, or weights under other names)."""
    folder = Path(folder)
    weights, tokenizer_file = folder / "model.safetensors", folder / "tokenizer.json"
    if not (weights.is_file() and tokenizer_file.is_file() and (folder / "config.json").is_file()):
        return None
    try:
        config = BertConfig.supported(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError):
        return None
    if config is None:
        return None
    from safetensors.torch import load_file

    state = load_file(str(weights))
    if not any(key.startswith("embeddings.") for key in state) and any(key.startswith("bert.embeddings.") for key in state):
        state = {key[len("bert."):]: value for key, value in state.items() if key.startswith("bert.")}
    with torch.device("meta"):  # no random initialisation: every weight comes from the file
        model = BertEncoder(config, initialise=False)
    expected = set(model.state_dict())
    missing = expected - set(state)
    if missing:
        log.debug("BERT folder %s lacks %d weights (e.g. %s); using transformers", folder, len(missing), sorted(missing)[:3])
        return None
    model.load_state_dict({key: state[key].float() for key in expected}, strict=True, assign=True)
    return BertTokenizer(tokenizer_file), model.eval()
