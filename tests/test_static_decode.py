"""The CUDA-graph decoder's steps on static buffers (model.static_decode): the same logits and
cache as TorchDecoder's steps, refusals that name what is wrong, and, on a CUDA machine, the
captured graph and flash-attn's kv-cache entry point against the eager step."""

from __future__ import annotations

import pytest
import torch

from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, KVCache
from model.generation import decode_one_token
from model.modeling import flash_attn_available
from model.static_decode import GraphDecoder

CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread


def tiny(multi_query: bool = True, n_positions: int = 64, seed: int = 0
         ) -> GPTBigCodeForCausalLM:
    torch.manual_seed(seed)
    config = GPTBigCodeConfig(
        vocab_size=97, n_positions=n_positions, n_embd=64, n_layer=3, n_head=4,
        multi_query=multi_query, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return GPTBigCodeForCausalLM(config).eval()


def prefilled(model: GPTBigCodeForCausalLM, ids: torch.Tensor, capacity: int) -> KVCache:
    kv = KVCache(model.config, 1, capacity, dtype=model.dtype, device=model.device)
    with torch.inference_mode():
        model(ids.to(model.device), past_key_values=kv, logits_to_keep=1)
    return kv


@pytest.mark.parametrize("multi_query", [True, False], ids=["mqa", "mha"])
def test_static_steps_give_the_logits_and_cache_of_the_general_path(multi_query: bool) -> None:
    model = tiny(multi_query)
    ids = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(1))
    reference = prefilled(model, ids, 11)
    ours = prefilled(model, ids, 11)  # full: the steps make it grow
    decoder = GraphDecoder(model)
    decoder.start(ours)
    for token in (5, 90, 0, 42, 42, 17):
        with torch.inference_mode():
            expected = decode_one_token(model, torch.tensor([[token]]), reference)[0]
        got = decoder.step(token)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert ours.length == reference.length == 17
    filled = (slice(None),) * 4 + (slice(0, 17),)
    torch.testing.assert_close(ours.buffer[filled], reference.buffer[filled], rtol=0, atol=1e-6)


def test_steps_attend_over_the_smallest_power_of_two_span_that_holds_the_position() -> None:
    decoder = GraphDecoder(tiny(n_positions=64), min_span=8)
    assert [decoder.span(p) for p in (0, 7, 8, 15, 16, 31, 32, 63)] == [8, 8, 16, 16, 32, 32,
                                                                         64, 64]
    assert GraphDecoder(tiny(n_positions=64)).span(5) == 64  # never past n_positions
    with pytest.raises(ValueError, match="min_span"):
        GraphDecoder(tiny(), min_span=0)


def test_steps_across_span_boundaries_give_the_general_paths_logits() -> None:
    model = tiny(n_positions=128)
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(6))
    reference, ours = prefilled(model, ids, 5), prefilled(model, ids, 5)
    decoder = GraphDecoder(model, min_span=4)
    decoder.start(ours)
    spans = set()
    for token in range(40):  # positions 5 to 44: spans 8, 16, 32 and 64
        spans.add(decoder.span(ours.length))
        with torch.inference_mode():
            expected = decode_one_token(model, torch.tensor([[token]]), reference)[0]
        torch.testing.assert_close(decoder.step(token), expected, rtol=1e-5, atol=1e-5)
    assert spans == {8, 16, 32, 64}


def test_bf16_static_steps_pick_the_greedy_tokens_of_generate() -> None:
    model = tiny(seed=3).to(torch.bfloat16)
    prompt = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model.generate(prompt, max_new_tokens=12, eos_token_id=[])[0, 9:].tolist()
        kv = prefilled(model, prompt, 32)
        token = int(model(prompt).logits[0, -1].argmax())
    decoder = GraphDecoder(model)
    decoder.start(kv)
    got = [token]
    for _ in range(11):
        token = int(decoder.step(token).argmax())
        got.append(token)
    assert got == expected


def test_a_second_start_decodes_another_cache_from_its_own_prompt() -> None:
    model = tiny()
    first = prefilled(model, torch.tensor([[1, 2, 3]]), 8)
    second = prefilled(model, torch.tensor([[4, 5, 6, 7]]), 8)
    reference = prefilled(model, torch.tensor([[4, 5, 6, 7]]), 8)
    decoder = GraphDecoder(model)
    decoder.start(first)
    decoder.step(9)
    decoder.start(second)  # the workspace's rows of the first cache must not leak in
    with torch.inference_mode():
        expected = decode_one_token(model, torch.tensor([[8]]), reference)[0]
    torch.testing.assert_close(decoder.step(8), expected, rtol=1e-5, atol=1e-5)
    assert first.length == 4 and second.length == 5


