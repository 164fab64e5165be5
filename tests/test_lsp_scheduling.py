"""Scheduling without a model or a client: latest wins, the debounce, type-through, the request
log, and a document's state going away in one piece."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from lsp_server import server as server_module
from lsp_server.documents import DocumentStore
from lsp_server.engine import Completion, CompletionRequest, GenerationParams
from lsp_server.options import Options
from lsp_server.scheduling import (
    CompletionScheduler,
    DocumentState,
    RequestLog,
    RequestRecord,
    Shown,
    debounce,
    percentile,
)
from lsp_server.worker import InferenceWorker

URI = "file:///unit/sample.py"


def test_type_through_answers_while_typing_follows_the_suggestion() -> None:
    memory = Shown("x = ", "\nrest", ("foo(1)",))
    assert memory.rest("x = ", "\nrest") == ["foo(1)"]
    assert memory.rest("x = fo", "\nrest") == ["o(1)"]
    assert memory.rest("x = fa", "\nrest") is None  # typed something else
    assert memory.rest("x = fo", "\nchanged") is None  # the text after changed
    assert memory.rest("x = foo(1)", "\nrest") is None  # all of it typed


def test_type_through_keeps_the_candidates_that_typing_follows_in_their_order() -> None:
    memory = Shown("x = ", "\n", ("foo(1)", "bar()", "fob"))
    assert memory.rest("x = fo", "\n") == ["o(1)", "b"]
    assert memory.rest("x = b", "\n") == ["ar()"]  # typing chose the second one
    assert memory.rest("x = fob", "\n") is None  # the third typed whole, the others left


def test_forgetting_a_document_drops_its_state_in_one_piece() -> None:
    ls = server_module.server
    ls.states[URI] = DocumentState(shown=Shown("x = ", "\nrest", ("foo(1)",)), published=0)
    ls.forget(URI)
    assert URI not in ls.states  # the suggestion (and everything else) went with it


def test_latency_percentiles_cover_answered_requests_only() -> None:
    log = RequestLog()
    for ms in (10.0, 20.0, 30.0, 40.0):
        log.add(RequestRecord("inline", "model", ms, model_ms=ms / 2))
    log.add(RequestRecord("inline", "superseded", 1000.0))
    latency = log.latency()
    assert latency["count"] == 4 and latency["p50"] == 25.0 and latency["modelP50"] == 12.5
    assert latency["p95"] == pytest.approx(38.5)
    assert log.counts == {"model": 4, "superseded": 1}
    assert percentile([], 50) is None


def test_debounce_waits_from_the_last_change_and_stops_when_interrupted() -> None:
    async def run() -> tuple[bool, float, bool, float, bool]:
        started = time.perf_counter()
        assert await debounce(None, 1000)  # no change yet: no wait
        assert await debounce(started, 0)
        waited = await debounce(started, 60)
        elapsed = time.perf_counter() - started
        interrupt = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.02, interrupt.set_result, None)
        begun = time.perf_counter()
        kept = await debounce(time.perf_counter(), 5000, interrupt)
        return waited, elapsed, kept, time.perf_counter() - begun, await debounce(0.0, 10)

    waited, elapsed, kept, interrupted_after, long_ago = asyncio.run(run())
    assert waited and elapsed >= 0.06
    assert not kept and interrupted_after < 1.0
    assert long_ago  # the delay had passed already


class SlowEngine:
    """Completes after `steps` polls of `cancelled`, each a millisecond; records the calls."""

    def __init__(self, steps: int = 200) -> None:
        self.steps = steps
        self.calls: list[tuple[CompletionRequest, GenerationParams]] = []
        self.started = threading.Event()

    def complete(self, request: CompletionRequest, params: GenerationParams,
                 cancelled: Any) -> Completion:
        self.calls.append((request, params))
        self.started.set()
        for step in range(self.steps):
            if cancelled():
                return Completion("", stop_reason="cancelled", new_tokens=step)
            time.sleep(0.001)
        return Completion("foo(1)", stop_reason="max_tokens", new_tokens=self.steps,
                          model_steps=self.steps)


def test_newer_request_supersedes_the_older_which_answers_first_with_nothing() -> None:
    async def run() -> tuple[list[str], list[list[str] | None], RequestLog, SlowEngine]:
        worker = InferenceWorker(asyncio.get_running_loop())
        failures: list[Exception] = []
        scheduler = CompletionScheduler(lambda: worker, failures.append)
        store, state, engine = DocumentStore(), DocumentState(), SlowEngine()
        document = store.open(URI, "x = ", 1)
        options = Options(debounce_ms=0, max_new_tokens=7)
        order: list[str] = []

        async def ask(name: str) -> list[str] | None:
            found = await scheduler.suggest(state, document, 4, "inline", engine, options)
            order.append(name)
            return found

        older = asyncio.ensure_future(ask("older"))
        while not engine.started.is_set():
            await asyncio.sleep(0.001)
        answers = await asyncio.gather(older, ask("newer"))
        await asyncio.sleep(0.05)  # the superseded job's record comes when the worker stops
        worker.stop()
        assert not failures
        return order, list(answers), scheduler.requests, engine

    order, answers, log, engine = asyncio.run(run())
    assert order == ["older", "newer"] and answers == [None, ["foo(1)"]]
    outcomes = [r.outcome for r in log.records]
    assert sorted(outcomes) == ["model", "superseded"]
    superseded = next(r for r in log.records if r.outcome == "superseded")
    assert superseded.stop_reason == "cancelled" and 0 < superseded.new_tokens < 200
    assert engine.calls[0][1] == GenerationParams.from_options(Options(max_new_tokens=7))


def test_typing_the_suggestion_is_answered_without_the_engine() -> None:
    async def run() -> tuple[list[str] | None, list[str] | None, int, dict[str, int]]:
        worker = InferenceWorker(asyncio.get_running_loop())
        scheduler = CompletionScheduler(lambda: worker, lambda error: None)
        store, state, engine = DocumentStore(), DocumentState(), SlowEngine(steps=1)
        options = Options(debounce_ms=0)
        first = await scheduler.suggest(state, store.open(URI, "x = ", 1), 4, "inline",
                                        engine, options)
        typed = store.open(URI, "x = fo", 2)
        second = await scheduler.suggest(state, typed, 6, "inline", engine, options)
        worker.stop()
        return first, second, len(engine.calls), scheduler.requests.counts

    first, second, calls, counts = asyncio.run(run())
    assert (first, second) == (["foo(1)"], ["o(1)"])
    assert calls == 1 and counts == {"model": 1, "typeThrough": 1}
