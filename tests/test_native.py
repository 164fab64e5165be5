"""The native kernels (model/csrc/rowdot.c, and vecdot.c for every instruction set this CPU
has): equal to F.linear at the dtype's tolerance over awkward shapes, strides and thread
counts; refuse what they cannot take; build once into the cache and report a failed build
instead of raising; an instruction set the CPU lacks is refused, naming what is missing."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import native

pytestmark = pytest.mark.skipif(native.library() is None,
                                reason="no x86-64 CPU with AVX2 or AVX-512 or no C compiler")

# every instruction set this CPU runs (AVX-512 CPUs run the AVX2 build too)
ISAS = [isa for isa in native.ISA_FLAGS if not native.isa_problem(isa)]

needs_bf16 = pytest.mark.skipif(native.row_product_kernel(torch.bfloat16) is None,
                                reason="the CPU has no AVX512-BF16")


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The product in float64 from the same (rounded) inputs."""
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@needs_bf16
@pytest.mark.parametrize(("n", "k"), [(1, 32), (37, 64), (5, 96), (130, 768), (3, 3072)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_product_is_the_rounded_exact_product(n: int, k: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(n * k)
    w = torch.randn(n, k, generator=g).bfloat16()
    x = torch.randn(k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if with_bias else None
    kernel = native.row_product_kernel(torch.bfloat16)
    assert kernel is not None and native.supports(w, b)
    got = kernel(x, w, b)
    assert got.shape == (n,) and got.dtype == torch.bfloat16
    exact = reference(x, w, b)
    # fp32 accumulation, then one rounding to bf16: within a bf16 step of the exact value.
    tolerance = exact.abs() * 2**-7 + 1e-3 * k**0.5
    assert ((got.double() - exact).abs() <= tolerance).all()
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=0.02, atol=0.05)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 50), (33, 64), (130, 768), (2, 3001)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fp32_product_matches_f_linear(isa: str, n: int, k: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(n + k)
    w, x = torch.randn(n, k, generator=g), torch.randn(k, generator=g)
    b = torch.randn(n, generator=g) if with_bias else None
    kernel = native.row_product_kernel(torch.float32, isa)
    assert kernel is not None
    torch.testing.assert_close(kernel(x, w, b).double(), reference(x, w, b),
                               rtol=1e-5, atol=1e-5 * k**0.5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_of_a_wider_matrix_and_two_threads(isa: str, dtype: torch.dtype) -> None:
    kernel = native.row_product_kernel(dtype, isa)
    if kernel is None:
        pytest.skip(f"no native {dtype} kernel for {isa} on this CPU")
    big = torch.randn(300, 160).to(dtype)
    w = big[:, 32:96]  # row stride 160, unit stride along K
    x = torch.randn(64).to(dtype)
    assert native.supports(w, None)
    one = kernel(x, w, None)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = kernel(x, w, None)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # each row is summed by one thread, in one order
    torch.testing.assert_close(one.double(), reference(x, w.contiguous(), None),
                               rtol=0.02, atol=0.05)


def test_supports_refuses_what_the_kernels_cannot_read() -> None:
    assert not native.supports(torch.randn(8, 16).t(), None)  # K not contiguous
    assert not native.supports(torch.randn(8, 16), torch.randn(8).double())  # bias dtype
    assert not native.supports(torch.randn(2, 8, 16), None)  # not a matrix
    assert not native.supports(torch.randn(8, 48).bfloat16(), None)  # bf16 K % 32 != 0
    assert native.supports(torch.randn(8, 48), None)  # fp32 takes any K
    assert not native.supports(torch.randn(8, 64).half(), None)  # no fp16 kernel
    assert native.row_product_kernel(torch.float16) is None


@needs_bf16
def test_the_bf16_kernel_refuses_a_k_it_cannot_take() -> None:
    kernel = native.row_product_kernel(torch.bfloat16)
    assert kernel is not None
    with pytest.raises(ValueError, match=r"a \(4, 48\) weight: the kernel refused the shape"):
        kernel(torch.ones(48).bfloat16(), torch.ones(4, 48).bfloat16(), None)


def test_the_library_is_built_once_per_source_and_compiler(tmp_path: Path) -> None:
    compiler = native.find_compiler()
    assert compiler is not None
    first = native.build_library(compiler, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build_library(compiler, tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial files left


def test_the_portable_source_builds_one_library_per_instruction_set(tmp_path: Path) -> None:
    compiler = native.find_compiler()
    assert compiler is not None
    built = {isa: native.build_library(compiler, tmp_path, native.PORTABLE[isa])
             for isa in native.PORTABLE}
    assert len(set(built.values())) == len(native.PORTABLE)  # keyed by the flags too
    assert all(p.name.startswith("vecdot-") for p in built.values())
    for isa in ISAS:
        width = ctypes.CDLL(str(built[isa])).vecdot_width()
        assert width == {"avx512": 16, "avx2": 8, "neon": 4}[isa]


# The C checks of vecdot.c (tests/native/vecdot_check.c: every kernel against double-precision
# loops), compiled with a build's flags: natively for this CPU's ISAs, and for 64-bit ARM
# with Debian's cross compiler, run under qemu-user.
CHECK = Path(__file__).with_name("native") / "vecdot_check.c"


def run_check(compiler: str, build: native.Build, tmp_path: Path, runner: list[str],
              extra: tuple[str, ...] = ()) -> str:
    flags = [f for f in build.flags if f not in ("-shared", "-fPIC")]
    program = tmp_path / "vecdot_check"
    subprocess.run([compiler, *flags, *extra, "-o", str(program), str(CHECK),
                    str(build.source), *build.libs], check=True, capture_output=True)
    result = subprocess.run([*runner, str(program)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISAS)
def test_the_portable_kernels_pass_their_c_checks(isa: str, tmp_path: Path) -> None:
    compiler = native.find_compiler()
    assert compiler is not None
    out = run_check(compiler, native.PORTABLE[isa], tmp_path, [])
    width = {"avx512": 16, "avx2": 8, "neon": 4}[isa]
    assert out.startswith("ok ") and f"(vector width {width})" in out


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
                    reason="aarch64-linux-gnu-gcc and qemu-aarch64 are not installed "
                    "(`make arm-tools` installs gcc-aarch64-linux-gnu, qemu-user as root)")
def test_the_neon_build_passes_its_c_checks_under_qemu(tmp_path: Path) -> None:
    out = run_check("aarch64-linux-gnu-gcc", native.PORTABLE["neon"], tmp_path,
                    ["qemu-aarch64"], ("-static",))
    assert out.startswith("ok ") and "(vector width 4)" in out


# -- choosing the instruction set ------------------------------------------------------------

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}


def test_the_fastest_instruction_set_the_flags_have_is_chosen(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(native.ISA_ENV, raising=False)
    assert native.select_isa(flags=AVX512, machine="x86_64") == "avx512"
    assert native.select_isa(flags=AVX2_ONLY, machine="x86_64") == "avx2"
    assert native.select_isa("auto", flags=AVX2_ONLY, machine="x86_64") == "avx2"
    assert native.select_isa("AVX2", flags=AVX512, machine="x86_64") == "avx2"
    assert native.select_isa(flags=frozenset({"fp", "asimd"}), machine="aarch64") == "neon"
    assert native.select_isa(flags=frozenset(), machine="arm64") == "neon"  # macOS: no flags


def test_an_instruction_set_the_cpu_lacks_is_refused_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(native.IsaUnavailable,
                       match=r"avx512 refused: the CPU lacks avx512bw, avx512f"):
        native.select_isa("avx512", flags=AVX2_ONLY, machine="x86_64")
    monkeypatch.setenv(native.ISA_ENV, "avx512")
    with pytest.raises(native.IsaUnavailable,
                       match=r"avx512 \(asked for by \$GPTBIGCODE_NATIVE_ISA\) refused"):
        native.select_isa(flags=AVX2_ONLY, machine="x86_64")
    with pytest.raises(native.IsaUnavailable, match=r"lacks f16c, fma"):
        native.select_isa("avx2", flags=frozenset({"avx", "avx2"}), machine="x86_64")
    with pytest.raises(native.IsaUnavailable, match=r"'sse9' is not one of"):
        native.select_isa("sse9", flags=AVX512, machine="x86_64")
    with pytest.raises(native.IsaUnavailable, match=r"need an x86-64 CPU, this is aarch64"):
        native.select_isa("avx2", flags=AVX512, machine="aarch64")
    with pytest.raises(native.IsaUnavailable, match=r"need a 64-bit ARM CPU, this is x86_64"):
        native.select_isa("neon", flags=AVX512, machine="x86_64")
    monkeypatch.delenv(native.ISA_ENV)
    with pytest.raises(native.IsaUnavailable, match=r"no native kernels for this CPU: .*avx2"):
        native.select_isa(flags=frozenset({"sse4_2", "avx"}), machine="x86_64")


def test_the_environment_forces_the_instruction_set_the_kernels_run_on(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    if "avx2" not in ISAS:
        pytest.skip("the CPU has no AVX2")
    monkeypatch.setenv(native.ISA_ENV, "avx2")
    assert native.select_isa() == "avx2"
    assert native.library() is native.portable_library("avx2")
    assert native.row_product_kernel(torch.bfloat16) is None  # no bf16 arithmetic on AVX2
    assert native.attention_kernel(64) is None and native.rows_product_kernel() is None
    kernel = native.block_kernel("fp32")
    assert kernel is not None and kernel.isa == "avx2"


def test_a_forced_instruction_set_this_cpu_lacks_leaves_no_kernels_and_says_why(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    lacking = [isa for isa in native.ISA_FLAGS if isa not in ISAS]
    if not lacking:
        pytest.skip("this CPU runs every instruction set the kernels are built for")
    monkeypatch.setenv(native.ISA_ENV, lacking[0])
    assert native.library() is None and native.row_product_kernel(torch.float32) is None
    assert "refused: " in native.unavailable_reason()
    assert lacking[0] in native.unavailable_reason()


# -- fp32 products of half-precision weights (vecdot.c) --------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 50), (33, 64), (130, 768), (3, 3001)])
def test_half_weight_products_are_the_fp32_products_of_the_stored_weights(
    isa: str, storage: torch.dtype, n: int, k: int
) -> None:
    g = torch.Generator().manual_seed(n * k + 1)
    w = (torch.randn(n, k, generator=g) * 0.05).to(storage)
    x, b = torch.randn(k, generator=g), torch.randn(n, generator=g)
    kernel = native.half_weight_product_kernel(storage, isa)
    assert kernel is not None
    got = kernel(x, w, b)
    assert got.shape == (n,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(x, w.float(), b),
                               rtol=1e-5, atol=1e-6 * k**0.5)


@pytest.mark.parametrize("isa", ISAS)
def test_f16_weights_widen_exactly_subnormals_and_extremes_included(isa: str) -> None:
    values = torch.tensor([0.0, -0.0, 2.0**-24, -(2.0**-24), 3 * 2.0**-20, 6.1e-5, 65504.0,
                           -65504.0, 1.0 / 3, -2.5, 1e-3, 7.0, 0.5, -1.0, 1024.0, 2.0**-14,
                           123.4, -0.007, 4.0])  # 19 values: a full vector and a scalar tail
    w = values.half()[None, :].repeat(19, 1)
    x = torch.eye(19)
    kernel = native.half_weight_product_kernel(torch.float16, isa)
    assert kernel is not None
    for j in range(19):  # x picks column j: the result is that stored weight, widened
        assert torch.equal(kernel(x[j].contiguous(), w, None), w[:, j].float())


def test_half_weight_products_are_offered_for_half_precision_only() -> None:
    assert native.half_weight_product_kernel(torch.float32) is None
    assert native.half_weight_product_kernel(torch.int8) is None


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("heads", "head_dim"), [(12, 64), (5, 64), (4, 128)])
@pytest.mark.parametrize("length", [1, 7, 8, 17, 300])
def test_fp32_attention_matches_exact_attention(isa: str, heads: int, head_dim: int,
                                                length: int) -> None:
    g = torch.Generator().manual_seed(heads * length + head_dim)
    kv = torch.randn(2, length + 3, head_dim, generator=g) * 2  # rows of a buffer
    k, v = kv[0, :length], kv[1, :length]
    q = torch.randn(heads, head_dim, generator=g) * 2
    attend = native.fp32_attention_kernel(head_dim, isa)
    assert attend is not None
    got = attend(q, k, v, head_dim**-0.5)
    exact = (q.double() @ k.double().T * head_dim**-0.5).softmax(-1) @ v.double()
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5)


def test_a_failing_compiler_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="false failed on rowdot.c"):
        native.build_library("false", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("GPTBIGCODE_LSP_CACHE", str(tmp_path / "c"))
    assert native.cache_dir() == tmp_path / "c" / "native"
    monkeypatch.delenv("GPTBIGCODE_LSP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert native.cache_dir() == tmp_path / "x" / "gptbigcode-lsp" / "native"


# -- attention of one query token ----------------------------------------------------------

needs_attention = pytest.mark.skipif(native.attention_kernel(64) is None,
                                     reason="the CPU has no AVX512-BF16")


@needs_attention
@pytest.mark.parametrize(("heads", "head_dim"), [(12, 64), (13, 64), (4, 64), (16, 128),
                                                 (7, 128), (48, 128)])
@pytest.mark.parametrize("length", [1, 15, 16, 17, 100, 600])
def test_attention_matches_exact_attention(heads: int, head_dim: int, length: int) -> None:
    g = torch.Generator().manual_seed(heads * length + head_dim)
    kv = (torch.randn(2, length + 3, head_dim, generator=g) * 2).bfloat16()  # rows of a buffer
    k, v = kv[0, :length], kv[1, :length]
    q = (torch.randn(heads, head_dim, generator=g) * 2).bfloat16()
    scale = head_dim**-0.5
    attend = native.attention_kernel(head_dim)
    assert attend is not None
    got = attend(q, k, v, scale)
    assert got.shape == (heads, head_dim) and got.dtype == torch.bfloat16
    weights = (q.double() @ k.double().T * scale).softmax(-1)  # (heads, length)
    exact = weights @ v.double()
    # Scores and sums in fp32; the weights rounded to bf16 before they multiply V (as torch's
    # bf16 attention does), which moves an output by at most 2^-9 of sum_t w_t |v_t|; one
    # rounding to bf16 at the end. Twice those bounds:
    bound = 2**-8 * (weights @ v.double().abs()) + 2**-8 * exact.abs()
    error = (got.double() - exact).abs()
    assert bool((error <= bound + 1e-6).all()), f"{int((error > bound + 1e-6).sum())} outputs"
    sdpa = F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None],
                                          scale=scale)[0, 0]
    sdpa_error = (sdpa.double() - exact).abs()
    assert error.max() <= sdpa_error.max() + 2e-3
    assert error.mean() <= sdpa_error.mean() * 1.05


@needs_attention
def test_attention_with_a_dominant_key_and_two_threads() -> None:
    k = torch.zeros(40, 64).bfloat16()
    v = torch.arange(40 * 64, dtype=torch.float32).reshape(40, 64).div(64).bfloat16()
    k[17] = 1.0
    q = torch.full((3, 64), 8.0).bfloat16()  # score 512 * scale for key 17, 0 elsewhere
    attend = native.attention_kernel(64)
    assert attend is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = attend(q, k, v, 1.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, v[17].expand(3, 64))  # exp underflows to 0 for the others


def test_attention_is_offered_only_for_the_head_sizes_it_has_layouts_for() -> None:
    assert native.attention_kernel(96) is None
    assert native.attention_kernel(32) is None


# -- int8 weights ---------------------------------------------------------------------------


needs_int8 = pytest.mark.skipif(native.int8_row_product_kernel(False) is None,
                                reason="the int8 kernels are AVX-512's")


@needs_int8
@pytest.mark.parametrize(("n", "k"), [(1, 16), (37, 64), (130, 768), (5, 3072), (3, 80)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_int8_product_with_bf16_activations_is_the_dequantised_product(
    n: int, k: int, with_bias: bool
) -> None:
    from model.quantize import quantize_rows

    g = torch.Generator().manual_seed(n + 7 * k)
    q, scales = quantize_rows(torch.randn(n, k, generator=g), torch.bfloat16)
    x = torch.randn(k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if with_bias else None
    kernel = native.int8_row_product_kernel(quantize_activations=False)
    assert kernel is not None and native.supports_int8(q, scales, b)
    got = kernel(x, q, scales, b)
    assert got.shape == (n,) and got.dtype == torch.bfloat16
    exact = reference(x, q.double() * scales.double()[:, None], b)
    tolerance = exact.abs() * 2**-7 + 1e-3 * k**0.5
    assert ((got.double() - exact).abs() <= tolerance).all()


def test_supports_int8_refuses_what_the_kernel_cannot_read() -> None:
    q, s = torch.zeros(4, 32, dtype=torch.int8), torch.ones(4).bfloat16()
    assert native.supports_int8(q, s, None)
    assert not native.supports_int8(torch.zeros(4, 24, dtype=torch.int8), s, None)  # K % 16
    assert not native.supports_int8(q, s.float(), None)  # scales dtype
    assert not native.supports_int8(q, s, torch.ones(4))  # bias dtype
    assert not native.supports_int8(torch.zeros(32, 4, dtype=torch.int8).t(), s, None)


def quantize_blocks(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """x quantised to int8 per block as rowdot_q8 does, and back: max |x| / 127 scales."""
    blocks = x.float().view(-1, block)
    m = blocks.abs().amax(dim=1, keepdim=True)
    inv = torch.where(m > 0, 127 / m, torch.zeros_like(m))
    q = torch.round(blocks * inv).clamp(-127, 127)
    return (q * (m / 127)).view(-1)


@needs_int8
@pytest.mark.skipif("avx512_vnni" not in native.cpu_flags(), reason="no AVX512-VNNI")
@pytest.mark.parametrize(("n", "k"), [(1, 64), (37, 128), (130, 768), (5, 3072)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_q8_product_is_the_product_with_block_quantised_activations(
    n: int, k: int, with_bias: bool
) -> None:
    from model.quantize import quantize_rows

    g = torch.Generator().manual_seed(n + 3 * k)
    q, scales = quantize_rows(torch.randn(n, k, generator=g), torch.bfloat16)
    x = (torch.randn(k, generator=g) * torch.linspace(0.1, 4, k)).bfloat16()
    x[5] = 0  # a zero and a block of zeros quantise to zeros
    if k >= 128:
        x[64:128] = 0
    b = torch.randn(n, generator=g).bfloat16() if with_bias else None
    kernel = native.int8_row_product_kernel(quantize_activations=True)
    assert kernel is not None
    got = kernel(x, q, scales, b)
    w = q.double() * scales.double()[:, None]
    expected = reference(quantize_blocks(x).double(), w, b)
    tolerance = expected.abs() * 2**-7 + 1e-4 * k**0.5
    assert ((got.double() - expected).abs() <= tolerance).all()
    # and within the quantisation's bound of the product of the unquantised activations:
    # each value moves by at most half a step (its block's largest magnitude / 254)
    exact = reference(x, w, b)
    half_step = x.double().view(-1, 64).abs().amax(dim=1).repeat_interleave(64) / 254
    bound = w.abs() @ half_step + exact.abs() * 2**-7 + 1e-4 * k**0.5
    assert ((got.double() - exact).abs() <= bound).all()


@needs_int8
@pytest.mark.skipif("avx512_vnni" not in native.cpu_flags(), reason="no AVX512-VNNI")
def test_q8_falls_back_to_bf16_activations_where_k_is_not_a_multiple_of_64() -> None:
    q = torch.randint(-127, 128, (3, 80), dtype=torch.int8)
    scales, x = torch.ones(3).bfloat16(), torch.randn(80).bfloat16()
    q8, exact = (native.int8_row_product_kernel(flag) for flag in (True, False))
    assert q8 is not None and exact is not None
    assert torch.equal(q8(x, q, scales, None), exact(x, q, scales, None))
