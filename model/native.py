"""Native C kernels for CPU decoding, built on first use for the CPU's instruction set: row
products, one-token multi-query attention and fused decode blocks."""

# Two sources, selected at run time from the CPU's flags (`select_isa`; $GPTBIGCODE_NATIVE_ISA
# forces one, and is refused where the CPU lacks it):
#
# - model/csrc/rowdot.c, AVX-512 ("avx512"): row products y = W x + b for one row of bf16 or
#   fp32 weights, up to 8 rows of bf16, and int8 weights with per-row scales (activations kept
#   in bf16, or quantised per block of 64 values and multiplied with VNNI); multi-query
#   attention of one query token (bf16); a whole GPTBigCode block of a one-token step in one
#   call (bf16, fp32, or int8 "q8"). bf16 needs AVX512-BF16, q8 AVX512-VNNI.
# - model/csrc/vecdot.c, portable (compiler vector extensions), built for AVX2 + FMA + F16C
#   ("avx2"), for 64-bit ARM ("neon") and for AVX-512: fp32 row products, one-token fp32
#   attention, and fused fp32 blocks whose matrices are stored as fp32, bf16 or f16 and
#   widened to fp32 in the kernel ("bf16w", "f16w": half the bytes per token on CPUs without
#   bf16 arithmetic). On "avx2" and "neon" it is the only library.
#
# A decode step is bound by how fast the weights stream from memory. torch's one-row bf16
# matmul streams them at a third of the machine's bandwidth and its fp32 one at about half;
# these loops read them at the speed of a plain read (tests/bench/decode.py measures both in
# one run). The attention costs about two thirds of scaled_dot_product_attention's at 2,048
# positions, and the fused block saves the Python work between a block's operations.
#
# Each library is compiled with the system's C compiler (`$CC`, else gcc, cc or clang) into a
# per-user cache folder keyed by the source, compiler and flags, so a machine builds it once
# (about a second). Where there is no compiler, no x86-64 CPU with AVX2 or AVX-512 nor a
# 64-bit ARM CPU, or the build fails, the *_kernel functions return None and callers keep
# their PyTorch path; `unavailable_reason` says why.

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .hardware import BF16_FLAGS, cpu_flags

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "rowdot.c"
PORTABLE_SOURCE = SOURCE.with_name("vecdot.c")
ABI_VERSION = 8
PORTABLE_ABI_VERSION = 1
FLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno")
# bf16 dot products read x in blocks of 32 values (rowdot.c), at most 1,024 of them.
BF16_K_MULTIPLE = 32
BF16_K_MAX = 32 * 1024
Q8_BLOCK = 64  # activations quantised per block of this many values (rowdot_q8)
OUT_OF_MEMORY = -2  # what a kernel returns when it cannot allocate its copy of x

BLOCK_TENSORS = ("ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b",
                 "ln2_w", "ln2_b", "fc_w", "fc_b", "out_w", "out_b")


MATRICES = ("attn", "proj", "fc", "out")


class BlockParams(ctypes.Structure):
    """rowdot.c's block_bf16: one block's parameters (all bf16, all fp32, or int8 matrices
    with bf16 per-row scales and bf16 vectors) and its matrices' row strides."""

    _fields_ = [*((name, ctypes.c_void_p) for name in BLOCK_TENSORS),
                *((f"ld_{m}", ctypes.c_int64) for m in MATRICES),
                ("eps1", ctypes.c_float), ("eps2", ctypes.c_float),
                *((f"{m}_s", ctypes.c_void_p) for m in MATRICES)]


RowProduct = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def cache_dir() -> Path:
    """Where built libraries live: $GPTBIGCODE_LSP_CACHE, else $XDG_CACHE_HOME or ~/.cache."""
    explicit = os.environ.get("GPTBIGCODE_LSP_CACHE")
    if explicit:
        return Path(explicit) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gptbigcode-lsp" / "native"


def find_compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@dataclass(frozen=True)
class Build:
    """One library: a source compiled with these flags (and linked with these libraries)."""

    source: Path
    flags: tuple[str, ...]
    libs: tuple[str, ...] = ()


