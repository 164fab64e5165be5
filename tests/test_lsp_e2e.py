"""End to end: the real server (`python -m lsp_server`) as a subprocess, driven over stdio by
pygls' LanguageClient, on a small random-weight checkpoint. Random weights give arbitrary
text, so the tests pin structure: ranges, line shape, ordering, counts, messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsp_client import FAST, Client, start, stop
from lsp_fixtures import SAMPLE, build_checkpoint
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from model.hardware import auto_dtype

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIM_TEXTS = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<|endoftext|>")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("lsp-model") / "tiny")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    """One server (UTF-16, the default encoding) shared by the tests that do not restart it."""
    client = await start(str(checkpoint), tmp_path_factory.mktemp("server"))
    status = await client.wait_until_loaded()
    assert status["state"] == "ready", status
    yield client
    await stop(client)


SAMPLE_TEXT = SAMPLE.read_text(encoding="utf-8")
_uris = iter(range(1_000_000))


def fresh_uri() -> str:
    return f"file:///work/doc{next(_uris)}.py"


def position_of(text: str, needle: str, after: bool = True) -> types.Position:
    """The position just after (or at) the first `needle`, in UTF-16 units."""
    offset = text.index(needle) + (len(needle) if after else 0)
    line = text.count("\n", 0, offset)
    column = text[text.rfind("\n", 0, offset) + 1 : offset]
    return types.Position(line=line, character=len(column.encode("utf-16-le")) // 2)


def assert_clean(text: str) -> None:
    assert not any(special in text for special in FIM_TEXTS), text


# ---- completions at the three kinds of places


async def test_inline_completion_at_a_line_end_is_anchored_at_the_cursor(client: Client) -> None:
    uri = fresh_uri()
    client.open(uri, SAMPLE_TEXT)
    at = position_of(SAMPLE_TEXT, "        a, b = b, a + b")
    items = await client.inline(uri, at)
    status = await client.status(requests=True)
    assert status["recent"][-1]["outcome"] == "model"
    assert status["recent"][-1]["modelSteps"] >= 1
    for item in items:
        assert item.range == types.Range(at, at)
        assert isinstance(item.insert_text, str) and item.insert_text.strip()
        assert_clean(item.insert_text)


async def test_mid_line_suggestions_stay_on_one_line(client: Client) -> None:
    uri = fresh_uri()
    client.open(uri, SAMPLE_TEXT)
    places = ["math.hypot(", "    x = sum(", "        if point.", "raise ValueError(", "Point("]
    texts: list[str] = []
    for place in places:
        at = position_of(SAMPLE_TEXT, place)  # text follows on the line
        inline = await client.inline(uri, at)
        items = await client.complete(uri, at)
        texts += [str(i.insert_text) for i in inline]
        texts += [i.text_edit.new_text for i in items if i.text_edit is not None]
        assert all(i.range == types.Range(at, at) for i in inline)
    assert texts, "random weights: no suggestion at any mid-line place tried"
    for text in texts:
        assert "\n" not in text and "\r" not in text
        assert_clean(text)
    recent = (await client.status(requests=True))["recent"]
    assert {r["outcome"] for r in recent[-2 * len(places) :]} <= {"model", "typeThrough"}


async def test_completion_item_replaces_the_word_before_the_cursor(client: Client) -> None:
    uri = fresh_uri()
    text = SAMPLE_TEXT.replace("    return a\n", "    return a\n\n\ndef fibo", 1)
    client.open(uri, text)
    at = position_of(text, "def fibo")
    items = await client.complete(uri, at)
    for item in items:
        edit = item.text_edit
        assert isinstance(edit, types.TextEdit)
        start = types.Position(line=at.line, character=at.character - len("fibo"))
        assert edit.range == types.Range(start, at)
        assert edit.new_text.startswith("fibo") and len(edit.new_text) > len("fibo")
        assert item.insert_text_format == types.InsertTextFormat.PlainText
        assert item.filter_text == edit.new_text and item.label
        assert_clean(edit.new_text)


async def test_suggestion_inside_a_function_stays_in_its_block(client: Client) -> None:
    uri = fresh_uri()
    text = SAMPLE_TEXT.replace("    best = points[0]\n", "    best = points[0]\n    \n", 1)
    client.open(uri, text)
    at = position_of(text, "    best = points[0]\n    ")  # an indented empty line, suffix after
    inline = await client.inline(uri, at)
    items = await client.complete(uri, at)
    texts = [i.insert_text for i in inline] + [i.text_edit.new_text for i in items
                                                if i.text_edit is not None]
    for text_ in texts:
        assert isinstance(text_, str)
        assert_clean(text_)
        for line in text_.split("\n")[1:]:
            assert not line.strip() or line.startswith("    "), text_  # never leaves the body
    assert all(i.range == types.Range(at, at) for i in inline)


# ---- latest wins


SHORT_TEXT = "def double(x):\n    return 2 * x\n\n\ndef half(x):\n"
LONG_RUN = {"maxNewTokens": 900, "timeBudgetMs": 60_000}  # prompt + 900 < 1024 positions


async def generating(client: Client, steps_before: int) -> None:
    """Return once the server runs decode steps (the prompt's step, then more)."""
    for _ in range(500):
        if (await client.status())["modelSteps"] > steps_before + 2:
            return
        await asyncio.sleep(0.005)
    pytest.fail("the generation did not start")


async def test_newer_request_supersedes_a_running_generation(client: Client) -> None:
    client.configure(LONG_RUN)
    try:
        uri = fresh_uri()
        client.open(uri, SHORT_TEXT)
        at = types.Position(line=5, character=0)
        order: list[str] = []
        steps = (await client.status())["modelSteps"]
        older = asyncio.ensure_future(client.inline(uri, at))
        older.add_done_callback(lambda _: order.append("older"))
        await generating(client, steps)
        client.type(uri, at, "    ")
        newer_at = types.Position(line=5, character=4)
        newer = asyncio.ensure_future(client.inline(uri, newer_at))
        newer.add_done_callback(lambda _: order.append("newer"))
        older_items, _ = await asyncio.gather(older, newer)
    finally:
        client.configure(FAST)
    assert order == ["older", "newer"]
    assert older_items == []
    recent = (await client.status(requests=True))["recent"]
    superseded = [r for r in recent if r["outcome"] == "superseded"]
    assert superseded and superseded[-1]["stopReason"] == "cancelled"
    assert 0 < superseded[-1]["newTokens"] < 900  # stopped between two tokens


async def test_cancel_request_stops_the_generation(client: Client) -> None:
    client.configure(LONG_RUN)
    try:
        uri = fresh_uri()
        client.open(uri, SHORT_TEXT)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=5, character=0),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Invoked
            ),
        )
        steps = (await client.status())["modelSteps"]
        future = client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me"
        )
        await generating(client, steps)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
        with pytest.raises(JsonRpcRequestCancelled):
            await future
    finally:
        client.configure(FAST)
    for _ in range(100):  # the worker records the stopped job when it has stopped
        recent = (await client.status(requests=True))["recent"]
        if recent[-1]["outcome"] == "cancelled":
            break
        await asyncio.sleep(0.02)
    assert recent[-1]["outcome"] == "cancelled"
    assert recent[-1]["stopReason"] == "cancelled" and 0 < recent[-1]["newTokens"] < 900


