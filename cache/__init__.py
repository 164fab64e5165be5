"""Per-document prefix KV cache: prompts whose volatile part comes last, reuse by longest
common token prefix, sessions that own an entry's buffers, LRU eviction under byte budgets."""

from .layout import LAYOUTS, Layout, TextTokenizer, layout_ids
from .prefix import CacheEntry, CacheKey, CacheStats, Lookup, PrefixStore, longest_common_prefix
from .prompt import Prompt, PromptBuilder
from .session import CacheSession, Prefill
from .window import ContextBudget

__all__ = [
    "LAYOUTS",
    "CacheEntry",
    "CacheKey",
    "CacheSession",
    "CacheStats",
    "ContextBudget",
    "Layout",
    "Lookup",
    "Prefill",
    "PrefixStore",
    "Prompt",
    "PromptBuilder",
    "TextTokenizer",
    "layout_ids",
    "longest_common_prefix",
]