ROWDOT = Build(SOURCE, FLAGS)
_PORTABLE_FLAGS = (*FLAGS, "-ffp-contract=fast")
# The portable source per instruction set: floats per vector and the compiler's ISA flags.
PORTABLE = {
    "avx512": Build(PORTABLE_SOURCE, (*_PORTABLE_FLAGS, "-DVW=16", "-mavx512f", "-mavx512bw",
                                      "-mfma", "-mf16c"), ("-lm",)),
    "avx2": Build(PORTABLE_SOURCE, (*_PORTABLE_FLAGS, "-DVW=8", "-mavx2", "-mfma", "-mf16c"),
                  ("-lm",)),
    # ARMv8-A: Advanced SIMD is part of the base architecture, f16 widening included.
    "neon": Build(PORTABLE_SOURCE, (*_PORTABLE_FLAGS, "-DVW=4"), ("-lm",)),
}

# Instruction sets the kernels are built for, fastest first, and the CPU flags (Linux
# /proc/cpuinfo names) each needs. Every AVX2 CPU made has F16C and FMA as well; every
# 64-bit ARM CPU has NEON (Advanced SIMD).
ISA_FLAGS: dict[str, frozenset[str]] = {
    "avx512": frozenset({"avx512f", "avx512bw"}),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
    "neon": frozenset(),
}
ISA_ENV = "GPTBIGCODE_NATIVE_ISA"
_MACHINES = {"avx512": ("x86_64", "amd64"), "avx2": ("x86_64", "amd64"),
             "neon": ("aarch64", "arm64")}


class IsaUnavailable(ValueError):
    """An instruction set that cannot run here was asked for; the message says why."""


def isa_problem(isa: str, flags: frozenset[str] | None = None, machine: str | None = None
                ) -> str:
    """Why the kernels for `isa` cannot run on a CPU with these flags ("" where they can);
    flags and machine default to this machine's."""
    if isa not in ISA_FLAGS:
        return f"{isa!r} is not one of the kernels' instruction sets {list(ISA_FLAGS)}"
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in _MACHINES[isa]:
        kind = "a 64-bit ARM" if isa == "neon" else "an x86-64"
        return f"{isa} kernels need {kind} CPU, this is {machine}"
    missing = ISA_FLAGS[isa] - (cpu_flags() if flags is None else flags)
    if missing:
        return f"the CPU lacks {', '.join(sorted(missing))} (needed by the {isa} kernels)"
    return ""


def select_isa(requested: str | None = None, flags: frozenset[str] | None = None,
               machine: str | None = None) -> str:
    """The instruction set the kernels run on: `requested`, else $GPTBIGCODE_NATIVE_ISA, else
    the fastest this CPU has ("auto" or "" also mean that). A requested ISA the CPU lacks, or
    a CPU with none of them, raises IsaUnavailable naming what is missing."""
    source = ""
    if requested is None:
        requested = os.environ.get(ISA_ENV, "")
        source = f" (asked for by ${ISA_ENV})"
    requested = requested.strip().lower()
    if requested and requested != "auto":
        why = isa_problem(requested, flags, machine)
        if why:
            raise IsaUnavailable(f"native kernels for {requested}{source} refused: {why}")
        return requested
    problems = []
    for isa in ISA_FLAGS:
        why = isa_problem(isa, flags, machine)
        if not why:
            return isa
        problems.append(why)
    raise IsaUnavailable("no native kernels for this CPU: " + "; ".join(problems))


def build_library(compiler: str, folder: Path, build: Build = ROWDOT) -> Path:
    """Compile build's source into folder (once per source/compiler/flags); the .so path."""
    source = build.source.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    key = hashlib.sha256(
        source + repr((compiler, version, build.flags, build.libs)).encode()).hexdigest()[:16]
    stem = build.source.stem
    target = folder / f"{stem}-{key}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent servers never load a half-written file.
    fd, partial = tempfile.mkstemp(prefix=f".{stem}-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *build.flags, "-o", partial, str(build.source), *build.libs],
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {build.source.name}: "
                               f"{result.stderr.strip()}")
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def library(isa: str | None = None) -> ctypes.CDLL | None:
    """The main library of `isa` (default: `select_isa()`): rowdot.c's for "avx512",
    vecdot.c's for "avx2" and "neon"; None where it cannot be built or used here."""
    return _main(isa)[0]


