"""When to warm the cache: when a document opens, shortly after an edit that no request followed
(the prompt at the place edited), once the server has been idle a moment after an edit or an
answer (the document's head, for moves), and when a model finishes loading (the document the
user touched last: an editor opens its files while the model still loads); one warm at a time,
stopped by anything newer. What to warm is the engine's part (engine/warming.py)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .engine import CompletionRequest, Engine
from .worker import InferenceWorker, Job

log = logging.getLogger(__name__)

# Quiet time before the document's head is warmed (after an edit or an answer): while the user
# types (a key every 100-250 ms, a request after each) it is not; a pause after deleting or
# pasting, or after reading a suggestion, is used.
IDLE_MS = 150
# Quiet time before the prompt at an edited place is warmed: an editor that asks after an edit
# asks at once (the request then runs the prompt in one pass: warming half of it first would
# add a pass); one that does not (a deletion, a paste), or a user who pauses, leaves the
# time to warm.
EDIT_MS = 50
# Documents whose last cursor is remembered, closed ones included (a reopened file is warmed
# where the client last asked).
HINTS = 256


class WarmScheduler:
    """Warms at the likeliest cursor of a document: where the client last asked or edited
    (the document's start for a file never seen). A warm runs on the inference worker in
    chunks; any job queued behind it (a keystroke's request, diagnostics) stops it between
    chunks, and a newer event on any document supersedes it. A warm that other work stopped
    goes on after that work unless something newer came."""

    def __init__(self, worker: Callable[[], InferenceWorker],
                 request_at: Callable[[str, int], CompletionRequest | None],
                 engine: Callable[[], Engine | None], enabled: Callable[[], bool]) -> None:
        self._worker, self._request_at = worker, request_at
        self._engine, self._enabled = engine, enabled
        self.hints: OrderedDict[str, int] = OrderedDict()  # uri -> character offset
        self._timer: asyncio.Task[None] | None = None
        self._job: Job[Any] | None = None
        self._uri: str | None = None
        self._latest: str | None = None  # the open document of the newest event

    @property
    def latest(self) -> str | None:
        """The open document that was opened, edited or asked about last."""
        return self._latest

    # -- events -----------------------------------------------------------------------------

    def opened(self, uri: str) -> None:
        self._latest = uri
        self._schedule(uri, 0, document=True)

    def ready(self) -> None:
        """A model finished loading: what was opened or edited meanwhile warmed nothing, so
        the document touched last is warmed now, where the client last asked in it (its
        start for a file never asked about)."""
        if self._latest is not None:
            self._schedule(self._latest, 0, document=True)

    def edited(self, uri: str, offset: int | None) -> None:
        """An edit ending at `offset` (None: unknown, e.g. the whole text replaced): the
        prompt there after EDIT_MS, the document's head once idle."""
        self._latest = uri
        if offset is not None:
            self._hint(uri, offset)
        self._schedule(uri, EDIT_MS, document=False)

    def asking(self, uri: str, offset: int) -> None:
        """A request at `offset`: a warm waiting to start is dropped; one running goes on
        until the request's job is queued behind it (and is not resumed after it: the
        answer schedules the next warm)."""
        self._latest = uri
        self._hint(uri, offset)
        self._cancel_timer()
        self._job = None

    def answered(self, uri: str) -> None:
        self._schedule(uri, IDLE_MS, document=True)

    def closed(self, uri: str) -> None:
        if self._latest == uri:
            self._latest = None
        if self._uri == uri:
            self.stop()

    def stop(self) -> None:
        self._cancel_timer()
        if self._job is not None:
            self._job.cancel()
            self._job = None

    # -- running ----------------------------------------------------------------------------

    def _hint(self, uri: str, offset: int) -> None:
        self.hints[uri] = offset
        self.hints.move_to_end(uri)
        while len(self.hints) > HINTS:
            self.hints.popitem(last=False)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, uri: str, delay_ms: int, document: bool) -> None:
        self.stop()
        if not self._enabled() or self._engine() is None:  # off, or no model (yet)
            return
        self._uri = uri
        self._timer = asyncio.ensure_future(self._later(uri, delay_ms, document))

    async def _later(self, uri: str, delay_ms: int, document: bool) -> None:
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        self._timer = None
        engine = self._engine()
        request = self._request_at(uri, self.hints.get(uri, 0))
        if engine is None or request is None or not self._enabled():
            return
        worker = self._worker()

        def warm(job: Job[Any]) -> Any:
            return engine.warm(request, lambda: job.cancelled or worker.waiting(), document)

        job = self._job = worker.submit(warm)

        def done(future: asyncio.Future[Any]) -> None:
            if self._job is not job or job.cancelled:
                return  # superseded: whatever superseded it decides what comes next
            runs = None if future.cancelled() or future.exception() else future.result()
            if runs and runs[-1].preempted:  # other work came first: go on after it
                self._schedule(uri, IDLE_MS, document)
            elif not document:  # the prompt at the edit is warm; the head once idle
                self._schedule(uri, IDLE_MS, document=True)
            else:
                self._job = None

        job.future.add_done_callback(done)
