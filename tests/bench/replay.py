"""Edit anywhere: a replay of real edits through the real server over stdio and, side by side
in the same run, llama.cpp's llama-server fed the requests llama.vscode sends, on the same
weights (f32 GGUF).

    .venv/bin/python tests/bench/replay.py [--model tiny|default|FOLDER] [--sessions 6]
        [--hunks 3] [--type-chars 8] [--min-hunks 2] [--busy N] [--no-llamacpp]
        [--packages packaging:24.1:24.2 jinja2:3.1.4:3.1.5] [--requests-out FILE]
        [--think-ms 300] [--no-warm] [--context-tokens N] [--fim-layout psm]

The edits: two released versions of each package (`pip download --no-deps` of pure-Python
wheels, cached under ~/.cache/gptbigcode-lsp/replay/); each .py file that changed between them
(difflib over lines, files with at least --min-hunks changed places, taken from the packages in
turn) is a session. A session opens the old file with the cursor at the first changed place and
asks (an "open" request); then, at each of --hunks changed places spread over the file: the
cursor moves there, the old lines are deleted (one didChange; an empty line is left to type
into), the first new line is typed a character at a time (at most --type-chars of them) with a
request after each character, answered before the next key, and the rest of the place's new
text is pasted in one didChange and asked once more. A place's first request is a "move"
(except at the first place, where the cursor already was: there it is "typing"); the others
are "typing" or "paste". The replayed text is checked against the diff's. --think-ms N (default
0) leaves N ms of idle time where an editor's user pauses: after opening the file, before its
first request, and at each place after the old lines are deleted, before the first character
is typed (so a move's first request comes N ms after the edit that showed where the cursor
went); the pauses are not in the latencies. Ours warms its cache in such pauses unless
--no-warm (the server's `warm` option off); llama.cpp's server gets the same pauses.

Ours: `python -m lsp_server` (lsp_server.client.start), maxNewTokens 16, debounceMs 0,
minConfidence 0 (nothing hidden: every answer includes its generation), timeBudgetMs 600000
(nothing cut short), diagnostics off, `--threads 1`, every other option its default (layout,
context budget, dtype "auto": bf16 where the CPU computes it natively, else fp32; --dtype and
--context-tokens set them). Tokens per request from the server's own records (status
`{"requests": true}`: computedTokens, reusedTokens, newTokens); the prompt is their sum.

llama.cpp: llama-server (tests/engines/llamacpp.py) `-t 1 -c <n_positions> -np 1` on the same
checkpoint converted to f32 GGUF, POST /infill as llama.vscode builds it: `input_prefix` the
256 lines before the cursor's line, `input_suffix` the rest of the line and the 64 lines after,
`prompt` the line before the cursor ("" when that is only indentation), `n_indent`,
`input_extra` [] (llama.vscode's ring buffer of other files' chunks is not replayed),
`cache_prompt` true, `n_predict` 16, greedy (samplers ["top_k"], top_k 1, temperature 0), no
t_max_prompt_ms / t_max_predict_ms (llama-server itself keeps at most 3/4 of its batch, 1,536
tokens, of the prefix and 1/4 of it of the suffix). Every request is sent: llama.vscode's
client-side result cache, which would answer some without the server, is not replayed (nor are
ours' editors').
Tokens per request from its `timings` (prompt_n computed, cache_n reused, predicted_n).

Sessions alternate which side goes first (A B, B A, ...). Before the sessions each side answers
one untimed request on a small document (first-call costs are not counted). --busy N runs N
CPU-bound processes beside both for the whole replay. Latency is client side, ms.

The model: bigcode/tiny_starcoder_py's shape (20 x 768, 12 heads, MQA, 8,192 positions, 49,152
vocabulary) with random weights (seed 0), built once under ~/.cache/gptbigcode-lsp/replay/,
with the packaged model's tokenizer (4,096 entries, StarCoder's special tokens; no 49,152-entry
one is at hand): the embedding rows the tokenizer has no token for (and the special tokens')
are scaled by 0.01, so that greedy decoding picks real tokens (the lm_head product still spans
all 49,152 rows). `--model default` replays on the packaged model instead.

Prints a table and one JSON line last; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from engines import llamacpp  # noqa: E402

from lsp_server.client import Client, start, stop  # noqa: E402

log = logging.getLogger("replay")

PACKAGES = ["packaging:24.1:24.2", "jinja2:3.1.4:3.1.5"]
# Never data here (their own test suites and tooling are built on them).
REFUSED = {"pip", "attrs", "cattrs", "pygls", "lsprotocol", "click", "rich", "httpx"}
KINDS = ("open", "move", "typing", "paste")
N_PREFIX, N_SUFFIX = 256, 64  # llama.vscode's defaults: lines before / after the cursor's line
MAX_NEW_TOKENS = 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
WARMUP = "import os\n\n\ndef main():\n    path = os.getcwd()\n    return path\n"


def replay_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gptbigcode-lsp" / "replay"


# ---- sessions from real edits


@dataclass
class Edit:
    start: int  # offsets into the document's current text
    end: int
    text: str


@dataclass
class Pause:
    ms: int  # idle time: the user reads or thinks


@dataclass
class Ask:
    at: int  # the cursor, an offset into the document's current text
    kind: str  # open, move, typing, paste


@dataclass
class Session:
    name: str
    text: str  # the old file
    steps: list[Edit | Ask | Pause]
    expected: str  # the text once every step is applied
    lines: int
    places: int  # changed places replayed
    changed_places: int  # of the file's

    @property
    def asks(self) -> int:
        return sum(isinstance(s, Ask) for s in self.steps)


def wheel(name: str, version: str) -> Path:
    """The package's pure-Python wheel (downloaded once)."""
    if name.lower() in REFUSED:
        raise SystemExit(f"--packages: {name} may not be used as data")
    dist = replay_root() / "dist"
    prefix = f"{name.lower().replace('-', '_')}-{version}-"
    found = [p for p in dist.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        dist.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s %s", name, version)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary", ":all:", "--implementation", "py", "--abi", "none",
                        "--platform", "any", f"{name}=={version}", "-d", str(dist)],
                       check=True, stdout=sys.stderr)
        found = [p for p in dist.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        raise SystemExit(f"--packages: no pure-Python wheel of {name} {version} was downloaded")
    return found[0]


def python_files(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n).decode("utf-8") for n in archive.namelist()
                if n.endswith(".py")}


