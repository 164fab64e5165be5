"""What goes into the engine and what comes back: a completion request, its generation
parameters, the engine's settings and model choice, and the completion with its costs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from cache.crossfile import OtherDocument

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON decoding joins pairs: any left is lone


@dataclass(frozen=True)
class CompletionRequest:
    """A document's text and the cursor, as a character offset into it; the workspace's
    other open documents and its root's URI ("": unknown), for context from other files."""

    uri: str
    text: str
    cursor: int
    language_id: str = "python"
    others: tuple[OtherDocument, ...] = ()
    root: str = ""

    @property
    def prefix(self) -> str:
        return self.text[: self.cursor]

    @property
    def suffix(self) -> str:
        return self.text[self.cursor :]

    def as_valid_unicode(self) -> CompletionRequest:
        """The request with each lone surrogate (a JSON escape such as "\\ud800" in the
        client's text) as U+FFFD, which the tokenizer takes. Both are one code point, one
        UTF-16 unit and three UTF-8 bytes, so no offset or position moves."""
        if self.text.isascii() or not _LONE_SURROGATE.search(self.text):
            return self
        return replace(self, text=_LONE_SURROGATE.sub("\ufffd", self.text))


@dataclass(frozen=True)
class GenerationParams:
    """How one request generates: budgets, sampling and stop strings."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    time_budget_ms: int = 2000
    # Suggestions (and their later lines) that score below this are not shown (a score in
    # [0, 1] from the token probabilities); None: the threshold calibrated for the model.
    min_confidence: float | None = None
    # Where sampling's random numbers come from: a seed of their own for this generation (so
    # the same request samples the same text), or None: the process's random stream.
    seed: int | None = None

    @classmethod
    def from_options(cls, options: Any) -> GenerationParams:
        """From the server's options (anything with these attributes)."""
        return cls(options.max_new_tokens, options.temperature, options.top_p,
                   tuple(options.stop), options.time_budget_ms, options.min_confidence)


@dataclass(frozen=True)
class EngineSettings:
    """What the engine's prompt windows and cache depend on; changing them is a `configure`."""

    context_tokens: int | None = None  # None: as many as the model's positions allow
    cache_budget_mb: int = 1024
    # "spm": SPM; "psm": PSM with the cursor's line (and what is typed after it) last, the
    # suffix capped; "auto": PSM where a whole window is slow to compute, else SPM (pipeline.py)
    fim_layout: str = "auto"
    max_new_tokens: int = 64  # room kept for generation in the model's positions
    # Other files' text ahead of the current one's (cache/crossfile.py), in at most this share
    # of the prompt's tokens; 0: none.
    cross_file_share: float = 0.25

    @classmethod
    def from_options(cls, options: Any) -> EngineSettings:
        cross = options.cross_file
        return cls(options.context_tokens, options.cache_budget_mb, options.fim_layout,
                   options.max_new_tokens, cross.share if cross.enabled else 0.0)


@dataclass(frozen=True)
class RemoteEngine:
    """Where generation runs: "local" (in this process) or a serving engine at `url`: "vllm"
    (vLLM's OpenAI-compatible server), "llamacpp" (llama.cpp's llama-server) or "openai" (any
    server with OpenAI's /v1/completions). `model`: the engine's name for the model ("": the
    one it serves); `api_key_env`: the environment variable holding the API key."""

    kind: str = "local"
    url: str = ""
    model: str = ""
    api_key_env: str = ""
    timeout_ms: int = 10_000

    @classmethod
    def from_options(cls, options: Any) -> RemoteEngine:
        return cls(options.kind, options.url, options.model, options.api_key_env,
                   options.timeout_ms)


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load, where, in what precision and on which decode path, as the
    options name them ("auto" resolved at load)."""

    name: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"  # "int8": int8 weights (blocks and lm_head), activations in dtype
    decode_path: str = "auto"  # model.decoders.DECODE_PATHS
    engine: RemoteEngine = RemoteEngine()  # where generation runs; the model folder gives
    # the tokenizer (and, for "local", the weights)

    @classmethod
    def from_options(cls, options: Any) -> ModelChoice:
        return cls(options.model, options.device, options.dtype, options.quantize,
                   options.decode_path, RemoteEngine.from_options(options.engine))


@dataclass(frozen=True)
class Completion:
    """What the engine suggests at the cursor ("" for nothing), and what it cost."""

    text: str
    generated: str = ""  # the model's text after the cursor, before post-processing
    # eos, special, stop, newline, repetition, max_tokens, context, time, cancelled, error (the
    # serving engine failed: nothing is shown), gated (a further candidate stopped once the
    # confidence gate would hide it: engine/candidates.py)
    stop_reason: str = ""
    layout: str = ""
    prompt_tokens: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    new_tokens: int = 0
    token_ids: tuple[int, ...] = ()  # generated, the re-typed start included
    retyped_tokens: int = 0  # of token_ids, those re-typing text already before the cursor
    model_steps: int = 0  # forward passes run
    model_ms: float = 0.0  # time in forward passes
    total_ms: float = 0.0  # time in the engine, forward passes included
    token_logprobs: tuple[float, ...] = ()  # of token_ids, when the backend reports them
    confidence: float | None = None  # the suggestion's first line's score (engine/confidence.py)
    hidden: bool = False  # the confidence gate hid a suggestion post-processing kept

    @property
    def cancelled(self) -> bool:
        return self.stop_reason == "cancelled"


@dataclass
class Usage:
    """What a generation cost, filled in by the backend as it runs."""

    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose keys and values were cached
    computed_tokens: int = 0  # prompt tokens run now
    steps: int = 0  # forward passes
    model_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # what a backend reports beyond these
