"""Context from other files, measured: completions whose right answer is a name defined in
another module of the same package, in process on the engine, with the context on and off.

    .venv/bin/python tests/bench/crossfile.py [--model default|FOLDER] [--places 40]
        [--seed 19] [--threads 1] [--share 0.25] [--open 3]

Packages: the held-out releases of model/train/corpus.py (never trained on): huggingface_hub,
werkzeug, platformdirs, tomli, charset-normalizer, read from the wheels `python -m
model.train.corpus fetch` caches (~/.cache/gptbigcode-lsp/corpus/wheels; fetched by pip
download when missing). Not idna (the acceptance harness' calibration package), nor pip,
attrs, cattrs, pygls, lsprotocol, click, rich or httpx.

Places: in a file A of a package, a use of a name that A imports from another module B of the
same package (`from .b import name` then `name`, or `from . import b` / `import pkg.b as b`
then `b.name`), with B defining it at its top level and A not defining it. The cursor goes just
before the name (after `b.`), the rest of the line is removed. The editor has A open with B and
`--open - 1` other modules of the package (drawn at random), each place in a fresh workspace
(its own URIs). Each place runs once with the context off and once on (alternating which goes
first), every other option at its default.

Reported per mode: show rate; exact (the suggestion's first line equals the removed text);
name (the suggestion starts with the name, whole); name in the model's own text (before the
confidence gate and post-processing); with the context on, how often B was among the files
shown and how often the name's definition (its def, class or assignment line) was; latency
(engine ms, p50/p95), prompt tokens and tokens computed. And, teacher-forced (the line's text
before the cursor and the name scored after a prompt that ends at the line's start, built by
the engine's prompt builder with the context the engine chose, or none): the name's mean
log-probability per token, how often every token of it is the model's first choice (name
top-1), and in how many places the context raised the name's log-probability. The packaged
model was trained in the repository format on a corpus that holds these packages out; whatever
the context does for a model is reported as it is. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cache import PromptBuilder  # noqa: E402
from lsp_server.engine import (  # noqa: E402
    Completion,
    CompletionRequest,
    Engine,
    EngineSettings,
    GenerationParams,
    ModelChoice,
    OtherDocument,
    load_engine,
    set_threads,
)
from lsp_server.options import Options  # noqa: E402
from model.hardware import cpu_name  # noqa: E402

log = logging.getLogger("crossfile")
WHEELS = Path.home() / ".cache" / "gptbigcode-lsp" / "corpus" / "wheels"
PACKAGES = ("huggingface_hub==0.26.2", "werkzeug==3.1.3", "platformdirs==4.3.6",
            "tomli==2.0.2", "charset-normalizer==3.4.0")
MAX_FILE_BYTES = 120_000
MODES = ("off", "on")


@dataclass(frozen=True)
class Module:
    path: str  # in the wheel: werkzeug/routing/rules.py
    name: str  # werkzeug.routing.rules
    text: str
    defined: frozenset[str]  # top-level def, class and assignment names


@dataclass(frozen=True)
class Place:
    package: str
    file: Module  # A
    source: Module  # B, which defines the name
    text: str  # A with the rest of the cursor's line removed
    cursor: int
    name: str
    removed: str


# ---- data


def wheel(requirement: str) -> Path:
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    found = [p for p in WHEELS.glob("*.whl") if p.name.lower().startswith(stem)]
    if found:
        return found[0]
    WHEELS.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", requirement, WHEELS)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                    ":all:", "-d", str(WHEELS), requirement], check=True, stdout=sys.stderr)
    return wheel(requirement)


def modules(requirement: str) -> dict[str, Module]:
    """The wheel's parseable Python modules by dotted name."""
    found: dict[str, Module] = {}
    with zipfile.ZipFile(wheel(requirement)) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            path = info.filename
            if not path.endswith(".py") or info.file_size > MAX_FILE_BYTES or ".dist-info" in path:
                continue
            try:
                text = archive.read(info).decode("utf-8").replace("\r\n", "\n")
                tree = ast.parse(text)
            except (UnicodeDecodeError, SyntaxError):
                continue
            name = path[: -len(".py")].replace("/", ".").removesuffix(".__init__")
            found[name] = Module(path, name, text, top_level_names(tree))
    return found