def spread(items: list[Any], count: int) -> list[Any]:
    """`count` of `items`, first and last included, evenly spaced, in order."""
    if len(items) <= count:
        return items
    if count == 1:
        return items[:1]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def kind_of(natural: str, place: int, asked: int) -> str:
    """A request's kind: the first at each place after the first is a move."""
    return "move" if place > 0 and asked == 0 else natural


def session_of(name: str, old: str, new: str, places: int, type_chars: int,
               think_ms: int = 0) -> Session:
    """The editor session that makes `places` of the changes from `old` to `new`."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    hunks = [op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
             if op[0] != "equal"]
    chosen = spread(hunks, places)
    lines, shift = list(a), 0
    steps: list[Edit | Ask | Pause] = []
    for index, (_, i1, i2, j1, j2) in enumerate(chosen):
        at = i1 + shift
        start = sum(map(len, lines[:at]))
        end = start + sum(map(len, lines[at: at + i2 - i1]))
        if index == 0:
            steps.extend([Pause(think_ms)] if think_ms else [])
            steps.append(Ask(start, "open"))
        region = "".join(b[j1:j2])
        first_line = region.split("\n", 1)[0]
        rest = region[len(first_line):]
        blank = "\n" if region.endswith("\n") else ""  # the line typed into, deleted with the old
        steps.append(Edit(start, end, blank))
        steps.extend([Pause(think_ms)] if think_ms else [])
        asks = 0
        if not region:
            steps.append(Ask(start, kind_of("typing", index, asks)))
            asks += 1
        typed = first_line[:type_chars]
        for k, char in enumerate(typed):
            steps.append(Edit(start + k, start + k, char))
            steps.append(Ask(start + k + 1, kind_of("typing", index, asks)))
            asks += 1
        paste = first_line[len(typed):] + rest[: len(rest) - len(blank)]
        if paste:
            steps.append(Edit(start + len(typed), start + len(typed), paste))
            steps.append(Ask(start + len(typed) + len(paste), kind_of("paste", index, asks)))
        lines[at: at + i2 - i1] = b[j1:j2]
        shift += (j2 - j1) - (i2 - i1)
    session = Session(name, old, steps, "".join(lines), len(a), len(chosen), len(hunks))
    text = old
    for step in steps:
        if isinstance(step, Edit):
            text = text[: step.start] + step.text + text[step.end:]
    if text != session.expected:
        raise AssertionError(f"{name}: the replayed edits do not give the diff's text")
    return session


def sessions(args: argparse.Namespace) -> list[Session]:
    """Sessions from each package's changed files, the packages taken in turn."""
    queues: list[list[Session]] = []
    for spec in args.packages:
        try:
            name, old_version, new_version = spec.split(":")
        except ValueError:
            raise SystemExit(f"--packages: {spec!r} is not NAME:OLD:NEW") from None
        old = python_files(wheel(name, old_version))
        new = python_files(wheel(name, new_version))
        queue = []
        for path in sorted(old.keys() & new.keys()):
            if old[path] == new[path]:
                continue
            s = session_of(f"{path} {old_version}->{new_version}", old[path], new[path],
                           args.hunks, args.type_chars, args.think_ms)
            if s.changed_places >= args.min_hunks:
                queue.append(s)
        queues.append(queue)
    chosen: list[Session] = []
    while len(chosen) < args.sessions and any(queues):
        for queue in queues:
            if queue and len(chosen) < args.sessions:
                chosen.append(queue.pop(0))
    if not chosen:
        raise SystemExit("no changed file with enough changed places in --packages")
    return chosen


