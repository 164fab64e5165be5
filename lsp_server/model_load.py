"""Loading the completion model on the inference worker, reported to the client with
`$/progress`; a failed load is shown once and the server stays up."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lsprotocol import types

from .engine import Engine, EngineSettings, ModelChoice, load_engine

if TYPE_CHECKING:
    from .server import GPTBigCodeServer

log = logging.getLogger(__name__)


@dataclass
class ModelState:
    """What the status command reports of the model, updated on the event loop."""

    state: str = "idle"  # idle (before initialized), loading, ready, failed
    choice: ModelChoice | None = None
    error: str | None = None
    engine: Engine | None = None
    loads: int = 0  # load attempts started; only the latest one may change the state


async def load_model(ls: GPTBigCodeServer) -> None:
    """Load the model the options name on the worker, reporting $/progress."""
    model, options = ls.model, ls.options
    model.loads += 1
    attempt = model.loads
    model.state, model.error, model.engine = "loading", None, None
    token = await _begin_progress(ls, f"Loading {options.model}")
    loop = asyncio.get_running_loop()

    def report(message: str) -> None:  # called on the worker thread
        loop.call_soon_threadsafe(_report_progress, ls, token, message)

    try:
        settings = EngineSettings.from_options(options)
        choice = model.choice = ModelChoice.from_options(options)
        engine = await ls.worker.submit(lambda _: load_engine(choice, settings, report)).future
    except Exception as error:
        if attempt == model.loads:
            _load_failed(ls, options.model, error, token)
        return
    if attempt != model.loads:
        return
    model.state, model.engine = "ready", engine
    backend = engine.backend
    if hasattr(backend, "on_fault"):  # a serving engine: its faults and recovery, once each
        backend.on_fault = lambda message: loop.call_soon_threadsafe(_engine_fault, ls, message)
    current = EngineSettings.from_options(ls.options)
    if current != settings:  # the options changed while it loaded
        ls.worker.submit(lambda _: engine.configure(current))
    message = f"{choice.name} ready on {engine.device} ({engine.dtype})"
    log.info("%s", message)
    _end_progress(ls, token, message)
    ls.warming.ready()
    if engine.warnings:
        ls.warn(engine.warnings)


def _engine_fault(ls: GPTBigCodeServer, message: str | None) -> None:
    if message is None:
        kind, text = types.MessageType.Info, "gptbigcode: the engine answers again"
    else:
        kind = types.MessageType.Warning
        text = f"gptbigcode: {message}; completions are empty until it answers"
    ls.window_show_message(types.ShowMessageParams(type=kind, message=text))


def _load_failed(ls: GPTBigCodeServer, name: str, error: Exception, token: str | None) -> None:
    model = ls.model
    model.state = "failed"
    model.error = f"could not load model {name!r}: {error or type(error).__name__}"
    log.error("%s", model.error)
    _end_progress(ls, token, "failed")
    ls.window_show_message(
        types.ShowMessageParams(type=types.MessageType.Error, message=model.error)
    )


async def _begin_progress(ls: GPTBigCodeServer, title: str) -> str | None:
    if not ls.client.progress:
        return None
    token = f"gptbigcode/load/{uuid.uuid4()}"
    try:
        await ls.work_done_progress.create_async(token)
    except Exception:  # a client that refuses simply gets no progress
        log.info("the client refused a progress token", exc_info=True)
        return None
    ls.work_done_progress.begin(
        token, types.WorkDoneProgressBegin(title=title, cancellable=False)
    )
    return token


def _report_progress(ls: GPTBigCodeServer, token: str | None, message: str) -> None:
    if token is not None:
        ls.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))


def _end_progress(ls: GPTBigCodeServer, token: str | None, message: str) -> None:
    if token is not None:
        ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
