"""GPTBigCode configuration: the fields, defaults and config.json format of transformers 4.56.2."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVATIONS = ("relu", "silu", "gelu", "tanh", "gelu_new", "gelu_pytorch_tanh")

# transformers' attribute_map: generic names that read and write the GPT-2 style fields.
ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class ConfigError(ValueError):
    """A configuration value or config.json that cannot describe a GPTBigCode model."""


@dataclass
class GPTBigCodeConfig:
    """Architecture and head settings; defaults are those of transformers' GPTBigCodeConfig."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_pytorch_tanh"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    attention_softmax_in_fp32: bool = True
    scale_attention_softmax_in_fp32: bool = True
    multi_query: bool = True
    tie_word_embeddings: bool = True
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    classifier_dropout: float | None = None
    torch_dtype: str | None = None
    num_labels: int | None = None
    # Keys of a config.json that this class does not model; written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id2label is None:
            count = 2 if self.num_labels is None else self.num_labels
            if not isinstance(count, int) or count < 1:
                raise ConfigError(f"num_labels must be a positive integer, got {count!r}")
            self.id2label = {i: f"LABEL_{i}" for i in range(count)}
        else:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if self.num_labels is not None and self.num_labels != len(self.id2label):
                raise ConfigError(
                    f"num_labels={self.num_labels} disagrees with id2label "
                    f"({len(self.id2label)} labels)"
                )
        self.num_labels = len(self.id2label)
        self.validate()

    # -- derived values and aliases -------------------------------------------------------

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Heads of keys and values: one shared head with multi-query attention."""
        return 1 if self.multi_query else self.n_head

    @property
    def label2id(self) -> dict[str, int]:
        assert self.id2label is not None
        return {v: k for k, v in self.id2label.items()}

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @hidden_size.setter
    def hidden_size(self, value: int) -> None:
        self.n_embd = value

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @max_position_embeddings.setter
    def max_position_embeddings(self, value: int) -> None:
        self.n_positions = value

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @num_attention_heads.setter
    def num_attention_heads(self, value: int) -> None:
        self.n_head = value

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @num_hidden_layers.setter
    def num_hidden_layers(self, value: int) -> None:
        self.n_layer = value

    @property
    def eos_token_ids(self) -> list[int]:
        """End-of-sequence ids as a list (config.json may hold one id or several)."""
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, int):
            return [self.eos_token_id]
        return list(self.eos_token_id)

    # -- checks ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ConfigError naming the first field that cannot work."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ConfigError(f"n_inner must be a positive integer or None, got {self.n_inner!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"activation_function {self.activation_function!r} is not one of "
                f"{list(ACTIVATIONS)}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(
                f"problem_type {self.problem_type!r} is not one of {list(PROBLEM_TYPES)}"
            )
        if self.extra.get("add_cross_attention"):
            raise ConfigError(
                "add_cross_attention=True is not supported (GPTBigCode is decoder-only)"
            )

    # -- config.json ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTBigCodeConfig:
        """Build from a Hugging Face style dict; aliases are mapped and unknown keys kept."""
        kwargs = {k: v for k, v in data.items() if k not in ("label2id", "model_type", "extra")}
        if "dtype" in kwargs:  # the newer spelling of torch_dtype
            kwargs.setdefault("torch_dtype", kwargs.pop("dtype"))
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a value of the wrong kind, e.g. a list for an int
            raise ConfigError(f"invalid config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The config.json content, in the key spelling transformers writes."""
        out: dict[str, Any] = {"model_type": "gpt_bigcode"}
        out.update(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            out[f.name] = getattr(self, f.name)
        assert self.id2label is not None
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = self.label2id
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> GPTBigCodeConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", "gpt_bigcode")
        if model_type != "gpt_bigcode":
            raise ConfigError(f"{path}: model_type is {model_type!r}, expected 'gpt_bigcode'")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GPTBigCodeConfig:
        """Read config.json from a checkpoint folder (or a config file itself)."""
        path = Path(path)
        return cls.from_json_file(path / "config.json" if path.is_dir() else path)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(self.to_json_string(), encoding="utf-8")


def _accept_aliases(init: Any) -> Any:
    """Let the constructor take transformers' generic names (hidden_size=...) and keep
    unknown keyword arguments in `extra`, as transformers' configs do."""

    def __init__(self: GPTBigCodeConfig, *args: Any, **kwargs: Any) -> None:
        known = {f.name for f in dataclasses.fields(GPTBigCodeConfig)}
        extra = dict(kwargs.pop("extra", None) or {})
        for key in list(kwargs):
            name = ALIASES.get(key, key)
            if name in kwargs and name != key:
                raise ConfigError(f"both {key!r} and its alias {name!r} were given")
            if name in known:
                kwargs[name] = kwargs.pop(key)
            else:
                extra[key] = kwargs.pop(key)
        init(self, *args, extra=extra, **kwargs)

    __init__.__doc__ = init.__doc__
    return __init__


GPTBigCodeConfig.__init__ = _accept_aliases(GPTBigCodeConfig.__init__)  # type: ignore[method-assign]
