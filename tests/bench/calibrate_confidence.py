"""Calibrates the confidence gate (lsp_server/engine/confidence.py) for a model: the same kind
of places as tests/bench/accept.py, drawn from its calibration split (packages that are not
in the evaluation split), answered by the engine in this process with the gate off; then,
for each threshold, what the gate would leave shown.

    .venv/bin/python tests/bench/calibrate_confidence.py [--model default|FOLDER]
        [--places 600] [--seed 7] [--junk-target 0.30]

The chosen threshold is the lowest one at which the junk rate of the shown suggestions (see
accept.py) is at most --junk-target with 90% confidence (the one-sided upper Wilson bound,
since a few dozen suggestions are shown): the gate hides as little as that allows. Write it to
the checkpoint folder's calibration.json ({"min_confidence": x}), where the server reads it.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from accept import Place, is_junk, sample_places, sources  # noqa: E402

from lsp_server.engine import (  # noqa: E402
    CompletionRequest,
    EngineSettings,
    GenerationParams,
    ModelChoice,
    load_engine,
    set_threads,
)

log = logging.getLogger("calibrate_confidence")
THRESHOLDS = [round(0.01 * step, 2) for step in range(100)]
Z_90 = 1.2816  # one-sided 90%


def wilson_upper(hits: int, count: int, z: float = Z_90) -> float:
    """The upper Wilson score bound of a rate seen as hits / count."""
    if not count:
        return 1.0
    rate = hits / count
    centre = rate + z * z / (2 * count)
    spread = z * math.sqrt(rate * (1 - rate) / count + z * z / (4 * count * count))
    return (centre + spread) / (1 + z * z / count)


def answer(model: str, places: list[Place],
           dump: list[dict[str, Any]] | None = None) -> list[tuple[Place, str, float | None]]:
    """Each place's suggestion with the gate off, and its confidence."""
    engine = load_engine(ModelChoice(name=model), EngineSettings())
    params = GenerationParams(min_confidence=0.0)
    answered = []
    for number, place in enumerate(places):
        uri = f"file:///calibrate/{number}.py"
        done = engine.complete(CompletionRequest(uri, place.text, place.cursor), params)
        engine.forget(uri)
        answered.append((place, done.text, done.confidence))
        if dump is not None:
            dump.append({"kind": place.kind, "removed": place.removed, "text": done.text,
                         "confidence": done.confidence, "retyped": done.retyped_tokens,
                         "pieces": [engine.tokenizer.decode_bytes([t]).decode("latin-1")
                                    for t in done.token_ids],
                         "logprobs": done.token_logprobs})
    return answered


def sweep(answered: list[tuple[Place, str, float | None]]) -> list[dict[str, Any]]:
    """What each threshold would leave shown."""
    rows = []
    for threshold in THRESHOLDS:
        shown = [(p, text) for p, text, score in answered
                 if text and (score is None or score >= threshold)]
        exact = sum(text.split("\n", 1)[0] == p.removed for p, text in shown)
        junk = sum(is_junk(text, p.removed) for p, text in shown)
        n, m = len(answered), len(shown)
        rows.append({"threshold": threshold, "show_rate": round(m / n, 4),
                     "exact_all": round(exact / n, 4),
                     "exact_shown": round(exact / m, 4) if m else None,
                     "junk_shown": round(junk / m, 4) if m else None,
                     "junk_upper_90": round(wilson_upper(junk, m), 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--places", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--junk-target", type=float, default=0.35)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump", type=Path, help="write each place's tokens and scores here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    set_threads(args.threads)
    places = sample_places(sources("calibration"), args.places, args.seed)
    started = time.perf_counter()
    dumped: list[dict[str, Any]] | None = [] if args.dump else None
    rows = sweep(answer(args.model, places, dumped))
    if args.dump and dumped is not None:
        args.dump.write_text("".join(json.dumps(entry) + "\n" for entry in dumped))
    chosen = next((r for r in rows if r["junk_upper_90"] <= args.junk_target), rows[-1])
    print(f"{'threshold':>9} {'shown':>7} {'exact/all':>10} {'exact/shown':>12} {'junk/shown':>11}")
    for row in rows[::5]:
        print(f"{row['threshold']:>9.2f} {row['show_rate']:>7.1%} {row['exact_all']:>10.1%} "
              f"{row['exact_shown'] or 0:>12.1%} {row['junk_shown'] or 0:>11.1%}")
    print(f"chosen: {chosen}")
    print(json.dumps({"bench": "calibrate_confidence", "model": args.model,
                      "places": len(places), "seed": args.seed,
                      "junk_target": args.junk_target, "chosen": chosen, "sweep": rows,
                      "seconds": round(time.perf_counter() - started, 1),
                      "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
