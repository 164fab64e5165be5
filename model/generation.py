"""Decoding on preallocated KV buffers: prefill, one-token steps, sampling, and `generate`."""

# The split follows gpt-fast: the model computes one step; these small functions drive it.
# A single sequence steps on a model.decoders Decoder (the one decode-step primitive); a
# padded batch goes through the model's forward, with its mask.

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from .decoders import Decoder, TorchDecoder
from .kv_cache import KVCache

if TYPE_CHECKING:
    from .modeling import GPTBigCodeForCausalLM


def prefill(
    model: GPTBigCodeForCausalLM,
    input_ids: torch.Tensor,
    cache: KVCache,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the prompt (or its uncached rest) through the model; next-token logits (B, V)."""
    out = model(
        input_ids, past_key_values=cache, attention_mask=attention_mask, use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def decode_one_token(
    model: GPTBigCodeForCausalLM,
    token: torch.Tensor,
    cache: KVCache,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Append one token per row (B, 1) to the cache; next-token logits (B, V). One row
    without a mask is a TorchDecoder step."""
    if token.shape[0] == 1 and attention_mask is None:
        decoder = TorchDecoder(model)
        decoder.start(cache)
        return decoder.step(int(token))[None]
    out = model(token, past_key_values=cache, attention_mask=attention_mask, use_cache=True)
    return out.logits[:, -1]


def sample(
    logits: torch.Tensor,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token per row from (B, V) logits: argmax, or sampled after
    temperature, top-k and nucleus (top-p) filtering."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens before it already cover top_p; the best one stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[:, 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model: GPTBigCodeForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | Iterable[int] | None = None,
    pad_token_id: int | None = None,
    stop_token_ids: Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    decoder: Decoder | None = None,
) -> torch.Tensor:
    """Extend each row of `input_ids` by up to `max_new_tokens`; returns (B, T + new).

    Batches are left-padded (attention_mask 0 on the left). A row that emits an EOS or stop
    token is finished; its later places hold `pad_token_id`. Decoding ends when every row is
    finished or the budget is spent. Greedy output equals transformers' `generate`.
    A single unpadded row runs on `decoder` (default: a TorchDecoder of the model).
    """
    config = model.config
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    B, T = input_ids.shape
    total = T + max_new_tokens
    if total > config.n_positions:
        raise ValueError(
            f"prompt of {T} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"n_positions ({config.n_positions})"
        )
    if eos_token_id is None:
        stops = set(config.eos_token_ids)
    else:
        stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    stops |= set(stop_token_ids or ())
    if pad_token_id is None:
        pad_token_id = config.pad_token_id
    if pad_token_id is None:
        pad_token_id = min(stops) if stops else 0
    device = input_ids.device
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)

    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = None
    if padded:
        assert attention_mask is not None
        mask = torch.ones(B, total, dtype=torch.long, device=device)
        mask[:, :T] = attention_mask
    cache = KVCache(config, B, capacity=max(total, 1), dtype=model.dtype, device=device)
    tokens = torch.full((B, total), pad_token_id, dtype=torch.long, device=device)
    tokens[:, :T] = input_ids
    if max_new_tokens == 0:
        return tokens
    finished = torch.zeros(B, dtype=torch.bool, device=device)

    if B == 1 and mask is None:
        decoder = decoder or TorchDecoder(model)
        logits = decoder.prefill(input_ids, cache, 1)[:, -1]  # (1, V)
        decoder.start(cache)
    else:
        logits = prefill(model, input_ids, cache, mask[:, :T] if mask is not None else None)
        decoder = None
    length = T
    for step in range(max_new_tokens):
        nxt = sample(
            logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=generator,
        )
        nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
        tokens[:, length] = nxt
        length += 1
        if stop_ids.numel():
            finished |= torch.isin(nxt, stop_ids)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        if decoder is not None:
            logits = decoder.step(int(nxt[0]))[None]
        else:
            logits = decode_one_token(
                model, nxt[:, None], cache, mask[:, :length] if mask is not None else None
            )
    return tokens[:, :length]
