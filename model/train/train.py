"""Train the default model: a small multi-query GPTBigCode on the standard library, with FIM.

    python -m model.train.train --run-dir runs/default --minutes 60

The learning-rate schedule (linear warmup, cosine decay) runs on wall-clock progress through
--minutes, so the run ends on time however fast the machine is; --steps N replaces the clock
with a fixed step count for an exact replay of a run that took N steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from tokenizers import Tokenizer

from ..config import GPTBigCodeConfig
from ..hardware import cpu_bf16_native, cpu_name
from ..modeling import GPTBigCodeForCausalLM
from .data import SourceFile, load_corpus
from .fim import EOT, EncodeBatch, build_sequences, chunk_text, pack
from .tokenizer_recipe import save_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

# Fixed-length samples carry their FIM sentinels and <|endoftext|> besides the chunk itself.
SAMPLE_OVERHEAD_TOKENS = 4


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, required=True,
                   help="output folder: checkpoint/, final/, metrics.jsonl")
    p.add_argument("--data", type=Path, default=Path("runs/data"), help="corpus cache folder")
    p.add_argument("--with-tests", action="store_true",
                   help="add the stdlib test suites to the training set (not to held-out)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="folder with tokenizer.json; trained into RUN_DIR/tokenizer when absent")
    p.add_argument("--init-from", type=Path, default=None,
                   help="checkpoint folder to continue training (its tokenizer and shape win)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=1024, help="also the model's n_positions")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=60)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--fim-rate", type=float, default=0.5)
    p.add_argument("--spm-rate", type=float, default=0.5)
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of the run")
    p.add_argument("--steps", type=int, default=None, help="fixed step count instead of --minutes")
    p.add_argument("--eval-minutes", type=float, default=5.0, help="held-out loss interval")
    p.add_argument("--eval-rows", type=int, default=32, help="held-out sequences per evaluation")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--save-dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 autocast when the CPU computes bf16 natively")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--compile", action="store_true",
                   help="run the training forward/backward through torch.compile "
                        "(about 15%% more tokens a second on a 2-core CPU; ~1 min to compile)")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


# -- data -----------------------------------------------------------------------------------


def encoder(tok: Tokenizer) -> EncodeBatch:
    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    return encode_batch


def training_chunks(files: Sequence[SourceFile], tok: Tokenizer, seq_len: int
                    ) -> tuple[list[str], int]:
    """Files cut at line starts into pieces that fit a training sequence with FIM sentinels,
    and the token count of the files (one epoch, less the sentinels)."""
    encodings = tok.encode_batch([f.text for f in files], add_special_tokens=False)
    limit = seq_len - SAMPLE_OVERHEAD_TOKENS
    chunks = [c for f, e in zip(files, encodings, strict=True)
              for c in chunk_text(f.text, e.offsets, limit)]
    return chunks, sum(len(e.ids) for e in encodings)


def held_out_rows(files: Sequence[SourceFile], tok: Tokenizer, seq_len: int, rows: int
                  ) -> tuple[torch.Tensor, float]:
    """The first `rows` plain-text held-out sequences (rows, seq_len), and bytes per token."""
    ids = encoder(tok)([f.text for f in files])
    tokens = sum(len(x) for x in ids)
    bytes_per_token = sum(f.nbytes for f in files) / tokens
    return pack(([*x, EOT] for x in ids), seq_len)[:rows], bytes_per_token


def epoch_batches(chunks: Sequence[str], tok: Tokenizer, args: argparse.Namespace, epoch: int
                  ) -> Iterator[torch.Tensor]:
    """Shuffled (batch_size, seq_len) batches of one epoch; FIM is drawn anew each epoch."""
    seed = args.seed * 1000 + epoch
    rows = build_sequences(chunks, encoder(tok), args.seq_len, seed, args.fim_rate,
                           args.spm_rate)  # (N, seq_len)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(rows) - args.batch_size + 1, args.batch_size):
        yield rows[order[start:start + args.batch_size]]


def endless_batches(chunks: Sequence[str], tok: Tokenizer, args: argparse.Namespace
                    ) -> Iterator[tuple[int, torch.Tensor]]:
    epoch = 0
    while True:
        for batch in epoch_batches(chunks, tok, args, epoch):
            yield epoch, batch
        epoch += 1


# -- model and optimiser --------------------------------------------------------------------


def build_model(args: argparse.Namespace, vocab_size: int) -> GPTBigCodeForCausalLM:
    if args.init_from is not None:
        model = GPTBigCodeForCausalLM.from_pretrained(args.init_from, dtype=torch.float32,
                                                      attn_implementation="sdpa")
        if model.config.n_positions != args.seq_len:
            raise ValueError(f"{args.init_from}: n_positions is {model.config.n_positions}, "
                             f"but --seq-len is {args.seq_len}")
        return model
    config = GPTBigCodeConfig(
        vocab_size=vocab_size, n_positions=args.seq_len, n_embd=args.n_embd,
        n_layer=args.n_layer, n_head=args.n_head, multi_query=True,
        activation_function="gelu_pytorch_tanh", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=EOT, eos_token_id=EOT, pad_token_id=None,
    )
    torch.manual_seed(args.seed)
    return GPTBigCodeForCausalLM(config, attn_implementation="sdpa")


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases or layer-norm gains)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step: int, progress: float, args: argparse.Namespace) -> float:
    """Linear warmup over the first steps, then cosine from lr to lr * min_lr_ratio."""
    warmup = min(1.0, (step + 1) / args.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return args.lr * warmup * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cosine)


@torch.no_grad()
def held_out_loss(model: GPTBigCodeForCausalLM, rows: torch.Tensor, autocast: bool) -> float:
    """Mean next-token loss (nats) over the held-out rows."""
    model.eval()
    losses = []
    for batch in rows.split(8):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses.append(float(model(batch, labels=batch).loss))
    model.train()
    return sum(losses) / len(losses)


# -- saving ---------------------------------------------------------------------------------


def save_checkpoint(model: GPTBigCodeForCausalLM, tok_dir: Path, folder: Path,
                    dtype: torch.dtype = torch.float32) -> None:
    """Model and tokenizer files into folder, replaced as a whole (never half written)."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if dtype == torch.float32:
        model.save_pretrained(partial)
    else:
        copy = build_copy(model).to(dtype)
        copy.save_pretrained(partial)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    save_tokenizer(tok, partial, model_max_length=model.config.n_positions)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def build_copy(model: GPTBigCodeForCausalLM) -> GPTBigCodeForCausalLM:
    copy = GPTBigCodeForCausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    return copy


