"""What the machine computes well: whether the CPU has native bf16 arithmetic, and the dtype a
model should run in on a device when the user leaves the choice to us ("auto")."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# CPU flags (Linux /proc/cpuinfo names) of instructions that compute in bf16 natively; without
# them oneDNN emulates bf16 matmuls, which are then slower than fp32 ones.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache  # asked on every native product: read the file once
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags as Linux names them ("flags" on x86, "Features" on ARM);
    empty where `cpuinfo` is missing."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 instructions and a small bf16 matmul runs here and is right."""
    flags = cpu_flags()
    on_arm_mac = platform.system() == "Darwin" and platform.machine() == "arm64"
    if not (flags & BF16_FLAGS or on_arm_mac):
        return False
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        a = torch.randn(16, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            product = a @ a
        return product.dtype == torch.bfloat16 and torch.allclose(
            product.float(), a @ a, atol=0.5, rtol=0.05)
    except RuntimeError:
        return False


def auto_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on a CUDA GPU that has it and on a CPU that computes it natively, else fp32. (On
    such a CPU the native decoder then reads the fp32 model's matrices from f16 copies:
    model.native.weight_storage.)"""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu" and cpu_bf16_native():
        return torch.bfloat16
    return torch.float32


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
