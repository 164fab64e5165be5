"""The pygls server: document sync, inline and ordinary completions, options, model loading
with progress, and the status command. Handlers are thin; the pipeline (completion.py) runs on
the inference worker (worker.py), so the event loop never waits on the model."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer

from .completion import (
    Completion,
    CompletionEngine,
    CompletionRequest,
    ModelChoice,
    RequestLog,
    RequestRecord,
    TypeThrough,
    load_engine,
)
from .diagnostics import Diagnoser, Finding, secret_action, to_lsp
from .documents import (
    Document,
    DocumentStore,
    TextChange,
    UnknownDocumentError,
    choose_encoding,
)
from .options import Options, as_json, merge
from .wire import WireProtocol
from .worker import InferenceWorker, Job

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


@dataclass(eq=False)
class Pending:
    """A completion request in flight for one document; a newer one supersedes it."""

    task: asyncio.Task[Any] | None
    superseded: asyncio.Future[None]
    job: Job[Completion] | None = None

    def supersede(self) -> None:
        if not self.superseded.done():
            self.superseded.set_result(None)
        if self.job is not None:
            self.job.cancel()


@dataclass(frozen=True)
class Suggestion:
    """Text to insert at `offset` of `document`."""

    document: Document
    offset: int
    text: str


@dataclass
class ModelState:
    """What the status command reports of the model, updated on the event loop."""

    state: str = "idle"  # idle (before initialized), loading, ready, failed
    choice: ModelChoice | None = None
    error: str | None = None
    engine: CompletionEngine | None = None
    loads: int = 0  # load attempts started; only the latest one may change the state


@dataclass
class DiagnosticsState:
    """The diagnostics model (loaded on first use) and the work in flight per document."""

    state: str = "idle"  # idle (not loaded yet), loading, ready, failed
    model: str | None = None  # the diagnostics.model option it was loaded for
    error: str | None = None
    diagnoser: Diagnoser | None = None
    loading: asyncio.Future[Diagnoser | None] | None = None
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    jobs: dict[str, Job[list[Finding] | None]] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)  # uri -> diagnostics published
    runs: int = 0


@dataclass
class ClientFacts:
    """What `initialize` told us about the client."""

    progress: bool = False  # window.workDoneProgress
    initialized: bool = False  # the `initialized` notification came (a repeat is ignored)
    messages: list[str] = field(default_factory=list)  # option problems to show once ready


class GPTBigCodeServer(LanguageServer):
    """The server's state: documents, options, the model and the requests in flight."""

    protocol: WireProtocol

    def __init__(self) -> None:
        super().__init__(NAME, _version(), protocol_cls=WireProtocol)
        self.documents = DocumentStore()
        self.options = Options()
        self.model = ModelState()
        self.client = ClientFacts()
        self.type_through = TypeThrough()
        self.requests = RequestLog()
        self.diagnostics = DiagnosticsState()
        self._latest: dict[str, Pending] = {}
        self._changed_at: dict[str, float] = {}
        self._worker: InferenceWorker | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure_shown = False  # a failed completion was shown; none succeeded since

    @property
    def worker(self) -> InferenceWorker:
        if self._worker is None:
            self._worker = InferenceWorker(asyncio.get_running_loop())
        return self._worker

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Protocol errors go to the log, not to the user's screen (pygls would show each one:
        a client sending bad messages would cause a storm). A frame whose body is not JSON
        is answered with a Parse error; the read loop reports those with source
        JsonRpcException."""
        if source is JsonRpcException and isinstance(error, ValueError | RecursionError):
            self.protocol.answer_unreadable()
        log.warning("protocol error (%s): %s", getattr(source, "__name__", source),
                    type(error).__name__)

    def spawn(self, coroutine: Any) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- options ----------------------------------------------------------------------------

    def apply_options(self, raw: object) -> None:
        """Merge client options; reload the model when model, device or dtype changed."""
        old = self.options
        self.options, messages = merge(old, raw)
        if messages:
            self.warn(messages)
        def loading(o: Options) -> tuple[Any, ...]:
            return (o.model, o.device, o.dtype, o.quantize, o.compile_decode)

        changed = loading(old) != loading(self.options)
        if changed and self.model.state != "idle":
            self.spawn(self.load_model())
        if self.diagnostics.state == "failed":  # a new configuration may fix it: try again
            self.diagnostics.state, self.diagnostics.loading = "idle", None
        if old.diagnostics != self.options.diagnostics:
            self.diagnostics_options_changed(old.diagnostics.model)

    def warn(self, messages: list[str]) -> None:
        for message in messages:
            log.warning("%s", message)
        self.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Warning, message="; ".join(messages))
        )

    # -- model loading ----------------------------------------------------------------------

    async def load_model(self) -> None:
        """Load the model the options name on the worker, reporting $/progress."""
        model, options = self.model, self.options
        model.loads += 1
        attempt = model.loads
        model.state, model.error, model.engine = "loading", None, None
        token = await self._begin_progress(f"Loading {options.model}")
        loop = asyncio.get_running_loop()

        def report(message: str) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(self._report_progress, token, message)

        try:
            choice = model.choice = ModelChoice.from_options(options)
            job = self.worker.submit(lambda _: load_engine(choice, options, report))
            engine = await job.future
        except Exception as error:
            if attempt == model.loads:
                self._load_failed(options.model, error, token)
            return
        if attempt != model.loads:
            return
        model.state, model.engine = "ready", engine
        message = f"{choice.name} ready on {engine.device} ({_dtype_name(engine)})"
        log.info("%s", message)
        self._end_progress(token, message)

    def _load_failed(self, name: str, error: Exception, token: str | None) -> None:
        self.model.state = "failed"
        self.model.error = f"could not load model {name!r}: {error or type(error).__name__}"
        log.error("%s", self.model.error)
        self._end_progress(token, "failed")
        self.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Error, message=self.model.error)
        )

    async def _begin_progress(self, title: str) -> str | None:
        if not self.client.progress:
            return None
        token = f"gptbigcode/load/{uuid.uuid4()}"
        try:
            await self.work_done_progress.create_async(token)
        except Exception:  # a client that refuses simply gets no progress
            log.info("the client refused a progress token", exc_info=True)
            return None
        self.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title=title, cancellable=False)
        )
        return token

    def _report_progress(self, token: str | None, message: str) -> None:
        if token is not None:
            self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))

    def _end_progress(self, token: str | None, message: str) -> None:
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))

    # -- completions ------------------------------------------------------------------------

    async def suggest(self, uri: str, position: types.Position, kind: str) -> Suggestion | None:
        """The suggestion at `position`, or None. Latest wins per document: this request
        supersedes an older one, which answers first, with nothing."""
        started = time.perf_counter()
        try:
            document = self.documents.get(uri)
        except UnknownDocumentError:
            self._record(kind, started, "unknownDocument")
            return None
        offset = document.offset_at(position, self.documents.encoding)
        pending = Pending(asyncio.current_task(), asyncio.get_running_loop().create_future())
        older = self._latest.get(uri)
        self._latest[uri] = pending
        try:
            if older is not None:
                older.supersede()
                if older.task is not None and not older.task.done():
                    await asyncio.wait({older.task})  # its empty answer goes out first
            return await self._suggest(document, offset, pending, kind, started)
        except asyncio.CancelledError:  # $/cancelRequest: pygls answers RequestCancelled
            pending.supersede()
            if pending.job is not None:
                self._record_when_done(pending.job, kind, started, "cancelled")
            else:
                self._record(kind, started, "cancelled")
            raise
        finally:
            if self._latest.get(uri) is pending:
                del self._latest[uri]

    async def _suggest(
        self, document: Document, offset: int, pending: Pending, kind: str, started: float
    ) -> Suggestion | None:
        uri, text = document.uri, document.text
        prefix, suffix = text[:offset], text[offset:]
        through = self.type_through.answer(uri, prefix, suffix)
        if pending.superseded.done():
            self._record(kind, started, "superseded")
            return None
        if through is not None:
            self._record(kind, started, "typeThrough", chars=len(through))
            return Suggestion(document, offset, through)
        engine = self.model.engine
        if engine is None:
            self._record(kind, started, "notReady")
            return None
        delay = self._debounce_left(uri)
        if delay > 0:
            await asyncio.wait({pending.superseded}, timeout=delay)
        if pending.superseded.done():
            self._record(kind, started, "superseded")
            return None
        request = CompletionRequest(uri, text, offset, document.language_id or "python")
        options = self.options
        job = self.worker.submit(
            lambda job: engine.complete(request, options, lambda: job.cancelled)
        )
        pending.job = job
        either: set[asyncio.Future[Any]] = {job.future, pending.superseded}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if pending.superseded.done():
            self._record_when_done(job, kind, started, "superseded")
            return None
        try:
            completion = job.future.result()
        except Exception as error:
            log.exception("completion failed for %s", uri)
            self._record(kind, started, "error")
            self._completion_failed(error)
            return None
        self._failure_shown = False
        self.type_through.remember(uri, prefix, suffix, completion.text)
        self._record(kind, started, "model", completion)
        return Suggestion(document, offset, completion.text)

    def _completion_failed(self, error: Exception) -> None:
        """Show a failure once; more failures before a success go to the log only."""
        if self._failure_shown:
            return
        self._failure_shown = True
        detail = _short(f"{type(error).__name__}: {error}", 300)
        self.window_show_message(types.ShowMessageParams(
            type=types.MessageType.Error,
            message=f"gptbigcode: a completion failed ({detail}); the next one will try again",
        ))

    def _debounce_left(self, uri: str) -> float:
        """Seconds to wait so that debounceMs have passed since the document last changed."""
        changed = self._changed_at.get(uri)
        if changed is None or self.options.debounce_ms <= 0:
            return 0.0
        return self.options.debounce_ms / 1000 - (time.perf_counter() - changed)

    def _record_when_done(
        self, job: Job[Completion], kind: str, started: float, outcome: str
    ) -> None:
        """Record an abandoned job once the worker has stopped it, with the steps it ran."""

        def done(future: asyncio.Future[Completion]) -> None:
            ran = None if future.cancelled() or future.exception() else future.result()
            self._record(kind, started, outcome, ran)

        job.future.add_done_callback(done)

    def _record(
        self,
        kind: str,
        started: float,
        outcome: str,
        completion: Completion | None = None,
        chars: int = 0,
    ) -> None:
        total = (time.perf_counter() - started) * 1000
        if completion is None:
            self.requests.add(RequestRecord(kind, outcome, total, chars=chars))
            return
        self.requests.add(RequestRecord(
            kind, outcome, total, completion.model_ms, completion.model_steps,
            completion.new_tokens, completion.reused_tokens, completion.computed_tokens,
            completion.stop_reason, len(completion.text),
        ))

    # -- documents --------------------------------------------------------------------------

    def forget(self, uri: str) -> None:
        """A document closed: drop its requests, its suggestion and its cache entries."""
        pending = self._latest.pop(uri, None)
        if pending is not None:
            pending.supersede()
        self.type_through.forget(uri)
        self._changed_at.pop(uri, None)
        engine = self.model.engine
        if engine is not None:
            self.worker.submit(lambda _: engine.forget(uri))
        self.cancel_diagnostics(uri)
        self.clear_diagnostics(uri)
        diagnoser = self.diagnostics.diagnoser
        if diagnoser is not None:
            self.worker.submit(lambda _: diagnoser.forget(uri))

    def touched(self, uri: str) -> None:
        self._changed_at[uri] = time.perf_counter()

    # -- diagnostics ------------------------------------------------------------------------

    def schedule_diagnostics(self, uri: str) -> None:
        """Run the heads on `uri` once edits have settled for diagnostics.debounceMs."""
        state, options = self.diagnostics, self.options.diagnostics
        self.cancel_diagnostics(uri)
        if not options.enabled or not self.client.initialized:
            return
        loop = asyncio.get_running_loop()
        state.timers[uri] = loop.call_later(
            options.debounce_ms / 1000, lambda: self.spawn(self.run_diagnostics(uri))
        )

    def cancel_diagnostics(self, uri: str) -> None:
        timer = self.diagnostics.timers.pop(uri, None)
        if timer is not None:
            timer.cancel()
        job = self.diagnostics.jobs.pop(uri, None)
        if job is not None:
            job.cancel()

    async def run_diagnostics(self, uri: str) -> None:
        state, options = self.diagnostics, self.options.diagnostics
        state.timers.pop(uri, None)
        try:
            document = self.documents.get(uri)
        except UnknownDocumentError:
            return
        if len(document.text) > options.max_chars:
            log.info("diagnostics skipped for %s: %d characters (maxChars %d)", uri,
                     len(document.text), options.max_chars)
            self.publish(document, [])
            return
        diagnoser = await self.diagnoser()
        if diagnoser is None or not self.options.diagnostics.enabled:
            return
        text, language = document.text, document.language_id or "python"
        job = self.worker.submit(
            lambda job: diagnoser.findings(uri, text, language, options, lambda: job.cancelled)
        )
        state.jobs[uri] = job
        try:
            findings = await job.future
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("diagnostics failed for %s", uri)
            return
        finally:
            if state.jobs.get(uri) is job:
                del state.jobs[uri]
        current = self.documents.get(uri) if uri in self.documents else None
        if findings is None or current is None or current.version != document.version:
            return  # cancelled, closed, or edited since: a newer run is scheduled
        state.runs += 1
        self.publish(document, findings)

    def publish(self, document: Document, findings: list[Finding]) -> None:
        if not findings and not self.diagnostics.published.get(document.uri):
            return  # nothing shown, nothing to clear
        self.diagnostics.published[document.uri] = len(findings)
        self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
            uri=document.uri, version=document.version,
            diagnostics=to_lsp(findings, document, self.documents.encoding),
        ))

    def clear_diagnostics(self, uri: str) -> None:
        if self.diagnostics.published.pop(uri, 0):
            self.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(uri=uri, diagnostics=[])
            )

    async def diagnoser(self) -> Diagnoser | None:
        """The diagnostics model, loaded on the worker the first time it is needed."""
        state, name = self.diagnostics, self.options.diagnostics.model
        if state.diagnoser is not None and state.model == name:
            return state.diagnoser
        if state.state == "failed" and state.model == name:
            return None
        if state.loading is None or state.model != name:
            state.state, state.model, state.error = "loading", name, None
            state.loading = asyncio.ensure_future(self._load_diagnoser(name))
        return await asyncio.shield(state.loading)

    async def _load_diagnoser(self, name: str) -> Diagnoser | None:
        state = self.diagnostics
        try:
            diagnoser = await self.worker.submit(lambda _: Diagnoser.load(name)).future
        except Exception as error:
            if state.model == name:
                state.state, state.loading = "failed", None
                state.error = f"could not load diagnostics model {name!r}: {error}"
                log.error("%s", state.error)
                self.window_show_message(types.ShowMessageParams(
                    type=types.MessageType.Error, message=state.error))
            return None
        if state.model != name:
            return None
        state.state, state.diagnoser, state.loading = "ready", diagnoser, None
        log.info("diagnostics model %s ready", name)
        return diagnoser

    def diagnostics_options_changed(self, old_model: str) -> None:
        """New thresholds or switches: run again on every open document (or clear)."""
        state, options = self.diagnostics, self.options.diagnostics
        if options.model != old_model:
            state.diagnoser, state.loading, state.state = None, None, "idle"
        for uri in list(self.documents):
            if options.enabled:
                self.schedule_diagnostics(uri)
            else:
                self.cancel_diagnostics(uri)
                self.clear_diagnostics(uri)

    # -- status -----------------------------------------------------------------------------

    def status(self, with_requests: bool = False, uri: str | None = None) -> dict[str, Any]:
        """Model, device, dtype, state, cache statistics, latency percentiles, model steps,
        the worker's queue; with `uri`, a digest of that document's text."""
        model, engine = self.model, self.model.engine
        cache = asdict(engine.cache.stats.snapshot()) if engine is not None else None
        report: dict[str, Any] = {
            "model": model.choice.name if model.choice else self.options.model,
            "device": str(engine.device) if engine else (model.choice and model.choice.device),
            "dtype": _dtype_name(engine) if engine else None,
            "quantize": model.choice.quantize if model.choice else self.options.quantize,
            "state": model.state,
            "ready": model.state == "ready",
            "error": model.error,
            "layout": engine.layout(self.options) if engine else None,
            "positionEncoding": self.documents.encoding,
            "documents": len(self.documents),
            "cache": _camel_keys(cache) if cache is not None else None,
            "latencyMs": self.requests.latency(),
            "modelSteps": engine.model_steps if engine else 0,
            "requests": dict(self.requests.counts),
            "worker": _camel_keys(asdict(self._worker.snapshot())) if self._worker else None,
            "options": as_json(self.options),
            "diagnostics": self.diagnostics_status(),
        }
        if with_requests:
            report["recent"] = [_camel_keys(asdict(r)) for r in self.requests.records]
        if uri is not None:
            report["document"] = self.digest(uri)
        return report

    def diagnostics_status(self) -> dict[str, Any]:
        state, diagnoser = self.diagnostics, self.diagnostics.diagnoser
        return {
            "state": state.state,
            "model": state.model,
            "error": state.error,
            "runs": state.runs,
            "documentsWithFindings": sum(1 for n in state.published.values() if n),
            "tokensComputed": diagnoser.tokens_computed if diagnoser else 0,
            "functionsScored": diagnoser.functions_scored if diagnoser else 0,
        }

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


def _dtype_name(engine: CompletionEngine) -> str:
    return str(engine.dtype).removeprefix("torch.")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _camel_keys(values: dict[str, Any]) -> dict[str, Any]:
    return {re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): v for k, v in values.items()}


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
    ls.options, ls.client.messages = merge(ls.options, params.initialization_options)


@server.feature(types.INITIALIZED)
def initialized(ls: GPTBigCodeServer, params: types.InitializedParams) -> None:
    """Show option problems, and start loading the model (once: a repeated notification
    must not reload it)."""
    if ls.client.initialized:
        log.warning("initialized was sent again; ignored")
        return
    ls.client.initialized = True
    if ls.client.messages:
        ls.warn(ls.client.messages)
    ls.spawn(ls.load_model())
    for uri in list(ls.documents):
        ls.schedule_diagnostics(uri)


@server.feature(types.SHUTDOWN)
def shutdown(ls: GPTBigCodeServer, params: None) -> None:
    """Stop the inference worker after its current job."""
    if ls._worker is not None:
        ls._worker.stop()


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
    ls.schedule_diagnostics(item.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: GPTBigCodeServer, params: types.DidChangeTextDocumentParams) -> None:
    """Apply incremental (or whole-document) changes."""
    uri = params.text_document.uri
    changes = [TextChange(c.text, getattr(c, "range", None)) for c in params.content_changes]
    try:
        ls.documents.change(uri, params.text_document.version, changes)
    except UnknownDocumentError:
        log.warning("didChange for %s, which is not open", uri)
        return
    ls.touched(uri)
    ls.schedule_diagnostics(uri)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: GPTBigCodeServer, params: types.DidSaveTextDocumentParams) -> None:
    """Nothing to do: the text is already in sync."""
    log.debug("saved %s", params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: GPTBigCodeServer, params: types.DidCloseTextDocumentParams) -> None:
    """Forget a closed document and its cache entries."""
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
    """Suggest text at the cursor, for the editor to show inline."""
    found = await ls.suggest(params.text_document.uri, params.position, "inline")
    if found is None or not found.text:
        return types.InlineCompletionList(items=[])
    here = _position(found.document, found.offset, ls)
    item = types.InlineCompletionItem(insert_text=found.text, range=types.Range(here, here))
    return types.InlineCompletionList(items=[item])


@server.feature(
    types.TEXT_DOCUMENT_COMPLETION,
    types.CompletionOptions(trigger_characters=COMPLETION_TRIGGERS, resolve_provider=False),
)
async def completion(ls: GPTBigCodeServer, params: types.CompletionParams) -> types.CompletionList:
    """Suggest text at the cursor as one completion item replacing the word before it."""
    found = await ls.suggest(params.text_document.uri, params.position, "completion")
    if found is None or not found.text:
        return types.CompletionList(is_incomplete=True, items=[])
    return types.CompletionList(is_incomplete=True, items=[_completion_item(found, ls)])


def _completion_item(found: Suggestion, ls: GPTBigCodeServer) -> types.CompletionItem:
    """An item whose edit re-types the word before the cursor and adds the suggestion, so
    that a client filtering by that word keeps it."""
    document, offset = found.document, found.offset
    word = _WORD_BEFORE.search(document.text, max(0, offset - WORD_CHARS), offset)
    start = word.start() if word else offset
    new_text = document.text[start:offset] + found.text
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
        sort_text="0",
        preselect=True,
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
    """For each of our secret diagnostics in the request: read the value from an environment
    variable instead (Python, JavaScript / TypeScript, shell)."""
    only = params.context.only
    if only and not any(types.CodeActionKind.QuickFix.value.startswith(kind) for kind in only):
        return []
    try:
        document = ls.documents.get(params.text_document.uri)
    except UnknownDocumentError:
        return []
    actions = []
    for diagnostic in params.context.diagnostics:
        action = secret_action(document, diagnostic, ls.documents.encoding)
        if action is not None:
            actions.append(action)
    return actions


# -- commands -------------------------------------------------------------------------------


@server.command(STATUS_COMMAND)
def status(ls: GPTBigCodeServer, *args: Any) -> dict[str, Any]:
    """Model, device, dtype, readiness, cache statistics, latency percentiles, model steps.
    Pass `{"requests": true}` to add the latest requests, one record each, and
    `{"document": uri}` for a digest (length, SHA-256) of the server's text of a document."""
    options = {k: v for a in args if isinstance(a, dict) for k, v in a.items()}
    uri = options.get("document")
    return ls.status(bool(options.get("requests")), uri if isinstance(uri, str) else None)
