"""The pygls server: handlers for document sync, inline and ordinary completions, code actions,
options and the status command, and the wiring between the modules that do the work."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer

from .diagnostics import secret_action
from .diagnostics_service import DiagnosticsService
from .documents import Document, DocumentStore, TextChange, UnknownDocumentError, choose_encoding
from .engine import CompletionRequest, EngineSettings, ModelChoice, OtherDocument
from .model_load import ModelState, load_model
from .options import Options, as_json, merge
from .scheduling import CompletionScheduler, DocumentState
from .text import camel_keys, shorten
from .warming import WarmScheduler
from .wire import WireProtocol
from .worker import InferenceWorker

log = logging.getLogger(__name__)

NAME = "gptbigcode-lsp"
STATUS_COMMAND = "gptbigcode.status"
COMPLETION_TRIGGERS = [".", "(", "[", "{", ",", " "]
_WORD_BEFORE = re.compile(r"\w*\Z")  # line breaks are not \w: it stays on the cursor's line
WORD_CHARS = 256


def _version() -> str:
    try:
        return metadata.version(NAME)
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class Suggestion:
    """Texts to insert at `offset` of `document`, the alternatives to one another, best first
    (none: nothing to suggest)."""

    document: Document
    offset: int
    texts: list[str]


@dataclass
class ClientFacts:
    """What `initialize` told us about the client."""

    progress: bool = False  # window.workDoneProgress
    initialized: bool = False  # the `initialized` notification came (a repeat is ignored)
    root: str = ""  # the workspace's root URI (its first folder), "" when none was given
    messages: list[str] = field(default_factory=list)  # option problems to show once ready


class GPTBigCodeServer(LanguageServer):
    """The server's state: documents, options, the model and the work in flight."""

    protocol: WireProtocol

    def __init__(self) -> None:
        super().__init__(NAME, _version(), protocol_cls=WireProtocol)
        self.documents = DocumentStore()  # the text of each open document
        self.states: dict[str, DocumentState] = {}  # everything else about it
        self.options = Options()
        self.model = ModelState()
        self.client = ClientFacts()
        self.completions = CompletionScheduler(lambda: self.worker, self.completion_failed)
        self.diagnostics = DiagnosticsService(self)
        self.warming = WarmScheduler(lambda: self.worker, self.completion_request,
                                     lambda: self.model.engine, lambda: self.options.warm)
        self._worker: InferenceWorker | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def worker(self) -> InferenceWorker:
        if self._worker is None:
            self._worker = InferenceWorker(asyncio.get_running_loop())
        return self._worker

    def stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Protocol errors go to the log, not to the user's screen (pygls would show each one:
        a client sending bad messages would cause a storm). A frame whose body is not JSON
        is answered with a Parse error; the read loop reports those with source
        JsonRpcException."""
        if source is JsonRpcException and isinstance(error, ValueError | RecursionError):
            self.protocol.answer_unreadable()
        log.warning("protocol error (%s): %s", getattr(source, "__name__", source),
                    type(error).__name__)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def warn(self, messages: list[str]) -> None:
        for message in messages:
            log.warning("%s", message)
        self.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Warning, message="; ".join(messages))
        )

    def apply_options(self, raw: object) -> None:
        """Merge client options: reload the model when its choice changed, reconfigure the
        engine (on the worker) when its settings did, and rerun diagnostics."""
        old = self.options
        self.options, messages = merge(old, raw)
        if messages:
            self.warn(messages)
        if self.model.state != "idle" and (
            ModelChoice.from_options(old) != ModelChoice.from_options(self.options)
        ):
            self.spawn(load_model(self))
        elif (engine := self.model.engine) is not None:
            settings = EngineSettings.from_options(self.options)
            if settings != EngineSettings.from_options(old):
                self.worker.submit(lambda _: engine.configure(settings))
        self.diagnostics.options_changed(old.diagnostics)

    # -- documents --------------------------------------------------------------------------

    def opened(self, uri: str) -> None:
        self.states.setdefault(uri, DocumentState())
        self.warming.opened(uri)
        self.diagnostics.schedule(uri)

    def changed(self, uri: str) -> None:
        if (state := self.states.get(uri)) is not None:
            state.changed()
        self.diagnostics.carry_over(uri)
        self.diagnostics.schedule(uri)

    def forget(self, uri: str) -> None:
        """A document closed: its state goes (its request and diagnostics stop), and the
        engine and the diagnoser drop their entries for it on the worker."""
        state = self.states.pop(uri, None)
        if state is not None:
            state.drop()
        engine = self.model.engine
        if engine is not None:
            self.worker.submit(lambda _: engine.forget(uri))
        self.diagnostics.forget(uri, state)
        self.warming.closed(uri)

    # -- completions ------------------------------------------------------------------------

    async def suggest(self, uri: str, position: types.Position, kind: str,
                      invoked: bool = False) -> Suggestion | None:
        """The suggestions at `position`, or None (see CompletionScheduler.suggest)."""
        state = self.states.get(uri)
        if state is None or uri not in self.documents:
            self.completions.record(kind, time.perf_counter(), "unknownDocument")
            return None
        document = self.documents.get(uri)
        offset = document.offset_at(position, self.documents.encoding)
        self.warming.asking(uri, offset)
        others = self.other_documents(uri)
        texts = await self.completions.suggest(
            state, document, offset, kind, self.model.engine, self.options, invoked, others,
            self.client.root,
        )
        if texts is not None:
            self.warming.answered(uri)
        return Suggestion(document, offset, texts) if texts is not None else None

    def other_documents(self, uri: str) -> tuple[OtherDocument, ...]:
        """The open documents besides `uri`: candidates for the prompt's cross-file context
        (the same for a request and for the warming that prepares it)."""
        return tuple(OtherDocument(other.uri, other.text, other.language_id)
                     for u in self.documents if u != uri
                     for other in [self.documents.get(u)])

    def completion_request(self, uri: str, offset: int) -> CompletionRequest | None:
        """A request at `offset` (clamped to the text) as `suggest` makes one, for warming;
        None when the document is not open."""
        if uri not in self.documents:
            return None
        document = self.documents.get(uri)
        others = self.other_documents(uri)
        return CompletionRequest(uri, document.text, min(offset, len(document.text)),
                                 document.language_id or "python", others, self.client.root)

    def completion_failed(self, error: Exception) -> None:
        detail = shorten(f"{type(error).__name__}: {error}", 300)
        self.window_show_message(types.ShowMessageParams(
            type=types.MessageType.Error,
            message=f"gptbigcode: a completion failed ({detail}); the next one will try again",
        ))

    # -- status -----------------------------------------------------------------------------

    def status(self, with_requests: bool = False, uri: str | None = None) -> dict[str, Any]:
        """Model, device, dtype, decode path, state, cache statistics, latency percentiles,
        model steps, the worker's queue; with `uri`, a digest of that document's text."""
        model, choice = self.model, self.model.choice
        engine = camel_keys(model.engine.status()) if model.engine is not None else {}
        if isinstance(engine.get("cache"), dict):
            engine["cache"] = camel_keys(engine["cache"])
        requests = self.completions.requests
        report: dict[str, Any] = {
            "model": choice.name if choice else self.options.model,
            "device": engine.get("device", choice.device if choice else None),
            "dtype": engine.get("dtype"),
            "decodePath": engine.get("decodePath"),
            # Where generation runs: {"kind": "local"}, or a serving engine's kind, address,
            # served model, state (ok, unreachable, unchecked) and last fault.
            "engine": camel_keys(engine["engine"]) if engine.get("engine") else {"kind": "local"},
            "quantize": choice.quantize if choice else self.options.quantize,
            "state": model.state,
            "ready": model.state == "ready",
            "error": model.error,
            "layout": engine.get("layout"),
            "positionEncoding": self.documents.encoding,
            "documents": len(self.documents),
            "cache": engine.get("cache"),
            "latencyMs": requests.latency(),
            "modelSteps": engine.get("modelSteps", 0),
            # The loaded model's calibrated minConfidence, suggestions hidden and cut by it.
            "confidence": engine.get("confidence"),
            # The prompt budget: its tokens, what chose it (option, device, model), and the
            # prefill rate measured at load that a device budget comes from.
            "context": camel_keys(engine["context"]) if engine.get("context") else None,
            # Other files' text in prompts: on or off (and why), the last prompt's files and
            # tokens, the token limit, choices made.
            "crossFile": camel_keys(engine["crossFile"]) if engine.get("crossFile") else None,
            # Cache warming: runs, chunks and tokens warmed, runs preempted by newer work,
            # requests that found warmed tokens (hits, hitTokens).
            "warm": camel_keys(engine["warm"]) if engine.get("warm") else None,
            "requests": dict(requests.counts),
            "worker": camel_keys(asdict(self._worker.snapshot())) if self._worker else None,
            "options": as_json(self.options),
            "diagnostics": self.diagnostics.status(),
        }
        if with_requests:
            report["recent"] = [camel_keys(asdict(r)) for r in requests.records]
        if uri is not None:
            report["document"] = self.digest(uri)
        return report

    def digest(self, uri: str) -> dict[str, Any] | None:
        """Version, length and SHA-256 of an open document's text (None when it is not open):
        enough to check the server's copy against the client's, while the text itself never
        leaves the server."""
        try:
            document = self.documents.get(uri)
        except UnknownDocumentError:
            return None
        data = document.text.encode("utf-8", "surrogatepass")  # lone surrogates hash too
        return {
            "uri": uri,
            "version": document.version,
            "length": len(document.text),
            "utf8Bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }


server = GPTBigCodeServer()


# -- lifecycle ------------------------------------------------------------------------------


@server.feature(types.INITIALIZE)
def initialize(ls: GPTBigCodeServer, params: types.InitializeParams) -> None:
    """Agree on the position encoding and read initializationOptions."""
    general = params.capabilities.general
    offered = general.position_encodings if general is not None else None
    ls.documents.encoding = choose_encoding([getattr(e, "value", e) for e in offered or ()])
    window = params.capabilities.window
    ls.client.progress = bool(window is not None and window.work_done_progress)
    folders = params.workspace_folders
    ls.client.root = (folders[0].uri if folders else params.root_uri) or ""
    ls.options, ls.client.messages = merge(ls.options, params.initialization_options)


@server.feature(types.INITIALIZED)
def initialized(ls: GPTBigCodeServer, params: types.InitializedParams) -> None:
    """Show option problems and start loading the model, once (a repeat is ignored)."""
    if ls.client.initialized:
        log.warning("initialized was sent again; ignored")
        return
    ls.client.initialized = True
    if ls.client.messages:
        ls.warn(ls.client.messages)
    ls.spawn(load_model(ls))
    for uri in list(ls.states):
        ls.diagnostics.schedule(uri)


@server.feature(types.SHUTDOWN)
def shutdown(ls: GPTBigCodeServer, params: None) -> None:
    """Stop the inference worker after its current job."""
    ls.stop_worker()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def did_change_configuration(
    ls: GPTBigCodeServer, params: types.DidChangeConfigurationParams
) -> None:
    """Merge changed options; a bad value gets a warning and keeps its old value."""
    ls.apply_options(params.settings)


# -- documents ------------------------------------------------------------------------------


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: GPTBigCodeServer, params: types.DidOpenTextDocumentParams) -> None:
    """Track a newly opened document."""
    item = params.text_document
    ls.documents.open(item.uri, item.text, item.version, item.language_id)
    ls.opened(item.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: GPTBigCodeServer, params: types.DidChangeTextDocumentParams) -> None:
    """Apply incremental (or whole-document) changes."""
    uri = params.text_document.uri
    changes = [TextChange(c.text, getattr(c, "range", None)) for c in params.content_changes]
    try:
        document = ls.documents.change(uri, params.text_document.version, changes)
    except UnknownDocumentError:
        log.warning("didChange for %s, which is not open", uri)
        return
    ls.changed(uri)
    last = changes[-1] if changes else None  # the cursor is most likely where it ended
    if last is not None and last.range is not None:
        ls.warming.edited(uri, document.offset_at(last.range.start, ls.documents.encoding)
                          + len(last.text))
    else:
        ls.warming.edited(uri, None)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: GPTBigCodeServer, params: types.DidSaveTextDocumentParams) -> None:
    """Nothing to do: the text is already in sync."""
    log.debug("saved %s", params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: GPTBigCodeServer, params: types.DidCloseTextDocumentParams) -> None:
    """Forget a closed document, its state and its cache entries."""
    uri = params.text_document.uri
    try:
        ls.documents.close(uri)
    except UnknownDocumentError:
        log.warning("didClose for %s, which is not open", uri)
    ls.forget(uri)


# -- completions ----------------------------------------------------------------------------


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(
    ls: GPTBigCodeServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    """Suggest text at the cursor, for the editor to show inline: the candidates best first
    (the editor cycles through them), more of them when the user invoked the request."""
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    found = await ls.suggest(params.text_document.uri, params.position, "inline", invoked)
    if found is None:
        return types.InlineCompletionList(items=[])
    here = _position(found.document, found.offset, ls)
    return types.InlineCompletionList(items=[
        types.InlineCompletionItem(insert_text=text, range=types.Range(here, here))
        for text in found.texts
    ])


@server.feature(
    types.TEXT_DOCUMENT_COMPLETION,
    types.CompletionOptions(trigger_characters=COMPLETION_TRIGGERS, resolve_provider=False),
)
async def completion(ls: GPTBigCodeServer, params: types.CompletionParams) -> types.CompletionList:
    """Suggest text at the cursor as completion items (the candidates, in their order)
    replacing the word before it."""
    found = await ls.suggest(params.text_document.uri, params.position, "completion")
    if found is None:
        return types.CompletionList(is_incomplete=True, items=[])
    items = [_completion_item(found, rank, ls) for rank in range(len(found.texts))]
    return types.CompletionList(is_incomplete=True, items=items)


def _completion_item(found: Suggestion, rank: int, ls: GPTBigCodeServer
                     ) -> types.CompletionItem:
    """The item of candidate `rank`: its edit re-types the word before the cursor and adds
    the suggestion, so that a client filtering by that word keeps it; sortText keeps the
    candidates' order, the first is preselected."""
    document, offset = found.document, found.offset
    word = _WORD_BEFORE.search(document.text, max(0, offset - WORD_CHARS), offset)
    start = word.start() if word else offset
    new_text = document.text[start:offset] + found.texts[rank]
    edit = types.TextEdit(
        range=types.Range(_position(document, start, ls), _position(document, offset, ls)),
        new_text=new_text,
    )
    return types.CompletionItem(
        label=_label(new_text),
        kind=types.CompletionItemKind.Text,
        detail="gptbigcode",
        documentation=types.MarkupContent(kind=types.MarkupKind.PlainText, value=new_text),
        filter_text=new_text,
        sort_text=str(rank),  # candidates number at most 8: one digit sorts them
        preselect=rank == 0,
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=edit,
    )


