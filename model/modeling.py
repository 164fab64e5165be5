"""GPTBigCode (SantaCoder / StarCoder) in PyTorch, interchangeable with transformers 4.56.2:
the readable reference model; the decode paths live in model.decoders."""

# Read top to bottom: activations, outputs, attention (multi-query and multi-head, three
# backends), MLP, block, the backbone, and the three heads. Parameter names equal the Hugging
# Face checkpoint names, so state dicts move between the two without renaming.

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .config import GPTBigCodeConfig
from .kv_cache import KVCache

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
HALF_DTYPES = (torch.float16, torch.bfloat16)
FLASH_ATTN_MISSING = (
    "attn_implementation='flash_attention_2' needs the flash-attn package "
    "(pip install 'gptbigcode-lsp[flash-attn]')"
)


# -- activations ----------------------------------------------------------------------------


class NewGELU(nn.Module):
    """GPT-2's tanh approximation of GELU, written out as transformers' `gelu_new` is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def make_activation(name: str) -> nn.Module:
    activations: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "silu": nn.SiLU,
        "gelu": nn.GELU,
        "tanh": nn.Tanh,
        "gelu_new": NewGELU,
        "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    }
    return activations[name]()


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


# -- outputs --------------------------------------------------------------------------------


class ModelOutput:
    """Field access by name (`out.logits`, `out["logits"]`) or position, None fields skipped."""

    def to_tuple(self) -> tuple[Any, ...]:
        values = (getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]
        return tuple(v for v in values if v is not None)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Any:
        return iter(self.keys())

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]  # type: ignore[arg-type]


@dataclass
class BaseModelOutputWithPast(ModelOutput):
    last_hidden_state: torch.Tensor
    past_key_values: KVCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutputWithPast(CausalLMOutputWithPast):
    pass


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# -- attention ------------------------------------------------------------------------------


@dataclass
class AttentionMask:
    """Which keys each query may see, built once per forward for every layer.

    `allowed` is (B, 1, T, S) bool, or None when plain causal order (aligned to the end of
    the keys) is all there is: then `is_causal` says whether T > 1 needs the triangle.
    `causal_only`: no padding; `allowed`, where given, is the causal triangle after a cache.
    """

    allowed: torch.Tensor | None
    is_causal: bool
    causal_only: bool = False


def build_attention_mask(
    padding: torch.Tensor | None, past: int, length: int, device: torch.device
) -> AttentionMask:
    """Combine causal order with a (B, past+T) padding mask; padded rows never give NaN."""
    causal_only = padding is None
    if padding is None:
        if past == 0 or length == 1:
            return AttentionMask(None, is_causal=length > 1, causal_only=True)
        padding = torch.ones(1, past + length, dtype=torch.bool, device=device)
    total = past + length
    query_pos = torch.arange(past, total, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(total, device=device)[None, :]  # (1, S)
    causal = key_pos <= query_pos  # (T, S)
    allowed = causal[None, None] & padding.bool()[:, None, None, :]  # (B, 1, T, S)
    # A query with nothing to see (a pad token on the left) attends everywhere: its output
    # is ignored, and this keeps the softmax finite.
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return AttentionMask(allowed, is_causal=False, causal_only=causal_only)


class GPTBigCodeAttention(nn.Module):
    """Self-attention with one shared key/value head (multi-query) or one per head."""

    def __init__(self, config: GPTBigCodeConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.multi_query = config.multi_query
        self.embed_dim = config.n_embd
        self.num_heads = config.n_head
        self.head_dim = config.head_dim
        self.kv_dim = config.kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        self.softmax_in_fp32 = config.attention_softmax_in_fp32
        self.scale_softmax_in_fp32 = (
            config.scale_attention_softmax_in_fp32 and config.attention_softmax_in_fp32
        )
        self.attn_pdrop = config.attn_pdrop
        # Checkpoint layouts: MQA [q (C) | k (D) | v (D)]; MHA per head [q_h | k_h | v_h].
        self.c_attn = nn.Linear(self.embed_dim, self.embed_dim + 2 * self.kv_dim)
        self.c_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_attn's output (B, T, C + 2 * kv_dim) as q (B, H, T, D) and k, v (B, KVH, T, D)."""
        B, T, _ = qkv.shape
        H, D = self.num_heads, self.head_dim
        if self.multi_query:
            q, k, v = qkv.split((self.embed_dim, D, D), dim=-1)
            q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            return q, k.unsqueeze(1), v.unsqueeze(1)  # k, v: (B, 1, T, D)
        qkv = qkv.view(B, T, H, 3 * D).transpose(1, 2)  # (B, H, T, 3D)
        q, k, v = qkv.split(D, dim=-1)  # each (B, H, T, D)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        backend: str,
        cache: KVCache | None = None,
        start: int = 0,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        q, k, v = self.split_heads(self.c_attn(x))
        if cache is not None:
            # The buffers are written in place layer after layer, which would invalidate
            # views saved for backward: store detached values, and with nothing cached before
            # attend to this call's own keys and values.
            past_k, past_v = cache.write(self.layer_idx, start, k.detach(), v.detach())
            if start:
                k, v = past_k, past_v  # (B, KVH, S, D)
        weights = None
        if backend == "eager" or output_attentions or head_mask is not None:
            y, weights = self.eager(q, k, v, mask, head_mask)
        elif backend == "flash_attention_2":
            y = self.flash(q, k, v, mask)
        else:
            y = self.sdpa(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), weights if output_attentions else None

    def eager(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        head_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention written out: the path that honours head_mask and returns the weights."""
        upcast = self.softmax_in_fp32 and q.dtype in HALF_DTYPES
        # Dividing by the layer number before the fp32 softmax and multiplying back keeps
        # half-precision scores in range; the result is plain softmax(QK^T / sqrt(D)).
        unscale = self.layer_idx + 1 if upcast and self.scale_softmax_in_fp32 else 1
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.scale / unscale)  # (B, H, T, S)
        if upcast:
            scores = scores.float() * unscale
        allowed = mask.allowed
        if allowed is None and mask.is_causal:
            T, S = scores.shape[-2:]
            allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1).to(v.dtype)
        weights = F.dropout(weights, p=self.attn_pdrop, training=self.training)
        if head_mask is not None:
            weights = weights * head_mask.view(1, -1, 1, 1).to(weights.dtype)
        return torch.matmul(weights, v), weights  # (B, H, T, D), (B, H, T, S)

    def sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask
    ) -> torch.Tensor:
        B, H, T, D = q.shape
        dropout = self.attn_pdrop if self.training else 0.0
        if self.multi_query and not mask.is_causal and T <= 32:
            # Every head reads the same K/V: fold heads into the query axis instead of
            # copying K/V per head. Rows become (h, t) pairs.
            qf = q.reshape(B, 1, H * T, D)
            allowed = mask.allowed
            if allowed is not None:
                allowed = allowed[:, :, None].expand(B, 1, H, T, -1).reshape(B, 1, H * T, -1)
            y = F.scaled_dot_product_attention(
                qf, k, v, attn_mask=allowed, dropout_p=dropout, scale=self.scale
            )
            return y.view(B, H, T, D)
        if self.multi_query:
            S = k.shape[2]
            k, v = k.expand(B, H, S, D), v.expand(B, H, S, D)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.allowed, dropout_p=dropout, is_causal=mask.is_causal,
            scale=self.scale,
        )

    def flash(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask
    ) -> torch.Tensor:
        if mask.allowed is not None:
            # flash-attn takes no dense mask; padded batches use SDPA, which gives the same result.
            return self.sdpa(q, k, v, mask)
        from flash_attn import flash_attn_func

        # flash-attn wants (B, T, H, D) and aligns the causal triangle to the end of the
        # keys, which is what a continuation from a cache needs. The plain scale is passed:
        # no layer-number division here (that trick is for the fp32 softmax only).
        y = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            dropout_p=self.attn_pdrop if self.training else 0.0,
            softmax_scale=self.scale, causal=mask.is_causal,
        )
        return y.transpose(1, 2)  # (B, H, T, D)


class GPTBigCodeMLP(nn.Module):
    def __init__(self, config: GPTBigCodeConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_dim)
        self.act = make_activation(config.activation_function)
        self.c_proj = nn.Linear(config.inner_dim, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPTBigCodeBlock(nn.Module):
    def __init__(self, config: GPTBigCodeConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPTBigCodeAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPTBigCodeMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        backend: str,
        cache: KVCache | None,
        start: int,
        head_mask: torch.Tensor | None,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(
            self.ln_1(x), mask, backend, cache, start, head_mask, output_attentions
        )
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, weights


# -- shared plumbing ------------------------------------------------------------------------


class GPTBigCodePreTrainedModel(nn.Module):
    """Weight initialisation, checkpoint loading and saving, shared by the four classes."""

    # Head parameters a checkpoint of another class may lack (initialised fresh) or carry
    # (ignored), e.g. a causal-LM checkpoint loaded for classification.
    head_keys: tuple[str, ...] = ()
    foreign_head_keys = ("lm_head.weight", "score.weight", "classifier.weight", "classifier.bias")
    config: GPTBigCodeConfig
    name_or_path: str = ""

    def init_weights(self, module: nn.Module) -> None:
        """GPT-2's scheme, as transformers initialises GPTBigCode."""
        std = self.config.initializer_range
        if isinstance(module, GPTBigCodeMLP | GPTBigCodeAttention):
            # `apply` visits children first: c_proj was set up as a Linear; rescale it for
            # the residual path's depth.
            module.c_proj.weight.data.normal_(0.0, std / math.sqrt(2 * self.config.n_layer))
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def post_init(self) -> None:
        if next(self.parameters()).device.type == "meta":
            return
        self.apply(self.init_weights)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Point lm_head at the token embedding when the config ties them."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        **config_overrides: Any,
    ) -> Any:
        """Load a Hugging Face checkpoint folder, a model id from the local hub cache, or
        "default" (the packaged checkpoint). Weights are read from safetensors only."""
        folder = checkpoint.resolve_checkpoint(path_or_id, revision=revision)
        config = GPTBigCodeConfig.from_pretrained(folder)
        for key, value in config_overrides.items():
            if not hasattr(config, key):
                raise TypeError(f"from_pretrained() got an unknown argument {key!r}")
            setattr(config, key, value)
        if "num_labels" in config_overrides:
            config.id2label = {i: f"LABEL_{i}" for i in range(config.num_labels or 2)}
        config.validate()
        if dtype == "auto":
            dtype = config.torch_dtype or torch.float32
        torch_dtype = checkpoint.parse_dtype(dtype) or torch.float32
        with torch.device("meta"):
            model = cls(config, attn_implementation=attn_implementation)
        state = checkpoint.read_state_dict(folder)
        optional = set(cls.head_keys)
        if config.tie_word_embeddings:
            optional.add("lm_head.weight")
        try:
            report = checkpoint.load_into(
                model,
                state,
                optional=optional,
                optional_unexpected=set(cls.foreign_head_keys) - set(cls.head_keys),
                dtype=torch_dtype,
                device=torch.device(device) if device is not None else torch.device("cpu"),
                init_missing=model.init_missing,
            )
        except checkpoint.CheckpointError as exc:
            raise checkpoint.CheckpointError(f"{folder}: {exc}") from None
        model.tie_weights()
        fresh = [k for k in report.missing_optional
                 if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if fresh:
            log.info("%s: newly initialised: %s", folder, ", ".join(fresh))
        model.name_or_path = str(path_or_id)
        return model.eval()

    def init_missing(self, owner: nn.Module, key: str) -> None:
        """Initialise the module owning a tensor the checkpoint lacked (a new head)."""
        self.init_weights(owner)

    def save_pretrained(
        self, folder: str | Path, *, max_shard_size: int | str | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write config.json and safetensors weights that transformers 4.56.2 loads."""
        if not safe_serialization:
            raise ValueError("only safetensors are written; pickle checkpoints are not supported")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.extra["architectures"] = [type(self).__name__]
        self.config.torch_dtype = str(self.dtype).removeprefix("torch.")
        self.config.save_pretrained(folder)
        state = {k: v.detach() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        checkpoint.write_state_dict(state, folder, max_shard_size=max_shard_size)


def resolve_backend(requested: str | None, x: torch.Tensor) -> str:
    """The attention backend for this call: flash-attn only for CUDA half tensors."""
    if requested is None:
        if x.is_cuda and x.dtype in HALF_DTYPES and flash_attn_available():
            return "flash_attention_2"
        return "sdpa"
    if requested == "flash_attention_2":
        if not flash_attn_available():
            raise RuntimeError(FLASH_ATTN_MISSING)
        if not x.is_cuda or x.dtype not in HALF_DTYPES:
            raise RuntimeError(
                "flash_attention_2 runs on CUDA tensors in float16 or bfloat16, got "
                f"{x.device.type} {str(x.dtype).removeprefix('torch.')}; use 'sdpa' otherwise"
            )
    return requested


# -- the backbone ---------------------------------------------------------------------------


class GPTBigCodeModel(GPTBigCodePreTrainedModel):
    """Embeddings, the stack of blocks and the final layer norm; returns hidden states."""

    def __init__(self, config: GPTBigCodeConfig, attn_implementation: str | None = None) -> None:
        super().__init__()
        if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation {attn_implementation!r} is not one of "
                f"{list(ATTN_IMPLEMENTATIONS)} (or None for the best available)"
            )
        if attn_implementation == "flash_attention_2" and not flash_attn_available():
            raise RuntimeError(FLASH_ATTN_MISSING)
        self.config = config
        self.attn_implementation = attn_implementation
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPTBigCodeBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            self.check_token_ids(input_ids, "input_ids")
            B, T = input_ids.shape
        else:
            assert inputs_embeds is not None
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.n_embd:
                raise ValueError(
                    f"inputs_embeds must be (batch, length, {cfg.n_embd}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            B, T = inputs_embeds.shape[:2]
        if T == 0:
            raise ValueError("input has no tokens")
        use_cache = cfg.use_cache if use_cache is None else use_cache
        cache = past_key_values
        past = 0 if cache is None else cache.length
        self.check_cache(cache, B, past, T)
        if cache is None and use_cache:
            cache = KVCache(cfg, B, capacity=T, dtype=self.wte.weight.dtype, device=self.device)
        if cache is not None:
            cache.reserve(past + T)

        padding = self.check_attention_mask(attention_mask, B, past, T)
        if position_ids is None:
            position_ids = self.positions_from_mask(padding, past, T, B)
        elif position_ids.shape[-1] != T:
            raise ValueError(f"position_ids has length {position_ids.shape[-1]}, input has {T}")
        elif position_ids.numel() and (
            int(position_ids.min()) < 0 or int(position_ids.max()) >= cfg.n_positions
        ):
            raise ValueError(
                f"position_ids must be in [0, {cfg.n_positions}) (n_positions), got values "
                f"from {int(position_ids.min())} to {int(position_ids.max())}"
            )
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            self.check_token_ids(token_type_ids, "token_type_ids")
            x = x + self.wte(token_type_ids.view(-1, T))
        x = self.drop(x)

        if padding is not None and bool(padding.all()):
            padding = None
        mask = build_attention_mask(padding, past, T, x.device)
        backend = resolve_backend(self.attn_implementation, x)
        head_masks = self.per_layer_head_mask(head_mask)
        all_hidden: list[torch.Tensor] = []
        all_attn: list[torch.Tensor] = []
        for i, block in enumerate(self.h):
            if output_hidden_states:
                all_hidden.append(x)
            x, weights = block(
                x, mask, backend, cache, past, head_masks[i], bool(output_attentions)
            )
            if output_attentions:
                assert weights is not None
                all_attn.append(weights)
        x = self.ln_f(x)
        if output_hidden_states:
            all_hidden.append(x)
        if cache is not None:
            cache.length = past + T
        out = BaseModelOutputWithPast(
            last_hidden_state=x,
            past_key_values=cache if use_cache or past_key_values is not None else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )
        return out if return_dict is not False else out.to_tuple()

    def check_cache(self, cache: KVCache | None, batch: int, past: int, length: int) -> None:
        """Refuse `length` new tokens of `batch` rows after `past` cached ones that do not fit
        the model's positions or a cache of another batch size, dtype or device."""
        n_positions = self.config.n_positions
        if past + length > n_positions:
            raise ValueError(
                f"input of {past + length} tokens ({past} cached + {length} new) exceeds the "
                f"model's n_positions ({n_positions})"
            )
        if cache is None:
            return
        if cache.batch_size != batch:
            raise ValueError(f"past_key_values holds {cache.batch_size} rows, input has {batch}")
        weight = self.wte.weight
        if cache.dtype != weight.dtype or cache.device != weight.device:
            raise ValueError(
                f"past_key_values is {cache.dtype} on {cache.device} but the model is "
                f"{weight.dtype} on {weight.device}; make the KVCache with the model's dtype "
                "and device"
            )

    def check_token_ids(self, ids: torch.Tensor, name: str) -> None:
        if ids.dim() != 2:
            raise ValueError(f"{name} must be (batch, length), got shape {tuple(ids.shape)}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer token ids, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            bad = ((ids < 0) | (ids >= self.config.vocab_size)).nonzero()[0].tolist()
            raise ValueError(
                f"{name} holds token id {int(ids[bad[0], bad[1]])} at {bad}, outside "
                f"[0, {self.config.vocab_size}) (vocab_size)"
            )

    def check_attention_mask(
        self, mask: torch.Tensor | None, batch: int, past: int, length: int
    ) -> torch.Tensor | None:
        """The (B, past+T) mask, or None; a (B, T) mask is accepted when nothing is cached."""
        if mask is None:
            return None
        if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] != past + length:
            raise ValueError(
                f"attention_mask must be (batch={batch}, past+new={past + length}), "
                f"got {tuple(mask.shape)}"
            )
        return mask

    def positions_from_mask(
        self, padding: torch.Tensor | None, past: int, length: int, batch: int
    ) -> torch.Tensor:
        """Positions count real tokens only: a left-padded row starts at 0 like an unpadded one."""
        if padding is None:
            return torch.arange(past, past + length, device=self.device)[None].expand(batch, -1)
        positions = padding.long().cumsum(-1) - 1
        positions.masked_fill_(padding == 0, 1)
        return positions[:, past : past + length]

    def per_layer_head_mask(self, head_mask: torch.Tensor | None) -> list[torch.Tensor | None]:
        n_layer, n_head = self.config.n_layer, self.config.n_head
        if head_mask is None:
            return [None] * n_layer
        if head_mask.dim() == 1 and head_mask.shape[0] == n_head:
            return [head_mask] * n_layer
        if head_mask.dim() == 2 and tuple(head_mask.shape) == (n_layer, n_head):
            return list(head_mask)
        raise ValueError(
            f"head_mask must be ({n_head},) or ({n_layer}, {n_head}), got {tuple(head_mask.shape)}"
        )


# -- heads ----------------------------------------------------------------------------------


def forward_backbone(
    model: GPTBigCodeModel, kwargs: dict[str, Any]
) -> BaseModelOutputWithPast:
    kwargs = {**kwargs, "return_dict": True}
    return model(**kwargs)


class GPTBigCodeForCausalLM(GPTBigCodePreTrainedModel):
    """The backbone with a language-modelling head tied to the token embedding."""

    head_keys = ("lm_head.weight",)

    def __init__(self, config: GPTBigCodeConfig, attn_implementation: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPTBigCodeModel(config, attn_implementation)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, **kwargs: Any) -> GPTBigCodeForCausalLM:
        return super().from_pretrained(path_or_id, **kwargs)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
    ) -> Any:
        """`logits_to_keep=n` computes logits for the last n positions only (0: all)."""
        out = forward_backbone(self.transformer, dict(
            input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
            token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        ))
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.vocab_size)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=out.past_key_values,
            hidden_states=out.hidden_states, attentions=out.attentions,
        )
        return result if return_dict is not False else result.to_tuple()

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Decode on preallocated KV buffers; see `model.generation.generate` for arguments."""
        from .generation import generate

        return generate(self, input_ids, **kwargs)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts label t+1; -100 labels are ignored."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have the shape of input_ids {tuple(logits.shape[:2])}, "
            f"got {tuple(labels.shape)}"
        )
    shift_logits = logits[:, :-1].float().reshape(-1, vocab_size)
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)


class GPTBigCodeForSequenceClassification(GPTBigCodePreTrainedModel):
    """Classifies a sequence from the hidden state of its last non-pad token."""

    head_keys = ("score.weight",)

    def __init__(self, config: GPTBigCodeConfig, attn_implementation: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels or 2
        self.transformer = GPTBigCodeModel(config, attn_implementation)
        self.score = nn.Linear(config.n_embd, self.num_labels, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, **kwargs: Any
    ) -> GPTBigCodeForSequenceClassification:
        return super().from_pretrained(path_or_id, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        out = forward_backbone(self.transformer, dict(
            input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
            token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        ))
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        B = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        if pad is None or input_ids is None:
            last: torch.Tensor | int = -1
        else:
            # The rightmost non-pad token, so left and right padding both work.
            keep = (input_ids != pad).to(logits.device, torch.int32)
            index = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (index * keep).argmax(-1)
        pooled = logits[torch.arange(B, device=logits.device), last]  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(
                pooled, labels.to(logits.device), self.num_labels, self.config.problem_type
            )
        result = SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, past_key_values=out.past_key_values,
            hidden_states=out.hidden_states, attentions=out.attentions,
        )
        return result if return_dict is not False else result.to_tuple()


def sequence_classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_labels: int, problem_type: str | None
) -> torch.Tensor:
    """Regression (MSE), single-label (cross-entropy) or multi-label (BCE), as configured
    or inferred from num_labels and the labels' dtype."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class GPTBigCodeForTokenClassification(GPTBigCodePreTrainedModel):
    """A label per token (e.g. BIO tags over secrets), from each token's hidden state."""

    head_keys = ("classifier.weight", "classifier.bias")

    def __init__(self, config: GPTBigCodeConfig, attn_implementation: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels or 2
        self.transformer = GPTBigCodeModel(config, attn_implementation)
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = config.extra.get("hidden_dropout")
        if dropout is None:
            dropout = 0.1
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.n_embd, self.num_labels)
        self.post_init()

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, **kwargs: Any
    ) -> GPTBigCodeForTokenClassification:
        return super().from_pretrained(path_or_id, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        out = forward_backbone(self.transformer, dict(
            input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
            token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        ))
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.view(-1, self.num_labels), labels.view(-1).to(logits.device)
            )
        result = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return result if return_dict is not False else result.to_tuple()