def prepare_tokenizer(args: argparse.Namespace, train: Sequence[SourceFile]) -> Path:
    if args.init_from is not None:
        return Path(args.init_from)
    if args.tokenizer is not None:
        if not (args.tokenizer / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{args.tokenizer}: no tokenizer.json")
        return Path(args.tokenizer)
    folder = args.run_dir / "tokenizer"
    tok = train_tokenizer((f.text for f in train), args.vocab_size)
    save_tokenizer(tok, folder, model_max_length=args.seq_len)
    return folder


# -- the loop -------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where the run is: steps, tokens, time, and the smoothed training loss."""

    started: float
    budget_s: float
    max_steps: int | None
    step: int = 0
    epoch: int = 0
    tokens: int = 0
    train_loss: float = float("nan")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def fraction(self) -> float:
        if self.max_steps is not None:
            return self.step / self.max_steps
        return self.elapsed / self.budget_s

    def observe(self, loss: float) -> None:
        previous = loss if math.isnan(self.train_loss) else self.train_loss
        self.train_loss = 0.95 * previous + 0.05 * loss


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batch: torch.Tensor, lr: float, args: argparse.Namespace, autocast: bool) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def evaluate_and_record(model: GPTBigCodeForCausalLM, rows: torch.Tensor, bytes_per_token: float,
                        state: Progress, args: argparse.Namespace, autocast: bool) -> float:
    """Held-out loss, appended to RUN_DIR/metrics.jsonl and logged."""
    loss = held_out_loss(model, rows, autocast)
    row = {"step": state.step, "minutes": round(state.elapsed / 60, 2), "epoch": state.epoch,
           "tokens": state.tokens, "train_loss": round(state.train_loss, 4),
           "held_out_loss": round(loss, 4),
           "held_out_bpb": round(loss / math.log(2) / bytes_per_token, 4),
           "lr": lr_at(state.step, state.fraction, args)}
    with open(args.run_dir / "metrics.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
    log.info("%s", row)
    return loss


def run(args: argparse.Namespace) -> dict[str, object]:
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    autocast = args.precision == "bf16" or (args.precision == "auto" and cpu_bf16_native())
    args.run_dir.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args.data, with_tests=args.with_tests)
    log.info("corpus: %s", corpus.summary())
    tok_dir = prepare_tokenizer(args, corpus.train)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    chunks, epoch_tokens = training_chunks(corpus.train, tok, args.seq_len)
    eval_rows, bytes_per_token = held_out_rows(corpus.held_out, tok, args.seq_len, args.eval_rows)
    model = build_model(args, tok.get_vocab_size())
    model.train()
    optimizer = make_optimizer(model, args)
    # The compiled wrapper shares the parameters; evaluation and saving use the plain module.
    step_model = cast(torch.nn.Module, torch.compile(model)) if args.compile else model
    log.info("model: %d layers x %d, %d heads, %.2fM parameters; bf16 autocast: %s; "
             "%d chunks, %d tokens an epoch", model.config.n_layer, model.config.n_embd,
             model.config.n_head,
             model.num_parameters() / 1e6, autocast, len(chunks), epoch_tokens)
    (args.run_dir / "metrics.jsonl").unlink(missing_ok=True)
    state = Progress(time.monotonic(), args.minutes * 60, args.steps)
    next_eval = 0.0
    next_save = args.checkpoint_minutes * 60
    for state.epoch, batch in endless_batches(chunks, tok, args):
        if state.fraction >= 1.0:
            break
        if state.elapsed >= next_eval:
            evaluate_and_record(model, eval_rows, bytes_per_token, state, args, autocast)
            next_eval = state.elapsed + args.eval_minutes * 60
        if state.elapsed >= next_save:
            save_checkpoint(model, tok_dir, args.run_dir / "checkpoint")
            next_save = state.elapsed + args.checkpoint_minutes * 60
        loss = train_step(step_model, optimizer, batch, lr_at(state.step, state.fraction, args),
                          args, autocast)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at step {state.step}")
        state.observe(loss)
        state.step += 1
        state.tokens += batch.numel()
    final_loss = evaluate_and_record(model, eval_rows, bytes_per_token, state, args, autocast)
    train_seconds = state.elapsed
    dtype = torch.bfloat16 if args.save_dtype == "bfloat16" else torch.float32
    save_checkpoint(model, tok_dir, args.run_dir / "final", dtype)
    summary = {
        "steps": state.step, "tokens": state.tokens,
        "epochs": round(state.tokens / epoch_tokens, 2),
        "train_minutes": round(train_seconds / 60, 2), "held_out_loss": round(final_loss, 4),
        "held_out_bpb": round(final_loss / math.log(2) / bytes_per_token, 4),
        "parameters": model.num_parameters(), "bf16_autocast": autocast,
        "machine": f"{cpu_name()}, {args.threads} threads", "torch": torch.__version__,
        "python": platform.python_version(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("done: %s", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
