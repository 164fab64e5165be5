"""GPTBigCode (SantaCoder / StarCoder) in PyTorch, interchangeable with Hugging Face checkpoints."""

from .config import ConfigError, GPTBigCodeConfig
from .kv_cache import KVCache
from .modeling import (
    GPTBigCodeForCausalLM,
    GPTBigCodeForSequenceClassification,
    GPTBigCodeForTokenClassification,
    GPTBigCodeModel,
)
from .tokenizer import FimStrings, FimTokens, Tokenizer, TokenizerError

__all__ = [
    "ConfigError",
    "FimStrings",
    "FimTokens",
    "GPTBigCodeConfig",
    "GPTBigCodeForCausalLM",
    "GPTBigCodeForSequenceClassification",
    "GPTBigCodeForTokenClassification",
    "GPTBigCodeModel",
    "KVCache",
    "Tokenizer",
    "TokenizerError",
]
