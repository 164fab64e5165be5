"""Soak: a long typing session against the real server over stdio (raw LSP, see
tests/lsp_wire.py). Keystrokes (a didChange, then an inline completion request) at a fixed
interval, round-robin over several documents, one document closed and reopened now and then.
Reports per time window the server's memory (VmRSS), request latency, outcomes, the worker
queue and the cache; checks that no older version's answer arrives after a newer one's and
that every document's text matches the client's at the end.

    .venv/bin/python tests/bench/soak.py [--minutes 30] [--documents 20] [--interval-ms 5]
        [--window-s 60] [--model tiny|default|FOLDER] [--max-new-tokens 8]
        [--debounce-ms 50] [--threads 1] [--seed 0]

Latency is client-side, from sending the request to its answer arriving, over all answers
(empty ones, for superseded requests, included) and over answers with a suggestion. Prints a
table and one JSON line last; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from lsp_fixtures import SAMPLE, build_checkpoint  # noqa: E402
from lsp_wire import WireClient, at_boundary, digest, position, rss_kib  # noqa: E402

log = logging.getLogger("soak")
TYPED = ["a", "b", "e", " ", "(", ")", ".", "_", "é", "变", "😀", "\n", "\n    ", "x = 1"]
REOPEN_EVERY = 500  # keystrokes between closing and reopening a document
MiB = 1024  # in KiB, as /proc reports


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q / 100))]


@dataclass
class Window:
    """What one reporting window saw."""

    keystrokes: int = 0
    answers: list[float] = field(default_factory=list)  # latency of every answer, s
    suggestions: list[float] = field(default_factory=list)  # latency of non-empty ones, s


@dataclass
class Session:
    """The client's side: documents as the server must hold them, and requests in flight."""

    rng: random.Random
    texts: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    opened: dict[str, int] = field(default_factory=dict)  # times each document was opened
    # Request id -> (uri, (times opened, version), when sent); versions start again on reopen.
    sent: dict[Any, tuple[str, tuple[int, int], float]] = field(default_factory=dict)
    answered_version: dict[str, tuple[int, int]] = field(default_factory=dict)
    order_violations: int = 0
    answered: list[Any] = field(default_factory=list)  # ids whose response can be dropped
    window: Window = field(default_factory=Window)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, message: dict[str, Any], arrived: float) -> None:
        """Called on the client's reader thread for every message from the server."""
        with self.lock:
            request = self.sent.pop(message.get("id"), None)
            if request is None:
                return
            uri, version, sent_at = request
            if version < self.answered_version.get(uri, (0, 0)):
                self.order_violations += 1
            self.answered_version[uri] = version
            self.window.answers.append(arrived - sent_at)
            if (message.get("result") or {}).get("items"):
                self.window.suggestions.append(arrived - sent_at)
            self.answered.append(message["id"])


def keystroke(client: WireClient, session: Session, uri: str) -> None:
    old = session.texts[uri]
    at = at_boundary(old, session.rng.randrange(len(old) + 1))
    typed = session.rng.choice(TYPED)
    session.texts[uri] = old[:at] + typed + old[at:]
    session.versions[uri] += 1
    here = position(old, at)
    client.change(uri, session.versions[uri], [{"range": {"start": here, "end": here},
                                                "text": typed}])
    cursor = position(session.texts[uri], at + len(typed))
    with session.lock:  # registered before the answer can arrive
        msg_id = client.new_id()
        version = (session.opened[uri], session.versions[uri])
        session.sent[msg_id] = (uri, version, time.perf_counter())
        session.window.keystrokes += 1
    client.inline(uri, cursor["line"], cursor["character"], msg_id)


def reopen(client: WireClient, session: Session, uri: str) -> None:
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    session.versions[uri] = 1
    session.opened[uri] += 1
    client.open(uri, session.texts[uri])


def model_folder(name: str, scratch: Path) -> str:
    if name == "tiny":
        return str(build_checkpoint(scratch / "tiny"))
    return name


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    folder = model_folder(args.model, scratch)
    client = WireClient(["--model", folder, "--log-file", str(scratch / "server.log"),
                         "--threads", str(args.threads)])
    client.keep_arrivals = False
    session = Session(random.Random(args.seed))
    client.listeners.append(session.on_message)
    try:
        client.initialize({"debounceMs": args.debounce_ms, "maxNewTokens": args.max_new_tokens})
        status = client.wait_until_loaded(timeout=600)
        if status["state"] != "ready":
            raise SystemExit(f"the server could not load the model: {status['error']}")
        uris = [f"file:///soak/doc{n}.py" for n in range(args.documents)]
        for uri in uris:
            session.texts[uri], session.versions[uri] = SAMPLE.read_text(encoding="utf-8"), 1
            session.opened[uri] = 1
            client.open(uri, session.texts[uri])
        rows = soak(client, session, uris, args)
        deadline = time.monotonic() + 120
        while session.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        matches = all(client.status(document=uri)["document"]["sha256"] == digest(text)
                      for uri, text in session.texts.items())
        final = client.status()
    finally:
        client.close()
    return summary(args, rows, session, matches, final)


