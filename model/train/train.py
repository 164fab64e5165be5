"""Train the default model: a small multi-query GPTBigCode, with FIM, on the standard library
or on a corpus of packages (model/train/corpus.py) in StarCoder's repository format.

    python -m model.train.train --run-dir runs/default --minutes 60
    python -m model.train.train --run-dir runs/r1 --data runs/corpus --layout repos \
        --total-tokens 60e6 --minutes 110      # one session's share; then, in later sessions:
    python -m model.train.train --resume runs/r1 --minutes 110

With --total-tokens (or --steps) the learning-rate schedule (linear warmup, cosine decay) is
defined over steps, --minutes only ends this session, and RUN_DIR/train_state.pt (model, AdamW
state, RNG states, data position, step; written every --checkpoint-minutes and at the end of a
session, atomically) lets --resume continue the same run exactly: N steps in one session give
the same weights as N/2 and a resumed N/2 (on one device; `--device` picks it, the GPU when
there is one, and a run may move between GPU and CPU). Without them the schedule runs on
wall-clock progress through --minutes (the stdlib model's recipe), and such a run cannot be
resumed.
Ctrl-C (or SIGTERM) ends a resumable session early the same way: after the step in flight, with
the state saved; a second one stops at once. `--resume RUN_DIR --total-tokens N` gives the
schedule a new length from the step it is at (best while the learning rate is near its peak).
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
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tokenizers import Tokenizer

from ..config import GPTBigCodeConfig
from ..hardware import cpu_bf16_native, cpu_name
from ..modeling import GPTBigCodeForCausalLM
from .data import SourceFile, load_corpus
from .fim import EOT, EncodeBatch, build_sequences, chunk_text, pack
from .repo_format import Repository, build_repository_sequences, repositories
from .tokenizer_recipe import save_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

# Fixed-length samples carry their FIM sentinels and <|endoftext|> besides the chunk itself.
SAMPLE_OVERHEAD_TOKENS = 4
STATE_FILE = "train_state.pt"
ARGS_FILE = "train_args.json"
# What a resumed session may change; everything else comes from the run's train_args.json.
SESSION_ARGS = frozenset({"minutes", "threads", "checkpoint_minutes", "eval_minutes",
                          "compile", "session_steps", "resume", "device"})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=None,
                   help="output folder: checkpoint/, final/, metrics.jsonl, train_state.pt")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its train_state.pt, with its "
                        "arguments (this command's --minutes, --threads, --checkpoint-minutes, "
                        "--eval-minutes, --compile, --session-steps apply; --steps or "
                        "--total-tokens give the schedule a new length from here on)")
    p.add_argument("--layout", choices=("files", "repos"), default="files",
                   help="files: each file a FIM sample; repos: StarCoder's repository format "
                        "(a corpus with packages, from model.train.corpus)")
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
    p.add_argument("--minutes", type=float, default=60.0,
                   help="wall-clock budget: of the schedule without --steps/--total-tokens, "
                        "else of this session")
    p.add_argument("--steps", type=int, default=None, help="the schedule's length in steps")
    p.add_argument("--total-tokens", type=float, default=None,
                   help="the schedule's length in training tokens (steps = this / "
                        "(batch-size * seq-len), rounded up)")
    p.add_argument("--session-steps", type=int, default=None,
                   help="end this session after this many more steps (state saved)")
    p.add_argument("--eval-minutes", type=float, default=5.0, help="held-out loss interval")
    p.add_argument("--eval-rows", type=int, default=32, help="held-out sequences per evaluation")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--save-dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 autocast when the device computes bf16 natively")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda or cuda:N; auto: the GPU when there is one (a run may "
                        "change device between sessions)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--compile", action="store_true",
                   help="run the training forward/backward through torch.compile "
                        "(about 15%% more tokens a second on a 2-core CPU; ~1 min to compile)")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    if (args.run_dir is None) == (args.resume is None):
        p.error("give exactly one of --run-dir and --resume")
    if args.steps is not None and args.total_tokens is not None:
        p.error("give --steps or --total-tokens, not both")
    if args.resume is not None:
        args = resumed_args(args)
    elif args.total_tokens is not None:
        args.steps = math.ceil(args.total_tokens / (args.batch_size * args.seq_len))
    return args


def resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """The run's saved arguments, with this session's SESSION_ARGS."""
    saved_path = args.resume / ARGS_FILE
    if not (args.resume / STATE_FILE).is_file() or not saved_path.is_file():
        raise FileNotFoundError(f"{args.resume}: no {STATE_FILE} and {ARGS_FILE} to resume from")
    saved = json.loads(saved_path.read_text())
    if saved.get("steps") is None:
        raise ValueError(f"{args.resume}: its schedule runs on wall-clock time; only runs with "
                         f"--steps or --total-tokens can be resumed")
    merged = argparse.Namespace(**saved)
    for key in SESSION_ARGS:
        setattr(merged, key, getattr(args, key))
    merged.lengthened_from = None
    if args.steps is not None or args.total_tokens is not None:  # a new length for the schedule
        steps = args.steps if args.steps is not None else math.ceil(
            args.total_tokens / (saved["batch_size"] * saved["seq_len"]))
        if steps != saved["steps"]:
            merged.lengthened_from = saved["steps"]
            merged.steps = steps
            merged.total_tokens = args.total_tokens
    for key in ("run_dir", "data", "tokenizer", "init_from"):
        value = getattr(merged, key)
        setattr(merged, key, None if value is None else Path(value))
    return merged


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
    """`rows` plain-text held-out sequences (rows, seq_len) spread evenly over the held-out
    text (so every held-out package has its share), and the text's bytes per token."""
    ids = encoder(tok)([f.text for f in files])
    tokens = sum(len(x) for x in ids)
    bytes_per_token = sum(f.nbytes for f in files) / tokens
    packed = pack(([*x, EOT] for x in ids), seq_len)
    if len(packed) <= rows:
        return packed, bytes_per_token
    return packed[torch.linspace(0, len(packed) - 1, rows).long()], bytes_per_token


