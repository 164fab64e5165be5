"""A completion request's way, top to bottom: partial-token repair and the prompt window ->
the backend's token stream -> stop rules -> post-processing -> the confidence gate."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

from cache import ContextBudget, Layout, PromptBuilder
from cache.crossfile import RepoContext, RepoContextChooser

from .backend import Backend, TokenStream
from .confidence import Scored, gate
from .postprocess import Syntax, postprocess, syntax_for, wants_single_line
from .repair import split_unstable_tail
from .requests import Completion, CompletionRequest, EngineSettings, GenerationParams
from .stops import clean_end, cut_at_stops, whole_characters
from .warming import Warming, WarmRun

# Tokens kept free beyond the document text: the three FIM tokens, and the tokens that
# re-type the text partial-token repair took off the prompt.
RESERVED_TOKENS = 3 + 16
# Without a contextTokens option, a backend that reports its prefill rate (a CPU) gets a prompt
# it computes from scratch in about this long (a file opened, a cursor moved far), at least
# DEVICE_MIN_TOKENS, in steps of DEVICE_STEP_TOKENS; the model's positions bound it in any case.
DEVICE_PREFILL_SECONDS = 2.0
DEVICE_MIN_TOKENS = 512
DEVICE_STEP_TOKENS = 256
# fimLayout "auto" puts the prefix first where a whole window takes longer than this to compute
# from scratch (the first request after a cursor move should take about a second at most).
AUTO_PSM_SECONDS = 1.0
MiB = 1 << 20
BUDGET_STOPS = frozenset({"max_tokens", "time", "context"})  # the model had not finished
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class Engine:
    """Completions from a backend, with the prompt windows of every open document.

    Not thread-safe: one inference worker calls `complete`, `configure` and `forget`.
    """

    def __init__(self, backend: Backend, settings: EngineSettings | None = None) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.settings = settings or EngineSettings()
        self.warnings: list[str] = []  # what the user should hear of how it was loaded
        self.gated = {"hidden": 0, "cut": 0}  # suggestions the confidence gate hid or cut
        # minConfidence when the option leaves it to the model (its calibration.json; 0: none)
        self.calibrated_confidence = 0.0
        self.budget_source = "model"  # what chose the context budget: option, device, model
        self.builder = PromptBuilder(self.tokenizer, self._budget(self.settings))
        self.warming = Warming()  # prefill ahead of requests (warming.py)
        self.cross_file = RepoContextChooser(self.tokenizer)  # other files' text, per document
        self.cross_file_last: dict[str, Any] = {}  # what the last prompt showed of them
        self.configure(self.settings)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def dtype(self) -> str:
        return self.backend.dtype

    def configure(self, settings: EngineSettings) -> None:
        """Apply the settings the cache and the prompt windows depend on."""
        self.backend.set_cache_budget(settings.cache_budget_mb * MiB)
        budget = self._budget(settings)
        if budget != self.builder.budget:
            self.builder = PromptBuilder(self.tokenizer, budget)
        self.settings = settings

    def _budget(self, settings: EngineSettings) -> ContextBudget:
        positions = self.backend.n_positions
        room = positions - min(settings.max_new_tokens, positions // 2) - RESERVED_TOKENS
        device = self.device_tokens()
        if settings.context_tokens is not None and settings.context_tokens <= room:
            wanted, self.budget_source = settings.context_tokens, "option"
        elif settings.context_tokens is None and device is not None and device < room:
            wanted, self.budget_source = device, "device"
        else:
            wanted, self.budget_source = room, "model"
        return ContextBudget(tokens=max(8, wanted))

    def device_tokens(self) -> int | None:
        """Prompt tokens the backend computes from scratch in DEVICE_PREFILL_SECONDS, or None
        where it does not say how fast it is."""
        rate = getattr(self.backend, "prefill_rate", None)
        if not rate:
            return None
        steps = int(rate * DEVICE_PREFILL_SECONDS) // DEVICE_STEP_TOKENS
        return max(DEVICE_MIN_TOKENS, steps * DEVICE_STEP_TOKENS)

    def layout(self) -> Layout:
        """The FIM layout the settings ask for where the tokenizer has FIM tokens (plain text
        otherwise). "auto": prefix first (psm_line: a cursor move costs the lines moved over
        and the capped suffix) where the backend computes a whole prompt window from scratch
        in more than AUTO_PSM_SECONDS; SPM elsewhere (a move is cheap there too, and the
        packaged model completes SPM prompts better: tests/bench/accept.py)."""
        if self.tokenizer.fim is None:
            return "plain"
        wanted = self.settings.fim_layout
        if wanted == "auto":
            rate = getattr(self.backend, "prefill_rate", None)
            slow = rate is not None and self.builder.budget.tokens > rate * AUTO_PSM_SECONDS
            wanted = "psm" if slow else "spm"
        return "psm_line" if wanted == "psm" else "spm"

    def forget(self, uri: str) -> None:
        """Drop a closed document's cache entries and windows."""
        self.backend.forget(uri)
        self.builder.forget(uri)
        self.warming.forget(uri)
        self.cross_file.forget(uri)

    def status(self) -> dict[str, Any]:
        """The backend's report (device, dtype, decode_path, cache, model_steps...) with the
        layout and the prompt windows' moves; snake_case keys."""
        report = self.backend.status()
        cache = report.get("cache")
        if isinstance(cache, dict):
            cache["window_moves"] = self.builder.window_moves
        report["layout"] = self.layout()
        report["warm"] = self.warming.status()
        report["confidence"] = {"calibrated": self.calibrated_confidence, **self.gated}
        rate = getattr(self.backend, "prefill_rate", None)
        report["context"] = {"tokens": self.builder.budget.tokens, "chosen_by": self.budget_source,
                             "prefill_tokens_per_s": round(rate) if rate else None}
        report["cross_file"] = self.cross_file_status()
        return report

    def cross_file_status(self) -> dict[str, Any]:
        """Whether other files' text goes into prompts (or why not), and what the last prompt
        showed of them: files, tokens, choices made."""
        enabled = self.settings.cross_file_share > 0
        why = ("" if self.cross_file.available else
               "off: the model's tokenizer has no <reponame> / <filename> tokens")
        return {"enabled": enabled and self.cross_file.available, "reason": why,
                "max_tokens": self._cross_file_tokens(), "choices": self.cross_file.choices,
                **self.cross_file_last}

    def _cross_file_tokens(self) -> int:
        return int(self.builder.budget.tokens * self.settings.cross_file_share)

    def repo_context(self, request: CompletionRequest) -> RepoContext | None:
        """Other files' text for the request's prompt (cache/crossfile.py), or None: off, no
        repository tokens, or nothing relevant open."""
        if self.settings.cross_file_share <= 0 or not self.cross_file.available:
            return None
        return self.cross_file.choose(request.uri, request.text, request.cursor, request.others,
                                      self._cross_file_tokens(), request.root,
                                      request.language_id)

    def warm(self, request: CompletionRequest, cancelled: Callable[[], bool] = lambda: False,
             document: bool = True) -> list[WarmRun]:
        """Prefill, ahead of any request, what a request like this one would need (and, with
        the prefix first, the document's head for moves within the window), in chunks;
        `cancelled` is polled between chunks, and the chunks done stay cached. The prompt
        windows are left as they are: a request's prompt is the same warmed or not."""
        return self.warming.warm(self, request, cancelled, document)

    # -- a request --------------------------------------------------------------------------

    def complete(
        self,
        request: CompletionRequest,
        params: GenerationParams | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        stop_when_gated: bool = False,
    ) -> Completion:
        """The suggestion at the request's cursor. `cancelled` is polled between tokens.
        `stop_when_gated`: stop (reason "gated") once the first line is whole and scores below
        the confidence gate, whose verdict no later token changes (for further candidates,
        whose cost is then that line's; the single suggestion runs to its end)."""
        started = time.perf_counter()
        params = params or GenerationParams()
        request = request.as_valid_unicode()
        deadline = started + params.time_budget_ms / 1000
        layout = self.layout()
        prefix = request.prefix
        stable, typed = split_unstable_tail(self.tokenizer, prefix)
        # The prompt ends before the text a next keystroke could re-tokenise; generation
        # re-types that text first (and so keeps the prompt, and its cache, unchanged).
        context = self.repo_context(request)
        prompt = self.builder.build(request.uri, stable + request.suffix, len(stable), layout,
                                    context)
        self.cross_file_last = {"files": context.files if context else [],
                                "tokens": prompt.context_tokens}
        if not prompt.ids or cancelled():
            return Completion("", stop_reason="cancelled" if prompt.ids else "empty",
                              total_ms=_since(started))
        retype = typed.encode()
        single_line = wants_single_line(request.suffix)
        line_prefix = prefix[prefix.rfind("\n") + 1 :]
        stream = self.backend.generate(prompt.key, prompt.ids, params, retype, cancelled)
        ids: list[int] = []
        data = bytearray()
        retyped = 0  # tokens generated to re-type the text the prompt left out
        reason = ""
        judged = not stop_when_gated or self._threshold(params) <= 0  # the first line's score
        with closing(stream):
            for token in stream:
                retyped += len(data) < len(retype)  # re-typing is not part of the token budget
                ids.append(token)
                data += self.tokenizer.decode_bytes([token])
                new = bytes(data[len(retype):]) if len(data) >= len(retype) else None
                reason = self._stop_reason(len(ids) - retyped, new, stream, params,
                                           single_line, cancelled, deadline, line_prefix)
                if not reason and not judged and new is not None:
                    verdict = self._head_verdict(new, ids, stream.logprobs, len(retype), params)
                    judged, reason = verdict is not None, "gated" if verdict is False else ""
                if reason:
                    break
            else:
                reason = stream.finish
        generated = cut_at_stops(whole_characters(bytes(data[len(retype):])), params.stop,
                                 single_line, line_prefix)[0]
        shown = postprocess(generated, prefix, request.suffix, request.language_id)
        if reason in BUDGET_STOPS:  # never show the word or expression it was writing
            syntax = syntax_for(request.language_id)
            ended = clean_end(generated, line_prefix, syntax)
            shown = _clean_shown(
                postprocess(ended, prefix, request.suffix, request.language_id), line_prefix,
                syntax)
        if reason in ("cancelled", "error"):  # error: the engine failed mid-way
            shown = ""
        text, confidence = self._gate(shown, ids, stream.logprobs, len(retype), params)
        usage = stream.usage
        self.warming.found(prompt.key, prompt.ids, usage.reused_tokens)
        return Completion(
            text=text,
            generated=generated,
            stop_reason=reason,
            layout=layout,
            prompt_tokens=len(prompt.ids),
            reused_tokens=usage.reused_tokens,
            computed_tokens=usage.computed_tokens,
            new_tokens=len(ids),
            token_ids=tuple(ids),
            token_logprobs=tuple(stream.logprobs),
            retyped_tokens=retyped,
            model_steps=usage.steps,
            model_ms=usage.model_ms,
            total_ms=_since(started),
            confidence=confidence,
            hidden=bool(shown) and not text,
        )

    def _gate(self, shown: str, ids: list[int], logprobs: list[float], skip: int,
              params: GenerationParams) -> tuple[str, float | None]:
        """The suggestion the confidence gate lets through, and its first line's score (None
        when the backend gave no log-probabilities). `skip`: bytes of `ids` re-typing text
        already in the document."""
        if not shown or len(logprobs) != len(ids):
            return shown, None
        pieces = [self.tokenizer.decode_bytes([token]) for token in ids]
        scored = Scored.from_tokens(pieces, logprobs, skip=skip)
        kept, confidence = gate(_LINE_BREAK.sub("\n", shown), scored, self._threshold(params))
        if kept == _LINE_BREAK.sub("\n", shown):
            return shown, confidence
        self.gated["cut" if kept else "hidden"] += 1
        return _in_document_breaks(shown, kept), confidence

    def _threshold(self, params: GenerationParams) -> float:
        """The confidence gate's threshold: the request's, else the model's calibrated one."""
        if params.min_confidence is None:
            return self.calibrated_confidence
        return params.min_confidence

    def _head_verdict(self, new: bytes, ids: list[int], logprobs: list[float], skip: int,
                      params: GenerationParams) -> bool | None:
        """Whether the gate lets the generation's head through (its first line with text of
        its own, judged once a line break follows it), or None: not whole yet, or no scores.
        `new`: the text after the cursor so far; `skip`: bytes of `ids` re-typing text."""
        if len(logprobs) != len(ids):
            return None
        lines = _LINE_BREAK.sub("\n", whole_characters(new)).split("\n")
        head = next((n for n, line in enumerate(lines[:-1]) if line.strip()), None)
        if head is None:
            return None
        pieces = [self.tokenizer.decode_bytes([token]) for token in ids]
        scored = Scored.from_tokens(pieces, logprobs, skip=skip)
        return bool(gate("\n".join(lines[: head + 1]), scored, self._threshold(params))[0])

    @staticmethod
    def _stop_reason(count: int, new: bytes | None, stream: TokenStream,
                     params: GenerationParams, single_line: bool,
                     cancelled: Callable[[], bool], deadline: float, line_prefix: str) -> str:
        """Why generation must stop after `count` new tokens whose text beyond the cursor is
        `new` (None while still re-typing), or "" to go on. Checked before each forward
        pass, so a request that stops costs no further step."""
        if new is not None:
            why = cut_at_stops(whole_characters(new), params.stop, single_line, line_prefix)[1]
            if why:
                return why
        if cancelled():
            return "cancelled"
        if count >= params.max_new_tokens:
            return "max_tokens"
        if stream.full:
            return "context"
        if time.perf_counter() > deadline:
            return "time"
        return ""


def _clean_shown(shown: str, line_prefix: str, syntax: Syntax) -> str:
    """A budget-stopped suggestion after post-processing (which may cut it again) still ends
    on a clean boundary; a last line of indentation alone (where Enter puts the closers that
    follow the cursor) is kept when nothing before it is cut."""
    text = _LINE_BREAK.sub("\n", shown)
    body = text.rstrip(" \t")
    body = body[:-1] if body.endswith("\n") else text
    ended = clean_end(body + "\n", line_prefix, syntax)  # its last line is a whole line
    return shown if ended == body else _in_document_breaks(shown, ended)


def _in_document_breaks(shown: str, kept: str) -> str:
    """`kept`, a cut of `shown` with its line breaks as \\n, in shown's own line breaks."""
    if not kept:
        return ""
    *whole, last = kept.split("\n")
    starts = [0] + [found.end() for found in _LINE_BREAK.finditer(shown)]
    return shown[: starts[len(whole)]] + last


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
