"""Acceptance of suggestions on real code the model never saw, through the real server over
stdio with default options: at sampled places in released third-party Python packages, the
rest of the line (or a whole block body) is removed and an inline completion is asked for.

    .venv/bin/python tests/bench/accept.py [--model default|FOLDER] [--places 200]
        [--seed 19] [--split evaluation|calibration] [--dump FILE] [--option KEY=JSON ...]

Places: at a line start (after its indentation), mid-line after a word (where a word ends and
the line goes on), and at the start of a block body whose lines are all removed (after the
body's indentation); each place is a fresh document, so no cache or type-through carries over.
The packages are downloaded with `pip download` at pinned versions into
~/.cache/gptbigcode-lsp/accept/wheels (development-time data, never used by tests). The
packaged model never saw them: its corpus (model/train/corpus.py) reads these packages only to
drop their copies from training, and holds none of pip, attrs, cattrs, pygls, lsprotocol,
click, rich or httpx (kept for evaluation elsewhere).
The evaluation split and the calibration split (for lsp_server/engine/confidence.py) are
different packages.

Reported, over all places and over places with a suggestion shown:
- show rate; exact: the suggestion's first line equals the removed text of the line;
- junk: a shown suggestion agreeing with the removed text on fewer than 3 leading characters
  (fewer than its length when it is shorter);
- accepted characters per request: the suggestion's leading characters that agree with what
  the author wrote after the cursor (the whole body, for a block);
- mid-token stops: shown suggestions stopped by the token limit or time budget whose last line
  ends cut short: after an operator, an opening bracket, a dot, a comma, a backslash or a
  keyword that needs an operand, or inside a one-line string (lines inside a docstring are
  prose and not judged). A word cut in its middle, or a bracket left open, is not visible in
  one line alone and is not counted here (the engine's tests pin those cases);
- latency p50/p95 as the client saw it (the server's 50 ms debounce included).
Diagnostics are turned off (the heads would share the worker with completions); every
completion option keeps its default unless --option sets it. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import tokenize
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lsprotocol import types

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lsp_server.client import Client, start, stop  # noqa: E402

log = logging.getLogger("accept")
DATA = Path.home() / ".cache" / "gptbigcode-lsp" / "accept" / "wheels"
# Two disjoint sets of pure-Python packages: places are drawn from the evaluation split;
# the confidence threshold is calibrated on the other.
SPLITS: dict[str, tuple[str, ...]] = {
    "evaluation": ("requests==2.32.3", "more-itertools==10.5.0", "packaging==24.2",
                   "toolz==1.0.0", "python-dateutil==2.9.0.post0"),
    "calibration": ("urllib3==2.2.3", "pyparsing==3.2.0", "jinja2==3.1.4", "six==1.16.0",
                    "idna==3.10"),
}
MAX_FILE_BYTES = 120_000  # larger files are data tables (idna's uts46data), not code
KINDS = ("line", "mid", "block")
WEIGHTS = (0.4, 0.4, 0.2)
JUNK_CHARS = 3
LIMIT_STOPS = frozenset({"max_tokens", "time", "context"})
# Keywords after which a statement cannot end.
NEEDS_OPERAND = frozenset({"and", "or", "not", "in", "is", "if", "elif", "while", "for",
                           "import", "from", "as", "def", "class", "lambda", "with", "assert",
                           "del", "await", "async", "global", "nonlocal"})


@dataclass(frozen=True)
class Place:
    """A document with text removed at `cursor`; `removed` is the removed text of the cursor's
    line, `truth` what the author wrote from the cursor on (the body, for a block)."""

    kind: str
    file: str
    text: str
    cursor: int
    removed: str
    truth: str


# ---- data


def wheel_path(requirement: str) -> Path:
    name, version = requirement.split("==")
    stem = name.replace("-", "_").lower()
    found = [p for p in DATA.glob("*.whl")
             if p.name.lower().startswith(f"{stem}-{version}-".lower())]
    if found:
        return found[0]
    DATA.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", requirement, DATA)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                    ":all:", "-d", str(DATA), requirement], check=True, stdout=sys.stderr)
    return wheel_path(requirement)


def sources(split: str) -> list[tuple[str, str]]:
    """(path, text) of the split's Python files, sorted by path."""
    files: list[tuple[str, str]] = []
    for requirement in SPLITS[split]:
        with zipfile.ZipFile(wheel_path(requirement)) as wheel:
            for info in wheel.infolist():
                if not info.filename.endswith(".py") or info.file_size > MAX_FILE_BYTES:
                    continue
                text = wheel.read(info).decode("utf-8").replace("\r\n", "\n")
                if text.strip():
                    files.append((f"{requirement}/{info.filename}", text))
    return sorted(files)


