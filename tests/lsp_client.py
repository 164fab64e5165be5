"""The end-to-end tests' way to start the real server (`python -m lsp_server`) on a
checkpoint, through the shared client in lsp_server/client.py, with the tests' defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsp_server import client as lsp
from lsp_server.client import Client, stop

__all__ = ["FAST", "Client", "start", "stop"]

ROOT = Path(__file__).resolve().parents[1]
# Completion tests run without diagnostics: the heads' work would share the worker with them.
FAST = {"debounceMs": 0, "maxNewTokens": 12, "diagnostics": {"enabled": False}}


async def start(
    checkpoint: str,
    tmp: Path,
    encodings: list[str] | None = None,
    options: dict[str, Any] | None = None,
    initialized: bool = True,
) -> Client:
    """The server on `checkpoint`, one thread, a verbose log in `tmp`, initialized with FAST
    unless `options` are given."""
    args = ["--model", checkpoint, "--threads", "1", "--log-file", str(tmp / "server.log"), "-v"]
    return await lsp.start(
        args, options if options is not None else FAST, encodings=encodings,
        initialized=initialized, client=Client("gptbigcode-tests"), cwd=str(ROOT),
    )
