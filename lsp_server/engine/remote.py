"""The remote backend: generation sent to a serving engine over HTTP (vLLM or any server with
OpenAI's /v1/completions, llama.cpp's llama-server), while the tokenizer, the prompt windows,
partial-token repair and everything after generation stay in this process.

Prompts go as token ids, so the engine computes exactly the prompt the in-process backend would;
the engine's own prefix cache (vLLM's automatic prefix caching, llama.cpp's `cache_prompt`)
takes the place of ours. A stream is read on its own thread: a superseded request closes its
connection at once, and the engine, seeing the client gone, stops generating. A fault (engine
down, slow, serving another model, refusing the key) is reported once through `on_fault`,
the request comes back empty, and the engine is checked again before the next one.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import os
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .backend import PromptTokenizer
from .repair import TokenIndex, token_index
from .requests import GenerationParams, RemoteEngine, Usage

log = logging.getLogger(__name__)

# Tokens of the vocabulary a constrained step may bias towards in one request; where more
# qualify (re-typing a space or a newline), the step asks for the engine's top candidates
# instead and picks the best that qualifies.
MAX_BIAS_TOKENS = 1000
TOP_CANDIDATES = 20
BIAS = 100.0  # the most OpenAI's API allows: far above any logit gap between tokens
POLL_S = 0.02  # how often a wait for the engine checks for a cancel
RECHECK_S = 2.0  # after a fault, the engine is checked again at most this often
PROBE_TEXT = "def probe(x):\n    return x.strip()  # 0123 naïve ✓\n"


class EngineError(Exception):
    """The engine could not serve a request; the message says which engine and why."""


class EngineConfigError(ValueError):
    """The engine option cannot work as given (a bad URL, a key over plain HTTP...)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoint:
    """Where the engine is and how to reach it, checked: http(s) only, the key only from an
    environment variable and only over https unless the host is loopback."""

    scheme: str
    host: str
    port: int
    base: str  # path prefix, "" or "/something"
    api_key: str | None = field(repr=False)  # never in a log line or a message
    timeout_s: float = 10.0

    @classmethod
    def parse(cls, engine: RemoteEngine, environ: dict[str, str] | None = None) -> Endpoint:
        environ = dict(os.environ) if environ is None else environ
        if not engine.url:
            raise EngineConfigError(f"engine.url is required for engine.kind {engine.kind!r}")
        parts = urlsplit(engine.url)
        if parts.scheme not in ("http", "https"):
            raise EngineConfigError(
                f"engine.url {engine.url!r}: only http:// and https:// URLs are allowed")
        if not parts.hostname:
            raise EngineConfigError(f"engine.url {engine.url!r} names no host")
        if parts.username or parts.password:
            raise EngineConfigError("engine.url must not hold credentials: put the key in the "
                                    "environment variable engine.apiKeyEnv names")
        if parts.query or parts.fragment:
            raise EngineConfigError(f"engine.url {engine.url!r}: no query or fragment allowed")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as error:
            raise EngineConfigError(f"engine.url {engine.url!r}: {error}") from None
        key = None
        if engine.api_key_env:
            key = environ.get(engine.api_key_env)
            if not key:
                raise EngineConfigError(
                    f"engine.apiKeyEnv: the environment variable {engine.api_key_env} is not "
                    "set (or empty) in the server's environment")
            if parts.scheme != "https" and not _is_loopback(parts.hostname):
                raise EngineConfigError(
                    f"engine.url {engine.url!r}: the API key is only sent over https, or over "
                    "http to this machine (localhost, 127.0.0.1, ::1)")
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), key,
                   engine.timeout_ms / 1000)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base}"

    def connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


