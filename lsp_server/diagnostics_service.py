"""The diagnostics service: the heads' model, loaded on the worker the first time it is needed,
run on a document once its edits settle, and its findings published (or cleared)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from .diagnostics import carried, to_lsp
from .documents import Document
from .engine import Diagnoser, Finding
from .options import DiagnosticsOptions
from .scheduling import DocumentState, debounce
from .worker import JobCancelled

if TYPE_CHECKING:
    from .server import GPTBigCodeServer

log = logging.getLogger(__name__)


class DiagnosticsService:
    """The diagnostics model and its runs; per-document work sits in each DocumentState."""

    def __init__(self, ls: GPTBigCodeServer) -> None:
        self.ls = ls
        self.state = "idle"  # idle (not loaded yet), loading, ready, failed
        self.model: str | None = None  # the diagnostics.model option it was loaded for
        self.error: str | None = None
        self.diagnoser: Diagnoser | None = None
        self.loading: asyncio.Future[Diagnoser | None] | None = None
        self.runs = 0

    # -- runs -------------------------------------------------------------------------------

    def schedule(self, uri: str) -> None:
        """Run the heads on `uri` once edits have settled for diagnostics.debounceMs."""
        state = self.ls.states.get(uri)
        if state is None:
            return
        state.cancel_diagnostics()
        if not self.ls.options.diagnostics.enabled or not self.ls.client.initialized:
            return
        state.diagnostics = self.ls.spawn(self._run(uri, state, time.perf_counter()))

    async def _run(self, uri: str, state: DocumentState, since: float) -> None:
        await debounce(since, self.ls.options.diagnostics.debounce_ms)
        try:
            document = self.ls.documents.get(uri)
        except LookupError:
            return
        options = self.ls.options.diagnostics
        if len(document.text) > options.max_chars:
            log.info("diagnostics skipped for %s: %d characters (maxChars %d)", uri,
                     len(document.text), options.max_chars)
            self.publish(state, document, [])
            return
        diagnoser = await self.load()
        if diagnoser is None or not self.ls.options.diagnostics.enabled:
            return
        text, language = document.text, document.language_id or "python"
        job = self.ls.worker.submit(
            lambda job: diagnoser.findings(uri, text, language, options, lambda: job.cancelled)
        )
        state.diagnostics_job = job
        try:
            findings = await job.future
        except JobCancelled:
            return
        except Exception:
            log.exception("diagnostics failed for %s", uri)
            return
        finally:
            if state.diagnostics_job is job:
                state.diagnostics_job = None
        current = self.ls.documents.get(uri) if uri in self.ls.documents else None
        if findings is None or current is None or current.version != document.version:
            return  # cancelled, closed, or edited since: a newer run is scheduled
        self.runs += 1
        self.publish(state, document, findings)

    def publish(self, state: DocumentState, document: Document, findings: list[Finding]) -> None:
        if not findings and not state.published:
            return  # nothing shown, nothing to clear
        state.published = len(findings)
        state.published_on = (document.text, list(findings)) if findings else None
        self.ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
            uri=document.uri, version=document.version,
            diagnostics=to_lsp(findings, document, self.ls.documents.encoding),
        ))

    def carry_over(self, uri: str) -> None:
        """After an edit, until the heads have run again: the findings shown move with their
        text, and those the edit touched are withdrawn at once (an editor keeps a marker on
        text that changed until the next publish, and such a warning is stale)."""
        state = self.ls.states.get(uri)
        if state is None or state.published_on is None or uri not in self.ls.documents:
            return
        document = self.ls.documents.get(uri)
        text, findings = state.published_on
        kept = carried(text, document.text, findings)
        state.published_on = (document.text, kept) if kept else None
        if kept != findings:
            # Published again when a finding moved too: editors move their markers, but not
            # the diagnostics they send back with a code action request (VS Code filters those
            # by their published ranges).
            self.publish(state, document, kept)

    def shown(self, uri: str) -> list[types.Diagnostic]:
        """The diagnostics shown for `uri`, positioned in its current text."""
        state = self.ls.states.get(uri)
        if state is None or state.published_on is None or uri not in self.ls.documents:
            return []
        document = self.ls.documents.get(uri)
        text, findings = state.published_on
        if text != document.text:
            return []
        return to_lsp(findings, document, self.ls.documents.encoding)

    def clear(self, uri: str, state: DocumentState) -> None:
        state.published_on = None
        if state.published:
            state.published = 0
            self.ls.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(uri=uri, diagnostics=[])
            )

    def forget(self, uri: str, state: DocumentState | None) -> None:
        """A document closed: clear what was shown and drop the diagnoser's memory of it."""
        if state is not None:
            self.clear(uri, state)
        diagnoser = self.diagnoser
        if diagnoser is not None:
            self.ls.worker.submit(lambda _: diagnoser.forget(uri))

    # -- the model --------------------------------------------------------------------------

    async def load(self) -> Diagnoser | None:
        """The diagnostics model, loaded on the worker the first time it is needed."""
        name = self.ls.options.diagnostics.model
        if self.diagnoser is not None and self.model == name:
            return self.diagnoser
        if self.state == "failed" and self.model == name:
            return None
        if self.loading is None or self.model != name:
            self.state, self.model, self.error = "loading", name, None
            self.loading = asyncio.ensure_future(self._load(name))
        return await asyncio.shield(self.loading)

    async def _load(self, name: str) -> Diagnoser | None:
        try:
            diagnoser = await self.ls.worker.submit(lambda _: Diagnoser.load(name)).future
        except Exception as error:
            if self.model == name:
                self.state, self.loading = "failed", None
                self.error = f"could not load diagnostics model {name!r}: {error}"
                log.error("%s", self.error)
                self.ls.window_show_message(types.ShowMessageParams(
                    type=types.MessageType.Error, message=self.error))
            return None
        if self.model != name:
            return None
        self.state, self.diagnoser, self.loading = "ready", diagnoser, None
        log.info("diagnostics model %s ready", name)
        return diagnoser

    def options_changed(self, old: DiagnosticsOptions) -> None:
        """A new configuration: a failed load is tried again; new thresholds or switches run
        again on every open document (or clear it)."""
        if self.state == "failed":
            self.state, self.loading = "idle", None
        options = self.ls.options.diagnostics
        if old == options:
            return
        if options.model != old.model:
            self.diagnoser, self.loading, self.state = None, None, "idle"
        for uri, state in list(self.ls.states.items()):
            if options.enabled:
                self.schedule(uri)
            else:
                state.cancel_diagnostics()
                self.clear(uri, state)

    def status(self) -> dict[str, Any]:
        diagnoser = self.diagnoser
        return {
            "state": self.state,
            "model": self.model,
            "error": self.error,
            "runs": self.runs,
            "documentsWithFindings": sum(1 for s in self.ls.states.values() if s.published),
            "tokensComputed": diagnoser.tokens_computed if diagnoser else 0,
            "functionsScored": diagnoser.functions_scored if diagnoser else 0,
        }
