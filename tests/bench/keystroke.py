"""Keystroke cost: time to the first new token after each edit of a scripted typing session in
a 2,048-token Python file, through the prefix cache vs. a full recompute, and one decode step,
all in the same run, on bigcode/tiny_starcoder_py's shape with random weights.

    .venv/bin/python tests/bench/keystroke.py [--dtype fp32|bf16|fp32p|bf16p|int8|int8h]
        [--keystrokes N] [--threads N] [--isa avx512|avx2] [--weights auto|fp32|bf16|f16]
        [--moves [--context N] [--variants spm-old,spm,psm-one,psm]] [--cross-file]

--moves: cursor moves instead, in the stdlib's textwrap.py (491 lines) as a whole: the file is
opened, then the cursor goes to another line (near and far, back and forth), a request, and
a short line is typed there with a request after each character. Each layout variant replays
the same session on its own prompt builder and store, interleaved move by move (A B A B):
spm-old is SPM with the suffix taking a quarter of the budget (the layout before prefix-first),
spm the same with the suffix capped (cache.window.SUFFIX_CAP), psm-one psm_line with one entry
per document, psm psm_line with the document's spare (the longest prompt kept), psm-spares
with the server's SPARES (lsp_server/engine/local.py: a far move's old window kept). Reported per
variant: tokens computed and ms to the first token of the first request after a move and of
the typing requests (p50 / p95 / max), and each prompt is checked against layout_ids.

fp32 and bf16 run as the server runs them, on the decode path make_decoder chooses (the native
kernels of model.native where the CPU has them); fp32p and bf16p run the PyTorch path; int8 is
bf16 activations with int8 weights in the blocks; int8h quantises lm_head too. --isa forces
the native kernels' instruction set ($GPTBIGCODE_NATIVE_ISA; refused where the CPU lacks it),
--weights how they store an fp32 model's matrices ($GPTBIGCODE_NATIVE_WEIGHTS).

--cross-file: the same typing session twice, keystroke by keystroke (A B A B), without and
with context from other files (cache/crossfile.py: stdlib modules open beside the file, chosen
by RepoContextChooser within a quarter of the budget on each keystroke, as the engine does), each
on its own builder and store; reported: both medians and their ratio (target: within 10%).

Prints a table per keystroke, a summary, and one JSON line last. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cache import ContextBudget, PrefixStore, PromptBuilder, layout_ids
from cache.crossfile import OtherDocument, RepoContext, RepoContextChooser
from cache.window import SUFFIX_CAP
from lsp_server.engine.local import SPARES
from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, native
from model.decoders import Decoder, make_decoder
from model.hardware import cpu_name
from model.quantize import quantize_int8
from model.tokenizer import Tokenizer

log = logging.getLogger("keystroke")

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
URI = "file:///bench/session.py"
CONTEXT_TOKENS = 2048
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16,
          "fp32p": torch.float32, "bf16p": torch.bfloat16}
# Weight-only int8 (activations bf16): name -> whether lm_head is quantised too.
INT8_DTYPES = {"int8": False, "int8h": True}
SPECIALS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]

# What the user types at the cursor, one character per keystroke; PASTE arrives in one edit
# halfway through.
TYPED = (
    "def clamp(value, low, high):\n"
    "    if value < low:\n"
    "        return low\n"
    "    if value > high:\n"
    "        return high\n"
    "    return value\n"
)
PASTE = (
    "\n\ndef lerp(a, b, t):\n"
    '    """Linear interpolation between a and b."""\n'
    "    return a + (b - a) * t\n"
)


def tiny_starcoder_config(vocab_size: int) -> GPTBigCodeConfig:
    """bigcode/tiny_starcoder_py's architecture (its weights are not used)."""
    return GPTBigCodeConfig(
        n_layer=20, n_embd=768, n_head=12, multi_query=True, vocab_size=vocab_size,
        n_positions=8192, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )


