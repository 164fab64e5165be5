"""A faster decode step on CPUs: the one-row matrix-vector products on faster kernels.

A decode step multiplies one row of activations by every weight matrix once, so its speed is
how fast the weights stream from memory. torch's one-row matmul streams them at a third
(bf16, oneDNN) to a half (fp32, MKL) of the machine's bandwidth. Two faster kernels:

- native (model.native): C loops built on first use with the system compiler, reading bf16
  or fp32 weights at the speed of a plain read (x86-64 with AVX-512; bf16 needs
  AVX512-BF16). Preferred wherever they apply.
- Inductor: the product written as a broadcast multiply and a row sum, compiled by
  torch.compile with dynamic shapes (half precision only, a few seconds per weight shape).
  Used with `inductor=True` where the native kernels do not apply.

`fast_decode(model)` turns the blocks' Linear layers and lm_head into `DecodeLinear`s in
place (the same parameters, so tied weights stay tied): inputs of one row on the CPU with
gradients and autocast off go to a faster kernel (in bf16, up to 8 rows: a keystroke that
retokenises into a few tokens), everything else (prefill, batches, training, other devices,
mixed dtypes) through F.linear as before. With the native kernels
on bf16 weights, the model's one-token steps (GPTBigCodeModel.decode_one) also run each
block as one fused native call: layer norms, products, attention and GELU without a trip
through Python per operation.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from . import native

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
    """nn.Linear whose one-row products on the CPU run on a faster kernel (module docstring)."""

    use_native = True  # whether to use the native kernel where it applies
    inductor = False  # whether to use the Inductor product where no native kernel applies
    compile_failed = False  # set on a layer whose product could not be compiled
    # The native kernel chosen for the weight as it was last seen (dtype, storage).
    _native_key: tuple[torch.dtype, int] | None = None
    _native: native.RowProduct | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if (0 < rows <= native.MAX_ROWS and x.device.type == "cpu"
                and x.dtype == self.weight.dtype and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu")):
            if rows > 1:
                return self.few_rows(x, rows)
            kernel = self.native_kernel() if self.use_native else None
            if kernel is not None:
                out = kernel(x.reshape(-1).contiguous(), self.weight, self.bias)  # (N,)
                return out.view(*x.shape[:-1], self.out_features)
            if self.inductor and x.dtype in _DTYPES and not self.compile_failed:
                compiled = self.compiled_product(x)
                if compiled is not None:
                    return compiled.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def few_rows(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """2 to native.MAX_ROWS rows: the bf16 native kernel that streams the weights once."""
        kernel = native.rows_product_kernel() if self.use_native else None
        if kernel is None or self.native_kernel() is None or x.dtype != torch.bfloat16:
            return F.linear(x, self.weight, self.bias)
        out = kernel(x.reshape(rows, -1).contiguous(), self.weight, self.bias)  # (M, N)
        return out.view(*x.shape[:-1], self.out_features)

    def native_kernel(self) -> native.RowProduct | None:
        """The native kernel for this weight, chosen again when its dtype or storage changes."""
        key = (self.weight.dtype, self.weight.data_ptr())
        if key != self._native_key:
            usable = native.supports(self.weight, self.bias)
            self._native = native.row_product_kernel(self.weight.dtype) if usable else None
            self._native_key = key
        return self._native

    def compiled_product(self, x: torch.Tensor) -> torch.Tensor | None:
        product = compiled_row_product()
        if product is None:
            return None
        try:
            # Detached, the weights are plain tensors: Dynamo keeps parameters' shapes static
            # and would compile anew for each weight shape, up to its recompile limit.
            bias = None if self.bias is None else self.bias.detach()
            return product(x.reshape(-1), self.weight.detach(), bias)
        except Exception:  # e.g. the recompile limit, after many weight shapes
            log.info("compiled product failed for %s; F.linear from now on",
                     tuple(self.weight.shape), exc_info=True)
            self.compile_failed = True
            return None


def fast_decode(model: nn.Module, *, native: bool = True, inductor: bool = False
                ) -> nn.Module:
    """Make the blocks' Linears and lm_head DecodeLinears, in place; returns the model.

    native: use the native kernels where they apply (off only to compare paths).
    inductor: also compile the product with torch.compile where no native kernel applies
    (half precision on a CPU without AVX512-BF16, or a shape the native kernel refuses).
    """
    backbone = getattr(model, "transformer", model)
    blocks = getattr(backbone, "h", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"fast_decode needs a GPTBigCode model, got {type(model).__name__}")
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
        if isinstance(module, DecodeLinear):
            module.use_native, module.inductor = native, inductor
    return model


def native_decode_available(dtype: torch.dtype) -> bool:
    """Whether a native one-row kernel runs here for weights of dtype."""
    return native.row_product_kernel(dtype) is not None
