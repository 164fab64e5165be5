"""Checkpoint IO: safetensors reading and writing, transformers compatibility, pickle refusal,
HF cache lookup, and key/shape checking when loading into a module."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from model import checkpoint
from model.checkpoint import (
    CheckpointError,
    load_into,
    parse_dtype,
    read_state_dict,
    resolve_checkpoint,
    write_state_dict,
)

transformers = pytest.importorskip("transformers")
# Touch the lazily imported classes now, so their import time is not charged to one test.
HFConfig = transformers.GPTBigCodeConfig
HFCausalLM = transformers.GPTBigCodeForCausalLM


# -- small modules named like GPTBigCode checkpoints ----------------------------------------


class Attn(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(width, width + 4)
        self.c_proj = nn.Linear(width, width)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attn(width)


class Backbone(nn.Module):
    """Names of a bare GPTBigCodeModel: wte, wpe, h.{i}..., ln_f."""

    def __init__(self, vocab: int = 11, width: int = 6, layers: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(8, width)
        self.h = nn.ModuleList(Block(width) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)


class CausalLM(nn.Module):
    """Names of GPTBigCodeForCausalLM, with lm_head tied to transformer.wte."""

    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        self.transformer = Backbone(vocab, width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight


class SequenceClassifier(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 6, labels: int = 3) -> None:
        super().__init__()
        self.transformer = Backbone(vocab, width)
        self.score = nn.Linear(width, labels, bias=False)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def on_meta(cls: type[ModuleT]) -> ModuleT:
    with torch.device("meta"):
        return cls()


def random_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of fresh random values, so a load that does nothing cannot pass."""
    return {
        k: torch.randn_like(v) if v.is_floating_point() else v.clone()
        for k, v in module.state_dict().items()
    }


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


# -- writing and reading --------------------------------------------------------------------


def mixed_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "transformer.wte.weight": torch.randn(40, 16),  # 2,560 bytes
        "transformer.h.0.attn.c_attn.weight": torch.randn(24, 16),  # 1,536 bytes
        "transformer.h.0.attn.c_attn.bias": torch.randn(24).to(torch.bfloat16),
        "transformer.h.0.ln_1.weight": torch.randn(16).to(torch.float16),
        "transformer.ln_f.weight": torch.randn(30, 16),  # 1,920 bytes
        "step": torch.tensor([7, 9], dtype=torch.int64),
    }


def test_single_file_round_trip_keeps_values_and_dtypes(tmp_path: Path) -> None:
    tensors = mixed_tensors()
    written = write_state_dict(tensors, tmp_path)
    assert written == [tmp_path / "model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert_same_tensors(read_state_dict(tmp_path), tensors)


def test_sharded_write_respects_size_limit_and_indexes_every_key(tmp_path: Path) -> None:
    tensors = mixed_tensors()
    written = write_state_dict(tensors, tmp_path, max_shard_size="3KB")
    shards = [p.name for p in written[:-1]]
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads(written[-1].read_text())
    assert written[-1].name == "model.safetensors.index.json"
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == total
    assert sorted(index["weight_map"]) == sorted(tensors)
    for shard in shards:
        in_shard = load_file(tmp_path / shard)
        assert set(in_shard) == {k for k, v in index["weight_map"].items() if v == shard}
        assert sum(t.numel() * t.element_size() for t in in_shard.values()) <= 3000
    assert not (tmp_path / "model.safetensors").exists()
    assert_same_tensors(read_state_dict(tmp_path), tensors)


@pytest.mark.parametrize("max_shard_size", [None, 2000])
def test_written_files_carry_pt_format_metadata(tmp_path: Path, max_shard_size: int | None) -> None:
    written = write_state_dict(mixed_tensors(), tmp_path, max_shard_size=max_shard_size)
    files = [p for p in written if p.suffix == ".safetensors"]
    assert len(files) == (1 if max_shard_size is None else 3)
    for path in files:
        with safe_open(path, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}


def test_shard_size_units_are_decimal_and_binary(tmp_path: Path) -> None:
    tensors = {"a": torch.zeros(250), "b": torch.zeros(250)}  # 1,000 bytes each
    assert len(write_state_dict(tensors, tmp_path / "kb", max_shard_size="1KB")) == 3
    assert len(write_state_dict(tensors, tmp_path / "kib", max_shard_size="2KiB")) == 1
    with pytest.raises(CheckpointError, match="ten MB"):
        write_state_dict(tensors, tmp_path / "bad", max_shard_size="ten MB")


def test_write_separates_tied_and_noncontiguous_tensors(tmp_path: Path) -> None:
    weight = torch.randn(5, 3)
    tensors = {"transformer.wte.weight": weight, "lm_head.weight": weight, "t": weight.t()}
    write_state_dict(tensors, tmp_path)
    back = load_file(tmp_path / "model.safetensors")
    torch.testing.assert_close(back["lm_head.weight"], weight)
    torch.testing.assert_close(back["t"], weight.t())


def test_rewrite_removes_stale_weight_files(tmp_path: Path) -> None:
    write_state_dict(mixed_tensors(), tmp_path, max_shard_size="3KB")
    fresh = {"only": torch.arange(4.0)}
    write_state_dict(fresh, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert_same_tensors(read_state_dict(tmp_path), fresh)


def test_meta_tensor_is_refused_on_write(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="lm_head.weight.*meta"):
        write_state_dict({"lm_head.weight": torch.empty(2, device="meta")}, tmp_path)


# -- transformers compatibility --------------------------------------------------------------


def tiny_hf_model() -> Any:
    torch.manual_seed(0)
    config = HFConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64)
    return HFCausalLM(config).eval()


@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
def test_transformers_loads_what_we_write(tmp_path: Path, max_shard_size: str | None) -> None:
    model = tiny_hf_model()
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    written = write_state_dict(state, tmp_path, max_shard_size=max_shard_size)
    assert (len(written) > 2) == (max_shard_size is not None)
    model.config.save_pretrained(tmp_path)
    loaded = HFCausalLM.from_pretrained(tmp_path)
    assert_same_tensors(loaded.state_dict(), model.state_dict())
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
def test_reads_transformers_save_pretrained(tmp_path: Path, max_shard_size: str | None) -> None:
    model = tiny_hf_model()
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(tmp_path, safe_serialization=True, **kwargs)
    assert (tmp_path / "model.safetensors.index.json").exists() == (max_shard_size is not None)
    want = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert_same_tensors(read_state_dict(tmp_path), want)


# -- refused and broken checkpoints ---------------------------------------------------------


def test_pickle_only_folder_is_refused_with_conversion_hint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"any bytes: never opened")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(tmp_path)
    message = str(info.value)
    assert "pytorch_model.bin" in message
    assert "execute arbitrary code" in message
    assert f"from_pretrained('{tmp_path}')" in message
    assert "safe_serialization=True" in message