# ---- the document as an editor holds it


def position(text: str, offset: int) -> types.Position:
    """The LSP position (UTF-16 code units, the default encoding) of `offset`."""
    line_start = text.rfind("\n", 0, offset) + 1
    units = len(text[line_start:offset].encode("utf-16-le")) // 2
    return types.Position(line=text.count("\n", 0, offset), character=units)


def infill_request(text: str, offset: int) -> dict[str, Any]:
    """The /infill body llama.vscode sends for a cursor at `offset` (its completion provider:
    prefix lines, suffix lines, the line before the cursor as `prompt`), sampling greedy."""
    lines = text.split("\n")
    line = text.count("\n", 0, offset)
    column = offset - (text.rfind("\n", 0, offset) + 1)
    line_text = lines[line]
    before, after = line_text[:column], line_text[column:]
    indent = len(line_text) - len(line_text.lstrip())
    body: dict[str, Any] = {
        "input_prefix": "\n".join(lines[max(0, line - N_PREFIX): line]) + "\n",
        "input_suffix": after + "\n" + "\n".join(lines[line + 1: line + 1 + N_SUFFIX]) + "\n",
        "input_extra": [],
        "prompt": "" if before.strip(" \t") == "" else before,
        "n_predict": MAX_NEW_TOKENS,
        "stream": False,
        "cache_prompt": True,
        "samplers": ["top_k"], "top_k": 1, "temperature": 0.0,
    }
    if indent:
        body["n_indent"] = indent
    return body


# ---- the two sides


@dataclass
class Request:
    side: str
    session: str
    kind: str
    ms: float
    computed: int  # prompt tokens run through the model for this request
    reused: int  # prompt tokens taken from a cache
    new_tokens: int
    outcome: str = ""


@dataclass
class Ours:
    """The real server over stdio."""

    client: Client
    loaded: dict[str, Any]

    async def replay(self, session: Session) -> list[Request]:
        uri = f"file:///replay/{session.name.split()[0]}"
        text, timed = session.text, []
        self.client.open(uri, text)
        for step in session.steps:
            if isinstance(step, Pause):
                await asyncio.sleep(step.ms / 1000)
                continue
            if isinstance(step, Edit):
                self.client.replace(uri, position(text, step.start), position(text, step.end),
                                    step.text)
                text = text[: step.start] + step.text + text[step.end:]
                continue
            started = time.perf_counter()
            await self.client.inline(uri, position(text, step.at))
            timed.append((step.kind, (time.perf_counter() - started) * 1000))
        status = await self.client.status(requests=True)
        self.client.close(uri)
        records = status["recent"][-len(timed):]
        if len(records) != len(timed):
            raise RuntimeError(f"the server recorded {len(records)} of {len(timed)} requests")
        return [Request("ours", session.name, kind, ms, r["computedTokens"], r["reusedTokens"],
                        r["newTokens"], r["outcome"])
                for (kind, ms), r in zip(timed, records, strict=True)]

    async def warm_up(self) -> None:
        self.client.open("file:///replay/warmup.py", WARMUP)
        await self.client.inline("file:///replay/warmup.py", types.Position(line=5, character=4))
        self.client.close("file:///replay/warmup.py")


