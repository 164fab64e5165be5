"""Robustness of the real server (`python -m lsp_server`, raw bytes over stdio, a small
random-weight checkpoint): hostile protocol input, document sync through the protocol, a
typing storm, faults while loading and generating (the server started through
tests/fault_server.py), and security (no pickle, no checkpoint code, loopback binds, no text
in logs, the cache's byte budget). The framing recovery, the log filter and the fault plan
are also checked in process."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fault_server import InjectedFaults
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsp_fixtures import SAMPLE, build_checkpoint
from lsp_wire import (
    LINE_BREAK,
    ROOT,
    WireClient,
    at_boundary,
    digest,
    encode,
    frame,
    line_starts,
    position,
    rss_kib,
    utf16,
)

from lsp_server import server as server_module
from lsp_server.cli import ProtocolRedaction
from lsp_server.engine import CompletionRequest
from lsp_server.wire import FramedInput
from model import GPTBigCodeForCausalLM, Tokenizer
from model.checkpoint import CheckpointError

SAMPLE_TEXT = SAMPLE.read_text(encoding="utf-8")
FAST = {"debounceMs": 0, "maxNewTokens": 4}
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
_uris = iter(range(1_000_000))


def fresh_uri(name: str = "doc") -> str:
    return f"file:///robust/{name}{next(_uris)}.py"


def clamped(text: str, line: int, character: int) -> dict[str, int]:
    """Where the server must take a position: past the last line, the end of the text; past
    the end of a line, the end of that line (the LSP rule)."""
    starts = line_starts(text)
    if line >= len(starts):
        return position(text, len(text))
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    content = LINE_BREAK.sub("", text[starts[line] : end])
    return {"line": line, "character": min(character, utf16(content))}


# ---- servers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("robust-model") / "tiny")


FAULT_SERVER = (str(ROOT / "tests" / "fault_server.py"),)  # the server, faults injected


def start(
    args: list[str], folder: Path, options: dict[str, Any] | None = None,
    env: dict[str, str] | None = None, loaded: bool = True,
) -> WireClient:
    """The server; with GPTBIGCODE_TEST_FAULTS in `env`, through the fault launcher."""
    stderr = (folder / "stderr.txt").open("wb")
    launcher = FAULT_SERVER if env and "GPTBIGCODE_TEST_FAULTS" in env else ("-m", "lsp_server")
    client = WireClient([*args, "--log-file", str(folder / "server.log")], stderr=stderr,
                        env=env, launcher=launcher)
    stderr.close()  # the child holds its own copy
    client.initialize(FAST if options is None else options)
    if loaded:
        assert client.wait_until_loaded()["state"] == "ready"
    return client


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireClient]:
    """One server for the hostile input, document sync and cache budget tests."""
    client = start(["--model", str(checkpoint)], tmp_path_factory.mktemp("robust-server"))
    yield client
    assert client.close() == 0


def model_completion_works(client: WireClient) -> None:
    """A normal completion runs the model and answers, after whatever came before."""
    uri = fresh_uri("after")
    client.open(uri, SAMPLE_TEXT)
    steps = client.status()["modelSteps"]
    at = position(SAMPLE_TEXT, SAMPLE_TEXT.index("    return a") + len("    return a"))
    response = client.wait(client.inline(uri, at["line"], at["character"]))
    assert "result" in response and isinstance(response["result"]["items"], list)
    status = client.status(requests=True)
    assert status["recent"][-1]["outcome"] == "model"
    assert status["modelSteps"] > steps
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


# ---- framing, in process


def _framed_reads(data: bytes) -> list[bytes]:
    """The bodies pygls would read from FramedInput over `data`."""
    reader, bodies = FramedInput(io.BytesIO(data)), []
    while header := reader.readline():
        assert reader.readline() == b"\r\n"
        bodies.append(reader.read(int(header.split(b":")[1])))
    return bodies


A = encode({"jsonrpc": "2.0", "id": 1, "method": "a"})
B = encode({"jsonrpc": "2.0", "id": 2, "method": "b"})


@pytest.mark.parametrize(("broken", "bodies"), [
    (frame(A), [A]),
    (b"Content-Type: application/vscode-jsonrpc\r\n\r\n" + A, []),  # no length: dropped
    (b"Content-Length: abc\r\n\r\n" + A, []),
    (b"Content-Length: -5\r\n\r\n" + A, []),
    (b"Content-Length: %d\r\n\r\n" % (len(A) + 500) + A, [A]),  # too long: cut at B's header
    (b"Content-Length: %d\r\n\r\n" % (len(A) + 7) + A, [A]),  # ends inside B's header
    (b"Content-Length: 10\r\n\r\n" + A, [A[:10]]),  # too short: the rest is dropped
    (b"Content-Length: %d\r\n\r\n" % len(A) + A[:9], [A[:9]]),  # truncated write
    (b"Content-Length: 0\r\n\r\n", []),
    (b"Content-Length: 12\r\n", []),  # a header block that never ends
    (b"\x00\xff\xfe garbage\r\n\r\n\n", []),
    (b"content-length: %d\r\nContent-Type: x\r\n\r\n" % len(A) + A, [A]),
    (b"Content-Length: %d\n\n" % len(A) + A, [A]),
])
def test_framing_drops_only_the_broken_frame(broken: bytes, bodies: list[bytes]) -> None:
    assert _framed_reads(broken + frame(B)) == [*bodies, B]


def test_framing_resynchronises_after_a_long_run_without_line_breaks() -> None:
    garbage = random.Random(1).randbytes(3 << 20).replace(b"\n", b"")
    assert _framed_reads(garbage + frame(B)) == [B]


def test_notifications_leave_nothing_behind_in_the_protocol() -> None:
    """pygls keeps a future per generator-handled notification (didChange among them) that
    nobody removes; the server's protocol drops them, so typing does not leak."""
    ls = server_module.server  # the features are registered on this one
    written: list[bytes] = []
    ls.protocol.set_writer(SimpleNamespace(write=written.append, close=lambda: None))
    uri = "file:///leak.py"

    def notify(method: str, params: dict[str, Any]) -> None:
        body = encode({"jsonrpc": "2.0", "method": method, "params": params})
        ls.protocol.handle_message(json.loads(body, object_hook=ls.protocol.structure_message))

    notify("textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "python", "version": 1, "text": ""}})
    for version in range(2, 202):
        at = {"line": 0, "character": version - 2}
        notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                          "contentChanges": [{"range": {"start": at, "end": at},
                                                              "text": "x"}]})
    assert ls.documents.get(uri).text == "x" * 200
    notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    ls.protocol.writer = None
    assert uri not in ls.documents and uri not in ls.states
    assert ls.protocol._request_futures == {}
    assert written == []  # notifications are not answered


