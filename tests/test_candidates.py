"""Several candidates per request, on a small random-weight model: the first is the single
path's suggestion, the others seeded samples of the same (cached) prompt, distinct and ranked
by the gate's score; cancel and time budget between candidates; the option; the LSP items."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from lsp_client import FAST, Client, start, stop
from lsp_fixtures import SAMPLE, build_checkpoint
from lsprotocol import types

from lsp_server.engine import (
    Completion,
    CompletionRequest,
    Engine,
    EngineSettings,
    GenerationParams,
    ModelChoice,
    load_engine,
)
from lsp_server.engine.candidates import MAX_CANDIDATES, complete_many
from lsp_server.options import Options, parse_options

TEXT = SAMPLE.read_text(encoding="utf-8")
LINE_END = TEXT.index("    a, b = 0, 1") + len("    a, b = 0, 1")
PARAMS = GenerationParams(max_new_tokens=12, time_budget_ms=60_000)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("candidates-model") / "tiny",
                            n_positions=512)


def fresh_engine(folder: Path) -> Engine:
    return load_engine(ModelChoice(name=str(folder)), EngineSettings(max_new_tokens=12))


@pytest.fixture
def engine(folder: Path, single_thread: None) -> Engine:
    return fresh_engine(folder)


def request(uri: str = "file:///unit/candidates.py", cursor: int = LINE_END) -> CompletionRequest:
    return CompletionRequest(uri, TEXT, cursor)


def test_first_candidate_is_the_single_suggestion(engine: Engine, folder: Path) -> None:
    single = fresh_engine(folder).complete(request(), PARAMS)
    found = complete_many(engine, request(), PARAMS, 4)
    first = found.runs[0]
    assert single.text and first.text == single.text
    assert first.token_ids == single.token_ids and first.confidence == single.confidence
    assert found.shown[0] is first


def test_candidates_are_distinct_and_the_samples_ranked_by_score(engine: Engine) -> None:
    found = complete_many(engine, request(), PARAMS, 4)
    texts = found.texts
    assert len(texts) >= 3, texts  # random weights: samples differ from greedy and each other
    assert len({text.rstrip() for text in texts}) == len(texts) and all(texts)
    scores = [c.confidence for c in found.shown[1:]]
    assert all(s is not None for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert len(found.runs) <= 1 + 2 * 3  # two tries per further candidate at most


def test_candidates_are_the_same_for_the_same_request(engine: Engine, folder: Path) -> None:
    first = complete_many(engine, request(), PARAMS, 4).texts
    again = complete_many(engine, request(), PARAMS, 4).texts  # prompt cached now
    elsewhere = complete_many(fresh_engine(folder), request(), PARAMS, 4).texts  # computed anew
    assert len(first) >= 2 and first == again == elsewhere


def test_further_candidates_reuse_the_prompt_and_cost_decode_steps_only(engine: Engine) -> None:
    found = complete_many(engine, request(), PARAMS, 4)
    first, samples = found.runs[0], found.runs[1:]
    assert samples
    assert first.computed_tokens == first.prompt_tokens > 0
    for run in samples:
        assert run.prompt_tokens == first.prompt_tokens
        assert run.computed_tokens == 0 and run.reused_tokens == run.prompt_tokens
        # one step per token after the first (the last may have run to find an end token)
        assert run.new_tokens - 1 <= run.model_steps <= run.new_tokens
    total = found.total()
    assert total.model_steps == sum(run.model_steps for run in found.runs)
    assert total.computed_tokens == first.prompt_tokens


def test_each_candidate_passes_the_confidence_gate(engine: Engine) -> None:
    strict = GenerationParams(max_new_tokens=12, time_budget_ms=60_000, min_confidence=1.0)
    found = complete_many(engine, request(), strict, 3)
    assert found.shown == () and found.texts == []
    assert len(found.runs) == 1 + 2 * 2  # every try made, none shown
    assert all(run.hidden for run in found.runs)
    assert found.runs[0].stop_reason != "gated"  # the single path runs to its end


def test_a_sample_stops_once_its_first_line_is_below_the_gate(engine: Engine) -> None:
    at = LINE_END
    sampled = GenerationParams(max_new_tokens=40, time_budget_ms=60_000, temperature=0.6,
                               seed=7, min_confidence=1.0)
    full = engine.complete(request(cursor=at), sampled)
    early = engine.complete(request(cursor=at), sampled, stop_when_gated=True)
    assert re.search(r"\S[\r\n]+\S", full.generated)  # a whole first line, then more
    assert early.stop_reason == "gated" and early.new_tokens < full.new_tokens
    assert full.token_ids[: early.new_tokens] == early.token_ids  # the same seed, cut short
    assert early.text == full.text == ""
    lenient = replace(sampled, min_confidence=0.0)  # nothing is below it: no early stop
    assert engine.complete(request(cursor=at), lenient, stop_when_gated=True).token_ids == (
        engine.complete(request(cursor=at), lenient).token_ids)


class Recording:
    """An engine that runs `after` when each suggestion is made."""

    def __init__(self, engine: Engine, after: Callable[[Completion], None]) -> None:
        self.engine, self.after, self.calls = engine, after, 0

    def complete(self, request: CompletionRequest, params: GenerationParams,
                 cancelled: Callable[[], bool], stop_when_gated: bool = False) -> Completion:
        self.calls += 1
        done = self.engine.complete(request, params, cancelled, stop_when_gated)
        self.after(done)
        return done


def test_a_cancel_stops_before_the_next_candidate(engine: Engine) -> None:
    flag = {"cancelled": False}
    recording = Recording(engine, lambda _: flag.update(cancelled=True))
    found = complete_many(recording, request(), PARAMS, 4, lambda: flag["cancelled"])
    assert recording.calls == 1 and found.stopped == "cancelled"
    assert found.runs[0].stop_reason != "cancelled" and found.texts == [found.runs[0].text]


def test_a_cancelled_first_run_runs_no_sample(engine: Engine) -> None:
    found = complete_many(engine, request(), PARAMS, 4, lambda: True)
    assert len(found.runs) == 1 and found.stopped == "cancelled" and found.texts == []


class Scripted:
    """Answers the given completions in turn (a serving engine's outcomes)."""

    def __init__(self, *answers: Completion) -> None:
        self.answers, self.calls = list(answers), 0

    def complete(self, request: CompletionRequest, params: GenerationParams,
                 cancelled: Callable[[], bool], stop_when_gated: bool = False) -> Completion:
        self.calls += 1
        return self.answers.pop(0)


def test_a_failing_engine_ends_the_sampling() -> None:
    failing = Scripted(Completion("", stop_reason="error"))
    found = complete_many(failing, request(), PARAMS, 4)
    assert failing.calls == 1 and found.stopped == "error" and found.texts == []
    then_failing = Scripted(Completion("x = 1", stop_reason="eos"),
                            Completion("", stop_reason="error"))
    found = complete_many(then_failing, request(), PARAMS, 4)
    assert then_failing.calls == 2 and found.stopped == "error" and found.texts == ["x = 1"]


def test_the_time_budget_covers_all_candidates(engine: Engine) -> None:
    recording = Recording(engine, lambda _: time.sleep(0.02))  # 20 ms a run: over the budget
    params = GenerationParams(max_new_tokens=4, time_budget_ms=10)
    found = complete_many(recording, request(), params, 4)
    assert recording.calls == 1 and found.stopped == "time"


def test_candidates_option_is_checked() -> None:
    assert Options().candidates == 1
    assert parse_options({"candidates": MAX_CANDIDATES})[0].candidates == MAX_CANDIDATES
    for bad in (0, MAX_CANDIDATES + 1, "3", 2.5, True):
        options, messages = parse_options({"candidates": bad})
        assert options.candidates == 1
        [message] = messages
        assert "gptbigcode.candidates" in message and repr(bad) in message
    for bad_count in (0, MAX_CANDIDATES + 1):
        with pytest.raises(ValueError, match="candidates must be in 1..8"):
            complete_many(Recording(None, print), request(), PARAMS, bad_count)  # type: ignore[arg-type]


# ---- through the server


@pytest.fixture(scope="module")
def lsp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("candidates-lsp") / "tiny")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(lsp_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Client]:
    client = await start(str(lsp_checkpoint), tmp_path_factory.mktemp("server"),
                         options={**FAST, "candidates": 3})
    status = await client.wait_until_loaded()
    assert status["state"] == "ready", status
    yield client
    await stop(client)