def unavailable_reason(isa: str | None = None) -> str:
    """Why `library(isa)` is None ("" where it loaded), for messages naming what is missing."""
    return _main(isa)[1]


def active_isa(isa: str | None = None) -> str | None:
    """`select_isa(isa)`, or None where that names nothing that runs here."""
    try:
        return select_isa(isa)
    except IsaUnavailable:
        return None


def _main(isa: str | None) -> tuple[ctypes.CDLL | None, str]:
    try:
        name = select_isa(isa)
    except IsaUnavailable as exc:
        # an ISA asked for by name and refused is worth a warning; a CPU without any, not
        _log_once(str(exc), logging.INFO if isa is None and not os.environ.get(ISA_ENV)
                  else logging.WARNING)
        return None, str(exc)
    return _rowdot() if name == "avx512" else _portable(name)


@functools.cache
def _log_once(message: str, level: int) -> None:
    log.log(level, "native kernels unavailable: %s", message)


def portable_library(isa: str | None = None) -> ctypes.CDLL | None:
    """vecdot.c built for `isa` (default: `select_isa()`), or None where it cannot be."""
    name = active_isa(isa)
    return None if name is None else _portable(name)[0]


def _build_and_load(build: Build) -> tuple[ctypes.CDLL | None, str]:
    compiler = find_compiler()
    if compiler is None:
        return _refuse("no C compiler found ($CC, gcc, cc, clang)")
    try:
        path = build_library(compiler, cache_dir(), build)
        # torch is imported, so its OpenMP runtime is loaded: the library binds to that one.
        return ctypes.CDLL(str(path)), ""
    except (OSError, RuntimeError) as exc:
        return _refuse(str(exc), logging.WARNING)


@functools.cache
def _rowdot() -> tuple[ctypes.CDLL | None, str]:
    lib, why = _build_and_load(ROWDOT)
    if lib is None:
        return None, why
    if lib.rowdot_abi_version() != ABI_VERSION:
        return _refuse(f"rowdot.c's library has ABI {lib.rowdot_abi_version()}, expected "
                       f"{ABI_VERSION}", logging.WARNING)
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in ("rowdot_bf16", "rowdot_f32"):
        fn = getattr(lib, name)
        fn.argtypes = [pointer, i64, pointer, pointer, pointer, i64, i64]
        fn.restype = ctypes.c_int
    lib.rowdot_bf16_rows.argtypes = [pointer, i64, pointer, pointer, pointer, i64, i64, i64]
    lib.rowdot_bf16_rows.restype = ctypes.c_int
    for name in ("rowdot_int8", "rowdot_q8"):
        fn = getattr(lib, name)
        fn.argtypes = [pointer, i64, pointer, pointer, pointer, pointer, i64, i64]
        fn.restype = ctypes.c_int
    lib.mqa_decode_bf16.argtypes = [pointer, pointer, pointer, i64, pointer, i64, i64, i64,
                                    ctypes.c_float, pointer]
    lib.mqa_decode_bf16.restype = ctypes.c_int
    for name in ("decode_block_bf16", "decode_block_f32", "decode_block_q8"):
        _bind_block(getattr(lib, name))
    lib.decode_block_work_bytes.argtypes = [i64, i64, i64, i64]
    lib.decode_block_work_bytes.restype = i64
    return lib, ""


@functools.cache
def _portable(isa: str) -> tuple[ctypes.CDLL | None, str]:
    lib, why = _build_and_load(PORTABLE[isa])
    if lib is None:
        return None, why
    if lib.vecdot_abi_version() != PORTABLE_ABI_VERSION:
        return _refuse(f"vecdot.c's library has ABI {lib.vecdot_abi_version()}, expected "
                       f"{PORTABLE_ABI_VERSION}", logging.WARNING)
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in ("rowdot_f32", "rowdot_f32_bf16w", "rowdot_f32_f16w"):
        fn = getattr(lib, name)
        fn.argtypes = [pointer, i64, pointer, pointer, pointer, i64, i64]
        fn.restype = ctypes.c_int
    lib.mqa_decode_f32.argtypes = [pointer, pointer, pointer, i64, pointer, i64, i64, i64,
                                   ctypes.c_float, pointer]
    lib.mqa_decode_f32.restype = ctypes.c_int
    for name in ("decode_block_f32", "decode_block_f32_bf16w", "decode_block_f32_f16w"):
        _bind_block(getattr(lib, name))
    lib.decode_block_work_bytes.argtypes = [i64, i64, i64, i64]
    lib.decode_block_work_bytes.restype = i64
    return lib, ""