def load_tokenizer() -> Tokenizer:
    """The packaged tokenizer when there is one, else a byte-level BPE trained on the stdlib."""
    packaged = ROOT / "model" / "default" / "tokenizer.json"
    if packaged.exists():
        return Tokenizer.from_file(packaged)
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    started = time.perf_counter()
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=16384, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(
        (p.read_text(encoding="utf-8", errors="replace") for p in sorted(STDLIB.glob("*.py"))),
        trainer,
    )
    log.info("trained a BPE tokenizer on the stdlib in %.1f s", time.perf_counter() - started)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"keystroke-bench-{os.getpid()}.json"
    backend.save(str(path))
    try:
        return Tokenizer.from_file(path)
    finally:
        path.unlink()


def python_file(tok: Tokenizer, tokens: int) -> str:
    """Whole lines of stdlib source adding up to `tokens` tokens."""
    source = "".join(
        (STDLIB / name).read_text(encoding="utf-8") for name in ("textwrap.py", "string.py")
    )
    lines = source.splitlines(keepends=True)
    lo, hi = 1, len(lines)
    while lo < hi:  # the most lines whose tokens fit
        mid = (lo + hi + 1) // 2
        if len(tok.encode("".join(lines[:mid]))) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return "".join(lines[:lo])


def session(text: str, cursor: int, keystrokes: int) -> list[tuple[str, int, str]]:
    """(text, cursor, what was typed) after each keystroke."""
    keys = list(TYPED * (1 + keystrokes // len(TYPED)))[: keystrokes - 1]
    keys.insert(len(keys) // 2, PASTE)
    states = []
    for key in keys:
        text = text[:cursor] + key + text[cursor:]
        cursor += len(key)
        states.append((text, cursor, "paste" if key == PASTE else repr(key)))
    return states


@dataclass
class Keystroke:
    key: str
    context: int  # prompt tokens
    computed: int  # tokens the cached path ran
    build_ms: float  # prompt building (tokenising, window) inside cached_ms
    cached_ms: float  # edit -> first new token, through the cache
    full_ms: float | None  # edit -> first new token, recomputing the whole prompt
    decode_ms: float  # one decode step at this context
    same_token: bool | None = None  # both paths chose the same next token


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


ContextOf = Callable[[str, int], "RepoContext | None"]


def run_keystroke(
    decoder: Decoder, tok: Tokenizer, builder: PromptBuilder, cache: PrefixStore,
    text: str, cursor: int, key: str, full: bool, context_of: ContextOf | None = None,
) -> Keystroke:
    lm = decoder.model
    started = time.perf_counter()
    context = context_of(text, cursor) if context_of is not None else None
    prompt = builder.build(URI, text, cursor, "spm", context)
    build = time.perf_counter() - started
    with cache.open(prompt.key, decoder) as session:
        result = session.prefill(prompt.ids)
        token = int(result.next_token_logits.argmax())
        cached = time.perf_counter() - started

        # One decode step on the same buffers, kept with the prompt.
        started = time.perf_counter()
        session.step(token)
        decode = time.perf_counter() - started
        session.commit(keep=len(prompt.ids) + 1)

    row = Keystroke(key, len(prompt.ids), result.computed, ms(build), ms(cached), None, ms(decode))
    if full:
        # What a backend without a cache pays: tokenise everything, run everything.
        started = time.perf_counter()
        ids = layout_ids("spm", tok, text, cursor, prompt.start, prompt.end, context=context)
        with torch.inference_mode():
            logits = lm(torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[0, -1]
        full_token = int(logits.argmax())
        row.full_ms = ms(time.perf_counter() - started)
        row.same_token = token == full_token
        if ids != prompt.ids:
            raise AssertionError("the builder's prompt differs from a fresh tokenisation")
    return row


# -- cursor moves ---------------------------------------------------------------------------


# Where the cursor goes, as line numbers of the file as it is then: back and forth, near and
# far. At each, MOVE_TYPED is typed at the line's start, a request after each character.
MOVE_LINES = (290, 120, 126, 400, 60, 310, 302, 470, 200, 215, 90, 380)
MOVE_TYPED = "n = 0\n"
NEAR_LINES = 20
# name -> (layout, suffix cap (None: a quarter of the budget), spares the store keeps per key)
VARIANTS: dict[str, tuple[str, int | None, int]] = {
    "spm-old": ("spm", None, 0),
    "spm": ("spm", SUFFIX_CAP, 1),
    "psm-one": ("psm_line", SUFFIX_CAP, 0),
    "psm": ("psm_line", SUFFIX_CAP, 1),
    "psm-spares": ("psm_line", SUFFIX_CAP, SPARES),
}


@dataclass
class MoveRequest:
    variant: str
    kind: str  # "open", "move" or "type"
    label: str  # where the cursor went: "line 290 (-10)"
    lines: int  # how far the cursor went, in lines
    context: int  # prompt tokens
    reused: int
    computed: int
    ms: float  # prompt build + prefill to the first token's logits


State = tuple[str, int, str, str, int]  # text, cursor, kind, label, lines moved


def move_session(text: str, moves: int) -> list[State]:
    """The state of each request: open at the first line, then each of the first `moves`
    moves and the keystrokes typed after it."""
    states: list[State] = []
    line = MOVE_LINES[0] - 5
    for kind, target in [("open", line), *(("move", n) for n in MOVE_LINES[:moves])]:
        starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        cursor = starts[min(target, len(starts) - 1)]
        label = f"line {target} ({target - line:+d})"
        states.append((text, cursor, kind, label, target - line))
        line = target
        for key in MOVE_TYPED:
            text = text[:cursor] + key + text[cursor:]
            cursor += 1
            states.append((text, cursor, "type", label, 0))
        line += 1
    return states


def run_move_request(
    decoder: Decoder, tok: Tokenizer, builder: PromptBuilder, cache: PrefixStore,
    variant: str, layout: str, state: State,
) -> MoveRequest:
    text, cursor, kind, label, lines = state
    started = time.perf_counter()
    prompt = builder.build(URI, text, cursor, layout)
    with cache.open(prompt.key, decoder) as session:
        result = session.prefill(prompt.ids)
        int(result.next_token_logits.argmax())
    elapsed = time.perf_counter() - started
    if prompt.ids != layout_ids(layout, tok, text, cursor, prompt.start, prompt.end, prompt.cut):
        raise AssertionError(f"{variant}: the builder's prompt differs from a fresh one")
    return MoveRequest(variant, kind, label, lines, len(prompt.ids), result.reused,
                       result.computed, ms(elapsed))


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return {"p50": round(statistics.median(values), 1), "p95": round(p95, 1),
            "max": round(values[-1], 1)}


def run_moves(args: argparse.Namespace, decoder: Decoder, tok: Tokenizer) -> None:
    text = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    setups = {}
    for name in names:
        layout, cap, spares = VARIANTS[name]
        builder = PromptBuilder(tok, ContextBudget(tokens=args.context, suffix_cap=cap))
        setups[name] = (layout, builder, PrefixStore(spares=spares))
    log.info("textwrap.py: %d lines, %d tokens; budget %d tokens; decode path %s; cpu %s",
             text.count("\n"), len(tok.encode_text(text)), args.context, decoder.path, cpu_name())
    # Warm up the kernels on a throwaway store.
    warm = PromptBuilder(tok, ContextBudget(tokens=args.context))
    for cursor in (len(text) // 2, len(text) // 2 + 1):
        run_move_request(decoder, tok, warm, PrefixStore(), "warm-up", "spm",
                         (text, cursor, "open", "warm-up", 0))
    states = move_session(text, args.max_moves)
    rows: list[MoveRequest] = []
    print(f"{'request':>24} " + " ".join(f"{n + ' ran':>12} {'ms':>8}" for n in names))
    for i, state in enumerate(states):
        # A B A B: the variants take turns on each request, so drift hits them alike.
        turn = names[i % len(names):] + names[: i % len(names)]
        done = {}
        for name in turn:
            layout, builder, cache = setups[name]
            done[name] = run_move_request(decoder, tok, builder, cache, name, layout, state)
        rows.extend(done[n] for n in names)
        what = f"{state[2]} {state[3]}" if state[2] != "type" else "  type"
        print(f"{what:>24} " + " ".join(
            f"{done[n].computed:>12} {done[n].ms:>8.1f}" for n in names), flush=True)

    report: dict[str, Any] = {}
    print()
    print(f"{'variant':>8} {'requests':>9} {'tokens computed p50/p95/max':>30} "
          f"{'ms p50/p95/max':>26}")
    # Near: within NEAR_LINES of the last place (inside any window); far: the rest.
    groups = {
        "move": lambda r: r.kind == "move",
        "near": lambda r: r.kind == "move" and abs(r.lines) <= NEAR_LINES,
        "far": lambda r: r.kind == "move" and abs(r.lines) > NEAR_LINES,
        "type": lambda r: r.kind == "type",
    }
    for name in names:
        report[name] = {}
        for kind, chosen in groups.items():
            mine = [r for r in rows if r.variant == name and chosen(r)]
            if not mine:
                continue
            computed = percentiles([r.computed for r in mine])
            timing = percentiles([r.ms for r in mine])
            report[name][kind] = {"requests": len(mine), "computed": computed, "ms": timing}
            print(f"{name:>8} {kind + ' x' + str(len(mine)):>9} "
                  f"{computed['p50']:>10.0f} {computed['p95']:>9.0f} {computed['max']:>9.0f} "
                  f"{timing['p50']:>9.1f} {timing['p95']:>8.1f} {timing['max']:>8.1f}")
    opened = {r.variant: r.computed for r in rows if r.kind == "open"}
    result = {
        "bench": "keystroke-moves", "shape": "tiny_starcoder_py (random weights)",
        "dtype": args.dtype, "file": "textwrap.py", "context_budget": args.context,
        "suffix_cap": SUFFIX_CAP, "moves": min(args.max_moves, len(MOVE_LINES)),
        "typed_per_move": len(MOVE_TYPED), "near_lines": NEAR_LINES,
        "open_computed": opened, "variants": report, "decode_path": decoder.path,
        "stores": {n: asdict(setups[n][2].stats.snapshot()) for n in names},
        "machine": machine(),
    }
    print(json.dumps(result))


# Stdlib modules open beside the typed file (textwrap.py and string.py): what they import, or
# use, and others; the chooser picks among them as the engine would.
CROSS_FILE_OTHERS = ("re/__init__.py", "re/_compiler.py", "shlex.py", "fnmatch.py")


def run_cross_file(args: argparse.Namespace, decoder: Decoder, tok: Tokenizer, text: str,
                   cursor: int) -> None:
    """The typing session without and with other files' context, interleaved."""
    others = tuple(OtherDocument(f"file:///bench/{name}", (STDLIB / name).read_text("utf-8"),
                                 "python") for name in CROSS_FILE_OTHERS)
    budget = ContextBudget(tokens=CONTEXT_TOKENS + 256, suffix_cap=None)
    chooser = RepoContextChooser(tok)
    if not chooser.available:
        raise SystemExit("--cross-file: the tokenizer has no <reponame> / <filename> tokens")

    def context_of(now: str, at: int) -> RepoContext | None:
        return chooser.choose(URI, now, at, others, budget.tokens // 4, "file:///bench")

    first = context_of(text, cursor)
    if first is None:
        raise SystemExit("--cross-file: nothing chosen from the other files")
    log.info("context: %s, %d tokens", first.files,
             len(layout_ids("spm", tok, "", 0, context=first)) - 3)
    setups = {"off": (PromptBuilder(tok, budget), PrefixStore(), None),
              "on": (PromptBuilder(tok, budget), PrefixStore(), context_of)}
    for builder, cache, of in setups.values():  # warm-up, both paths
        for _ in range(2):
            run_keystroke(decoder, tok, builder, cache, text, cursor, "warm-up", True, of)
    rows: dict[str, list[Keystroke]] = {"off": [], "on": []}
    print(f"{'key':>8} {'off ctx':>7} {'ran':>4} {'ms':>8} {'on ctx':>7} {'ran':>4} {'ms':>8}")
    for i, (now, at, key) in enumerate(session(text, cursor, args.keystrokes)):
        full = i % args.full_every == 0
        order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
        for name in order:
            builder, cache, of = setups[name]
            rows[name].append(run_keystroke(decoder, tok, builder, cache, now, at, key, full, of))
        off, on = rows["off"][-1], rows["on"][-1]
        print(f"{key:>8} {off.context:>7} {off.computed:>4} {off.cached_ms:>8.2f} "
              f"{on.context:>7} {on.computed:>4} {on.cached_ms:>8.2f}", flush=True)
    cached = {name: summary(rows[name], "cached_ms") for name in rows}
    build = {name: summary(rows[name], "build_ms") for name in rows}
    ratio = round(cached["on"]["median"] / cached["off"]["median"], 3)
    print(f"\ncached edit -> token, median ms: off {cached['off']['median']}, on "
          f"{cached['on']['median']}; on / off = {ratio} (target <= 1.10)")
    result = {
        "bench": "keystroke-cross-file", "shape": "tiny_starcoder_py (random weights)",
        "dtype": args.dtype, "keystrokes": len(rows["on"]), "cached_ms": cached,
        "build_ms": build, "on_over_off": ratio, "target_met": ratio <= 1.10,
        "context_files": first.files,
        "prompt_tokens": {name: rows[name][-1].context for name in rows},
        "computed_max": {name: max(r.computed for r in rows[name]) for name in rows},
        "choices": chooser.choices, "decode_path": decoder.path, "machine": machine(),
    }
    print(json.dumps(result))


def summary(rows: list[Keystroke], field: str) -> dict[str, float]:
    values = sorted(v for r in rows if (v := getattr(r, field)) is not None)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return {"median": round(statistics.median(values), 2), "p95": p95}


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "cpu_flags": sorted(native.cpu_flags() & {"avx2", "fma", "f16c", "avx512f",
                                                  "avx512_bf16", "avx512_vnni", "amx_bf16"}),
        "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted({*DTYPES, *INT8_DTYPES}), default="bf16")
    parser.add_argument("--keystrokes", type=int, default=40, help="edits to time (>= 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--full-every", type=int, default=1, help="time the full recompute every Nth keystroke"
    )
    parser.add_argument("--isa", default=None, help="force the native kernels' ISA: "
                        f"{' or '.join(native.ISA_FLAGS)} (refused where the CPU lacks it)")
    parser.add_argument("--weights", default=None, choices=["auto", *native.WEIGHT_FORMATS],
                        help="how the native kernels store an fp32 model's matrices")
    parser.add_argument("--moves", action="store_true",
                        help="cursor moves in textwrap.py instead of typing at one place")
    parser.add_argument("--context", type=int, default=6144,
                        help="--moves: the prompt's token budget (the whole file: 6144)")
    parser.add_argument("--max-moves", type=int, default=len(MOVE_LINES),
                        help=f"--moves: the first N of the {len(MOVE_LINES)} moves")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"--moves: comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--cross-file", action="store_true",
                        help="typing without and with other files' context, interleaved")
    args = parser.parse_args()
    if args.keystrokes < 2 or args.full_every < 1:
        parser.error("--keystrokes must be at least 2 and --full-every at least 1")
    try:
        native.override(args.isa, args.weights)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = load_tokenizer()
    text = python_file(tok, CONTEXT_TOKENS)
    cursor = text.index("\n\n", int(len(text) * 0.8)) + 1  # a blank line near the end
    lm = GPTBigCodeForCausalLM(tiny_starcoder_config(49152), attn_implementation="sdpa")
    lm = lm.to(DTYPES.get(args.dtype, torch.bfloat16)).eval()
    if args.dtype in INT8_DTYPES:
        quantize_int8(lm, include_lm_head=INT8_DTYPES[args.dtype])
    decoder = make_decoder(lm, "torch" if args.dtype in ("fp32p", "bf16p") else "auto")
    if args.moves:
        run_moves(args, decoder, tok)
        return
    if args.cross_file:
        run_cross_file(args, decoder, tok, text, cursor)
        return
    cache = PrefixStore()
    # The whole file in the prompt, its text after the cursor too (no suffix cap): the context
    # the figures in the README were measured at.
    builder = PromptBuilder(tok, ContextBudget(tokens=CONTEXT_TOKENS + 256, suffix_cap=None))
    isa = getattr(decoder, "isa", None)
    log.info("file: %d tokens, %d characters; cursor at %d; decode path %s (%s); cpu %s",
             len(tok.encode(text)), len(text), cursor, decoder.path, isa or "no native ISA",
             cpu_name())

    # Warm up both paths (allocator, kernels) on the unedited file.
    for _ in range(2):
        run_keystroke(decoder, tok, builder, cache, text, cursor, "warm-up", full=True)
    rows = []
    print(f"{'key':>8} {'context':>7} {'ran':>4} {'build':>7} {'cached':>8} {'full':>9} "
          f"{'decode':>8}   (ms)")
    for i, (text_now, cursor_now, key) in enumerate(session(text, cursor, args.keystrokes)):
        full = i % args.full_every == 0
        row = run_keystroke(decoder, tok, builder, cache, text_now, cursor_now, key, full)
        rows.append(row)
        print(f"{row.key:>8} {row.context:>7} {row.computed:>4} {row.build_ms:>7.2f} "
              f"{row.cached_ms:>8.2f} {row.full_ms or float('nan'):>9.1f} "
              f"{row.decode_ms:>8.2f}", flush=True)

    cached, full, decode = (summary(rows, f) for f in ("cached_ms", "full_ms", "decode_ms"))
    build = summary(rows, "build_ms")
    full_over_cached = round(full["median"] / cached["median"], 1)
    cached_over_decode = round(cached["median"] / decode["median"], 2)
    print()
    print(f"{'':>24} {'median':>9} {'p95':>9}")
    for name, stats in (("cached (edit -> token)", cached), ("full recompute", full),
                        ("decode step", decode), ("prompt build (in cached)", build)):
        print(f"{name:>24} {stats['median']:>9.2f} {stats['p95']:>9.2f}")
    print(f"full / cached = {full_over_cached}x (target >= 30x); "
          f"cached / decode step = {cached_over_decode}x (target <= 2x)")
    result = {
        "bench": "keystroke", "shape": "tiny_starcoder_py (random weights)", "dtype": args.dtype,
        "context_tokens": rows[-1].context, "keystrokes": len(rows),
        "cached_ms": cached, "full_ms": full, "decode_ms": decode, "build_ms": build,
        "full_over_cached": full_over_cached, "cached_over_decode": cached_over_decode,
        "targets_met": full_over_cached >= 30 and cached_over_decode <= 2,
        "full_timed": sum(r.full_ms is not None for r in rows),
        "same_first_token": sum(bool(r.same_token) for r in rows),
        "decode_path": decoder.path, "native_isa": isa,
        "cache": {**asdict(cache.stats.snapshot()), "window_moves": builder.window_moves},
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
