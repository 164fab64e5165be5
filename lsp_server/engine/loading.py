"""Loading an in-process engine: resolve the device, precision and decode path the options
leave to us, read the checkpoint and its tokenizer, and warm the model up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, KVCache, Tokenizer
from model.checkpoint import parse_dtype, resolve_checkpoint
from model.decoders import DecodePathUnavailable, Decoder, make_decoder
from model.hardware import auto_dtype
from model.quantize import quantize_int8

from .confidence import calibrated_threshold
from .local import LocalBackend
from .pipeline import Engine
from .remote import EngineError, RemoteBackend
from .requests import EngineSettings, ModelChoice

log = logging.getLogger(__name__)


def set_threads(count: int) -> None:
    """Threads torch computes with in this process (the server's --threads)."""
    torch.set_num_threads(count)


def resolve_device(device: str) -> str:
    """"auto": CUDA when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto": bf16 where the device computes it natively, else fp32 (model.hardware)."""
    if dtype == "auto":
        return auto_dtype(device)
    parsed = parse_dtype(dtype)
    if parsed is None:
        raise ValueError(f"dtype {dtype!r} names no torch dtype")
    return parsed


def load_engine(
    choice: ModelChoice,
    settings: EngineSettings | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Engine:
    """Read the checkpoint and its tokenizer, choose the decode path, index the vocabulary
    and warm the model up; or, for a serving engine, the tokenizer alone and the engine
    checked. `report` hears each stage (for $/progress)."""
    if choice.engine.kind != "local":
        return load_remote_engine(choice, settings, report)
    report(f"reading {choice.name}")
    device = resolve_device(choice.device)
    folder = resolve_checkpoint(choice.name)
    tokenizer = Tokenizer.from_pretrained(folder)
    model = GPTBigCodeForCausalLM.from_pretrained(
        folder, dtype=resolve_dtype(choice.dtype, device), device=device
    )
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {model.config.vocab_size}"
        )
    if choice.quantize == "int8":
        report("quantising the weights to int8")
        quantize_int8(model, include_lm_head=True)
    warnings = []
    # "auto" lets the native path keep an fp32 model's matrices in f16 where the CPU lacks bf16
    # arithmetic (half the memory traffic); a dtype asked for by name is computed in that dtype.
    weights = "auto" if choice.dtype == "auto" else "fp32"
    try:
        decoder = make_decoder(model, choice.decode_path, weights=weights)
    except DecodePathUnavailable as why:
        decoder = make_decoder(model, "auto", weights=weights)
        warnings.append(f"decodePath {choice.decode_path!r}: {why}; running {decoder.path!r}")
        log.warning("%s", warnings[-1])
    report(f"decode path: {decoder.path}")
    report("warming up")
    warm_up(model, decoder)
    rate = prefill_rate(model, decoder) if model.device.type == "cpu" else None
    report("indexing the vocabulary")
    backend = LocalBackend(model, tokenizer, decoder, name=choice.name, prefill_rate=rate)
    engine = Engine(backend, settings)
    engine.calibrated_confidence = calibrated_threshold(folder)
    engine.warnings = warnings
    return engine


def load_remote_engine(
    choice: ModelChoice,
    settings: EngineSettings | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Engine:
    """The model folder's tokenizer and config (no weights) in front of a serving engine. An
    engine that does not answer yet is not an error: the load succeeds with a warning, and
    requests come back empty until it answers; a bad engine option is (EngineConfigError)."""
    report(f"reading the tokenizer of {choice.name}")
    folder = resolve_checkpoint(choice.name)
    tokenizer = Tokenizer.from_pretrained(folder)
    config = GPTBigCodeConfig.from_pretrained(folder)
    backend = RemoteBackend(choice.engine, tokenizer, config.n_positions, config.eos_token_ids,
                            name=choice.name)
    report(f"checking the engine at {backend.endpoint.address}")
    warnings = []
    try:
        backend.verify()
    except EngineError as error:
        backend.failed(str(error))
        warnings.append(f"{error}; completions are empty until it answers")
    engine = Engine(backend, settings)
    engine.calibrated_confidence = calibrated_threshold(folder)
    engine.warnings = warnings
    return engine


RATE_PROBE_TOKENS = 512  # the prompt whose prefill is timed at load


def prefill_rate(model: GPTBigCodeForCausalLM, decoder: Decoder) -> float:
    """Prompt tokens a second this model prefills at here: one timed pass over a
    RATE_PROBE_TOKENS prompt on throwaway buffers, after warm_up (a fraction of a second for
    the packaged model on a CPU, a few seconds for a 1B one)."""
    length = max(2, min(RATE_PROBE_TOKENS, model.config.n_positions - 1))
    with torch.inference_mode():
        kv = KVCache(model.config, 1, length + 1, dtype=model.dtype, device=model.device)
        started = time.perf_counter()
        decoder.prefill(torch.zeros((1, length), dtype=torch.long, device=model.device), kv)
        seconds = time.perf_counter() - started
    log.info("prefill: %d tokens in %.3f s", length, seconds)
    return length / max(seconds, 1e-6)


def warm_up(model: GPTBigCodeForCausalLM, decoder: Decoder) -> None:
    """A prompt-shaped pass and a decode step on throwaway buffers, so that the first request
    does not pay for lazy initialisation (building kernels, compiling, capturing a graph)."""
    with torch.inference_mode():
        kv = KVCache(model.config, 1, 3, dtype=model.dtype, device=model.device)
        decoder.prefill(torch.zeros((1, 2), dtype=torch.long, device=model.device), kv)
        decoder.start(kv)
        decoder.step(0)
