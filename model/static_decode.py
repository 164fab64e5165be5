"""The CUDA-graph decode path: one-token steps on static buffers, replayed from a graph."""

# On a GPU a small model's decode step is bound by launching its few hundred kernels, not by
# the kernels: a CUDA graph records the launches once and replays them in one call. A graph
# replays fixed kernels on fixed addresses, so the step here touches nothing that moves:
#
# - the token and its position live in a device tensor that each step overwrites;
# - keys and values go to one workspace buffer of the model's full length, at the position
#   read from that tensor (`index_copy_`), never at a host-side slice;
# - which keys count is decided on the device too: a mask over the workspace (SDPA), or
#   flash-attn's `cache_seqlens` (`flash_attn_with_kvcache`, which writes the new row in
#   place and reads only the filled part);
# - SDPA attends over a span of the workspace, the smallest power of two (at least
#   `min_span`) that holds the position, with one graph captured per span: attending over
#   the whole workspace made a step of an 8,192-position model cost its full length
#   (fp32 on an H200: 20.5 ms a token, against 4.4 ms for eager steps);
# - the logits come out in the graph's own output tensor.
#
# A document's KVCache is copied into the workspace when its generation starts
# (`GraphDecoder.start`) and each new row is copied back after its step, so the document's
# cache ends exactly as TorchDecoder's steps would leave it. On the CPU (or with graph=False)
# the same step runs eagerly, which is how the tests check its arithmetic without a GPU.

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from .kv_cache import KVCache
from .modeling import HALF_DTYPES, flash_attn_available

if TYPE_CHECKING:
    from .modeling import GPTBigCodeAttention, GPTBigCodeBlock, GPTBigCodeForCausalLM

log = logging.getLogger(__name__)

ATTENTION_KINDS = ("sdpa", "flash")


def default_attention(model: GPTBigCodeForCausalLM) -> str:
    """flash-attn's kv-cache entry point for CUDA half models where it is installed and the
    model does not ask for another backend; masked SDPA otherwise."""
    weight = model.transformer.wte.weight
    requested = model.transformer.attn_implementation
    usable = weight.is_cuda and weight.dtype in HALF_DTYPES and flash_attn_available()
    return "flash" if usable and requested in (None, "flash_attention_2") else "sdpa"