# ---- hostile protocol input, against the real server


_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


class HostileSession:
    """Seeded hostile messages that keep frames intact, with what each must get back."""

    def __init__(self, client: WireClient, seed: int) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.written = 0
        self.checks: dict[Any, tuple[str, Callable[[dict[str, Any]], bool]]] = {}
        self.orphans: Counter[int] = Counter()  # id-null errors expected, by code
        self.texts: dict[str, str] = {}  # open documents, as the server must hold them
        self.versions: Counter[str] = Counter()
        self.huge = ("", "")  # the 10 MB document's uri and text

    # -- writing

    def body(self, body: bytes) -> None:
        self.client.write(frame(body))
        self.written += 1

    def message(self, message: dict[str, Any]) -> None:
        self.body(encode({"jsonrpc": "2.0", **message}))

    def request(self, kind: str, method: str, params: Any,
                check: Callable[[dict[str, Any]], bool]) -> None:
        msg_id = self.rng.choice([self.client.new_id(), f"h{self.client.new_id()}"])
        self.checks[msg_id] = (kind, check)
        self.message({"id": msg_id, "method": method, "params": params})

    def notify(self, method: str, params: Any) -> None:
        self.message({"method": method, "params": params})

    # -- what may come back

    @staticmethod
    def error(code: int | None = None) -> Callable[[dict[str, Any]], bool]:
        return lambda r: "error" in r and (code is None or r["error"]["code"] == code)

    @staticmethod
    def empty(r: dict[str, Any]) -> bool:
        result = r.get("result")
        return "error" in r or result is None or result.get("items") == []

    # -- the kinds of message

    def invalid_json(self) -> None:
        rng = self.rng
        valid = encode({"jsonrpc": "2.0", "id": 5, "method": "textDocument/completion"})
        body = rng.choice([
            valid[: rng.randrange(1, len(valid))],
            valid + b"}}",
            b'{"jsonrpc": "2.0", "id": 6, "method": "\xff\xfe"}',  # not UTF-8
            b"[" * 100_000,
            rng.randbytes(rng.randrange(1, 300)),
            b"{'single': 'quotes'}",
            b"NaNa",
        ])
        try:
            json.loads(body)
        except (ValueError, RecursionError):
            self.orphans[PARSE_ERROR] += 1
            self.body(body)

    def not_a_message(self) -> None:
        rng, msg_id = self.rng, self.client.new_id()
        body = rng.choice(["[]", "1", '"text"', "null", "true", "{}", '{"foo": 1}',
                           '{"jsonrpc": "2.0"}', '[{"jsonrpc": "2.0", "id": 3, "method": "x"}]'])
        if rng.random() < 0.3:  # a request without "jsonrpc", or of another version
            version: dict[str, Any] = rng.choice([{}, {"jsonrpc": "1.0"}, {"jsonrpc": 2}])
            self.checks[msg_id] = ("notJsonRpc2", self.error(INVALID_REQUEST))
            self.body(json.dumps({**version, "id": msg_id, "method": "textDocument/completion",
                                  "params": {}}).encode())
            return
        self.orphans[INVALID_REQUEST] += 1
        self.body(body.encode())

    def wrong_params(self) -> None:
        rng = self.rng
        uri = rng.choice([*self.texts, "file:///nowhere.py"]) if self.texts else "file:///x.py"
        good = {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0},
                "context": {"triggerKind": 1}}
        broken: Any = rng.choice([
            None, "text", 5, [], {}, {**good, "position": {"line": "a", "character": 0}},
            {**good, "position": {"line": -1, "character": 0}},
            {**good, "position": {"line": 2**40, "character": 0}},
            {**good, "position": {"line": 0}}, {**good, "textDocument": 5},
            {**good, "context": {"triggerKind": 9}}, {**good, "textDocument": None},
        ])
        method = rng.choice(["textDocument/inlineCompletion", "textDocument/completion"])
        self.request("wrongParams", method, broken, self.error(INVALID_PARAMS))
        command = rng.choice([{"command": "no.such.command"}, {"command": None},
                              {"arguments": [1]}, {"command": ["gptbigcode.status"]}])
        self.request("wrongCommand", "workspace/executeCommand", command,
                     self.error(INVALID_PARAMS))

    def unknown_method(self) -> None:
        rng = self.rng
        name = rng.choice(["x/", "$/", "textDocument/no", "😀/", "workspace/unknown"]) + "".join(
            rng.choice("abcXYZ/_-é") for _ in range(rng.randrange(0, 12)))
        if rng.random() < 0.5:
            params: Any = rng.choice([None, {}, [1, 2], "p", {"a": {"b": [None]}}])
            self.request("unknownMethod", name, params, self.error(METHOD_NOT_FOUND))
        else:
            self.notify(name, {"x": 1})

    def unknown_document(self) -> None:
        rng, uri = self.rng, fresh_uri("never-opened")
        at = {"line": rng.randrange(0, 50), "character": rng.randrange(0, 50)}
        if rng.random() < 0.5:
            method = rng.choice(["textDocument/inlineCompletion", "textDocument/completion"])
            params = {"textDocument": {"uri": uri}, "position": at, "context": {"triggerKind": 1}}
            self.request("unknownDocument", method, params, self.empty)
        else:
            edit = {"range": {"start": at, "end": at}, "text": "x"}
            self.notify(rng.choice(["textDocument/didChange", "textDocument/didClose"]), {
                "textDocument": {"uri": uri, "version": 2}, "contentChanges": [edit]})

    def open_document(self, text: str | None = None) -> str:
        uri = fresh_uri("hostile")
        text = SAMPLE_TEXT if text is None else text
        self.texts[uri] = text
        self.versions[uri] = 1
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": text}})
        return uri

    def past_the_end(self) -> None:
        rng = self.rng
        uri = rng.choice(list(self.texts))
        text = self.texts[uri]
        lines = len(line_starts(text))
        line = rng.choice([rng.randrange(lines), lines, lines + rng.randrange(1, 10**6)])
        character = rng.choice([10**3, 10**9, rng.randrange(0, 200)])
        expected = clamped(text, line, character)

        def lands_at_the_clamped_position(r: dict[str, Any]) -> bool:
            if "result" not in r:
                return False
            for item in r["result"]["items"]:
                edit_range = item.get("range") or item["textEdit"]["range"]
                if edit_range["end"] != expected:
                    return False
            return True

        method = rng.choice(["textDocument/inlineCompletion", "textDocument/completion"])
        params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                  "context": {"triggerKind": 1}}
        self.request("pastTheEnd", method, params, lands_at_the_clamped_position)

    def edit(self, text: str | None = None) -> None:
        """A valid incremental edit, lone surrogates among the characters typed."""
        rng = self.rng
        uri = rng.choice(list(self.texts))
        old = self.texts[uri]
        start = at_boundary(old, rng.randrange(len(old) + 1))
        end = at_boundary(old, min(len(old), start + rng.randrange(0, 6)))
        while text is None or _SURROGATE_PAIR.search(text):  # JSON would join a pair
            text = "".join(rng.choice(["a", "é", "😀", "\ud800", "\udfff", "\r\n", "\n", " "])
                           for _ in range(rng.randrange(0, 4)))
        self.texts[uri] = old[:start] + text + old[end:]
        self.versions[uri] += 1
        self.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": self.versions[uri]},
            "contentChanges": [{"range": {"start": position(old, start),
                                          "end": position(old, end)}, "text": text}]})

    def lone_surrogates(self) -> None:
        uri = self.open_document("s = '\ud800'  # \udc00 lone\r\nx = 1\n")
        self.request("loneSurrogates", "textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 0, "character": 6},
            "context": {"triggerKind": 1}}, lambda r: "result" in r)

    def wrong_notification(self) -> None:
        rng = self.rng
        method = rng.choice(["textDocument/didOpen", "textDocument/didChange",
                             "textDocument/didClose", "textDocument/didSave", "$/cancelRequest",
                             "initialized", "$/setTrace"])
        params: Any = rng.choice([None, 5, "x", [], {}, {"textDocument": {"uri": 7}},
                             {"textDocument": {"uri": "file:///z.py", "version": "v"},
                              "contentChanges": [{"range": 5, "text": None}]},
                             {"id": -rng.randrange(1, 10**6)}, {"value": "loud"}])
        self.notify(method, params)

    def huge_document(self) -> None:
        """A 10 MB document: a completion in its middle, then typing there (a cursor jump
        far across it is slow: the prompt builder tokenises the span before its window moves)."""
        line = "value = compute(alpha, beta) + 12345  # é 变量\n"
        uri = self.open_document(line * (10_000_000 // len(line.encode())))
        text = self.texts.pop(uri)  # kept out of the random edits and requests
        cursor = len(text) // 2
        for version, typed in enumerate(("", "x", "y"), start=1):
            if typed:
                here = position(text, cursor)
                self.notify("textDocument/didChange", {
                    "textDocument": {"uri": uri, "version": version},
                    "contentChanges": [{"range": {"start": here, "end": here}, "text": typed}]})
                text, cursor = text[:cursor] + typed + text[cursor:], cursor + 1
            self.request("hugeDocument", "textDocument/inlineCompletion", {
                "textDocument": {"uri": uri}, "position": position(text, cursor),
                "context": {"triggerKind": 1}}, lambda r: "result" in r)
        self.huge = (uri, text)


def check_answers(session: HostileSession, client: WireClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for msg_id in session.checks:
        client.wait(msg_id, max(deadline - time.monotonic(), 0.1))
    wrong = Counter(kind for msg_id, (kind, check) in session.checks.items()
                    if not check(client.responses[msg_id]))
    assert not wrong, f"answers that are not what their kind must get, by kind: {wrong}"
    assert not client.duplicates


@pytest.mark.slow
def test_hostile_messages_are_answered_and_the_server_lives(server: WireClient) -> None:
    """2,000 seeded messages in intact frames: bad JSON and non-messages get an id-null
    error each; bad params Invalid params; unknown methods Method not found; unknown
    documents an empty result; positions past a line or the file a result at the clamped
    position; bad notifications nothing. Every document keeps its text throughout."""
    session = HostileSession(server, seed=20240611)
    for _ in range(3):
        session.open_document()
    session.huge_document()
    kinds = [
        (session.invalid_json, 14), (session.not_a_message, 8), (session.wrong_params, 10),
        (session.unknown_method, 12), (session.unknown_document, 10), (session.past_the_end, 6),
        (session.edit, 10), (session.wrong_notification, 10), (session.lone_surrogates, 2),
    ]
    actions, weights = zip(*kinds, strict=True)
    started, orphans_before = time.perf_counter(), len(server.orphans)
    while session.written < 2000:
        session.rng.choices(actions, weights)[0]()
    check_answers(session, server, timeout=120)
    elapsed = time.perf_counter() - started
    server.wait_for(lambda: len(server.orphans) - orphans_before >= sum(session.orphans.values()))
    got = Counter(o["error"]["code"] for o in server.orphans[orphans_before:])
    assert got == session.orphans
    assert server.alive
    for uri, text in [*session.texts.items(), session.huge]:  # hostile traffic cost no edit
        assert server.status(document=uri)["document"]["sha256"] == digest(text), uri
    server.notify("textDocument/didClose", {"textDocument": {"uri": session.huge[0]}})
    assert server.shown() == []  # protocol errors went to the log, not to the user
    print(f"\nhostile: {session.written} messages, {len(session.checks)} requests answered "
          f"in {elapsed:.1f} s; id-null errors {dict(got)}")
    model_completion_works(server)


FRAMING_CASES = ("missingLength", "badLength", "tooLong", "tooShort", "truncatedWrite",
                 "garbage", "noBlankLine", "zeroLength", "lenientHeaders", "binaryBody")
ANSWERED_ANYWAY = {"tooLong", "lenientHeaders"}  # the frame could still be read whole


def broken_frame(kind: str, body: bytes, rng: random.Random) -> tuple[bytes, int]:
    """Bytes of one broken frame carrying `body`, and the Parse errors it must cause."""
    if kind == "missingLength":
        return b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" + body, 0
    if kind == "badLength":
        value = rng.choice([b"abc", b"-5", b"", b"1e3", b"0x10", b"12 34", b"\xff"])
        return b"Content-Length: " + value + b"\r\n\r\n" + body, 0
    if kind == "tooLong":
        return b"Content-Length: %d\r\n\r\n" % (len(body) + rng.randrange(1, 5000)) + body, 0
    if kind == "tooShort":
        return b"Content-Length: %d\r\n\r\n" % rng.randrange(1, len(body)) + body, 1
    if kind == "truncatedWrite":
        return b"Content-Length: %d\r\n\r\n" % len(body) + body[: rng.randrange(1, len(body))], 1
    if kind == "garbage":
        return bytes(rng.choices(b"\r\n\x00\xffab{}:", k=rng.randrange(1, 400))), 0
    if kind == "noBlankLine":
        return b"Content-Length: %d\r\n" % len(body), 0
    if kind == "zeroLength":
        return b"Content-Length: 0\r\n\r\n", 0
    if kind == "lenientHeaders":
        return b"content-length: %d\r\nX-Extra: 1\r\n\r\n" % len(body) + body, 0
    return frame(b"\xff" + rng.randbytes(rng.randrange(0, 200))), 1


@pytest.mark.slow
def test_a_broken_frame_costs_only_itself(server: WireClient) -> None:
    """After each broken frame comes a valid request (a probe): it must be answered. Frames
    carry no marker to find again, so the server drops bytes up to the next length header;
    a body that is not JSON gets a Parse error with id null (JSON-RPC 2.0, section 5.1)."""
    rng = random.Random(7)
    probes, inside, parse_errors, written = [], {}, 0, 0
    orphans_before = len(server.orphans)
    for n in range(300):
        kind = FRAMING_CASES[n % len(FRAMING_CASES)]
        carried = f"in-{n}"
        body = encode({"jsonrpc": "2.0", "id": carried, "method": "workspace/executeCommand",
                       "params": {"command": "gptbigcode.status", "arguments": []}})
        data, errors = broken_frame(kind, body, rng)
        inside[carried] = kind
        parse_errors += errors
        server.write(data)
        probes.append(server.request("workspace/executeCommand", {
            "command": "gptbigcode.status", "arguments": []}, msg_id=f"probe-{n}"))
        written += 2
    for probe in probes:
        assert server.wait(probe, 30)["result"]["ready"] is True
    answered = {inside[i] for i in inside if i in server.responses}
    lost = {inside[i] for i in inside if i not in server.responses}
    assert answered == ANSWERED_ANYWAY and lost == set(FRAMING_CASES) - ANSWERED_ANYWAY
    server.wait_for(lambda: len(server.orphans) - orphans_before >= parse_errors)
    assert [o["error"]["code"] for o in server.orphans[orphans_before:]] == [PARSE_ERROR] * (
        parse_errors)
    assert server.alive and not server.duplicates
    print(f"\nframing: {written} writes, {parse_errors} parse errors, all {len(probes)} probes "
          "answered")
    model_completion_works(server)


# ---- document sync through the protocol

CHARACTERS = st.one_of(
    st.sampled_from(["a", " ", "\n", "\r\n", "\r", "é", "变", "😀", "\u0301", "\t", "}"]),
    st.characters(exclude_categories=["Cs"]),
)
TEXTS = st.lists(CHARACTERS, max_size=40).map("".join)
EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 8), TEXTS, st.booleans()),
                 min_size=1, max_size=12)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=TEXTS, edits=EDITS, batch=st.integers(1, 4))
