"""What lsp_server/wire.py relies on inside pygls: its version, and the names and signatures of
the internals WireProtocol and FramedInput override or feed, so an upgrade fails here first."""

from __future__ import annotations

import inspect
from importlib import metadata

import pytest
from lsprotocol import types
from pygls import exceptions, io_
from pygls.lsp.server import LanguageServer
from pygls.protocol import JsonRPCProtocol, LanguageServerProtocol
from pygls.protocol.language_server import lsp_method
from pygls.server import JsonRPCServer

from lsp_server.wire import PYGLS_SERIES, WireProtocol


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_pygls_is_the_release_series_wire_was_written_for() -> None:
    version = metadata.version("pygls")
    assert version == PYGLS_SERIES or version.startswith(PYGLS_SERIES + "."), (
        f"pygls {version}: lsp_server/wire.py overrides internals of pygls {PYGLS_SERIES}; "
        "check them against this release, then change PYGLS_SERIES"
    )


@pytest.mark.parametrize(("name", "expected"), [
    ("_execute_handler", ["self", "msg_id", "handler", "callback", "args", "kwargs"]),
    ("_send_handler_result", ["self", "future", "msg_id"]),
    ("_send_data", ["self", "data"]),
    ("structure_message", ["self", "data"]),
    ("handle_message", ["self", "message"]),
    ("_run_generator", ["self", "future", "gen", "result_future"]),
])
def test_overridden_and_called_methods_keep_their_signatures(
    name: str, expected: list[str]
) -> None:
    assert parameters(getattr(JsonRPCProtocol, name)) == expected


def test_requests_are_answered_through_send_handler_result() -> None:
    """WireProtocol._execute_handler tells a request from a notification by its callback:
    a partial of _send_handler_result, as _handle_request builds it."""
    source = inspect.getsource(JsonRPCProtocol._handle_request)
    assert "callback=partial(self._send_handler_result, msg_id=msg_id)" in source
    assert "gen.send(value)" in inspect.getsource(JsonRPCProtocol._run_generator)
    assert "handler, args, kwargs = " in inspect.getsource(JsonRPCProtocol._run_generator)


def test_protocol_state_the_overrides_use_exists() -> None:
    ls = LanguageServer("pin", "0", protocol_cls=WireProtocol)

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams) -> None: ...

    protocol = ls.protocol
    assert isinstance(protocol, WireProtocol)
    assert isinstance(protocol._request_futures, dict)
    assert protocol._shutdown is False  # set by pygls' shutdown handler; read by wire
    assert protocol.shutdown_requested is False
    assert protocol.fm.features[types.TEXT_DOCUMENT_DID_OPEN] is did_open  # what ours look up
    assert JsonRPCProtocol.VERSION == WireProtocol.VERSION == "2.0"


@pytest.mark.parametrize(("name", "method"), [
    ("lsp_text_document__did_open", types.TEXT_DOCUMENT_DID_OPEN),
    ("lsp_text_document__did_change", types.TEXT_DOCUMENT_DID_CHANGE),
    ("lsp_text_document__did_close", types.TEXT_DOCUMENT_DID_CLOSE),
])
def test_document_sync_overrides_replace_pyglss_own(name: str, method: str) -> None:
    """pygls finds its built-in handlers by their `method_name` (set by lsp_method); ours
    must shadow those methods."""
    theirs = getattr(LanguageServerProtocol, name)
    ours = getattr(WireProtocol, name)
    assert theirs.method_name == ours.method_name == method
    assert ours is not theirs and parameters(ours) == parameters(theirs) == ["self", "params"]
    assert lsp_method(method)(lambda: None).method_name == method  # type: ignore[attr-defined]


def test_server_error_hook_and_stdin_reads_are_what_wire_feeds() -> None:
    """report_server_error(error, source), called with source JsonRpcException for a body
    that is not JSON; FramedInput offers the two stdin methods pygls' reader calls."""
    assert parameters(JsonRPCServer.report_server_error) == ["self", "error", "source"]
    reading = inspect.getsource(io_.run_async)
    assert "error_handler(exc, JsonRpcException)" in reading
    assert "json.loads(body, object_hook=protocol.structure_message)" in reading
    stdin = inspect.getsource(io_.StdinAsyncReader)
    assert "self.stdin.readline" in stdin and "self.stdin.read, n" in stdin


def test_json_rpc_errors_carry_code_and_message() -> None:
    for error, code in [(exceptions.JsonRpcParseError, -32700),
                        (exceptions.JsonRpcInvalidRequest, -32600),
                        (exceptions.JsonRpcInvalidParams, -32602)]:
        made = error("why")
        assert (made.code, made.message) == (code, "why")