# ---- places


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _line_place(path: str, lines: list[str], row: int) -> Place | None:
    line = lines[row]
    content = line.strip()
    if not content:
        return None
    before = "".join(lines[:row]) + line[: _indent(line)]
    after = line[len(line.rstrip("\n")) :] + "".join(lines[row + 1 :])
    return Place("line", path, before + after, len(before), content, content)


def _mid_place(path: str, lines: list[str], row: int, rng: random.Random) -> Place | None:
    line = lines[row].rstrip("\n")
    end = len(line.rstrip())
    ends = [i for i in range(_indent(line) + 1, end)
            if (line[i - 1].isalnum() or line[i - 1] == "_")
            and not (line[i].isalnum() or line[i] == "_")]
    if not ends:
        return None
    at = rng.choice(ends)
    before = "".join(lines[:row]) + line[:at]
    after = lines[row][len(line) :] + "".join(lines[row + 1 :])
    removed = line[at:end]
    return Place("mid", path, before + after, len(before), removed, removed)


def _block_place(path: str, lines: list[str], row: int) -> Place | None:
    header = lines[row].rstrip()
    if not header.endswith(":") or header.lstrip().startswith("#"):
        return None
    base = _indent(header)
    body_end = row + 1
    while body_end < len(lines) and (not lines[body_end].strip()
                                     or _indent(lines[body_end]) > base):
        body_end += 1
    while body_end > row + 1 and not lines[body_end - 1].strip():
        body_end -= 1  # blank lines after the body stay
    body = lines[row + 1 : body_end]
    if not body or not body[0].strip() or _indent(body[0]) <= base:
        return None
    indent = body[0][: _indent(body[0])]
    before = "".join(lines[: row + 1]) + indent
    after = "\n" + "".join(lines[body_end:])
    truth = "".join(body)[len(indent) :].rstrip("\n")
    return Place("block", path, before + after, len(before), body[0].strip(), truth)


def sample_places(files: list[tuple[str, str]], count: int, seed: int) -> list[Place]:
    """`count` places, each kind in its share, drawn with `seed` (the same places every run)."""
    rng = random.Random(seed)
    places: list[Place] = []
    while len(places) < count:
        path, text = rng.choice(files)
        lines = text.splitlines(keepends=True)
        kind = rng.choices(KINDS, WEIGHTS)[0]
        rows = [i for i, line in enumerate(lines) if line.rstrip().endswith(":")]
        if kind == "block" and not rows:
            continue
        row = rng.choice(rows) if kind == "block" else rng.randrange(len(lines))
        if kind == "line":
            place = _line_place(path, lines, row)
        elif kind == "mid":
            place = _mid_place(path, lines, row, rng)
        else:
            place = _block_place(path, lines, row)
        if place is not None and place.removed:
            places.append(place)
    return places


# ---- judging


def agreement(a: str, b: str) -> int:
    """How many leading characters a and b share."""
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return size


def is_junk(suggestion: str, removed: str) -> bool:
    first = suggestion.split("\n", 1)[0]
    return first != removed and agreement(first, removed) < min(JUNK_CHARS, len(removed))


def cut_short(suggestion: str, before: str) -> bool:
    """Whether the suggestion's last line visibly ends in the middle of an expression or a
    one-line string. `before`: the document's text before the cursor. A line inside a
    triple-quoted string (prose of a docstring) is not judged."""
    lines = suggestion.split("\n")
    line_prefix = before[before.rfind("\n") + 1 :]
    last = (line_prefix + lines[0] if len(lines) == 1 else lines[-1]).rstrip()
    up_to_last = before + suggestion[: len(suggestion) - len(lines[-1])]
    if not last.strip() or len(re.findall(r'"""|\'\'\'', up_to_last)) % 2:
        return False
    tokens: list[tokenize.TokenInfo] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(last.strip() + "\n").readline):
            tokens.append(token)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # brackets this line alone cannot balance, or a docstring opened on it
    tokens = [t for t in tokens if t.type not in (
        tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.COMMENT, tokenize.INDENT,
        tokenize.DEDENT)]
    if not tokens:
        return False
    if any(t.type == tokenize.ERRORTOKEN and t.string.strip() in ('"', "'") for t in tokens):
        return True  # a one-line string left open
    final = tokens[-1]
    if final.type == tokenize.OP:
        return final.string not in (")", "]", "}", ":", ";")
    return final.type == tokenize.NAME and final.string in NEEDS_OPERAND


# ---- the run