def _bind_block(fn: Any) -> None:
    """A decode_block_* function's argument and result types (both libraries share them)."""
    i64 = ctypes.c_int64
    fn.argtypes = [ctypes.POINTER(BlockParams), ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, i64, i64, i64, i64, i64, ctypes.c_float, ctypes.c_void_p]
    fn.restype = ctypes.c_int


def _refuse(reason: str, level: int = logging.INFO) -> tuple[None, str]:
    log.log(level, "native kernels unavailable: %s", reason)
    return None, reason


def check(rc: int, what: str) -> None:
    """Turn a kernel's return code into an exception naming `what` it was asked to do."""
    if rc == OUT_OF_MEMORY:
        raise MemoryError(f"{what}: out of memory")
    if rc != 0:
        raise ValueError(f"{what}: the kernel refused the shape")


def _caller(fn: Callable[..., int], dtype: torch.dtype) -> RowProduct:
    def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        n, k = weight.shape
        y = torch.empty(n, dtype=dtype)
        rc = fn(weight.data_ptr(), weight.stride(0), x.data_ptr(),
                None if bias is None else bias.data_ptr(), y.data_ptr(), n, k)
        check(rc, f"native row product of a ({n}, {k}) weight")
        return y
    return product


def row_product_kernel(dtype: torch.dtype, isa: str | None = None) -> RowProduct | None:
    """`f(x, weight, bias) -> weight @ x + bias` for one row of `dtype`, or None.

    x: (K,) contiguous; weight: (N, K) with unit stride along K; bias: (N,) contiguous or
    None; all of `dtype`, on the CPU. fp32 runs on every ISA; bf16 needs AVX512-BF16 and K a
    multiple of 32 (`supports`). isa: as for `select_isa`.
    """
    name = active_isa(isa)
    return None if name is None else _row_product_kernel(dtype, name)


@functools.cache
def _row_product_kernel(dtype: torch.dtype, isa: str) -> RowProduct | None:
    lib = library(isa)
    if lib is None:
        return None
    if dtype == torch.bfloat16 and isa == "avx512" and "avx512_bf16" in cpu_flags():
        return _caller(lib.rowdot_bf16, dtype)
    if dtype == torch.float32:
        return _caller(lib.rowdot_f32, dtype)
    return None


HALF_WEIGHTS = (torch.bfloat16, torch.float16)  # weight storage the portable kernels widen


def half_weight_product_kernel(storage: torch.dtype, isa: str | None = None
                               ) -> RowProduct | None:
    """`f(x, weight, bias) -> weight @ x + bias` for one fp32 row x and a weight stored as
    `storage` (bf16 or f16, widened to fp32 in the kernel), or None. bias: fp32 or None; the
    result is fp32, the exact product of the stored weights summed in fp32. Layouts as for
    row_product_kernel; any K."""
    name = active_isa(isa)
    if name is None or storage not in HALF_WEIGHTS:
        return None
    lib = portable_library(name)
    if lib is None:
        return None
    fn = lib.rowdot_f32_bf16w if storage == torch.bfloat16 else lib.rowdot_f32_f16w

    def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        n, k = weight.shape
        y = torch.empty(n, dtype=torch.float32)
        rc = fn(weight.data_ptr(), weight.stride(0), x.data_ptr(),
                None if bias is None else bias.data_ptr(), y.data_ptr(), n, k)
        check(rc, f"native row product of a ({n}, {k}) {storage} weight")
        return y

    return product


MAX_ROWS = 8  # rows_product_kernel takes this many rows at most


def rows_product_kernel(isa: str | None = None) -> RowProduct | None:
    """`f(x, weight, bias) -> x @ weight.T + bias` for 1 to MAX_ROWS bf16 rows, or None.

    x: (M, K) contiguous; weight, bias as for row_product_kernel's bf16 kernel. The weights
    stream once for all M rows (a keystroke that retokenises into a few tokens). AVX512-BF16.
    """
    return _rows_product_kernel() if active_isa(isa) == "avx512" else None