def top_level_names(tree: ast.Module) -> frozenset[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(names)


def resolve(module: Module, level: int, target: str | None) -> str:
    """The dotted name `from <level dots><target> import ...` in `module` refers to."""
    if level == 0:
        return target or ""
    package = module.name.split(".")
    if not module.path.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, *([target] if target else [])])


def places_in(package: str, mods: dict[str, Module]) -> list[Place]:
    """Every use in a module of a name another module of the package defines and it imports
    (one place per line)."""
    found: list[Place] = []
    for module in mods.values():
        tree = ast.parse(module.text)
        names: dict[str, Module] = {}  # a bound name -> the module defining it
        aliases: dict[str, Module] = {}  # a bound name -> the module it is
        import_lines: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                import_lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
                source = mods.get(resolve(module, node.level, node.module))
                for alias in node.names:
                    bound = alias.asname or alias.name
                    submodule = mods.get(f"{resolve(module, node.level, node.module)}."
                                         f"{alias.name}")
                    if submodule is not None and submodule is not module:
                        aliases[bound] = submodule
                    elif source is not None and source is not module \
                            and alias.name in source.defined:
                        names[bound] = source
            elif isinstance(node, ast.Import):
                import_lines.add(node.lineno)
                for alias in node.names:
                    if alias.asname and alias.name in mods and mods[alias.name] is not module:
                        aliases[alias.asname] = mods[alias.name]
        lines = module.text.splitlines(keepends=True)
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line))
        seen_lines: set[int] = set()
        for node in ast.walk(tree):
            hit: tuple[int, int, str, Module] | None = None
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) \
                    and node.id in names and node.id not in module.defined:
                hit = (node.lineno, node.col_offset, node.id, names[node.id])
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.end_lineno == node.lineno \
                    and node.attr in aliases[node.value.id].defined:
                end = node.end_col_offset or 0
                hit = (node.lineno, end - len(node.attr), node.attr, aliases[node.value.id])
            if hit is None or hit[0] in import_lines or hit[0] in seen_lines:
                continue
            lineno, column, name, source = hit
            line = lines[lineno - 1]
            if not line.isascii() or line[column:column + len(name)] != name:
                continue  # byte columns are character columns on ASCII lines only
            seen_lines.add(lineno)
            cursor = starts[lineno - 1] + column
            body = line.rstrip("\n")
            text = module.text[:cursor] + module.text[starts[lineno - 1] + len(body):]
            found.append(Place(package, module, source, text, cursor, name, body[column:]))
    return found


