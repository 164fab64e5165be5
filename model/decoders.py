"""The decode paths: one protocol (prefill, start, step) with one implementation per way of
running the model fast, and `make_decoder`, the one place that chooses between them."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .kv_cache import KVCache
from .modeling import (
    HALF_DTYPES,
    AttentionMask,
    GPTBigCodeAttention,
    GPTBigCodeBlock,
    GPTBigCodeForCausalLM,
    build_attention_mask,
    resolve_backend,
)
from .quantize import Int8Linear
from .static_decode import GraphDecoder

log = logging.getLogger(__name__)

DECODE_PATHS = ("auto", "torch", "inductor", "native", "cuda-graph")
# Below this size a decode step is bound by per-call overhead, not by streaming the weights,
# and compiling with Inductor gains too little to be worth its seconds at load.
AUTO_COMPILE_PARAMETERS = 50_000_000

NativeBlocks = tuple[native.BlockKernel, list[native.BlockParams]]
F16_MAX = 65504.0  # the largest finite float16


class DecodePathUnavailable(ValueError):
    """The requested decode path cannot run here; the message says why."""


class Decoder(Protocol):
    """llama_decode's role: the way the engine runs the model, one sequence at a time."""

    model: GPTBigCodeForCausalLM

    @property
    def path(self) -> str:
        """What runs: "torch", "inductor", "native-bf16", "native-fp32", "native-q8",
        "cuda-graph" (or "static", a GraphDecoder's eager steps)."""
        ...

    def prefill(self, ids: torch.Tensor, kv: KVCache, logits_to_keep: int = 1) -> torch.Tensor:
        """Run ids (1, T) at positions kv.length.. (kv grows, its length updated); logits
        (1, n, vocab) of the last n = logits_to_keep positions (0: all)."""
        ...

    def start(self, kv: KVCache) -> None:
        """Take over kv (its prompt already in it) for steps."""
        ...

    def step(self, token: int) -> torch.Tensor:
        """Append token to the started kv; the next token's logits (vocab,)."""
        ...


# -- PyTorch ---------------------------------------------------------------------------------