def test_folder_without_weights_names_folder_and_expected_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "model.safetensors" in message and "model.safetensors.index.json" in message
    assert "config.json" in message  # what the folder does hold


def test_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    write_state_dict(mixed_tensors(), tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        read_state_dict(tmp_path)
    assert str(path) in str(info.value)


def test_file_that_is_not_safetensors_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="corrupt") as info:
        read_state_dict(tmp_path)
    assert str(path) in str(info.value)


def test_missing_shard_is_named(tmp_path: Path) -> None:
    write_state_dict(mixed_tensors(), tmp_path, max_shard_size="3KB")
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors"):
        read_state_dict(tmp_path)


def test_index_mapping_a_key_to_the_wrong_shard_is_reported(tmp_path: Path) -> None:
    write_state_dict(mixed_tensors(), tmp_path, max_shard_size="3KB")
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["step"] = "model-00001-of-00003.safetensors"  # it lives in shard 3
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00001-of-00003.safetensors.*step"):
        read_state_dict(tmp_path)


# -- loading into a module ------------------------------------------------------------------


def test_load_adds_prefix_to_bare_backbone_checkpoint_and_keeps_tie() -> None:
    state = random_state(Backbone())
    model = on_meta(CausalLM)
    report = load_into(model, state)
    assert_same_tensors(model.transformer.state_dict(), state)
    assert report.tied == ["lm_head.weight"]
    assert model.lm_head.weight is model.transformer.wte.weight


def test_tied_checkpoint_keys_load_once_from_the_embedding() -> None:
    state = random_state(CausalLM())  # distinct random values for wte and lm_head
    model = on_meta(CausalLM)
    load_into(model, state)
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model.lm_head.weight, state["transformer.wte.weight"])


def test_load_strips_prefix_for_causal_lm_checkpoint_into_backbone() -> None:
    state = random_state(CausalLM())
    with pytest.raises(CheckpointError, match="unexpected 1 key.*lm_head.weight"):
        load_into(on_meta(Backbone), state)
    model = on_meta(Backbone)
    report = load_into(model, state, optional_unexpected={"lm_head.weight"})
    assert report.unexpected_optional == ["lm_head.weight"]
    loaded = model.state_dict()["h.1.attn.c_attn.weight"]
    torch.testing.assert_close(loaded, state["transformer.h.1.attn.c_attn.weight"])


def test_shape_mismatch_names_key_and_both_shapes() -> None:
    state = random_state(CausalLM())
    state["transformer.h.0.attn.c_attn.weight"] = torch.zeros(7, 6)
    with pytest.raises(CheckpointError) as info:
        load_into(on_meta(CausalLM), state)
    message = str(info.value)
    assert "transformer.h.0.attn.c_attn.weight" in message
    assert "(7, 6)" in message and "(10, 6)" in message


def test_unexpected_keys_are_named_with_a_count() -> None:
    state = random_state(CausalLM())
    state.update({f"transformer.h.{i}.extra": torch.zeros(1) for i in range(8)})
    with pytest.raises(CheckpointError) as info:
        load_into(on_meta(CausalLM), state)
    message = str(info.value)
    assert "unexpected 8 key(s)" in message
    assert "transformer.h.0.extra" in message and "and 3 more" in message