@functools.cache
def _rows_product_kernel() -> RowProduct | None:
    lib = library("avx512")
    if lib is None or "avx512_bf16" not in cpu_flags():
        return None
    fn = lib.rowdot_bf16_rows

    def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        (n, k), m = weight.shape, x.shape[0]
        y = torch.empty(m, n, dtype=torch.bfloat16)
        rc = fn(weight.data_ptr(), weight.stride(0), x.data_ptr(),
                None if bias is None else bias.data_ptr(), y.data_ptr(), n, k, m)
        check(rc, f"native row product of {m} rows and a ({n}, {k}) weight")
        return y

    return product


def supports(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the kernel for weight's dtype takes this weight and bias as they are."""
    if weight.device.type != "cpu" or weight.dim() != 2 or weight.stride(1) != 1:
        return False
    if bias is not None and (bias.dtype != weight.dtype or not bias.is_contiguous()):
        return False
    if weight.dtype == torch.bfloat16:
        k = weight.shape[1]
        return k % BF16_K_MULTIPLE == 0 and k <= BF16_K_MAX
    return weight.dtype == torch.float32


Int8RowProduct = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def int8_row_product_kernel(quantize_activations: bool = True, isa: str | None = None
                            ) -> Int8RowProduct | None:
    """`f(x, q, scales, bias) -> (q @ x) * scales + bias` for one bf16 row, or None.

    q: (N, K) int8 with unit stride along K, K a multiple of 16 (`supports_int8`); x: (K,)
    contiguous; scales, bias (or None): (N,) contiguous; all but q bf16, on the CPU.

    With quantize_activations, on a CPU with AVX512-VNNI and K a multiple of 64, x is
    quantised to int8 in blocks of 64 values (scale: the block's largest magnitude / 127, as
    llama.cpp's q8_0) and the products run on int8 dot-product instructions, which read the
    weights at the memory's speed. Otherwise x stays bf16, widened to fp32 with the weights:
    exact, but compute-bound at about half that speed. Both accumulate in fp32 and round once.
    AVX-512 only.
    """
    if active_isa(isa) != "avx512":
        return None
    return _int8_row_product_kernel(quantize_activations)


@functools.cache
def _int8_row_product_kernel(quantize_activations: bool) -> Int8RowProduct | None:
    lib = library("avx512")
    if lib is None:
        return None
    exact, q8 = lib.rowdot_int8, lib.rowdot_q8
    use_q8 = quantize_activations and "avx512_vnni" in cpu_flags()

    def product(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        n, k = q.shape
        y = torch.empty(n, dtype=torch.bfloat16)
        fn = q8 if use_q8 and k % Q8_BLOCK == 0 else exact
        rc = fn(q.data_ptr(), q.stride(0), x.data_ptr(), scales.data_ptr(),
                None if bias is None else bias.data_ptr(), y.data_ptr(), n, k)
        check(rc, f"native int8 row product of a ({n}, {k}) weight")
        return y

    return product


def supports_int8(q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the int8 kernel takes these tensors as they are."""
    if q.device.type != "cpu" or q.dtype != torch.int8 or q.dim() != 2 or q.stride(1) != 1:
        return False
    if scales.dtype != torch.bfloat16 or not scales.is_contiguous():
        return False
    if bias is not None and (bias.dtype != torch.bfloat16 or not bias.is_contiguous()):
        return False
    return q.shape[1] % 16 == 0 and q.shape[1] <= BF16_K_MAX


# Head sizes the attention kernel has register layouts for (StarCoder-family models use both).
ATTENTION_HEAD_DIMS = (64, 128)
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def attention_kernel(head_dim: int, isa: str | None = None) -> Attention | None:
    """`f(q, k, v, scale) -> softmax(scale * q k^T) v` for one query token, or None.

    q: (H, head_dim) contiguous; k, v: (S, head_dim) with unit stride along head_dim and one
    row stride; all bf16 on the CPU, S >= 1. Returns (H, head_dim) bf16. Needs AVX512-BF16
    and head_dim 64 or 128; softmax and the weighted sum run in fp32.
    """
    return _attention_kernel(head_dim) if active_isa(isa) == "avx512" else None


@functools.cache
def _attention_kernel(head_dim: int) -> Attention | None:
    lib = library("avx512")
    if lib is None or "avx512_bf16" not in cpu_flags() or head_dim not in ATTENTION_HEAD_DIMS:
        return None
    return _one_token_attention(lib.mqa_decode_bf16, head_dim, torch.bfloat16)


def _one_token_attention(fn: Any, head_dim: int, dtype: torch.dtype) -> Attention:
    """A native one-token multi-query attention entry point (`mqa_decode_*`) as an Attention,
    its output in `dtype`."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
               ) -> torch.Tensor:
        heads, length = q.shape[0], k.shape[0]
        if k.stride() != v.stride() or k.stride(1) != 1 or v.shape[0] != length:
            raise ValueError("keys and values must share one row stride, unit along head_dim")
        out = torch.empty(heads, head_dim, dtype=dtype)
        scratch = torch.empty(heads * (length + 1), dtype=torch.float32)
        rc = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), k.stride(0), out.data_ptr(), heads,
                length, head_dim, scale, scratch.data_ptr())
        if rc != 0:
            raise ValueError(f"native attention refused head_dim {head_dim}, {length} positions")
        return out

    return attend


