"""The decode paths (model.decoders): the native and Inductor products give the PyTorch path's
logits at the dtype's tolerance and the same greedy tokens; prefill, training and mixed dtypes
stay on F.linear; the trimmed one-token step equals forward's general path; make_decoder
chooses and refuses with a reason."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, KVCache, native
from model import decoders as decoders_module
from model.decoders import (
    DecodePathUnavailable,
    Decoder,
    InductorDecoder,
    NativeDecoder,
    TorchDecoder,
    compiled_row_product,
    make_decoder,
)
from model.generation import generate
from model.static_decode import GraphDecoder

# every instruction set the native kernels run on here (AVX-512 CPUs run the AVX2 build too)
ISAS = [isa for isa in native.ISA_FLAGS if not native.isa_problem(isa)]

# name -> whether the path can run here (for a bf16 model)
PATHS = {
    "native": native.row_product_kernel(torch.bfloat16) is not None,
    "inductor": compiled_row_product() is not None,
}


def tiny(multi_query: bool, dtype: torch.dtype = torch.bfloat16) -> GPTBigCodeForCausalLM:
    torch.manual_seed(0)
    config = GPTBigCodeConfig(vocab_size=160, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                              multi_query=multi_query, resid_pdrop=0.0, embd_pdrop=0.0,
                              attn_pdrop=0.0, initializer_range=0.2)
    return GPTBigCodeForCausalLM(config).eval().to(dtype)


def decoder_of(name: str, model: GPTBigCodeForCausalLM) -> Decoder:
    if not PATHS[name]:
        pytest.skip(f"the {name} path cannot run here")
    return make_decoder(model, name)


def count_f_linear(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of F.linear (nn.Linear's product) from now on."""
    calls: list[int] = []
    real_linear = F.linear

    def counting_linear(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return real_linear(*args)

    monkeypatch.setattr(torch.nn.functional, "linear", counting_linear)
    return calls


@pytest.mark.parametrize("name", PATHS)
def test_a_one_row_product_equals_f_linear_at_bf16_tolerance(name: str) -> None:
    decoder = decoder_of(name, tiny(True))
    assert isinstance(decoder, NativeDecoder | InductorDecoder)
    layer = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    expected = F.linear(x, layer.weight, layer.bias)
    with torch.inference_mode():
        got = decoder.product(layer, x)
    assert got.shape == (1, 1, 48) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)


