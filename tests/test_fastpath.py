"""The compiled decode path: one-row products give the plain path's logits at bf16's
tolerance, the same greedy tokens, and leave prefill, training and fp32 on F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, KVCache
from model.fastpath import DecodeLinear, compile_decode, compiled_row_product

pytestmark = pytest.mark.skipif(compiled_row_product() is None,
                                reason="torch.compile cannot build here")


def tiny(multi_query: bool) -> GPTBigCodeForCausalLM:
    torch.manual_seed(0)
    config = GPTBigCodeConfig(vocab_size=160, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                              multi_query=multi_query, resid_pdrop=0.0, embd_pdrop=0.0,
                              attn_pdrop=0.0, initializer_range=0.2)
    return GPTBigCodeForCausalLM(config).eval().to(torch.bfloat16)


def test_a_one_row_product_equals_f_linear_at_bf16_tolerance() -> None:
    layer = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    expected = F.linear(x, layer.weight, layer.bias)
    layer.__class__ = DecodeLinear
    with torch.inference_mode():
        got = layer(x)
    assert got.shape == (1, 1, 48) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("multi_query", [True, False])
def test_decoding_gives_the_plain_paths_logits_and_greedy_tokens(multi_query: bool) -> None:
    model = tiny(multi_query)
    ids = torch.randint(0, 160, (1, 12))
    plain = model.generate(ids, max_new_tokens=10)
    with torch.inference_mode():
        kv = KVCache(model.config, 1, 64, dtype=torch.bfloat16)
        model(ids, past_key_values=kv, use_cache=True)
        step_plain = model(ids[:, -1:], past_key_values=kv, use_cache=True).logits
    compile_decode(model)
    assert sum(isinstance(m, DecodeLinear) for m in model.modules()) == 4 * 2 + 1
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    fast = model.generate(ids, max_new_tokens=10)
    with torch.inference_mode():
        kv = KVCache(model.config, 1, 64, dtype=torch.bfloat16)
        model(ids, past_key_values=kv, use_cache=True)
        step_fast = model(ids[:, -1:], past_key_values=kv, use_cache=True).logits
    torch.testing.assert_close(step_fast.float(), step_plain.float(), rtol=0.03, atol=0.03)
    assert torch.equal(fast, plain)


def test_prefill_training_and_fp32_stay_on_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = compiled_row_product()
    assert real is not None

    def counting(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr("model.fastpath.compiled_row_product", lambda: counting)
    model = compile_decode(tiny(True))
    ids = torch.randint(0, 160, (1, 6))
    with torch.inference_mode():
        model(ids)  # prefill: many rows
    assert calls == []
    model(ids[:, :1])  # gradients enabled: training keeps autograd through F.linear
    assert calls == []
    with torch.inference_mode():
        model.float()(ids[:, :1])
    assert calls == []
    with torch.inference_mode():
        model.to(torch.bfloat16)(ids[:, :1])
    assert len(calls) == 4 * 2 + 1
