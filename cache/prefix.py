"""The store of each document's processed token ids and KV buffers, reused by longest common
prefix and evicted least-recently-used under separate GPU and CPU byte budgets."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, TypeVar

import torch

from model import KVCache

if TYPE_CHECKING:
    from model.decoders import Decoder

    from .session import CacheSession

log = logging.getLogger(__name__)

CacheKey = tuple[str, str]  # (document uri, layout name)
MemoryKind = Literal["gpu", "cpu"]
T = TypeVar("T")

# Tokens of room an entry's buffers get beyond its prompt, so that typing and a short
# completion do not make them grow (growing copies them).
HEADROOM = 128
# An entry that holds at least this many tokens more than a new prompt of its document needs
# (the prompt moved back in the file) is kept whole as the document's spare, and the prompt
# works on a copy of the common part: moving forward again reuses the spare's long prefix.
SPARE_MIN_TOKENS = 64


def longest_common_prefix(a: Sequence[T], b: Sequence[T]) -> int:
    """How many leading items two lists (or strings) share."""
    n = min(len(a), len(b))
    matched = 0
    # Slice equality runs in C; shrinking chunks leave at most a few dozen Python steps.
    for chunk in (1024, 32, 1):
        while matched + chunk <= n and a[matched : matched + chunk] == b[matched : matched + chunk]:
            matched += chunk
    return matched


def memory_kind(device: torch.device) -> MemoryKind:
    """Which byte budget a tensor on `device` counts against."""
    return "cpu" if device.type == "cpu" else "gpu"


@dataclass
class CacheStats:
    """Counters of a PrefixStore. A hit is a lookup that reused at least one token."""

    entries: int = 0
    gpu_bytes: int = 0
    cpu_bytes: int = 0
    hits: int = 0
    misses: int = 0
    tokens_reused: int = 0
    tokens_computed: int = 0
    evictions: int = 0

    def snapshot(self) -> CacheStats:
        """A copy that later work does not change."""
        return replace(self)


@dataclass
class CacheEntry:
    """Token ids whose keys/values `kv` holds, in order, and the logits that follow them."""

    ids: list[int]
    kv: KVCache
    logits: torch.Tensor | None = None  # (vocab,) next-token logits after ids[-1], when kept

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held: the whole KV buffer (capacity, not length) and logits."""
        logits = 0 if self.logits is None else self.logits.numel() * self.logits.element_size()
        return self.kv.nbytes + logits

    @property
    def memory(self) -> MemoryKind:
        return memory_kind(self.kv.device)


@dataclass(frozen=True)
class Lookup:
    """What the cache already holds of a prompt.

    The caller runs the model on `ids[reused:]` with `kv` (None on a cold miss: make one),
    unless `logits` is set: then the whole prompt was cached and these are its next-token
    logits.
    """

    kv: KVCache | None
    reused: int
    logits: torch.Tensor | None = None