class TorchDecoder:
    """The model's own operations. A one-token step of a multi-query model runs only the
    operations that case needs (no masks, position tensors, per-head K/V or module hooks):
    forward's Python work per layer costs about as much as streaming a 100M-parameter
    model's weights. Subclasses swap the products (`product`) and the attention (`attend`)."""

    def __init__(self, model: GPTBigCodeForCausalLM) -> None:
        self.model = model
        self.kv: KVCache | None = None

    @property
    def path(self) -> str:
        return "torch"

    def prefill(self, ids: torch.Tensor, kv: KVCache, logits_to_keep: int = 1) -> torch.Tensor:
        with torch.inference_mode():
            if ids.shape == (1, 1) and self.trimmed():
                hidden = self.one_token(ids, kv)
            else:
                hidden = self.hidden_states(ids, kv)
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
            return self.product(self.model.lm_head, hidden)  # (1, n, V)

    def start(self, kv: KVCache) -> None:
        self.model.transformer.check_cache(kv, 1, kv.length, 0)
        self.kv = kv

    def step(self, token: int) -> torch.Tensor:
        kv = self.kv
        if kv is None:
            raise RuntimeError(f"{type(self).__name__}.step before start(kv)")
        with torch.inference_mode():
            ids = torch.tensor([[token]], dtype=torch.long, device=kv.device)  # (1, 1)
            if self.trimmed():
                hidden = self.one_token(ids, kv)
            elif self.model.training:
                hidden = self.hidden_states(ids, kv)
            else:  # multi-head or eager attention: forward's arithmetic, through `product`
                hidden = self.few_tokens(ids, kv)
            return self.product(self.model.lm_head, hidden).view(-1)  # (V,)

    # -- the parts a faster path replaces ------------------------------------------------

    def product(self, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """linear(x) for x (..., K)."""
        return cast(torch.Tensor, linear(x))

    def attend(self, attn: GPTBigCodeAttention, q: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> torch.Tensor:
        """One token's heads q (C,) against the shared keys and values (S, D); (..., C)."""
        H, D = attn.num_heads, attn.head_dim
        # Heads folded into the query axis against the one shared K/V head (MQA).
        return F.scaled_dot_product_attention(
            q.view(1, 1, H, D), keys[None, None], values[None, None], scale=attn.scale
        )  # (1, 1, H, D)

    def hidden_states(self, ids: torch.Tensor, kv: KVCache) -> torch.Tensor:
        """The general path: the backbone's last hidden states (1, T, C)."""
        out = self.model.transformer(ids, past_key_values=kv, use_cache=True)
        return cast(torch.Tensor, out.last_hidden_state)

    # -- one token -------------------------------------------------------------------------

    def trimmed(self) -> bool:
        """Whether one token may take the trimmed step (as forward's general path computes
        it): multi-query attention, not asked for eager attention, not training."""
        body = self.model.transformer
        return (self.model.config.multi_query and body.attn_implementation != "eager"
                and not body.training)

    def one_token(self, ids: torch.Tensor, kv: KVCache) -> torch.Tensor:
        """ids (1, 1) after kv's tokens; the final hidden state (1, 1, C)."""
        body, C = self.model.transformer, self.model.config.n_embd
        past = kv.length
        body.check_cache(kv, 1, past, 1)
        body.check_token_ids(ids, "input_ids")
        kv.reserve(past + 1)
        x = (body.wte(ids) + body.wpe.weight[past]).view(1, 1, C)
        x = self.blocks(x, kv, past)
        ln = body.ln_f
        x = F.layer_norm(x, (C,), ln.weight, ln.bias, ln.eps)
        kv.length = past + 1
        return x

    def blocks(self, x: torch.Tensor, kv: KVCache, past: int) -> torch.Tensor:
        """The blocks of one token as tensor operations; x (1, 1, C) -> (1, 1, C)."""
        cfg = self.model.config
        C, D = cfg.n_embd, cfg.head_dim
        buffer = kv.buffer[:, :, 0, 0]  # (L, 2, capacity, D)
        for i, module in enumerate(self.model.transformer.h):
            block = cast(GPTBigCodeBlock, module)
            attn, ln = block.attn, block.ln_1
            h = F.layer_norm(x, (C,), ln.weight, ln.bias, ln.eps)
            qkv = self.product(attn.c_attn, h)  # (1, 1, C + 2D)
            buffer[i, 0, past].copy_(qkv[0, 0, C:C + D])
            buffer[i, 1, past].copy_(qkv[0, 0, C + D:])
            y = self.attend(attn, qkv[0, 0, :C], buffer[i, 0, :past + 1], buffer[i, 1, :past + 1])
            x = x + self.product(attn.c_proj, y.reshape(1, 1, C))
            ln, mlp = block.ln_2, block.mlp
            h = F.layer_norm(x, (C,), ln.weight, ln.bias, ln.eps)
            x = x + self.product(mlp.c_proj, mlp.act(self.product(mlp.c_fc, h)))
        return x

    # -- a few tokens ----------------------------------------------------------------------

    def few_tokens(self, ids: torch.Tensor, kv: KVCache) -> torch.Tensor:
        """ids (1, T) of a few tokens after kv's tokens, computed as forward's general path
        computes them, through `product`; hidden states (1, T, C)."""
        body, cfg = self.model.transformer, self.model.config
        T, past = ids.shape[1], kv.length
        body.check_cache(kv, 1, past, T)
        body.check_token_ids(ids, "input_ids")
        kv.reserve(past + T)
        x = body.wte(ids) + body.wpe.weight[past:past + T]  # (1, T, C)
        mask = build_attention_mask(None, past, T, x.device)
        C = cfg.n_embd
        for module in body.h:
            block = cast(GPTBigCodeBlock, module)
            attn = block.attn
            q, k, v = attn.split_heads(self.product(attn.c_attn, block.ln_1(x)))
            past_k, past_v = kv.write(attn.layer_idx, past, k, v)
            if past:
                k, v = past_k, past_v  # (1, KVH, S, D)
            y = self.attend_few(attn, q, k, v, mask, past)
            x = x + self.product(attn.c_proj, y.transpose(1, 2).reshape(1, T, C))
            mlp = block.mlp
            x = x + self.product(mlp.c_proj, mlp.act(self.product(mlp.c_fc, block.ln_2(x))))
        kv.length = past + T
        return cast(torch.Tensor, body.ln_f(x))

    def attend_few(self, attn: GPTBigCodeAttention, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, mask: AttentionMask, past: int) -> torch.Tensor:
        """few_tokens' attention, on the backend forward would use; (1, H, T, D)."""
        backend = resolve_backend(self.model.transformer.attn_implementation, q)
        if backend == "eager":
            return attn.eager(q, k, v, mask, None)[0]
        if backend == "flash_attention_2":
            return attn.flash(q, k, v, mask)
        return attn.sdpa(q, k, v, mask)


def cpu_products_allowed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a faster CPU product may replace F.linear: weights and input of one dtype on
    the CPU, autocast off (it would want the product in another dtype)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype
            and not torch.is_autocast_enabled("cpu"))


# -- Inductor --------------------------------------------------------------------------------


def _row_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                 ) -> torch.Tensor:
    """(K,) x (N, K) -> (N,), accumulated in fp32, returned in x's dtype."""
    out = (weight.float() * x.float()).sum(-1)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@functools.cache
