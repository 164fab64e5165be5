"""When completions run: latest wins per document, one debounce, type-through, and the log of
requests the status command reports from; each open document's state in one DocumentState."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .documents import Document
from .engine import Completion, CompletionRequest, Engine, GenerationParams, OtherDocument
from .engine.candidates import Candidates, complete_many
from .options import Options
from .worker import InferenceWorker, Job

log = logging.getLogger(__name__)

# Candidates for an inline request the user invoked (LSP's InlineCompletionTriggerKind.Invoked:
# VS Code sends one when asked for the next or previous suggestion, to cycle through), when the
# candidates option asks for fewer.
INVOKED_CANDIDATES = 3


async def debounce(
    since: float | None, delay_ms: int, interrupt: asyncio.Future[None] | None = None
) -> bool:
    """Wait until `delay_ms` have passed since `since` (a time.perf_counter() reading; None:
    no wait). False when `interrupt` settled first (or already had)."""
    if since is not None and delay_ms > 0:
        left = delay_ms / 1000 - (time.perf_counter() - since)
        if left > 0 and interrupt is None:
            await asyncio.sleep(left)
        elif left > 0 and interrupt is not None:
            await asyncio.wait({interrupt}, timeout=left)
    return interrupt is None or not interrupt.done()


@dataclass(eq=False)
class Pending:
    """A completion request in flight for one document; a newer one supersedes it."""

    task: asyncio.Task[Any] | None
    superseded: asyncio.Future[None]
    job: Job[Candidates] | None = None

    def supersede(self) -> None:
        if not self.superseded.done():
            self.superseded.set_result(None)
        if self.job is not None:
            self.job.cancel()


@dataclass(frozen=True)
class Shown:
    """The last suggestions shown for a document (best first), at the text around the cursor
    then."""

    prefix: str
    suffix: str
    texts: tuple[str, ...]

    def rest(self, prefix: str, suffix: str) -> list[str] | None:
        """Type-through: the rests of the suggestions that the text typed since is a start of
        (in their order), when the text after the cursor is unchanged and the text before it
        is the old one plus what was typed; None when typing left them all."""
        if suffix != self.suffix or not prefix.startswith(self.prefix):
            return None
        typed = prefix[len(self.prefix) :]
        rests = [text[len(typed) :] for text in self.texts
                 if len(typed) < len(text) and text.startswith(typed)]
        return rests or None


@dataclass(eq=False)
class DocumentState:
    """What the server keeps of one open document besides its text (the DocumentStore's):
    forgetting the document is dropping this, and the engine's entries on the worker."""

    pending: Pending | None = None  # the completion request in flight
    shown: Shown | None = None  # the last suggestion, for type-through
    changed_at: float | None = None  # time.perf_counter() of the last didChange
    diagnostics: asyncio.Task[None] | None = None  # waiting for edits to settle, or running
    diagnostics_job: Job[Any] | None = None  # the heads' run on the worker
    published: int = 0  # diagnostics shown in the editor
    # The findings shown and the text they are positioned in, moved along with edits until
    # the heads run again (DiagnosticsService.carry_over).
    published_on: tuple[str, list[Any]] | None = None

    def changed(self) -> None:
        self.changed_at = time.perf_counter()

    def cancel_diagnostics(self) -> None:
        if self.diagnostics is not None:
            self.diagnostics.cancel()
            self.diagnostics = None
        if self.diagnostics_job is not None:
            self.diagnostics_job.cancel()
            self.diagnostics_job = None

    def drop(self) -> None:
        """Stop what runs for the document: its completion request and its diagnostics."""
        if self.pending is not None:
            self.pending.supersede()
        self.cancel_diagnostics()


# ---- completions


class CompletionScheduler:
    """Runs completion requests on the inference worker, the latest first per document, and
    logs how each was answered."""

    def __init__(
        self, worker: Callable[[], InferenceWorker], failed: Callable[[Exception], None]
    ) -> None:
        self.requests = RequestLog()
        self._worker = worker
        self._failed = failed  # shows a failure to the user
        self._failure_shown = False  # a failure was shown; no completion succeeded since

    async def suggest(
        self,
        state: DocumentState,
        document: Document,
        offset: int,
        kind: str,
        engine: Engine | None,
        options: Options,
        invoked: bool = False,
        others: tuple[OtherDocument, ...] = (),
        root: str = "",
    ) -> list[str] | None:
        """The suggestions at `offset`, best first ([] for none), or None when the request was
        not answered. Latest wins per document: this request supersedes an older one, which
        answers first, with nothing. `invoked`: the user asked (see INVOKED_CANDIDATES).
        `others`, `root`: the workspace's other open documents and its root URI."""
        started = time.perf_counter()
        pending = Pending(asyncio.current_task(), asyncio.get_running_loop().create_future())
        older, state.pending = state.pending, pending
        try:
            if older is not None:
                older.supersede()
                if older.task is not None and not older.task.done():
                    await asyncio.wait({older.task})  # its empty answer goes out first
            count = max(options.candidates, INVOKED_CANDIDATES if invoked else 1)
            request = CompletionRequest(document.uri, document.text, offset,
                                        document.language_id or "python", others, root)
            return await self._suggest(state, request, pending, kind, engine, options, count,
                                       started)
        except asyncio.CancelledError:  # $/cancelRequest: pygls answers RequestCancelled
            pending.supersede()
            if pending.job is not None:
                self._record_when_done(pending.job, kind, started, "cancelled")
            else:
                self.record(kind, started, "cancelled")
            raise
        finally:
            if state.pending is pending:
                state.pending = None

    async def _suggest(
        self,
        state: DocumentState,
        request: CompletionRequest,
        pending: Pending,
        kind: str,
        engine: Engine | None,
        options: Options,
        count: int,
        started: float,
    ) -> list[str] | None:
        prefix, suffix = request.prefix, request.suffix
        through = state.shown.rest(prefix, suffix) if state.shown is not None else None
        if pending.superseded.done():
            self.record(kind, started, "superseded")
            return None
        if through is not None:
            self.record(kind, started, "typeThrough", chars=len(through[0]))
            return through
        if engine is None:
            self.record(kind, started, "notReady")
            return None
        if not await debounce(state.changed_at, options.debounce_ms, pending.superseded):
            self.record(kind, started, "superseded")
            return None
        params = GenerationParams.from_options(options)
        job = self._worker().submit(
            lambda job: complete_many(engine, request, params, count, lambda: job.cancelled)
        )
        pending.job = job
        either: set[asyncio.Future[Any]] = {job.future, pending.superseded}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if pending.superseded.done():
            self._record_when_done(job, kind, started, "superseded")
            return None
        try:
            candidates = job.future.result()
        except Exception as error:
            log.exception("completion failed for %s", request.uri)
            self.record(kind, started, "error")
            if not self._failure_shown:  # more failures before a success go to the log only
                self._failure_shown = True
                self._failed(error)
            return None
        self._failure_shown = False
        texts = candidates.texts
        state.shown = Shown(prefix, suffix, tuple(texts)) if texts else None
        self.record(kind, started, "model", candidates)
        return texts

    def _record_when_done(
        self, job: Job[Candidates], kind: str, started: float, outcome: str
    ) -> None:
        """Record an abandoned job once the worker has stopped it, with the steps it ran."""

        def done(future: asyncio.Future[Candidates]) -> None:
            ran = None if future.cancelled() or future.exception() else future.result()
            self.record(kind, started, outcome, ran)

        job.future.add_done_callback(done)

    def record(
        self,
        kind: str,
        started: float,
        outcome: str,
        candidates: Candidates | None = None,
        chars: int = 0,
    ) -> None:
        """Log a request; with `candidates`, what all its runs cost together, the first run's
        stop reason and the first suggestion's length."""
        total = (time.perf_counter() - started) * 1000
        if candidates is None:
            self.requests.add(RequestRecord(kind, outcome, total, chars=chars))
            return
        ran: Completion = candidates.total()
        self.requests.add(RequestRecord(
            kind, outcome, total, ran.model_ms, ran.model_steps, ran.new_tokens,
            ran.reused_tokens, ran.computed_tokens, ran.stop_reason,
            len(candidates.shown[0].text) if candidates.shown else 0, len(candidates.shown),
            len(candidates.runs),
        ))


# ---- request log


@dataclass(frozen=True)
class RequestRecord:
    """One completion request as the server answered it."""

    kind: str  # "inline" or "completion"
    outcome: str  # model, typeThrough, superseded, cancelled, notReady, unknownDocument, error
    total_ms: float  # from the handler's start to its result
    model_ms: float = 0.0
    model_steps: int = 0
    new_tokens: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    stop_reason: str = ""  # of the first run
    chars: int = 0  # of the (first) suggestion
    candidates: int = 0  # suggestions answered
    runs: int = 0  # generations run for them (costs above are of all of them)


ANSWERED = frozenset({"model", "typeThrough"})


@dataclass
class RequestLog:
    """The latest requests, for latency percentiles and the status command."""

    size: int = 2048
    records: deque[RequestRecord] = field(default_factory=deque)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)
        while len(self.records) > self.size:
            self.records.popleft()
        self.counts[record.outcome] = self.counts.get(record.outcome, 0) + 1

    def latency(self) -> dict[str, float | int | None]:
        """p50 / p95 of the latency of answered requests (by the model or by type-through)
        and of their model time, in ms."""
        answered = [r for r in self.records if r.outcome in ANSWERED]
        totals = [r.total_ms for r in answered]
        models = [r.model_ms for r in answered]
        return {
            "count": len(totals),
            "p50": percentile(totals, 50),
            "p95": percentile(totals, 95),
            "modelP50": percentile(models, 50),
            "modelP95": percentile(models, 95),
        }


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
