"""The prefix store: longest common prefix, lookup and commit, byte accounting, LRU eviction
under separate budgets, and cache sessions driving a small random model through it."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch

from cache import CacheKey, PrefixStore, longest_common_prefix
from cache.session import padding_for
from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, KVCache
from model.decoders import make_decoder

CONFIG = GPTBigCodeConfig(
    vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, multi_query=True,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    initializer_range=0.3,  # peaked attention: a wrong position or mask shows in the logits
)
DOC_A, DOC_B, DOC_C = (("file:///a.py", "spm"), ("file:///b.py", "spm"), ("file:///c.py", "spm"))


def written_kv(length: int, capacity: int | None = None, device: str = "cpu") -> KVCache:
    """Buffers as the model leaves them after processing `length` tokens."""
    kv = KVCache(CONFIG, capacity=capacity or max(length, 1), device=device)
    kv.length = length
    return kv


@dataclass(frozen=True)
class Filled:
    logits: torch.Tensor
    reused: int
    computed: int
    kv: KVCache

    @property
    def next_token_logits(self) -> torch.Tensor:
        return self.logits[-1]


def prefill(model: GPTBigCodeForCausalLM, store: PrefixStore, key: CacheKey, ids: Sequence[int],
            all_logits: bool = False) -> Filled:
    """One request's prompt through a cache session, committed."""
    with store.open(key, make_decoder(model, "torch")) as session:
        got = session.prefill(ids, all_logits=all_logits)
    assert session.kv is not None
    return Filled(got.logits, got.reused, got.computed, session.kv)


def real_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.fixture(scope="module")
def lm() -> GPTBigCodeForCausalLM:
    torch.manual_seed(0)
    return GPTBigCodeForCausalLM(CONFIG, attn_implementation="sdpa").eval()


# -- longest common prefix ------------------------------------------------------------------


def test_longest_common_prefix_agrees_with_an_item_by_item_scan() -> None:
    rng = random.Random(1)
    for _ in range(200):
        a = [rng.randrange(5) for _ in range(rng.choice([0, 3, 40, 1500, 3000]))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(5) for _ in range(rng.randrange(50))]
        pairs = enumerate(zip(a, b, strict=False))
        expected = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
        assert longest_common_prefix(a, b) == expected
        assert longest_common_prefix("".join(map(str, a)), "".join(map(str, b))) == expected


# -- lookup and commit ----------------------------------------------------------------------


def test_unknown_document_is_a_miss() -> None:
    cache = PrefixStore()
    found = cache.lookup(DOC_A, [1, 2, 3])
    assert (found.kv, found.reused, found.logits) == (None, 0, None)
    assert (cache.stats.misses, cache.stats.hits) == (1, 0)


def test_keystroke_reuses_common_prefix_and_truncates_kv() -> None:
    cache = PrefixStore()
    ids = list(range(1, 41))
    kv = written_kv(40)
    cache.commit(DOC_A, ids, kv, torch.zeros(CONFIG.vocab_size))
    found = cache.lookup(DOC_A, ids[:25] + [90, 91])
    assert found.kv is kv and found.reused == 25 and found.logits is None
    assert kv.length == 25
    entry = cache.entry(DOC_A)
    assert entry is not None and entry.ids == ids[:25] and entry.logits is None
    assert (cache.stats.hits, cache.stats.tokens_reused, cache.stats.tokens_computed) == (1, 25, 40)


def test_unchanged_prompt_returns_the_kept_next_token_logits() -> None:
    cache = PrefixStore()
    logits = torch.randn(CONFIG.vocab_size)
    cache.commit(DOC_A, [5, 6, 7], written_kv(3), logits)
    found = cache.lookup(DOC_A, [5, 6, 7])
    assert found.reused == 3 and found.logits is logits


def test_prompt_that_is_a_strict_prefix_leaves_its_last_token_to_run() -> None:
    cache = PrefixStore()
    cache.commit(DOC_A, [5, 6, 7, 8, 9], written_kv(5), torch.zeros(CONFIG.vocab_size))
    found = cache.lookup(DOC_A, [5, 6, 7])
    assert found.reused == 2 and found.logits is None and found.kv is not None
    assert found.kv.length == 2


