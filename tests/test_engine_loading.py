"""Loading the in-process engine: the precision the native decode path computes in follows the
dtype option (a dtype named by the user is the one computed in; "auto" may store an fp32
model's matrices in f16 for the native kernels where the CPU lacks bf16 arithmetic)."""

from __future__ import annotations

import pytest
import torch

from lsp_server.engine import loading
from lsp_server.engine.requests import ModelChoice
from model import native

pytestmark = pytest.mark.skipif(native.library() is None, reason="no native kernels built here")


@pytest.fixture
def f16_weights_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where "auto" weights are f16 (a CPU without bf16 arithmetic, as most AVX2 ones)."""
    monkeypatch.setenv(native.WEIGHTS_ENV, "f16")


def test_an_explicit_float32_is_computed_in_float32(f16_weights_by_default: None) -> None:
    engine = loading.load_engine(ModelChoice(dtype="float32", decode_path="native"))
    assert engine.dtype == "float32"
    assert engine.status()["decode_path"] == "native-fp32"


def test_auto_dtype_on_a_cpu_without_bf16_reads_f16_matrices(
    f16_weights_by_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "auto_dtype", lambda device: torch.float32)
    engine = loading.load_engine(ModelChoice(dtype="auto", decode_path="native"))
    assert engine.dtype == "float32"
    assert engine.status()["decode_path"] == "native-f16w"