def _label(text: str, width: int = 60) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), text.strip())
    more = "…" if len(line) > width or line != text.strip() else ""
    return line[:width] + more


def _position(document: Document, offset: int, ls: GPTBigCodeServer) -> types.Position:
    line, character = document.position_at(offset, ls.documents.encoding)
    return types.Position(line=line, character=character)


# -- code actions ---------------------------------------------------------------------------


@server.feature(
    types.TEXT_DOCUMENT_CODE_ACTION,
    types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]),
)
def code_action(ls: GPTBigCodeServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    """Quick fixes (secret -> environment variable) for the diagnostics in the request that fit
    the current text, and for the server's own findings at the range, as they are now (a client
    may send a diagnostic a version behind with its old range, or none)."""
    only = params.context.only
    if only and not any(types.CodeActionKind.QuickFix.value.startswith(kind) for kind in only):
        return []
    uri = params.text_document.uri
    try:
        document = ls.documents.get(uri)
    except UnknownDocumentError:
        return []
    at = params.range
    here = [d for d in ls.diagnostics.shown(uri)
            if (d.range.start.line, d.range.start.character) <= (at.end.line, at.end.character)
            and (at.start.line, at.start.character) <= (d.range.end.line, d.range.end.character)]
    actions, fixed = [], set()
    for diagnostic in [*params.context.diagnostics, *here]:
        action = secret_action(document, diagnostic, ls.documents.encoding)
        if action is None or action.edit is None or not action.edit.changes:
            continue
        key = tuple((e.range.start.line, e.range.start.character, e.range.end.line,
                     e.range.end.character, e.new_text) for e in action.edit.changes[uri])
        if key not in fixed:  # the same fix from the client's diagnostic and ours
            fixed.add(key)
            actions.append(action)
    return actions


# -- commands -------------------------------------------------------------------------------


@server.command(STATUS_COMMAND)
def status(ls: GPTBigCodeServer, *args: Any) -> dict[str, Any]:
    """The server's state: model, readiness, cache, latency, model steps, worker, options."""
    # {"requests": true} adds the latest requests, one record each; {"document": uri} a digest
    # (length, SHA-256) of the server's text of that document.
    options = {k: v for a in args if isinstance(a, dict) for k, v in a.items()}
    uri = options.get("document")
    return ls.status(bool(options.get("requests")), uri if isinstance(uri, str) else None)
