"""An LSP client for the server, used by the demo, the end-to-end tests and the typing
benchmark: it starts the server as a subprocess over stdio and records what it sends."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

Listener = Callable[[str, Any], None]  # (method, params) of what the server sends on its own


class Client(LanguageClient):
    """A client that records what the server sends on its own initiative (messages, progress,
    diagnostics) and keeps each document's version."""

    def __init__(self, name: str = "gptbigcode-client", listener: Listener | None = None) -> None:
        super().__init__(name, "0")
        self.messages: list[types.ShowMessageParams] = []
        self.progress_values: list[Any] = []  # values of $/progress, in order
        self.tokens: list[Any] = []  # created with window/workDoneProgress/create
        self.versions: dict[str, int] = {}
        self.diagnostics: dict[str, list[types.PublishDiagnosticsParams]] = {}
        heard = listener or (lambda method, params: None)

        @self.feature(types.WINDOW_SHOW_MESSAGE)
        def show_message(params: types.ShowMessageParams) -> None:
            self.messages.append(params)
            heard(types.WINDOW_SHOW_MESSAGE, params)

        @self.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def create_progress(params: types.WorkDoneProgressCreateParams) -> None:
            self.tokens.append(params.token)

        @self.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def publish(params: types.PublishDiagnosticsParams) -> None:
            self.diagnostics.setdefault(params.uri, []).append(params)
            heard(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS, params)

        @self.feature(types.PROGRESS)
        def progress(params: types.ProgressParams) -> None:
            self.progress_values.append(params.value)
            heard(types.PROGRESS, params)

    # -- documents

    def open(self, uri: str, text: str, language_id: str = "python") -> None:
        self.versions[uri] = 1
        self.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1,
                                                 text=text)
        ))

    def replace(self, uri: str, start: types.Position, end: types.Position, text: str) -> None:
        """Replace the range [start, end) by `text`."""
        self.versions[uri] += 1
        self.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri,
                                                                version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start, end), text=text
            )],
        ))

    def type(self, uri: str, at: types.Position, text: str) -> None:
        """Insert `text` at `at` (an incremental change with an empty range)."""
        self.replace(uri, at, at, text)

    def close(self, uri: str) -> None:
        self.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))

    async def published(self, uri: str, version: int | None = None, count: int = 1,
                        timeout: float = 30.0) -> list[types.Diagnostic]:
        """The diagnostics of the `count`-th publication for `uri` (of `version` if given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [p for p in self.diagnostics.get(uri, [])
                     if version is None or p.version in (version, None)]
            if len(found) >= count:
                return list(found[count - 1].diagnostics)
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no publication #{count} of diagnostics for {uri}")

    # -- requests

    async def inline(self, uri: str, at: types.Position) -> list[types.InlineCompletionItem]:
        result = await self.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=at,
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
            ),
        ))
        assert isinstance(result, types.InlineCompletionList)
        return list(result.items)

    async def complete(self, uri: str, at: types.Position) -> list[types.CompletionItem]:
        result = await self.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=at
        ))
        assert isinstance(result, types.CompletionList) and result.is_incomplete
        return list(result.items)

    async def status(self, requests: bool = False) -> dict[str, Any]:
        result = await self.workspace_execute_command_async(types.ExecuteCommandParams(
            command="gptbigcode.status", arguments=[{"requests": requests}]
        ))
        return dict(result or {})

    def configure(self, settings: dict[str, Any]) -> None:
        self.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"gptbigcode": settings})
        )

    async def wait_until_loaded(self, timeout: float = 60.0) -> dict[str, Any]:
        """The status once the model is ready or failed (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status()
            if status["state"] in ("ready", "failed") or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.05)


async def start(
    server_args: Sequence[str],
    options: dict[str, Any] | None = None,
    *,
    encodings: list[str] | None = None,
    initialized: bool = True,
    client: Client | None = None,
    cwd: str | None = None,
) -> Client:
    """Start `python -m lsp_server <server_args>` and initialize it with `options` as
    initializationOptions (progress supported, `encodings` offered)."""
    client = client or Client()
    await client.start_io(sys.executable, "-m", "lsp_server", *server_args, cwd=cwd)
    general = types.GeneralClientCapabilities(position_encodings=encodings)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(
            general=general, window=types.WindowClientCapabilities(work_done_progress=True)
        ),
        initialization_options=options,
    ))
    if initialized:
        client.initialized(types.InitializedParams())
    return client


async def stop(client: Client) -> None:
    """Shut the server down and wait for it to exit."""
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