def test_missing_required_key_is_named() -> None:
    state = random_state(CausalLM())
    del state["transformer.ln_f.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): transformer.ln_f.bias"):
        load_into(on_meta(CausalLM), state)


def test_missing_optional_head_is_materialised_and_initialised() -> None:
    state = random_state(CausalLM())
    model = on_meta(SequenceClassifier)
    calls: list[tuple[nn.Module, str]] = []

    def init(owner: nn.Module, key: str) -> None:
        calls.append((owner, key))
        assert isinstance(owner, nn.Linear)
        nn.init.constant_(owner.weight, 0.5)

    report = load_into(
        model, state, optional={"score.weight"}, optional_unexpected={"lm_head.weight"},
        init_missing=init,
    )
    assert report.missing_optional == ["score.weight"]
    assert report.unexpected_optional == ["lm_head.weight"]
    assert calls == [(model.score, "score.weight")]
    assert model.score.weight.device.type == "cpu"
    assert torch.all(model.score.weight == 0.5)
    assert not any(t.is_meta for t in model.state_dict().values())


def test_old_attention_bias_buffers_are_ignored() -> None:
    state = random_state(CausalLM())
    state["transformer.h.0.attn.bias"] = torch.ones(4, 4, dtype=torch.bool)
    state["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e4)
    report = load_into(on_meta(CausalLM), state)
    assert report.ignored == ["transformer.h.0.attn.bias", "transformer.h.1.attn.masked_bias"]


def test_dtype_casts_floating_tensors_and_keeps_integer_ones() -> None:
    model = CausalLM()
    model.register_buffer("positions", torch.arange(5))
    state = random_state(model)
    state["positions"] = torch.arange(5) * 3
    load_into(model, state, dtype="bf16")
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    positions = model.get_buffer("positions")
    assert positions.dtype == torch.int64
    assert positions.tolist() == [0, 3, 6, 9, 12]
    torch.testing.assert_close(model.transformer.ln_f.weight,
                               state["transformer.ln_f.weight"].to(torch.bfloat16))


def test_load_without_dtype_keeps_module_dtype() -> None:
    state = {k: v.to(torch.float16) for k, v in random_state(Backbone()).items()}
    model = on_meta(Backbone)
    load_into(model, state)
    assert model.wte.weight.dtype == torch.float32
    assert model.wte.weight.device.type == "cpu"


# -- finding checkpoints --------------------------------------------------------------------


def fake_hub_repo(cache: Path, model_id: str, commits: list[str]) -> Path:
    repo = cache / ("models--" + model_id.replace("/", "--"))
    for i, commit in enumerate(commits):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        os.utime(snapshot, (1_000_000 + i, 1_000_000 + i))
    return repo


def test_model_id_resolves_through_refs_main(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    old, new = "a" * 40, "b" * 40
    repo = fake_hub_repo(tmp_path, "bigcode/tiny_starcoder_py", [old, new])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(old + "\n")
    (repo / "refs" / "dev").write_text(new)
    model_id = "bigcode/tiny_starcoder_py"
    assert resolve_checkpoint(model_id) == repo / "snapshots" / old
    assert resolve_checkpoint(model_id, revision="dev") == repo / "snapshots" / new
    assert resolve_checkpoint(model_id, revision=new) == repo / "snapshots" / new
    with pytest.raises(CheckpointError, match="'v2'.*not attempted"):
        resolve_checkpoint(model_id, revision="v2")


def test_model_id_without_refs_takes_newest_snapshot(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    repo = fake_hub_repo(tmp_path / "hub", "org/name", ["1" * 40, "2" * 40])
    assert resolve_checkpoint("org/name") == repo / "snapshots" / ("2" * 40)


def test_uncached_model_id_says_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("bigcode/starcoder")
    message = str(info.value)
    assert str(tmp_path / "models--bigcode--starcoder") in message
    assert "not attempted" in message


def test_folder_resolves_to_itself_and_missing_path_says_no_such_folder(tmp_path: Path) -> None:
    assert resolve_checkpoint(tmp_path) == tmp_path
    assert resolve_checkpoint(str(tmp_path)) == tmp_path
    with pytest.raises(CheckpointError, match="no such folder"):
        resolve_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="no such folder"):
        resolve_checkpoint("./absent/model")


def test_default_model_missing_gives_clear_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="packaged default model is not installed"):
        resolve_checkpoint("default")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_checkpoint("default") == tmp_path


# -- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("float32", torch.float32), ("fp32", torch.float32), ("float", torch.float32),
        ("float16", torch.float16), ("fp16", torch.float16), ("half", torch.float16),
        ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16), ("torch.bfloat16", torch.bfloat16),
        (torch.float16, torch.float16), (None, None),
    ],
)
def test_parse_dtype_accepts_names_and_dtypes(name, dtype) -> None:
    assert parse_dtype(name) is dtype


@pytest.mark.parametrize("bad", ["auto", "int8", "float8"])
def test_parse_dtype_rejects_unknown_names_listing_valid_ones(bad: str) -> None:
    with pytest.raises(CheckpointError, match=f"'{bad}'.*bfloat16"):
        parse_dtype(bad)
