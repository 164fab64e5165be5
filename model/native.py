"""Native C kernels for CPU decoding (model/csrc/rowdot.c, built on first use): row products,
one-token multi-query attention and fused decode blocks."""

# - row products: y = W x + b for one row of bf16 or fp32 weights, up to 8 rows of bf16, and
#   int8 weights with per-row scales (activations kept in bf16, or quantised per block of 64
#   values and multiplied with VNNI);
# - multi-query attention of one query token over the cached keys and values (bf16);
# - a whole GPTBigCode block of a one-token step in one call (bf16, fp32, or int8 "q8").
#
# A decode step is bound by how fast the weights stream from memory. torch's one-row bf16
# matmul streams them at a third of the machine's bandwidth and its fp32 one at about half;
# these loops read them at the speed of a plain read (tests/bench/decode.py measures both in
# one run). The attention costs about two thirds of scaled_dot_product_attention's at 2,048
# positions, and the fused block saves the Python work between a block's operations.
#
# The library is compiled with the system's C compiler (`$CC`, else gcc, cc or clang) into a
# per-user cache folder keyed by the source, compiler and flags, so a machine builds it once
# (about a second). Where there is no compiler, no x86-64 CPU with AVX-512, or the build fails,
# the *_kernel functions return None and callers keep their PyTorch path; `unavailable_reason`
# says why.

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
from pathlib import Path

import torch

from .hardware import cpu_flags

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "rowdot.c"
ABI_VERSION = 8
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


def build_library(compiler: str, folder: Path) -> Path:
    """Compile rowdot.c into folder (once per source/compiler/flags); return the .so path."""
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    key = hashlib.sha256(source + repr((compiler, version, FLAGS)).encode()).hexdigest()[:16]
    target = folder / f"rowdot-{key}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent servers never load a half-written file.
    fd, partial = tempfile.mkstemp(prefix=".rowdot-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {SOURCE.name}: {result.stderr.strip()}")
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def library() -> ctypes.CDLL | None:
    """The loaded library, or None where it cannot be built or used on this machine."""
    return _load()[0]


def unavailable_reason() -> str:
    """Why `library()` is None ("" where it loaded), for messages naming what is missing."""
    return _load()[1]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return _refuse(f"not an x86-64 CPU ({platform.machine()})")
    if not {"avx512f", "avx512bw"} <= cpu_flags():
        return _refuse("the CPU has no AVX-512")
    compiler = find_compiler()
    if compiler is None:
        return _refuse("no C compiler found ($CC, gcc, cc, clang)")
    try:
        path = build_library(compiler, cache_dir())
        # torch is imported, so its OpenMP runtime is loaded: the library binds to that one.
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as exc:
        return _refuse(str(exc), logging.WARNING)
    if lib.rowdot_abi_version() != ABI_VERSION:
        return _refuse(f"{path} has ABI {lib.rowdot_abi_version()}, expected {ABI_VERSION}",
                       logging.WARNING)
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
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(BlockParams), pointer, pointer, pointer, i64, i64, i64,
                       i64, i64, ctypes.c_float, pointer]
        fn.restype = ctypes.c_int
    lib.decode_block_work_bytes.argtypes = [i64, i64, i64, i64]
    lib.decode_block_work_bytes.restype = i64
    return lib, ""


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


@functools.cache
def row_product_kernel(dtype: torch.dtype) -> RowProduct | None:
    """`f(x, weight, bias) -> weight @ x + bias` for one row of `dtype`, or None.

    x: (K,) contiguous; weight: (N, K) with unit stride along K; bias: (N,) contiguous or
    None; all of `dtype`, on the CPU. bf16 needs AVX512-BF16 and K a multiple of 32
    (`supports`); fp32 needs AVX-512.
    """
    lib = library()
    if lib is None:
        return None
    if dtype == torch.bfloat16 and "avx512_bf16" in cpu_flags():
        return _caller(lib.rowdot_bf16, dtype)
    if dtype == torch.float32:
        return _caller(lib.rowdot_f32, dtype)
    return None


MAX_ROWS = 8  # rows_product_kernel takes this many rows at most


@functools.cache
def rows_product_kernel() -> RowProduct | None:
    """`f(x, weight, bias) -> x @ weight.T + bias` for 1 to MAX_ROWS bf16 rows, or None.

    x: (M, K) contiguous; weight, bias as for row_product_kernel's bf16 kernel. The weights
    stream once for all M rows (a keystroke that retokenises into a few tokens).
    """
    lib = library()
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