def sample(args: argparse.Namespace) -> tuple[list[Place], dict[str, dict[str, Module]]]:
    rng = random.Random(args.seed)
    chosen: list[Place] = []
    packages = {}
    per_package = max(1, args.places // len(PACKAGES))
    for requirement in PACKAGES:
        mods = modules(requirement)
        packages[requirement] = mods
        found = places_in(requirement, mods)
        rng.shuffle(found)
        chosen += found[:per_package]
        log.info("%s: %d modules, %d places, %d taken", requirement, len(mods), len(found),
                 min(per_package, len(found)))
    return chosen, packages


# ---- running


def workspace(place: Place, mods: dict[str, Module], n_open: int, tag: str, rng: random.Random
              ) -> tuple[str, str, tuple[OtherDocument, ...]]:
    """(root URI, A's URI, the other open documents): B and n_open - 1 others of the package."""
    distribution = place.package.split("==")[0]
    root = f"file:///bench/{tag}/{distribution}"
    rest = [m for m in mods.values() if m is not place.file and m is not place.source]
    opened = [place.source, *rng.sample(rest, min(len(rest), max(0, n_open - 1)))]
    rng.shuffle(opened)
    others = tuple(OtherDocument(f"{root}/{m.path}", m.text, "python") for m in opened)
    return root, f"{root}/{place.file.path}", others


def starts_with_name(text: str, name: str) -> bool:
    return text.startswith(name) and not text[len(name):len(name) + 1].replace("_", "a").isalnum()


@dataclass
class Row:
    mode: str
    shown: bool
    exact: bool
    name: bool
    raw_name: bool
    source_shown: bool | None
    definition_shown: bool | None  # the name's def / class / assignment line was in it
    context_tokens: int
    ms: float
    prompt_tokens: int
    computed_tokens: int
    name_logprob: float | None = None  # mean per token, teacher-forced
    name_top1: bool | None = None


def name_score(engine: Engine, place: Place, request: CompletionRequest
               ) -> tuple[float, bool] | None:
    """The name's mean log-probability per token and whether each of its tokens is the
    argmax, after a prompt (from a fresh builder with the engine's budget, and the context the
    engine chooses for `request`) ending at the cursor line's start, the line's text before
    the cursor forced first. None without a local model."""
    model = getattr(engine.backend, "model", None)
    if model is None:
        return None
    start = place.text.rfind("\n", 0, place.cursor) + 1
    head = place.text[start:place.cursor]
    text = place.text[:start] + place.text[place.cursor:]
    context = engine.repo_context(request)
    prompt = PromptBuilder(engine.tokenizer, engine.builder.budget).build(
        request.uri, text, start, engine.layout(), context)
    forced = engine.tokenizer.encode_text(head)
    whole = engine.tokenizer.encode_text(head + place.name)
    if whole[: len(forced)] != forced or len(whole) == len(forced):
        forced = []  # the name merges with the text before it: score the two together
    ids = prompt.ids + whole
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    first = len(prompt.ids) + len(forced)
    targets = ids[first:]
    rows = logprobs[first - 1 : len(ids) - 1]
    picked = rows[torch.arange(len(targets)), torch.tensor(targets)]
    top1 = bool((rows.argmax(dim=-1) == torch.tensor(targets)).all())
    return float(picked.mean()), top1


def run(engine: Engine, place: Place, mode: str, root: str, uri: str,
        others: tuple[OtherDocument, ...], params: GenerationParams) -> Row:
    request = CompletionRequest(uri, place.text, place.cursor, "python", others, root)
    done: Completion = engine.complete(request, params)
    first = done.text.split("\n", 1)[0]
    shown_files = engine.cross_file_last.get("files", [])
    source_shown = place.source.path in shown_files if mode == "on" else None
    definition_shown = None
    if mode == "on":
        context = engine.repo_context(request)
        shown = "".join(p.text for p in context.pieces) if context else ""
        pattern = rf"^(?:async\s+)?(?:def|class)\s+{place.name}\b|^{place.name}\s*[:=]"
        definition_shown = re.search(pattern, shown, re.M) is not None
    row = Row(mode, bool(done.text), first.rstrip() == place.removed.rstrip(),
              starts_with_name(done.text, place.name), starts_with_name(done.generated,
                                                                        place.name),
              source_shown, definition_shown, engine.cross_file_last.get("tokens", 0),
              done.total_ms,
              done.prompt_tokens, done.computed_tokens)
    score = name_score(engine, place, request)
    if score is not None:
        row.name_logprob, row.name_top1 = score
    return row


def mean_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return round(statistics.fmean(known), 3) if known else None


def rate(rows: list[Row], field: str) -> float | None:
    values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
    return round(sum(values) / len(values), 3) if values else None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help='"default" or a checkpoint folder')
    parser.add_argument("--places", type=int, default=40)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--share", type=float, default=None,
                        help="the crossFile.share option (default: its default)")
    parser.add_argument("--open", type=int, default=3, help="other documents open (B among them)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    set_threads(args.threads)
    options = Options(model=args.model)
    if args.share is not None:
        options = replace(options, cross_file=replace(options.cross_file, share=args.share))
    on = EngineSettings.from_options(options)
    engines = {"on": load_engine(ModelChoice(name=args.model), on),
               "off": load_engine(ModelChoice(name=args.model), replace(on, cross_file_share=0.0))}
    params = GenerationParams.from_options(options)
    places, packages = sample(args)
    rng = random.Random(args.seed + 1)
    rows: list[Row] = []
    started = time.perf_counter()
    print(f"{'#':>3} {'package':<20} {'name':<28} {'off':<10} {'on':<10} {'ctx':>4} files")
    for i, place in enumerate(places):
        order = MODES if i % 2 == 0 else MODES[::-1]  # A B, B A: drift hits both alike
        done = {}
        for mode in order:
            root, uri, others = workspace(place, packages[place.package], args.open,
                                          f"{mode}{i}", random.Random(f"{args.seed}/{i}"))
            done[mode] = run(engines[mode], place, mode, root, uri, others, params)
        rows += [done["off"], done["on"]]

        def mark(row: Row) -> str:
            return ("exact" if row.exact else "name" if row.name else
                    "shown" if row.shown else "-")
        print(f"{i:>3} {place.package.split('==')[0][:20]:<20} {place.name[:28]:<28} "
              f"{mark(done['off']):<10} {mark(done['on']):<10} {done['on'].context_tokens:>4} "
              f"{'B' if done['on'].source_shown else '-'}", flush=True)
    del rng
    report: dict[str, Any] = {}
    print()
    print(f"{'mode':>4} {'shown':>6} {'exact':>6} {'name':>6} {'raw name':>8} {'B shown':>7} "
          f"{'def':>5} "
          f"{'ms p50':>7} {'ms p95':>7} {'prompt':>7} {'computed':>8} {'name lp':>8} "
          f"{'top-1':>6}")
    for mode in MODES:
        mine = [r for r in rows if r.mode == mode]
        report[mode] = {
            "shown": rate(mine, "shown"), "exact": rate(mine, "exact"),
            "name": rate(mine, "name"), "raw_name": rate(mine, "raw_name"),
            "source_shown": rate(mine, "source_shown"),
            "definition_shown": rate(mine, "definition_shown"),
            "context_tokens_mean": round(statistics.fmean(r.context_tokens for r in mine), 1),
            "ms_p50": pct([r.ms for r in mine], 50), "ms_p95": pct([r.ms for r in mine], 95),
            "prompt_tokens_mean": round(statistics.fmean(r.prompt_tokens for r in mine), 1),
            "computed_tokens_mean": round(statistics.fmean(r.computed_tokens for r in mine), 1),
            "name_logprob_mean": mean_of([r.name_logprob for r in mine]),
            "name_top1": rate(mine, "name_top1"),
        }
        m = report[mode]
        print(f"{mode:>4} {m['shown']:>6} {m['exact']:>6} {m['name']:>6} {m['raw_name']:>8} "
              f"{str(m['source_shown']):>7} {str(m['definition_shown']):>5} "
              f"{m['ms_p50']:>7} {m['ms_p95']:>7} "
              f"{m['prompt_tokens_mean']:>7} {m['computed_tokens_mean']:>8} "
              f"{m['name_logprob_mean']!s:>8} {m['name_top1']!s:>6}")
    pairs = [(off.name_logprob, on.name_logprob) for off, on in zip(rows[::2], rows[1::2],
                                                                    strict=True)
             if off.name_logprob is not None and on.name_logprob is not None]
    raised = sum(on > off for off, on in pairs)
    report["context_raised_name_logprob"] = round(raised / len(pairs), 3) if pairs else None
    print(f"the context raised the name's log-probability at {raised} of {len(pairs)} places")
    result = {
        "bench": "crossfile", "model": args.model, "places": len(places),
        "packages": list(PACKAGES), "open_documents": args.open,
        "share": engines["on"].settings.cross_file_share,
        "context_budget": engines["on"].builder.budget.tokens,
        "layout": engines["on"].layout(), "seed": args.seed, **report,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
