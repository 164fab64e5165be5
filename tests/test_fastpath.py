"""The fast decode paths: one-row products on the native kernels or compiled by Inductor give
the plain path's logits at the dtype's tolerance and the same greedy tokens; prefill,
training and mixed dtypes stay on F.linear; the lean single-token step equals forward's
general path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, KVCache
from model.fastpath import DecodeLinear, compiled_row_product, fast_decode, native_decode_available

# name -> fast_decode arguments, and whether it can run here
PATHS = {
    "native": ({"native": True, "inductor": False},
               native_decode_available(torch.bfloat16)),
    "inductor": ({"native": False, "inductor": True}, compiled_row_product() is not None),
}


def tiny(multi_query: bool, dtype: torch.dtype = torch.bfloat16) -> GPTBigCodeForCausalLM:
    torch.manual_seed(0)
    config = GPTBigCodeConfig(vocab_size=160, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                              multi_query=multi_query, resid_pdrop=0.0, embd_pdrop=0.0,
                              attn_pdrop=0.0, initializer_range=0.2)
    return GPTBigCodeForCausalLM(config).eval().to(dtype)


def path(name: str) -> dict[str, bool]:
    settings, available = PATHS[name]
    if not available:
        pytest.skip(f"the {name} path cannot run here")
    return settings


@pytest.mark.parametrize("name", PATHS)
def test_a_one_row_product_equals_f_linear_at_bf16_tolerance(name: str) -> None:
    settings = path(name)
    layer = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    expected = F.linear(x, layer.weight, layer.bias)
    layer.__class__ = DecodeLinear
    layer.use_native, layer.inductor = settings["native"], settings["inductor"]
    with torch.inference_mode():
        got = layer(x)
    assert got.shape == (1, 1, 48) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)


def step_logits(model: GPTBigCodeForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        kv = KVCache(model.config, 1, 64, dtype=model.dtype)
        model(ids, past_key_values=kv, use_cache=True)
        return model(ids[:, -1:], past_key_values=kv, use_cache=True).logits


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("multi_query", [True, False])
def test_decoding_gives_the_plain_paths_logits_and_greedy_tokens(
    name: str, multi_query: bool
) -> None:
    settings = path(name)
    model = tiny(multi_query)
    ids = torch.randint(0, 160, (1, 12))
    plain = model.generate(ids, max_new_tokens=10)
    step_plain = step_logits(model, ids)
    fast_decode(model, **settings)
    assert sum(isinstance(m, DecodeLinear) for m in model.modules()) == 4 * 2 + 1
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    fast = model.generate(ids, max_new_tokens=10)
    torch.testing.assert_close(step_logits(model, ids).float(), step_plain.float(),
                               rtol=0.03, atol=0.03)
    assert torch.equal(fast, plain)


def test_fp32_decoding_on_the_native_kernels_matches_closely() -> None:
    if not native_decode_available(torch.float32):
        pytest.skip("no native fp32 kernel on this CPU")
    model = tiny(True, torch.float32)
    ids = torch.randint(0, 160, (1, 12))
    plain, step_plain = model.generate(ids, max_new_tokens=10), step_logits(model, ids)
    fast_decode(model)
    torch.testing.assert_close(step_logits(model, ids), step_plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.generate(ids, max_new_tokens=10), plain)


@pytest.mark.parametrize("name", PATHS)
def test_prefill_training_and_mixed_dtypes_stay_on_f_linear(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = path(name)
    calls: list[int] = []
    real_linear = F.linear

    def counting_linear(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return real_linear(*args)

    monkeypatch.setattr("model.fastpath.F.linear", counting_linear)
    model = fast_decode(tiny(True), **settings)
    ids = torch.randint(0, 160, (1, 12))
    products = 4 * 2 + 1
    with torch.inference_mode():
        model(ids)  # prefill: more rows than the few-row kernel takes
    assert len(calls) == products
    model(ids[:, :1])  # gradients enabled: training keeps autograd through F.linear
    assert len(calls) == 2 * products
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.float()(ids[:, :1])  # fp32 weights, bf16 activations under autocast
    assert len(calls) == 3 * products
    with torch.inference_mode():
        model.to(torch.bfloat16)(ids[:, :1])  # one row, weights and input of one dtype
    assert len(calls) == 3 * products


# -- the lean single-token step (GPTBigCodeModel.decode_one) ---------------------------------


def lean_and_general_steps(dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Logits of four single-token steps after a five-token prefill, through the lean step
    and through forward's general path (taken with an explicit all-ones mask)."""
    model = tiny(True, dtype)
    ids = torch.randint(0, 160, (1, 9), generator=torch.Generator().manual_seed(3))
    lean, general = [], []
    with torch.inference_mode():
        lean_kv = KVCache(model.config, 1, 16, dtype=dtype)
        general_kv = KVCache(model.config, 1, 16, dtype=dtype)
        model(ids[:, :5], past_key_values=lean_kv)
        model(ids[:, :5], past_key_values=general_kv)
        for t in range(5, 9):
            lean.append(model(ids[:, t:t + 1], past_key_values=lean_kv).logits)
            general.append(model(ids[:, t:t + 1], past_key_values=general_kv,
                                 attention_mask=torch.ones(1, t + 1, dtype=torch.long)).logits)
    assert lean_kv.length == general_kv.length == 9
    assert torch.equal(lean_kv.buffer[:, :, :, :, :9], general_kv.buffer[:, :, :, :, :9])
    return lean, general


