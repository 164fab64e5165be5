"""GPTBigCode (SantaCoder / StarCoder) in PyTorch, interchangeable with Hugging Face checkpoints."""

from .config import ConfigError, GPTBigCodeConfig
from .kv_cache import KVCache
from .modeling import (
    GPTBigCodeForCausalLM,
    GPTBigCodeForSequenceClassification,
    GPTBigCodeForTokenClassification,
    GPTBigCodeModel,
)

__all__ = [
    "ConfigError",
    "GPTBigCodeConfig",
    "GPTBigCodeForCausalLM",
    "GPTBigCodeForSequenceClassification",
    "GPTBigCodeForTokenClassification",
    "GPTBigCodeModel",
    "KVCache",
]
