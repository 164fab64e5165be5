"""A faster decode step on CPUs: matrix-vector products compiled by torch.compile.

A decode step multiplies one row of activations by every weight matrix once, so its speed is
how fast the weights stream from memory. oneDNN's bf16 matmul for a single row streams them
at a third of the machine's bandwidth; the same product written as a broadcast multiply and a
row sum, compiled by Inductor, reads bf16 weights, widens them in registers and accumulates
in fp32, at close to the bandwidth of a plain read (tests/bench/decode.py measures both).

`compile_decode(model)` turns the blocks' Linear layers and lm_head into `DecodeLinear`s in
place (the same parameters, so tied weights stay tied): inputs of one row go through the
compiled product, everything else (prefill, batches, training, other devices) through
F.linear as before. Each weight shape compiles once, a few seconds each, on first use.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_DTYPES = (torch.bfloat16, torch.float16)


def _row_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                 ) -> torch.Tensor:
    """(K,) x (N, K) -> (N,), accumulated in fp32, returned in x's dtype."""
    out = (weight.float() * x.float()).sum(-1)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@functools.cache
def compiled_row_product() -> Callable[..., torch.Tensor] | None:
    """The compiled product, or None where torch.compile cannot build it here."""
    try:
        fn = torch.compile(_row_product, dynamic=True, fullgraph=True)
        x = torch.ones(16, dtype=torch.bfloat16)
        w = torch.ones(8, 16, dtype=torch.bfloat16)
        if not torch.equal(fn(x, w, None), torch.full((8,), 16.0, dtype=torch.bfloat16)):
            return None
        return fn
    except Exception:  # no compiler, unsupported platform: the plain path stays
        log.info("torch.compile is unavailable; decode uses F.linear", exc_info=True)
        return None


class DecodeLinear(nn.Linear):
    """nn.Linear whose single-row products on the CPU in half precision are compiled."""

    compile_failed = False  # set on a layer whose product could not be compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one_row = x.numel() == x.shape[-1]
        if (one_row and x.device.type == "cpu" and x.dtype in _DTYPES
                and not torch.is_grad_enabled() and not self.compile_failed):
            product = compiled_row_product()
            if product is not None:
                try:
                    out = product(x.reshape(-1), self.weight, self.bias)  # (N,)
                except Exception:  # e.g. the recompile limit, after many weight shapes
                    log.info("compiled product failed for %s; F.linear from now on",
                             tuple(self.weight.shape), exc_info=True)
                    self.compile_failed = True
                else:
                    return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)


def compile_decode(model: nn.Module) -> nn.Module:
    """Make the blocks' Linears and lm_head DecodeLinears, in place; returns the model."""
    backbone = getattr(model, "transformer", model)
    blocks = getattr(backbone, "h", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"compile_decode needs a GPTBigCode model, got {type(model).__name__}")
    targets: list[Any] = []
    for block in blocks:
        attn, mlp = cast(Any, block).attn, cast(Any, block).mlp
        targets += [attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj]
    head = getattr(model, "lm_head", None)
    if head is not None:
        targets.append(head)
    for module in targets:
        if type(module) is nn.Linear:
            module.__class__ = DecodeLinear
    return model