FP32_ATTENTION_HEAD_DIMS = (64, 128)  # head sizes vecdot.c's fp32 attention takes


def fp32_attention_kernel(head_dim: int, isa: str | None = None) -> Attention | None:
    """`f(q, k, v, scale) -> softmax(scale * q k^T) v` for one fp32 query token, or None:
    vecdot.c's attention (the fused fp32 blocks' own), on every ISA. q: (H, head_dim)
    contiguous; k, v: (S, head_dim), unit stride along head_dim, one row stride, S >= 1."""
    name = active_isa(isa)
    if name is None or head_dim not in FP32_ATTENTION_HEAD_DIMS:
        return None
    lib = portable_library(name)
    if lib is None:
        return None
    return _one_token_attention(lib.mqa_decode_f32, head_dim, torch.float32)


# Fused block kinds: the model's activations and the kernel's function, per library.
# "bf16w" and "f16w": an fp32 model whose matrices the kernel reads as bf16 / f16 copies.
BLOCK_FUNCTIONS = {"bf16": "decode_block_bf16", "fp32": "decode_block_f32",
                   "q8": "decode_block_q8", "bf16w": "decode_block_f32_bf16w",
                   "f16w": "decode_block_f32_f16w"}
_MATRIX_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "q8": torch.int8,
                  "bf16w": torch.bfloat16, "f16w": torch.float16}
FP32_KINDS = ("fp32", "bf16w", "f16w")  # kinds whose activations and KV cache are fp32


class BlockKernel:
    """One GPTBigCode block of a decode step in one native call (decode_block_* of rowdot.c
    or vecdot.c): layer norms, the four products, the token's K/V row, attention, GELU-tanh
    and both residual adds, rounding wherever torch's path rounds. Kinds: "bf16" and "fp32"
    (plain weights), "q8" (int8 weights with per-row scales, activations quantised per block
    of 64 values for each product, the rest bf16), "bf16w" and "f16w" (fp32 activations,
    matrices stored in half precision and widened in the kernel)."""

    def __init__(self, lib: ctypes.CDLL, kind: str, isa: str) -> None:
        self.kind, self.isa = kind, isa
        self._run = getattr(lib, BLOCK_FUNCTIONS[kind])
        self._work_bytes = lib.decode_block_work_bytes

    def params(self, tensors: dict[str, torch.Tensor | None], eps1: float, eps2: float
               ) -> BlockParams | None:
        """The struct for one block, or None where a tensor is not as the kernel reads it.

        tensors: BLOCK_TENSORS (the *_w of the four matrices int8 for "q8", bf16 / f16 for
        "bf16w" / "f16w") and, for "q8", the matrices' scales as attn_s, proj_s, fc_s, out_s.
        Vectors must be contiguous and matrices have unit stride along their rows, on the CPU.
        """
        vector_dtype = torch.float32 if self.kind in FP32_KINDS else torch.bfloat16
        values: dict[str, object] = {}
        for name in BLOCK_TENSORS:
            t = tensors[name]
            if t is None and name.endswith("_b"):
                values[name] = None
                continue
            if t is None or t.device.type != "cpu":
                return None
            if name.endswith("_w") and not name.startswith("ln"):  # a matrix
                if t.dtype != _MATRIX_DTYPES[self.kind] or t.dim() != 2 or t.stride(1) != 1:
                    return None
                if self.kind == "q8" and t.shape[1] % Q8_BLOCK:
                    return None
                values["ld_" + name[:-2]] = t.stride(0)
            elif t.dtype != vector_dtype or not t.is_contiguous():
                return None
            values[name] = t.data_ptr()
        if self.kind == "q8":
            for m in MATRICES:
                scales = tensors.get(f"{m}_s")
                if (scales is None or scales.dtype != torch.bfloat16
                        or not scales.is_contiguous()):
                    return None
                values[f"{m}_s"] = scales.data_ptr()
        return BlockParams(**values, eps1=eps1, eps2=eps2)

    def work_bytes(self, heads: int, head_dim: int, inner: int, positions: int) -> int:
        return int(self._work_bytes(heads, head_dim, inner, positions))

    def __call__(self, params: BlockParams, x: torch.Tensor, k_rows: int, v_rows: int,
                 row_stride: int, past: int, heads: int, head_dim: int, inner: int,
                 scale: float, work: torch.Tensor) -> None:
        rc = self._run(ctypes.byref(params), x.data_ptr(), k_rows, v_rows, row_stride, past,
                       heads, head_dim, inner, scale, work.data_ptr())
        if rc != 0:
            raise ValueError(f"native decode block ({self.kind}, {self.isa}) refused "
                             f"heads={heads}, head_dim={head_dim}, inner={inner}")


