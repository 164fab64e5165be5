"""Warming the cache before a request asks: what to prefill (the prompt a request at a likely
cursor would have; with the prefix first, the document's text from the window's start, which
every cursor in the window shares), in chunks that newer work preempts, and whether requests
then found it (lsp_server/warming.py decides when)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from cache import CacheKey, longest_common_prefix
from cache.window import MAX_CHARS_PER_TOKEN

from .repair import split_unstable_tail
from .requests import CompletionRequest

if TYPE_CHECKING:
    from .pipeline import Engine

# A chunk is at most about this much model work (by the prefill rate measured at load; the
# size is rounded down to one of CHUNK_SIZES), so that a keystroke arriving mid-warm waits at
# most that long for the worker.
CHUNK_SECONDS = 0.1
# Chunk sizes: the lengths a reduced-precision CPU prefill is padded to anyway (session.py's
# padding_for), so no chunk computes padding it then throws away.
CHUNK_SIZES = (16, 32, 64, 128, 192, 256)
# Warmed prompts remembered per document and layout, to tell whether a request found one.
REMEMBERED = 4


@dataclass
class WarmRun:
    """What one warm of one prompt did: `before` leading ids were cached already, `reach` are
    now (the chunks done are kept even when the run was preempted)."""

    before: int = 0
    reach: int = 0
    chunks: int = 0
    computed: int = 0
    preempted: bool = False
    seconds: float = 0.0  # the chunks' model time


class WarmingBackend(Protocol):
    """A backend that can prefill a prompt into a document's cache entry ahead of a request
    (the in-process one; a serving engine is not warmed)."""

    prefill_rate: float | None

    def warm(self, key: CacheKey, ids: Sequence[int], chunk: int,
             cancelled: Callable[[], bool]) -> WarmRun: ...


@dataclass(frozen=True)
class Target:
    """Ids to warm into the entry of `key`: a request's whole prompt, or (`document`) the
    head that every cursor's prompt in the window shares."""

    key: CacheKey
    ids: list[int]
    document: bool = False


@dataclass
class WarmStats:
    """Counters for the status: warm runs, chunks and tokens computed, runs preempted between
    chunks by newer work, and hits: requests whose reused prefix reached into warmed tokens
    (`hit_tokens`: how many of those tokens they reused)."""

    runs: int = 0
    chunks: int = 0
    tokens: int = 0
    preempted: int = 0
    hits: int = 0
    hit_tokens: int = 0
    skipped: int = 0  # runs with nothing to do: all cached already, or a backend not warmed