@dataclass
class Llama:
    """llama-server, asked what llama.vscode asks."""

    url: str
    errors: list[str] = field(default_factory=list)

    def infill(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(self.url + "/infill", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as answer:
                return dict(json.load(answer))
        except urllib.error.HTTPError as error:
            return {"error": error.read().decode(errors="replace")[:300]}

    async def replay(self, session: Session) -> list[Request]:
        text, done = session.text, []
        for step in session.steps:
            if isinstance(step, Pause):
                await asyncio.sleep(step.ms / 1000)
                continue
            if isinstance(step, Edit):
                text = text[: step.start] + step.text + text[step.end:]
                continue
            body = infill_request(text, step.at)
            started = time.perf_counter()
            answer = await asyncio.to_thread(self.infill, body)
            ms = (time.perf_counter() - started) * 1000
            timings = answer.get("timings", {})
            if "error" in answer:
                self.errors.append(f"{session.name}: {answer['error']}")
            done.append(Request("llamacpp", session.name, step.kind, ms,
                                int(timings.get("prompt_n", 0)), int(timings.get("cache_n", 0)),
                                int(timings.get("predicted_n", 0)),
                                "error" if "error" in answer else "model"))
        return done

    async def warm_up(self) -> None:
        await asyncio.to_thread(self.infill, infill_request(WARMUP, len(WARMUP) - 12))


# ---- the model


def tiny_random_checkpoint() -> Path:
    """tiny_starcoder_py's shape, random weights, the packaged tokenizer (built once)."""
    folder = replay_root() / "tiny_starcoder_py-random"
    if (folder / "config.json").is_file():
        return folder
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    from keystroke import tiny_starcoder_config

    from model import GPTBigCodeForCausalLM
    from model.tokenizer import Tokenizer

    packaged = ROOT / "model" / "default"
    words = Tokenizer.from_file(packaged / "tokenizer.json").vocab_size
    log.info("building tiny_starcoder_py's shape with random weights in %s", folder)
    torch.manual_seed(0)
    net = GPTBigCodeForCausalLM(tiny_starcoder_config(49152)).eval()
    with torch.no_grad():  # greedy decoding then picks tokens the tokenizer can write out
        net.transformer.wte.weight[words:] *= 0.01
        net.transformer.wte.weight[:5] *= 0.01  # <|endoftext|> and the FIM tokens
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    net.save_pretrained(partial)
    for name in TOKENIZER_FILES:
        if (packaged / name).is_file():
            shutil.copy2(packaged / name, partial / name)
    partial.rename(folder)
    return folder


def model_folder(name: str) -> tuple[str, Path]:
    """(the server's --model, the checkpoint folder llama.cpp's converter reads)."""
    if name == "tiny":
        folder = tiny_random_checkpoint()
        return str(folder), folder
    if name == "default":
        return "default", ROOT / "model" / "default"
    return name, Path(name)


# ---- the run


@contextlib.contextmanager
def busy(count: int) -> Iterator[None]:
    """`count` CPU-bound processes for the duration of the block."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(count)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def heard(method: str, params: Any) -> None:
    if method == types.WINDOW_SHOW_MESSAGE:
        log.warning("server: %s", params.message)


async def run(args: argparse.Namespace, plan: list[Session], served: str,
              gguf: Path | None, positions: int, scratch: Path) -> dict[str, Any]:
    options: dict[str, Any] = {
        "debounceMs": 0, "maxNewTokens": MAX_NEW_TOKENS, "minConfidence": 0.0,
        "timeBudgetMs": 600_000, "diagnostics": {"enabled": False}, "dtype": args.dtype,
        "warm": not args.no_warm}
    if args.context_tokens:
        options["contextTokens"] = args.context_tokens
    if args.fim_layout:
        options["fimLayout"] = args.fim_layout
    client = await start(["--model", served, "--threads", "1"], options,
                         client=Client("replay-bench", heard), cwd=str(ROOT))
    with contextlib.ExitStack() as stack:
        try:
            loaded = await client.wait_until_loaded(600)
            if not loaded["ready"]:
                raise SystemExit(f"the server could not load the model: {loaded['error']}")
            ours = Ours(client, loaded)
            sides: list[Ours | Llama] = [ours]
            if gguf is not None:
                server = stack.enter_context(llamacpp.LlamaServer(
                    gguf, ctx=positions, threads=1, log=scratch / "llama-server.log"))
                sides.append(Llama(server.url))
            for side in sides:
                await side.warm_up()
            requests: list[Request] = []
            load_before = os.getloadavg()[0]
            with busy(args.busy):
                for index, session in enumerate(plan):
                    order = sides if index % 2 == 0 else sides[::-1]
                    for side in order:
                        started = time.perf_counter()
                        done = await side.replay(session)
                        requests += done
                        log.info("%-40s %-8s %3d requests %7.1f s", session.name,
                                 done[0].side if done else "", len(done),
                                 time.perf_counter() - started)
            load_after = os.getloadavg()[0]
            final = await client.status()
            errors = [e for side in sides if isinstance(side, Llama) for e in side.errors]
            return {"requests": requests, "loaded": loaded, "final": final,
                    "load": (load_before, load_after), "llama_errors": errors}
        finally:
            await stop(client)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": round(at(0.5), 1), "p95": round(at(0.95), 1),
            "max": round(ordered[-1], 1)}


def summary(requests: list[Request], side: str) -> dict[str, Any]:
    mine = [r for r in requests if r.side == side]
    groups = {"all": mine, **{k: [r for r in mine if r.kind == k] for k in KINDS}}
    out: dict[str, Any] = {}
    for name, group in groups.items():
        if not group:
            continue
        out[name] = {"latency_ms": percentiles([r.ms for r in group]),
                     "computed_tokens": percentiles([r.computed for r in group]),
                     "reused_tokens_mean": round(sum(r.reused for r in group) / len(group), 1),
                     "prompt_tokens_mean": round(sum(r.computed + r.reused for r in group)
                                                 / len(group), 1),
                     "new_tokens_mean": round(sum(r.new_tokens for r in group) / len(group), 1)}
    outcomes: dict[str, int] = {}
    for r in mine:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    out["outcomes"] = outcomes
    return out


def cpu() -> dict[str, Any]:
    from model.hardware import cpu_flags, cpu_name

    flags = cpu_flags()
    return {"name": cpu_name(), "cores": os.cpu_count(), "avx512f": "avx512f" in flags,
            "avx2": "avx2" in flags, "fma": "fma" in flags}


def table(result: dict[str, Any], sides: list[str]) -> None:
    print(f"{'':9} {'requests':8} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}"
          f" {'computed tok p50/p95/max':>25} {'reused':>7} {'prompt':>7} {'new':>5}")
    for side in sides:
        for kind in ("all", *KINDS):
            row = result[side].get(kind)
            if not row:
                continue
            lat, tok = row["latency_ms"], row["computed_tokens"]
            print(f"{side:9} {kind:8} {lat['n']:>4} {lat['p50']:>9.1f} {lat['p95']:>9.1f}"
                  f" {lat['max']:>9.1f} {tok['p50']:>9.0f}/{tok['p95']:>6.0f}/{tok['max']:>6.0f}"
                  f" {row['reused_tokens_mean']:>8.0f} {row['prompt_tokens_mean']:>7.0f}"
                  f" {row['new_tokens_mean']:>5.1f}")
    if len(sides) == 2:
        print("ours / llama.cpp, latency:")
        for kind in ("all", *KINDS):
            a, b = result[sides[0]].get(kind), result[sides[1]].get(kind)
            if a and b:
                ratios = {q: round(a["latency_ms"][q] / max(b["latency_ms"][q], 1e-9), 2)
                          for q in ("p50", "p95", "max")}
                print(f"  {kind:8} p50 {ratios['p50']:>6.2f}  p95 {ratios['p95']:>6.2f}"
                      f"  max {ratios['max']:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny",
                        help='"tiny" (tiny_starcoder_py\'s shape, random weights), "default", '
                             "or a checkpoint folder")
    parser.add_argument("--packages", nargs="+", default=PACKAGES, metavar="NAME:OLD:NEW")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--hunks", type=int, default=3, help="changed places per session")
    parser.add_argument("--min-hunks", type=int, default=2,
                        help="skip files with fewer changed places")
    parser.add_argument("--type-chars", type=int, default=8,
                        help="characters typed one at a time per place; the rest is pasted")
    parser.add_argument("--busy", type=int, default=0,
                        help="CPU-bound processes beside both servers during the replay")
    parser.add_argument("--dtype", default="auto", help="ours' dtype option")
    parser.add_argument("--context-tokens", type=int, default=None,
                        help="ours' contextTokens option (default: the server's own budget)")
    parser.add_argument("--fim-layout", choices=["spm", "psm", "auto"], default=None,
                        help="ours' fimLayout option (default: the server's, auto)")
    parser.add_argument("--gguf-type", default="f32", choices=["f32", "f16", "bf16"],
                        help="the GGUF llama-server runs")
    parser.add_argument("--no-llamacpp", action="store_true", help="replay on ours only")
    parser.add_argument("--requests-out", type=Path, help="write every request here (JSON)")
    parser.add_argument("--think-ms", type=int, default=0,
                        help="idle ms after the open and after each place's deletion, before "
                             "the next request or key")
    parser.add_argument("--no-warm", action="store_true",
                        help="ours with the warm option off (no prefill while idle)")
    args = parser.parse_args()
    for name in ("sessions", "hunks", "min_hunks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.type_chars < 0 or args.busy < 0 or args.think_ms < 0:
        parser.error("--type-chars, --busy and --think-ms must be at least 0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("pygls").setLevel(logging.WARNING)

    plan = sessions(args)
    served, folder = model_folder(args.model)
    config = json.loads((folder / "config.json").read_text())
    gguf = None
    if not args.no_llamacpp:
        if not llamacpp.server_binary().is_file():
            raise SystemExit("llama-server is not built: python -m tests.engines.llamacpp "
                             "install (or --no-llamacpp)")
        log.info("converting %s to %s GGUF (cached)", folder, args.gguf_type)
        gguf = llamacpp.convert(folder, args.gguf_type)
    for s in plan:
        log.info("session %-40s %5d lines, %d of %d changed places, %d requests", s.name,
                 s.lines, s.places, s.changed_places, s.asks)
    with tempfile.TemporaryDirectory() as scratch:
        outcome = asyncio.run(run(args, plan, served, gguf, config["n_positions"], Path(scratch)))
    requests: list[Request] = outcome["requests"]
    sides = ["ours"] + ([] if gguf is None else ["llamacpp"])
    result: dict[str, Any] = {side: summary(requests, side) for side in sides}
    machine = cpu()
    loaded, final = outcome["loaded"], outcome["final"]
    print(f"CPU: {machine['name']} ({machine['cores']} cores, avx512f: {machine['avx512f']}),"
          f" shared with other workers; load average {outcome['load'][0]:.2f} -> "
          f"{outcome['load'][1]:.2f}; busy processes: {args.busy}")
    print(f"model: {loaded['model']} ({config['n_layer']}x{config['n_embd']}, vocab "
          f"{config['vocab_size']}), ours {loaded['dtype']} / {loaded.get('decodePath')}, "
          f"layout {loaded.get('layout')}, context budget "
          f"{(final.get('context') or {}).get('tokens')} tokens, 1 thread; "
          f"llama.cpp {args.gguf_type} GGUF, -t 1, -c {config['n_positions']}")
    print(f"ours' warming: {final.get('warm')} (option warm: {not args.no_warm}; think time "
          f"{args.think_ms} ms)")
    table(result, sides)
    if outcome["llama_errors"]:
        print(f"llama.cpp errors: {len(outcome['llama_errors'])}, first: "
              f"{outcome['llama_errors'][0]}")
    if args.requests_out:
        args.requests_out.write_text(json.dumps([asdict(r) for r in requests]))
    print(json.dumps({
        "bench": "replay", "cpu": machine, "shared_machine": True,
        "load_avg_1m": [round(v, 2) for v in outcome["load"]], "busy_processes": args.busy,
        "model": loaded["model"], "shape": {k: config[k] for k in
                                            ("n_layer", "n_embd", "n_head", "vocab_size",
                                             "n_positions")},
        "tokenizer": "model/default's (4,096 entries)" if args.model in ("tiny", "default")
        else "the checkpoint's",
        "ours": {**result["ours"], "dtype": loaded["dtype"],
                 "decode_path": loaded.get("decodePath"),
                 "layout": loaded.get("layout"), "context": final.get("context"),
                 "cache": final.get("cache"), "options": {
                     k: final["options"].get(k) for k in ("maxNewTokens", "debounceMs",
                                                          "minConfidence", "timeBudgetMs",
                                                          "contextTokens", "fimLayout",
                                                          "warm")}, "warm": final.get("warm")},
        **({"llamacpp": {**result["llamacpp"], "errors": len(outcome["llama_errors"]),
                         "gguf": args.gguf_type,
                         "ctx": config["n_positions"], "n_prefix_lines": N_PREFIX,
                         "n_suffix_lines": N_SUFFIX}} if gguf is not None else {}),
        "max_new_tokens": MAX_NEW_TOKENS, "threads": 1,
        "sessions": [{"name": s.name, "lines": s.lines, "places": s.places,
                      "changed_places": s.changed_places, "requests": s.asks} for s in plan],
        "type_chars": args.type_chars, "think_ms": args.think_ms,
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
