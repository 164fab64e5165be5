"""Evaluate the diagnostics model on held-out data generated with another seed, or (--real) on
released code of held-out packages.

    python -m model.train.evaluate_heads [--model model/default/diagnostics] [--seed 2]
    python -m model.train.evaluate_heads --real [--per-format 10]   # see evaluate_real

Secrets and personal data: documents from `secrets_data.generate(split="eval")` on held-out
host files, with formats never seen in training; precision / recall / F1 per label for spans
(a prediction counts when it overlaps a true span of its label; strict counts need the exact
characters), and at line level for KEY + PASSWORD beside `detect-secrets` (default plugins) on
the same files. Bug head: ROC AUC on mutants of held-out functions against the originals.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..functions import Function
from ..heads import DIAGNOSTICS_DIR, DiagnosticsModel, find_entities, load_tokenizer
from ..tagging import ENTITY_TYPES, Entity
from ..tokenizer import Tokenizer
from . import evaluate_real
from .data import load_corpus
from .mutations import Mutant, make_pairs
from .secrets_data import Sample, Span, generate

log = logging.getLogger(__name__)

LINE_LABELS = ("KEY", "PASSWORD")


# -- metrics --------------------------------------------------------------------------------


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def span_counts(pred: Sequence[Entity], gold: Sequence[Span], strict: bool) -> Counter[str]:
    """tp/fp/fn per label ("KEY:tp", ...): each true span matches at most one prediction."""
    counts: Counter[str] = Counter()
    used: set[int] = set()
    for e in pred:
        hit = next((i for i, g in enumerate(gold) if i not in used and g.label == e.label
                    and ((g.start, g.end) == (e.start, e.end) if strict
                         else e.start < g.end and g.start < e.end)), None)
        if hit is None:
            counts[f"{e.label}:fp"] += 1
        else:
            used.add(hit)
            counts[f"{e.label}:tp"] += 1
    for i, g in enumerate(gold):
        if i not in used:
            counts[f"{g.label}:fn"] += 1
    return counts


def per_label(counts: Counter[str], labels: Iterable[str]) -> dict[str, dict[str, float]]:
    table = {k: prf(counts[f"{k}:tp"], counts[f"{k}:fp"], counts[f"{k}:fn"]) for k in labels}
    table["all"] = prf(*(sum(int(v["tp" if i == 0 else "fp" if i == 1 else "fn"])
                             for v in table.values()) for i in range(3)))
    return table


def entity_lines(text: str, entities: Iterable[tuple[int, int, str]], labels: Iterable[str]
                 ) -> set[int]:
    """0-based lines holding a span of one of the labels."""
    wanted = set(labels)
    return {text.count("\n", 0, start) for start, _, label in entities if label in wanted}


def roc_auc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counted half."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = sum(positives)
    n_neg = len(positives) - n_pos
    if not n_pos or not n_neg:
        raise ValueError("ROC AUC needs both positives and negatives")
    rank_sum = sum(r for r, p in zip(ranks, positives, strict=True) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# -- the tagger -----------------------------------------------------------------------------


def evaluate_tagger(model: DiagnosticsModel, tok: Tokenizer, samples: Sequence[Sample],
                    thresholds: dict[str, float] | None = None) -> dict[str, object]:
    overlap: Counter[str] = Counter()
    strict: Counter[str] = Counter()
    ours, truth = [], []
    for sample in samples:
        found = find_entities(model, tok, sample.text, thresholds)
        overlap += span_counts(found, sample.spans, strict=False)
        strict += span_counts(found, sample.spans, strict=True)
        ours.append(entity_lines(sample.text, ((e.start, e.end, e.label) for e in found),
                                 LINE_LABELS))
        truth.append(entity_lines(sample.text, ((s.start, s.end, s.label) for s in sample.spans),
                                  LINE_LABELS))
    return {"spans": per_label(overlap, ENTITY_TYPES), "strict": per_label(strict, ENTITY_TYPES),
            "lines": line_prf(ours, truth), "ours_lines": ours, "true_lines": truth}


def line_prf(pred: Sequence[set[int]], truth: Sequence[set[int]]) -> dict[str, float]:
    tp = sum(len(p & t) for p, t in zip(pred, truth, strict=True))
    fp = sum(len(p - t) for p, t in zip(pred, truth, strict=True))
    fn = sum(len(t - p) for p, t in zip(pred, truth, strict=True))
    return prf(tp, fp, fn)


def held_out_format_recall(samples: Sequence[Sample], ours: Sequence[set[int]],
                           truth: Sequence[set[int]], held_out: frozenset[str]) -> dict[str, float]:
    """Line recall on documents that use a held-out format, and on the others."""
    split: dict[str, list[int]] = {"held_out_formats": [0, 0], "trained_formats": [0, 0]}
    for sample, p, t in zip(samples, ours, truth, strict=True):
        key = "held_out_formats" if held_out & set(sample.formats) else "trained_formats"
        split[key][0] += len(p & t)
        split[key][1] += len(t)
    return {k: (hit / total if total else float("nan")) for k, (hit, total) in split.items()}


# -- the bug head ---------------------------------------------------------------------------


def bug_scores(model: DiagnosticsModel, tok: Tokenizer, texts: Sequence[str]) -> list[float]:
    return [model.bug_probability(tok.encode_text(t)) for t in texts]


def evaluate_bug_head(model: DiagnosticsModel, tok: Tokenizer,
                      pairs: Sequence[tuple[Function, Mutant]]) -> dict[str, object]:
    originals = bug_scores(model, tok, [f.text for f, _ in pairs])
    mutants = bug_scores(model, tok, [m.text for _, m in pairs])
    result: dict[str, object] = {
        "pairs": len(pairs),
        "roc_auc": roc_auc(originals + mutants, [False] * len(pairs) + [True] * len(pairs)),
        "pair_accuracy": sum(m > o for o, m in zip(originals, mutants, strict=True)) / len(pairs),
    }
    for kind in sorted({m.kind for _, m in pairs}):
        picked = [i for i, (_, m) in enumerate(pairs) if m.kind == kind]
        result[f"roc_auc/{kind}"] = roc_auc(
            [originals[i] for i in picked] + [mutants[i] for i in picked],
            [False] * len(picked) + [True] * len(picked))
    return result


# -- report ---------------------------------------------------------------------------------


def print_table(title: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'label':<14}{'precision':>10}{'recall':>10}{'f1':>8}{'tp':>7}{'fp':>7}{'fn':>7}")
    for label, row in table.items():
        print(f"{label:<14}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>8.3f}"
              f"{int(row['tp']):>7}{int(row['fp']):>7}{int(row['fn']):>7}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DIAGNOSTICS_DIR)
    p.add_argument("--data", type=Path, default=Path("runs/data"), help="corpus cache folder")
    p.add_argument("--seed", type=int, default=2, help="generation seed (training used 1)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--max-pairs", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--real", action="store_true",
                   help="released code instead of generated documents (model.train.evaluate_real)")
    evaluate_real.add_arguments(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    args = parse_args(argv)
    if args.real:
        evaluate_real.main(args)
        return
    torch.set_num_threads(args.threads)
    from .secrets_baseline import flagged_lines
    from .secrets_data import HELD_OUT_FORMATS

    model = DiagnosticsModel.from_pretrained(args.model)
    if args.tag_window is not None:
        model.settings.tag_window = args.tag_window
    evaluate_real.apply_thresholds(model, args.thresholds)
    tok = load_tokenizer(args.model)
    corpus = load_corpus(args.data)
    samples = generate(args.seed, args.samples, corpus.held_out, split="eval")
    started = time.monotonic()
    tagger = evaluate_tagger(model, tok, samples)
    tag_seconds = time.monotonic() - started
    theirs = flagged_lines(samples)
    truth = tagger.pop("true_lines")
    ours = tagger.pop("ours_lines")
    assert isinstance(truth, list) and isinstance(ours, list)
    baseline = line_prf(theirs, truth)
    pairs = make_pairs(corpus.held_out, seed=args.seed)[: args.max_pairs]
    bugs = evaluate_bug_head(model, tok, pairs)
    print(f"diagnostics model {args.model}: {len(samples)} documents (seed {args.seed}, "
          f"held-out hosts, formats kept out of training: {', '.join(sorted(HELD_OUT_FORMATS))})")
    print_table("spans (overlap)", tagger["spans"])  # type: ignore[arg-type]
    print_table("spans (exact characters)", tagger["strict"])  # type: ignore[arg-type]
    print_table("lines with KEY/PASSWORD", {"gptbigcode": tagger["lines"],  # type: ignore[dict-item]
                                            "detect-secrets": baseline})
    recall = held_out_format_recall(samples, ours, truth, HELD_OUT_FORMATS)
    print(f"\nline recall: held-out formats {recall['held_out_formats']:.3f}, "
          f"trained formats {recall['trained_formats']:.3f}")
    print(f"tagging: {tag_seconds / len(samples) * 1000:.1f} ms a document")
    print(f"\nbug head on {bugs['pairs']} held-out pairs: ROC AUC {bugs['roc_auc']:.3f}, "
          f"mutant scored above its original {bugs['pair_accuracy']:.3f}")
    for key, value in bugs.items():
        if key.startswith("roc_auc/"):
            print(f"  {key[8:]:<18}{value:.3f}")
    print(json.dumps({"samples": len(samples), "seed": args.seed, **tagger,
                      "detect_secrets_lines": baseline, "format_recall": recall, "bug": bugs},
                     default=float))


if __name__ == "__main__":
    main()
