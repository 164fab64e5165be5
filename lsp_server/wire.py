"""The wire, hardened: stdin framing that finds the next message after a broken frame, a
stdout that a departed client may close, and JSON-RPC 2.0 error answers for the malformed
messages that pygls would leave unanswered."""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO, Protocol

from cattrs import transform_error
from cattrs.errors import ClassValidationError
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
)
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from .text import shorten

log = logging.getLogger(__name__)

# The pygls releases whose internals WireProtocol overrides were read from (_execute_handler,
# _request_futures, _send_data, _shutdown, the document sync handlers, the stdin reader's
# calls, the stdout writer's write, flush and close):
# tests/test_pygls_internals.py fails on any other, to be read again before it is allowed.
PYGLS_SERIES = "2.1"

# A frame's length header, wherever it starts. A JSON body cannot hold these bytes (raw line
# breaks are invalid inside JSON strings, and the words are not JSON outside them), so one
# found inside a body means the body was cut short by a wrong length or a truncated write.
_LENGTH_HEADER = re.compile(rb"Content-Length:[ \t]*(\d{1,15})[ \t]*\r?\n", re.IGNORECASE)
_HEADER_BYTES = 64  # longer than any length header: how far back one may have started
_CHUNK = 1 << 16
_LONG_LINE = 1 << 20  # bytes without a line break are dropped in pieces of this size


class ByteSource(Protocol):
    """What FramedInput reads from: sys.stdin.buffer, or any buffered binary stream."""

    def read1(self, size: int = ..., /) -> bytes: ...


class FramedInput:
    """stdin for pygls' reader, handing it only whole frames (`Content-Length: N`, a blank
    line, N bytes) however broken the input is.

    LSP frames carry no marker to find again, and pygls reads header lines from wherever its
    last read stopped: one frame with a missing or wrong Content-Length would misalign every
    frame after it. Here bytes before a length header are dropped (logged as a count, never
    as content); a body is cut where a length header starts inside it (its declared length
    was too long, or it was truncated); and a header that begins at the end of the previous
    body (a declared length too short) is still found. A body that is not JSON reaches pygls
    as it is and is answered with a Parse error (WireProtocol.answer_unreadable).
    """

    def __init__(self, raw: ByteSource) -> None:
        self._raw = raw
        self._data = bytearray()  # read from raw, not consumed yet
        self._behind = b""  # the end of the last body, where a header may have begun
        self._lines: deque[bytes] = deque()  # header lines still to hand to pygls
        self._body = b""
        self._eof = False
        self._skipped = 0  # bytes dropped since the last frame
        self.dropped = 0  # bytes dropped in all

    # -- what pygls calls (from one executor thread at a time) -------------------------------

    def readline(self) -> bytes:
        if not self._lines:
            body = self._next_body()
            if body is None:
                return b""  # end of input: pygls stops
            self._body = body
            self._lines.extend((b"Content-Length: %d\r\n" % len(body), b"\r\n"))
        return self._lines.popleft()

    def read(self, size: int) -> bytes:
        """The body of the frame whose header readline gave (`size` is its length)."""
        body, self._body = self._body, b""
        return body

    @property
    def ended(self) -> bool:
        """The client closed the server's input."""
        return self._eof

    # -- frames -----------------------------------------------------------------------------

    def _next_body(self) -> bytes | None:
        """The next frame's body, or None at the end of the input."""
        length: int | None = None
        while (line := self._line()) is not None:
            scan, behind = self._behind + line, len(self._behind)
            self._behind = b""
            header = _LENGTH_HEADER.search(scan)
            if header is not None:  # a frame starts (again, if a header block had no end)
                self._drop(max(header.start() - behind, 0))
                length = int(header[1])
            elif length is None:
                self._drop(len(line))
            elif not line.strip():  # the blank line that ends the headers
                body = self._body_of(length)
                if body is None:
                    return None
                if body:
                    self._report_skipped()
                    return body
                length = None  # Content-Length: 0, or a body cut to nothing: no message
            # else: another header (Content-Type), ignored
        return None

    def _body_of(self, length: int) -> bytes | None:
        """`length` bytes, or fewer where a length header starts inside them; None when the
        input ends first."""
        searched = 0
        while True:
            end = min(len(self._data), length + _HEADER_BYTES)
            start = max(searched - _HEADER_BYTES, 0)
            header = _LENGTH_HEADER.search(self._data, start, end)
            if header is not None and header.start() < length:
                log.warning("a frame declared %d bytes but the next frame began after %d",
                            length, header.start())
                return self._take(header.start())
            if len(self._data) >= length:
                body = self._take(length)
                self._behind = body[-_HEADER_BYTES:]
                return body
            searched = len(self._data)
            if not self._fill():
                return None

    def _line(self) -> bytes | None:
        """The next line with its line break; a long run without one comes in pieces."""
        searched = 0
        while (newline := self._data.find(b"\n", searched)) < 0:
            if len(self._data) >= _LONG_LINE:
                return self._take(len(self._data) - _HEADER_BYTES)
            searched = len(self._data)
            if not self._fill():
                return self._take(len(self._data)) if self._data else None
        return self._take(newline + 1)

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._raw.read1(_CHUNK)
        self._eof = not chunk
        self._data += chunk
        return bool(chunk)

    def _take(self, count: int) -> bytes:
        taken = bytes(self._data[:count])
        del self._data[:count]
        return taken

    def _drop(self, count: int) -> None:
        self._skipped += count
        self.dropped += count

    def _report_skipped(self) -> None:
        if self._skipped:
            log.warning("skipped %d bytes of input that were not a framed message", self._skipped)
            self._skipped = 0


