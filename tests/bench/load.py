"""Load test: N editors typing against one shared serving engine, on loopback.

Each editor is what it is in real use: its own language server process (`python -m
lsp_server`, engine option set, the model's tokenizer only) with its own real source file
open (a module of this repository), typing a line into the middle of it one character at a
time, a keystroke every --interval-ms, each followed by an inline completion request that is
answered before the next key. The engine is started once per run: llama.cpp's llama-server
with one slot per editor, or vLLM's CPU build (`make engines` installs both).

    .venv/bin/python tests/bench/load.py [--engine llamacpp|vllm] [--editors 1,2,4,8]
        [--keystrokes 30] [--interval-ms 150] [--engine-threads 1]

Reports, per number of editors: requests, latency p50 / p95 / max (client side, through
LSP), the share of prompt tokens the engine reported cached, and requests that failed.
Prints a table and one JSON line last; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from lsprotocol import types

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from engines import llamacpp, vllm  # noqa: E402

from lsp_server.client import Client, start, stop  # noqa: E402
from model.checkpoint import resolve_checkpoint  # noqa: E402

log = logging.getLogger("load")
# Real files the editors have open, one each (the repository's own modules).
FILES = ["lsp_server/server.py", "lsp_server/scheduling.py", "lsp_server/documents.py",
         "lsp_server/diagnostics.py", "lsp_server/options.py", "cache/window.py",
         "cache/prefix.py", "lsp_server/engine/pipeline.py"]
TYPED = "        result = self.compute(value, limit=limit)\n"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def vllm_cache_counters(url: str) -> tuple[float, float]:
    """vLLM's own prefix-cache counters (prompt tokens looked up, of them found), which count
    every request, those a stop rule closed early included."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = {}
    for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
        found[name] = sum(float(m) for m in re.findall(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$",
                                                      text, re.MULTILINE))
    return found["vllm:prefix_cache_queries_total"], found["vllm:prefix_cache_hits_total"]


def place(text: str) -> int:
    """The start of a line in the middle of the file, inside a function body."""
    lines = text.splitlines(keepends=True)
    middle = len(lines) // 2
    for i in range(middle, len(lines)):
        if lines[i].startswith("        ") and lines[i].strip():
            return sum(map(len, lines[:i]))
    return sum(map(len, lines[:middle]))


def position(text: str, offset: int) -> types.Position:
    before = text[:offset]
    return types.Position(before.count("\n"), offset - (before.rfind("\n") + 1))


async def editor(index: int, engine: dict[str, Any], args: argparse.Namespace,
                 scratch: Path, ready: asyncio.Barrier) -> dict[str, Any]:
    options = {"engine": engine, "debounceMs": 0, "maxNewTokens": 16, "timeBudgetMs": 30_000,
               "diagnostics": {"enabled": False}}
    folder = scratch / f"editor{index}"
    folder.mkdir()
    client = await start(["--model", "default", "--log-file", str(folder / "server.log")],
                         options, client=Client(f"editor-{index}"), cwd=str(ROOT))
    try:
        status = await client.wait_until_loaded(120)
        if status["state"] != "ready":
            raise RuntimeError(f"editor {index}: the server did not load: {status['error']}")
        name = FILES[index % len(FILES)]
        text = (ROOT / name).read_text(encoding="utf-8")
        uri = f"file:///load/{index}/{Path(name).name}"
        client.open(uri, text)
        offset = place(text)
        await ready.wait()  # every server loads before anyone types: loading is not measured
        latencies: list[float] = []
        for k in range(args.keystrokes):
            char = TYPED[k % len(TYPED)]
            started = time.perf_counter()
            client.type(uri, position(text, offset), char)
            text, offset = text[:offset] + char + text[offset:], offset + 1
            await client.inline(uri, position(text, offset))
            elapsed = time.perf_counter() - started
            latencies.append(elapsed * 1000)
            await asyncio.sleep(max(0.0, args.interval_ms / 1000 - elapsed))
        status = await client.status(requests=True)
        recent = status["recent"][-args.keystrokes:]
        return {"latencies": latencies,
                "errors": sum(r["stopReason"] == "error" for r in recent),
                "cache": status["cache"], "engine": status["engine"]}
    finally:
        await stop(client)


async def round_of(n: int, engine: dict[str, Any], args: argparse.Namespace,
                   scratch: Path) -> dict[str, Any]:
    ready = asyncio.Barrier(n)
    before = vllm_cache_counters(engine["url"]) if engine["kind"] == "vllm" else None
    results = await asyncio.gather(*(editor(i, engine, args, scratch, ready) for i in range(n)))
    latencies = [v for r in results for v in r["latencies"]]
    # llama-server reports its cache use with every streamed token; vLLM only at a stream's
    # end, so for it the round's share comes from its own counters.
    prompt = sum(r["cache"]["enginePromptTokens"] for r in results)
    cached = sum(r["cache"]["engineCachedTokens"] for r in results)
    if before is not None:
        after = vllm_cache_counters(engine["url"])
        prompt, cached = int(after[0] - before[0]), int(after[1] - before[1])
    ordered = sorted(latencies)
    return {
        "editors": n, "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max_ms": round(ordered[-1], 1),
        "cached_share": round(cached / prompt, 3) if prompt else None,
        "errors": sum(r["errors"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["llamacpp", "vllm"], default="llamacpp")
    parser.add_argument("--editors", default="1,2,4,8")
    parser.add_argument("--keystrokes", type=int, default=30)
    parser.add_argument("--interval-ms", type=int, default=150)
    parser.add_argument("--engine-threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("pygls").setLevel(logging.WARNING)
    counts = [int(n) for n in args.editors.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for n in counts:
            round_dir = scratch / f"round{n}"
            round_dir.mkdir()
            if args.engine == "llamacpp":
                gguf = llamacpp.convert(resolve_checkpoint("default"), "f32")
                server: Any = llamacpp.LlamaServer(gguf, ctx=1024 * n, slots=n,
                                                   threads=args.engine_threads,
                                                   log=round_dir / "engine.log")
            else:
                server = vllm.VllmServer(resolve_checkpoint("default"),
                                         log=round_dir / "engine.log")
            with server:
                log.info("%d editor(s) against %s at %s", n, args.engine, server.url)
                row = asyncio.run(round_of(n, {"kind": args.engine, "url": server.url},
                                           args, round_dir))
            rows.append(row)
            log.info("%s", row)
    print(f"# {args.engine}, packaged model, {args.keystrokes} keystrokes per editor every "
          f"{args.interval_ms} ms; CPU: {cpu_name()}")
    print(f"{'editors':>8} {'requests':>9} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} "
          f"{'cached':>7} {'errors':>7}")
    for r in rows:
        share = "-" if r["cached_share"] is None else f"{r['cached_share']:.1%}"
        print(f"{r['editors']:>8} {r['requests']:>9} {r['p50_ms']:>9} {r['p95_ms']:>9} "
              f"{r['max_ms']:>9} {share:>7} {r['errors']:>7}")
    print(json.dumps({"bench": "load", "engine": args.engine, "cpu": cpu_name(),
                      "keystrokes": args.keystrokes, "interval_ms": args.interval_ms,
                      "engine_threads": args.engine_threads, "rows": rows}))


if __name__ == "__main__":
    main()
