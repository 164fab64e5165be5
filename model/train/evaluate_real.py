"""The diagnostics on released code (`python -m model.train.evaluate_heads --real`): findings per
MB of the held-out packages of `realcode`, per label and per file kind, beside detect-secrets on
the same files in the same run; and recall of credentials planted at random depths of long real
files. Prints a table, then one JSON line.

Almost nothing in released packages is a live secret, so every finding there counts against the
tagger (a few are real personal data, maintainers' addresses; they are counted too).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from ..heads import DiagnosticsModel, find_entities, load_tokenizer
from ..tagging import ENTITY_TYPES, Entity
from ..tokenizer import Tokenizer
from . import realcode
from .planted import PlantedFile, planted_files

SECRET_LABELS = ("KEY", "PASSWORD", "USERNAME")
MB = 1_000_000


def detect_secrets_counts(files: Sequence[tuple[str, str]]) -> list[list[tuple[int, str]]]:
    """For each (path, text), the (0-based line, secret type) of what detect-secrets (default
    plugins and filters) reports; files keep their names, which some plugins read."""
    from detect_secrets.core.secrets_collection import SecretsCollection
    from detect_secrets.settings import default_settings

    out: list[list[tuple[int, str]]] = []
    with tempfile.TemporaryDirectory(prefix="realcode-") as root, default_settings():
        for number, (path, text) in enumerate(files):
            folder = os.path.join(root, str(number))
            os.mkdir(folder)
            name = os.path.join(folder, os.path.basename(path) or "file")
            with open(name, "w", encoding="utf-8") as handle:
                handle.write(text)
            collection = SecretsCollection()
            collection.scan_file(name)
            out.append(sorted((s.line_number - 1, s.type)
                              for found in collection.data.values() for s in found))
    return out


def ours(model: DiagnosticsModel, tok: Tokenizer, text: str) -> list[Entity]:
    return find_entities(model, tok, text)


def parse_thresholds(spec: str) -> dict[str, float]:
    """`LABEL=VALUE,...` (e.g. `KEY=0.5,PASSWORD=0.6`) as a dict; a clear error on bad input."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        label, sep, value = part.partition("=")
        if not sep or label not in (*ENTITY_TYPES, "BUG"):
            raise ValueError(f"--thresholds: {part!r} is not LABEL=VALUE with LABEL one of "
                             f"{', '.join((*ENTITY_TYPES, 'BUG'))}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--thresholds: {value!r} for {label} is not a number") from None
        if not 0 <= number <= 1:
            raise ValueError(f"--thresholds: {label}={number} is outside [0, 1]")
        out[label] = number
    return out


