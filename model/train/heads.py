"""Train the diagnostics model: the default model's backbone with a BIO tagger for secrets and
personal data and a bug scorer for functions, fine-tuned together.

    python -m model.train.heads --run-dir runs/heads --minutes 20

Tagging data comes from `secrets_data.generate` (seed --seed, training host files, training
formats only); bug data from `mutations.make_pairs` over training files (originals labelled
looks_right, mutants looks_wrong). A slice of training files is kept back to pick the decision
thresholds, which are saved with the weights. `--freeze-backbone` trains the heads alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import DEFAULT_MODEL_DIR
from ..hardware import cpu_bf16_native, cpu_name
from ..heads import DiagnosticsModel, tag_probabilities
from ..tagging import ENTITY_TYPES, Entity, decode_entities, token_tags
from ..tokenizer import Tokenizer
from . import realcode
from .data import SourceFile, load_corpus
from .evaluate_heads import per_label, roc_auc, span_counts
from .mutations import make_pairs
from .real_rows import negative_rows, planted_rows, planted_samples
from .secrets_data import Sample, generate

log = logging.getLogger(__name__)

IGNORE = -100
REAL_NEGATIVE_BYTES = 12_000_000
THRESHOLD_GRID = [x / 100 for x in range(10, 96, 5)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, required=True, help="output folder (final/ inside)")
    p.add_argument("--data", type=Path, default=Path("runs/data"), help="corpus cache folder")
    p.add_argument("--backbone", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--tag-samples", type=int, default=12000)
    p.add_argument("--val-samples", type=int, default=600)
    p.add_argument("--max-doc-tokens", type=int, default=512)
    p.add_argument("--tag-window", type=int, default=256,
                   help="tokens per scanning window stored with new heads (released-code rows "
                        "are cut to the model's window)")
    p.add_argument("--max-function-tokens", type=int, default=384)
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--bug-weight", type=float, default=1.0)
    p.add_argument("--bug-every", type=int, default=2, help="a bug batch every N steps")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--head-lr", type=float, default=3e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=None, help="fixed step count instead of --minutes")
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--beta", type=float, default=0.5,
                   help="thresholds: the best F-beta on validation (below 1 favours precision)")
    p.add_argument("--bug-false-alarms", type=float, default=0.1,
                   help="bug threshold: the share of validation originals allowed above it")
    p.add_argument("--calibrate", type=Path, default=None,
                   help="only pick the thresholds of this trained folder again (in place)")
    p.add_argument("--real-negatives", type=int, default=0,
                   help="windows of released code (realcode's training packages) as negatives")
    p.add_argument("--real-planted", type=int, default=0,
                   help="windows of released Python files with a credential planted in each")
    p.add_argument("--real-val-samples", type=int, default=0,
                   help="stretches of released code (planted or not) added to the calibration")
    p.add_argument("--real-cache", type=Path, default=realcode.CACHE,
                   help="realcode's archives (fetched with pip when missing)")
    p.add_argument("--init", type=Path, default=None,
                   help="continue from this trained diagnostics folder instead of new heads")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


# -- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tagged:
    ids: list[int]
    tags: list[int]


def tagged(samples: Sequence[Sample], tok: Tokenizer, labels: Sequence[str], limit: int
           ) -> list[Tagged]:
    rows = []
    for s in samples:
        ids, offsets = tok.encode_with_offsets(s.text, as_text=True)
        tags = token_tags(offsets, [(x.start, x.end, x.label) for x in s.spans], labels)
        rows.append(Tagged(ids[:limit], tags[:limit]))
    return rows


def is_validation(path: str) -> bool:
    return hashlib.sha256(("heads-val:" + path).encode()).digest()[0] < 13  # ~5%


def function_rows(files: Sequence[SourceFile], tok: Tokenizer, seed: int, limit: int,
                  end: int | None) -> list[tuple[list[int], int]]:
    """(ids, label) for every original (0) and mutant (1) that fits `limit` tokens, each
    followed by the `end` token when there is one."""
    tail = [] if end is None else [end]
    rows = []
    for fn, mutant in make_pairs(files, seed=seed):
        a, b = tok.encode_text(fn.text) + tail, tok.encode_text(mutant.text) + tail
        if len(a) <= limit and len(b) <= limit:
            rows += [(a, 0), (b, 1)]
    return rows


def batches(rows: Sequence[tuple[list[int], list[int] | int]], budget: int, rng: random.Random
            ) -> Iterator[list[tuple[list[int], list[int] | int]]]:
    """Endless shuffled batches, grouped by length so padding stays small."""
    while True:
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]), rng.random()))
        groups, current = [], []  # type: ignore[var-annotated]
        for i in order:
            longest = max([len(rows[j][0]) for j in current] + [len(rows[i][0])])
            if current and longest * (len(current) + 1) > budget:
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        rng.shuffle(groups)
        for group in groups:
            yield [rows[i] for i in group]


def pad(batch: Sequence[tuple[list[int], object]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, (row, _) in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask  # (B, W) each


# -- training -------------------------------------------------------------------------------


def tag_loss(model: DiagnosticsModel, batch: Sequence[tuple[list[int], object]]) -> torch.Tensor:
    ids, mask = pad(batch)
    targets = torch.full_like(ids, IGNORE)
    for i, (_, tags) in enumerate(batch):
        assert isinstance(tags, list)
        targets[i, : len(tags)] = torch.tensor(tags)
    logits = model.tag_logits(model.hidden(ids, attention_mask=mask))  # (B, W, labels)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def bug_loss(model: DiagnosticsModel, batch: Sequence[tuple[list[int], object]]) -> torch.Tensor:
    ids, mask = pad(batch)
    hidden = model.hidden(ids, attention_mask=mask)  # (B, W, n_embd)
    last = mask.sum(1) - 1
    pooled = hidden[torch.arange(len(batch)), last]  # (B, n_embd)
    labels = torch.tensor([label for _, label in batch])
    return F.cross_entropy(model.bug_logits(pooled).float(), labels)


def make_optimizer(model: DiagnosticsModel, args: argparse.Namespace) -> torch.optim.AdamW:
    heads = [*model.tagger.classifier.parameters(), *model.score.parameters()]
    head_ids = {id(p) for p in heads}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    for p in backbone:
        p.requires_grad_(not args.freeze_backbone)
    groups = [{"params": heads, "lr": args.head_lr, "base_lr": args.head_lr}]
    if not args.freeze_backbone:
        groups.append({"params": backbone, "lr": args.lr, "base_lr": args.lr})
    return torch.optim.AdamW(groups, weight_decay=0.01)


def schedule(optimizer: torch.optim.Optimizer, step: int, progress: float, warmup: int) -> None:
    scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * max(scale, 0.05)


# -- thresholds -----------------------------------------------------------------------------


def pick_thresholds(model: DiagnosticsModel, tok: Tokenizer, samples: Sequence[Sample],
                    beta: float) -> dict[str, float]:
    """Per type, the threshold with the best F-beta on validation (the lowest of equals)."""
    model.eval()
    decoded = []
    for s in samples:
        ids, offsets = tok.encode_with_offsets(s.text, as_text=True)
        decoded.append((s, offsets, tag_probabilities(model, ids)))
    chosen = {}
    for kind in ENTITY_TYPES:
        best = (-1.0, 0.5)
        for limit in THRESHOLD_GRID:
            counts: Counter[str] = Counter()
            for s, o, p in decoded:
                found = only(decode_entities(s.text, o, p, model.labels, limit), kind)
                counts += span_counts(found, [x for x in s.spans if x.label == kind], False)
            row = per_label(counts, [kind])[kind]
            score = f_beta(row["precision"], row["recall"], beta)
            if score > best[0]:
                best = (score, limit)
        chosen[kind] = best[1]
        log.info("threshold %s: %.2f", kind, chosen[kind])
    return chosen


def f_beta(precision: float, recall: float, beta: float) -> float:
    weight = beta * beta
    denominator = weight * precision + recall
    return (1 + weight) * precision * recall / denominator if denominator else 0.0


def only(entities: list[Entity], kind: str) -> list[Entity]:
    return [e for e in entities if e.label == kind]


@torch.inference_mode()
def bug_threshold(model: DiagnosticsModel, rows: Sequence[tuple[list[int], int]],
                  false_alarms: float) -> tuple[float, float]:
    """The score above which at most `false_alarms` of validation originals fall, and AUC."""
    scores = [model.bug_probability(ids) for ids, _ in rows]
    originals = sorted(s for s, (_, label) in zip(scores, rows, strict=True) if label == 0)
    index = min(len(originals) - 1, math.ceil((1 - false_alarms) * len(originals)))
    auc = roc_auc(scores, [label == 1 for _, label in rows])
    return originals[index], auc


# -- the run --------------------------------------------------------------------------------


def real_tag_rows(args: argparse.Namespace, tok: Tokenizer, labels: Sequence[str], size: int
                  ) -> list[Tagged]:
    """Windows of released code of realcode's training packages (not the files kept back for
    calibration), as long as the scanner's windows: negatives and planted positives."""
    if not (args.real_negatives or args.real_planted):
        return []
    files = [f for f in realcode.load("train", args.real_cache)
             if not is_validation(f"{f.package}/{f.path}")]
    sampled, total = [], 0  # negatives come from a random ~REAL_NEGATIVE_BYTES of them
    for f in random.Random(args.seed).sample(files, len(files)):
        if total < REAL_NEGATIVE_BYTES:
            sampled.append(f)
            total += f.nbytes
    rows = negative_rows(sampled, tok, labels, size, args.real_negatives, args.seed)
    rows += planted_rows(files, tok, labels, size, args.real_planted, args.seed)
    log.info("released code: %d negative and %d planted windows of %d tokens",
             args.real_negatives, args.real_planted, size)
    return [Tagged(r.ids, r.tags) for r in rows]