def step_logits(decoder: Decoder, ids: torch.Tensor) -> torch.Tensor:
    """The logits of a step of ids' last token after ids were prefilled; (V,)."""
    kv = KVCache(decoder.model.config, 1, 64, dtype=decoder.model.dtype)
    decoder.prefill(ids, kv)
    decoder.start(kv)
    return decoder.step(int(ids[0, -1]))


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("multi_query", [True, False])
def test_decoding_gives_the_plain_paths_logits_and_greedy_tokens(
    name: str, multi_query: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny(multi_query)
    ids = torch.randint(0, 160, (1, 12))
    plain = model.generate(ids, max_new_tokens=10)
    step_plain = step_logits(TorchDecoder(model), ids)
    decoder = decoder_of(name, model)
    calls = count_f_linear(monkeypatch)
    fast_step = step_logits(decoder, ids)
    # the prompt's block products only: its lm_head row and every step's products are faster
    assert len(calls) == 4 * 2
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    fast = generate(model, ids, max_new_tokens=10, decoder=decoder)
    torch.testing.assert_close(fast_step.float(), step_plain.float(), rtol=0.03, atol=0.03)
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("isa", ISAS)
def test_fp32_decoding_on_the_native_kernels_matches_closely(isa: str) -> None:
    if native.row_product_kernel(torch.float32, isa) is None:
        pytest.skip("no native fp32 kernel on this CPU")
    model = tiny(True, torch.float32)
    ids = torch.randint(0, 160, (1, 12))
    plain = model.generate(ids, max_new_tokens=10)
    step_plain = step_logits(TorchDecoder(model), ids)
    decoder = make_decoder(model, "native", isa=isa)
    assert decoder.path == "native-fp32"  # head_dim 16: no fused blocks, no half copies
    torch.testing.assert_close(step_logits(decoder, ids), step_plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(generate(model, ids, max_new_tokens=10, decoder=decoder), plain)


@pytest.mark.parametrize("name", PATHS)
def test_prefill_training_and_mixed_dtypes_stay_on_f_linear(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny(True)
    decoder = decoder_of(name, model)
    calls = count_f_linear(monkeypatch)
    ids = torch.randint(0, 160, (1, 12))
    products = 4 * 2 + 1

    def prefill(ids: torch.Tensor) -> None:
        decoder.prefill(ids, KVCache(model.config, 1, 16, dtype=model.dtype), 0)

    prefill(ids)  # more rows than the few-row kernel takes
    assert len(calls) == products
    model(ids[:, :1])  # gradients enabled: training keeps autograd through F.linear
    assert len(calls) == 2 * products
    model.float()  # fp32 weights, bf16 activations under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prefill(ids[:, :1])
    assert len(calls) == 3 * products
    model.to(torch.bfloat16)
    prefill(ids[:, :1])  # one row, weights and input of one dtype
    assert len(calls) == 3 * products


# -- the trimmed one-token step (TorchDecoder) ----------------------------------------------


def trimmed_and_general_steps(
    dtype: torch.dtype, make: Callable[[GPTBigCodeForCausalLM], Decoder] = TorchDecoder
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Logits of four single-token steps after a five-token prefill, through a decoder's
    step and through forward's general path (taken with an explicit all-ones mask)."""
    model = tiny(True, dtype)
    decoder = make(model)
    ids = torch.randint(0, 160, (1, 9), generator=torch.Generator().manual_seed(3))
    trimmed, general = [], []
    step_kv = KVCache(model.config, 1, 16, dtype=dtype)
    general_kv = KVCache(model.config, 1, 16, dtype=dtype)
    decoder.prefill(ids[:, :5], step_kv)
    decoder.start(step_kv)
    with torch.inference_mode():
        model(ids[:, :5], past_key_values=general_kv)
        for t in range(5, 9):
            trimmed.append(decoder.step(int(ids[0, t]))[None, None])
            general.append(model(ids[:, t:t + 1], past_key_values=general_kv,
                                 attention_mask=torch.ones(1, t + 1, dtype=torch.long)).logits)
    assert step_kv.length == general_kv.length == 9
    if dtype == torch.float32:
        assert torch.equal(step_kv.buffer[:, :, :, :, :9], general_kv.buffer[:, :, :, :, :9])
    return trimmed, general


def test_the_single_token_step_equals_the_general_path_in_fp32() -> None:
    trimmed, general = trimmed_and_general_steps(torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(trimmed, general, strict=True))


@pytest.mark.parametrize("name", ["torch", "native"])
def test_the_single_token_step_in_bf16_matches_at_bf16_tolerance(name: str) -> None:
    # native: the products and the attention on the native kernels (fp32 softmax).
    if name == "native" and not PATHS["native"]:
        pytest.skip("no native bf16 kernels here")
    trimmed, general = trimmed_and_general_steps(torch.bfloat16,
                                                 lambda m: make_decoder(m, name))
    for a, b in zip(trimmed, general, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.03, atol=0.03)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_the_single_token_step_checks_what_the_general_path_checks() -> None:
    model = tiny(True, torch.float32)
    decoder = TorchDecoder(model)
    kv = KVCache(model.config, 1, 64)
    decoder.prefill(torch.zeros(1, 64, dtype=torch.long), kv)
    decoder.start(kv)
    with pytest.raises(ValueError, match=r"65 tokens \(64 cached \+ 1 new\) exceeds"):
        decoder.step(0)
    kv.truncate(3)
    with pytest.raises(ValueError, match=r"token id 160 .* outside \[0, 160\)"):
        decoder.step(160)
    with pytest.raises(ValueError, match="make the KVCache with the model's dtype"):
        decoder.prefill(torch.tensor([[1]]), KVCache(model.config, 1, 8, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="step before start"):
        TorchDecoder(model).step(1)
    assert kv.length == 3  # nothing written by the refused steps


# -- the fused native block (bf16, head_dim 64 or 128) --------------------------------------


def starcoder_like(n_embd: int, n_head: int) -> GPTBigCodeForCausalLM:
    torch.manual_seed(1)
    config = GPTBigCodeConfig(vocab_size=300, n_positions=96, n_embd=n_embd, n_layer=3,
                              n_head=n_head, multi_query=True, resid_pdrop=0.0,
                              embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1)
    return GPTBigCodeForCausalLM(config).eval().to(torch.bfloat16)


def prefill_and_step(decoder: Decoder, ids: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
    """The step's logits (V,) fp32 after ids[:, :-1]... prefilled as ids, and the cache."""
    kv = KVCache(decoder.model.config, 1, 96, dtype=decoder.model.dtype)
    decoder.prefill(ids, kv)
    decoder.start(kv)
    return decoder.step(int(ids[0, -1])).float(), kv


@pytest.mark.parametrize(("n_embd", "n_head"), [(128, 2), (384, 6), (256, 2)])
def test_fused_native_blocks_give_the_plain_paths_logits_and_tokens(
    n_embd: int, n_head: int
) -> None:
    if native.block_kernel("bf16") is None:
        pytest.skip("no AVX512-BF16 native kernels here")
    model = starcoder_like(n_embd, n_head)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(n_embd))
    # the same bf16 weights, computed in fp32
    exact, _ = prefill_and_step(TorchDecoder(copy.deepcopy(model).float()), ids)
    plain_tokens = model.generate(ids, max_new_tokens=24)
    plain, plain_kv = prefill_and_step(TorchDecoder(model), ids)
    decoder = make_decoder(model, "native")
    assert isinstance(decoder, NativeDecoder) and decoder.fused is not None  # it applies
    fast_tokens = generate(model, ids, max_new_tokens=24, decoder=decoder)
    fused, kv = prefill_and_step(decoder, ids)
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
    if native.block_kernel("bf16") is None:
        pytest.skip("no AVX512-BF16 native kernels here")
    model = starcoder_like(128, 2)
    decoder = NativeDecoder(model)
    backbone = model.transformer
    first = decoder.fused
    assert first is not None and len(first[1]) == 3 and decoder.path == "native-bf16"
    model.float()  # fp32: fused fp32 blocks on the fp32 parameters
    decoder.start(KVCache(model.config, 1, 4))
    as_fp32 = decoder.fused
    assert as_fp32 is not None and as_fp32[0].kind == "fp32" and decoder.path == "native-fp32"
    assert as_fp32[1][0].attn_w == backbone.h[0].attn.c_attn.weight.data_ptr()
    model.half()  # no fp16 kernels
    decoder.refresh()
    assert decoder.fused is None and decoder.path == "torch"
    model.to(torch.bfloat16)
    decoder.refresh()
    again = decoder.fused
    assert again is not None and again[0].kind == "bf16"
    assert again[1][0].attn_w == backbone.h[0].attn.c_attn.weight.data_ptr()
    plain = make_decoder(starcoder_like(128, 2), "torch")  # plain PyTorch, no native kernels
    assert not isinstance(plain, NativeDecoder) and plain.path == "torch"
    odd = NativeDecoder(tiny(True))  # head_dim 16: no layout for it
    assert odd.fused is None and odd.path == "native-bf16"


@pytest.mark.parametrize("isa", ISAS)
def test_fused_fp32_blocks_match_the_plain_fp32_path(isa: str) -> None:
    if native.block_kernel("fp32", isa) is None:
        pytest.skip(f"no {isa} native kernels here")
    model = starcoder_like(256, 2).float()
    ids = torch.randint(0, 300, (1, 31), generator=torch.Generator().manual_seed(5))
    plain_tokens = model.generate(ids[:, :30], max_new_tokens=20)
    plain, plain_kv = prefill_and_step(TorchDecoder(model), ids[:, :30])
    decoder = make_decoder(model, "native", isa=isa, weights="fp32")
    assert isinstance(decoder, NativeDecoder) and decoder.fused is not None
    assert decoder.path == "native-fp32" and decoder.fused[0].isa == isa
    fused, kv = prefill_and_step(decoder, ids[:, :30])
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kv.buffer[:, :, :, :, :31], plain_kv.buffer[:, :, :, :, :31],
                               rtol=1e-4, atol=1e-4)
    assert torch.equal(generate(model, ids[:, :30], max_new_tokens=20, decoder=decoder),
                       plain_tokens)


# -- fp32 models on half-precision copies of their matrices (vecdot.c) -------------------------

HALF_KINDS = {"bf16": ("bf16w", torch.bfloat16), "f16": ("f16w", torch.float16)}


def half_valued(model: GPTBigCodeForCausalLM, storage: torch.dtype) -> GPTBigCodeForCausalLM:
    """The fp32 model with every parameter rounded to `storage`'s values (kept in fp32): the
    half copies then hold exactly its weights, so the fused blocks must give its fp32
    results."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(storage).float())
    return model


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("weights", HALF_KINDS)
@pytest.mark.parametrize(("n_embd", "n_head"), [(256, 2), (384, 6)])
def test_half_weight_blocks_give_the_fp32_paths_logits_cache_and_tokens(
    isa: str, weights: str, n_embd: int, n_head: int
) -> None:
    kind, storage = HALF_KINDS[weights]
    model = half_valued(starcoder_like(n_embd, n_head).float(), storage)
    ids = torch.randint(0, 300, (1, 41), generator=torch.Generator().manual_seed(n_embd))
    plain_tokens = model.generate(ids[:, :40], max_new_tokens=20)
    plain, plain_kv = prefill_and_step(TorchDecoder(model), ids)
    decoder = make_decoder(model, "native", isa=isa, weights=weights)
    assert isinstance(decoder, NativeDecoder) and decoder.path == f"native-{kind}"
    assert decoder.fused is not None and decoder.fused[0].isa == isa
    assert decoder.lm_head_copy is not None and decoder.lm_head_copy.dtype == storage
    assert decoder.copies[0]["attn_w"].dtype == storage
    fused, kv = prefill_and_step(decoder, ids)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kv.buffer[:, :, :, :, :42], plain_kv.buffer[:, :, :, :, :42],
                               rtol=1e-4, atol=1e-4)
    assert torch.equal(generate(model, ids[:, :40], max_new_tokens=20, decoder=decoder),
                       plain_tokens)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("weights", ["fp32", "f16"])
def test_a_few_fp32_tokens_after_a_cache_run_as_fused_steps_and_match_forward(
    isa: str, weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = half_valued(starcoder_like(256, 2).float(), torch.float16)
    ids = torch.randint(0, 300, (1, 23), generator=torch.Generator().manual_seed(9))
    decoder = NativeDecoder(model, isa, weights)
    assert decoder.fused is not None
    caches = []
    for run in (TorchDecoder(model), decoder):
        kv = KVCache(model.config, 1, 32)
        run.prefill(ids[:, :20], kv)
        if run is decoder:
            calls = count_f_linear(monkeypatch)
        logits = run.prefill(ids[:, 20:], kv, logits_to_keep=2)  # 3 tokens after the cache
        caches.append((logits, kv))
    (plain, plain_kv), (fused, fused_kv) = caches
    assert len(calls) == 1  # lm_head's two rows; no block product leaves the fused kernel
    assert fused.shape == plain.shape == (1, 2, 300)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    assert fused_kv.length == plain_kv.length == 23
    torch.testing.assert_close(fused_kv.buffer[:, :, :, :, :23],
                               plain_kv.buffer[:, :, :, :, :23], rtol=1e-4, atol=1e-4)


def test_auto_stores_half_weights_only_where_the_cpu_has_no_bf16_arithmetic(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    avx2 = frozenset({"avx", "avx2", "fma", "f16c"})
    assert native.weight_storage(flags=avx2) == torch.float16
    assert native.weight_storage(flags=avx2 | {"avx512f", "avx512bw"}) == torch.float16
    assert native.weight_storage(flags=avx2 | {"avx512f", "avx512_bf16"}) == torch.float32
    if not ISAS:
        pytest.skip("no native kernels here")
    monkeypatch.delenv(native.WEIGHTS_ENV, raising=False)
    model = starcoder_like(128, 2).float()
    expected = {torch.float16: "native-f16w", torch.float32: "native-fp32"}
    assert NativeDecoder(model).path == expected[native.weight_storage()]
    monkeypatch.setenv(native.WEIGHTS_ENV, "bf16")
    assert NativeDecoder(model).path == "native-bf16w"
    assert NativeDecoder(model, weights="fp32").path == "native-fp32"  # named beats the env
    with pytest.raises(ValueError, match=r"native weight storage 'f8' is not one of"):
        NativeDecoder(model, weights="f8")


def test_f16_gives_way_to_bf16_for_weights_beyond_its_range() -> None:
    if not ISAS:
        pytest.skip("no native kernels here")
    model = starcoder_like(128, 2).float()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 5] = 1e5  # inf in f16
    decoder = NativeDecoder(model, weights="f16")
    assert decoder.path == "native-bf16w"


def test_half_copies_follow_weights_loaded_in_place() -> None:
    if not ISAS:
        pytest.skip("no native kernels here")
    model = starcoder_like(128, 2).float()
    other = starcoder_like(128, 2).float()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5)
    ids = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(2))
    decoder = NativeDecoder(model, weights="bf16")
    before, _ = prefill_and_step(decoder, ids)
    model.load_state_dict(other.state_dict())  # copies into the same storage
    after, _ = prefill_and_step(decoder, ids)
    expected, _ = prefill_and_step(NativeDecoder(other, weights="bf16"), ids)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected)


def test_an_unknown_or_missing_instruction_set_is_refused_by_the_native_path() -> None:
    model = starcoder_like(128, 2).float()
    with pytest.raises(DecodePathUnavailable, match=r"native decode path cannot run: .*'sse9'"):
        make_decoder(model, "native", isa="sse9")
    lacking = [isa for isa in native.ISA_FLAGS if isa not in ISAS]
    if lacking:
        with pytest.raises(DecodePathUnavailable, match=rf"{lacking[0]}.* refused: "):
            make_decoder(model, "native", isa=lacking[0])
        with pytest.raises(native.IsaUnavailable, match=rf"{lacking[0]}.* refused: "):
            NativeDecoder(model, lacking[0])


@pytest.mark.parametrize("rows", [2, 3, 8])
def test_a_few_rows_go_to_the_native_kernel_and_match_f_linear(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if native.rows_product_kernel() is None:
        pytest.skip("no AVX512-BF16 native kernels here")
    decoder = NativeDecoder(tiny(True))
    layer = torch.nn.Linear(96, 40).to(torch.bfloat16)
    x = torch.randn(1, rows, 96, dtype=torch.bfloat16)
    expected = F.linear(x, layer.weight, layer.bias)
    monkeypatch.setattr(torch.nn.functional, "linear", None)  # any F.linear call would fail
    with torch.inference_mode():
        got = decoder.product(layer, x)
    assert got.shape == (1, rows, 40)
    reference = x.double() @ layer.weight.double().T + layer.bias.double()
    assert ((got.double() - reference).abs() <= reference.abs() * 2**-7 + 0.01).all()
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)


def test_fused_q8_blocks_for_int8_models_match_the_unfused_int8_path() -> None:
    from model.quantize import quantize_int8

    if native.block_kernel("q8") is None:
        pytest.skip("no AVX512-VNNI / AVX512-BF16 native kernels here")
    model = quantize_int8(starcoder_like(256, 2), include_lm_head=True)
    assert isinstance(model, GPTBigCodeForCausalLM)
    decoder = make_decoder(model)
    assert isinstance(decoder, NativeDecoder) and decoder.path == "native-q8"
    assert decoder.fused is not None and decoder.fused[0].kind == "q8"
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(6))
    with_fused, _ = prefill_and_step(decoder, ids)
    tokens = generate(model, ids, max_new_tokens=16, decoder=decoder)
    decoder.fused = None  # the per-layer path instead (kept until the weights change)
    unfused, _ = prefill_and_step(decoder, ids)
    # the same q8 products and native attention, one call per block instead of per operation
    torch.testing.assert_close(with_fused, unfused, rtol=0.03, atol=0.03)
    assert torch.equal(generate(model, ids, max_new_tokens=16, decoder=decoder), tokens)


@pytest.mark.parametrize("count", [2, 5, 8])
def test_a_few_tokens_after_a_cache_attend_natively_as_one_token_steps_do(count: int) -> None:
    kernel = native.attention_kernel(64)
    if kernel is None or native.rows_product_kernel() is None:
        pytest.skip("no AVX512-BF16 native kernels here")
    torch.manual_seed(0)
    config = GPTBigCodeConfig(vocab_size=160, n_positions=64, n_embd=256, n_layer=2, n_head=4,
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                              initializer_range=0.2)  # head_dim 64: the kernel's
    reference = GPTBigCodeForCausalLM(config).eval()
    plain = copy.deepcopy(reference).to(torch.bfloat16)
    fast = NativeDecoder(plain)
    calls = []

    def counted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                ) -> torch.Tensor:
        calls.append(q.shape)
        return kernel(q, k, v, scale)

    fast.attention = counted
    ids = torch.randint(0, 160, (1, 30 + count), generator=torch.Generator().manual_seed(1))

    def after_prompt(decoder: Decoder, one_at_a_time: bool) -> torch.Tensor:
        cache = KVCache(config, 1, 40, dtype=decoder.model.dtype)
        decoder.prefill(ids[:, :30], cache)
        if not one_at_a_time:
            return decoder.prefill(ids[:, 30:], cache, 0).float()  # (1, T, V)
        return torch.cat([decoder.prefill(ids[:, t:t + 1], cache).float()
                          for t in range(30, 30 + count)], dim=1)

    together = after_prompt(fast, one_at_a_time=False)
    assert len(calls) == count * config.n_layer  # each query of each layer on the kernel
    # The same arithmetic as one-token steps (products on the few-row kernel instead of
    # the one-row kernel: the same sums, accumulated in another order).
    torch.testing.assert_close(together, after_prompt(fast, one_at_a_time=True),
                               rtol=0.01, atol=0.01)
    exact = after_prompt(TorchDecoder(reference), one_at_a_time=False)
    plain_error = (after_prompt(TorchDecoder(plain), one_at_a_time=False) - exact).abs()
    assert (together - exact).abs().mean() <= plain_error.mean() * 1.1


# -- the choice -----------------------------------------------------------------------------


def test_auto_prefers_native_then_inductor_for_large_half_models_then_torch(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny(True)
    monkeypatch.setattr(decoders_module, "native_kind", lambda m: ("bf16", ""))
    assert decoders_module.auto_path(model) == "native"
    monkeypatch.setattr(decoders_module, "native_kind", lambda m: (None, "no kernels"))
    monkeypatch.setattr(decoders_module, "inductor_problem", lambda m: "")
    assert decoders_module.auto_path(model) == "torch"  # small: Inductor does not pay
    monkeypatch.setattr(decoders_module, "AUTO_COMPILE_PARAMETERS", 0)
    assert decoders_module.auto_path(model) == "inductor"
    assert decoders_module.auto_path(model.float()) == "torch"  # fp32: no Inductor
    monkeypatch.setattr(decoders_module, "inductor_problem", lambda m: "no compiler")
    assert decoders_module.auto_path(model.to(torch.bfloat16)) == "torch"


def test_explicit_paths_that_cannot_run_say_why() -> None:
    model = tiny(True, torch.float32)
    with pytest.raises(DecodePathUnavailable, match="'fast' is not one of"):
        make_decoder(model, "fast")
    with pytest.raises(DecodePathUnavailable, match="inductor .* float16 or bfloat16 models"):
        make_decoder(model, "inductor")
    if not torch.cuda.is_available():
        with pytest.raises(DecodePathUnavailable, match="CUDA graphs need a model on a CUDA"):
            make_decoder(model, "cuda-graph")
    # The reason named: the dtype where the kernels load, else what the CPU lacks.
    why = "float16" if native.library() is not None else re.escape(native.unavailable_reason())
    with pytest.raises(DecodePathUnavailable, match=f"native decode path cannot run: .*{why}"):
        make_decoder(model.half(), "native")
    assert make_decoder(model, "torch").path == "torch"


def test_every_decoder_has_the_protocols_methods() -> None:
    model = tiny(True, torch.float32)
    for decoder in (TorchDecoder(model), NativeDecoder(model), InductorDecoder(model),
                    GraphDecoder(model)):
        typed: Decoder = decoder
        assert typed.model is model and isinstance(typed.path, str)
        assert all(callable(getattr(typed, name)) for name in ("prefill", "start", "step"))
