"""Training speed of a few model sizes on this CPU, to size a run of a few hours: optimizer
steps of model/train/train.py's training step (AdamW, bf16 autocast where the CPU computes
bf16 natively, fp32 otherwise) on batches of random token ids, the sizes taken in turn
(A B C A B C) so that a machine shared with other work slows them alike.

    .venv/bin/python tests/bench/train_sizes.py [--sizes 4x256 6x384 8x512] [--rounds 2]
        [--steps 2] [--batch-size 4] [--seq-len 1024] [--hours 4 6]

Prints a table (tokens a second, milliseconds a step, parameters, and the tokens that --hours
of such steps would see, with tokens per parameter) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import torch

from model.hardware import cpu_bf16_native, cpu_name
from model.train.train import build_model, make_optimizer, parse_args, train_step


def shape(text: str) -> tuple[int, int]:
    layers, width = text.lower().split("x")
    return int(layers), int(width)


def size_args(size: str, options: argparse.Namespace) -> argparse.Namespace:
    n_layer, n_embd = shape(size)
    return parse_args(["--run-dir", "unused", "--n-layer", str(n_layer), "--n-embd", str(n_embd),
                       "--n-head", str(max(1, n_embd // 64)), "--seq-len", str(options.seq_len),
                       "--batch-size", str(options.batch_size), "--vocab-size",
                       str(options.vocab_size), "--warmup-steps", "1"])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["4x256", "6x384", "8x512"],
                   help="LAYERSxWIDTH, heads of 64 dimensions")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per size and round")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hours", type=float, nargs="+", default=[4.0, 6.0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    options = p.parse_args(argv)
    torch.set_num_threads(options.threads)
    autocast = cpu_bf16_native()
    runs = {}
    for size in options.sizes:
        args = size_args(size, options)
        model = build_model(args, options.vocab_size)
        model.train()
        optimizer = make_optimizer(model, args)
        batch = torch.randint(19, options.vocab_size, (args.batch_size, args.seq_len))
        train_step(model, optimizer, batch, 1e-4, args, autocast)  # warm-up, not timed
        runs[size] = (model, optimizer, args, batch)
    seconds = dict.fromkeys(options.sizes, 0.0)
    for _ in range(options.rounds):
        for size, (model, optimizer, args, batch) in runs.items():
            started = time.perf_counter()
            for _ in range(options.steps):
                train_step(model, optimizer, batch, 1e-4, args, autocast)
            seconds[size] += time.perf_counter() - started
    tokens_per_step = options.batch_size * options.seq_len
    rows = []
    for size, (model, *_rest) in runs.items():
        step_s = seconds[size] / (options.rounds * options.steps)
        rate = tokens_per_step / step_s
        row = {"size": size, "parameters": model.num_parameters(),
               "tokens_per_s": round(rate), "ms_per_step": round(1000 * step_s)}
        for hours in options.hours:
            row[f"tokens_{hours:g}h"] = round(rate * hours * 3600)
            row[f"tokens_per_param_{hours:g}h"] = round(rate * hours * 3600
                                                        / model.num_parameters(), 1)
        rows.append(row)
    print(f"{cpu_name()}, {options.threads} threads, bf16 autocast: {autocast}, "
          f"{options.batch_size} x {options.seq_len} tokens a step")
    columns = list(rows[0])
    print("  ".join(f"{c:>20}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>20}" for c in columns))
    print(json.dumps({"bench": "train_sizes", "cpu": cpu_name(), "threads": options.threads,
                      "bf16_autocast": autocast, "rows": rows}))


if __name__ == "__main__":
    main()