def position(text: str, offset: int) -> types.Position:
    line = text.count("\n", 0, offset)
    column = text[text.rfind("\n", 0, offset) + 1 : offset]
    return types.Position(line=line, character=len(column.encode("utf-16-le")) // 2)


@pytest.mark.asyncio(loop_scope="module")
async def test_server_answers_several_ranked_items(client: Client) -> None:
    at = position(TEXT, LINE_END)
    client.open("file:///work/many.py", TEXT)
    inline = await client.inline("file:///work/many.py", at)
    record = (await client.status(requests=True))["recent"][-1]
    texts = [str(item.insert_text) for item in inline]
    assert len(texts) >= 2 and len(set(texts)) == len(texts)
    assert all(item.range == types.Range(at, at) for item in inline)
    assert record["candidates"] == len(texts) and record["runs"] >= len(texts)
    assert (await client.status())["options"]["candidates"] == 3

    client.configure({"candidates": 1})  # one: the single path's suggestion, the first above
    try:
        client.open("file:///work/one.py", TEXT)
        [one] = await client.inline("file:///work/one.py", at)
        assert one.insert_text == texts[0]
    finally:
        client.configure({"candidates": 3})

    client.open("file:///work/items.py", TEXT)
    items = await client.complete("file:///work/items.py", at)
    assert [i.sort_text for i in items] == [str(rank) for rank in range(len(items))]
    assert [i.preselect for i in items] == [True] + [False] * (len(items) - 1)
    assert [i.text_edit.new_text for i in items if i.text_edit is not None] == [
        "1" + text for text in texts]  # the word before the cursor, re-typed


@pytest.mark.asyncio(loop_scope="module")
async def test_an_invoked_inline_request_gets_several_candidates(client: Client) -> None:
    client.configure({"candidates": 1})
    try:
        uri = "file:///work/invoked.py"
        client.open(uri, TEXT)
        result = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=position(TEXT, LINE_END),
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            ))
    finally:
        client.configure({"candidates": 3})
    assert isinstance(result, types.InlineCompletionList) and len(result.items) >= 2