def test_unchanged_prompt_without_kept_logits_reruns_one_token() -> None:
    cache = PrefixStore()
    cache.commit(DOC_A, [5, 6, 7], written_kv(3))
    assert cache.lookup(DOC_A, [5, 6, 7]).reused == 2


def test_commit_counts_only_tokens_beyond_the_entry_as_computed() -> None:
    cache = PrefixStore()
    kv = written_kv(10, capacity=20)
    cache.commit(DOC_A, list(range(10)), kv)
    cache.lookup(DOC_A, list(range(8)) + [50, 51, 52])
    kv.length = 11
    cache.commit(DOC_A, list(range(8)) + [50, 51, 52], kv)
    assert cache.stats.tokens_computed == 10 + 3
    assert cache.stats.tokens_reused == 8


def test_commit_rejects_ids_that_disagree_with_the_buffers() -> None:
    with pytest.raises(ValueError, match="hold 4 tokens but 3 ids"):
        PrefixStore().commit(DOC_A, [1, 2, 3], written_kv(4))


def test_empty_prompt_is_rejected_naming_the_document() -> None:
    with pytest.raises(ValueError, match="a.py"):
        PrefixStore().lookup(DOC_A, [])


# -- bytes and eviction ---------------------------------------------------------------------


def test_reported_bytes_equal_the_buffers_real_size() -> None:
    cache = PrefixStore()
    kv_a, kv_b = written_kv(10, capacity=16), written_kv(30, capacity=48)
    logits = torch.randn(CONFIG.vocab_size)
    cache.commit(DOC_A, list(range(10)), kv_a, logits)
    cache.commit(DOC_B, list(range(30)), kv_b)
    assert cache.stats.cpu_bytes == real_bytes(kv_a.buffer, logits, kv_b.buffer)
    assert cache.stats.gpu_bytes == 0 and cache.stats.entries == 2
    kv_a.reserve(40)  # the model grows the buffers when a prompt outgrows them
    kv_a.length = 40
    cache.commit(DOC_A, list(range(40)), kv_a)
    assert kv_a.capacity >= 40
    assert cache.stats.cpu_bytes == real_bytes(kv_a.buffer, kv_b.buffer)


def test_opening_a_third_document_evicts_the_least_recently_used() -> None:
    size = written_kv(32).nbytes
    cache = PrefixStore(cpu_bytes=2 * size)
    cache.commit(DOC_A, list(range(32)), written_kv(32))
    cache.commit(DOC_B, list(range(32)), written_kv(32))
    cache.lookup(DOC_A, list(range(33)))  # a keystroke in A: B is now the older
    cache.commit(DOC_A, list(range(32)), written_kv(32))
    cache.commit(DOC_C, list(range(32)), written_kv(32))
    assert cache.keys() == [DOC_A, DOC_C]
    assert cache.stats.evictions == 1
    assert cache.stats.cpu_bytes == 2 * size and cache.stats.entries == 2


def test_entry_larger_than_the_whole_budget_is_not_kept() -> None:
    cache = PrefixStore(cpu_bytes=written_kv(8).nbytes)
    cache.commit(DOC_A, list(range(32)), written_kv(32))
    assert len(cache) == 0 and cache.stats.evictions == 1 and cache.stats.cpu_bytes == 0


def test_gpu_and_cpu_budgets_are_counted_apart() -> None:
    # Meta tensors stand in for accelerator memory: they have sizes but no data.
    size = written_kv(32).nbytes
    cache = PrefixStore(gpu_bytes=size, cpu_bytes=size)
    cache.commit(DOC_A, list(range(32)), written_kv(32, device="meta"))
    cache.commit(DOC_B, list(range(32)), written_kv(32))
    assert (cache.stats.gpu_bytes, cache.stats.cpu_bytes, cache.stats.evictions) == (size, size, 0)
    cache.commit(DOC_C, list(range(32)), written_kv(32))
    assert cache.keys() == [DOC_A, DOC_C] and cache.stats.evictions == 1


