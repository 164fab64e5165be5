"""Run the model only on the part of a prompt that the prefix cache does not already hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model import GPTBigCodeForCausalLM, KVCache

from .prefix import CacheKey, PrefixCache

# Tokens of room a new entry gets beyond its prompt, so that typing and a short completion
# do not make the buffers grow (growing copies them and doubles their size).
HEADROOM = 128


@dataclass(frozen=True)
class Prefill:
    """The result of bringing one document's entry up to date with a prompt."""

    logits: torch.Tensor  # (T, vocab): the positions run now, or (1, vocab) if all was cached
    reused: int  # leading tokens whose keys/values came from the cache
    computed: int  # tokens the model ran now
    kv: KVCache  # holds the whole prompt (extend it under inference mode, then commit)

    @property
    def next_token_logits(self) -> torch.Tensor:
        return self.logits[-1]  # (vocab,)


def prefill(
    model: GPTBigCodeForCausalLM,
    cache: PrefixCache,
    key: CacheKey,
    ids: Sequence[int],
    *,
    all_logits: bool = False,
) -> Prefill:
    """Reuse the cached prefix of `ids` for `key`, run the model on the rest, update the entry.

    Logits are those of the last position only, unless `all_logits` asks for every position
    run. The work runs under `torch.inference_mode`, so the buffers are inference tensors:
    extend them (e.g. decoding) under inference mode too.
    """
    limit = model.config.n_positions
    if len(ids) > limit:
        raise ValueError(
            f"prompt for {key[0]} ({key[1]}) has {len(ids)} tokens; the model takes at most "
            f"{limit} (n_positions): lower the context budget"
        )
    entry = cache.entry(key)
    if entry is not None and not fits(entry.kv, model):
        cache.discard(key)  # the model was replaced (dtype, device or shape differs)
    found = cache.lookup(key, ids)
    if found.logits is not None:
        assert found.kv is not None
        return Prefill(found.logits[None], found.reused, 0, found.kv)
    kv = found.kv
    if kv is None:
        capacity = min(limit, len(ids) + HEADROOM)
        kv = KVCache(model.config, 1, capacity, dtype=model.dtype, device=model.device)
    todo = list(ids[found.reused :])
    pad = padding_for(len(todo), found.reused, model)
    new = torch.tensor([todo + todo[-1:] * pad], dtype=torch.long, device=kv.device)  # (1, T+pad)
    try:
        with torch.inference_mode():
            out = model(
                new, past_key_values=kv, use_cache=True,
                logits_to_keep=0 if all_logits else 1 + pad,
            )
        if pad:
            kv.truncate(len(ids))  # the padding's keys and values are not part of the prompt
    except BaseException:
        cache.discard(key)  # the buffers may be half written
        raise
    logits = out.logits[0, : out.logits.shape[1] - pad]  # (T or 1, vocab)
    cache.commit(key, ids, kv, logits[-1].clone())
    return Prefill(logits, found.reused, len(ids) - found.reused, kv)


def padding_for(length: int, start: int, model: GPTBigCodeForCausalLM) -> int:
    """Tokens to append to a run of `length` new tokens so that its length is one of a few
    sizes, on CPUs in reduced precision. oneDNN builds (and keeps, about 0.6 MB each) a kernel
    per matrix shape for bf16 / fp16 matmuls: a server prefilling runs of every length would
    grow by hundreds of MB. Appending tokens after the real ones changes nothing before them
    (attention is causal); their keys and values are dropped again."""
    if model.device.type != "cpu" or model.dtype == torch.float32 or length <= 1:
        return 0
    bucket = 1 << (length - 1).bit_length() if length <= 64 else -(-length // 64) * 64
    return max(0, min(bucket, model.config.n_positions - start) - length)


def fits(kv: KVCache, model: GPTBigCodeForCausalLM) -> bool:
    """Whether `model` can extend these buffers (same shape, dtype and device)."""
    config = model.config
    return (
        kv.batch_size == 1
        and kv.n_layer == config.n_layer
        and kv.kv_heads == config.kv_heads
        and kv.head_dim == config.head_dim
        and kv.max_length == config.n_positions
        and kv.dtype == model.dtype
        and kv.device == model.device
    )