@pytest.mark.asyncio(loop_scope="module")
async def test_a_newer_request_supersedes_one_making_candidates(client: Client) -> None:
    client.configure({"maxNewTokens": 900, "timeBudgetMs": 60_000})  # a long first run
    try:
        uri = "file:///work/superseded.py"
        text = "def double(x):\n    return 2 * x\n\n\ndef half(x):\n"
        client.open(uri, text)
        at = types.Position(line=5, character=0)
        steps = (await client.status())["modelSteps"]
        older = asyncio.ensure_future(client.inline(uri, at))
        for _ in range(500):  # until its decode steps run
            if (await client.status())["modelSteps"] > steps + 2:
                break
            await asyncio.sleep(0.005)
        client.type(uri, at, "    ")
        newer = await client.inline(uri, types.Position(line=5, character=4))
        assert await older == []
    finally:
        client.configure({"maxNewTokens": FAST["maxNewTokens"], "timeBudgetMs": None})
    assert isinstance(newer, list)
    for _ in range(100):  # the worker records the stopped job once it has stopped
        recent = (await client.status(requests=True))["recent"]
        superseded = [r for r in recent if r["outcome"] == "superseded"]
        if superseded:
            break
        await asyncio.sleep(0.02)
    assert superseded[-1]["stopReason"] == "cancelled" and superseded[-1]["runs"] == 1
    assert superseded[-1]["candidates"] == 0 and 0 < superseded[-1]["newTokens"] < 900