@functools.cache
def int8_row_product_kernel(quantize_activations: bool = True) -> Int8RowProduct | None:
    """`f(x, q, scales, bias) -> (q @ x) * scales + bias` for one bf16 row, or None.

    q: (N, K) int8 with unit stride along K, K a multiple of 16 (`supports_int8`); x: (K,)
    contiguous; scales, bias (or None): (N,) contiguous; all but q bf16, on the CPU.

    With quantize_activations, on a CPU with AVX512-VNNI and K a multiple of 64, x is
    quantised to int8 in blocks of 64 values (scale: the block's largest magnitude / 127, as
    llama.cpp's q8_0) and the products run on int8 dot-product instructions, which read the
    weights at the memory's speed. Otherwise x stays bf16, widened to fp32 with the weights:
    exact, but compute-bound at about half that speed. Both accumulate in fp32 and round once.
    """
    lib = library()
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


@functools.cache
def attention_kernel(head_dim: int) -> Attention | None:
    """`f(q, k, v, scale) -> softmax(scale * q k^T) v` for one query token, or None.

    q: (H, head_dim) contiguous; k, v: (S, head_dim) with unit stride along head_dim and one
    row stride; all bf16 on the CPU, S >= 1. Returns (H, head_dim) bf16. Needs AVX512-BF16
    and head_dim 64 or 128; softmax and the weighted sum run in fp32.
    """
    lib = library()
    if lib is None or "avx512_bf16" not in cpu_flags() or head_dim not in ATTENTION_HEAD_DIMS:
        return None
    fn = lib.mqa_decode_bf16

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
               ) -> torch.Tensor:
        heads, length = q.shape[0], k.shape[0]
        if k.stride() != v.stride() or k.stride(1) != 1 or v.shape[0] != length:
            raise ValueError("keys and values must share one row stride, unit along head_dim")
        out = torch.empty(heads, head_dim, dtype=torch.bfloat16)
        scratch = torch.empty(heads * (length + 1), dtype=torch.float32)
        rc = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), k.stride(0), out.data_ptr(), heads,
                length, head_dim, scale, scratch.data_ptr())
        if rc != 0:
            raise ValueError(f"native attention refused head_dim {head_dim}, {length} positions")
        return out

    return attend


class BlockKernel:
    """One GPTBigCode block of a decode step in one native call (rowdot.c's decode_block_*):
    layer norms, the four products, the token's K/V row, attention, GELU-tanh and both
    residual adds, rounding wherever torch's path rounds. Kinds: "bf16" and "fp32" (plain
    weights), "q8" (int8 weights with per-row scales, activations quantised per block of 64
    values for each product, the rest bf16)."""

    def __init__(self, lib: ctypes.CDLL, kind: str) -> None:
        self.kind = kind
        self._run = getattr(lib, {"bf16": "decode_block_bf16", "fp32": "decode_block_f32",
                                  "q8": "decode_block_q8"}[kind])
        self._work_bytes = lib.decode_block_work_bytes

    def params(self, tensors: dict[str, torch.Tensor | None], eps1: float, eps2: float
               ) -> BlockParams | None:
        """The struct for one block, or None where a tensor is not as the kernel reads it.

        tensors: BLOCK_TENSORS (the *_w of the four matrices are int8 for "q8") and, for
        "q8", the matrices' scales as attn_s, proj_s, fc_s, out_s. Vectors must be
        contiguous and matrices have unit stride along their rows, on the CPU.
        """
        vector_dtype = torch.float32 if self.kind == "fp32" else torch.bfloat16
        matrix_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "q8": torch.int8}
        values: dict[str, object] = {}
        for name in BLOCK_TENSORS:
            t = tensors[name]
            if t is None and name.endswith("_b"):
                values[name] = None
                continue
            if t is None or t.device.type != "cpu":
                return None
            if name.endswith("_w") and not name.startswith("ln"):  # a matrix
                if t.dtype != matrix_dtype[self.kind] or t.dim() != 2 or t.stride(1) != 1:
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
            raise ValueError(f"native decode block ({self.kind}) refused heads={heads}, "
                             f"head_dim={head_dim}, inner={inner}")


@functools.cache
def block_kernel(kind: str) -> BlockKernel | None:
    """The fused decode block of a kind ("bf16" needs AVX512-BF16, "fp32" AVX-512, "q8"
    AVX512-VNNI and AVX512-BF16), or None where this CPU or library lacks it."""
    lib = library()
    needs = {"bf16": {"avx512_bf16"}, "fp32": set(), "q8": {"avx512_vnni", "avx512_bf16"}}
    if lib is None or kind not in needs or not needs[kind] <= cpu_flags():
        return None
    return BlockKernel(lib, kind)
