"""Int8 weight-only quantisation of GPTBigCode's linear layers, for faster decoding on a CPU
(inference only; do not `save_pretrained` the result)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from . import native

# A decode step reads every weight once, so on a CPU it is bound by memory bandwidth: int8
# weights with one scale per output channel halve the bytes a step reads against bf16.
# Activations stay in the model's dtype, except in one-row products on CPUs with AVX512-VNNI,
# which quantise them to int8 per block of 64 values (Int8Linear.quantize_activations).

# `aten._weight_int8pack_mm` is a matrix-vector kernel: it pays per input row, and beyond
# about 8-12 rows dequantising the weight and running a bf16 GEMM is faster (measured on a
# 2-core AVX512-BF16 machine, 768x3072 and 3072x768 weights).
KERNEL_MAX_ROWS = 8
# The CPU kernel reads K in blocks of 16: for other widths it returns wrong values or crashes.
KERNEL_K_MULTIPLE = 16
BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def quantize_rows(
    weight: torch.Tensor, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (N, K) weight -> (N, K) int8 and (N,) scales, w ~ q * scale."""
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)  # (N,)
    # A zero row gets scale 1 (and zeros) rather than a division by zero.
    scales = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax)).to(scale_dtype)
    # Rounding against the stored (possibly bf16) scale makes q * scale the nearest grid point.
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales


@functools.cache
def int8_kernel_available() -> bool:
    """Whether this torch has `aten._weight_int8pack_mm` on CPU and it computes x @ (q * s).T."""
    q = (torch.arange(4 * 32).reshape(4, 32) % 255 - 127).to(torch.int8)  # (N=4, K=32)
    scales = torch.tensor([0.5, 0.25, 1.0, 2.0], dtype=torch.bfloat16)
    x = torch.linspace(-1, 1, 2 * 32).reshape(2, 32).to(torch.bfloat16)  # (M=2, K=32)
    expected = x.float() @ (q.float() * scales.float()[:, None]).T  # (2, 4)
    try:
        got = torch.ops.aten._weight_int8pack_mm(x, q, scales)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.allclose(got.float(), expected, rtol=2e-2, atol=0.5))


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights and one scale per output channel: y = (x @ q.T) * s + b.

    One bf16 row on the CPU without gradients (a decode step) goes to model.native's int8
    kernels where the CPU has AVX-512 (see `quantize_activations`); other few-row bf16
    inputs on the CPU to torch's int8 kernel; anything else dequantises in the input's
    dtype, which is correct on every device and dtype.
    """

    weight_int8: torch.Tensor
    scales: torch.Tensor
    # One-row products on a CPU with AVX512-VNNI quantise x to int8 per block of 64 values
    # (llama.cpp's q8_0 does the same per 32) and run at the memory's speed; False keeps x
    # in bf16 there, exact but about half as fast (model.native.int8_row_product_kernel).
    quantize_activations: bool = True

    def __init__(
        self, weight_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if weight_int8.dtype != torch.int8 or weight_int8.dim() != 2:
            raise ValueError(
                f"weight_int8 must be a 2-d int8 tensor, got {weight_int8.dtype} "
                f"{tuple(weight_int8.shape)}"
            )
        N = weight_int8.shape[0]
        if tuple(scales.shape) != (N,):
            raise ValueError(f"scales must have shape ({N},), got {tuple(scales.shape)}")
        if bias is not None and tuple(bias.shape) != (N,):
            raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
        self.register_buffer("weight_int8", weight_int8.contiguous())
        self.register_buffer("scales", scales)
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scales = quantize_rows(linear.weight, linear.weight.dtype)
        return cls(q, scales, linear.bias)

    @property
    def in_features(self) -> int:
        return self.weight_int8.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight_int8.shape[0]

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether a (M, K) input goes to the int8 kernel rather than the dequantising path."""
        return (
            x.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and x.shape[0] <= KERNEL_MAX_ROWS
            and self.in_features % KERNEL_K_MULTIPLE == 0
            and not x.requires_grad  # the kernel has no backward
            and int8_kernel_available()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (M, K)
        if (rows.shape[0] == 1 and x.dtype == torch.bfloat16 and x.device.type == "cpu"
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")):
            native_product = native.int8_row_product_kernel(self.quantize_activations)
            if native_product is not None and native.supports_int8(
                    self.weight_int8, self.scales, self.bias):
                y = native_product(rows.reshape(-1).contiguous(), self.weight_int8, self.scales,
                                   self.bias)
                return y.view(*x.shape[:-1], self.out_features)
        scales = self.scales.to(x.dtype)
        if self.uses_kernel(rows):
            y = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), self.weight_int8, scales)
        else:
            # int8 values are exact in bf16/fp16/fp32; scaling the (M, N) output rather than
            # the (N, K) weight is cheaper and rounds once less.
            y = F.linear(rows, self.weight_int8.to(x.dtype)) * scales  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)  # (..., N)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


def quantize_int8(model: nn.Module, include_lm_head: bool = False) -> nn.Module:
    """Replace, in place, each block's c_attn, c_proj, c_fc and c_proj with an Int8Linear.

    Works on GPTBigCodeModel and the three head classes. With `include_lm_head`, lm_head gets
    its own int8 copy of the weights and so is no longer tied to wte, which stays as it is
    (an embedding reads one row per token). Returns the model.
    """
    backbone = getattr(model, "transformer", model)
    blocks = getattr(backbone, "h", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(
            "quantize_int8 needs a GPTBigCode model (with transformer.h), "
            f"got {type(model).__name__}"
        )
    if include_lm_head and not isinstance(getattr(model, "lm_head", None), nn.Linear | Int8Linear):
        raise ValueError(f"include_lm_head=True but {type(model).__name__} has no lm_head")
    with torch.no_grad():
        for block in blocks:
            for name in BLOCK_LINEARS:
                replace_linear(block, name)
        if include_lm_head:
            replace_linear(model, "lm_head")
    return model


def replace_linear(owner: nn.Module, dotted_name: str) -> None:
    """Swap the nn.Linear at `owner.<dotted_name>` for its Int8Linear; leave one already swapped."""
    parent_name, _, name = dotted_name.rpartition(".")
    parent = owner.get_submodule(parent_name) if parent_name else owner
    linear = getattr(parent, name)
    if isinstance(linear, Int8Linear):
        return
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{dotted_name} is a {type(linear).__name__}, expected nn.Linear")
    setattr(parent, name, Int8Linear.from_linear(linear))
