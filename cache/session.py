"""One request's hold on a document's cache entry: prefill what the store lacks of a prompt,
decode steps on the entry's buffers, then commit what the entry keeps, or drop it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import torch

from model import KVCache
from model.decoders import Decoder

from .prefix import HEADROOM, CacheKey, PrefixStore


@dataclass(frozen=True)
class Prefill:
    """What bringing the entry up to date with a prompt cost, and the logits it gave."""

    logits: torch.Tensor  # (T, vocab): the positions run now, or (1, vocab) if all was cached
    reused: int  # leading tokens whose keys/values came from the store
    computed: int  # tokens the model ran now

    @property
    def next_token_logits(self) -> torch.Tensor:
        return self.logits[-1]  # (vocab,)


class CacheSession:
    """A document's entry while one request works on it.

        with store.open(key, decoder) as session:
            first = session.prefill(prompt_ids)       # reuse the cached prefix, run the rest
            logits = session.step(token)              # decode after the prompt
            session.commit()                          # keep the prompt, drop generated tokens

    `commit(keep)` truncates the buffers to their first `keep` tokens (default: the prompt)
    and records them in the store; `drop()` forgets the entry (its buffers are in doubt).
    Leaving the `with` block commits the prompt, or drops the entry after an exception.
    """

    def __init__(self, store: PrefixStore, key: CacheKey, decoder: Decoder) -> None:
        self.store, self.key, self.decoder = store, key, decoder
        self.kv: KVCache | None = None
        self.ids: list[int] = []  # what kv holds: the prompt, then each token stepped
        self.prompt_length = 0
        self.closed = False
        self._started = False  # whether the decoder took over kv for steps

    def __enter__(self) -> CacheSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.closed:
            return
        if kind is None:
            self.commit()
        else:
            self.drop()

    @property
    def length(self) -> int:
        """Tokens the buffers hold: the prompt and the tokens stepped since."""
        return len(self.ids)

    # -- work on the buffers ----------------------------------------------------------------

    def prefill(self, ids: Sequence[int], *, all_logits: bool = False) -> Prefill:
        """Reuse the stored prefix of `ids`, run the model on the rest, commit the prompt.

        Logits are those of the last position only, unless `all_logits` asks for every
        position run now.
        """
        self._check_open()
        model = self.decoder.model
        limit = model.config.n_positions
        if len(ids) > limit:
            raise ValueError(
                f"prompt for {self.key[0]} ({self.key[1]}) has {len(ids)} tokens; the model "
                f"takes at most {limit} (n_positions): lower the context budget"
            )
        entry = self.store.entry(self.key)
        if entry is not None and not fits(entry.kv, self.decoder):
            self.store.discard(self.key)  # the model was replaced (dtype, device or shape)
        found = self.store.lookup(self.key, ids)
        self.ids, self.prompt_length, self._started = list(ids), len(ids), False
        if found.logits is not None:
            assert found.kv is not None
            self.kv = found.kv
            return Prefill(found.logits[None], found.reused, 0)
        kv = found.kv
        if kv is None:
            capacity = min(limit, len(ids) + HEADROOM)
            kv = KVCache(model.config, 1, capacity, dtype=model.dtype, device=model.device)
        self.kv = kv
        todo = list(ids[found.reused :])
        pad = padding_for(len(todo), found.reused, self.decoder)
        new = torch.tensor([todo + todo[-1:] * pad], dtype=torch.long, device=kv.device)
        try:
            logits = self.decoder.prefill(new, kv, 0 if all_logits else 1 + pad)[0]
            if pad:
                kv.truncate(len(ids))  # the padding's keys and values are not the prompt's
        except BaseException:
            self.drop()  # the buffers may be half written
            raise
        logits = logits[: logits.shape[0] - pad]  # (T or 1, vocab)
        self.store.commit(self.key, ids, kv, logits[-1].clone())
        return Prefill(logits, found.reused, len(ids) - found.reused)

    def step(self, token: int) -> torch.Tensor:
        """Append `token` after what the buffers hold; the next token's logits (vocab,)."""
        self._check_open()
        if self.kv is None:
            raise RuntimeError(f"{self.key[0]} ({self.key[1]}): step before prefill")
        if not self._started:  # the prompt's K/V is handed over only when a step is taken
            self.decoder.start(self.kv)
            self._started = True
        try:
            logits = self.decoder.step(token)
        except BaseException:
            self.drop()
            raise
        self.ids.append(token)
        return logits

    # -- the end ----------------------------------------------------------------------------

    def commit(self, keep: int | None = None) -> None:
        """Keep the first `keep` tokens (default: the prompt) in the store; the buffers are
        truncated to them. The stored next-token logits stay only when `keep` is the prompt."""
        self._check_open()
        self.closed = True
        kv = self.kv
        if kv is None:
            return
        keep = self.prompt_length if keep is None else keep
        if not 0 <= keep <= len(self.ids):
            raise ValueError(f"commit(keep={keep}): the session holds {len(self.ids)} tokens")
        entry = self.store.entry(self.key)
        if entry is None or entry.kv is not kv:
            return  # evicted or discarded meanwhile: nothing to keep
        kv.truncate(keep)
        if keep == self.prompt_length:
            entry.ids = self.ids[:keep]  # the prompt, committed by prefill with its logits
            return
        if keep == 0:
            self.store.discard(self.key)
            return
        self.store.commit(self.key, self.ids[:keep], kv)

    def drop(self) -> None:
        """Forget the entry: its buffers may be half written."""
        self.closed = True
        self.store.discard(self.key)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self.key[0]} ({self.key[1]}): the cache session is closed")


def padding_for(length: int, start: int, decoder: Decoder) -> int:
    """Tokens to append to a run of `length` new tokens so that its length is one of a few
    sizes, on CPUs in reduced precision. oneDNN builds (and keeps, about 0.6 MB each) a kernel
    per matrix shape for bf16 / fp16 matmuls: a server prefilling runs of every length would
    grow by hundreds of MB. Appending tokens after the real ones changes nothing before them
    (attention is causal); their keys and values are dropped again."""
    model = decoder.model
    if model.device.type != "cpu" or model.dtype == torch.float32 or length <= 1:
        return 0
    bucket = 1 << (length - 1).bit_length() if length <= 64 else -(-length // 64) * 64
    return max(0, min(bucket, model.config.n_positions - start) - length)


def fits(kv: KVCache, decoder: Decoder) -> bool:
    """Whether the decoder's model can extend these buffers (same shape, dtype and device)."""
    model = decoder.model
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
