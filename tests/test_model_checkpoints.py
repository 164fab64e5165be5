"""Checkpoints move both ways between this package and transformers 4.56.2, and bad folders
fail with messages that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from model import (
    GPTBigCodeConfig,
    GPTBigCodeForCausalLM,
    GPTBigCodeForSequenceClassification,
    GPTBigCodeForTokenClassification,
    GPTBigCodeModel,
)
from model.checkpoint import CheckpointError

SMALL = dict(
    vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
    embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3, pad_token_id=0,
)
HF_CLASSES = {
    GPTBigCodeForCausalLM: transformers.GPTBigCodeForCausalLM,
    GPTBigCodeForSequenceClassification: transformers.GPTBigCodeForSequenceClassification,
    GPTBigCodeForTokenClassification: transformers.GPTBigCodeForTokenClassification,
}


def hf_model(cls: type, multi_query: bool = True) -> torch.nn.Module:
    torch.manual_seed(1)
    config = transformers.GPTBigCodeConfig(**SMALL, multi_query=multi_query, num_labels=3)
    return cls(config).eval()


def ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randint(1, SMALL["vocab_size"], (2, 11), generator=generator)


@pytest.mark.parametrize("ours_cls", list(HF_CLASSES))
@pytest.mark.parametrize("shard", [None, "20KB"])
def test_transformers_folder_loads_with_identical_outputs(tmp_path: Path, ours_cls, shard):
    hf = hf_model(HF_CLASSES[ours_cls])
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size=shard or "5GB")
    if shard:
        assert (tmp_path / "model.safetensors.index.json").exists()
    ours = ours_cls.from_pretrained(tmp_path)
    assert not ours.training
    with torch.no_grad():
        torch.testing.assert_close(ours(ids()).logits, hf(ids()).logits)


@pytest.mark.parametrize("ours_cls", list(HF_CLASSES))
@pytest.mark.parametrize("multi_query", [True, False])
def test_our_folder_loads_into_transformers_with_identical_outputs(
    tmp_path: Path, ours_cls, multi_query
):
    torch.manual_seed(3)
    ours = ours_cls(GPTBigCodeConfig(**SMALL, multi_query=multi_query, num_labels=3)).eval()
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt_bigcode"
    assert config["architectures"] == [ours_cls.__name__]
    hf = HF_CLASSES[ours_cls].from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids()).logits, ours(ids()).logits)


def test_sharded_save_round_trips(tmp_path: Path):
    torch.manual_seed(4)
    ours = GPTBigCodeForCausalLM(GPTBigCodeConfig(**SMALL)).eval()
    ours.save_pretrained(tmp_path, max_shard_size="30KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    again = GPTBigCodeForCausalLM.from_pretrained(tmp_path)
    hf = transformers.GPTBigCodeForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids()).logits, ours(ids()).logits)
        torch.testing.assert_close(hf(ids()).logits, ours(ids()).logits)


def test_lm_head_is_tied_whether_or_not_the_file_has_it(tmp_path: Path):
    hf = hf_model(transformers.GPTBigCodeForCausalLM)
    hf.save_pretrained(tmp_path)
    ours = GPTBigCodeForCausalLM.from_pretrained(tmp_path)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert ours.lm_head.weight.device.type == "cpu"


def test_untied_lm_head_is_loaded_from_the_file(tmp_path: Path):
    torch.manual_seed(5)
    ours = GPTBigCodeForCausalLM(GPTBigCodeConfig(**SMALL, tie_word_embeddings=False)).eval()
    assert ours.lm_head.weight is not ours.transformer.wte.weight
    ours.save_pretrained(tmp_path)
    again = GPTBigCodeForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(again.lm_head.weight, ours.lm_head.weight)
    assert again.lm_head.weight is not again.transformer.wte.weight


def test_causal_lm_checkpoint_feeds_the_backbone_and_a_new_classification_head(tmp_path: Path):
    hf = hf_model(transformers.GPTBigCodeForCausalLM)
    hf.save_pretrained(tmp_path)
    backbone = GPTBigCodeModel.from_pretrained(tmp_path)
    head = GPTBigCodeForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    assert head.score.weight.shape == (5, SMALL["n_embd"])
    assert torch.isfinite(head.score.weight).all() and head.score.weight.abs().sum() > 0
    with torch.no_grad():
        expected = hf.transformer(ids()).last_hidden_state
        torch.testing.assert_close(backbone(ids()).last_hidden_state, expected)
        torch.testing.assert_close(head.transformer(ids()).last_hidden_state, expected)


def test_dtype_and_attn_implementation_are_applied(tmp_path: Path):
    hf_model(transformers.GPTBigCodeForCausalLM).save_pretrained(tmp_path)
    ours = GPTBigCodeForCausalLM.from_pretrained(
        tmp_path, dtype="bf16", attn_implementation="eager"
    )
    assert ours.dtype == torch.bfloat16
    assert ours.transformer.attn_implementation == "eager"
    assert ours.lm_head.weight is ours.transformer.wte.weight
    with pytest.raises(CheckpointError, match="float32"):
        GPTBigCodeForCausalLM.from_pretrained(tmp_path, dtype="float33")


def test_model_id_resolves_in_the_local_hub_cache(tmp_path: Path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--bigcode--tiny" / "snapshots" / "abc123"
    hf = hf_model(transformers.GPTBigCodeForCausalLM)
    hf.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    ours = GPTBigCodeForCausalLM.from_pretrained("bigcode/tiny")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids()).logits, hf(ids()).logits)
    with pytest.raises(CheckpointError, match="bigcode/missing"):
        GPTBigCodeForCausalLM.from_pretrained("bigcode/missing")


def test_missing_folder_is_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match="nowhere"):
        GPTBigCodeForCausalLM.from_pretrained(tmp_path / "nowhere")


def test_truncated_weights_name_the_file(tmp_path: Path):
    hf_model(transformers.GPTBigCodeForCausalLM).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GPTBigCodeForCausalLM.from_pretrained(tmp_path)


def test_config_that_disagrees_with_the_weights_names_the_key(tmp_path: Path):
    hf_model(transformers.GPTBigCodeForCausalLM).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embd"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    expected = r"c_attn\.weight: checkpoint shape \(48, 32\), model expects \(96, 64\)"
    with pytest.raises(CheckpointError, match=str(tmp_path) + ".*" + expected):
        GPTBigCodeForCausalLM.from_pretrained(tmp_path)
    config["n_embd"], config["n_layer"] = 32, 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"transformer\.h\.1\."):
        GPTBigCodeForCausalLM.from_pretrained(tmp_path)


def test_pickle_checkpoint_is_refused_with_the_conversion_command(tmp_path: Path):
    GPTBigCodeConfig(**SMALL).save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="(?s)pickle.*save_pretrained"):
        GPTBigCodeForCausalLM.from_pretrained(tmp_path)


def test_corrupt_config_is_named(tmp_path: Path):
    hf_model(transformers.GPTBigCodeForCausalLM).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        GPTBigCodeForCausalLM.from_pretrained(tmp_path)