def validation_data(args: argparse.Namespace, files: Sequence[SourceFile], tok: Tokenizer
                    ) -> tuple[list[Sample], list[tuple[list[int], int]]]:
    """Tagging documents and function rows (no end token) from the validation files."""
    samples = generate(args.seed + 100, args.val_samples, files, split="train")
    if args.real_val_samples:
        real = [f for f in realcode.load("train", args.real_cache)
                if is_validation(f"{f.package}/{f.path}")]
        samples += planted_samples(real, args.real_val_samples, args.seed + 100)
    rows = function_rows(files, tok, args.seed + 100, args.max_function_tokens, None)
    return samples, rows


def calibrate(model: DiagnosticsModel, tok: Tokenizer, samples: Sequence[Sample],
              rows: Sequence[tuple[list[int], int]], args: argparse.Namespace) -> float:
    """Pick and store the thresholds; returns the validation bug ROC AUC."""
    model.eval()
    thresholds = pick_thresholds(model, tok, samples, args.beta)
    thresholds["BUG"], auc = bug_threshold(model, rows, args.bug_false_alarms)
    model.settings.thresholds = {k: round(v, 4) for k, v in thresholds.items()}
    return auc


def recalibrate(args: argparse.Namespace) -> dict[str, object]:
    """Thresholds picked again for a trained folder (after a change to span decoding)."""
    torch.set_num_threads(args.threads)
    folder = args.calibrate
    model = DiagnosticsModel.from_pretrained(folder)
    tok = Tokenizer.from_pretrained(folder)
    corpus = load_corpus(args.data)
    samples, rows = validation_data(args, [f for f in corpus.train if is_validation(f.path)], tok)
    calibrate(model, tok, samples, rows, args)
    model.settings.training["calibrated_by"] = (
        "python -m model.train.heads " + " ".join(sys.argv[1:]))
    model.save_pretrained(folder, dtype=torch.bfloat16)
    log.info("thresholds of %s: %s", folder, model.settings.thresholds)
    return dict(model.settings.thresholds)