def test_incremental_edits_leave_the_servers_text_equal_to_the_clients(
    server: WireClient, initial: str, edits: list[tuple[float, int, str, bool]], batch: int
) -> None:
    uri = fresh_uri("sync")
    server.open(uri, initial)
    text, version, changes = initial, 1, list[dict[str, Any]]()
    for where, length, insert, whole in edits:
        if whole and length == 0:  # now and then the whole document at once
            changes.append({"text": insert})
            text = insert
        else:
            start = at_boundary(text, round(where * len(text)))
            end = at_boundary(text, min(len(text), start + length))
            changes.append({"range": {"start": position(text, start),
                                      "end": position(text, end)}, "text": insert})
            text = text[:start] + insert + text[end:]
        if len(changes) == batch:  # several changes in one didChange, applied in order
            version += 1
            server.change(uri, version, changes)
            changes = []
    if changes:
        version += 1
        server.change(uri, version, changes)
    held = server.status(document=uri)["document"]
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert (held["sha256"], held["length"], held["version"]) == (digest(text), len(text), version)


# ---- the cache's byte budget


@pytest.mark.slow
def test_cache_byte_budget_holds_with_100_open_documents(server: WireClient) -> None:
    budget = 1 << 20
    server.notify("workspace/didChangeConfiguration", {"settings": {"cacheBudgetMb": 1}})
    try:
        evictions = server.status()["cache"]["evictions"]
        held = []
        for n in range(100):
            uri = fresh_uri("budget")
            text = SAMPLE_TEXT + f"\n\ndef extra_{n}(x):\n    return x * {n}\n"
            server.open(uri, text)
            at = position(text, len(text))
            assert "result" in server.wait(server.inline(uri, at["line"], at["character"]))
            cache = server.status()["cache"]
            held.append(cache["cpuBytes"])
            assert cache["cpuBytes"] <= budget, (n, cache)
        cache = server.status()["cache"]
        assert cache["evictions"] - evictions >= 90
        assert max(held) > budget // 2  # entries were kept, not refused
        print(f"\ncache: most held {max(held)} bytes of a {budget}-byte budget, "
              f"{cache['entries']} entries, {cache['evictions'] - evictions} evictions")
    finally:
        server.notify("workspace/didChangeConfiguration", {"settings": {"cacheBudgetMb": None}})