TrainingText = list[str] | list[Repository]


def training_repositories(files: Sequence[SourceFile], tok: Tokenizer, seq_len: int
                          ) -> tuple[list[Repository], int]:
    """Files grouped by package, each cut like training_chunks; and the files' token count.

    Encoded a few hundred files at a time: a tokenizers Encoding keeps each token's string and
    offsets, gigabytes for a 100 MB corpus at once.
    """
    limit = seq_len - SAMPLE_OVERHEAD_TOKENS
    pieces: list[list[str]] = []
    tokens = 0
    for start in range(0, len(files), 256):
        batch = files[start:start + 256]
        encodings = tok.encode_batch([f.text for f in batch], add_special_tokens=False)
        pieces += [chunk_text(f.text, e.offsets, limit)
                   for f, e in zip(batch, encodings, strict=True)]
        tokens += sum(len(e.ids) for e in encodings)
    return repositories(files, pieces), tokens


def epoch_rows(text: TrainingText, tok: Tokenizer, args: argparse.Namespace, epoch: int
               ) -> torch.Tensor:
    """One epoch's packed rows (N, seq_len), in a shuffled order; FIM drawn anew each epoch."""
    seed = args.seed * 1000 + epoch
    if args.layout == "repos":
        rows = build_repository_sequences(cast(list[Repository], text), encoder(tok),
                                          args.seq_len, seed, args.fim_rate, args.spm_rate)
    else:
        rows = build_sequences(cast(list[str], text), encoder(tok), args.seq_len, seed,
                               args.fim_rate, args.spm_rate)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return rows[order]