@dataclass
class Warming:
    """The engine's warming: targets for a request, the runs, and the hit count."""

    stats: WarmStats = field(default_factory=WarmStats)
    chunk: int | None = None  # tokens per chunk, once the first chunks were timed
    # Per key, the last prompts warmed: (ids, cached before, cached after).
    _warmed: dict[CacheKey, list[tuple[list[int], int, int]]] = field(
        default_factory=dict, repr=False)

    def warm(self, engine: Engine, request: CompletionRequest, cancelled: Callable[[], bool],
             document: bool = True) -> list[WarmRun]:
        """Prefill what a request like `request` would need (and, with `document`, the
        document's head for moves within the window), stopping between chunks once
        `cancelled()`. Nothing when the backend is not warmed (a serving engine)."""
        backend = engine.backend
        if not hasattr(backend, "warm"):
            self.stats.skipped += 1
            return []
        warmer = cast(WarmingBackend, backend)
        runs: list[WarmRun] = []
        for target in self.targets(engine, request, document):
            if cancelled():
                break
            chunk = self.chunk or chunk_tokens(warmer.prefill_rate)
            run = warmer.warm(target.key, target.ids, chunk, cancelled)
            runs.append(run)
            self._count(target, run)
            self.chunk = resized(chunk, run)
            if run.preempted:
                break
        if runs and runs[-1].preempted:
            self.stats.preempted += 1
        if runs and any(run.chunks for run in runs):
            self.stats.runs += 1
        else:
            self.stats.skipped += 1
        return runs

    def targets(self, engine: Engine, request: CompletionRequest, document: bool = True
                ) -> list[Target]:
        """The prompt a request at `request.cursor` would have now (built as Engine.complete
        builds it, without moving the document's window), then, with the prefix first
        (psm_line) and `document`, the window's head: the ids before <fim_suffix> of every
        cursor's prompt until the window's start moves."""
        request = request.as_valid_unicode()
        layout = engine.layout()
        stable, _ = split_unstable_tail(engine.tokenizer, request.prefix)
        context = engine.repo_context(request)
        prompt = engine.builder.preview(request.uri, stable + request.suffix, len(stable),
                                        layout, context)
        if not prompt.ids:
            return []
        targets = [Target(prompt.key, prompt.ids)]
        fim = engine.tokenizer.fim
        if document and layout == "psm_line" and fim is not None:
            # ids = ahead (other files) + <fim_prefix> prefix <fim_suffix> suffix <fim_middle>
            # line, with prefix_tokens = len(prefix) + len(line)
            ahead = len(prompt.ids) - 3 - prompt.prefix_tokens - prompt.suffix_tokens
            room = engine.builder.budget.tokens - prompt.suffix_tokens - ahead
            text = request.text[prompt.start : prompt.start + MAX_CHARS_PER_TOKEN * room]
            head = engine.tokenizer.encode_text(text)[:room] if text else []
            ids = [*prompt.ids[:ahead], fim.prefix, *head]
            if longest_common_prefix(ids, prompt.ids) < len(ids):
                targets.append(Target(prompt.key, ids, document=True))
        return targets

    def _count(self, target: Target, run: WarmRun) -> None:
        self.stats.chunks += run.chunks
        self.stats.tokens += run.computed
        if run.reach > run.before:
            warmed = self._warmed.setdefault(target.key, [])
            warmed.append((target.ids, run.before, run.reach))
            del warmed[: max(0, len(warmed) - REMEMBERED)]

    def found(self, key: CacheKey, ids: Sequence[int], reused: int) -> None:
        """After a request: count a hit when its reused prefix reached into tokens a warm
        computed (each warmed prompt counts at most one hit)."""
        warmed = self._warmed.get(key)
        if not warmed or not reused:
            return
        best, gain = None, 0
        for index, (done, before, reach) in enumerate(warmed):
            got = min(reused, longest_common_prefix(done[:reach], ids)) - before
            if got > gain:
                best, gain = index, got
        if best is not None:
            self.stats.hits += 1
            self.stats.hit_tokens += gain
            del warmed[best]

    def forget(self, uri: str) -> None:
        for key in [key for key in self._warmed if key[0] == uri]:
            del self._warmed[key]

    def status(self) -> dict[str, Any]:
        return asdict(self.stats)


def resized(chunk: int, run: WarmRun) -> int:
    """The chunk size for the next run, from how long this run's chunks of `chunk` tokens
    took: one size up when they took under half of CHUNK_SECONDS, one down when over one and
    a half (the prefill rate measured at load is a whole window's; short runs cost more a
    token, and a busy machine makes them slower still)."""
    if not run.chunks:
        return chunk
    each = run.seconds / run.chunks
    index = max([i for i, size in enumerate(CHUNK_SIZES) if size <= chunk], default=0)
    if each < CHUNK_SECONDS / 2:
        index = min(index + 1, len(CHUNK_SIZES) - 1)
    elif each > CHUNK_SECONDS * 1.5:
        index = max(index - 1, 0)
    return CHUNK_SIZES[index]


def chunk_tokens(rate: float | None) -> int:
    """Tokens per chunk: about CHUNK_SECONDS of prefill at `rate` tokens a second (None, a
    backend that does not say: the largest size), as one of CHUNK_SIZES."""
    if not rate:
        return CHUNK_SIZES[-1]
    wanted = rate * CHUNK_SECONDS
    return max([size for size in CHUNK_SIZES if size <= wanted], default=CHUNK_SIZES[0])
