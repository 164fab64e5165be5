"""Loading the in-process engine: the precision the native decode path computes in follows the
dtype option (a dtype named by the user is the one computed in; "auto" may store an fp32
model's matrices in f16 for the native kernels where the CPU lacks bf16 arithmetic), and the
default context budget follows the prefill rate measured at load."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lsp_fixtures import build_checkpoint

from lsp_server.engine import loading
from lsp_server.engine.local import LocalBackend
from lsp_server.engine.pipeline import RESERVED_TOKENS, Engine
from lsp_server.engine.requests import EngineSettings, ModelChoice
from model import GPTBigCodeForCausalLM, Tokenizer, native
from model.decoders import make_decoder

needs_native = pytest.mark.skipif(native.library() is None,
                                  reason="no native kernels for this CPU")


@pytest.fixture
def f16_weights_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where "auto" weights are f16 (a CPU without bf16 arithmetic, as most AVX2 ones)."""
    monkeypatch.setenv(native.WEIGHTS_ENV, "f16")


@needs_native
def test_an_explicit_float32_is_computed_in_float32(f16_weights_by_default: None) -> None:
    engine = loading.load_engine(ModelChoice(dtype="float32", decode_path="native"))
    assert engine.dtype == "float32"
    assert engine.status()["decode_path"] == "native-fp32"


@needs_native
def test_auto_dtype_on_a_cpu_without_bf16_reads_f16_matrices(
    f16_weights_by_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "auto_dtype", lambda device: torch.float32)
    engine = loading.load_engine(ModelChoice(dtype="auto", decode_path="native"))
    assert engine.dtype == "float32"
    assert engine.status()["decode_path"] == "native-f16w"


# ---- the context budget suited to the device


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A small random model with 8,192 positions, and its tokenizer."""
    folder = build_checkpoint(tmp_path_factory.mktemp("wide") / "m", n_positions=8192)
    return GPTBigCodeForCausalLM.from_pretrained(folder), Tokenizer.from_pretrained(folder)


def engine_at(wide: tuple[Any, Any], rate: float | None, context_tokens: int | None = None
              ) -> Engine:
    model, tokenizer = wide
    backend = LocalBackend(model, tokenizer, make_decoder(model, "torch"), prefill_rate=rate)
    return Engine(backend, EngineSettings(context_tokens=context_tokens, max_new_tokens=64))


@pytest.mark.parametrize(("rate", "tokens", "chosen_by"), [
    (1000.0, 1792, "device"),  # 2 s of prefill, in steps of 256
    (100.0, 512, "device"),  # never below 512
    (1e6, 8192 - 64 - RESERVED_TOKENS, "model"),  # a fast device: the model's positions
    (None, 8192 - 64 - RESERVED_TOKENS, "model"),  # a backend that does not say
])
def test_without_an_option_the_budget_is_two_seconds_of_prefill(
    wide: tuple[Any, Any], rate: float | None, tokens: int, chosen_by: str
) -> None:
    context = engine_at(wide, rate).status()["context"]
    assert (context["tokens"], context["chosen_by"]) == (tokens, chosen_by)
    assert context["prefill_tokens_per_s"] == (round(rate) if rate else None)


def test_the_context_tokens_option_wins_over_the_device(wide: tuple[Any, Any]) -> None:
    engine = engine_at(wide, 1000.0, context_tokens=4000)
    assert (engine.builder.budget.tokens, engine.budget_source) == (4000, "option")
    engine.configure(EngineSettings(context_tokens=None, max_new_tokens=64))
    assert (engine.builder.budget.tokens, engine.budget_source) == (1792, "device")


def test_loading_on_the_cpu_measures_the_prefill_rate() -> None:
    engine = loading.load_engine(ModelChoice(device="cpu"))
    context = engine.status()["context"]
    assert context["prefill_tokens_per_s"] > 0
    assert context["chosen_by"] in ("device", "model")
    assert 512 <= context["tokens"] <= 1024


def test_the_packaged_model_is_gated_by_path_as_by_name() -> None:
    from model.checkpoint import DEFAULT_MODEL_DIR

    by_name = loading.load_engine(ModelChoice(name="default", device="cpu"))
    by_path = loading.load_engine(ModelChoice(name=str(DEFAULT_MODEL_DIR), device="cpu"))
    assert 0 < by_name.calibrated_confidence == by_path.calibrated_confidence < 1
    assert by_path.status()["confidence"]["calibrated"] == by_name.calibrated_confidence
