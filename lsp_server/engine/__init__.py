"""The engine: everything between the language server and the model. The server hands it
requests and options; it builds prompts, runs a backend (the model in this process), applies
the stop rules and post-processing, and runs the diagnostics heads."""

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
    "TokenStream",
    "Usage",
    "load_engine",
    "set_threads",
]