def test_the_single_token_step_equals_the_general_path_in_fp32() -> None:
    lean, general = lean_and_general_steps(torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(lean, general, strict=True))


def test_the_single_token_step_in_bf16_matches_at_bf16_tolerance() -> None:
    # bf16 attention runs on the native kernel where the CPU has one (fp32 softmax).
    lean, general = lean_and_general_steps(torch.bfloat16)
    for a, b in zip(lean, general, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.03, atol=0.03)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_the_single_token_step_checks_what_the_general_path_checks() -> None:
    model = tiny(True, torch.float32)
    with torch.inference_mode():
        kv = KVCache(model.config, 1, 64)
        model(torch.zeros(1, 64, dtype=torch.long), past_key_values=kv)
        with pytest.raises(ValueError, match=r"65 tokens \(64 cached \+ 1 new\) exceeds"):
            model(torch.zeros(1, 1, dtype=torch.long), past_key_values=kv)
        kv.truncate(3)
        with pytest.raises(ValueError, match=r"token id 160 .* outside \[0, 160\)"):
            model(torch.tensor([[160]]), past_key_values=kv)
        with pytest.raises(ValueError, match="make the KVCache with the model's dtype"):
            model(torch.tensor([[1]]), past_key_values=KVCache(model.config, 1, 8,
                                                                 dtype=torch.bfloat16))
    assert kv.length == 3  # nothing written by the refused steps


# -- the fused native block (bf16, head_dim 64 or 128) --------------------------------------


def starcoder_like(n_embd: int, n_head: int) -> GPTBigCodeForCausalLM:
    torch.manual_seed(1)
    config = GPTBigCodeConfig(vocab_size=300, n_positions=96, n_embd=n_embd, n_layer=3,
                              n_head=n_head, multi_query=True, resid_pdrop=0.0,
                              embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1)
    return GPTBigCodeForCausalLM(config).eval().to(torch.bfloat16)


