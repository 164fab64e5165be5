"""dtype "auto": bf16 only where the machine computes it natively."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model import hardware


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    hardware.cpu_bf16_native.cache_clear()
    yield
    hardware.cpu_bf16_native.cache_clear()


def test_a_cpu_without_bf16_instructions_runs_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(hardware.platform, "system", lambda: "Linux")
    assert hardware.cpu_bf16_native() is False
    assert hardware.auto_dtype("cpu") == torch.float32


def test_a_cpu_with_bf16_instructions_runs_in_bf16() -> None:
    if not hardware.cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        pytest.skip("this CPU has no bf16 instructions")
    assert hardware.cpu_bf16_native() is True  # the probe's matmul must work where they exist
    assert hardware.auto_dtype("cpu") == torch.bfloat16
    assert hardware.auto_dtype(torch.device("cpu")) == torch.bfloat16


def test_other_devices_without_a_rule_run_in_float32() -> None:
    assert hardware.auto_dtype("meta") == torch.float32


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma f16c\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm fphp\n")
    assert hardware.cpu_flags(x86) == {"fpu", "avx2", "fma", "f16c"}
    assert hardware.cpu_flags(arm) == {"fp", "asimd", "evtstrm", "fphp"}
    assert hardware.cpu_flags(tmp_path / "missing") == frozenset()