class GraphDecoder:
    """Decode steps of one model on static buffers (see the comment above), batch size one;
    model.decoders' Decoder protocol.

        decoder = GraphDecoder(model)   # graph: captured on the first CUDA step
        decoder.prefill(ids, kv)        # the prompt, through the model's forward
        decoder.start(kv)               # after the prompt is in kv
        logits = decoder.step(token)    # (vocab,), valid until the next step

    One generation at a time: `start` hands the workspace to another cache.
    """

    def __init__(self, model: GPTBigCodeForCausalLM, *, graph: bool | None = None,
                 attention: str | None = None, min_span: int = 256) -> None:
        weight = model.transformer.wte.weight
        if attention is None:
            attention = default_attention(model)
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention {attention!r} is not one of {list(ATTENTION_KINDS)}")
        if attention == "flash" and not (
            weight.is_cuda and weight.dtype in HALF_DTYPES and flash_attn_available()
        ):
            raise RuntimeError(
                "attention='flash' needs the flash-attn package and a float16 or bfloat16 "
                f"model on a CUDA device; this one is {weight.dtype} on {weight.device}"
            )
        if graph is None:
            graph = weight.is_cuda
        if graph and not weight.is_cuda:
            raise RuntimeError(f"CUDA graphs need a model on a CUDA device, not {weight.device}")
        if min_span < 1:
            raise ValueError(f"min_span must be at least 1, got {min_span}")
        self.model = model
        self.attention = attention
        self.use_graph = graph
        self.min_span = min_span
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # by span
        self.outputs: dict[int, torch.Tensor] = {}  # each graph's logits
        self.graph: torch.cuda.CUDAGraph | None = None  # the last one replayed
        self.pool: Any = None  # torch.cuda.graph_pool_handle(), made at the first capture
        self.kv: KVCache | None = None
        self.allocate()

    def allocate(self) -> None:
        """The static buffers, in the model's dtype and on its device as they are now."""
        config, weight = self.model.config, self.model.transformer.wte.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.workspace = KVCache(config, 1, config.n_positions, dtype=self.dtype,
                                 device=self.device)
        self.inputs = torch.zeros(2, dtype=torch.long, device=self.device)  # token, position
        self.key_positions = torch.arange(config.n_positions, device=self.device)
        self.weights = self._weights_key()

    def _weights_key(self) -> tuple[int, torch.dtype, torch.device]:
        weight = self.model.transformer.wte.weight
        return weight.data_ptr(), weight.dtype, weight.device

    @property
    def path(self) -> str:
        return "cuda-graph" if self.use_graph else "static"

    def span(self, position: int) -> int:
        """How much of the workspace a step at `position` attends over: the smallest power of
        two above it, at least min_span, at most n_positions (flash-attn reads only the filled
        part whatever the span, so it keeps one graph)."""
        limit = self.model.config.n_positions
        if self.attention == "flash":
            return limit
        return min(limit, max(self.min_span, 1 << position.bit_length()))

    # -- a generation ---------------------------------------------------------------------

    def prefill(self, ids: torch.Tensor, kv: KVCache, logits_to_keep: int = 1) -> torch.Tensor:
        """Run ids (1, T) after kv's tokens through the model's forward; logits (1, n, V)."""
        with torch.inference_mode():
            out = self.model(ids, past_key_values=kv, use_cache=True,
                             logits_to_keep=logits_to_keep)
            return out.logits

    def start(self, kv: KVCache) -> None:
        """Take over `kv` (its prompt already in it): copy its filled part to the workspace."""
        if self._weights_key() != self.weights:
            self.reset()  # the model moved or changed dtype: new buffers, a new graph
        if kv.batch_size != 1:
            raise ValueError(f"GraphDecoder decodes one sequence, the cache has {kv.batch_size}")
        if kv.dtype != self.dtype or kv.device != self.device:
            raise ValueError(
                f"the cache is {kv.dtype} on {kv.device} but the model is {self.dtype} on "
                f"{self.device}; make the KVCache with the model's dtype and device"
            )
        n = kv.length
        with torch.inference_mode():
            self.workspace.buffer[:, :, :, :, :n].copy_(kv.buffer[:, :, :, :, :n])
        self.workspace.length = n
        self.kv = kv

    def step(self, token: int) -> torch.Tensor:
        """Append `token` to the started cache; the next token's logits (vocab,)."""
        kv = self.kv
        if kv is None:
            raise RuntimeError("GraphDecoder.step before start(kv)")
        position = self.workspace.length
        if kv.length != position:
            raise RuntimeError(
                f"the cache holds {kv.length} tokens but {position} were decoded here: it was "
                "changed since start(kv); call start again"
            )
        limit = self.model.config.n_positions
        if position >= limit:
            raise ValueError(f"the cache is full: {position} tokens, n_positions is {limit}")
        if not 0 <= token < self.model.config.vocab_size:
            raise ValueError(
                f"token id {token} is outside [0, {self.model.config.vocab_size}) (vocab_size)"
            )
        # Under inference mode: caches filled by the server's prefill are inference tensors.
        with torch.inference_mode():
            self.inputs.copy_(torch.tensor([token, position]))
            span = self.span(position)
            logits = self._replay(span) if self.use_graph else self.compute(span)
            kv.reserve(position + 1)
            kv.buffer[:, :, :, :, position].copy_(self.workspace.buffer[:, :, :, :, position])
        kv.length = self.workspace.length = position + 1
        return logits

    def reset(self) -> None:
        """Forget the graph, the buffers and the cache being decoded (after the model's
        weights moved): the next step captures anew."""
        if self.use_graph and not self.model.transformer.wte.weight.is_cuda:
            raise RuntimeError("the model left its CUDA device: make a new GraphDecoder")
        self.graphs, self.outputs, self.graph, self.pool, self.kv = {}, {}, None, None, None
        self.allocate()

    # -- the step -------------------------------------------------------------------------

    def compute(self, span: int | None = None) -> torch.Tensor:
        """The step on the static buffers: logits (vocab,) of the token in `inputs`, attending
        over the workspace's first `span` positions (all of them by default), which must
        include the token's."""
        body = self.model.transformer
        span = self.model.config.n_positions if span is None else span
        position = self.inputs[1:]  # (1,)
        x = body.wte(self.inputs[:1].view(1, 1)) + body.wpe(position)  # (1, 1, C)
        allowed = (self.key_positions[:span] <= position).view(1, 1, 1, -1)  # (1, 1, 1, span)
        seqlens = position.to(torch.int32)  # flash-attn: cached tokens before this one
        for i, module in enumerate(body.h):
            block = cast("GPTBigCodeBlock", module)
            attn = block.attn
            # q (1, H, 1, D); k, v (1, KVH, 1, D)
            q, k, v = attn.split_heads(attn.c_attn(block.ln_1(x)))
            if self.attention == "flash":
                y = self.flash(i, attn, q, k, v, seqlens)
            else:
                y = self.sdpa(i, attn, q, k, v, position, allowed)
            x = x + attn.c_proj(y)
            x = x + block.mlp(block.ln_2(x))
        return self.model.lm_head(body.ln_f(x))[0, 0]  # (V,)

    def sdpa(self, layer: int, attn: GPTBigCodeAttention, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, position: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Write the row at `position`, attend over the workspace's first allowed.shape[-1]
        positions with those after it masked; (1, 1, C)."""
        keys, values = self.workspace.buffer[layer, 0], self.workspace.buffer[layer, 1]
        keys.index_copy_(2, position, k)  # keys, values: (1, KVH, capacity, D)
        values.index_copy_(2, position, v)
        span = allowed.shape[-1]
        keys, values = keys[:, :, :span], values[:, :, :span]
        H, D = attn.num_heads, attn.head_dim
        if attn.multi_query:
            q = q.reshape(1, 1, H, D)  # heads folded into the query axis against one K/V head
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=attn.scale)
        return y.reshape(1, 1, H * D)  # T = 1: (1, H, 1, D) and (1, 1, H, D) read the same

    def flash(self, layer: int, attn: GPTBigCodeAttention, q: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor:
        """flash-attn's kv-cache entry point: it writes the row at `seqlens` and reads only
        the filled part; (1, 1, C)."""
        from flash_attn import flash_attn_with_kvcache

        keys, values = self.workspace.buffer[layer, 0], self.workspace.buffer[layer, 1]
        # flash-attn's layout is (B, S, KVH, D): a transposed view of ours, D still contiguous.
        y = flash_attn_with_kvcache(
            q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
            k=k.transpose(1, 2), v=v.transpose(1, 2), cache_seqlens=seqlens,
            softmax_scale=attn.scale, causal=True,
        )  # (1, 1, H, D)
        return y.reshape(1, 1, attn.num_heads * attn.head_dim)

    # -- the graph ------------------------------------------------------------------------

    def _replay(self, span: int) -> torch.Tensor:
        if span not in self.graphs:
            self.capture(span)
        self.graph = self.graphs[span]
        self.graph.replay()
        return self.outputs[span]

    def capture(self, span: int) -> None:
        """Record the step over `span` positions as a CUDA graph. Warm-up runs on a side
        stream first (lazy initialisation must not happen during capture); they write the
        current position's row, which the replay writes again."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                self.compute(span)
        current.wait_stream(side)
        if self.pool is None:  # one memory pool for every span's graph: they never overlap
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.outputs[span] = self.compute(span)
        self.graphs[span] = graph
        log.info("decode step over %d positions captured as a CUDA graph (%s attention)", span,
                 self.attention)