# ---- typing storm


@pytest.mark.slow
def test_typing_storm_keeps_order_queue_and_text(checkpoint: Path, tmp_path: Path) -> None:
    # Without diagnostics: their runs, due once the storm settles, would be in the queue.
    options = {"debounceMs": 0, "maxNewTokens": 8, "diagnostics": {"enabled": False}}
    client = start(["--model", str(checkpoint)], tmp_path, options)
    try:
        storm(client, pairs=2000, documents=20, interval=0.005, rng=random.Random(11))
    finally:
        client.close()


def storm(client: WireClient, pairs: int, documents: int, interval: float,
          rng: random.Random) -> None:
    texts = {fresh_uri("storm"): SAMPLE_TEXT for _ in range(documents)}
    versions = dict.fromkeys(texts, 1)
    for uri, text in texts.items():
        client.open(uri, text)
        client.wait(client.inline(uri, 0, 0))  # warm: each document's first prefill
    rss_before = rss_kib(client.pid)
    sent: dict[Any, tuple[str, int, float]] = {}
    uris, started = list(texts), time.perf_counter()
    for n in range(pairs):
        uri = uris[n % documents]
        old = texts[uri]
        at = at_boundary(old, rng.randrange(len(old) + 1))
        typed = rng.choice(["a", "b", " ", "(", "é", "变", "😀", "\n", "\r\n", "x = 1"])
        texts[uri] = old[:at] + typed + old[at:]
        versions[uri] += 1
        here = position(old, at)
        client.change(uri, versions[uri], [{"range": {"start": here, "end": here},
                                            "text": typed}])
        cursor = position(texts[uri], at + len(typed))
        msg_id = client.inline(uri, cursor["line"], cursor["character"])
        sent[msg_id] = (uri, versions[uri], time.perf_counter())
        time.sleep(max(0.0, started + (n + 1) * interval - time.perf_counter()))
    sending = time.perf_counter() - started
    for msg_id in sent:
        assert "result" in client.wait(msg_id, 60)
    status = client.status(requests=True)
    rss_after = rss_kib(client.pid)
    order: dict[str, list[int]] = {}
    for message in client.arrivals:
        if message.get("id") in sent:
            uri, version, _ = sent[message["id"]]
            order.setdefault(uri, []).append(version)
    for uri, seen in order.items():  # an older version's answer never follows a newer one's
        assert seen == sorted(seen) and len(seen) == len(set(seen)), uri
    assert sum(map(len, order.values())) == pairs and not client.duplicates
    for uri, text in texts.items():
        held = client.status(document=uri)["document"]
        assert (held["sha256"], held["version"]) == (digest(text), versions[uri]), uri
    worker, counts = status["worker"], status["requests"]
    assert worker["queued"] == 0
    assert worker["queuedMax"] <= 5 * documents, worker  # superseded jobs do not pile up
    assert counts.get("model", 0) > 0 and counts.get("superseded", 0) > 0, counts
    growth = (rss_after - rss_before) / 1024
    assert growth < 200, f"server memory grew by {growth:.0f} MiB"
    print(f"\nstorm: {pairs} pairs in {sending:.1f} s over {documents} documents; outcomes "
          f"{counts}; queue high-water {worker['queuedMax']} of {worker['submitted']} jobs; "
          f"RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB ({growth:+.1f} MiB)")


