"""Behaviour of the model package beyond numerical parity: clear errors for bad input, the
config and its config.json format, KV buffer sizes, and equivalent input paths."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.testing import assert_close

import model
from model import ConfigError, GPTBigCodeConfig, KVCache
from model import modeling as modeling_module

pytestmark = pytest.mark.usefixtures("single_thread")

MakeConfig = Callable[..., GPTBigCodeConfig]  # the conftest fixtures' types
MakePair = Callable[..., tuple[Any, Any]]

# Fields both configs define, compared when one reads the other's dict.
SHARED_FIELDS = (
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
    "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon",
    "initializer_range", "scale_attn_weights", "use_cache", "bos_token_id", "eos_token_id",
    "pad_token_id", "attention_softmax_in_fp32", "scale_attention_softmax_in_fp32",
    "multi_query", "tie_word_embeddings", "num_labels", "id2label", "label2id", "problem_type",
)


@pytest.fixture
def lm(make_config: MakeConfig) -> model.GPTBigCodeForCausalLM:
    return model.GPTBigCodeForCausalLM(make_config()).eval()


def ids_of(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


# -- errors for bad input ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [97, 1000, -1])
def test_out_of_range_token_id_is_named_with_vocab_size(
    lm: model.GPTBigCodeForCausalLM, bad: int
) -> None:
    with pytest.raises(ValueError, match=rf"token id {bad} .*\[0, 97\).*vocab_size"):
        lm(ids_of([5, 6, bad, 7]))


def test_out_of_range_token_type_id_is_named(lm: model.GPTBigCodeForCausalLM) -> None:
    with pytest.raises(ValueError, match=r"token_type_ids holds token id 120 .*vocab_size"):
        lm(ids_of([5, 6]), token_type_ids=ids_of([0, 120]))


def test_input_longer_than_n_positions_is_refused(lm: model.GPTBigCodeForCausalLM) -> None:
    with pytest.raises(ValueError, match=r"65 tokens .*n_positions \(64\)"):
        lm(torch.ones(1, 65, dtype=torch.long))


def test_cached_plus_new_tokens_beyond_n_positions_is_refused(
    lm: model.GPTBigCodeForCausalLM,
) -> None:
    cache = KVCache(lm.config, batch_size=1, capacity=8)
    with torch.no_grad():
        lm(torch.ones(1, 60, dtype=torch.long), past_key_values=cache, use_cache=True)
    with pytest.raises(ValueError, match=r"65 tokens \(60 cached \+ 5 new\).*n_positions \(64\)"):
        lm(torch.ones(1, 5, dtype=torch.long), past_key_values=cache, use_cache=True)
    assert cache.length == 60  # the refused call left the cache as it was


def test_position_ids_beyond_n_positions_are_refused_clearly(
    lm: model.GPTBigCodeForCausalLM,
) -> None:
    with pytest.raises(ValueError, match=r"position.*64.*n_positions"):
        lm(ids_of([5, 6]), position_ids=ids_of([0, 64]))


def test_generate_refuses_prompt_plus_budget_beyond_n_positions(
    lm: model.GPTBigCodeForCausalLM,
) -> None:
    with pytest.raises(ValueError, match=r"60 tokens \+ max_new_tokens=5 .*n_positions \(64\)"):
        lm.generate(torch.ones(1, 60, dtype=torch.long), max_new_tokens=5)


@pytest.mark.parametrize("shape", [(2, 5), (1, 4), (2, 4, 1), (4,)])
def test_attention_mask_of_wrong_shape_is_refused(
    lm: model.GPTBigCodeForCausalLM, shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match=rf"attention_mask must be \(batch=2, past\+new=4\), "
                                         rf"got {re_shape(shape)}"):
        lm(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(shape))


def re_shape(shape: tuple[int, ...]) -> str:
    return str(shape).replace("(", r"\(").replace(")", r"\)")


def test_attention_mask_with_cache_must_cover_cached_tokens(
    lm: model.GPTBigCodeForCausalLM,
) -> None:
    with torch.no_grad():
        out = lm(torch.ones(1, 4, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match=r"past\+new=5\), got \(1, 1\)"):
        lm(ids_of([3]), past_key_values=out.past_key_values, attention_mask=torch.ones(1, 1))


def test_both_or_neither_input_ids_and_inputs_embeds_is_refused(
    lm: model.GPTBigCodeForCausalLM,
) -> None:
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        lm()
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        lm(ids_of([1, 2]), inputs_embeds=torch.zeros(1, 2, 32))


def test_inputs_embeds_of_wrong_width_is_refused(lm: model.GPTBigCodeForCausalLM) -> None:
    with pytest.raises(ValueError, match=r"inputs_embeds must be \(batch, length, 32\)"):
        lm(inputs_embeds=torch.zeros(1, 3, 31))


def test_cache_of_another_batch_size_is_refused(lm: model.GPTBigCodeForCausalLM) -> None:
    cache = KVCache(lm.config, batch_size=2, capacity=8)
    with pytest.raises(ValueError, match=r"past_key_values holds 2 rows, input has 1"):
        lm(ids_of([1, 2]), past_key_values=cache)


@pytest.mark.parametrize("cls_name", ["GPTBigCodeModel", "GPTBigCodeForCausalLM"])
def test_unknown_attn_implementation_is_named(make_config: MakeConfig, cls_name: str) -> None:
    with pytest.raises(ValueError, match=r"attn_implementation 'flash' is not one of "
                                         r"\['eager', 'sdpa', 'flash_attention_2'\]"):
        getattr(model, cls_name)(make_config(), attn_implementation="flash")


def test_flash_attention_without_flash_attn_says_what_to_install(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modeling_module, "flash_attn_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"needs the flash-attn package"):
        model.GPTBigCodeForCausalLM(make_config(), attn_implementation="flash_attention_2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_attention_on_cpu_tensors_is_refused_with_the_alternative(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(modeling_module, "flash_attn_available", lambda: True)
    lm = model.GPTBigCodeForCausalLM(make_config(), attn_implementation="flash_attention_2")
    lm.to(dtype).eval()
    with pytest.raises(RuntimeError, match=r"flash_attention_2 runs on CUDA .* got cpu .*'sdpa'"):
        lm(ids_of([1, 2, 3]))


def test_automatic_backend_never_picks_flash_attention_for_cpu_tensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(modeling_module, "flash_attn_available", lambda: True)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert modeling_module.resolve_backend(None, torch.zeros(1, dtype=dtype)) == "sdpa"


@pytest.mark.parametrize("shape", [(3,), (4, 2), (2, 4, 1), (3, 4)])
def test_head_mask_of_wrong_shape_is_refused(
    lm: model.GPTBigCodeForCausalLM, shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match=rf"head_mask must be \(4,\) or \(2, 4\), "
                                         rf"got {re_shape(shape)}"):
        lm(ids_of([1, 2]), head_mask=torch.ones(shape))


def test_labels_of_wrong_shape_are_refused(lm: model.GPTBigCodeForCausalLM) -> None:
    with pytest.raises(ValueError, match=r"labels must have the shape of input_ids \(1, 3\)"):
        lm(ids_of([1, 2, 3]), labels=ids_of([1, 2]))


# -- config --------------------------------------------------------------------------------


def test_config_defaults_are_the_documented_ones() -> None:
    cfg = GPTBigCodeConfig()
    assert (cfg.vocab_size, cfg.n_positions, cfg.n_embd, cfg.n_layer, cfg.n_head) == (
        50257, 1024, 768, 12, 12,
    )
    assert cfg.n_inner is None and cfg.inner_dim == 3072
    assert cfg.activation_function == "gelu_pytorch_tanh"
    assert (cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop) == (0.1, 0.1, 0.1)
    assert cfg.layer_norm_epsilon == 1e-5 and cfg.initializer_range == 0.02
    assert cfg.scale_attn_weights and cfg.use_cache and cfg.multi_query
    assert cfg.attention_softmax_in_fp32 and cfg.scale_attention_softmax_in_fp32
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (50256, 50256, None)
    assert cfg.num_labels == 2 and cfg.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert cfg.head_dim == 64 and cfg.kv_heads == 1


def test_config_defaults_equal_transformers_defaults(transformers_module: Any) -> None:
    ours, theirs = GPTBigCodeConfig(), transformers_module.GPTBigCodeConfig()
    for name in SHARED_FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name


def test_n_inner_sets_the_mlp_width(make_config: MakeConfig) -> None:
    cfg = make_config(n_inner=40)
    assert cfg.inner_dim == 40
    widths = {
        name: model.GPTBigCodeModel(config).get_submodule("h.0.mlp.c_fc").weight.shape
        for name, config in (("set", cfg), ("default", make_config()))
    }
    assert widths == {"set": (40, 32), "default": (128, 32)}


def test_aliases_read_and_write_the_gpt2_fields(make_config: MakeConfig) -> None:
    cfg = make_config()
    assert (cfg.hidden_size, cfg.max_position_embeddings) == (32, 64)
    assert (cfg.num_attention_heads, cfg.num_hidden_layers) == (4, 2)
    cfg.hidden_size, cfg.max_position_embeddings = 48, 128
    cfg.num_attention_heads, cfg.num_hidden_layers = 6, 3
    assert (cfg.n_embd, cfg.n_positions, cfg.n_head, cfg.n_layer) == (48, 128, 6, 3)


def test_aliases_are_accepted_as_config_json_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "model_type": "gpt_bigcode", "hidden_size": 48, "max_position_embeddings": 128,
        "num_attention_heads": 6, "num_hidden_layers": 3, "vocab_size": 100,
    }))
    cfg = GPTBigCodeConfig.from_json_file(path)
    assert (cfg.n_embd, cfg.n_positions, cfg.n_head, cfg.n_layer) == (48, 128, 6, 3)
    assert not set(cfg.extra) & {"hidden_size", "num_attention_heads"}


def test_aliases_are_accepted_as_constructor_arguments(transformers_module: Any) -> None:
    # transformers' attribute_map makes GPTBigCodeConfig(hidden_size=...) work.
    kwargs: dict[str, Any] = dict(
        hidden_size=48, max_position_embeddings=128, num_attention_heads=6, num_hidden_layers=3
    )
    theirs = transformers_module.GPTBigCodeConfig(**kwargs)
    ours = GPTBigCodeConfig(**kwargs)
    for name in ("n_embd", "n_positions", "n_head", "n_layer"):
        assert getattr(ours, name) == getattr(theirs, name), name


def test_config_json_round_trip_keeps_unknown_keys(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config(
        pad_token_id=3, id2label={0: "O", 1: "B-KEY", 2: "I-KEY"},
        extra={"architectures": ["GPTBigCodeForTokenClassification"],
               "custom_setting": {"nested": [1, 2]}, "transformers_version": "4.56.2"},
    )
    cfg.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["custom_setting"] == {"nested": [1, 2]}
    assert written["model_type"] == "gpt_bigcode"
    assert written["id2label"] == {"0": "O", "1": "B-KEY", "2": "I-KEY"}
    assert written["label2id"] == {"O": 0, "B-KEY": 1, "I-KEY": 2}
    back = GPTBigCodeConfig.from_pretrained(tmp_path)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("multi_query", [True, False])
def test_transformers_reads_our_config_and_we_read_theirs(
    make_config: MakeConfig, transformers_module: Any, tmp_path: Path, multi_query: bool
) -> None:
    ours = make_config(
        multi_query=multi_query, n_inner=50, activation_function="gelu_new", pad_token_id=2,
        id2label={0: "clean", 1: "secret"}, problem_type="single_label_classification",
        scale_attn_weights=False, attention_softmax_in_fp32=False,
    )
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers_module.GPTBigCodeConfig.from_pretrained(tmp_path / "ours")
    for name in SHARED_FIELDS:
        assert getattr(theirs, name) == getattr(ours, name), name
    theirs.save_pretrained(tmp_path / "theirs")
    back = GPTBigCodeConfig.from_pretrained(tmp_path / "theirs")
    for name in SHARED_FIELDS:
        assert getattr(back, name) == getattr(ours, name), name
    assert back.extra["transformers_version"] == "4.56.2"  # their bookkeeping is kept


def test_torch_dtype_and_its_newer_spelling_are_read() -> None:
    assert GPTBigCodeConfig.from_dict({"torch_dtype": "bfloat16"}).torch_dtype == "bfloat16"
    assert GPTBigCodeConfig.from_dict({"dtype": "float16"}).torch_dtype == "float16"


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_embd=30, n_head=4), r"n_embd \(30\) must be divisible by n_head \(4\)"),
        (dict(activation_function="swish"), r"activation_function 'swish' is not one of"),
        (dict(n_layer=0), r"n_layer must be a positive integer, got 0"),
        (dict(vocab_size=-5), r"vocab_size must be a positive integer, got -5"),
        (dict(n_inner=0), r"n_inner must be a positive integer or None, got 0"),
        (dict(attn_pdrop=1.0), r"attn_pdrop must be in \[0, 1\), got 1.0"),
        (dict(problem_type="ranking"), r"problem_type 'ranking' is not one of"),
        (dict(num_labels=0), r"num_labels must be a positive integer, got 0"),
        (dict(num_labels=3, id2label={0: "a", 1: "b"}), r"num_labels=3 disagrees with id2label"),
    ],
    ids=["indivisible", "activation", "n_layer", "vocab", "n_inner", "dropout", "problem_type",
         "num_labels", "id2label"],
)
def test_bad_config_values_raise_config_error_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        GPTBigCodeConfig(**fields)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"config.json: not valid JSON"),
        ("[1, 2]", r"config.json: expected a JSON object, got list"),
        ('{"model_type": "gpt2"}', r"config.json: model_type is 'gpt2', expected 'gpt_bigcode'"),
        ('{"n_embd": 30, "n_head": 4}', r"config.json: n_embd \(30\) must be divisible"),
        ('{"n_embd": [1]}', r"config.json: n_embd must be a positive integer, got \[1\]"),
    ],
    ids=["syntax", "not_object", "model_type", "indivisible", "wrong_kind"],
)
def test_bad_config_json_names_the_file_and_the_problem(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        GPTBigCodeConfig.from_pretrained(tmp_path)


def test_missing_config_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.json: config file not found"):
        GPTBigCodeConfig.from_pretrained(tmp_path)


def test_config_fields_are_all_written(make_config: MakeConfig) -> None:
    written = make_config().to_dict()
    for f in dataclasses.fields(GPTBigCodeConfig):
        if f.name != "extra":
            assert f.name in written, f.name
    assert "extra" not in written


# -- KV buffers ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mqa_cache_holds_one_kv_head_and_mha_n_head(
    make_config: MakeConfig, dtype: torch.dtype
) -> None:
    mqa, mha = make_config(multi_query=True), make_config(multi_query=False)
    batch, capacity = 3, 10
    element = torch.empty(0, dtype=dtype).element_size()
    per_token = 2 * mqa.n_layer * mqa.head_dim  # keys and values, one shared head
    mqa_cache = KVCache(mqa, batch_size=batch, capacity=capacity, dtype=dtype)
    mha_cache = KVCache(mha, batch_size=batch, capacity=capacity, dtype=dtype)
    assert mqa_cache.nbytes == per_token * capacity * batch * element
    assert mha_cache.nbytes == mha.n_head * mqa_cache.nbytes


@torch.no_grad()
def test_cache_is_written_in_place_without_reallocating(make_config: MakeConfig) -> None:
    config = make_config()
    lm = model.GPTBigCodeForCausalLM(config).eval()
    cache = KVCache(config, batch_size=1, capacity=16)
    buffer, nbytes = cache.buffer.data_ptr(), cache.nbytes
    for t in range(12):
        lm(ids_of([t + 1]), past_key_values=cache, use_cache=True)
    assert cache.length == 12
    assert cache.buffer.data_ptr() == buffer and cache.nbytes == nbytes
    assert cache.keys(0).shape == (1, 1, 12, config.head_dim)


def test_cache_capacity_is_capped_at_n_positions(make_config: MakeConfig) -> None:
    config = make_config()
    cache = KVCache(config, batch_size=1, capacity=1000)
    assert cache.capacity == config.n_positions
    with pytest.raises(ValueError, match=r"65 tokens exceeds the model's n_positions \(64\)"):
        cache.reserve(65)


def test_cache_truncate_refuses_growing(make_config: MakeConfig) -> None:
    cache = KVCache(make_config(), batch_size=1, capacity=8)
    cache.length = 4
    with pytest.raises(ValueError, match=r"cannot truncate a cache of 4 tokens to 5"):
        cache.truncate(5)


@torch.no_grad()
def test_use_cache_false_returns_no_cache(lm: model.GPTBigCodeForCausalLM) -> None:
    assert lm(ids_of([1, 2, 3]), use_cache=False).past_key_values is None
    out = lm(ids_of([1, 2, 3]), use_cache=True)
    assert isinstance(out.past_key_values, KVCache) and out.past_key_values.length == 3


# -- equivalent input paths ----------------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "left_padded"])
@torch.no_grad()
def test_inputs_embeds_path_equals_input_ids_path(
    lm: model.GPTBigCodeForCausalLM, padded: bool
) -> None:
    ids = torch.randint(1, 97, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    if padded:
        mask[1, :3] = 0
    embeds = lm.transformer.wte(ids)
    by_ids = lm(ids, attention_mask=mask, output_hidden_states=True)
    by_embeds = lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
    assert_close(by_embeds.logits, by_ids.logits)
    for a, b in zip(by_embeds.hidden_states, by_ids.hidden_states, strict=True):
        assert_close(a, b)


@torch.no_grad()
def test_positions_are_derived_from_the_attention_mask(lm: model.GPTBigCodeForCausalLM) -> None:
    ids = torch.randint(1, 97, (2, 6))
    mask = ids_of([0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1])
    derived = lm(ids, attention_mask=mask).logits
    explicit = lm(ids, attention_mask=mask, position_ids=ids_of([1, 1, 0, 1, 2, 3],
                                                               [0, 1, 2, 3, 4, 5])).logits
    assert_close(derived, explicit)
    shifted = lm(ids, attention_mask=mask, position_ids=ids_of([0, 0, 4, 5, 6, 7],
                                                              [4, 5, 6, 7, 8, 9])).logits
    assert not torch.allclose(derived[0, 2:], shifted[0, 2:])


@pytest.mark.parametrize("multi_query", [True, False], ids=["mqa", "mha"])
@torch.no_grad()
def test_sdpa_model_falls_back_to_eager_for_weights_and_head_mask(
    make_config: MakeConfig, multi_query: bool
) -> None:
    config = make_config(multi_query=multi_query)
    eager = model.GPTBigCodeForCausalLM(config, attn_implementation="eager").eval()
    sdpa = model.GPTBigCodeForCausalLM(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    ids = torch.randint(1, 97, (2, 6))
    head_mask = torch.tensor([1.0, 0.0, 1.0, 0.5])
    a = sdpa(ids, head_mask=head_mask, output_attentions=True)
    b = eager(ids, head_mask=head_mask, output_attentions=True)
    assert_close(a.logits, b.logits)
    assert len(a.attentions) == config.n_layer
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert_close(x, y)
    assert torch.all(a.attentions[0][:, 1] == 0)  # the masked head's weights are zeroed


@pytest.mark.parametrize("hidden_dropout", [0.0, 0.2])
def test_token_classifier_dropout_falls_back_to_hidden_dropout_like_transformers(
    make_config: MakeConfig, make_pair: MakePair, hidden_dropout: float
) -> None:
    config = make_config(classifier_dropout=None, extra={"hidden_dropout": hidden_dropout})
    ours, hf = make_pair("GPTBigCodeForTokenClassification", config)
    assert hf.dropout.p == hidden_dropout
    assert ours.dropout.p == hidden_dropout


def test_classifier_dropout_defaults_to_one_tenth(make_config: MakeConfig) -> None:
    head = model.GPTBigCodeForTokenClassification(make_config(classifier_dropout=None))
    assert head.dropout.p == 0.1
    head = model.GPTBigCodeForTokenClassification(make_config(classifier_dropout=0.3))
    assert head.dropout.p == 0.3


def test_lm_head_is_tied_to_the_token_embedding(lm: model.GPTBigCodeForCausalLM) -> None:
    assert lm.lm_head.weight is lm.transformer.wte.weight
    names = {name for name, _ in lm.named_parameters()}
    assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.ln_f.bias" in names


def test_state_dict_names_equal_transformers_names(
    make_config: MakeConfig, make_pair: MakePair
) -> None:
    for cls_name in ("GPTBigCodeModel", "GPTBigCodeForCausalLM",
                     "GPTBigCodeForSequenceClassification", "GPTBigCodeForTokenClassification"):
        ours, hf = make_pair(cls_name, make_config(multi_query=False))
        mine, theirs = ours.state_dict(), hf.state_dict()
        assert mine.keys() == theirs.keys(), cls_name
        for key in theirs:
            assert mine[key].shape == theirs[key].shape, key


# -- generation ----------------------------------------------------------------------------


@torch.no_grad()
def test_generate_with_no_budget_returns_the_prompt(lm: model.GPTBigCodeForCausalLM) -> None:
    prompt = torch.randint(1, 97, (2, 5))
    assert torch.equal(lm.generate(prompt, max_new_tokens=0), prompt)


@torch.no_grad()
def test_stop_token_ids_end_a_row_and_pad_the_rest(make_config: MakeConfig) -> None:
    lm = model.GPTBigCodeForCausalLM(make_config(eos_token_id=None)).eval()
    prompt = torch.randint(1, 97, (2, 4))
    free = lm.generate(prompt, max_new_tokens=8)
    assert free.shape == (2, 12)
    stop = int(free[1, 4 + 2])
    stopped = lm.generate(prompt, max_new_tokens=8, stop_token_ids=[stop], pad_token_id=95)
    first = int((stopped[1, 4:] == stop).nonzero()[0]) + 4
    assert first <= 6
    assert torch.equal(stopped[1, : first + 1], free[1, : first + 1])
    assert torch.all(stopped[1, first + 1 :] == 95)


def test_fp32_training_step_backpropagates_with_the_default_cache() -> None:
    from model import GPTBigCodeConfig as Config
    from model import GPTBigCodeForCausalLM as LM

    torch.manual_seed(0)
    model = LM(Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4)).train()
    ids = torch.randint(0, 50, (2, 10))
    loss = model(ids, labels=ids).loss  # use_cache defaults to True
    loss.backward()
    grad = model.transformer.h[0].attn.c_attn.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