class ProtocolOutput:
    """stdout for pygls' writer, for a client that may go away: once the pipe is closed
    (Neovim quitting with `:qa!`), writes are dropped with one log line instead of each
    raising BrokenPipeError into pygls, which logs a traceback per message. The server ends
    when the client also closes stdin, as it does when it quits."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.closed_by_client = False

    def write(self, data: bytes) -> int:
        if self.closed_by_client:
            return 0
        try:
            return self._raw.write(data)
        except (BrokenPipeError, ConnectionResetError, ValueError):  # ValueError: closed file
            self._lost()
            return 0

    def flush(self) -> None:
        if self.closed_by_client:
            return
        try:
            self._raw.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError):
            self._lost()

    def close(self) -> None:
        try:
            self._raw.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # what was left unwritten had no reader

    def _lost(self) -> None:
        self.closed_by_client = True
        log.info("the client closed the server's output; later messages are dropped")


# -- JSON-RPC answers -------------------------------------------------------------------------


@dataclass(frozen=True)
class RejectedRequest:
    """A request that cannot be dispatched, and the error to answer it with."""

    id: int | str | None
    error: JsonRpcException


class WireProtocol(LanguageServerProtocol):
    """pygls' protocol, answering what it would drop unanswered, as JSON-RPC 2.0 asks:
    a request whose params do not fit its method gets Invalid params (to its id), JSON that
    is not a message gets Invalid request (id null unless a request id can be read), and a
    body that is not JSON gets Parse error (id null).

    The server's DocumentStore holds the documents' text: pygls' own second copy is not kept
    (it cost a full re-split per edit, and its errors on unknown URIs reached the user). And
    notifications leave nothing behind (pygls kept one future per notification).
    """

    @property
    def shutdown_requested(self) -> bool:
        """The client sent `shutdown` (so `exit` ends the process with status 0)."""
        return bool(self._shutdown)

    def structure_message(self, data: dict[str, Any]) -> Any:
        # Called for every JSON object, nested ones too: only messages carry "jsonrpc".
        if "jsonrpc" in data and "method" in data and "params" not in data:
            data = {**data, "params": None}  # JSON-RPC lets a message leave params out
        try:
            return super().structure_message(data)
        except JsonRpcException as error:
            return self._rejected(data, error)

    def _rejected(self, data: dict[str, Any], error: JsonRpcException) -> RejectedRequest:
        """The answer to a message that does not fit its method; a notification or a
        response that does not fit cannot be answered, and raises (pygls logs and drops)."""
        request = "method" in data and "id" in data
        if request and data.get("jsonrpc") == self.VERSION:
            method, detail = data["method"], _why(error)
            method = shorten(method if isinstance(method, str) else repr(method), 80)
            log.info("invalid params for %s request %r: %s", method, _request_id(data), detail)
            message = f"invalid params for {method}" + (f": {detail}" if detail else "")
            return RejectedRequest(_request_id(data), JsonRpcInvalidParams(message))
        if request or ("method" not in data and "id" not in data):
            invalid = JsonRpcInvalidRequest("not a JSON-RPC 2.0 request")
            return RejectedRequest(_request_id(data), invalid)
        raise error

    def handle_message(self, message: Any) -> None:
        if isinstance(message, RejectedRequest):
            self._answer(message.id, message.error)
        elif getattr(message, "jsonrpc", None) != self.VERSION:
            self._answer_invalid(message)
        else:
            super().handle_message(message)

    def answer_unreadable(self) -> None:
        """Answer a frame whose body is not JSON (JSON-RPC 2.0: Parse error, id null)."""
        self._answer(None, JsonRpcParseError("the message body is not valid JSON"))

    def _answer_invalid(self, message: Any) -> None:
        """JSON that is not a JSON-RPC 2.0 message: Invalid request, to the id of what looks
        like a request, or to id null; what looks like a notification or a response cannot
        be answered."""
        if isinstance(message, dict):
            fields = message
        else:
            fields = {name: getattr(message, name) for name in ("id", "method")
                      if hasattr(message, name)}
        if ("method" in fields) != ("id" in fields):
            log.warning("dropped a notification or response that is not JSON-RPC 2.0")
            return
        self._answer(_request_id(fields), JsonRpcInvalidRequest("not a JSON-RPC 2.0 request"))

    def _answer(self, msg_id: int | str | None, error: JsonRpcException) -> None:
        # Written as a plain dict: lsprotocol's converter would leave out a null id.
        response = {"jsonrpc": self.VERSION, "id": msg_id, "error": {
            "code": error.code, "message": error.message,
        }}
        self._send_data(response)

    def _execute_handler(
        self, msg_id: Any, handler: Any, callback: Any, args: Any = None, kwargs: Any = None
    ) -> None:
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        if isinstance(callback, partial) and callback.func == self._send_handler_result:
            return  # a request: $/cancelRequest finds its future until pygls answers and drops it
        # A notification, or a step of a generator handler: pygls 2.1 keeps the future of a
        # generator or async handler (such as the didChange below) under a fresh id that
        # nobody can cancel, and never drops it: about 1 KB lost per keystroke.
        future = self._request_futures.get(msg_id)
        if future is not None:
            future.add_done_callback(lambda _: self._request_futures.pop(msg_id, None))

    # Document sync: the server's own handlers only (see the class docstring).

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(
        self, params: types.DidOpenTextDocumentParams
    ) -> Generator[Any, Any, None]:
        yield from self._server_handler(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(
        self, params: types.DidChangeTextDocumentParams
    ) -> Generator[Any, Any, None]:
        yield from self._server_handler(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(
        self, params: types.DidCloseTextDocumentParams
    ) -> Generator[Any, Any, None]:
        yield from self._server_handler(types.TEXT_DOCUMENT_DID_CLOSE, params)

    def _server_handler(self, method: str, params: Any) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None


def _request_id(fields: Any) -> int | str | None:
    """The message's id when it is a valid JSON-RPC id, else None (answered as null)."""
    value = fields.get("id") if isinstance(fields, dict) else None
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


def _why(error: JsonRpcException) -> str:
    """Which fields did not fit, by path (cattrs' messages name no values)."""
    cause = error.__cause__
    if isinstance(cause, ClassValidationError):
        return "; ".join(transform_error(cause))[:500]
    return ""
