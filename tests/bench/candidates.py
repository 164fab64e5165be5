"""What several candidates per request cost and gain, in process on the engine with default
options, at the acceptance harness' places (tests/bench/accept.py: released packages the model
never saw, the rest of the line or a block body removed, a fresh document each).

    .venv/bin/python tests/bench/candidates.py [--model default|FOLDER] [--places 60]
        [--candidates 3] [--seed 19] [--threads 1] [--min-confidence X]

Per place, Engine candidates (lsp_server/engine/candidates.py) with `--candidates N`: the
first run is the single suggestion's (the prompt computed cold), each further run a sample of
the cached prompt. Then the same place is asked once more for one suggestion (all of its
prompt cached): the cost of a warm request, for comparison. Reported:
- ms, model steps, prompt tokens computed, per first run and per further run (mean, p50);
- ms and steps of the further runs per sample shown (a sample the gate hid, or a repeat,
  costs its steps too);
- show rate, exact@1 (the first suggestion's first line equals the removed text) and exact@N
  (any candidate's does), junk among shown first suggestions and among all candidates;
- candidates shown per place, and why sampling stopped early (time budget, cancel).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accept import _cpu, is_junk, sample_places, sources  # noqa: E402

from lsp_server.engine import (  # noqa: E402
    CompletionRequest,
    EngineSettings,
    GenerationParams,
    ModelChoice,
    load_engine,
    set_threads,
)
from lsp_server.engine.candidates import complete_many  # noqa: E402
from lsp_server.options import Options  # noqa: E402


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 2) if values else None


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help='"default" or a checkpoint folder')
    parser.add_argument("--places", type=int, default=60)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="the minConfidence option (default: the model's calibrated one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    set_threads(args.threads)
    # every other option at its default
    options = Options(model=args.model, min_confidence=args.min_confidence)
    engine = load_engine(ModelChoice(name=args.model), EngineSettings.from_options(options))
    params = GenerationParams.from_options(options)
    places = sample_places(sources("evaluation"), args.places, args.seed)

    first_ms: list[float] = []
    first_steps: list[float] = []
    first_computed: list[float] = []
    extra_ms: list[float] = []
    extra_steps: list[float] = []
    extra_computed: list[float] = []
    warm_ms: list[float] = []
    shown_counts: list[int] = []
    stopped: dict[str, int] = {}
    shown1 = exact1 = exactn = shownn = junk1 = junk_all = candidates_all = mismatched = 0
    samples_shown = 0
    started = time.perf_counter()
    for number, place in enumerate(places):
        request = CompletionRequest(f"file:///candidates/{number}.py", place.text, place.cursor)
        found = complete_many(engine, request, params, args.candidates)
        first, samples = found.runs[0], found.runs[1:]
        first_ms.append(first.total_ms)
        first_steps.append(first.model_steps)
        first_computed.append(first.computed_tokens)
        for run in samples:
            extra_ms.append(run.total_ms)
            extra_steps.append(run.model_steps)
            extra_computed.append(run.computed_tokens)
        warm = engine.complete(request, params)
        if first.stop_reason != "time":  # (a budget cut depends on the clock)
            mismatched += warm.text != first.text  # greedy, cached: the same suggestion
        warm_ms.append(warm.total_ms)
        texts = found.texts
        shown_counts.append(len(texts))
        stopped[found.stopped or "-"] = stopped.get(found.stopped or "-", 0) + 1
        if first.text:
            shown1 += 1
            exact1 += first_line(first.text) == place.removed
            junk1 += is_junk(first.text, place.removed)
        if texts:
            shownn += 1
            exactn += any(first_line(text) == place.removed for text in texts)
        candidates_all += len(texts)
        samples_shown += len(texts) - bool(first.text)
        junk_all += sum(is_junk(text, place.removed) for text in texts)
    elapsed = time.perf_counter() - started

    n = len(places)
    rows = {
        "first run": (mean(first_ms), median(first_ms), mean(first_steps), mean(first_computed)),
        "further run": (mean(extra_ms), median(extra_ms), mean(extra_steps),
                        mean(extra_computed)),
        "warm single": (mean(warm_ms), median(warm_ms), None, None),
    }
    print(f"{args.candidates} candidates asked at {n} places ({elapsed:.0f} s)")
    print(f"{'':>12} {'ms mean':>8} {'ms p50':>8} {'steps':>6} {'computed':>9}")
    for name, (ms, p50, steps, computed) in rows.items():
        print(f"{name:>12} {ms!s:>8} {p50!s:>8} {steps if steps is not None else '-':>6} "
              f"{computed if computed is not None else '-':>9}")
    per_extra_ms = round(sum(extra_ms) / samples_shown, 1) if samples_shown else None
    per_extra_steps = round(sum(extra_steps) / samples_shown, 1) if samples_shown else None
    print(f"further runs: {len(extra_ms)}; samples shown: {samples_shown}; further runs' "
          f"cost per sample shown {per_extra_ms} ms, {per_extra_steps} steps")
    print(f"show rate @1 {shown1 / n:.1%}, @{args.candidates} {shownn / n:.1%}; exact@1 "
          f"{exact1 / n:.1%}, exact@{args.candidates} {exactn / n:.1%} of all places; junk "
          f"{junk1 / max(shown1, 1):.1%} of first suggestions, "
          f"{junk_all / max(candidates_all, 1):.1%} of all candidates; candidates per place "
          f"{statistics.fmean(shown_counts):.2f}; "
          f"sampling stopped {stopped}; warm suggestion differing from the first: "
          f"{mismatched}")
    status = engine.status()
    print(json.dumps({
        "bench": "candidates", "model": args.model, "device": status["device"],
        "dtype": status["dtype"], "decode_path": status["decode_path"],
        "candidates": args.candidates, "places": n, "seed": args.seed,
        "min_confidence": args.min_confidence, "calibrated": engine.calibrated_confidence,
        "first_run": {"ms_mean": mean(first_ms), "ms_p50": median(first_ms),
                      "steps_mean": mean(first_steps), "computed_mean": mean(first_computed)},
        "further_run": {"count": len(extra_ms), "ms_mean": mean(extra_ms),
                        "ms_p50": median(extra_ms), "steps_mean": mean(extra_steps),
                        "computed_mean": mean(extra_computed)},
        "warm_single": {"ms_mean": mean(warm_ms), "ms_p50": median(warm_ms)},
        "samples_shown": samples_shown,
        "per_sample_shown": {"ms": per_extra_ms, "steps": per_extra_steps},
        "show_rate_1": round(shown1 / n, 4), f"show_rate_{args.candidates}": round(shownn / n, 4),
        "exact_at_1": round(exact1 / n, 4), f"exact_at_{args.candidates}": round(exactn / n, 4),
        "junk_first": round(junk1 / max(shown1, 1), 4),
        "junk_all_candidates": round(junk_all / max(candidates_all, 1), 4),
        "candidates_per_place": round(statistics.fmean(shown_counts), 3),
        "sampling_stopped": stopped, "warm_differs": mismatched,
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "threads": args.threads,
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