def test_a_cache_changed_since_start_is_refused() -> None:
    model = tiny()
    kv = prefilled(model, torch.tensor([[1, 2, 3, 4]]), 8)
    decoder = GraphDecoder(model)
    with pytest.raises(RuntimeError, match="before start"):
        decoder.step(1)
    decoder.start(kv)
    decoder.step(5)
    kv.truncate(3)
    with pytest.raises(RuntimeError, match="holds 3 tokens but 5"):
        decoder.step(6)


def test_bad_token_full_cache_and_mismatched_cache_are_named() -> None:
    model = tiny(n_positions=6)
    decoder = GraphDecoder(model)
    with pytest.raises(ValueError, match="bfloat16 on cpu but the model is torch.float32"):
        decoder.start(KVCache(model.config, 1, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="one sequence, the cache has 2"):
        decoder.start(KVCache(model.config, 2, 4))
    kv = prefilled(model, torch.tensor([[1, 2, 3, 4, 5]]), 6)
    decoder.start(kv)
    with pytest.raises(ValueError, match=r"token id 97 is outside \[0, 97\)"):
        decoder.step(97)
    decoder.step(6)
    with pytest.raises(ValueError, match="full: 6 tokens, n_positions is 6"):
        decoder.step(7)


def test_the_decoder_follows_the_model_to_another_dtype() -> None:
    model = tiny()
    decoder = GraphDecoder(model)
    decoder.start(prefilled(model, torch.tensor([[1, 2]]), 4))
    decoder.step(3)
    model.to(torch.bfloat16)  # the same decoder: its buffers follow at the next start
    kv, reference = (prefilled(model, torch.tensor([[1, 2]]), 4) for _ in range(2))
    decoder.start(kv)
    with torch.inference_mode():
        expected = decode_one_token(model, torch.tensor([[3]]), reference)[0]
    torch.testing.assert_close(decoder.step(3), expected, rtol=0.02, atol=0.02)


def test_graph_and_flash_are_refused_where_they_cannot_run() -> None:
    model = tiny()
    if not CUDA:
        with pytest.raises(RuntimeError, match="CUDA graphs need a model on a CUDA device"):
            GraphDecoder(model, graph=True)
    with pytest.raises(RuntimeError, match="flash-attn package and a float16 or bfloat16"):
        GraphDecoder(model, attention="flash")
    with pytest.raises(ValueError, match="'paged' is not one of"):
        GraphDecoder(model, attention="paged")
    assert GraphDecoder(model).use_graph is False  # CPU: eager steps
    assert GraphDecoder(model).attention == "sdpa"
    assert GraphDecoder(model).path == "static"


def test_prefill_then_steps_follow_the_decoder_protocol() -> None:
    model = tiny()
    ids = torch.tensor([[1, 2, 3, 4]])
    reference = prefilled(model, ids, 8)
    kv = KVCache(model.config, 1, 8)
    decoder = GraphDecoder(model)
    logits = decoder.prefill(ids, kv, 2)
    assert logits.shape == (1, 2, 97) and kv.length == 4
    decoder.start(kv)
    with torch.inference_mode():
        expected = decode_one_token(model, torch.tensor([[5]]), reference)[0]
    torch.testing.assert_close(decoder.step(5), expected, rtol=1e-5, atol=1e-5)


# -- on a CUDA machine ----------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replay_gives_the_eager_steps(dtype: torch.dtype) -> None:
    model = tiny(n_positions=128).to("cuda", dtype)
    prompt = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(4))
    # min_span 16: the 24 steps (positions 20 to 43) replay the graphs of spans 32 and 64.
    eager = GraphDecoder(model, graph=False, min_span=16)
    graphed = GraphDecoder(model, graph=True, min_span=16)
    eager.start(prefilled(model, prompt, 20))
    graphed.start(prefilled(model, prompt, 20))
    token_e = token_g = 7
    for _ in range(24):
        logits_e, logits_g = eager.step(token_e), graphed.step(token_g)
        torch.testing.assert_close(logits_g, logits_e, rtol=0, atol=0)
        token_e, token_g = int(logits_e.argmax()), int(logits_g.argmax())
    assert graphed.graph is not None and graphed.path == "cuda-graph"
    assert sorted(graphed.graphs) == [32, 64]


@pytest.mark.skipif(not (CUDA and flash_attn_available()), reason="needs CUDA and flash-attn")
def test_flash_kv_cache_steps_match_masked_sdpa() -> None:
    model = tiny(n_positions=128).to("cuda", torch.bfloat16)
    prompt = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(5))
    sdpa = GraphDecoder(model, attention="sdpa", graph=False)
    flash = GraphDecoder(model, attention="flash", graph=True)
    sdpa.start(prefilled(model, prompt, 30))
    flash.start(prefilled(model, prompt, 30))
    for token in (3, 50, 61, 2, 90):
        torch.testing.assert_close(flash.step(token).float(), sdpa.step(token).float(),
                                   rtol=0.02, atol=0.02)