def position(text: str, offset: int) -> types.Position:
    """The LSP position of a character offset (UTF-16 units, the server's default)."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    column = len(text[start:offset].encode("utf-16-le")) // 2
    return types.Position(line=line, character=column)


async def ask_all(args: argparse.Namespace, places: list[Place]) -> dict[str, Any]:
    options: dict[str, Any] = {"diagnostics": {"enabled": False}}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = json.loads(value)
    command = ["--model", args.model, "--threads", str(args.threads)]
    client = await start(command, options, client=Client("accept-bench"), cwd=str(ROOT))
    try:
        loaded = await client.wait_until_loaded(300)
        if not loaded["ready"]:
            raise SystemExit(f"the server could not load the model: {loaded['error']}")
        results: list[dict[str, Any]] = []
        for number, place in enumerate(places):
            uri = f"file:///accept/{number}.py"
            client.open(uri, place.text)
            started = time.perf_counter()
            items = await client.inline(uri, position(place.text, place.cursor))
            latency = (time.perf_counter() - started) * 1000
            client.close(uri)
            record = (await client.status(requests=True))["recent"][-1]
            suggestion = items[0].insert_text if items else ""
            assert isinstance(suggestion, str)
            results.append({"latency_ms": latency, "stop": record.get("stopReason", ""),
                            "suggestion": suggestion})
        return {"status": loaded, "results": results}
    finally:
        await stop(client)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def judge(places: list[Place], results: list[dict[str, Any]]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for kind in ("all", *KINDS):
        chosen = [(p, r) for p, r in zip(places, results, strict=True)
                  if kind == "all" or p.kind == kind]
        shown = [(p, r) for p, r in chosen if r["suggestion"]]
        exact = sum(r["suggestion"].split("\n", 1)[0] == p.removed for p, r in shown)
        junk = sum(is_junk(r["suggestion"], p.removed) for p, r in shown)
        accepted = sum(agreement(r["suggestion"], p.truth) for p, r in chosen)
        mid_token = sum(
            r["stop"] in LIMIT_STOPS and cut_short(r["suggestion"], p.text[: p.cursor])
            for p, r in shown
        )
        n, m = len(chosen), len(shown)
        rows[kind] = {
            "places": n, "shown": m,
            "show_rate": round(m / n, 4) if n else None,
            "exact_all": round(exact / n, 4) if n else None,
            "exact_shown": round(exact / m, 4) if m else None,
            "junk_shown": round(junk / m, 4) if m else None,
            "accepted_chars_per_request": round(accepted / n, 2) if n else None,
            "mid_token_stops": mid_token,
        }
    latencies = [r["latency_ms"] for r in results]
    rows["all"]["latency_ms"] = {"p50": percentile(latencies, 0.5),
                                 "p95": percentile(latencies, 0.95),
                                 "mean": round(statistics.fmean(latencies), 1)}
    stops: dict[str, int] = {}
    for r in results:
        stops[r["stop"] or "-"] = stops.get(r["stop"] or "-", 0) + 1
    rows["all"]["stop_reasons"] = stops
    return rows


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    print(f"{'places':>8} {'n':>5} {'shown':>7} {'exact/all':>10} {'exact/shown':>12} "
          f"{'junk/shown':>11} {'acc.chars':>10} {'mid-token':>10}")
    for kind, row in rows.items():
        print(f"{kind:>8} {row['places']:>5} {pct(row['show_rate']):>7} "
              f"{pct(row['exact_all']):>10} {pct(row['exact_shown']):>12} "
              f"{pct(row['junk_shown']):>11} {row['accepted_chars_per_request'] or 0:>10} "
              f"{row['mid_token_stops']:>10}")
    latency = rows["all"]["latency_ms"]
    print(f"latency ms: p50 {latency['p50']}, p95 {latency['p95']}, mean {latency['mean']}; "
          f"stop reasons {rows['all']['stop_reasons']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help='"default" or a checkpoint folder')
    parser.add_argument("--places", type=int, default=200)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--split", choices=sorted(SPLITS), default="evaluation")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--option", action="append", default=[],
                        help="a server option as KEY=JSON (camelCase), e.g. minConfidence=0")
    parser.add_argument("--dump", type=Path, help="write each place and its suggestion here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("pygls").setLevel(logging.WARNING)
    places = sample_places(sources(args.split), args.places, args.seed)
    run = asyncio.run(ask_all(args, places))
    rows = judge(places, run["results"])
    print_table(rows)
    if args.dump:
        with args.dump.open("w") as out:
            for place, result in zip(places, run["results"], strict=True):
                entry = {k: v for k, v in asdict(place).items() if k != "text"}
                out.write(json.dumps({**entry, **result}) + "\n")
    status = run["status"]
    print(json.dumps({
        "bench": "accept", "model": status["model"], "device": status["device"],
        "dtype": status["dtype"], "split": args.split, "seed": args.seed,
        "options": {k: v for k, v in status["options"].items() if k != "diagnostics"},
        **rows["all"], "by_kind": {k: rows[k] for k in KINDS},
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
    }))


def _cpu() -> str:
    try:
        found = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    except OSError:
        found = None
    return found.group(1) if found else platform.processor()


if __name__ == "__main__":
    main()
