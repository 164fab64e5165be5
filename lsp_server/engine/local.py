"""The in-process backend: the model and its decode path, the per-document prefix store, and
token-by-token generation on a cache session (prefill the uncached rest, then steps)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import torch

from cache import CacheSession, Prefill, PrefixStore
from model import GPTBigCodeForCausalLM, Tokenizer
from model.decoders import Decoder
from model.generation import sample

from .repair import TokenIndex, token_index
from .requests import GenerationParams, Usage
from .warming import WarmRun

log = logging.getLogger(__name__)

SPARES = 4  # entries kept whole per document and layout besides the one a request works on


class LocalBackend:
    """A model in this process. Not thread-safe: one inference worker calls it."""

    def __init__(self, model: GPTBigCodeForCausalLM, tokenizer: Tokenizer, decoder: Decoder,
                 *, name: str = "", prefill_rate: float | None = None) -> None:
        self.model = model.eval()
        self.prefill_rate = prefill_rate
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.name = name or getattr(model, "name_or_path", "")
        self.n_positions = model.config.n_positions
        self.device = str(model.device)
        self.dtype = str(model.dtype).removeprefix("torch.")
        self.index: TokenIndex = token_index(tokenizer)
        self.eos_ids = frozenset(model.config.eos_token_ids)
        self.stop_ids = frozenset(tokenizer.special_ids) | self.eos_ids
        # Spares: a far move's window, the warmed document head beside the prompt being typed
        # at (cache/prefix.py).
        self.store = PrefixStore(spares=SPARES)
        self.model_steps = 0  # forward passes of all requests, counted as they run

    def generate(self, key: tuple[str, str], ids: Sequence[int], params: GenerationParams,
                 retype: bytes = b"", cancelled: Callable[[], bool] | None = None
                 ) -> LocalStream:
        return LocalStream(self, key, ids, params, retype)

    def prefill(self, session: CacheSession, ids: Sequence[int], usage: Usage) -> Prefill:
        """The prompt's forward pass on what the store lacks of it."""
        started = time.perf_counter()
        filled = session.prefill(ids)
        usage.model_ms += (time.perf_counter() - started) * 1000
        usage.reused_tokens, usage.computed_tokens = filled.reused, filled.computed
        if filled.computed:
            self.count_step(usage)
        return filled

    def warm(self, key: tuple[str, str], ids: Sequence[int], chunk: int,
             cancelled: Callable[[], bool]) -> WarmRun:
        """Prefill `ids` into the key's entry `chunk` tokens at a time, each chunk committed as
        it is done, until all are cached or `cancelled()` (asked between chunks). The store's
        lookup counters stay those of requests; its tokens computed include these."""
        stats = self.store.stats
        counted = (stats.hits, stats.misses, stats.tokens_reused)
        run = WarmRun(before=self.store.held(key, ids))
        run.reach = run.before
        try:
            while run.reach < len(ids):
                if cancelled():
                    run.preempted = True
                    break
                end = min(len(ids), run.reach + chunk)
                started = time.perf_counter()
                with self.store.open(key, self.decoder) as session:
                    filled = session.prefill(ids[:end])
                run.seconds += time.perf_counter() - started
                run.reach, run.chunks = end, run.chunks + 1
                run.computed += filled.computed
                self.model_steps += bool(filled.computed)
        except torch.OutOfMemoryError:
            self.free_memory()
            raise
        finally:
            stats.hits, stats.misses, stats.tokens_reused = counted
        return run

    def step(self, session: CacheSession, token: int, usage: Usage) -> torch.Tensor:
        started = time.perf_counter()
        logits = session.step(token)
        usage.model_ms += (time.perf_counter() - started) * 1000
        self.count_step(usage)
        return logits

    def count_step(self, usage: Usage) -> None:
        """One forward pass, counted as it happens (the status reads the total)."""
        usage.steps += 1
        self.model_steps += 1

    def pick(self, logits: torch.Tensor, retype: bytes, params: GenerationParams,
             generator: torch.Generator | None = None) -> int | None:
        """The next token: the model's choice, among the tokens that re-type `retype` while
        there is some left; None when no token can. Sampling draws from `generator`."""
        if retype:
            allowed = self.index.allowed(retype)
            if not allowed:
                return None
            keep = torch.tensor(allowed, dtype=torch.long, device=logits.device)
            masked = torch.full_like(logits, -math.inf)
            masked[keep] = logits[keep]
            logits = masked
        else:
            logits = logits[: self.tokenizer.vocab_size]  # rows past it are padding
        if params.temperature <= 0:
            return int(logits.argmax())
        token = sample(logits.float()[None], do_sample=True, temperature=params.temperature,
                       top_p=params.top_p, generator=generator)
        return int(token.item())

    def logprob(self, logits: torch.Tensor, token: int) -> float:
        """The token's log-probability under the model's own distribution."""
        row = logits[: self.tokenizer.vocab_size].float()
        return float(row[token] - torch.logsumexp(row, dim=0))

    def set_cache_budget(self, nbytes: int) -> None:
        self.store.budgets = {"gpu": nbytes, "cpu": nbytes}

    def forget(self, uri: str) -> None:
        self.store.drop(uri)

    def free_memory(self) -> None:
        """After running out of memory: drop every cache entry, so that the next request
        (which starts cold) has the room they held."""
        log.warning("out of memory during a completion: the prefix cache is cleared")
        self.store.clear()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()

    def status(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "decode_path": self.decoder.path,
            "cache": asdict(self.store.stats.snapshot()),
            "model_steps": self.model_steps,
        }


class LocalStream:
    """One generation on a cache session: the prompt's pass on the first token asked for,
    one decode step for each further token. Leaving it (end, close or error) commits the
    prompt to the store; an out-of-memory error clears the store."""

    def __init__(self, backend: LocalBackend, key: tuple[str, str], ids: Sequence[int],
                 params: GenerationParams, retype: bytes) -> None:
        self.backend, self.key, self.ids = backend, key, ids
        self.params, self.retype = params, retype
        self.usage = Usage(prompt_tokens=len(ids))
        self.finish = ""
        self.logprobs: list[float] = []
        self.session: CacheSession | None = None
        self._tokens = self._run()

    def __iter__(self) -> Iterator[int]:
        return self._tokens

    @property
    def full(self) -> bool:
        return self.session is not None and self.session.length >= self.backend.n_positions

    def close(self) -> None:
        self._tokens.close()

    def _run(self) -> Generator[int, None, None]:
        backend = self.backend
        session = self.session = backend.store.open(self.key, backend.decoder)
        try:
            yield from self._generate(session)
        except torch.OutOfMemoryError:
            session.drop()
            backend.free_memory()
            raise
        finally:
            if not session.closed:
                # Steps write only after the prompt, so its buffers hold whatever happened
                # after it; what was generated is not kept.
                session.commit()

    def _generate(self, session: CacheSession) -> Iterator[int]:
        backend, params, retype = self.backend, self.params, self.retype
        logits = backend.prefill(session, self.ids, self.usage).next_token_logits
        generator = None
        if params.seed is not None:  # a seeded request samples the same tokens every time
            generator = torch.Generator(logits.device).manual_seed(params.seed)
        while True:
            token = backend.pick(logits, retype, params, generator)
            if token is None:
                self.finish = "repair"
                return
            if token in backend.stop_ids:
                self.finish = "eos" if token in backend.eos_ids else "special"
                return
            if retype:
                retype = backend.index.remaining(retype, token)
            self.logprobs.append(backend.logprob(logits, token))
            yield token
            if self.full:
                self.finish = "context"
                return
            logits = backend.step(session, token, self.usage)
