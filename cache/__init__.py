"""Per-document prefix KV cache: prompts whose volatile part comes last, reuse by longest
common token prefix, and least-recently-used eviction under byte budgets."""

from .layout import LAYOUTS, Layout, TextTokenizer, layout_ids
from .prefill import Prefill, prefill
from .prefix import CacheEntry, CacheKey, CacheStats, Lookup, PrefixCache, longest_common_prefix
from .prompt import Prompt, PromptBuilder
from .window import ContextBudget

__all__ = [
    "LAYOUTS",
    "CacheEntry",
    "CacheKey",
    "CacheStats",
    "ContextBudget",
    "Layout",
    "Lookup",
    "Prefill",
    "PrefixCache",
    "Prompt",
    "PromptBuilder",
    "TextTokenizer",
    "layout_ids",
    "longest_common_prefix",
    "prefill",
]