def soak(client: WireClient, session: Session, uris: list[str],
         args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    interval, started = args.interval_ms / 1000, time.perf_counter()
    end, next_report, n = started + args.minutes * 60, started + args.window_s, 0
    rows.append(report(client, session, started))
    while (now := time.perf_counter()) < end:
        keystroke(client, session, uris[n % len(uris)])
        n += 1
        if n % REOPEN_EVERY == 0:
            reopen(client, session, session.rng.choice(uris))
        if now >= next_report:
            rows.append(report(client, session, started))
            next_report += args.window_s
        time.sleep(max(0.0, started + n * interval - time.perf_counter()))
    rows.append(report(client, session, started))
    return rows


def report(client: WireClient, session: Session, started: float) -> dict[str, Any]:
    with session.lock:
        window, session.window = session.window, Window()
        answered, session.answered = session.answered, []
    client.drop(answered)
    status = client.status()
    worker, cache = status["worker"] or {}, status["cache"] or {}
    row = {
        "t_s": round(time.perf_counter() - started, 1),
        "keystrokes": window.keystrokes,
        "answers": len(window.answers),
        "suggestions": len(window.suggestions),
        "p50_ms": ms(percentile(window.answers, 50)),
        "p95_ms": ms(percentile(window.answers, 95)),
        "suggestion_p50_ms": ms(percentile(window.suggestions, 50)),
        "suggestion_p95_ms": ms(percentile(window.suggestions, 95)),
        "rss_mib": round(rss_kib(client.pid) / MiB, 1),
        "queued": worker.get("queued"),
        "queue_high_water": worker.get("queuedMax"),
        "cache_kib": round(cache.get("cpuBytes", 0) / 1024 + cache.get("gpuBytes", 0) / 1024),
        "model_steps": status["modelSteps"],
    }
    log.info("%s", row)
    return row


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def summary(args: argparse.Namespace, rows: list[dict[str, Any]], session: Session,
            matches: bool, final: dict[str, Any]) -> dict[str, Any]:
    rss = [row["rss_mib"] for row in rows]
    p95s = [row["p95_ms"] for row in rows[1:] if row["p95_ms"] is not None]
    return {
        "bench": "soak",
        "minutes": args.minutes,
        "documents": args.documents,
        "interval_ms": args.interval_ms,
        "model": args.model,
        "max_new_tokens": args.max_new_tokens,
        "debounce_ms": args.debounce_ms,
        "keystrokes": sum(row["keystrokes"] for row in rows),
        "unanswered": len(session.sent),
        "order_violations": session.order_violations,
        "texts_match": matches,
        "rss_start_mib": rss[0],
        "rss_end_mib": rss[-1],
        "rss_max_mib": max(rss),
        "rss_growth_mib": round(rss[-1] - rss[0], 1),
        "p95_ms_first_window": p95s[0] if p95s else None,
        "p95_ms_last_window": p95s[-1] if p95s else None,
        "p95_ms_median_window": statistics.median(p95s) if p95s else None,
        "queue_high_water": final["worker"]["queuedMax"],
        "requests": final["requests"],
        "python": platform.python_version(),
        "windows": rows,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [("t_s", "t (s)"), ("keystrokes", "keys"), ("answers", "answers"),
               ("suggestions", "with text"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"),
               ("suggestion_p95_ms", "text p95 ms"), ("rss_mib", "RSS MiB"),
               ("queue_high_water", "queue max"), ("cache_kib", "cache KiB")]
    print(" | ".join(f"{title:>11}" for _, title in columns))
    for row in rows:
        print(" | ".join(f"{'-' if row[key] is None else row[key]!s:>11}" for key, _ in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--model", default="tiny", help='"tiny" (built here), "default", a folder')
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--debounce-ms", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    result = run(args)
    print_table(result["windows"])
    print(f"keystrokes {result['keystrokes']}, unanswered {result['unanswered']}, order "
          f"violations {result['order_violations']}, texts match {result['texts_match']}, "
          f"RSS {result['rss_start_mib']} -> {result['rss_end_mib']} MiB "
          f"(max {result['rss_max_mib']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