# ---- faults


class _TouchOnUnpickle:
    """A pickle that creates a file when loaded: proof that nobody unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def broken_checkpoints(good: Path, folder: Path, marker: Path) -> dict[str, Path]:
    """Copies of `good`: truncated weights, a config that does not fit them, pickle weights
    only, and a config asking for remote code (with the code beside it)."""
    made: dict[str, Path] = {}
    for name in ("truncated", "mismatch", "pickle", "remoteCode"):
        made[name] = folder / name
        shutil.copytree(good, made[name])
    weights = made["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = json.loads((good / "config.json").read_text())
    (made["mismatch"] / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    (made["pickle"] / "model.safetensors").unlink()
    (made["pickle"] / "pytorch_model.bin").write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    remote = {**config, "auto_map": {"AutoConfig": "evil_model.EvilConfig",
                                     "AutoModelForCausalLM": "evil_model.EvilModel"},
              "trust_remote_code": True}
    (made["remoteCode"] / "config.json").write_text(json.dumps(remote))
    (made["remoteCode"] / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["evil_model.EvilTokenizer", None]}}))
    (made["remoteCode"] / "evil_model.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    return made


@pytest.mark.slow
def test_faults_show_one_message_and_everything_else_keeps_working(
    checkpoint: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    folders = broken_checkpoints(checkpoint, tmp_path / "models", marker)
    missing = tmp_path / "no-such-model"
    client = start(["--model", str(missing)], tmp_path, loaded=False,
                   env={"GPTBIGCODE_TEST_FAULTS": "error,,oom,oom"})
    try:
        expected = {"missing": (missing, "no such folder"),
                    "truncated": (folders["truncated"], "truncated"),
                    "mismatch": (folders["mismatch"], "transformer.h.2."),
                    "pickle": (folders["pickle"], "pickle")}
        for name, (folder, why) in expected.items():
            if name != "missing":
                client.notify("workspace/didChangeConfiguration",
                              {"settings": {"gptbigcode": {"model": str(folder)}}})
            client.wait_for(lambda f=folder: str(f) in (client.status()["error"] or ""))
            status = client.status()
            assert status["state"] == "failed" and why in status["error"], (name, status)
            errors = [m for m in client.shown() if m["type"] == 1]
            assert [str(folder) in m["message"] for m in errors][-1:] == [True], name
            assert still_serving(client), name
        assert len([m for m in client.shown() if m["type"] == 1]) == len(expected)
        client.notify("workspace/didChangeConfiguration",
                      {"settings": {"gptbigcode": {"model": str(folders["remoteCode"])}}})
        client.wait_for(lambda: client.status()["state"] == "ready")
        assert not marker.exists()  # neither the pickle nor the checkpoint's code ran
        check_generation_faults(client)
    finally:
        client.close()


def still_serving(client: WireClient, complete: bool = True) -> bool:
    """Document sync and status work, and (with `complete`) a completion is answered."""
    uri = fresh_uri("serving")
    client.open(uri, "def f():\n    return 1\n")
    client.change(uri, 2, [{"range": {"start": {"line": 1, "character": 12},
                                      "end": {"line": 1, "character": 12}}, "text": " + 2"}])
    held = client.status(document=uri)["document"]
    answered = not complete or "result" in client.wait(client.inline(uri, 1, 16))
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    return held["sha256"] == digest("def f():\n    return 1 + 2\n") and answered


def check_generation_faults(client: WireClient) -> None:
    """The plan "error,,oom,oom": a failure is shown once until a completion succeeds, the
    worker goes on, and running out of memory empties the cache."""
    shown = len(client.shown())
    failed = client.status()["worker"]["failed"]
    outcomes, cache_entries = [], []
    for _ in range(5):
        uri = fresh_uri("fault")  # a new document each time: no type-through
        client.open(uri, SAMPLE_TEXT)
        at = position(SAMPLE_TEXT, len(SAMPLE_TEXT))
        assert "result" in client.wait(client.inline(uri, at["line"], at["character"]))
        status = client.status(requests=True)
        outcomes.append(status["recent"][-1]["outcome"])
        cache_entries.append(status["cache"]["entries"])
        assert still_serving(client, complete=False)  # a completion would take a fault
    assert outcomes == ["error", "model", "error", "error", "model"]
    assert cache_entries[2:4] == [0, 0] and cache_entries[4] >= 1
    assert client.status()["worker"]["failed"] - failed == 3
    messages = [m["message"] for m in client.shown()[shown:]]
    assert len(messages) == 2, messages  # one per run of failures
    assert "RuntimeError" in messages[0] and "OutOfMemoryError" in messages[1]


def test_injected_faults_refuse_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="GPTBIGCODE_TEST_FAULTS.*'crash'"):
        InjectedFaults(["error", "crash"])
    faults = InjectedFaults(["", "oom"])
    faults.next()
    with pytest.raises(RuntimeError, match="injected out of memory"):
        faults.next()
    faults.next()  # the plan is spent: nothing more is raised


def test_lone_surrogates_reach_the_tokenizer_as_replacement_characters() -> None:
    request = CompletionRequest("file:///a.py", "x = '\ud800'\n", 7)
    valid = request.as_valid_unicode()
    assert valid.text == "x = '\ufffd'\n" and valid.cursor == request.cursor
    assert CompletionRequest("file:///a.py", "é", 1).as_valid_unicode().text == "é"


# ---- security

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve",
                  "marshal"}


def _loads_code_or_pickles(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [n for n in names if n.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            if called == "torch.load" and any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value
                is True for k in node.keywords
            ):
                continue  # torch's restricted unpickler: tensors and plain containers only
            if re.fullmatch(r"(torch|numpy|np)(\.\w+)*\.load|eval|exec|__import__|"
                            r"(importlib\.)?import_module|runpy\.\w+", called):
                found.append(called)
    return found


def test_no_code_path_loads_pickles_or_runs_imported_code() -> None:
    sources = [p for package in ("model", "cache", "lsp_server")
               for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(sources) > 10
    found = {str(p.relative_to(ROOT)): hits for p in sources
             if (hits := _loads_code_or_pickles(ast.parse(p.read_text(encoding="utf-8"))))}
    assert found == {}
    assert _loads_code_or_pickles(ast.parse("import torch\ntorch.load('w.bin')")) == ["torch.load"]
    assert _loads_code_or_pickles(ast.parse("torch.load('w.bin', weights_only=False)")) == [
        "torch.load"]
    assert _loads_code_or_pickles(ast.parse("torch.load('state.pt', weights_only=True)")) == []


def test_pickle_checkpoint_is_refused_without_being_unpickled(
    checkpoint: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    folders = broken_checkpoints(checkpoint, tmp_path, marker)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*refused"):
        GPTBigCodeForCausalLM.from_pretrained(str(folders["pickle"]))
    both = folders["pickle"]  # safetensors beside the pickle: the safetensors are read
    shutil.copy(checkpoint / "model.safetensors", both / "model.safetensors")
    GPTBigCodeForCausalLM.from_pretrained(str(both))
    assert not marker.exists()


def test_checkpoint_code_is_never_imported(checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    folder = broken_checkpoints(checkpoint, tmp_path, marker)["remoteCode"]
    net = GPTBigCodeForCausalLM.from_pretrained(str(folder))
    tokenizer = Tokenizer.from_pretrained(folder)
    assert type(net) is GPTBigCodeForCausalLM and tokenizer.vocab_size > 0
    assert "evil_model" not in sys.modules and not marker.exists()


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets the process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(socket.AF_INET if len(raw) == 4 else
                                               socket.AF_INET6, words), int(port, 16)))
    return found


@pytest.mark.slow
def test_tcp_and_websocket_listen_on_loopback_only(tmp_path: Path) -> None:
    ports = {}
    for transport in ("--tcp", "--ws"):
        with socket.socket() as probe:  # a free port, for --ws (the log says where otherwise)
            probe.bind(("127.0.0.1", 0))
            ports[transport] = probe.getsockname()[1]
    processes = {t: subprocess.Popen(
        [sys.executable, "-m", "lsp_server", t, "--port", str(port), "--threads", "1"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL) for t, port in ports.items()}
    try:
        deadline = time.monotonic() + 60
        for transport, process in processes.items():
            while not (addresses := listening(process.pid)) and time.monotonic() < deadline:
                assert process.poll() is None, f"{transport} server exited"
                time.sleep(0.1)
            assert addresses == [("127.0.0.1", ports[transport])], transport
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(10)


SECRET = "AKIAQ7ZT3XKRM2PLW9EB"  # shaped like an AWS access key id; made up


@pytest.mark.slow
def test_logs_never_hold_document_or_completion_text(checkpoint: Path, tmp_path: Path) -> None:
    client = WireClient(["--model", str(checkpoint), "-vv", "--log-file",
                         str(tmp_path / "server.log")],
                        stderr=(tmp_path / "stderr.txt").open("wb"))
    suggestions = []
    try:
        # Room to end a line: a suggestion cut by the token budget keeps whole words only.
        client.initialize({**FAST, "maxNewTokens": 16})
        assert client.wait_until_loaded()["state"] == "ready"
        uri = fresh_uri("secret")
        text = SAMPLE_TEXT + f'\n\nAWS_KEY = "{SECRET}"\nkey = AWS_KEY'
        client.open(uri, text)
        end = position(text, len(text))
        client.change(uri, 2, [{"range": {"start": end, "end": end}, "text": f" or '{SECRET}'"}])
        text += f" or '{SECRET}'"
        for offset in (text.index(SECRET) + len(SECRET), len(text) - 1, len(text)):
            at = position(text, offset)
            for method in ("textDocument/inlineCompletion", "textDocument/completion"):
                result = client.call(method, {"textDocument": {"uri": uri}, "position": at,
                                              "context": {"triggerKind": 1}})
                for item in result["items"]:
                    suggestions.append(item.get("insertText") or item["textEdit"]["newText"])
        # The secret in places that fail: wrong types, unknown methods and documents, bad JSON.
        client.wait(client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": SECRET, "character": 0}}))
        client.notify("custom/unknown", {"text": SECRET})
        client.change(fresh_uri(), 2, [{"text": SECRET}])
        client.write(frame(b'{"jsonrpc": "2.0", "params": "' + SECRET.encode() + b'", }'))
        client.status(document=uri)
    finally:
        client.close()
    log = (tmp_path / "server.log").read_text(encoding="utf-8", errors="replace")
    stderr = (tmp_path / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    assert " DEBUG pygls" in log and "textDocument/didChange" in log  # the verbose log ran
    assert SECRET in "".join(suggestions)  # the completion items did carry it
    code_lines = {line.strip() for line in text.splitlines() if len(line.strip()) >= 12}
    for where in (log, stderr):
        assert SECRET not in where
        assert not [line for line in code_lines if line in where]
        for suggestion in suggestions:
            for line in suggestion.splitlines():
                assert len(line.strip()) < 8 or line.strip() not in where, line


def test_log_filter_keeps_method_names_and_drops_payloads() -> None:
    def formatted(name: str, message: str, *args: Any) -> str:
        record = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
        ProtocolRedaction().filter(record)
        return record.getMessage()

    body = json.dumps({"jsonrpc": "2.0", "params": {"text": SECRET}})
    assert formatted("pygls.protocol.json_rpc", "Sending data: %s", body) == (
        f"Sending data: <{len(body)} chars>")
    assert formatted("pygls.protocol", "Request %r received", "textDocument/completion") == (
        "Request 'textDocument/completion' received")
    assert SECRET not in formatted("pygls.x", "%s %s", {"text": SECRET}, ValueError(SECRET))
    assert formatted("lsp_server.server", "ready %s", "x" * 100) == "ready " + "x" * 100