# ---- type-through


async def test_typing_the_suggestion_answers_without_a_model_step(client: Client) -> None:
    uri = fresh_uri()
    client.open(uri, SAMPLE_TEXT)
    places = ["    return a", "    return Point(x, y)", "    return best", "import math"]
    for place in places:  # random weights: find a place with something to type through
        at = position_of(SAMPLE_TEXT, place)
        items = await client.inline(uri, at)
        if items and len(str(items[0].insert_text)) >= 2:
            break
    else:
        pytest.fail("no suggestion of two characters or more at any of the places tried")
    suggestion = str(items[0].insert_text)
    before = await client.status()
    typed = suggestion[0]
    client.type(uri, at, typed)
    next_at = types.Position(line=at.line, character=at.character + 1)
    if typed == "\n":
        next_at = types.Position(line=at.line + 1, character=0)
    items = await client.inline(uri, next_at)
    after = await client.status()
    assert [i.insert_text for i in items] == [suggestion[1:]]
    assert items[0].range == types.Range(next_at, next_at)
    assert after["modelSteps"] == before["modelSteps"]
    assert after["requests"]["typeThrough"] == before["requests"].get("typeThrough", 0) + 1


# ---- progress and status


async def test_model_load_is_reported_with_progress(client: Client) -> None:
    def field(value: Any, name: str) -> Any:
        return value[name] if isinstance(value, dict) else getattr(value, name)

    assert len(client.tokens) == 1  # created once, with window/workDoneProgress/create
    kinds = [field(value, "kind") for value in client.progress_values]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert set(kinds[1:-1]) <= {"report"}
    message = field(client.progress_values[-1], "message")
    assert "ready" in message and "cpu" in message


