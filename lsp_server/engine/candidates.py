"""Several suggestions for one request: the single path's suggestion first, then seeded samples
of the same prompt, each through the same stop rules, post-processing and confidence gate;
empty and repeated texts dropped, the samples ranked by the gate's score."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .requests import Completion, CompletionRequest, GenerationParams

MAX_CANDIDATES = 8
# Further candidates are sampled with these, whatever the first one used: warm enough for the
# samples to differ from the greedy text and from each other, with the tail cut off, where
# the junk is. On the packaged model (tests/bench/candidates.py, 200 places, no gate) 0.6
# found the removed line among 3 candidates as often as 0.8 (8.0% and 7.5% of places, against
# 3.0% for one) with 14% fewer decode steps a sample; 0.4 repeated the greedy text more often.
SAMPLE_TEMPERATURE = 0.6
SAMPLE_TOP_P = 0.95
# Sample k (1, 2, ...) of a request draws from seed SAMPLE_SEED + k: the same request gives
# the same candidates, whatever ran before it.
SAMPLE_SEED = 1900
# Samples tried per further candidate asked for, as repeats and gated texts are dropped.
ATTEMPTS_PER_CANDIDATE = 2
# A run ending so ends the request: no prompt, a cancel, a serving engine that failed.
FINAL_STOPS = frozenset({"empty", "cancelled", "error"})


class Completer(Protocol):
    """What makes one suggestion: Engine.complete."""

    def complete(self, request: CompletionRequest, params: GenerationParams,
                 cancelled: Callable[[], bool], stop_when_gated: bool = False
                 ) -> Completion: ...


@dataclass(frozen=True)
class Candidates:
    """The suggestions of one request, and every generation run for them."""

    shown: tuple[Completion, ...]  # distinct and non-empty; the single path's first if shown
    runs: tuple[Completion, ...]  # in the order run; runs[0] is the single path's
    # Why fewer samples ran than could have: "cancelled", "time", "error"; "" when none was
    # cut short.
    stopped: str = ""

    @property
    def texts(self) -> list[str]:
        return [completion.text for completion in self.shown]

    @property
    def first(self) -> Completion:
        return self.runs[0]

    def total(self) -> Completion:
        """The first run with the costs of every run added up (for the request log)."""
        first = self.first
        return replace(
            first,
            computed_tokens=sum(run.computed_tokens for run in self.runs),
            new_tokens=sum(run.new_tokens for run in self.runs),
            model_steps=sum(run.model_steps for run in self.runs),
            model_ms=sum(run.model_ms for run in self.runs),
            total_ms=sum(run.total_ms for run in self.runs),
        )


def complete_many(
    engine: Completer,
    request: CompletionRequest,
    params: GenerationParams,
    count: int,
    cancelled: Callable[[], bool] = lambda: False,
) -> Candidates:
    """Up to `count` distinct suggestions at the request's cursor, best first.

    The first is Engine.complete's with `params`, unchanged. The others are samples of the
    same prompt (SAMPLE_TEMPERATURE, SAMPLE_TOP_P, seeded per sample): the backend holds the
    prompt's keys and values from the first run, so each costs its decode steps only, and a
    sample stops as soon as the gate would hide it (its first line whole and scored below the
    threshold). Sampling ends when `count` are found, after ATTEMPTS_PER_CANDIDATE tries per
    further candidate, on a cancel, or when the request's time budget (params.time_budget_ms,
    over all runs) is spent.
    """
    if not 1 <= count <= MAX_CANDIDATES:
        raise ValueError(f"candidates must be in 1..{MAX_CANDIDATES}, got {count}")
    started = time.perf_counter()
    first = engine.complete(request, params, cancelled)
    runs = [first]
    if count == 1 or first.stop_reason in FINAL_STOPS:
        stopped = first.stop_reason if first.stop_reason in ("cancelled", "error") else ""
        return Candidates(_ranked(runs, 1), tuple(runs), stopped)
    stopped = ""
    for attempt in range(1, ATTEMPTS_PER_CANDIDATE * (count - 1) + 1):
        if len(_ranked(runs, count)) >= count:
            break
        left_ms = params.time_budget_ms - (time.perf_counter() - started) * 1000
        if cancelled() or left_ms < 1:
            stopped = "cancelled" if cancelled() else "time"
            break
        sampled = replace(params, temperature=SAMPLE_TEMPERATURE, top_p=SAMPLE_TOP_P,
                          seed=SAMPLE_SEED + attempt, time_budget_ms=int(left_ms))
        run = engine.complete(request, sampled, cancelled, stop_when_gated=True)
        runs.append(run)
        if run.stop_reason in FINAL_STOPS:
            stopped = run.stop_reason
            break
    return Candidates(_ranked(runs, count), tuple(runs), stopped)


def _ranked(runs: Sequence[Completion], count: int) -> tuple[Completion, ...]:
    """The first run's suggestion (when it has one), then the samples by their score, best
    first (a sample without a score last); a text shown already, or none, is left out."""
    first, samples = runs[0], runs[1:]
    ordered = [first] + sorted(samples, key=lambda run: -run.confidence
                               if run.confidence is not None else 1.0)
    shown: list[Completion] = []
    seen: set[str] = set()
    for run in ordered:
        key = _shown_as(run.text)
        if key and key not in seen:
            seen.add(key)
            shown.append(run)
    return tuple(shown[:count])


def _shown_as(text: str) -> str:
    """What an editor shows of a suggestion: line breaks alike, trailing blanks unseen."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip()