class PrefixStore:
    """Entries per (document uri, layout), least recently used evicted first.

    Besides the entry a request works on, a key may hold spares: with `spares=1` (True) one,
    the longest prompt of the document computed so far, kept whole when a later prompt shared
    less of it (a cursor moved back); with `spares=n > 1` up to n, each an entry that held at
    least SPARE_MIN_TOKENS beyond what a later prompt shared with it (a far move, a warmed
    document prefix beside the prompt being typed at), the least recently used dropped first.
    A lookup starts from whichever shares most with the prompt. Spares are evicted before
    entries (`spares=False`: none are kept). `gpu_bytes` and `cpu_bytes` bound the bytes of
    entries and spares whose buffers live in that memory (None: no bound). An
    entry's ids always equal what its buffers hold: a request works on an entry through a
    CacheSession (cache/session.py), which commits or drops it at the end. One inference
    worker owns a store; it takes no locks.
    """

    def __init__(self, *, gpu_bytes: int | None = None, cpu_bytes: int | None = None,
                 spares: int = 1) -> None:
        for name, value in (("gpu_bytes", gpu_bytes), ("cpu_bytes", cpu_bytes)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")
        self.budgets: dict[MemoryKind, int | None] = {"gpu": gpu_bytes, "cpu": cpu_bytes}
        self.stats = CacheStats()
        if int(spares) < 0:
            raise ValueError(f"spares must be >= 0, got {spares}")
        self.max_spares = int(spares)  # per key; 0 (False): one entry, truncated in place
        self.keeps_spares = self.max_spares > 0
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        # Per key, least recently made or used first (one entry each while max_spares is 1).
        self._spares: OrderedDict[CacheKey, list[CacheEntry]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[CacheKey]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def entry(self, key: CacheKey) -> CacheEntry | None:
        """The entry for `key`, without touching its recency or the stats."""
        return self._entries.get(key)

    def spare(self, key: CacheKey) -> CacheEntry | None:
        """The most recent spare for `key` (see the class), without touching recency or the
        stats."""
        held = self._spares.get(key)
        return held[-1] if held else None

    def spares(self, key: CacheKey) -> list[CacheEntry]:
        """Every spare of `key`, least recently made or used first."""
        return list(self._spares.get(key, ()))

    def held(self, key: CacheKey, ids: Sequence[int]) -> int:
        """How many leading `ids` the key's entry or a spare holds already (nothing changes)."""
        entry = self._entries.get(key)
        found = [entry] if entry is not None else []
        return max((longest_common_prefix(e.ids, ids)
                    for e in (*found, *self._spares.get(key, ()))), default=0)

    # -- reuse ------------------------------------------------------------------------------

    def open(self, key: CacheKey, decoder: Decoder) -> CacheSession:
        """A session on `key`'s entry for one request (see CacheSession)."""
        from .session import CacheSession  # the session module builds on this one

        return CacheSession(self, key, decoder)

    def lookup(self, key: CacheKey, ids: Sequence[int]) -> Lookup:
        """Keep the longest common prefix of the cached ids and `ids`, forget the rest (or,
        when the entry reaches much further than `ids`, keep it whole as the spare and give
        the prompt a copy of the common part; see the class).

        At least one token is left to run unless the cached ids equal `ids` and their
        next-token logits were kept.
        """
        if not ids:
            raise ValueError(f"empty prompt for {key[0]} ({key[1]})")
        entry, common = self._best(key, ids)
        if entry is None:
            self.stats.misses += 1
            return Lookup(kv=None, reused=0)
        self._entries.move_to_end(key)
        if common == len(ids) == len(entry.ids) and entry.logits is not None:
            self._count_reuse(common)
            return Lookup(kv=entry.kv, reused=common, logits=entry.logits)
        reused = min(common, len(ids) - 1)
        if self._keeps_whole(key, entry, len(ids), reused):
            self._add_spare(key, entry)  # kept whole; the prompt works on a copy
            entry = self._entries[key] = fork(entry, reused, len(ids) + HEADROOM)
        else:
            del entry.ids[reused:]
            entry.kv.truncate(reused)
            entry.logits = None
        self._count_reuse(reused)
        self._refresh()
        return Lookup(kv=entry.kv, reused=reused)

    def _best(self, key: CacheKey, ids: Sequence[int]) -> tuple[CacheEntry | None, int]:
        """Of `key`'s entry and spares, the one sharing the longest prefix with `ids` (the
        entry on a tie, else the least recent spare), made the entry (the entry becoming a
        spare); and how many leading ids it shares."""
        entry = self._entries.get(key)
        if entry is not None and entry.kv.length != len(entry.ids):
            raise RuntimeError(
                f"{key[0]} ({key[1]}): the entry's buffers hold {entry.kv.length} tokens but "
                f"{len(entry.ids)} ids were committed; extend buffers through a CacheSession"
            )
        common = -1 if entry is None else longest_common_prefix(entry.ids, ids)
        best = None
        for spare in self._spares.get(key, ()):
            shared = longest_common_prefix(spare.ids, ids)
            if shared > common:
                best, common = spare, shared
        if best is not None:  # the spare becomes the entry, the entry a spare
            held = self._spares[key]
            held[:] = [spare for spare in held if spare is not best]
            if not held:
                del self._spares[key]
            if entry is not None:
                self._add_spare(key, entry)
            self._entries[key] = entry = best
        return entry, common

    def _keeps_whole(self, key: CacheKey, entry: CacheEntry, length: int, reused: int) -> bool:
        """Whether a lookup of a `length`-token prompt sharing `reused` tokens with `entry`
        keeps the entry whole as a spare (see the class) rather than truncating it."""
        if self.max_spares == 1:
            spare = self.spare(key)
            return len(entry.ids) >= length + SPARE_MIN_TOKENS and (
                spare is None or len(entry.ids) >= len(spare.ids))
        return self.max_spares > 1 and len(entry.ids) - reused >= SPARE_MIN_TOKENS

    def _add_spare(self, key: CacheKey, entry: CacheEntry) -> None:
        """Keep `entry` as the key's most recent spare, dropping the least recent beyond
        max_spares."""
        held = self._spares.setdefault(key, [])
        held.append(entry)
        del held[: max(0, len(held) - self.max_spares)]
        self._spares.move_to_end(key)

    def _count_reuse(self, reused: int) -> None:
        if reused:
            self.stats.hits += 1
            self.stats.tokens_reused += reused
        else:
            self.stats.misses += 1

    def commit(
        self,
        key: CacheKey,
        ids: Sequence[int],
        kv: KVCache,
        logits: torch.Tensor | None = None,
    ) -> None:
        """Record that `kv` now holds the keys/values of `ids` (and `logits` follow them).

        Tokens beyond what the entry held are counted as computed. Evicts least recently
        used entries while the memory `kv` lives in is over its budget.
        """
        if kv.length != len(ids):
            raise ValueError(
                f"{key[0]} ({key[1]}): the KV buffers hold {kv.length} tokens but "
                f"{len(ids)} ids were given"
            )
        if logits is not None and logits.dim() != 1:
            raise ValueError(f"logits must be (vocab,), got shape {tuple(logits.shape)}")
        old = self._entries.pop(key, None)
        held = len(old.ids) if old is not None and old.kv is kv else 0
        entry = CacheEntry(ids=list(ids), kv=kv, logits=logits)
        self._entries[key] = entry
        self.stats.tokens_computed += len(ids) - held
        self._evict(entry.memory, newest=key)
        self._refresh()

    # -- removal ----------------------------------------------------------------------------

    def drop(self, uri: str) -> int:
        """Forget every layout's entry of a document (it was closed); how many there were."""
        keys = [key for key in self._entries if key[0] == uri]
        for key in {*keys, *(key for key in self._spares if key[0] == uri)}:
            self.discard(key)
        return len(keys)

    def discard(self, key: CacheKey) -> None:
        """Forget one key's entry and spare, if present (e.g. after a failed forward left the
        entry in doubt, or the model was replaced)."""
        self._entries.pop(key, None)
        self._spares.pop(key, None)
        self._refresh()

    def clear(self) -> None:
        for key in {*self._entries, *self._spares}:
            self.discard(key)

    def _evict(self, memory: MemoryKind, newest: CacheKey) -> None:
        budget = self.budgets[memory]
        if budget is None:
            return
        for key in list(self._spares):  # spares first, least recently made first
            for spare in list(self._spares[key]):
                if self.held_bytes(memory) <= budget:
                    return
                if spare.memory == memory:
                    self._spares[key] = [s for s in self._spares[key] if s is not spare]
                    self.stats.evictions += 1
            if not self._spares[key]:
                del self._spares[key]
        for key in list(self._entries):  # least recently used first
            if self.held_bytes(memory) <= budget:
                return
            entry = self._entries[key]
            if entry.memory != memory:
                continue
            if key == newest:
                log.warning(
                    "the %s cache budget (%d bytes) cannot hold one entry of %d bytes (%s); "
                    "nothing is kept", memory, budget, entry.nbytes, key[0],
                )
            self.discard(key)
            self.stats.evictions += 1

    # -- accounting -------------------------------------------------------------------------

    def held_bytes(self, memory: MemoryKind) -> int:
        """Bytes the entries and spares hold now in that memory (buffers may have grown since
        a commit)."""
        held = (*self._entries.values(), *(s for ss in self._spares.values() for s in ss))
        return sum(e.nbytes for e in held if e.memory == memory)

    def _refresh(self) -> None:
        # Recounted rather than adjusted: a KV buffer grows in place when the model writes
        # past its capacity, so an entry's size is only known by asking it.
        self.stats.entries = len(self._entries) + sum(map(len, self._spares.values()))
        self.stats.gpu_bytes = self.held_bytes("gpu")
        self.stats.cpu_bytes = self.held_bytes("cpu")


def fork(entry: CacheEntry, length: int, capacity: int) -> CacheEntry:
    """A new entry holding a copy of `entry`'s first `length` tokens, in buffers with room
    for `capacity` (the original is left as it is)."""
    source = entry.kv
    kv = copy.copy(source)  # the same shape and dtype; its own buffer below
    shape = list(source.buffer.shape)  # (L, 2, B, KVH, capacity, D)
    shape[4] = min(max(capacity, length, 1), source.max_length)
    kv.buffer = source.buffer.new_empty(shape)
    kv.buffer[:, :, :, :, :length] = source.buffer[:, :, :, :, :length]
    kv.length = length
    return CacheEntry(ids=entry.ids[:length], kv=kv)
