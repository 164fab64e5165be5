"""A training run's learning curve, for its model card: held-out bits per byte over training
tokens from RUN_DIR/metrics.jsonl (one row per evaluation, across every session of the run),
thinned to about one row per --every tokens, with the schedule's changes from train_args.json.

    python -m model.train.curve runs/lm-6x320 [--every 5e6] [--compare runs/lm-4x256]

With --compare, a second run's figure at the same token counts (interpolated between its
evaluations; blank past its last one) stands beside: runs of two sizes compared at equal
tokens. Prints a Markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    tokens: int
    step: int
    minutes: float
    bpb: float


def read_curve(run_dir: Path) -> list[Point]:
    """The run's evaluations in token order (a session resumed from a checkpoint may have
    evaluated the same step twice: the later row wins)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a training run folder?)")
    points: dict[int, Point] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            point = Point(int(row["tokens"]), int(row["step"]), float(row["minutes"]),
                          float(row["held_out_bpb"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a metrics row ({error})") from error
        points[point.tokens] = point
    return [points[t] for t in sorted(points)]


def thinned(points: Sequence[Point], every: float) -> list[Point]:
    """The first and last points, and the first point past each multiple of `every` tokens."""
    if not points:
        return []
    kept, mark = [points[0]], every
    for point in points[1:-1]:
        if point.tokens >= mark:
            kept.append(point)
            while mark <= point.tokens:
                mark += every
    if points[-1] is not kept[-1]:
        kept.append(points[-1])
    return kept


def at_tokens(points: Sequence[Point], tokens: int) -> float | None:
    """Bits per byte at `tokens`, linear in log tokens between evaluations; None outside."""
    xs = [p.tokens for p in points]
    if not points or tokens < xs[0] or tokens > xs[-1]:
        return None
    i = bisect_left(xs, tokens)
    if xs[i] == tokens:
        return points[i].bpb
    a, b = points[i - 1], points[i]
    if a.tokens <= 0:
        return b.bpb
    w = (math.log(tokens) - math.log(a.tokens)) / (math.log(b.tokens) - math.log(a.tokens))
    return a.bpb + w * (b.bpb - a.bpb)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--every", type=float, default=5e6, help="tokens between rows")
    p.add_argument("--compare", type=Path, default=None, help="another run folder")
    args = p.parse_args(argv)
    if args.every <= 0:
        p.error("--every must be positive")
    try:
        points = read_curve(args.run_dir)
        other = read_curve(args.compare) if args.compare is not None else None
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    saved = args.run_dir / "train_args.json"
    schedule = json.loads(saved.read_text()) if saved.is_file() else {}
    rows = thinned(points, args.every)
    head = "| tokens | step | minutes | held-out bits per byte |"
    rule = "|---|---|---|---|"
    if other is not None:
        head += f" {args.compare.name} |"
        rule += "---|"
    print(f"{args.run_dir.name}: {len(points)} evaluations, schedule "
          f"{schedule.get('steps')} steps; lengthened: {schedule.get('lengthened', [])}")
    print(head)
    print(rule)
    for point in rows:
        line = (f"| {point.tokens / 1e6:.1f}M | {point.step} | {point.minutes:.0f} "
                f"| {point.bpb:.3f} |")
        if other is not None:
            value = at_tokens(other, point.tokens)
            line += f" {'' if value is None else f'{value:.3f}'} |"
        print(line)
    print(json.dumps({
        "run": str(args.run_dir), "steps": schedule.get("steps"),
        "lengthened": schedule.get("lengthened", []),
        "curve": [[p.tokens, round(p.bpb, 4)] for p in rows],
        "compare": None if other is None else {
            "run": str(args.compare),
            "at": [[p.tokens, None if (v := at_tokens(other, p.tokens)) is None else round(v, 4)]
                   for p in rows]},
    }))


if __name__ == "__main__":
    main()
