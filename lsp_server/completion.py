"""The completion pipeline, free of LSP: prompt (window, FIM layout, partial-token repair) ->
prefix cache -> token-by-token generation with its stop rules -> post-processing. Also the
type-through memory and the request log the server reports from."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch

from cache import ContextBudget, Layout, PrefixCache, PromptBuilder, prefill
from model import GPTBigCodeForCausalLM, KVCache, Tokenizer
from model.checkpoint import parse_dtype, resolve_checkpoint
from model.fastpath import fast_decode, native_decode_available
from model.generation import decode_one_token, sample
from model.hardware import auto_dtype
from model.quantize import quantize_int8
from model.static_decode import StaticDecoder

from .options import Options
from .postprocess import postprocess, wants_single_line
from .prompt import TokenIndex, split_unstable_tail, token_index

log = logging.getLogger(__name__)

# Tokens kept free beyond the document text: the three FIM tokens, and the tokens that
# re-type the text partial-token repair took off the prompt.
RESERVED_TOKENS = 3 + 16
MiB = 1 << 20
# Test hook: faults to raise in successive generations, e.g. "error,,oom" (see InjectedFaults).
FAULTS_VARIABLE = "GPTBIGCODE_TEST_FAULTS"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON decoding joins pairs: any left is lone


@dataclass(frozen=True)
class CompletionRequest:
    """A document's text and the cursor, as a character offset into it."""

    uri: str
    text: str
    cursor: int
    language_id: str = "python"

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
class Completion:
    """What the pipeline suggests at the cursor ("" for nothing), and what it cost."""

    text: str
    generated: str = ""  # the model's text after the cursor, before post-processing
    stop_reason: str = ""  # eos, special, stop, newline, max_tokens, context, time, cancelled
    layout: str = ""
    prompt_tokens: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    new_tokens: int = 0
    token_ids: tuple[int, ...] = ()  # generated, the re-typed start included
    retyped_tokens: int = 0  # of token_ids, those re-typing text already before the cursor
    model_steps: int = 0  # forward passes run
    model_ms: float = 0.0  # time in forward passes
    total_ms: float = 0.0  # time in the pipeline, forward passes included

    @property
    def cancelled(self) -> bool:
        return self.stop_reason == "cancelled"


# ---- loading


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load, where, and in what precision (the options' values, resolved)."""

    name: str
    device: str
    dtype: torch.dtype
    quantize: str = "none"  # "int8": int8 weights (blocks and lm_head), activations in dtype
    compile_decode: bool | None = None  # faster decode steps; None: where they pay

    @classmethod
    def from_options(cls, options: Options) -> ModelChoice:
        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if options.dtype != "auto":
            dtype = parse_dtype(options.dtype)
            assert dtype is not None
        else:
            dtype = auto_dtype(device)
        return cls(options.model, device, dtype, options.quantize, options.compile_decode)


# Below this size a decode step is bound by per-call overhead, not by streaming the weights,
# and compiling with Inductor gains too little to be worth its seconds at load.
AUTO_COMPILE_PARAMETERS = 50_000_000


def fast_decode_settings(choice: ModelChoice, model: GPTBigCodeForCausalLM
                         ) -> dict[str, bool] | None:
    """fast_decode's arguments for this model, or None to keep every product on F.linear.

    compileDecode null: the native kernels on the CPU (built once, about a second, so at no
    cost at load); Inductor only for half-precision models of 50M parameters or more where
    the native kernels do not run. true: both wherever they apply. false: neither.
    """
    if model.device.type != "cpu" or choice.compile_decode is False:
        return None
    half = model.dtype in (torch.bfloat16, torch.float16)
    if choice.compile_decode:
        return {"native": True, "inductor": half}
    large = model.num_parameters() >= AUTO_COMPILE_PARAMETERS
    return {"native": True,
            "inductor": half and large and not native_decode_available(model.dtype)}


def load_engine(
    choice: ModelChoice, options: Options, report: Callable[[str], None] = lambda _: None
) -> CompletionEngine:
    """Read the checkpoint and its tokenizer, index the vocabulary and warm the model up."""
    report(f"reading {choice.name}")
    folder = resolve_checkpoint(choice.name)
    tokenizer = Tokenizer.from_pretrained(folder)
    model = GPTBigCodeForCausalLM.from_pretrained(folder, dtype=choice.dtype, device=choice.device)
    if choice.quantize == "int8":
        report("quantising the weights to int8")
        quantize_int8(model, include_lm_head=True)
    elif (settings := fast_decode_settings(choice, model)) is not None:
        if settings["inductor"]:
            report("compiling the decode step")  # Inductor compiles during the warm-up below
        fast_decode(model, **settings)
    decoder = None
    if model.device.type == "cuda" and choice.compile_decode is not False:
        report("capturing the decode step as a CUDA graph")  # during the warm-up below
        decoder = StaticDecoder(model)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {model.config.vocab_size}"
        )
    report("indexing the vocabulary")
    engine = CompletionEngine(model, tokenizer, options, name=choice.name, decoder=decoder)
    report("warming up")
    engine.warm_up()
    return engine