def compiled_row_product() -> Callable[..., torch.Tensor] | None:
    """The row product compiled by torch.compile, or None where it cannot be built here."""
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


class InductorDecoder(TorchDecoder):
    """TorchDecoder with one-row half-precision products as a broadcast multiply and a row
    sum compiled by Inductor (dynamic shapes, a few seconds per weight shape): torch's
    one-row bf16 matmul streams the weights at about a third of the memory's speed."""

    def __init__(self, model: GPTBigCodeForCausalLM) -> None:
        super().__init__(model)
        self.failed: set[int] = set()  # layers whose product could not be compiled

    @property
    def path(self) -> str:
        return "inductor"

    def product(self, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if (isinstance(linear, nn.Linear) and x.numel() == x.shape[-1] and x.dtype in HALF_DTYPES
                and cpu_products_allowed(x, linear.weight) and id(linear) not in self.failed):
            y = self.compiled(linear, x)
            if y is not None:
                return y.view(*x.shape[:-1], linear.out_features)
        return cast(torch.Tensor, linear(x))

    def compiled(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
        product = compiled_row_product()
        if product is None:
            return None
        try:
            # Detached, the weights are plain tensors: Dynamo keeps parameters' shapes static
            # and would compile anew for each weight shape, up to its recompile limit.
            bias = None if linear.bias is None else linear.bias.detach()
            return product(x.reshape(-1), linear.weight.detach(), bias)
        except Exception:  # e.g. the recompile limit, after many weight shapes
            log.info("compiled product failed for %s; F.linear from now on",
                     tuple(linear.weight.shape), exc_info=True)
            self.failed.add(id(linear))
            return None


# -- native CPU kernels ----------------------------------------------------------------------


def native_kind(model: GPTBigCodeForCausalLM, isa: str | None = None
                ) -> tuple[str | None, str]:
    """The native kernels that decode this model on `isa` (native.select_isa's choice by
    default): "bf16", "fp32", or "q8" for quantize_int8's layers with quantised activations in
    a bf16 model; or None and why not. (A NativeDecoder may run an fp32 model's blocks on
    half-precision copies of its matrices: its kind is then "bf16w" or "f16w".)"""
    weight = model.transformer.wte.weight
    dtype_name = str(weight.dtype).removeprefix("torch.")
    if weight.device.type != "cpu":
        return None, f"the native kernels run on the CPU; the model is on {weight.device}"
    if native.library(isa) is None:
        return None, native.unavailable_reason(isa)
    first = cast(GPTBigCodeBlock, model.transformer.h[0]).attn.c_attn
    if isinstance(first, Int8Linear):
        if weight.dtype != torch.bfloat16:
            return None, f"int8 layers run natively in bfloat16 models, this one is {dtype_name}"
        if not first.quantize_activations:
            return None, "int8 layers run natively with quantize_activations on"
        if native.int8_row_product_kernel(True, isa) is None:
            return None, "int8 layers run natively on AVX-512 only"
        return "q8", ""
    if native.row_product_kernel(weight.dtype, isa) is None:
        if weight.dtype == torch.bfloat16:
            return None, "bfloat16 kernels need a CPU with AVX512-BF16"
        return None, f"there are no native kernels for {dtype_name} weights"
    return ("bf16" if weight.dtype == torch.bfloat16 else "fp32"), ""


def native_weight_storage(weights: str = "auto") -> torch.dtype:
    """How a NativeDecoder stores an fp32 model's block matrices: `weights` ("fp32", "bf16",
    "f16", or "auto": $GPTBIGCODE_NATIVE_WEIGHTS if set, else native.weight_storage's choice
    for this CPU)."""
    if weights == "auto":
        weights = os.environ.get(native.WEIGHTS_ENV, "").strip().lower() or "auto"
    if weights == "auto":
        return native.weight_storage()
    if weights not in native.WEIGHT_FORMATS:
        raise ValueError(f"native weight storage {weights!r} is not one of "
                         f"{['auto', *native.WEIGHT_FORMATS]}")
    return native.WEIGHT_FORMATS[weights]


def native_blocks(model: GPTBigCodeForCausalLM, kind: str, isa: str | None = None,
                  matrices: list[dict[str, torch.Tensor]] | None = None) -> NativeBlocks | None:
    """The fused block kernel of `kind` on `isa` and, per block, its parameters; None where
    it does not apply (another activation, head size or layer type, or MHA). matrices: per
    block, the tensors to read in place of the layers' weights ("attn_w", ...), e.g. their
    half-precision copies for "bf16w" / "f16w"."""
    kernel = native.block_kernel(kind, isa)
    cfg = model.config
    if (kernel is None or not cfg.multi_query or cfg.activation_function != "gelu_pytorch_tanh"
            or cfg.head_dim not in native.ATTENTION_HEAD_DIMS or cfg.n_head > 48
            or cfg.inner_dim % 32 != 0):
        return None
    found: list[native.BlockParams] = []
    for index, module in enumerate(model.transformer.h):
        block = cast(GPTBigCodeBlock, module)
        attn, mlp = block.attn, block.mlp
        tensors: dict[str, torch.Tensor | None] = {
            "ln1_w": block.ln_1.weight, "ln1_b": block.ln_1.bias,
            "ln2_w": block.ln_2.weight, "ln2_b": block.ln_2.bias,
        }
        for name, linear in (("attn", attn.c_attn), ("proj", attn.c_proj),
                             ("fc", mlp.c_fc), ("out", mlp.c_proj)):
            if kind == "q8" and isinstance(linear, Int8Linear):
                tensors[f"{name}_w"], tensors[f"{name}_s"] = linear.weight_int8, linear.scales
            elif kind != "q8" and isinstance(linear, nn.Linear):
                tensors[f"{name}_w"] = linear.weight
            else:
                return None
            tensors[f"{name}_b"] = linear.bias
        if matrices is not None:
            tensors.update(matrices[index])
        params = kernel.params(tensors, block.ln_1.eps, block.ln_2.eps)
        if params is None:
            return None
        found.append(params)
    return kernel, found


class NativeDecoder(TorchDecoder):
    """model.native's C kernels for the CPU's instruction set (`isa`: AVX-512 or AVX2, see
    native.select_isa; bf16 needs AVX512-BF16, q8 AVX512-VNNI): they read the weights at the
    memory's speed where torch's one-row matmuls reach a third (bf16) to a half (fp32) of it.

    - a one-token step: each block one fused native call (layer norms, products, attention
      and GELU without a trip through Python per operation, rounding where torch's path
      rounds, the softmax in fp32); where the fused kernel does not apply, the blocks as
      tensor operations with native row products and, in bf16, native attention;
    - an fp32 model's fused blocks and lm_head may read half-precision copies of the
      matrices (`weights`: "fp32", "bf16", "f16" or "auto", native_weight_storage), widened
      to fp32 in the kernel: half the bytes per token where the CPU has no bf16 arithmetic,
      for half the matrices' size in memory more; kinds "f16w" / "bf16w";
    - lm_head and 2 to native.MAX_ROWS rows (a keystroke that retokenises into a few tokens
      after a cache) on native row products, each query of those few attending on the
      one-token attention kernel over the keys up to itself (SDPA with the causal mask
      this needs costs 3-4x as much on the CPU); in fp32, with fused blocks, as that many
      one-token steps;
    - anything longer through the model's forward, lm_head on the native products.

    `start` and `prefill` pick the kernels again after the model's weights moved or changed
    dtype. One scratch buffer per decoder: one decode at a time.
    """

    def __init__(self, model: GPTBigCodeForCausalLM, isa: str | None = None,
                 weights: str = "auto") -> None:
        super().__init__(model)
        # a named ISA this CPU lacks raises (native.IsaUnavailable) rather than run another
        self.isa = native.select_isa(isa) if isa is not None else native.active_isa()
        self.requested_weights = weights
        native_weight_storage(weights)  # a bad name fails here, not at refresh
        self.kind: str | None = None
        self.fused: NativeBlocks | None = None
        self.attention: native.Attention | None = None
        self.copies: list[dict[str, torch.Tensor]] = []  # per block, for "bf16w" / "f16w"
        self.lm_head_copy: torch.Tensor | None = None
        self.weights: tuple[object, ...] = ()
        self.work: torch.Tensor | None = None
        self.refresh()

    @property
    def path(self) -> str:
        return f"native-{self.kind}" if self.kind else "torch"

    def refresh(self) -> None:
        """Choose the kernels for the weights as they are now."""
        key = self.weights_key()
        if key == self.weights:
            return
        self.weights, self.work = key, None
        self.kind = native_kind(self.model, self.isa)[0]
        self.fused, self.copies, self.lm_head_copy = None, [], None
        if self.kind == "fp32":
            self.store_half(native_weight_storage(self.requested_weights))
        if self.kind and self.fused is None:
            self.fused = native_blocks(self.model, self.kind, self.isa)
        head_dim = self.model.config.head_dim
        self.attention = (native.attention_kernel(head_dim, self.isa)
                          if self.kind in ("bf16", "q8")
                          else native.fp32_attention_kernel(head_dim, self.isa)
                          if self.kind else None)

    def store_half(self, storage: torch.dtype) -> None:
        """Run the fused blocks and lm_head on copies of the matrices stored as `storage`
        where it is half precision and the fused kernel applies; f16 gives way to bf16 for
        weights beyond f16's range."""
        if storage == torch.float32:
            return
        layers = [(cast(GPTBigCodeBlock, b).attn, cast(GPTBigCodeBlock, b).mlp)
                  for b in self.model.transformer.h]
        linears = [{"attn_w": a.c_attn, "proj_w": a.c_proj, "fc_w": m.c_fc, "out_w": m.c_proj}
                   for a, m in layers]
        if not all(isinstance(x, nn.Linear) for d in linears for x in d.values()):
            return
        weights = [x.weight.detach() for d in linears for x in d.values()]
        if storage == torch.float16 and any(float(w.abs().max()) > F16_MAX for w in weights):
            storage = torch.bfloat16
        copies = [{name: cast(nn.Linear, x).weight.detach().to(storage).contiguous()
                   for name, x in d.items()} for d in linears]
        kind = "f16w" if storage == torch.float16 else "bf16w"
        fused = native_blocks(self.model, kind, self.isa, copies)
        if fused is None:
            return
        self.kind, self.fused, self.copies = kind, fused, copies
        head = self.model.lm_head
        if (isinstance(head, nn.Linear) and head.weight.stride(1) == 1
                and (storage == torch.bfloat16
                     or float(head.weight.detach().abs().max()) <= F16_MAX)):
            self.lm_head_copy = head.weight.detach().to(storage).contiguous()

    def weights_key(self) -> tuple[object, ...]:
        blocks = self.model.transformer.h
        first, last = cast(GPTBigCodeBlock, blocks[0]), cast(GPTBigCodeBlock, blocks[-1])
        tensors = (*first.parameters(), *first.buffers(), *last.parameters(), *last.buffers(),
                   *self.model.lm_head.parameters())
        # the version counter: an in-place load (load_state_dict) must renew the half copies
        return (id(first.attn.c_attn), id(last.mlp.c_proj),
                *((t.data_ptr(), t.dtype, t.device, 0 if t.is_inference() else t._version)
                  for t in tensors))

    def start(self, kv: KVCache) -> None:
        self.refresh()
        super().start(kv)

    def prefill(self, ids: torch.Tensor, kv: KVCache, logits_to_keep: int = 1) -> torch.Tensor:
        self.refresh()
        B, T = ids.shape
        if (B != 1 or T > native.MAX_ROWS or self.kind is None or self.model.training
                or (T == 1 and self.trimmed())):
            return super().prefill(ids, kv, logits_to_keep)
        with torch.inference_mode():
            if self.fused is not None and self.kind in native.FP32_KINDS and self.trimmed():
                # fp32 has no few-row kernel: T fused one-token steps read the weights T
                # times, still 2-3x faster than F.linear's few rows and the Python per block.
                hidden = torch.cat([self.one_token(ids[:, t:t + 1], kv) for t in range(T)], 1)
            else:
                hidden = self.few_tokens(ids, kv)
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
            return self.product(self.model.lm_head, hidden)

    # -- products and attention ------------------------------------------------------------

    def product(self, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(linear, nn.Linear) and cpu_products_allowed(x, linear.weight):
            rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
            weight, bias = linear.weight, linear.bias
            copy = self.lm_head_copy if linear is self.model.lm_head else None
            if copy is not None and rows == 1 and (bias is None or bias.is_contiguous()):
                half = native.half_weight_product_kernel(copy.dtype, self.isa)
                if half is not None:
                    y = half(x.reshape(-1).contiguous(), copy, bias)  # (N,)
                    return y.view(*x.shape[:-1], linear.out_features)
            kernel = (native.row_product_kernel(x.dtype, self.isa)
                      if 0 < rows <= native.MAX_ROWS else None)
            if kernel is not None and native.supports(weight, bias):
                if rows == 1:
                    y = kernel(x.reshape(-1).contiguous(), weight, bias)  # (N,)
                    return y.view(*x.shape[:-1], linear.out_features)
                few = (native.rows_product_kernel(self.isa) if x.dtype == torch.bfloat16
                       else None)
                if few is not None:
                    y = few(x.reshape(rows, -1).contiguous(), weight, bias)  # (M, N)
                    return y.view(*x.shape[:-1], linear.out_features)
        return cast(torch.Tensor, linear(x))  # Int8Linear runs its own native kernels

    def attend(self, attn: GPTBigCodeAttention, q: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> torch.Tensor:
        dtype = torch.bfloat16 if self.kind in ("bf16", "q8") else torch.float32
        if self.attention is None or q.dtype != dtype or keys.dtype != dtype:
            return super().attend(attn, q, keys, values)
        return self.attention(q.view(attn.num_heads, attn.head_dim), keys, values, attn.scale)

    def blocks(self, x: torch.Tensor, kv: KVCache, past: int) -> torch.Tensor:
        if self.fused is None or torch.is_autocast_enabled("cpu"):
            return super().blocks(x, kv, past)
        cfg = self.model.config
        kernel, blocks = self.fused
        if self.work is None:
            size = kernel.work_bytes(cfg.n_head, cfg.head_dim, cfg.inner_dim, cfg.n_positions)
            self.work = torch.empty(size, dtype=torch.uint8)
        x = x.reshape(-1).clone()  # the residual stream, updated in place
        buffer = kv.buffer  # (L, 2, 1, 1, capacity, D)
        base, item = buffer.data_ptr(), buffer.element_size()
        layer_stride, kind_stride = buffer.stride(0) * item, buffer.stride(1) * item
        scale = cast(GPTBigCodeBlock, self.model.transformer.h[0]).attn.scale
        for i, params in enumerate(blocks):
            k_rows = base + i * layer_stride
            kernel(params, x, k_rows, k_rows + kind_stride, buffer.stride(4), past,
                   cfg.n_head, cfg.head_dim, cfg.inner_dim, scale, self.work)
        return x.view(1, 1, cfg.n_embd)

    def attend_few(self, attn: GPTBigCodeAttention, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, mask: AttentionMask, past: int) -> torch.Tensor:
        # A few tokens after a cache attend one query at a time on the native kernel.
        if (self.attention is None or past == 0 or q.shape[2] == 1 or not attn.multi_query
                or attn.num_heads > 48 or q.dtype != torch.bfloat16
                or self.model.transformer.attn_implementation == "eager"
                or torch.is_autocast_enabled("cpu")):
            return super().attend_few(attn, q, k, v, mask, past)
        return self.attend_rows(attn, q, k, v, past)

    def attend_rows(self, attn: GPTBigCodeAttention, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, past: int) -> torch.Tensor:
        """q (1, H, T, D) against the cached and new keys (1, 1, past + T, D): query t sees
        the keys up to position past + t; (1, H, T, D)."""
        assert self.attention is not None
        T = q.shape[2]
        keys, values = k[0, 0], v[0, 0]  # (S, D)
        rows = [self.attention(q[0, :, t].contiguous(), keys[: past + t + 1],
                               values[: past + t + 1], attn.scale) for t in range(T)]
        return torch.stack(rows, dim=1)[None]  # (1, H, T, D)


# -- the choice ------------------------------------------------------------------------------


def inductor_problem(model: GPTBigCodeForCausalLM) -> str:
    """Why the Inductor path cannot run for this model ("" where it can)."""
    weight = model.transformer.wte.weight
    if weight.device.type != "cpu":
        return f"the Inductor row product runs on the CPU; the model is on {weight.device}"
    if weight.dtype not in HALF_DTYPES:
        dtype_name = str(weight.dtype).removeprefix("torch.")
        return f"the Inductor row product is for float16 or bfloat16 models, not {dtype_name}"
    if compiled_row_product() is None:
        return "torch.compile cannot build the row product here (the log says why)"
    return ""


def auto_path(model: GPTBigCodeForCausalLM) -> str:
    """CUDA graphs on a GPU; on a CPU the native kernels where they apply, else Inductor for
    half-precision models of 50M parameters or more, else PyTorch."""
    device = model.transformer.wte.weight.device
    if device.type == "cuda":
        return "cuda-graph"
    if native_kind(model)[0] is not None:
        return "native"
    large = model.num_parameters() >= AUTO_COMPILE_PARAMETERS
    if large and model.dtype in HALF_DTYPES and not inductor_problem(model):
        return "inductor"
    return "torch"


def make_decoder(model: GPTBigCodeForCausalLM, path: str = "auto", isa: str | None = None,
                 weights: str = "auto") -> Decoder:
    """The decoder of `path` (DECODE_PATHS; "auto": `auto_path`) for the model as it is now.
    An explicit path that cannot run raises DecodePathUnavailable saying why. isa and weights
    go to the native path (NativeDecoder): the instruction set (native.select_isa) and how an
    fp32 model's matrices are stored for it."""
    if path not in DECODE_PATHS:
        raise DecodePathUnavailable(f"decode path {path!r} is not one of {list(DECODE_PATHS)}")
    if path == "auto":
        path = auto_path(model)
    if path == "torch":
        return TorchDecoder(model)
    if path == "native":
        kind, why = native_kind(model, isa)
        if kind is None:
            raise DecodePathUnavailable(f"the native decode path cannot run: {why}")
        return NativeDecoder(model, isa, weights)
    if path == "inductor":
        why = inductor_problem(model)
        if why:
            raise DecodePathUnavailable(f"the inductor decode path cannot run: {why}")
        return InductorDecoder(model)
    try:
        return GraphDecoder(model, graph=True)
    except RuntimeError as exc:
        raise DecodePathUnavailable(f"the cuda-graph decode path cannot run: {exc}") from None
