"""The engine, between the language server and the model: prompts, a backend's token stream,
stop rules and post-processing for completions, and the diagnostics heads."""

from cache.crossfile import OtherDocument

from .backend import Backend, TokenStream
from .diagnose import Diagnoser, Finding
from .loading import load_engine, set_threads
from .pipeline import Engine
from .requests import (
    Completion,
    CompletionRequest,
    EngineSettings,
    GenerationParams,
    ModelChoice,
    Usage,
)

__all__ = [
    "Backend",
    "Completion",
    "CompletionRequest",
    "Diagnoser",
    "Engine",
    "EngineSettings",
    "Finding",
    "GenerationParams",
    "ModelChoice",
    "OtherDocument",
    "TokenStream",
    "Usage",
    "load_engine",
    "set_threads",
]
