"""tmca.networks.bert (plain-torch BERT and tokenizers' tokenizer) against transformers' BertModel and AutoTokenizer."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tmca.networks.bert import BertConfig, load_bert_folder  # noqa: E402
from tmca.networks.text_encoder import resolve_text_encoder_path  # noqa: E402

REPORTS = [
    "Small nodule in the upper left lung.",
    "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.",
    "Läsion im rechten Lappen; 3,5 cm × 2 cm — ÉNORME",
    "mass " * 80,
    "x",
]


@pytest.fixture(scope="module")
def minilm():
    path = resolve_text_encoder_path("minilm")
    ours = load_bert_folder(path)
    assert ours is not None, "the default MiniLM folder is a plain BERT and must load without transformers"
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    reference_model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    return ours, reference_tokenizer, reference_model


@pytest.mark.parametrize("max_length", [64, 8])
def test_tokens_match_transformers(minilm, max_length):
    (tokenizer, _), reference, _ = minilm
    ours = tokenizer(REPORTS, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    theirs = reference(REPORTS, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[key], theirs[key]), key
    assert [len(ids) for ids in tokenizer(REPORTS, truncation=False)["input_ids"]] == [
        len(ids) for ids in reference(REPORTS, truncation=False)["input_ids"]
    ]


def test_hidden_states_match_transformers(minilm):
    (tokenizer, model), reference_tokenizer, reference_model = minilm
    batch = reference_tokenizer(REPORTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch).last_hidden_state
        theirs = reference_model(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    assert ours.shape == theirs.shape
    assert (ours - theirs)[valid].abs().max() < 1e-5


def test_other_architectures_fall_back_to_transformers(tmp_path):
    for config in ({"model_type": "roberta"}, {"model_type": "bert", "position_embedding_type": "relative_key"}, {"model_type": "bert"}):
        (tmp_path / "config.json").write_text(json.dumps(config))
        (tmp_path / "model.safetensors").write_bytes(b"")
        (tmp_path / "tokenizer.json").write_text("{}")
        assert load_bert_folder(tmp_path) is None
    assert BertConfig.supported({"model_type": "bert", "hidden_size": 8}) is None  # incomplete config


def test_folder_without_tokenizer_json_falls_back(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert load_bert_folder(tmp_path) is None