@pytest.mark.parametrize(("n_embd", "n_head"), [(128, 2), (384, 6), (256, 2)])
def test_fused_native_blocks_give_the_plain_paths_logits_and_tokens(
    n_embd: int, n_head: int
) -> None:
    from model import native

    if native.block_kernel("bf16") is None:
        pytest.skip("no AVX512-BF16 native kernels here")
    model = starcoder_like(n_embd, n_head)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(n_embd))

    def step(m: GPTBigCodeForCausalLM) -> tuple[torch.Tensor, KVCache]:
        with torch.inference_mode():
            kv = KVCache(m.config, 1, 96, dtype=m.dtype)
            m(ids, past_key_values=kv)
            return m(ids[:, -1:], past_key_values=kv).logits.float(), kv

    exact, _ = step(copy.deepcopy(model).float())  # the same bf16 weights, computed in fp32
    plain_tokens = model.generate(ids, max_new_tokens=24)
    plain, plain_kv = step(model)
    fast_decode(model)
    assert model.transformer.native_blocks() is not None  # the fused kernel applies
    fast_tokens = model.generate(ids, max_new_tokens=24)
    fused, kv = step(model)
    # as close to the fp32 result as torch's own bf16 path is, give or take a rounding
    assert (fused - exact).abs().max() <= 1.5 * (plain - exact).abs().max() + 0.02
    torch.testing.assert_close(fused, plain, rtol=0.05, atol=0.08)
    assert kv.length == plain_kv.length == 41
    # the step's key and value in the first block, written by the kernel, as the plain path
    # wrote them (deeper blocks drift apart by bf16 roundings, as the logits above show)
    torch.testing.assert_close(kv.buffer[0, :, :, :, 40].float(),
                               plain_kv.buffer[0, :, :, :, 40].float(), rtol=0.02, atol=0.02)
    assert torch.equal(fast_tokens, plain_tokens)


def test_fused_blocks_are_rebuilt_after_the_model_moves_and_skip_other_cases() -> None:
    from model import native

    if native.block_kernel("bf16") is None:
        pytest.skip("no AVX512-BF16 native kernels here")
    model = fast_decode(starcoder_like(128, 2))
    backbone = model.transformer
    first = backbone.native_blocks()
    assert first is not None and len(first[1]) == 3
    model.float()  # fp32: fused fp32 blocks on the fp32 parameters
    as_fp32 = backbone.native_blocks()
    assert as_fp32 is not None and as_fp32[0].kind == "fp32"
    assert as_fp32[1][0].attn_w == backbone.h[0].attn.c_attn.weight.data_ptr()
    model.half()  # no fp16 kernels
    assert backbone.native_blocks() is None
    model.to(torch.bfloat16)
    again = backbone.native_blocks()
    assert again is not None and again[0].kind == "bf16"
    assert again[1][0].attn_w == backbone.h[0].attn.c_attn.weight.data_ptr()
    plain = starcoder_like(128, 2)  # no fast_decode: plain PyTorch, no native kernels
    assert plain.transformer.native_blocks() is None
    odd = fast_decode(tiny(True))  # head_dim 16: no layout for it
    assert odd.transformer.native_blocks() is None


def test_fused_fp32_blocks_match_the_plain_fp32_path() -> None:
    from model import native

    if native.block_kernel("fp32") is None:
        pytest.skip("no AVX-512 native kernels here")
    model = starcoder_like(256, 2).float()
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(5))
    plain_tokens = model.generate(ids, max_new_tokens=20)
    with torch.inference_mode():
        plain_kv = KVCache(model.config, 1, 96)
        model(ids, past_key_values=plain_kv)
        plain = model(ids[:, -1:], past_key_values=plain_kv).logits
    fast_decode(model)
    assert model.transformer.native_blocks() is not None
    with torch.inference_mode():
        kv = KVCache(model.config, 1, 96)
        model(ids, past_key_values=kv)
        fused = model(ids[:, -1:], past_key_values=kv).logits
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kv.buffer[:, :, :, :, :31], plain_kv.buffer[:, :, :, :, :31],
                               rtol=1e-4, atol=1e-4)
    assert torch.equal(model.generate(ids, max_new_tokens=20), plain_tokens)