class Transport:
    """JSON over HTTP to one engine; one kept-alive connection for short requests."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._idle: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def call(self, method: str, path: str, body: Any = None,
             timeout_s: float | None = None) -> Any:
        """The JSON answer; EngineError for anything else (no answer, HTTP error, not JSON)."""
        with self._lock:
            conn, self._idle = self._idle, None
        for attempt in (0, 1):
            fresh = conn is None
            if conn is None:
                conn = self.endpoint.connect()
            try:
                conn.timeout = timeout_s or self.endpoint.timeout_s
                if conn.sock is not None:
                    conn.sock.settimeout(conn.timeout)
                response = self._send(conn, method, path, body)
                data = response.read()
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                conn = None
                if fresh or attempt:  # a kept-alive connection the engine closed: once more
                    raise EngineError(self._transport_message(error)) from None
                continue
            if response.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle = conn
            return _json_answer(self.endpoint, path, response.status, data)
        raise AssertionError("unreachable")

    def open_stream(self, path: str, body: Any) -> tuple[http.client.HTTPConnection,
                                                         http.client.HTTPResponse]:
        """A streaming POST on a connection of its own (closing it is how a stream stops)."""
        conn = self.endpoint.connect()
        try:
            response = self._send(conn, "POST", path, body)
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            raise EngineError(self._transport_message(error)) from None
        if response.status != 200:
            data = response.read()
            conn.close()
            _json_answer(self.endpoint, path, response.status, data)  # raises
        return conn, response

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str,
              body: Any) -> http.client.HTTPResponse:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, self.endpoint.base + path, payload, self.endpoint.headers())
        return conn.getresponse()

    def _transport_message(self, error: BaseException) -> str:
        where = self.endpoint.address
        if isinstance(error, TimeoutError | socket.timeout):
            return (f"the engine at {where} did not answer within "
                    f"{self.endpoint.timeout_s * 1000:.0f} ms (engine.timeoutMs)")
        if isinstance(error, ssl.SSLError):
            return f"TLS with the engine at {where} failed: {error}"
        if isinstance(error, ConnectionRefusedError):
            return f"the engine at {where} is not running (connection refused)"
        return f"the engine at {where} could not be reached ({type(error).__name__}: {error})"

    def close(self) -> None:
        with self._lock:
            conn, self._idle = self._idle, None
        if conn is not None:
            conn.close()


def _json_answer(endpoint: Endpoint, path: str, status: int, data: bytes) -> Any:
    where = f"{endpoint.address}{path}"
    if status in (401, 403):
        raise EngineError(f"the engine at {endpoint.address} refused the API key "
                          f"(HTTP {status}); check the variable engine.apiKeyEnv names")
    if status == 404:
        raise EngineError(f"{where}: not found (HTTP 404); is engine.kind right for this "
                          "server?")
    try:
        answer = json.loads(data) if data else None
    except ValueError:
        answer = None
    if status != 200:
        detail = _error_detail(answer) or data[:200].decode("utf-8", "replace")
        raise EngineError(f"{where}: HTTP {status}: {detail}")
    if answer is None:
        raise EngineError(f"{where}: the answer is not JSON")
    return answer


def _error_detail(answer: Any) -> str:
    if isinstance(answer, dict):
        error = answer.get("error", answer.get("message", answer.get("detail")))
        if isinstance(error, dict):
            return str(error.get("message", error))
        if error:
            return str(error)
    return ""


@dataclass
class Step:
    """One generated token as the engine reported it."""

    token: int | None  # None where the engine speaks text only (the openai dialect)
    text: bytes
    logprob: float | None
    top: dict[int, float] | None = None  # the engine's best tokens and their log-probabilities


class Dialect:
    """How one kind of engine is asked: its paths, request bodies and streamed events."""

    kind = ""
    completion_path = ""
    gives_ids = True

    def body(self, ids: Sequence[int], params: GenerationParams, max_tokens: int,
             stream: bool, bias: dict[int, float] | None, top: int, stop_ids: Sequence[int],
             model: str, seed: int | None) -> dict[str, Any]:
        raise NotImplementedError

    def steps(self, event: dict[str, Any]) -> list[Step]:
        raise NotImplementedError

    def usage(self, event: dict[str, Any]) -> tuple[int, int] | None:
        """(prompt tokens, of them cached by the engine) where the event reports them."""
        raise NotImplementedError

    def finish(self, event: dict[str, Any]) -> str | None:
        """Why the engine stopped, where the event says it did: "eos" or "length"."""
        raise NotImplementedError

    def served(self, transport: Transport, wanted: str) -> tuple[str, int | None]:
        """The engine's name for its model (checked against `wanted` when given) and its
        context length where it reports one."""
        raise NotImplementedError

    def tokenize(self, transport: Transport, text: str, model: str) -> list[int] | None:
        """The engine's tokens for `text`, or None where it cannot say."""
        raise NotImplementedError