async def test_status_reports_model_cache_latency_and_steps(
    client: Client, checkpoint: Path
) -> None:
    uri = fresh_uri()
    client.open(uri, SAMPLE_TEXT)
    at = position_of(SAMPLE_TEXT, "    return a")
    await client.inline(uri, at)
    await client.inline(uri, at)  # the same place: the prompt's KV is all reused
    status = await client.status()
    assert status["model"] == str(checkpoint)
    # dtype "auto": bf16 where the CPU computes it natively, fp32 elsewhere
    expected = str(auto_dtype("cpu")).removeprefix("torch.")
    assert (status["device"], status["dtype"]) == ("cpu", expected)
    assert status["ready"] is True and status["error"] is None
    assert status["layout"] == "spm" and status["positionEncoding"] == "utf-16"
    assert status["decodePath"] in ("torch", "inductor", "native-fp32", "native-bf16",
                                    "native-f16w", "native-bf16w")
    cache = status["cache"]
    assert cache["entries"] >= 1 and cache["cpuBytes"] > 0 and cache["hits"] >= 1
    assert cache["tokensReused"] > 0 and cache["tokensComputed"] > 0
    latency = status["latencyMs"]
    assert latency["count"] >= 2 and 0 < latency["p50"] <= latency["p95"]
    assert status["modelSteps"] > 0
    assert status["options"]["debounceMs"] == 0


async def test_bad_configuration_value_warns_and_keeps_the_old_value(client: Client) -> None:
    shown = len(client.messages)
    client.configure({"maxNewTokens": "many", "topP": 0.5})
    status = await client.status()
    for _ in range(50):
        if len(client.messages) > shown:
            break
        await asyncio.sleep(0.02)
    try:
        assert status["options"]["maxNewTokens"] == FAST["maxNewTokens"]
        assert status["options"]["topP"] == 0.5  # the good key of the same change applies
        [warning] = client.messages[shown:]
        assert warning.type == types.MessageType.Warning and "maxNewTokens" in warning.message
    finally:
        client.configure({**FAST, "topP": None})


# ---- encodings, non-ASCII text, CRLF

UNICODE_TEXT = 's = "😀😀"\r\n变量 = 1\r\ndef f():\r\n    return 变量 + len(s)\r\n'


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["utf-16", "utf-8", "utf-32"])
async def test_ranges_use_the_negotiated_encoding(
    checkpoint: Path, tmp_path: Path, encoding: str
) -> None:
    client = await start(str(checkpoint), tmp_path, encodings=[encoding, "utf-16"])
    try:
        assert (await client.wait_until_loaded())["positionEncoding"] == encoding
        uri = fresh_uri()
        client.open(uri, UNICODE_TEXT)
        lines = UNICODE_TEXT.split("\r\n")

        def width(text: str) -> int:
            data = text.encode(encoding if encoding == "utf-8" else encoding + "-le")
            return len(data) // {"utf-8": 1, "utf-16": 2, "utf-32": 4}[encoding]

        # End of `    return 变量` on line 3: the word before the cursor is CJK.
        cut = lines[3].index(" + len")
        at = types.Position(line=3, character=width(lines[3][:cut]))
        for item in await client.complete(uri, at):
            assert isinstance(item.text_edit, types.TextEdit)
            word_start = types.Position(line=3, character=width("    return "))
            assert item.text_edit.range == types.Range(word_start, at)
            assert item.text_edit.new_text.startswith("变量")
        # End of the emoji line, and a position past it, which clamps to the line's end.
        end = types.Position(line=0, character=width(lines[0]))
        past = types.Position(line=0, character=width(lines[0]) + 5)
        for place in (end, past):
            for inline in await client.inline(uri, place):
                assert inline.range == types.Range(end, end)
                text = str(inline.insert_text)
                assert "\n" not in text.replace("\r\n", "")  # the document's CRLF line breaks
                assert_clean(text)
        recent = (await client.status(requests=True))["recent"]
        assert [r["outcome"] for r in recent].count("model") >= 2
    finally:
        await stop(client)


# ---- a model that cannot load


@pytest.mark.slow
async def test_broken_model_path_gives_one_message_and_empty_results(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    client = await start(
        str(missing), tmp_path, options={**FAST, "temperature": -1}, initialized=False
    )
    try:
        uri = fresh_uri()
        client.open(uri, SAMPLE_TEXT)
        at = position_of(SAMPLE_TEXT, "    return a")
        assert await client.inline(uri, at) == []  # before initialized: not loading yet
        assert (await client.status())["state"] == "idle"
        client.initialized(types.InitializedParams())
        status = await client.wait_until_loaded()
        assert status["state"] == "failed" and status["ready"] is False
        assert str(missing) in status["error"]
        assert await client.inline(uri, at) == []
        assert await client.complete(uri, at) == []
        await asyncio.sleep(0.2)
        errors = [m for m in client.messages if m.type == types.MessageType.Error]
        warnings = [m for m in client.messages if m.type == types.MessageType.Warning]
        assert len(errors) == 1 and str(missing) in errors[0].message
        assert len(warnings) == 1 and "temperature" in warnings[0].message
        status = await client.status()
        assert status["options"]["temperature"] == 0.0  # the bad value kept the default
        assert status["requests"]["notReady"] == 3
    finally:
        await stop(client)