def test_closing_a_document_drops_all_its_layouts() -> None:
    cache = PrefixStore()
    cache.commit(("file:///a.py", "spm"), [1, 2], written_kv(2))
    cache.commit(("file:///a.py", "plain"), [1, 2], written_kv(2))
    kept = written_kv(2)
    cache.commit(DOC_B, [1, 2], kept)
    assert cache.drop("file:///a.py") == 2
    assert cache.keys() == [DOC_B]
    assert cache.stats.entries == 1 and cache.stats.cpu_bytes == kept.nbytes
    assert cache.stats.evictions == 0


def test_stats_snapshot_does_not_follow_later_work() -> None:
    cache = PrefixStore()
    cache.commit(DOC_A, [1, 2], written_kv(2))
    before = cache.stats.snapshot()
    cache.lookup(DOC_A, [1, 2, 3])
    assert before.hits == 0 and cache.stats.hits == 1


# -- prefill with a model -------------------------------------------------------------------


def test_prefill_grows_buffers_too_small_for_the_new_prompt(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    ids = torch.randint(0, CONFIG.vocab_size, (60,), generator=torch.Generator().manual_seed(2))
    cache.commit(DOC_A, [], KVCache(CONFIG, capacity=4))
    first = prefill(lm, cache, DOC_A, ids[:3].tolist())
    assert first.kv.capacity == 4 and first.reused == 0
    grown = prefill(lm, cache, DOC_A, ids.tolist(), all_logits=True)
    assert grown.kv is first.kv and grown.kv.capacity >= 60 and grown.reused == 3
    full = lm(ids[None]).logits[0]
    torch.testing.assert_close(grown.logits, full[3:])
    assert cache.stats.cpu_bytes == grown.kv.nbytes + CONFIG.vocab_size * 4


def test_prefill_of_an_unchanged_prompt_runs_nothing(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    ids = [3, 14, 15, 92, 65, 35]
    first = prefill(lm, cache, DOC_A, ids)
    computed = cache.stats.tokens_computed
    again = prefill(lm, cache, DOC_A, ids)
    assert again.reused == 6 and again.computed == 0
    assert cache.stats.tokens_computed == computed == 6
    torch.testing.assert_close(again.next_token_logits, first.next_token_logits)


def test_prefill_after_deleting_the_end_recomputes_one_token(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    ids = [3, 14, 15, 92, 65, 35, 89, 79]
    prefill(lm, cache, DOC_A, ids)
    shorter = prefill(lm, cache, DOC_A, ids[:5])
    assert shorter.reused == 4 and shorter.computed == 1
    torch.testing.assert_close(
        shorter.next_token_logits, lm(torch.tensor([ids[:5]])).logits[0, -1]
    )


def test_prefill_rejects_a_prompt_longer_than_n_positions(lm: GPTBigCodeForCausalLM) -> None:
    with pytest.raises(ValueError, match=r"a\.py.*65 tokens.*at most 64 \(n_positions\)"):
        prefill(lm, PrefixStore(), DOC_A, [1] * 65)


def test_failed_forward_drops_the_entry_it_left_in_doubt(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    prefill(lm, cache, DOC_A, [1, 2, 3])
    with pytest.raises(ValueError, match="outside"):
        prefill(lm, cache, DOC_A, [1, 2, 3, CONFIG.vocab_size + 5])
    assert DOC_A not in cache and cache.stats.entries == 0


def test_entry_from_a_model_of_another_dtype_is_rebuilt(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    stale = KVCache(CONFIG, capacity=2, dtype=torch.bfloat16)
    stale.length = 2
    cache.commit(DOC_A, [1, 2], stale)
    result = prefill(lm, cache, DOC_A, [1, 2, 3])
    assert result.reused == 0 and result.kv.dtype == torch.float32


def test_tokens_generated_in_a_session_are_not_reused(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    ids = [3, 14, 15, 92, 65]
    with cache.open(DOC_A, make_decoder(lm, "torch")) as session:  # a completion decoded
        session.prefill(ids)
        session.step(7)
        session.step(8)
        assert session.length == 7
    again = prefill(lm, cache, DOC_A, ids)
    assert again.computed == 0 and again.kv.length == 5
    extended = prefill(lm, cache, DOC_A, [*ids, 9, 9], all_logits=True)
    assert extended.reused == 5
    torch.testing.assert_close(extended.logits, lm(torch.tensor([[*ids, 9, 9]])).logits[0, 5:])


def test_a_session_may_keep_what_it_generated(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    ids = [3, 14, 15, 92, 65]
    with cache.open(DOC_A, make_decoder(lm, "torch")) as session:
        session.prefill(ids)
        session.step(7)
        session.step(8)
        session.commit(keep=6)
    assert cache.entry(DOC_A) is not None and cache.entry(DOC_A).ids == [*ids, 7]
    again = prefill(lm, cache, DOC_A, [*ids, 7, 9], all_logits=True)
    assert again.reused == 6 and again.computed == 1
    torch.testing.assert_close(again.logits, lm(torch.tensor([[*ids, 7, 9]])).logits[0, 6:])


def test_buffers_extended_behind_the_store_are_refused(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    first = prefill(lm, cache, DOC_A, [3, 14, 15])
    with torch.inference_mode():  # decoded on the entry's buffers outside a session
        lm(torch.tensor([[7, 8]]), past_key_values=first.kv, use_cache=True)
    with pytest.raises(RuntimeError, match="5 tokens but 3 ids.*CacheSession"):
        cache.lookup(DOC_A, [3, 14, 15])


def test_a_closed_session_refuses_more_work(lm: GPTBigCodeForCausalLM) -> None:
    cache = PrefixStore()
    with cache.open(DOC_A, make_decoder(lm, "torch")) as session:
        session.prefill([1, 2, 3])
    with pytest.raises(RuntimeError, match="session is closed"):
        session.step(4)


@pytest.mark.parametrize("lengths, pad", [((5, 3), 1), ((37, 70), 58), ((100, 1), 0),
                                         ((9, 120), 8), ((3, 33), 31)])
def test_bf16_runs_are_padded_to_few_shapes_without_changing_the_result(
    lengths: tuple[int, int], pad: int,
) -> None:
    """On the CPU in bf16 a run of new tokens is padded to a bucket length (oneDNN keeps a
    kernel per shape); the logits and the buffers then equal an unpadded run's."""
    config = GPTBigCodeConfig(vocab_size=97, n_positions=256, n_embd=32, n_layer=2, n_head=4,
                              multi_query=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPTBigCodeForCausalLM(config).eval().to(torch.bfloat16)
    first, second = lengths
    ids = torch.randint(0, 97, (first + second,)).tolist()
    # to 4, 128, -, 128, 64 tokens
    assert padding_for(second, first, make_decoder(model, "torch")) == pad
    cache = PrefixStore()
    prefill(model, cache, ("doc", "plain"), ids[:first])
    padded = prefill(model, cache, ("doc", "plain"), ids, all_logits=True)
    assert padded.kv.length == len(ids) and padded.logits.shape == (second, 97)
    plain = KVCache(config, 1, 256, dtype=torch.bfloat16)
    with torch.inference_mode():
        model(torch.tensor([ids[:first]]), past_key_values=plain, use_cache=True)
        expected = model(torch.tensor([ids[first:]]), past_key_values=plain, use_cache=True)
    torch.testing.assert_close(padded.logits, expected.logits[0], rtol=0.02, atol=0.02)
    torch.testing.assert_close(padded.kv.buffer[..., : len(ids), :],
                               plain.buffer[..., : len(ids), :], rtol=0.02, atol=0.02)


def test_float32_and_single_tokens_are_never_padded() -> None:
    config = GPTBigCodeConfig(vocab_size=97, n_positions=64, n_embd=32, n_layer=1, n_head=4)
    model = GPTBigCodeForCausalLM(config).eval()
    assert padding_for(37, 0, make_decoder(model, "torch")) == 0
    assert padding_for(1, 0, make_decoder(model.to(torch.bfloat16), "torch")) == 0
    # 32 would pass n_positions (64): 24 left
    assert padding_for(20, 40, make_decoder(model, "torch")) == 4