class OpenAIDialect(Dialect):
    """/v1/completions of any OpenAI-compatible server: prompt ids in, text out (the ids are
    the local tokenizer's for the streamed text; log-probabilities are not used)."""

    kind = "openai"
    completion_path = "/v1/completions"
    gives_ids = False

    def body(self, ids: Sequence[int], params: GenerationParams, max_tokens: int,
             stream: bool, bias: dict[int, float] | None, top: int, stop_ids: Sequence[int],
             model: str, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model, "prompt": list(ids), "max_tokens": max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "stream": stream,
            "echo": False, "n": 1,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if bias:
            body["logit_bias"] = {str(t): b for t, b in bias.items()}
        if top:
            body["logprobs"] = top
        if seed is not None:
            body["seed"] = seed
        return body

    def steps(self, event: dict[str, Any]) -> list[Step]:
        choices = event.get("choices") or []
        if not choices:
            return []
        text = choices[0].get("text") or ""
        return [Step(None, text.encode(), None)] if text else []

    def usage(self, event: dict[str, Any]) -> tuple[int, int] | None:
        usage = event.get("usage")
        if not isinstance(usage, dict) or "prompt_tokens" not in usage:
            return None
        details = usage.get("prompt_tokens_details") or {}
        return int(usage["prompt_tokens"]), int(details.get("cached_tokens") or 0)

    def finish(self, event: dict[str, Any]) -> str | None:
        choices = event.get("choices") or []
        reason = choices[0].get("finish_reason") if choices else None
        if reason is None:
            return None
        return "length" if reason == "length" else "eos"

    def served(self, transport: Transport, wanted: str) -> tuple[str, int | None]:
        answer = transport.call("GET", "/v1/models")
        models = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(models, list) or not models:
            raise EngineError(f"{transport.endpoint.address}/v1/models lists no model")
        names = [str(m.get("id")) for m in models if isinstance(m, dict)]
        if wanted and wanted not in names:
            raise EngineError(f"the engine at {transport.endpoint.address} serves "
                              f"{', '.join(map(repr, names))}, not engine.model {wanted!r}")
        name = wanted or names[0]
        entry = next(m for m in models if str(m.get("id")) == name)
        length = entry.get("max_model_len")
        return name, int(length) if isinstance(length, int) else None

    def tokenize(self, transport: Transport, text: str, model: str) -> list[int] | None:
        return None


class VllmDialect(OpenAIDialect):
    """vLLM's /v1/completions with its extensions: token ids back, raw log-probabilities,
    stop token ids, cached prompt tokens in every streamed chunk, /tokenize."""

    kind = "vllm"
    gives_ids = True

    def body(self, ids: Sequence[int], params: GenerationParams, max_tokens: int,
             stream: bool, bias: dict[int, float] | None, top: int, stop_ids: Sequence[int],
             model: str, seed: int | None) -> dict[str, Any]:
        body = super().body(ids, params, max_tokens, stream, bias, 0, stop_ids, model, seed)
        body.update({"logprobs": top, "return_tokens_as_token_ids": True,
                     "skip_special_tokens": False, "stop_token_ids": list(stop_ids),
                     "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0})
        if stream:
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return body

    def steps(self, event: dict[str, Any]) -> list[Step]:
        choices = event.get("choices") or []
        if not choices:
            return []
        logprobs = choices[0].get("logprobs") or {}
        tokens = logprobs.get("tokens") or []
        values = logprobs.get("token_logprobs") or []
        tops = logprobs.get("top_logprobs") or []
        steps = []
        for i, name in enumerate(tokens):
            top = None
            if i < len(tops) and isinstance(tops[i], dict):
                top = {_token_id(k): float(v) for k, v in tops[i].items()}
            value = values[i] if i < len(values) else None
            steps.append(Step(_token_id(name), b"", None if value is None else float(value), top))
        return steps

    def tokenize(self, transport: Transport, text: str, model: str) -> list[int] | None:
        answer = transport.call("POST", "/tokenize",
                                {"model": model, "prompt": text, "add_special_tokens": False})
        return [int(t) for t in answer.get("tokens", [])]


def _token_id(name: Any) -> int:
    """vLLM's "token_id:123" (return_tokens_as_token_ids) as 123."""
    text = str(name)
    if not text.startswith("token_id:"):
        raise EngineError(f"the engine returned token {text!r} where an id was asked for")
    return int(text.removeprefix("token_id:"))


class LlamaCppDialect(Dialect):
    """llama.cpp's llama-server: /completion with cache_prompt, token ids and raw
    log-probabilities back, the cache's reuse in its timings."""

    kind = "llamacpp"
    completion_path = "/completion"

    def body(self, ids: Sequence[int], params: GenerationParams, max_tokens: int,
             stream: bool, bias: dict[int, float] | None, top: int, stop_ids: Sequence[int],
             model: str, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": list(ids), "n_predict": max_tokens, "stream": stream,
            "cache_prompt": True, "return_tokens": True, "n_probs": max(top, 1),
            "post_sampling_probs": False, "timings_per_token": True,
            "temperature": params.temperature, "top_p": params.top_p, "top_k": 0,
            "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "dry_multiplier": 0.0, "xtc_probability": 0.0,
            "mirostat": 0,
        }
        if bias:
            body["logit_bias"] = [[t, b] for t, b in bias.items()]
        if seed is not None:
            body["seed"] = seed
        return body

    def steps(self, event: dict[str, Any]) -> list[Step]:
        tokens = event.get("tokens") or []
        probs = event.get("completion_probabilities") or []
        steps = []
        for i, token in enumerate(tokens):
            entry = probs[i] if i < len(probs) else {}
            top = {int(p["id"]): float(p["logprob"]) for p in entry.get("top_logprobs", [])
                   if "id" in p and "logprob" in p} or None
            value = entry.get("logprob")
            steps.append(Step(int(token), b"", None if value is None else float(value), top))
        return steps

    def usage(self, event: dict[str, Any]) -> tuple[int, int] | None:
        timings = event.get("timings")
        if not isinstance(timings, dict) or "cache_n" not in timings:
            return None
        cached, computed = int(timings["cache_n"]), int(timings.get("prompt_n", 0))
        return cached + computed, cached

    def finish(self, event: dict[str, Any]) -> str | None:
        if not event.get("stop"):
            return None
        return "eos" if event.get("stop_type") in ("eos", "word") else "length"

    def served(self, transport: Transport, wanted: str) -> tuple[str, int | None]:
        props = transport.call("GET", "/props")
        path = str(props.get("model_path") or props.get("model_alias") or "")
        name = os.path.basename(path) or "llama-server"
        if wanted and wanted not in (name, path, props.get("model_alias")):
            raise EngineError(f"the engine at {transport.endpoint.address} serves {name!r}, "
                              f"not engine.model {wanted!r}")
        settings = props.get("default_generation_settings") or {}
        length = settings.get("n_ctx") or props.get("n_ctx")
        return name, int(length) if isinstance(length, int) else None

    def tokenize(self, transport: Transport, text: str, model: str) -> list[int] | None:
        answer = transport.call("POST", "/tokenize", {"content": text, "add_special": False})
        return [int(t) for t in answer.get("tokens", [])]


DIALECTS: dict[str, type[Dialect]] = {
    "vllm": VllmDialect, "openai": OpenAIDialect, "llamacpp": LlamaCppDialect,
}


@dataclass
class EngineStats:
    """What the engine reported of its prefix cache over this server's requests."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, those the engine reported as cached
    last_prompt_tokens: int = 0
    last_cached_tokens: int = 0
    cancelled: int = 0  # streams closed before the engine finished
    faults: int = 0

    def add(self, prompt: int, cached: int) -> None:
        self.requests += 1
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.last_prompt_tokens, self.last_cached_tokens = prompt, cached

    def report(self) -> dict[str, Any]:
        share = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None
        return {"engine_requests": self.requests, "engine_prompt_tokens": self.prompt_tokens,
                "engine_cached_tokens": self.cached_tokens,
                "engine_cached_share": None if share is None else round(share, 4),
                "last_prompt_tokens": self.last_prompt_tokens,
                "last_cached_tokens": self.last_cached_tokens,
                "cancelled_streams": self.cancelled, "faults": self.faults}


class RemoteBackend:
    """A serving engine behind the Backend protocol. One inference worker calls it; a fault
    is reported to `on_fault` once (its message), and recovery once (None)."""

    prefill_rate: float | None = None  # the engine's; not ours to bound

    def __init__(self, engine: RemoteEngine, tokenizer: PromptTokenizer, n_positions: int,
                 eos_ids: Sequence[int], *, name: str = "",
                 environ: dict[str, str] | None = None) -> None:
        self.config = engine
        self.endpoint = Endpoint.parse(engine, environ)
        self.dialect = DIALECTS[engine.kind]()
        self.transport = Transport(self.endpoint)
        self._tokenizer = tokenizer
        self.index: TokenIndex = token_index(tokenizer)
        self.eos_ids = frozenset(eos_ids)
        self.stop_ids = frozenset(tokenizer.special_ids) | self.eos_ids
        self.name = name
        self.model_positions = n_positions
        self.n_positions = n_positions
        self.device = self.endpoint.address
        self.dtype = "engine"
        self.served = ""
        self.stats = EngineStats()
        self.fault: str | None = None
        self.verified = False
        self._checked_at = -math.inf
        self.on_fault: Callable[[str | None], None] = lambda _: None
        self.model_steps = 0

    @property
    def tokenizer(self) -> PromptTokenizer:
        return self._tokenizer

    # -- health -------------------------------------------------------------------------

    def verify(self) -> None:
        """Ask the engine what it serves and check its tokenizer against ours; EngineError
        says what is wrong."""
        name, length = self.dialect.served(self.transport, self.config.model)
        theirs = self.dialect.tokenize(self.transport, PROBE_TEXT, name)
        ours = self._tokenizer.encode_text(PROBE_TEXT)
        if theirs is not None and theirs != ours:
            raise EngineError(
                f"the engine at {self.endpoint.address} serves {name!r} with another tokenizer "
                f"than the local model folder {self.name!r} (a probe text gave {len(theirs)} "
                f"tokens there, {len(ours)} here): serve the same model, or set gptbigcode.model "
                "to the served model's folder")
        self.served = name
        self.n_positions = min(self.model_positions, length or self.model_positions)
        self.verified = True

    def ready(self) -> bool:
        """Whether a request may go to the engine now: checked once, and again (at most
        every RECHECK_S) after a fault."""
        if self.verified and self.fault is None:
            return True
        now = time.monotonic()
        if now - self._checked_at < RECHECK_S:
            return False
        self._checked_at = now
        try:
            self.verify()
        except EngineError as error:
            self.failed(str(error))
            return False
        self.recovered()
        return True

    def failed(self, message: str) -> None:
        self.verified = False
        self._checked_at = time.monotonic()
        self.stats.faults += 1
        if message != self.fault:
            self.fault = message
            log.warning("%s", message)
            self.on_fault(message)

    def recovered(self) -> None:
        if self.fault is not None:
            log.info("the engine at %s answers again", self.endpoint.address)
            self.fault = None
            self.on_fault(None)

    # -- Backend ------------------------------------------------------------------------

    def generate(self, key: tuple[str, str], ids: Sequence[int], params: GenerationParams,
                 retype: bytes = b"", cancelled: Callable[[], bool] | None = None
                 ) -> RemoteStream:
        return RemoteStream(self, ids, params, retype, cancelled or (lambda: False))

    def set_cache_budget(self, nbytes: int) -> None:
        """The engine sizes its own cache."""

    def forget(self, uri: str) -> None:
        """The engine keeps no state per document."""

    def status(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "decode_path": f"engine:{self.config.kind}",
            "engine": {"kind": self.config.kind, "url": self.endpoint.address,
                       "model": self.served or self.config.model or None,
                       "state": "ok" if self.verified and self.fault is None else
                       ("unreachable" if self.fault else "unchecked"),
                       "error": self.fault, "positions": self.n_positions},
            "cache": self.stats.report(),
            "model_steps": self.model_steps,
        }

    def close(self) -> None:
        self.transport.close()


class RemoteStream:
    """One generation on the engine: the constrained steps that re-type `retype` (one short
    request each), then one streamed request. Iteration ends early with finish "error" (the
    fault reported), "cancelled", "eos", "special" or "context"."""

    def __init__(self, backend: RemoteBackend, ids: Sequence[int], params: GenerationParams,
                 retype: bytes, cancelled: Callable[[], bool]) -> None:
        self.backend, self.params, self.retype = backend, params, retype
        self.ids = list(ids)
        self.cancelled = cancelled
        self.usage = Usage(prompt_tokens=len(ids))
        self.finish = ""
        self.logprobs: list[float] = []
        self.generated = 0
        self._reader: _StreamReader | None = None
        self._seed = (params.seed if params.seed is not None else random.getrandbits(31)) \
            if params.temperature > 0 else None
        self._tokens = self._run()

    def __iter__(self) -> Iterator[int]:
        return self._tokens

    @property
    def full(self) -> bool:
        return len(self.ids) + self.generated >= self.backend.n_positions

    def close(self) -> None:
        self._tokens.close()
        self._stop_reader()

    def _stop_reader(self) -> None:
        if self._reader is not None:
            if not self._reader.finished:
                self.backend.stats.cancelled += 1
            self._reader.close()
            self._reader = None

    def _run(self) -> Generator[int, None, None]:
        backend = self.backend
        if not backend.ready():
            self.finish = "error"
            return
        started = time.perf_counter()
        try:
            yield from self._generate()
        except EngineError as error:
            backend.failed(str(error))
            self.finish = "error"
        finally:
            self._stop_reader()
            self.usage.model_ms += (time.perf_counter() - started) * 1000

    def _generate(self) -> Iterator[int]:
        backend, retype = self.backend, self.retype
        prompt = list(self.ids)
        while retype:
            if self.cancelled():
                self.finish = "cancelled"
                return
            picked = self._constrained_step(prompt, retype)
            if picked is None:
                self.finish = "repair"
                return
            token, logprob = picked
            retype = backend.index.remaining(retype, token)
            prompt.append(token)
            self.generated += 1
            if logprob is not None:
                self.logprobs.append(logprob)
            yield token
            if self.full:
                self.finish = "context"
                return
        room = backend.n_positions - len(prompt)
        if room <= 0:
            self.finish = "context"
            return
        yield from self._streamed(prompt, min(self.params.max_new_tokens, room))

    def _constrained_step(self, prompt: list[int],
                          retype: bytes) -> tuple[int, float | None] | None:
        """The next token among those that re-type `retype`: the model's best (or a sample)
        through a logit bias where few qualify, else among the engine's top candidates
        (exact for greedy whenever one of them qualifies, as one nearly always does)."""
        backend = self.backend
        allowed = set(backend.index.allowed(retype))
        if not allowed:
            return None
        if len(allowed) > MAX_BIAS_TOKENS and backend.dialect.gives_ids:
            step = self._one_step(prompt, None, TOP_CANDIDATES)
            qualifying = {t: v for t, v in (step.top or {}).items() if t in allowed} if step else {}
            if qualifying:
                token = self._choose(qualifying)
                return token, qualifying[token]
        step = self._one_step(prompt, dict.fromkeys(sorted(allowed), BIAS), 1)
        if step is None or step.token not in allowed:
            return None
        return step.token, step.logprob

    def _choose(self, scores: dict[int, float]) -> int:
        if self.params.temperature <= 0:
            return max(scores, key=scores.__getitem__)
        rng = random.Random(self._seed)
        weights = [math.exp(v / self.params.temperature) for v in scores.values()]
        return rng.choices(list(scores), weights)[0]

    def _one_step(self, prompt: list[int], bias: dict[int, float] | None,
                  top: int) -> Step | None:
        backend = self.backend
        body = backend.dialect.body(prompt, self.params, 1, False, bias, top,
                                    sorted(backend.stop_ids), backend.served, self._seed)
        answer = backend.transport.call("POST", backend.dialect.completion_path, body)
        self._account(answer)
        backend.model_steps += 1
        self.usage.steps += 1
        steps = backend.dialect.steps(answer)
        if not steps:
            return None
        step = steps[0]
        if step.token is None:  # a text-only engine: the token is ours for its text
            ids = backend.tokenizer.encode_text(step.text.decode("utf-8", "replace"))
            step.token = ids[0] if len(ids) == 1 else None
        return step

    def _account(self, event: dict[str, Any]) -> bool:
        """Record the prompt tokens and cached ones the event reports; whether it did."""
        usage = self.backend.dialect.usage(event)
        if usage is None:
            return False
        prompt, cached = usage
        self.backend.stats.add(prompt, cached)
        self.usage.reused_tokens, self.usage.computed_tokens = cached, prompt - cached
        self.usage.extra["engine_prompt_tokens"] = prompt
        return True

    def _streamed(self, prompt: list[int], max_tokens: int) -> Iterator[int]:
        backend = self.backend
        body = backend.dialect.body(prompt, self.params, max_tokens, True, None, 0 if
                                    backend.dialect.kind == "openai" else 1,
                                    sorted(backend.stop_ids), backend.served, self._seed)
        conn, response = backend.transport.open_stream(backend.dialect.completion_path, body)
        reader = self._reader = _StreamReader(conn, response)
        deadline = time.monotonic() + backend.endpoint.timeout_s
        accounted = False
        self.usage.steps += 1
        backend.model_steps += 1
        while True:
            event = reader.next_event(POLL_S)
            if event is None:
                if self.cancelled():
                    self.finish = "cancelled"
                    return
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"the engine at {backend.endpoint.address} sent nothing for "
                        f"{backend.endpoint.timeout_s * 1000:.0f} ms (engine.timeoutMs)")
                continue
            if isinstance(event, EngineError):
                raise event
            if event is _DONE:
                return
            deadline = time.monotonic() + backend.endpoint.timeout_s
            if not accounted:
                accounted = self._account(event)
            for step in backend.dialect.steps(event):
                yield from self._emit(step)
                if self.finish:
                    return
            why = backend.dialect.finish(event)
            if why is not None:
                reader.finished = True
                if why == "eos" and not self.finish:
                    self.finish = "eos"
                return

    def _emit(self, step: Step) -> Iterator[int]:
        backend = self.backend
        if step.token is None:
            tokens = backend.tokenizer.encode_text(step.text.decode("utf-8", "replace"))
        else:
            tokens = [step.token]
            if step.logprob is not None:
                self.logprobs.append(step.logprob)
        for token in tokens:
            if token in backend.stop_ids:
                self.finish = "eos" if token in backend.eos_ids else "special"
                return
            self.generated += 1
            backend.model_steps += 1
            self.usage.steps += 1
            yield token
            if self.full:
                self.finish = "context"
                return


_DONE = object()


class _StreamReader:
    """Reads server-sent events on a thread of its own, so that the consumer can wait with a
    timeout and close the connection at any moment (which unblocks the read)."""

    def __init__(self, conn: http.client.HTTPConnection,
                 response: http.client.HTTPResponse) -> None:
        self.conn, self.response = conn, response
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.finished = False  # the engine ended the generation itself
        self.closed = False
        self.thread = threading.Thread(target=self._read, name="engine-stream", daemon=True)
        self.thread.start()

    def next_event(self, wait_s: float) -> Any:
        try:
            return self.events.get(timeout=wait_s)
        except queue.Empty:
            return None

    def _read(self) -> None:
        try:
            for line in self.response:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    self.finished = True
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    self.events.put(EngineError(f"the engine sent an unreadable event: "
                                                f"{data[:120]!r}"))
                    return
                if isinstance(event, dict) and "error" in event:
                    self.events.put(EngineError(f"the engine failed the request: "
                                                f"{_error_detail(event)}"))
                    return
                self.events.put(event)
        except Exception as error:  # a closed connection fails inside http.client in many ways
            if not self.closed:
                self.events.put(EngineError(f"the engine's stream broke ({type(error).__name__}: "
                                            f"{error})"))
                return
        self.events.put(_DONE)

    def close(self) -> None:
        """Drop the connection: an engine still generating sees the client gone and stops."""
        self.closed = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conn.close()
