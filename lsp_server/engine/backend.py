"""The boundary below the completion pipeline: prompt ids in, a cancellable stream of token ids
out, usage and timings back; in-process (local.py) or a serving engine over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from cache import TextTokenizer

from .repair import VocabTokenizer
from .requests import GenerationParams, Usage


class PromptTokenizer(VocabTokenizer, TextTokenizer, Protocol):
    """What the pipeline needs of the model's tokenizer: text to ids and back, the special
    tokens and the FIM tokens (None when the model has none)."""


class TokenStream(Protocol):
    """Generated token ids, one step of the model per id taken.

    Iteration ends when the backend stops by itself; `finish` then says why ("eos",
    "special", "repair": no token re-types the text the prompt left out, "context": the
    model's positions are full). `close()` stops the generation (a stop rule or a cancel);
    no further step runs. `usage` grows as the generation runs. `logprobs` holds the natural
    log-probability of each token taken, in order, under the model's distribution before
    any sampling or constraint; a backend that cannot tell leaves it empty (the confidence
    gate then lets everything through).
    """

    usage: Usage
    finish: str
    logprobs: list[float]

    def __iter__(self) -> Iterator[int]: ...

    @property
    def full(self) -> bool:
        """Whether the model's positions are used up: no further token can come."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Runs prompts for the pipeline. `key` names the document and layout whose cached
    prompt the new one most likely extends (a backend without per-document state may
    ignore it). `retype`: bytes the generation must start with (partial-token repair).
    `cancelled` is polled while the backend waits (a remote engine's first token), so a
    superseded request ends without waiting for its next token; the stream then ends with
    finish "cancelled"."""

    name: str
    device: str  # where it runs: "cpu", "cuda:0", a server's address
    dtype: str  # the precision it computes in, e.g. "float32"
    n_positions: int
    # Prompt tokens a second a full prefill computes at, measured at load; None where unknown
    # (a remote engine) or not worth bounding (a GPU). Sizes the default context budget.
    prefill_rate: float | None

    @property
    def tokenizer(self) -> PromptTokenizer: ...

    def generate(self, key: tuple[str, str], ids: Sequence[int], params: GenerationParams,
                 retype: bytes = b"", cancelled: Callable[[], bool] | None = None
                 ) -> TokenStream: ...

    def set_cache_budget(self, nbytes: int) -> None: ...

    def forget(self, uri: str) -> None: ...

    def status(self) -> dict[str, Any]: ...
