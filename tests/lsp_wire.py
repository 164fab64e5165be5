"""A raw-bytes LSP client for the robustness suite and the soak script: the real server (or
tests/fault_server.py) as a subprocess, bytes written to its stdin exactly as given (so frames
can be broken on purpose), and every message it writes back kept in arrival order."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def encode(message: Any) -> bytes:
    """A JSON body: ASCII, so a lone surrogate in a str goes out as a `\\udXXX` escape."""
    return json.dumps(message).encode("ascii")


def digest(text: str) -> str:
    """What the server's status command reports as a document's sha256."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- positions, as a client computes them (UTF-16 code units, LSP's default encoding)

LINE_BREAK = re.compile(r"\r\n|\r|\n")


def line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in LINE_BREAK.finditer(text))]


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def position(text: str, offset: int) -> dict[str, int]:
    """The LSP position of a character offset."""
    starts = line_starts(text)
    line = bisect_right(starts, offset) - 1
    return {"line": line, "character": utf16(text[starts[line] : offset])}


def at_boundary(text: str, offset: int) -> int:
    """`offset`, moved off the middle of a CRLF (no LSP position points there)."""
    inside = 0 < offset < len(text) and text[offset - 1 : offset + 1] == "\r\n"
    return offset - 1 if inside else offset


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for process {pid}")


class ServerGone(RuntimeError):
    """The server process ended, or did not answer in time."""


class WireClient:
    """The server over stdio. `send`/`write` never wait; `wait` blocks for one response."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        stderr: IO[bytes] | int = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        launcher: Sequence[str] = ("-m", "lsp_server"),
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *launcher, "--threads", "1", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.arrivals: list[dict[str, Any]] = []  # every message from the server, in order
        self.responses: dict[Any, dict[str, Any]] = {}
        self.orphans: list[dict[str, Any]] = []  # responses with id null
        self.notifications: list[dict[str, Any]] = []
        self.duplicates: list[dict[str, Any]] = []  # a second response to one id
        self.keep_arrivals = True  # a long run turns it off, and listens instead
        self.listeners: list[Callable[[dict[str, Any], float], None]] = []  # (message, time)
        self._next_id = 0
        self._changed = threading.Condition()
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    # -- writing

    def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        with self._write_lock:
            self.process.stdin.write(data)
            self.process.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.write(frame(encode({"jsonrpc": "2.0", **message})))

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def request(self, method: str, params: Any = None, msg_id: Any = None) -> Any:
        """Send a request; its id, for `wait`."""
        msg_id = self.new_id() if msg_id is None else msg_id
        self.send({"id": msg_id, "method": method, "params": params})
        return msg_id

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"method": method, "params": params})

    # -- reading

    def wait(self, msg_id: Any, timeout: float = 30.0) -> dict[str, Any]:
        """The response to `msg_id` (result or error)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while msg_id not in self.responses:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive and msg_id not in self.responses:
                    state = "exited" if not self.alive else "did not answer"
                    raise ServerGone(f"the server {state} (waiting for {msg_id!r})")
                self._changed.wait(min(left, 0.5))
            return self.responses[msg_id]

    def call(self, method: str, params: Any = None, timeout: float = 30.0) -> Any:
        """A request's result; an error response fails."""
        response = self.wait(self.request(method, params), timeout)
        assert "error" not in response, response
        return response.get("result")

    def drop(self, msg_ids: Sequence[Any]) -> None:
        """Forget responses already dealt with (a long run would keep them all)."""
        with self._changed:
            for msg_id in msg_ids:
                self.responses.pop(msg_id, None)

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        """Until predicate() holds, re-checked as messages arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                if time.monotonic() > deadline:
                    raise ServerGone("timed out waiting for the server")
                self._changed.wait(0.1)

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while (line := stream.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line or length is None:
                break
            self._received(json.loads(stream.read(length)))
        with self._changed:
            self._changed.notify_all()

    def _received(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:  # a request from the server
            self.send({"id": message["id"], "result": None})
        arrived = time.perf_counter()
        for listener in self.listeners:
            listener(message, arrived)
        with self._changed:
            if self.keep_arrivals:
                self.arrivals.append(message)
            if "method" in message:
                self.notifications.append(message)
            elif message.get("id") is None:
                self.orphans.append(message)
            elif message["id"] in self.responses:
                self.duplicates.append(message)
            else:
                self.responses[message["id"]] = message
            self._changed.notify_all()

    # -- LSP

    def initialize(
        self, options: dict[str, Any] | None = None, encodings: list[str] | None = None
    ) -> dict[str, Any]:
        capabilities: dict[str, Any] = {"general": {"positionEncodings": encodings or []}}
        result = self.call("initialize", {
            "processId": os.getpid(), "rootUri": None, "capabilities": capabilities,
            "initializationOptions": options or {},
        })
        self.notify("initialized", {})
        return dict(result)

    def status(self, **arguments: Any) -> dict[str, Any]:
        return dict(self.call("workspace/executeCommand", {
            "command": "gptbigcode.status", "arguments": [arguments],
        }))

    def wait_until_loaded(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (status := self.status())["state"] not in ("ready", "failed"):
            if time.monotonic() > deadline:
                raise ServerGone(f"the model did not load: {status}")
            time.sleep(0.05)
        return status

    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": version, "text": text,
        }})

    def change(self, uri: str, version: int, changes: list[dict[str, Any]]) -> None:
        self.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version}, "contentChanges": changes,
        })

    def inline(self, uri: str, line: int, character: int, msg_id: Any = None) -> Any:
        """Send an inline completion request; its id."""
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 2},
        }, msg_id)

    def shown(self) -> list[dict[str, Any]]:
        """window/showMessage params, in order."""
        return [m["params"] for m in self.notifications if m["method"] == "window/showMessage"]

    def close(self, timeout: float = 10.0) -> int:
        """shutdown, exit, and the process's exit code."""
        if self.alive:
            try:
                self.wait(self.request("shutdown"), timeout)
                self.notify("exit")
            except (ServerGone, BrokenPipeError, OSError):
                pass
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
