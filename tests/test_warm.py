"""Warming the cache before a request asks: prefill at the likeliest cursor in chunks that newer
work preempts (the chunks done kept), the same completions warmed or cold, windows on a grid and
several spares per document so that a far move back reuses what was computed."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_cursor_moves import TEXT, URI, decoder, tok, written

from cache import ContextBudget, PrefixStore, PromptBuilder, layout_ids
from cache.window import GRID_LINES, line_start, on_grid
from lsp_server import warming as warming_module
from lsp_server.engine import Completion, CompletionRequest, Engine, EngineSettings
from lsp_server.engine import GenerationParams as Params
from lsp_server.engine.local import LocalBackend
from lsp_server.engine.repair import split_unstable_tail
from lsp_server.engine.warming import (
    CHUNK_SECONDS,
    CHUNK_SIZES,
    WarmRun,
    chunk_tokens,
    resized,
)
from lsp_server.warming import WarmScheduler
from lsp_server.worker import InferenceWorker
from model import GPTBigCodeForCausalLM
from model.decoders import Decoder, make_decoder
from model.tokenizer import Tokenizer

# The cursor-move tests' fixtures (a tokenizer, a tiny random model's decoder), named here so
# that pytest finds them; their text is 250 lines of the stdlib's textwrap.py.
__all__ = ["decoder", "tok"]

CHUNK = 64
PARAMS = Params(max_new_tokens=6, time_budget_ms=600_000)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(decoder: Decoder) -> GPTBigCodeForCausalLM:
    return decoder.model


def engine_of(tok: Tokenizer, model: GPTBigCodeForCausalLM, tokens: int = 900) -> Engine:
    """psm_line, a window smaller than TEXT, chunks of CHUNK tokens (the prefill rate says)."""
    backend = LocalBackend(model, tok, make_decoder(model, "torch"),
                           prefill_rate=CHUNK / CHUNK_SECONDS + 1)
    return Engine(backend, EngineSettings(context_tokens=tokens, fim_layout="psm",
                                          max_new_tokens=8))


def at_line(text: str, line: int, column: int = 0) -> int:
    offset = 0
    for _ in range(line):
        offset = text.index("\n", offset) + 1
    return offset + column


def ask(engine: Engine, text: str, cursor: int) -> Completion:
    return engine.complete(CompletionRequest(URI, text, cursor), PARAMS)


def same_answer(a: Completion, b: Completion) -> bool:
    return (a.text, a.token_ids, a.prompt_tokens) == (b.text, b.token_ids, b.prompt_tokens)


def store_of(engine: Engine) -> PrefixStore:
    assert isinstance(engine.backend, LocalBackend)
    return engine.backend.store


# -- warming on open ------------------------------------------------------------------------


def test_warming_at_open_makes_a_later_request_compute_fewer_prompt_tokens(
    tok: Tokenizer, model: GPTBigCodeForCausalLM
) -> None:
    warm, cold = engine_of(tok, model), engine_of(tok, model)
    runs = warm.warm(CompletionRequest(URI, TEXT, 0))  # opened: the cursor is unknown
    assert runs and sum(run.chunks for run in runs) >= 2
    cursor = at_line(TEXT, 40, 8)  # a later point in the first window
    warmed, fresh = ask(warm, TEXT, cursor), ask(cold, TEXT, cursor)
    assert same_answer(warmed, fresh)
    assert warmed.computed_tokens < fresh.computed_tokens / 3
    stats = warm.warming.stats
    assert stats.hits == 1 and stats.hit_tokens > 0 and stats.tokens >= stats.hit_tokens
    assert cold.warming.stats.hits == 0


def test_a_warmed_prompt_is_the_one_a_request_builds_from_scratch(
    tok: Tokenizer, model: GPTBigCodeForCausalLM
) -> None:
    engine = engine_of(tok, model)
    cursor = at_line(TEXT, 120, 4)
    ask(engine, TEXT, at_line(TEXT, 30))
    targets = engine.warming.targets(engine, CompletionRequest(URI, TEXT, cursor))
    moves = engine.builder.window_moves
    stable, _ = split_unstable_tail(tok, TEXT[:cursor])  # as Engine.complete builds it
    text = stable + TEXT[cursor:]
    prompt = engine.builder.build(URI, text, len(stable), "psm_line")
    assert targets[0].ids == prompt.ids == layout_ids(
        "psm_line", tok, text, len(stable), prompt.start, prompt.end, prompt.cut)
    assert engine.builder.window_moves == moves + 1  # the preview did not move the window
    assert targets[1].document and targets[1].ids[0] == tok.fim.prefix  # type: ignore[union-attr]


# -- preempted and superseded ---------------------------------------------------------------


class Keystroke:
    """Arrives (sets itself) once the decoder has run `after` prefills; counts the prefills
    run after it arrived."""

    def __init__(self, decoder: Decoder, after: int) -> None:
        self.runs, self.after, self.late = 0, after, 0
        self.arrived = False
        original = decoder.prefill

        def prefill(*args: Any, **kwargs: Any) -> Any:
            self.late += self.arrived
            out = original(*args, **kwargs)
            self.runs += 1
            self.arrived = self.arrived or self.runs >= self.after
            return out

        decoder.prefill = prefill  # type: ignore[method-assign]


def test_a_keystroke_mid_warm_stops_it_within_one_chunk_and_keeps_the_chunks(
    tok: Tokenizer, model: GPTBigCodeForCausalLM
) -> None:
    warm, cold = engine_of(tok, model), engine_of(tok, model)
    cursor = at_line(TEXT, 70, 8)  # where the user just deleted a line
    assert isinstance(warm.backend, LocalBackend)
    key = Keystroke(warm.backend.decoder, after=2)
    runs = warm.warm(CompletionRequest(URI, TEXT, cursor), lambda: key.arrived)
    assert [run.chunks for run in runs] == [2] and runs[0].preempted
    assert key.late == 0  # no chunk began after the keystroke
    target = warm.warming.targets(warm, CompletionRequest(URI, TEXT, cursor))[0]
    assert store_of(warm).held(target.key, target.ids) == runs[0].reach == 2 * CHUNK
    assert warm.warming.stats.preempted == 1
    warmed, fresh = ask(warm, TEXT, cursor), ask(cold, TEXT, cursor)
    assert same_answer(warmed, fresh)
    assert warmed.reused_tokens >= 2 * CHUNK
    assert warmed.computed_tokens == fresh.computed_tokens - 2 * CHUNK


def test_warming_a_cached_prompt_computes_nothing(
    tok: Tokenizer, model: GPTBigCodeForCausalLM
) -> None:
    engine = engine_of(tok, model)
    cursor = at_line(TEXT, 70, 8)
    ask(engine, TEXT, cursor)
    runs = engine.warm(CompletionRequest(URI, TEXT, cursor), document=False)
    assert [run.chunks for run in runs] == [0] and engine.warming.stats.tokens == 0


class FakeEngine:
    """Warms in 5 ms chunks while not cancelled, up to `chunks` of them; records each run."""

    def __init__(self, chunks: int = 400) -> None:
        self.chunks = chunks
        self.runs: list[tuple[int, int, bool]] = []  # (cursor, chunks, preempted)
        self.documents: list[bool] = []  # whether each run was asked for the document's head
        self.started = threading.Event()

    def warm(self, request: CompletionRequest, cancelled: Any, document: bool = True
             ) -> list[WarmRun]:
        self.started.set()
        self.documents.append(document)
        for done in range(self.chunks):
            if cancelled():
                self.runs.append((request.cursor, done, True))
                return [WarmRun(chunks=done, preempted=True)]
            time.sleep(0.005)
        self.runs.append((request.cursor, self.chunks, False))
        return [WarmRun(chunks=self.chunks)]


def scheduler_for(engine: FakeEngine, worker: InferenceWorker, enabled: list[bool],
                  text: str = "x = 1\n" * 50) -> WarmScheduler:
    def request_at(uri: str, offset: int) -> CompletionRequest:
        return CompletionRequest(uri, text, min(offset, len(text)))

    return WarmScheduler(lambda: worker, request_at, lambda: engine,  # type: ignore[arg-type,return-value]
                         lambda: enabled[0])


async def settle(engine: FakeEngine, runs: int, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while len(engine.runs) < runs and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)


def test_a_superseded_warm_stops_between_chunks_and_the_newer_one_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warming_module, "IDLE_MS", 0)
    monkeypatch.setattr(warming_module, "EDIT_MS", 0)

    async def run() -> FakeEngine:
        worker, engine = InferenceWorker(asyncio.get_running_loop()), FakeEngine(chunks=60)
        warm = scheduler_for(engine, worker, [True])
        warm.opened(URI)  # at the document's start
        while not engine.started.is_set():
            await asyncio.sleep(0.001)
        warm.edited(URI, 42)  # an edit elsewhere: the first warm is superseded
        await settle(engine, 3)
        worker.stop()
        return engine

    engine = asyncio.run(run())
    assert engine.runs[0][0] == 0 and engine.runs[0][2] and engine.runs[0][1] < 60
    # At the edit: its prompt at once, then (idle) the document's head for moves.
    assert engine.runs[1:] == [(42, 60, False), (42, 60, False)]
    assert engine.documents == [True, False, True]


def test_work_queued_behind_a_warm_preempts_it_and_the_warm_resumes_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warming_module, "IDLE_MS", 0)
    monkeypatch.setattr(warming_module, "EDIT_MS", 0)

    async def run() -> tuple[FakeEngine, str]:
        worker, engine = InferenceWorker(asyncio.get_running_loop()), FakeEngine(chunks=100)
        warm = scheduler_for(engine, worker, [True])
        warm.opened(URI)
        while not engine.started.is_set():
            await asyncio.sleep(0.001)
        answer = await worker.submit(lambda job: "diagnosed").future  # e.g. diagnostics
        await settle(engine, 2)
        worker.stop()
        return engine, answer

    engine, answer = asyncio.run(run())
    assert answer == "diagnosed" and engine.runs[0][2] and engine.runs[0][1] < 100
    assert engine.runs[1] == (0, 100, False)  # nothing newer came: it went on


def test_a_request_stops_a_warm_which_waits_for_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warming_module, "IDLE_MS", 0)
    monkeypatch.setattr(warming_module, "EDIT_MS", 0)

    async def run() -> tuple[FakeEngine, int]:
        worker, engine = InferenceWorker(asyncio.get_running_loop()), FakeEngine(chunks=100)
        warm = scheduler_for(engine, worker, [True])
        warm.opened(URI)
        while not engine.started.is_set():
            await asyncio.sleep(0.001)
        warm.asking(URI, 12)
        await worker.submit(lambda job: "answered").future  # the request's job
        await asyncio.sleep(0.1)
        runs = len(engine.runs)  # not resumed behind the request
        warm.answered(URI)
        await settle(engine, 2)
        worker.stop()
        return engine, runs

    engine, runs_before_answer = asyncio.run(run())
    assert runs_before_answer == 1 and engine.runs[0][2]
    assert engine.runs[1] == (12, 100, False)  # after the answer, where it was asked


def test_the_warm_option_off_warms_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warming_module, "IDLE_MS", 0)
    monkeypatch.setattr(warming_module, "EDIT_MS", 0)

    async def run(enabled: bool) -> FakeEngine:
        worker, engine = InferenceWorker(asyncio.get_running_loop()), FakeEngine(chunks=2)
        warm = scheduler_for(engine, worker, [enabled])
        warm.opened(URI)
        await asyncio.sleep(0.05)
        warm.edited(URI, 7)
        await asyncio.sleep(0.05)
        warm.answered(URI)
        await settle(engine, 1, timeout=0.5)
        worker.stop()
        return engine

    assert asyncio.run(run(False)).runs == []
    assert asyncio.run(run(True)).runs[-1] == (7, 2, False)  # on: where the edit ended


def test_a_model_that_finishes_loading_warms_the_document_touched_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warming_module, "IDLE_MS", 0)
    monkeypatch.setattr(warming_module, "EDIT_MS", 0)

    Runs = list[tuple[int, int, bool]]

    async def run() -> tuple[Runs, Runs, str | None]:
        worker, engine = InferenceWorker(asyncio.get_running_loop()), FakeEngine(chunks=2)
        loaded: list[FakeEngine | None] = [None]  # the model still loads
        warm = WarmScheduler(lambda: worker, lambda uri, offset: CompletionRequest(  # type: ignore[arg-type]
            uri, "x = 1\n" * 50, offset), lambda: loaded[0], lambda: True)  # type: ignore[arg-type,return-value]
        warm.opened("file:///a.py")
        warm.opened("file:///b.py")
        warm.edited("file:///b.py", 30)
        await asyncio.sleep(0.05)
        before = list(engine.runs)  # nothing: no model to warm with
        loaded[0] = engine
        warm.ready()
        await settle(engine, 1)
        warm.closed("file:///b.py")
        latest = warm.latest
        warm.ready()  # a reload with the last document closed: nothing to warm
        await asyncio.sleep(0.05)
        worker.stop()
        return before, engine.runs, latest

    before, runs, latest = asyncio.run(run())
    assert before == [] and runs == [(30, 2, False)]  # b.py, where it was edited, once
    assert latest is None


# -- far moves ------------------------------------------------------------------------------


def test_a_far_move_back_after_warming_reuses_the_warmed_prefix(
    tok: Tokenizer, model: GPTBigCodeForCausalLM
) -> None:
    warm, cold = engine_of(tok, model), engine_of(tok, model)
    here, far, back = at_line(TEXT, 200), at_line(TEXT, 20), at_line(TEXT, 205)
    starts = {}
    for engine in (warm, cold):
        ask(engine, TEXT, here)
        if engine is warm:
            engine.warm(CompletionRequest(URI, TEXT, here))  # idle after the answer
        ask(engine, TEXT, far)
        if engine is warm:
            engine.warm(CompletionRequest(URI, TEXT, far))
        starts[id(engine)] = engine.builder.build(URI, TEXT, back, "psm_line").start
    assert starts[id(warm)] == starts[id(cold)] > 0  # the same window, on the grid
    warmed, fresh = ask(warm, TEXT, back), ask(cold, TEXT, back)
    assert same_answer(warmed, fresh)
    # Cold, the first prompt's entry (a spare now) reaches the cut at line 200; warmed, the
    # document's head reaches past line 205: what is computed is the cursor's line (the
    # prompt ends before the line break the next key could re-tokenise, so the cut is at
    # line 204), the suffix and the FIM tokens.
    before_line = len(tok.encode_text(TEXT[starts[id(warm)] : line_start(TEXT, back - 1)]))
    assert warmed.reused_tokens >= before_line - 2
    assert warmed.computed_tokens < fresh.computed_tokens


def test_cursors_near_one_another_get_one_window_start_on_the_grid(tok: Tokenizer) -> None:
    builder = PromptBuilder(tok, ContextBudget(tokens=900))
    starts = set()
    for line in (200, 201, 203):
        builder.forget(URI)  # placed afresh, as after a far move
        prompt = builder.build(URI, TEXT, at_line(TEXT, line), "psm_line")
        assert prompt.ids == layout_ids("psm_line", tok, TEXT, at_line(TEXT, line),
                                        prompt.start, prompt.end, prompt.cut)
        assert TEXT.count("\n", 0, prompt.start) % GRID_LINES == 0
        starts.add(prompt.start)
    assert len(starts) == 1


def test_on_grid_keeps_the_start_when_the_grid_line_leaves_too_little() -> None:
    text = "".join(f"line {n}\n" for n in range(100))
    start, cursor = at_line(text, 4 * GRID_LINES + 1), at_line(text, 5 * GRID_LINES + 2)

    def count(piece: str) -> int:
        return piece.count("\n")  # a token a line

    grid = at_line(text, 5 * GRID_LINES)
    assert on_grid(text, start, cursor, keep=2, count=count) == grid
    assert on_grid(text, start, cursor, keep=3, count=count) == start  # 2 lines left: too few
    assert on_grid(text, 0, cursor, keep=2, count=count) == 0
    assert on_grid(text, grid, cursor, keep=2, count=count) == grid


def test_several_spares_keep_each_far_moves_entry_up_to_their_number() -> None:
    store, key = PrefixStore(spares=2), (URI, "psm_line")
    prompts = [[1, *range(100 * n + 2, 100 * n + 302)] for n in range(4)]  # share one token
    for ids in prompts:
        found = store.lookup(key, ids)
        kv = found.kv if found.kv is not None else written(ids[:1])
        kv.length = len(ids)  # (the model would write the rest)
        store.commit(key, ids, kv)
    assert [s.ids for s in store.spares(key)] == prompts[1:3]  # the oldest dropped
    again = store.lookup(key, prompts[1][:250] + [5])  # back to the second place
    assert again.reused == 250 and store.held(key, prompts[3]) == len(prompts[3])


def test_chunk_sizes_follow_how_long_chunks_took() -> None:
    assert resized(16, WarmRun(chunks=2, seconds=0.02)) == 32  # 10 ms each: larger
    assert resized(64, WarmRun(chunks=1, seconds=0.3)) == 32  # 300 ms: smaller
    assert resized(32, WarmRun(chunks=2, seconds=0.15)) == 32  # 75 ms: kept
    assert resized(16, WarmRun(chunks=3, seconds=3.0)) == 16  # the smallest size stays
    assert resized(256, WarmRun(chunks=3, seconds=0.0)) == 256  # and the largest
    assert resized(64, WarmRun()) == 64  # nothing timed


def test_chunk_sizes_follow_the_prefill_rate() -> None:
    assert chunk_tokens(None) == CHUNK_SIZES[-1]
    assert chunk_tokens(100.0) == 16  # 10 tokens in 100 ms: the smallest chunk
    assert chunk_tokens(376.0) == 32  # 37 tokens in 100 ms, rounded down
    assert chunk_tokens(1000.0) == 64
    assert chunk_tokens(1e6) == CHUNK_SIZES[-1]


# -- through the language server ------------------------------------------------------------


async def warmed_status(client: Any, least_chunks: int, timeout: float = 60.0) -> dict[str, Any]:
    """The status once the server has warmed at least `least_chunks` chunks (a wait, not a
    measurement: the assertions are on what was computed)."""
    deadline = time.perf_counter() + timeout
    while True:
        status = await client.status(requests=True)
        if (status.get("warm") or {}).get("chunks", 0) >= least_chunks:
            return dict(status)
        if time.perf_counter() > deadline:
            raise AssertionError(f"nothing was warmed: {status.get('warm')}")
        await asyncio.sleep(0.05)


@pytest.mark.slow
def test_the_server_warms_an_opened_file_and_not_with_the_option_off(
    tmp_path: Path,
) -> None:
    from lsp_client import FAST
    from lsp_client import start as start_server
    from lsp_client import stop as stop_server
    from lsp_fixtures import SAMPLE, build_checkpoint
    from lsprotocol import types

    checkpoint = build_checkpoint(tmp_path / "tiny")
    text = SAMPLE.read_text(encoding="utf-8")
    line = text[: text.index("math.hypot(")].count("\n")

    async def run(warm: bool) -> dict[str, Any]:
        client = await start_server(str(checkpoint), tmp_path, options={
            **FAST, "fimLayout": "psm", "minConfidence": 0.0, "warm": warm})
        try:
            assert (await client.wait_until_loaded())["ready"]
            client.open("file:///work/a.py", text)  # the cursor unknown: the file's start
            if warm:
                await warmed_status(client, 1)
            client.type("file:///work/a.py", types.Position(line=line, character=4), "x")
            await client.inline("file:///work/a.py", types.Position(line=line, character=5))
            return dict(await client.status(requests=True))
        finally:
            await stop_server(client)

    on, off = asyncio.run(run(True)), asyncio.run(run(False))
    assert on["options"]["warm"] and not off["options"]["warm"]
    # The request after the open and an edit found warmed tokens.
    asked = on["recent"][-1]
    assert asked["outcome"] == "model" and asked["reusedTokens"] > 0
    assert on["warm"]["hits"] >= 1 and on["warm"]["tokens"] > 0
    # Off: nothing warmed, nothing even tried; the request computed its whole prompt.
    assert set(off["warm"].values()) == {0} and off["recent"][-1]["reusedTokens"] == 0


@pytest.mark.slow
def test_the_server_warms_a_file_opened_before_the_model_loaded(tmp_path: Path) -> None:
    from lsp_client import FAST
    from lsp_client import start as start_server
    from lsp_client import stop as stop_server
    from lsp_fixtures import SAMPLE, build_checkpoint
    from lsprotocol import types

    checkpoint = build_checkpoint(tmp_path / "tiny")
    text = SAMPLE.read_text(encoding="utf-8")

    async def run() -> dict[str, Any]:
        client = await start_server(str(checkpoint), tmp_path, options={
            **FAST, "fimLayout": "psm", "minConfidence": 0.0}, initialized=False)
        try:
            client.open("file:///work/a.py", text)  # the load starts with `initialized`
            client.initialized(types.InitializedParams())
            assert (await client.wait_until_loaded())["ready"]
            return await warmed_status(client, 1)
        finally:
            await stop_server(client)

    status = asyncio.run(run())
    assert status["warm"]["tokens"] > 0 and status["recent"] == []