def batches_from(text: TrainingText, tok: Tokenizer, args: argparse.Namespace, epoch: int,
                 index: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, batch index, batch (batch_size, seq_len)) from the given position on, for ever."""
    while True:
        rows = epoch_rows(text, tok, args, epoch)
        count = len(rows) // args.batch_size
        if count == 0:
            raise ValueError(f"the training data fill {len(rows)} rows of {args.seq_len} "
                             f"tokens, fewer than one batch of {args.batch_size}")
        for i in range(index, count):
            yield epoch, i, rows[i * args.batch_size:(i + 1) * args.batch_size].long()
        epoch, index = epoch + 1, 0


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
    device = model.device
    losses = []
    for batch in rows.split(8):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
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


def save_state(model: GPTBigCodeForCausalLM, optimizer: torch.optim.Optimizer, state: Progress,
               run_dir: Path) -> None:
    """Everything --resume needs, in RUN_DIR/train_state.pt: written beside, then renamed."""
    payload = {
        "config": model.config.to_dict(), "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "step": state.step, "epoch": state.epoch,
        "batch_index": state.batch_index, "tokens": state.tokens,
        "train_loss": state.train_loss, "seconds": state.total_seconds,
        "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
    }
    partial = run_dir / (STATE_FILE + ".partial")
    with open(partial, "wb") as out:
        torch.save(payload, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, run_dir / STATE_FILE)


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def load_state(run_dir: Path) -> dict[str, Any]:
    # weights_only: tensors, numbers, strings and tuples, no arbitrary pickled objects.
    # map_location: a run saved on a GPU resumes on a CPU and the other way round.
    return cast(dict[str, Any], torch.load(run_dir / STATE_FILE, weights_only=True,
                                           map_location="cpu"))


def restore(payload: dict[str, Any], model: GPTBigCodeForCausalLM,
            optimizer: torch.optim.Optimizer, state: Progress) -> None:
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    for key in ("step", "epoch", "batch_index", "tokens", "train_loss"):
        setattr(state, key, payload[key])
    state.earlier_seconds = payload["seconds"]
    torch.set_rng_state(payload["torch_rng"])
    version, internal, gauss = payload["python_rng"]
    random.setstate((version, tuple(internal), gauss))


def build_copy(model: GPTBigCodeForCausalLM) -> GPTBigCodeForCausalLM:
    copy = GPTBigCodeForCausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    return copy


def prepare_tokenizer(args: argparse.Namespace, train: Sequence[SourceFile]) -> Path:
    if args.resume is not None and args.init_from is None and args.tokenizer is None:
        return Path(args.run_dir / "tokenizer")
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
    batch_index: int = 0  # of the next batch within the epoch
    tokens: int = 0
    train_loss: float = float("nan")
    earlier_seconds: float = 0.0  # training time of the run's earlier sessions

    @property
    def elapsed(self) -> float:
        """This session's seconds."""
        return time.monotonic() - self.started

    @property
    def total_seconds(self) -> float:
        return self.earlier_seconds + self.elapsed

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
    device = next(model.parameters()).device
    batch = batch.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
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
    row = {"step": state.step, "minutes": round(state.total_seconds / 60, 2), "epoch": state.epoch,
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
    device = training_device(args.device)
    autocast = args.precision == "bf16" or (args.precision == "auto" and bf16_native(device))
    resumable = args.steps is not None
    if args.resume is None and (args.run_dir / STATE_FILE).is_file():
        raise FileExistsError(f"{args.run_dir} holds a run ({STATE_FILE}): continue it with "
                              f"--resume {args.run_dir}, or train into another folder")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args.data, with_tests=args.with_tests)
    log.info("corpus: %s", corpus.summary())
    tok_dir = prepare_tokenizer(args, corpus.train)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    text: TrainingText
    if args.layout == "repos":
        text, epoch_tokens = training_repositories(corpus.train, tok, args.seq_len)
    else:
        text, epoch_tokens = training_chunks(corpus.train, tok, args.seq_len)
    eval_rows, bytes_per_token = held_out_rows(corpus.held_out, tok, args.seq_len, args.eval_rows)
    model = build_model(args, tok.get_vocab_size()).to(device)
    model.train()
    optimizer = make_optimizer(model, args)
    state = Progress(time.monotonic(), args.minutes * 60, args.steps)
    if args.resume is not None:
        restore(load_state(args.run_dir), model, optimizer, state)
        log.info("resuming at step %d of %d (%d tokens seen)", state.step, args.steps,
                 state.tokens)
        if args.lengthened_from is not None:
            lengthen_schedule(args, state)
    else:
        (args.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        saved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        (args.run_dir / ARGS_FILE).write_text(json.dumps(saved, indent=1) + "\n")
    # The compiled wrapper shares the parameters; evaluation and saving use the plain module.
    step_model = cast(torch.nn.Module, torch.compile(model)) if args.compile else model
    log.info("model: %d layers x %d, %d heads, %.2fM parameters; on %s, bf16 autocast: %s; "
             "%d %s, %d tokens an epoch", model.config.n_layer, model.config.n_embd,
             model.config.n_head, model.num_parameters() / 1e6, device_name(device), autocast,
             len(text), args.layout, epoch_tokens)

    def save_all() -> None:
        save_checkpoint(model, tok_dir, args.run_dir / "checkpoint")
        if resumable:
            save_state(model, optimizer, state, args.run_dir)

    stop = StopRequest()

    def session_over() -> bool:
        return resumable and (stop.asked or state.elapsed >= args.minutes * 60 or (
            args.session_steps is not None and state.step - first_step >= args.session_steps))

    first_step = state.step
    next_eval = 0.0 if state.step == 0 else args.eval_minutes * 60
    next_save = args.checkpoint_minutes * 60
    batches = batches_from(text, tok, args, state.epoch, state.batch_index)
    restore_handlers = stop.install() if resumable else None
    try:
        while state.fraction < 1.0 and not session_over():
            if state.elapsed >= next_eval:
                evaluate_and_record(model, eval_rows, bytes_per_token, state, args, autocast)
                next_eval = state.elapsed + args.eval_minutes * 60
            if state.elapsed >= next_save:
                save_all()
                next_save = state.elapsed + args.checkpoint_minutes * 60
            epoch, index, batch = next(batches)
            loss = train_step(step_model, optimizer, batch, lr_at(state.step, state.fraction, args),
                              args, autocast)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss} at step {state.step}")
            state.observe(loss)
            state.step += 1
            state.tokens += batch.numel()
            state.epoch, state.batch_index = epoch, index + 1
    finally:
        if restore_handlers is not None:
            restore_handlers()
    complete = state.fraction >= 1.0
    final_loss = evaluate_and_record(model, eval_rows, bytes_per_token, state, args, autocast)
    if complete:
        dtype = torch.bfloat16 if args.save_dtype == "bfloat16" else torch.float32
        save_checkpoint(model, tok_dir, args.run_dir / "final", dtype)
    if resumable:
        save_all()
    summary = {
        "complete": complete, "steps": state.step, "tokens": state.tokens,
        "epochs": round(state.tokens / epoch_tokens, 2),
        "train_minutes": round(state.total_seconds / 60, 2),
        "session_minutes": round(state.elapsed / 60, 2), "held_out_loss": round(final_loss, 4),
        "held_out_bpb": round(final_loss / math.log(2) / bytes_per_token, 4),
        "parameters": model.num_parameters(), "bf16_autocast": autocast,
        "machine": f"{cpu_name()}, {args.threads} threads", "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("%s: %s", "done" if complete else "session over, resume with --resume", summary)
    return summary


def training_device(name: str) -> torch.device:
    """The --device argument as a device: auto is the first GPU when torch sees one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r}: not a device name (cpu, cuda, cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch sees no CUDA GPU "
                         f"(torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return device


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 autocast is native on the device: bf16 instructions on this CPU, or a GPU
    that computes bf16 (Ampere and later)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16_native()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


class StopRequest:
    """Ctrl-C or SIGTERM during a resumable session: the first ends the session after the step
    in flight (evaluated and saved as at its end); a second stops at once."""

    def __init__(self) -> None:
        self.asked = False

    def install(self) -> Callable[[], None] | None:
        """Handle SIGINT and SIGTERM until the returned function puts the old handlers back;
        None (nothing installed) outside the main thread, where Python takes no handlers."""
        if threading.current_thread() is not threading.main_thread():
            return None
        kinds = (signal.SIGINT, signal.SIGTERM)
        before = {kind: signal.signal(kind, self._handle) for kind in kinds}

        def restore() -> None:
            for kind, handler in before.items():
                signal.signal(kind, handler)
        return restore

    def _handle(self, signum: int, frame: object) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        log.warning("%s: ending the session after this step and saving its state (again to "
                    "stop at once)", signal.Signals(signum).name)


def lengthen_schedule(args: argparse.Namespace, state: Progress) -> None:
    """Give a resumed run's schedule its new length (args.steps) from state.step on, recorded
    in train_args.json under "lengthened". The cosine then runs over the new length: done
    while the rate is still near its peak, the step in the rate is small (it is logged)."""
    old = args.lengthened_from
    if args.steps <= state.step:
        raise ValueError(f"{args.run_dir}: the run is at step {state.step}; a schedule of "
                         f"{args.steps} steps would already be over")
    before = lr_at(state.step, state.step / old, args)
    after = lr_at(state.step, state.step / args.steps, args)
    log.warning("schedule %s from %d to %d steps at step %d: learning rate %.3g -> %.3g",
                "lengthened" if args.steps > old else "shortened", old, args.steps, state.step,
                before, after)
    path = args.run_dir / ARGS_FILE
    saved = json.loads(path.read_text())
    saved["lengthened"] = [*saved.get("lengthened", []),
                           {"at_step": state.step, "from_steps": old, "to_steps": args.steps}]
    saved["steps"], saved["total_tokens"] = args.steps, args.total_tokens
    write_atomically(path, json.dumps(saved, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