def block_kernel(kind: str, isa: str | None = None) -> BlockKernel | None:
    """The fused decode block of a kind on `isa` (as for `select_isa`), or None where this
    CPU or library lacks it: on "avx512", "bf16" needs AVX512-BF16, "q8" AVX512-VNNI and
    AVX512-BF16; "fp32", "bf16w" and "f16w" run on every ISA."""
    name = active_isa(isa)
    return None if name is None else _block_kernel(kind, name)


@functools.cache
def _block_kernel(kind: str, isa: str) -> BlockKernel | None:
    if kind not in BLOCK_FUNCTIONS:
        return None
    if kind in ("bf16w", "f16w") or isa != "avx512":
        lib = portable_library(isa)
        if lib is None or kind not in FP32_KINDS:
            return None
        return BlockKernel(lib, kind, isa)
    lib = library(isa)
    needs = {"bf16": {"avx512_bf16"}, "fp32": set(), "q8": {"avx512_vnni", "avx512_bf16"}}
    if lib is None or not needs[kind] <= cpu_flags():
        return None
    return BlockKernel(lib, kind, isa)


def weight_storage(flags: frozenset[str] | None = None) -> torch.dtype:
    """How the fused fp32 blocks store their matrices when left to choose ("auto"): f16 on
    CPUs without bf16 arithmetic, fp32 on CPUs with it (there dtype "auto" runs bf16 models,
    so an fp32 model was asked for by name). Half the bytes per token: tiny_starcoder_py's
    shape decodes in 17.7 ms a token with f16 matrices against 38.7 ms in fp32 on the AVX2
    kernels (tests/bench/decode.py --kernels); bf16 storage is as fast (a shift widens it),
    f16 keeps three more bits of each weight and is exact in fp32 after F16C's widening."""
    flags = cpu_flags() if flags is None else flags
    return torch.float32 if flags & BF16_FLAGS else torch.float16


WEIGHTS_ENV = "GPTBIGCODE_NATIVE_WEIGHTS"
WEIGHT_FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def override(isa: str | None = None, weights: str | None = None) -> None:
    """For this process and the processes it starts: the kernels' instruction set (refused
    with IsaUnavailable where the CPU lacks it) and how an fp32 model's matrices are stored
    (one of WEIGHT_FORMATS or "auto"); None leaves either as it is."""
    if isa:
        select_isa(isa)
        os.environ[ISA_ENV] = isa
    if weights:
        if weights != "auto" and weights not in WEIGHT_FORMATS:
            raise ValueError(f"native weight storage {weights!r} is not one of "
                             f"{['auto', *WEIGHT_FORMATS]}")
        os.environ[WEIGHTS_ENV] = weights