@pytest.mark.parametrize("rows", [2, 3, 8])
def test_a_few_rows_go_to_the_native_kernel_and_match_f_linear(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model import native

    if native.rows_product_kernel() is None:
        pytest.skip("no AVX512-BF16 native kernels here")
    layer = torch.nn.Linear(96, 40).to(torch.bfloat16)
    x = torch.randn(1, rows, 96, dtype=torch.bfloat16)
    expected = F.linear(x, layer.weight, layer.bias)
    layer.__class__ = DecodeLinear
    monkeypatch.setattr("model.fastpath.F.linear", None)  # any F.linear call would fail
    with torch.inference_mode():
        got = layer(x)
    assert got.shape == (1, rows, 40)
    reference = x.double() @ layer.weight.double().T + layer.bias.double()
    assert ((got.double() - reference).abs() <= reference.abs() * 2**-7 + 0.01).all()
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)


def test_fused_q8_blocks_for_int8_models_match_the_unfused_int8_path() -> None:
    from model import native
    from model.quantize import quantize_int8

    if native.block_kernel("q8") is None:
        pytest.skip("no AVX512-VNNI / AVX512-BF16 native kernels here")
    model = quantize_int8(starcoder_like(256, 2), include_lm_head=True)
    assert isinstance(model, GPTBigCodeForCausalLM)
    fused = model.transformer.native_blocks()
    assert fused is not None and fused[0].kind == "q8"
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(6))

    def step() -> torch.Tensor:
        with torch.inference_mode():
            kv = KVCache(model.config, 1, 96, dtype=torch.bfloat16)
            model(ids, past_key_values=kv)
            return model(ids[:, -1:], past_key_values=kv).logits

    with_fused = step()
    tokens = model.generate(ids, max_new_tokens=16)
    model.transformer.__dict__["_native_blocks"] = (
        model.transformer.__dict__["_native_blocks"][0], None)  # the per-layer path instead
    unfused = step()
    # the same q8 products and native attention, one call per block instead of per operation
    torch.testing.assert_close(with_fused.float(), unfused.float(), rtol=0.03, atol=0.03)
    assert torch.equal(model.generate(ids, max_new_tokens=16), tokens)


@pytest.mark.parametrize("count", [2, 5, 8])
def test_a_few_tokens_after_a_cache_attend_natively_as_one_token_steps_do(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model import native

    kernel = native.attention_kernel(64)
    if kernel is None:
        pytest.skip("no AVX512-BF16 native kernels here")
    torch.manual_seed(0)
    config = GPTBigCodeConfig(vocab_size=160, n_positions=64, n_embd=256, n_layer=2, n_head=4,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                              initializer_range=0.2)  # head_dim 64: the kernel's
    reference = GPTBigCodeForCausalLM(config).eval()
    plain = copy.deepcopy(reference).to(torch.bfloat16)
    fast = fast_decode(copy.deepcopy(plain))
    calls = []

    def counted(head_dim: int) -> native.Attention | None:
        calls.append(head_dim)
        return kernel

    monkeypatch.setattr("model.modeling.native.attention_kernel", counted)
    ids = torch.randint(0, 160, (1, 30 + count), generator=torch.Generator().manual_seed(1))

    def after_prompt(model: GPTBigCodeForCausalLM, one_at_a_time: bool) -> torch.Tensor:
        cache = KVCache(config, 1, 40, dtype=model.dtype)
        with torch.inference_mode():
            model(ids[:, :30], past_key_values=cache)
            if not one_at_a_time:
                return model(ids[:, 30:], past_key_values=cache).logits.float()  # (1, T, V)
            return torch.cat([model(ids[:, t:t + 1], past_key_values=cache).logits.float()
                              for t in range(30, 30 + count)], dim=1)

    together = after_prompt(fast, one_at_a_time=False)
    assert calls == [64] * config.n_layer  # one lookup per layer of the few-token forward
    # The same arithmetic as one-token steps (products on the few-row kernel instead of
    # the one-row kernel: the same sums, accumulated in another order).
    torch.testing.assert_close(together, after_prompt(fast, one_at_a_time=True),
                               rtol=0.01, atol=0.01)
    exact = after_prompt(reference, one_at_a_time=False)
    plain_error = (after_prompt(plain, one_at_a_time=False) - exact).abs()
    assert (together - exact).abs().mean() <= plain_error.mean() * 1.1