# ---- the pipeline


class CompletionEngine:
    """The model, its tokenizer, the prefix cache and the prompt windows of one server.

    Not thread-safe: one inference worker calls `complete`, `configure` and `forget`.
    """

    def __init__(
        self,
        model: GPTBigCodeForCausalLM,
        tokenizer: Tokenizer,
        options: Options | None = None,
        *,
        name: str = "",
        decoder: StaticDecoder | None = None,
    ) -> None:
        self.model = model.eval()
        self.decoder = decoder  # decode steps on static buffers (a CUDA graph on the GPU)
        self.tokenizer = tokenizer
        self.name = name or getattr(model, "name_or_path", "")
        self.index: TokenIndex = token_index(tokenizer)
        self.stop_ids = frozenset(tokenizer.special_ids) | set(model.config.eos_token_ids)
        self.model_steps = 0  # forward passes of all requests, counted as they run
        self.cache = PrefixCache()
        self.faults = InjectedFaults.from_environment()
        self.options = Options()
        self.builder = PromptBuilder(tokenizer, self._budget(self.options), self.cache.stats)
        self.configure(options or Options())

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def configure(self, options: Options) -> None:
        """Apply the options the cache and the prompt windows depend on."""
        budget = options.cache_budget_mb * MiB
        self.cache.budgets = {"gpu": budget, "cpu": budget}
        if self._budget(options) != self.builder.budget:
            self.builder = PromptBuilder(self.tokenizer, self._budget(options), self.cache.stats)
        self.options = options

    def _budget(self, options: Options) -> ContextBudget:
        positions = self.model.config.n_positions
        room = positions - min(options.max_new_tokens, positions // 2) - RESERVED_TOKENS
        wanted = options.context_tokens or positions
        return ContextBudget(tokens=max(8, min(wanted, room)))

    def layout(self, options: Options) -> Layout:
        """The prompt layout the options ask for, or plain text when the tokenizer has no FIM
        tokens."""
        if self.tokenizer.fim is None:
            return "plain"
        return "psm_line" if options.fim_layout == "psm" else "spm"

    def forget(self, uri: str) -> None:
        """Drop a closed document's cache entries and windows."""
        self.cache.drop(uri)
        self.builder.forget(uri)

    def warm_up(self) -> None:
        """A prompt-shaped and a decode-shaped pass, so that the first request does not pay
        for lazy initialisation (or compiling, with compileDecode)."""
        with torch.inference_mode():
            for length in (2, 1):
                ids = torch.zeros((1, length), dtype=torch.long, device=self.device)
                self.model(ids, use_cache=False, logits_to_keep=1)
            if self.decoder is not None:  # captures the graph
                kv = KVCache(self.model.config, 1, 2, dtype=self.dtype, device=self.device)
                self.model(ids, past_key_values=kv, logits_to_keep=1)
                self.decoder.start(kv)
                self.decoder.step(0)

    def decode_steps(self, kv: KVCache) -> Callable[[int], torch.Tensor]:
        """A function that appends a token to `kv` (its prompt already in it) and returns
        the next token's logits (vocab,): the static decoder where there is one."""
        decoder = self.decoder
        started = False

        def step(token: int) -> torch.Tensor:
            nonlocal started
            if decoder is not None:
                if not started:  # copy the prompt's K/V only when a step is really taken
                    decoder.start(kv)
                    started = True
                return decoder.step(token)
            with torch.inference_mode():
                ids = torch.tensor([[token]], dtype=torch.long, device=kv.device)  # (1, 1)
                return decode_one_token(self.model, ids, kv)[0]  # (vocab,)

        return step

    def complete(
        self,
        request: CompletionRequest,
        options: Options | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Completion:
        """The suggestion at the request's cursor. `cancelled` is polled between tokens."""
        started = time.perf_counter()
        options = options or self.options
        if options is not self.options:
            self.configure(options)
        run = _Generation(self, request.as_valid_unicode(), options, cancelled)
        try:
            completion = run.complete()
        except torch.OutOfMemoryError:
            self._free_memory()
            raise
        elapsed = (time.perf_counter() - started) * 1000
        return replace(completion, total_ms=elapsed)

    def _free_memory(self) -> None:
        """After running out of memory: drop every cache entry, so that the next request
        (which starts cold) has the room they held."""
        log.warning("out of memory during a completion: the prefix cache is cleared")
        self.cache.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class _Generation:
    """One request's way through the pipeline."""

    def __init__(
        self,
        engine: CompletionEngine,
        request: CompletionRequest,
        options: Options,
        cancelled: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.request = request
        self.options = options
        self.cancelled = cancelled
        self.deadline = time.perf_counter() + options.time_budget_ms / 1000
        self.single_line = wants_single_line(request.suffix)
        self.layout = engine.layout(options)
        self.steps = 0
        self.retyped = 0  # tokens generated to re-type the text the prompt left out
        self.model_seconds = 0.0

    def complete(self) -> Completion:
        request, engine = self.request, self.engine
        prefix = request.prefix
        stable, typed = split_unstable_tail(engine.tokenizer, prefix)
        # The prompt ends before the text a next keystroke could re-tokenise; generation
        # re-types that text first (and so keeps the prompt, and its cache, unchanged).
        shown = stable + request.suffix
        prompt = engine.builder.build(request.uri, shown, len(stable), self.layout)
        if not prompt.ids or self.cancelled():
            return Completion("", stop_reason="cancelled" if prompt.ids else "empty")
        started = time.perf_counter()
        filled = prefill(engine.model, engine.cache, prompt.key, prompt.ids)
        self.model_seconds += time.perf_counter() - started
        if filled.computed:
            self._count_step()
        engine.faults.next()
        new_ids, reason = self._decode(filled.next_token_logits, filled.kv, typed.encode())
        data = engine.tokenizer.decode_bytes(new_ids) if new_ids else b""
        generated = _cut_at_stops(
            _whole_characters(data[len(typed.encode()) :]), self.options.stop, self.single_line
        )[0]
        text = postprocess(generated, prefix, request.suffix, request.language_id)
        return Completion(
            text=text if reason != "cancelled" else "",
            generated=generated,
            stop_reason=reason,
            layout=self.layout,
            prompt_tokens=len(prompt.ids),
            reused_tokens=filled.reused,
            computed_tokens=filled.computed,
            new_tokens=len(new_ids),
            token_ids=tuple(new_ids),
            retyped_tokens=self.retyped,
            model_steps=self.steps,
            model_ms=self.model_seconds * 1000,
        )

    def _decode(self, logits: torch.Tensor, kv: KVCache, retype: bytes) -> tuple[list[int], str]:
        """Token ids generated after the prompt, and why generation stopped.

        The first tokens must re-type `retype` (bytes the prompt left out); after that the
        model chooses freely. Stops are checked before each forward pass, so a request that
        stops costs no further step.
        """
        engine = self.engine
        advance = engine.decode_steps(kv)
        skip = len(retype)  # leading bytes of the generation that are already in the document
        ids: list[int] = []
        data = bytearray()
        while True:
            token = self._pick(logits, retype)
            if token is None:
                return ids, "repair"  # no token continues the text the prompt left out
            if token in engine.stop_ids:
                return ids, "eos" if token in engine.model.config.eos_token_ids else "special"
            ids.append(token)
            data += engine.tokenizer.decode_bytes([token])
            if retype:
                self.retyped += 1  # re-typing is not part of the token budget
                retype = engine.index.remaining(retype, token)
            new = None if retype else bytes(data[skip:])
            reason = self._stop_reason(len(ids) - self.retyped, new, kv)
            if reason:
                return ids, reason
            started = time.perf_counter()
            logits = advance(token)
            self.model_seconds += time.perf_counter() - started
            self._count_step()

    def _count_step(self) -> None:
        """One forward pass, counted as it happens (the status command reads the total)."""
        self.steps += 1
        self.engine.model_steps += 1

    def _stop_reason(self, count: int, new: bytes | None, kv: KVCache) -> str:
        """Why generation must stop after `count` new tokens whose text beyond the cursor is
        `new` (None while still re-typing), or "" to go on."""
        if new is not None:
            text = _whole_characters(new)
            why = _cut_at_stops(text, self.options.stop, self.single_line)[1]
            if why:
                return why
        if self.cancelled():
            return "cancelled"
        if count >= self.options.max_new_tokens:
            return "max_tokens"
        if kv.length >= self.engine.model.config.n_positions:
            return "context"
        if time.perf_counter() > self.deadline:
            return "time"
        return ""

    def _pick(self, logits: torch.Tensor, retype: bytes) -> int | None:
        """The next token: the model's choice, among the tokens that re-type `retype` while
        there is some left; None when no token can."""
        if retype:
            allowed = self.engine.index.allowed(retype)
            if not allowed:
                return None
            keep = torch.tensor(allowed, dtype=torch.long, device=logits.device)
            masked = torch.full_like(logits, -math.inf)
            masked[keep] = logits[keep]
            logits = masked
        else:
            logits = logits[: self.engine.tokenizer.vocab_size]  # rows past it are padding
        temperature = self.options.temperature
        if temperature <= 0:
            return int(logits.argmax())
        token = sample(
            logits.float()[None], do_sample=True, temperature=temperature, top_p=self.options.top_p
        )
        return int(token.item())


def _whole_characters(data: bytes) -> str:
    """UTF-8 text of `data` without an incomplete character at its end."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def _cut_at_stops(text: str, stops: Sequence[str], single_line: bool) -> tuple[str, str]:
    """`text` up to the first stop string (or line break, when one line is wanted), and
    which kind of stop cut it ("" when none did)."""
    cut, why = len(text), ""
    for stop in stops:
        at = text.find(stop)
        if 0 <= at < cut:
            cut, why = at, "stop"
    if single_line:
        breaks = [at for at in (text.find("\n"), text.find("\r")) if at >= 0]
        if breaks and min(breaks) < cut:
            cut, why = min(breaks), "newline"
    return text[:cut], why


class InjectedFaults:
    """A test hook, inert in normal use: with GPTBIGCODE_TEST_FAULTS set (comma-separated),
    the n-th generation, after its prompt's forward pass, raises the n-th fault: "error"
    a RuntimeError, "oom" torch.OutOfMemoryError, "" nothing. Tests use it to check that the
    worker and the server recover from a failure inside generation."""

    KINDS = ("", "error", "oom")

    def __init__(self, plan: Iterable[str] = ()) -> None:
        self.plan = deque(plan)
        unknown = [fault for fault in self.plan if fault not in self.KINDS]
        if unknown:
            raise ValueError(
                f"{FAULTS_VARIABLE}: unknown fault(s) {unknown}; expected a comma-separated "
                "list of 'error', 'oom' or nothing"
            )

    @classmethod
    def from_environment(cls) -> InjectedFaults:
        value = os.environ.get(FAULTS_VARIABLE)
        return cls(value.split(",") if value else ())

    def next(self) -> None:
        fault = self.plan.popleft() if self.plan else ""
        if fault == "error":
            raise RuntimeError(f"injected fault ({FAULTS_VARIABLE})")
        if fault == "oom":
            raise torch.OutOfMemoryError(f"injected out of memory ({FAULTS_VARIABLE})")


# ---- type-through


@dataclass(frozen=True)
class _Shown:
    prefix: str
    suffix: str
    text: str


class TypeThrough:
    """The last suggestion per document, to answer while the user types what it predicted.

    A new request is answered from it when the text after the cursor is unchanged and the
    text before the cursor is the old one plus a start of the suggestion.
    """

    def __init__(self) -> None:
        self._shown: dict[str, _Shown] = {}

    def remember(self, uri: str, prefix: str, suffix: str, text: str) -> None:
        if text:
            self._shown[uri] = _Shown(prefix, suffix, text)
        else:
            self._shown.pop(uri, None)

    def answer(self, uri: str, prefix: str, suffix: str) -> str | None:
        """The rest of the last suggestion, or None when typing left it."""
        shown = self._shown.get(uri)
        if shown is None or suffix != shown.suffix or not prefix.startswith(shown.prefix):
            return None
        typed = prefix[len(shown.prefix) :]
        if len(typed) >= len(shown.text) or not shown.text.startswith(typed):
            return None
        return shown.text[len(typed) :]

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)


# ---- request log


@dataclass(frozen=True)
class RequestRecord:
    """One completion request as the server answered it."""

    kind: str  # "inline" or "completion"
    outcome: str  # model, typeThrough, superseded, cancelled, notReady, unknownDocument, error
    total_ms: float  # from the handler's start to its result
    model_ms: float = 0.0
    model_steps: int = 0
    new_tokens: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    stop_reason: str = ""
    chars: int = 0  # of the suggestion


ANSWERED = frozenset({"model", "typeThrough"})


@dataclass
class RequestLog:
    """The latest requests, for latency percentiles and the status command."""

    size: int = 2048
    records: deque[RequestRecord] = field(default_factory=deque)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)
        while len(self.records) > self.size:
            self.records.popleft()
        self.counts[record.outcome] = self.counts.get(record.outcome, 0) + 1

    def latency(self) -> dict[str, float | int | None]:
        """p50 / p95 of the latency of answered requests (by the model or by type-through)
        and of their model time, in ms."""
        answered = [r for r in self.records if r.outcome in ANSWERED]
        totals = [r.total_ms for r in answered]
        models = [r.model_ms for r in answered]
        return {
            "count": len(totals),
            "p50": percentile(totals, 50),
            "p95": percentile(totals, 95),
            "modelP50": percentile(models, 50),
            "modelP95": percentile(models, 95),
        }


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