def thresholds_argument(spec: str) -> dict[str, float]:
    try:
        return parse_thresholds(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def apply_thresholds(model: DiagnosticsModel, thresholds: dict[str, float] | None) -> None:
    """Override the model's per-label thresholds (from config.json) with `--thresholds`."""
    if thresholds:
        model.settings.thresholds = {**model.settings.thresholds, **thresholds}


# -- findings per MB ------------------------------------------------------------------------


def false_alarm_table(model: DiagnosticsModel, tok: Tokenizer, files: Sequence[realcode.RealFile],
                      show: int, dump: list[dict[str, object]] | None = None
                      ) -> dict[str, object]:
    """Findings per MB per kind and label, ours and detect-secrets'; `show` prints the first
    findings of ours with their text (released code, to read what is flagged)."""
    nbytes: Counter[str] = Counter()
    counts: Counter[str] = Counter()  # "kind:label" and "kind:detect-secrets"
    shown = 0
    started = time.monotonic()
    for f in files:
        nbytes[f.kind] += f.nbytes
        for e in ours(model, tok, f.text):
            counts[f"{f.kind}:{e.label}"] += 1
            if dump is not None:
                dump.append({"set": "real", "package": f.package, "path": f.path,
                             "kind": f.kind, "label": e.label, "score": e.score,
                             "text": f.text[e.start:e.end][:80]})
            if shown < show:
                line = f.text.count("\n", 0, e.start) + 1
                print(f"  {f.package}/{f.path}:{line} {e.label} {e.score:.2f} "
                      f"{f.text[e.start:e.end][:80]!r}")
                shown += 1
    tag_seconds = time.monotonic() - started
    started = time.monotonic()
    for f, found in zip(files, detect_secrets_counts([(f.path, f.text) for f in files]),
                        strict=True):
        counts[f"{f.kind}:detect-secrets"] += len(found)
        for _, kind in found:
            counts[f"detect-secrets:{kind}"] += 1
    baseline_seconds = time.monotonic() - started
    kinds = [k for k in realcode.KINDS if nbytes[k]]
    table: dict[str, dict[str, float]] = {}
    for kind in [*kinds, "all"]:
        size = sum(nbytes.values()) if kind == "all" else nbytes[kind]
        row: dict[str, float] = {"mb": size / MB}
        for label in (*ENTITY_TYPES, "detect-secrets"):
            n = sum(counts[f"{k}:{label}"] for k in kinds) if kind == "all" else \
                counts[f"{kind}:{label}"]
            row[label] = n
            row[f"{label}/MB"] = n / (size / MB) if size else 0.0
        row["ours"] = sum(row[label] for label in ENTITY_TYPES)
        row["ours/MB"] = row["ours"] / (size / MB) if size else 0.0
        row["secrets"] = sum(row[label] for label in SECRET_LABELS)
        row["secrets/MB"] = row["secrets"] / (size / MB) if size else 0.0
        table[kind] = row
    return {"table": table, "files": len(files),
            "detect_secrets_types": {k.split(":", 1)[1]: v for k, v in counts.items()
                                     if k.startswith("detect-secrets:")},
            "seconds": {"ours": tag_seconds, "detect_secrets": baseline_seconds}}


# -- planted recall -------------------------------------------------------------------------


def planted_recall(model: DiagnosticsModel, tok: Tokenizer, planted: Sequence[PlantedFile],
                   dump: list[dict[str, object]] | None = None) -> dict[str, object]:
    """Share of planted values found: by ours with the right label (a finding overlapping the
    value), by ours with any secret label, and by detect-secrets (a finding on its first
    line); per format and per depth in the file (quarters); other findings in those files."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    others = 0
    theirs = detect_secrets_counts([(p.source.path, p.text) for p in planted])
    for p, their in zip(planted, theirs, strict=True):
        found = ours(model, tok, p.text)
        lines = p.text.count("\n") + 1
        used: set[int] = set()
        their_lines = {line for line, _ in their}
        for plant in p.plants:
            quarter = f"depth {min(3, 4 * plant.line // lines) * 25}-" \
                      f"{min(3, 4 * plant.line // lines) * 25 + 25}%"
            overlapping = [i for i, e in enumerate(found)
                           if e.start < plant.end and plant.start < e.end]
            right = [i for i in overlapping if found[i].label == plant.label]
            used.update(overlapping)
            if dump is not None:
                dump.append({"set": "planted", "format": plant.format, "label": plant.label,
                             "found": [[found[i].label, found[i].score] for i in overlapping]})
            for key in ("all", plant.format, quarter):
                totals[key] += 1
                hits[f"{key}:label"] += bool(right)
                hits[f"{key}:any"] += any(found[i].label in SECRET_LABELS for i in overlapping)
                hits[f"{key}:detect-secrets"] += plant.line in their_lines
        others += len(found) - len(used)
        if dump is not None:
            dump.extend({"set": "planted-other", "label": e.label, "score": e.score}
                        for i, e in enumerate(found) if i not in used)
    table = {key: {kind: hits[f"{key}:{kind}"] / totals[key]
                   for kind in ("label", "any", "detect-secrets")} | {"planted": totals[key]}
             for key in totals}
    return {"recall": table, "files": len(planted),
            "lines": sum(p.text.count("\n") + 1 for p in planted), "other_findings": others}


# -- report ---------------------------------------------------------------------------------


def print_report(result: dict[str, object]) -> None:
    alarms = result["false_alarms"]
    assert isinstance(alarms, dict)
    table = alarms["table"]
    print(f"\nfindings per MB on {alarms['files']} files of released code "
          f"({', '.join(result['packages'])}; held out from training: "  # type: ignore[arg-type]
          f"{result['split'] == 'test'})")
    header = f"{'kind':<12}{'MB':>7}" + "".join(f"{k:>11}" for k in ENTITY_TYPES) + \
        f"{'ours':>8}{'secrets':>9}{'detect-s.':>11}"
    print(header)
    for kind, row in table.items():
        print(f"{kind:<12}{row['mb']:>7.2f}" + "".join(
            f"{row[f'{k}/MB']:>11.2f}" for k in ENTITY_TYPES)
            + f"{row['ours/MB']:>8.2f}{row['secrets/MB']:>9.2f}{row['detect-secrets/MB']:>11.2f}")
    print(f"(counts: ours {int(table['all']['ours'])}, detect-secrets "
          f"{int(table['all']['detect-secrets'])}; detect-secrets by type: "
          f"{alarms['detect_secrets_types']})")
    recall = result["planted"]
    assert isinstance(recall, dict)
    print(f"\nplanted credentials: {recall['files']} real files ({recall['lines']} lines), "
          f"{recall['other_findings']} other findings of ours in them")
    print(f"{'format / depth':<22}{'planted':>8}{'ours':>8}{'any sec.':>9}{'detect-s.':>11}")
    for key, row in recall["recall"].items():
        print(f"{key:<22}{int(row['planted']):>8}{row['label']:>8.3f}{row['any']:>9.3f}"
              f"{row['detect-secrets']:>11.3f}")


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    model = DiagnosticsModel.from_pretrained(args.model)
    if args.tag_window is not None:
        model.settings.tag_window = args.tag_window
    apply_thresholds(model, args.thresholds)
    tok = load_tokenizer(args.model)
    every = realcode.load(args.split, args.cache)
    files = realcode.load(args.split, args.cache, False, int(args.kb_per_package * 1000))
    packages = sorted({f.package for f in files})
    dump: list[dict[str, object]] | None = [] if args.dump_scores else None
    alarms = false_alarm_table(model, tok, files, args.show, dump)
    planted = planted_files(every, args.seed, args.per_format)
    recall = planted_recall(model, tok, planted, dump)
    if args.dump_scores and dump is not None:
        with open(args.dump_scores, "w", encoding="utf-8") as handle:
            for row in dump:
                handle.write(json.dumps(row) + "\n")
    return {"model": str(args.model), "split": args.split, "packages": packages,
            "tag_window": model.tag_window, "thresholds": model.settings.thresholds,
            "false_alarms": alarms, "planted": recall}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="realcode packages: held out (test) or training / calibration (train)")
    p.add_argument("--cache", type=Path, default=realcode.CACHE, help="archives' folder")
    p.add_argument("--kb-per-package", type=float, default=250,
                   help="findings per MB on a sample of each package of about this size: "
                        "every config and dependency file, then files in a fixed order")
    p.add_argument("--per-format", type=int, default=8,
                   help="credentials of each format planted in long real files")
    p.add_argument("--show", type=int, default=0, help="print the text of the first N findings")
    p.add_argument("--tag-window", type=int, default=None,
                   help="tokens per tagging window (default: the model's, from its config)")
    p.add_argument("--thresholds", type=thresholds_argument, default=None,
                   metavar="LABEL=VALUE,...",
                   help="per-label thresholds in place of the model's (e.g. KEY=0.5,PASSWORD=0.6; "
                        "labels not named keep theirs)")
    p.add_argument("--dump-scores", type=Path, default=None, metavar="PATH",
                   help="(--real) write one JSON line per finding on released code and per "
                        "planted credential (with the labels and scores of what overlaps it), "
                        "to choose thresholds from")


def main(args: argparse.Namespace) -> None:
    result = run(args)
    print_report(result)
    print(json.dumps(result, default=float))