def run(args: argparse.Namespace) -> dict[str, object]:
    if args.calibrate is not None:
        return recalibrate(args)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    torch.set_num_threads(args.threads)
    autocast = cpu_bf16_native()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args.data)
    train_files = [f for f in corpus.train if not is_validation(f.path)]
    val_files = [f for f in corpus.train if is_validation(f.path)]
    started_from: dict[str, object] = {}
    if args.init is not None:
        model = DiagnosticsModel.from_pretrained(args.init, dtype=torch.float32)
        started_from = dict(model.settings.training)
        tok = Tokenizer.from_pretrained(args.init)
    else:
        model = DiagnosticsModel.fresh(args.backbone)
        tok = Tokenizer.from_pretrained(args.backbone)
    labels = model.labels
    started = time.monotonic()
    tag_rows = tagged(generate(args.seed, args.tag_samples, train_files, split="train"),
                      tok, labels, args.max_doc_tokens)
    if args.init is None:
        model.settings.tag_window = args.tag_window  # inference reads windows of this length
    tag_rows += real_tag_rows(args, tok, labels, model.tag_window)
    model.settings.bug_end_token = tok.eos_token_id
    fn_rows = function_rows(train_files, tok, args.seed, args.max_function_tokens,
                            model.settings.bug_end_token)
    val_samples, val_fn_rows = validation_data(args, val_files, tok)
    log.info("data: %d tagged documents, %d function rows (%d validation) in %.0f s",
             len(tag_rows), len(fn_rows), len(val_fn_rows), time.monotonic() - started)
    tag_batches = batches([(r.ids, r.tags) for r in tag_rows], args.batch_tokens, rng)
    bug_batches = batches(fn_rows, args.batch_tokens, rng)
    optimizer = make_optimizer(model, args)
    model.train()
    step, tokens, smoothed = 0, 0, [float("nan"), float("nan")]
    started = time.monotonic()
    budget = args.minutes * 60
    while True:
        progress = step / args.steps if args.steps else (time.monotonic() - started) / budget
        if progress >= 1.0:
            break
        schedule(optimizer, step, progress, args.warmup_steps)
        tag_batch = next(tag_batches)
        bug_batch = next(bug_batches) if step % args.bug_every == 0 else []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses = [tag_loss(model, tag_batch)]
            if bug_batch:
                losses.append(bug_loss(model, bug_batch))
        (losses[0] + args.bug_weight * sum(losses[1:])).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for i, loss in enumerate(losses):
            value = float(loss.detach())
            smoothed[i] = value if math.isnan(smoothed[i]) else 0.95 * smoothed[i] + 0.05 * value
        tokens += sum(len(r[0]) for r in tag_batch) + sum(len(r[0]) for r in bug_batch)
        step += 1
        if step % 50 == 0:
            log.info("step %d %.1f min: tag loss %.4f, bug loss %.4f, %d tokens", step,
                     (time.monotonic() - started) / 60, smoothed[0], smoothed[1], tokens)
    train_seconds = time.monotonic() - started
    val_auc = calibrate(model, tok, val_samples, val_fn_rows, args)
    summary = {
        "steps": step, "tokens": tokens, "train_minutes": round(train_seconds / 60, 2),
        "tag_loss": round(smoothed[0], 4), "bug_loss": round(smoothed[1], 4),
        "validation_bug_roc_auc": round(val_auc, 4), "bf16_autocast": autocast,
        "frozen_backbone": args.freeze_backbone, "machine": f"{cpu_name()}, {args.threads} threads",
        "torch": torch.__version__, "seed": args.seed,
        "command": "python -m model.train.heads " + " ".join(sys.argv[1:]),
    }
    if args.init is not None:  # the run it continued, as that model recorded it
        summary["continued_from"] = started_from
    model.settings.training = summary
    save(model, args.backbone, args.run_dir / "final")
    (args.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("done: %s; thresholds %s", summary, model.settings.thresholds)
    return summary


def save(model: DiagnosticsModel, backbone: Path, folder: Path) -> None:
    """Weights in bf16 (half the bytes; the package's size limit) and the tokenizer files."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, dtype=torch.bfloat16)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (backbone / name).is_file():
            shutil.copy(backbone / name, partial / name)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
