"""Prefill and decode speed, ours vs transformers 4.56.2 on identical weights, in one run.

Shapes: bigcode/tiny_starcoder_py's (20 layers, 768 wide, 12 heads, MQA, 49,152 vocabulary)
with random weights, and the packaged default model when it is installed. For each variant it
reports prefill tokens/s at 512 and 2,048 tokens and decode ms/token at 512 and 2,048 tokens
of context, plus the memory bandwidth measured in the same run and the decode floor it implies
(weight bytes / bandwidth). Variants:

    fp32, bf16     ours as the server runs them: on the CPU, the native decoder
                   (model.decoders, model.native's kernels) where the CPU has them; on a GPU
                   (--device cuda), steps replayed from a CUDA graph (model.static_decode)
    fp16           the same in float16 (for GPUs)
    fp32p, bf16p   ours on the plain path: the torch decoder, every product through F.linear
    fp32s, bf16s   ours through model.static_decode's steps (a CUDA graph on the GPU, eager
                   on the CPU: there, a check of the path, not a fast one)
    bf16i          ours on the inductor decoder (one-row products compiled by Inductor)
    int8, int8h    ours with bf16 activations and int8 weights in the blocks (int8h: in
                   lm_head too), on the native decoder where it runs; transformers has no
                   such path, so its columns read "-"

transformers runs in the variant's dtype beside each of ours. Run by hand:

    .venv/bin/python tests/bench/decode.py [--dtypes fp32,bf16,fp32p,bf16p,bf16i,int8,int8h]
        [--steps 16] [--threads N] [--skip-default] [--device cpu|cuda]
        [--isa avx512|avx2] [--weights auto|fp32|bf16|f16]

--isa forces the native kernels' instruction set (as $GPTBIGCODE_NATIVE_ISA does; refused
where the CPU lacks it) and --weights how an fp32 model's matrices are stored for them.

--kernels runs only a side-by-side of decode kernels on tiny_starcoder_py's shape, one fp32
model, rounds alternating between the variants (A B C A B C ...) so that a shared machine's
drift falls on all of them alike, ms/token at each --contexts:

    .venv/bin/python tests/bench/decode.py --threads 1 \
        --kernels torch,avx2:fp32,avx2:bf16,avx2:f16,avx512:fp32,avx512:f16,avx512:bf16model

    torch          the PyTorch decoder on the fp32 model
    ISA:fp32       the native decoder on ISA with the matrices in fp32
    ISA:bf16|f16   the same with the matrices stored in bf16 / f16, widened in the kernel
    ISA:bf16model  the model in bf16 (AVX512-BF16 arithmetic, as dtype "auto" runs it there)

On a GPU the bandwidth is that of the GPU's memory and times are taken after
torch.cuda.synchronize; int8 and Inductor variants are CPU-only.

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers

from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, KVCache, native
from model.checkpoint import CheckpointError
from model.decoders import DecodePathUnavailable, Decoder, NativeDecoder, make_decoder
from model.hardware import cpu_name
from model.quantize import Int8Linear, quantize_int8
from model.static_decode import GraphDecoder

# name -> (dtype, path: "fast" as served, "plain" the torch decoder, "inductor" the one-row
# products compiled, "static" model.static_decode's steps)
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "fp32": (torch.float32, "fast"), "bf16": (torch.bfloat16, "fast"),
    "fp16": (torch.float16, "fast"),
    "fp32p": (torch.float32, "plain"), "bf16p": (torch.bfloat16, "plain"),
    "bf16i": (torch.bfloat16, "inductor"),
    "fp32s": (torch.float32, "static"), "bf16s": (torch.bfloat16, "static"),
}
DEVICE = torch.device("cpu")  # set by --device
# Weight-only int8 (activations bf16): name -> whether lm_head is quantised too.
INT8_DTYPES = {"int8": False, "int8h": True}
TINY_STARCODER: dict[str, Any] = dict(
    vocab_size=49152, n_positions=8192, n_embd=768, n_layer=20, n_head=12, multi_query=True,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def median_ms(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes per second of a large read (a sum over a buffer much bigger than the caches)."""
    buffer = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=DEVICE)
    ms = median_ms(lambda: buffer.sum(), repeats)
    return buffer.numel() * 4 / (ms / 1000)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights, each shared tensor once; int8 layers count their int8 buffers."""
    unique = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    total = sum(t.numel() * t.element_size() for t in unique)
    if isinstance(model, GPTBigCodeForCausalLM) and isinstance(model.lm_head, Int8Linear):
        # lm_head has its own int8 copy; wte is then only read a row per token.
        wte = model.transformer.wte.weight
        total -= wte.numel() * wte.element_size()
    return total


def decode_bytes(model: GPTBigCodeForCausalLM, decoder: Decoder) -> int:
    """Bytes of weights a decode step reads: weight_bytes, with the native decoder's
    half-precision copies in place of the fp32 matrices they stand for."""
    total = weight_bytes(model)
    if isinstance(decoder, NativeDecoder):  # each copy: 2 bytes a weight where fp32 had 4
        copies = [c for block in decoder.copies for c in block.values()]
        if decoder.lm_head_copy is not None:
            copies.append(decoder.lm_head_copy)
        total -= sum(c.numel() * (4 - c.element_size()) for c in copies)
    return total


def hf_twin(ours: GPTBigCodeForCausalLM) -> torch.nn.Module:
    config = transformers.GPTBigCodeConfig(**{
        k: v for k, v in ours.config.to_dict().items()
        if k not in ("extra", "torch_dtype", "architectures", "id2label", "label2id")
    })
    config._attn_implementation = "sdpa"
    twin: torch.nn.Module = transformers.GPTBigCodeForCausalLM(config).eval()
    twin.load_state_dict(ours.state_dict())
    return twin.to(DEVICE, ours.dtype)


def ours_prefill(decoder: Decoder, ids: torch.Tensor) -> Callable[[], Any]:
    model = decoder.model
    return lambda: decoder.prefill(
        ids, KVCache(model.config, 1, ids.shape[1], dtype=model.dtype, device=DEVICE), 1)


def hf_prefill(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], Any]:
    # transformers' GPTBigCode has no logits_to_keep: its prefill (generate's too) computes
    # logits for every position, which is what it costs.
    return lambda: model(ids, use_cache=True)


def ours_decode_ms(decoder: Decoder, ids: torch.Tensor, steps: int) -> float:
    model = decoder.model
    cache = KVCache(model.config, 1, ids.shape[1] + steps + 1, dtype=model.dtype, device=DEVICE)
    decoder.prefill(ids, cache, 1)
    context = cache.length

    def run() -> None:
        cache.truncate(context)
        decoder.start(cache)
        next_token = int(ids[0, -1])
        for _ in range(steps):  # reads each token back, as the server does
            next_token = int(decoder.step(next_token).argmax())

    return median_ms(run, 3) / steps


def hf_decode_ms(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> float:
    cache = model(ids, use_cache=True).past_key_values
    token = ids[:, -1:].clone()
    context = ids.shape[1]

    def run() -> None:
        cache.crop(context)
        for _ in range(steps):
            logits = model(token, past_key_values=cache, use_cache=True).logits
            token.copy_(logits[:, -1].argmax(-1, keepdim=True))

    return median_ms(run, 3) / steps


def model_in(ours: GPTBigCodeForCausalLM, dtype_name: str) -> GPTBigCodeForCausalLM:
    """A copy of `ours` set up as the variant says (DTYPES, INT8_DTYPES)."""
    if dtype_name in INT8_DTYPES:
        quantised = quantize_int8(copy.deepcopy(ours.to(torch.bfloat16)), INT8_DTYPES[dtype_name])
        assert isinstance(quantised, GPTBigCodeForCausalLM)
        return quantised
    dtype = DTYPES[dtype_name][0]
    return copy.deepcopy(ours).to(DEVICE, dtype)


def decoder_for(model: GPTBigCodeForCausalLM, dtype_name: str) -> Decoder:
    """The variant's decoder: "fast" (and int8) the native one on the CPU where it runs,
    else torch, and a CUDA graph on a GPU; "plain" torch; "inductor"; "static" the graph
    decoder's steps (eager on the CPU)."""
    path = DTYPES[dtype_name][1] if dtype_name in DTYPES else "fast"
    if path == "static":
        return GraphDecoder(model)
    if path == "fast":
        try:
            return make_decoder(model, "native" if DEVICE.type == "cpu" else "cuda-graph")
        except DecodePathUnavailable:
            return make_decoder(model, "torch")
    return make_decoder(model, "torch" if path == "plain" else path)


def bench_shape(
    name: str, ours: GPTBigCodeForCausalLM, dtype_name: str, steps: int, bandwidth: float
) -> list[dict[str, Any]]:
    ours = model_in(ours, dtype_name)
    decoder = decoder_for(ours, dtype_name)
    hf = hf_twin(ours) if dtype_name in DTYPES else None
    floor_ms = decode_bytes(ours, decoder) / bandwidth * 1000
    rows = []
    generator = torch.Generator().manual_seed(0)
    for context in (512, 2048):
        context = min(context, ours.config.n_positions - steps - 1)
        ids = torch.randint(0, ours.config.vocab_size, (1, context), generator=generator)
        ids = ids.to(DEVICE)
        row: dict[str, Any] = {"shape": name, "dtype": dtype_name, "context": context,
                               "path": decoder.path, "isa": getattr(decoder, "isa", None)}
        row["prefill_tok_s_ours"] = context / median_ms(ours_prefill(decoder, ids), 2) * 1000
        row["decode_ms_ours"] = ours_decode_ms(decoder, ids, steps)
        row["floor_ms"] = floor_ms
        row["decode_vs_floor"] = row["decode_ms_ours"] / floor_ms
        row.update(hf_columns(hf, ids, steps, row))
        rows.append(row)
        print_row(row)
    return rows


def hf_columns(
    hf: torch.nn.Module | None, ids: torch.Tensor, steps: int, row: dict[str, Any]
) -> dict[str, float | None]:
    """transformers' figures and our ratios to them; None where it has no comparable path."""
    if hf is None:
        keys = ("prefill_tok_s_hf", "decode_ms_hf", "decode_speedup_vs_hf", "prefill_ratio_vs_hf")
        return dict.fromkeys(keys)
    prefill = ids.shape[1] / median_ms(hf_prefill(hf, ids), 2) * 1000
    decode = hf_decode_ms(hf, ids, steps)
    return {
        "prefill_tok_s_hf": prefill, "decode_ms_hf": decode,
        "decode_speedup_vs_hf": decode / row["decode_ms_ours"],
        "prefill_ratio_vs_hf": row["prefill_tok_s_ours"] / prefill,
    }


def add_int8_ratios(rows: list[dict[str, Any]]) -> None:
    """Give each int8 row its speed-up over our bf16 row of the same shape and context."""
    bf16 = {(r["shape"], r["context"]): r for r in rows if r["dtype"] == "bf16"}
    for row in rows:
        base = bf16.get((row["shape"], row["context"]))
        if row["dtype"] in INT8_DTYPES and base is not None:
            row["decode_speedup_vs_bf16"] = base["decode_ms_ours"] / row["decode_ms_ours"]
            row["prefill_ratio_vs_bf16"] = row["prefill_tok_s_ours"] / base["prefill_tok_s_ours"]


HEADER = (
    f"{'shape':<16}{'dtype':<6}{'ctx':>6}{'prefill ours':>14}{'prefill hf':>12}"
    f"{'decode ours':>13}{'decode hf':>11}{'floor':>8}{'x hf':>7}{'/ floor':>9}"
)


def print_row(row: dict[str, Any]) -> None:
    def hf(key: str, spec: str, unit: str) -> str:
        return f"{row[key]:{spec}}{unit}" if row[key] is not None else "-"

    print(
        f"{row['shape']:<16}{row['dtype']:<6}{row['context']:>6}"
        f"{row['prefill_tok_s_ours']:>10.0f} t/s{hf('prefill_tok_s_hf', '.0f', ' t/s'):>12}"
        f"{row['decode_ms_ours']:>10.1f} ms{hf('decode_ms_hf', '.1f', ' ms'):>11}"
        f"{row['floor_ms']:>6.1f}ms{hf('decode_speedup_vs_hf', '.2f', ''):>7}"
        f"{row['decode_vs_floor']:>9.2f}",
        flush=True,
    )


def isa_in_use() -> str:
    """The native kernels' ISA as select_isa picks it here, or why there is none."""
    try:
        return native.select_isa()
    except native.IsaUnavailable as exc:
        return f"none ({exc})"


def kernel_decoder(spec: str, fp32: GPTBigCodeForCausalLM, bf16: GPTBigCodeForCausalLM
                   ) -> Decoder:
    """The decoder a --kernels entry names (see the module's docstring)."""
    if spec == "torch":
        return make_decoder(fp32, "torch")
    isa, _, weights = spec.partition(":")
    native.select_isa(isa)  # refuses an ISA this CPU lacks, saying which flags are missing
    if weights == "bf16model":
        decoder = NativeDecoder(bf16, isa)
        expected = "bf16"
    else:
        decoder = NativeDecoder(fp32, isa, weights)
        expected = {"fp32": "fp32", "bf16": "bf16w", "f16": "f16w"}[weights]
    if decoder.kind != expected or decoder.fused is None:
        raise SystemExit(f"--kernels {spec}: runs {decoder.path}, not fused native-{expected}")
    return decoder


def compare_kernels(specs: list[str], contexts: list[int], steps: int, rounds: int
                    ) -> list[dict[str, Any]]:
    """ms/token of each decoder in `specs` at each context: one prefill per context (torch,
    fp32), each decoder stepping from a copy of that cache, rounds alternating."""
    torch.manual_seed(0)
    fp32 = GPTBigCodeForCausalLM(GPTBigCodeConfig(**TINY_STARCODER)).eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16) if any(
        s.endswith("bf16model") for s in specs) else fp32
    decoders = {spec: kernel_decoder(spec, fp32, bf16) for spec in specs}
    print(f"cpu {cpu_name()}; threads {torch.get_num_threads()}; steps {steps}; "
          f"rounds {rounds}")
    print(f"{'kernels':<18}{'path':<14}" + "".join(f"{f'ctx {c}':>12}" for c in contexts))
    rows = []
    generator = torch.Generator().manual_seed(0)
    times: dict[tuple[str, int], list[float]] = {}
    for context in contexts:
        ids = torch.randint(0, fp32.config.vocab_size, (1, context), generator=generator)
        prompt = KVCache(fp32.config, 1, context + steps + 1)
        make_decoder(fp32, "torch").prefill(ids, prompt, 1)
        caches = {}
        for spec, decoder in decoders.items():
            dtype = decoder.model.dtype
            cache = KVCache(fp32.config, 1, context + steps + 1, dtype=dtype)
            cache.buffer.copy_(prompt.buffer)
            cache.length = context
            caches[spec] = cache
        for _ in range(rounds):
            for spec, decoder in decoders.items():
                cache = caches[spec]
                cache.truncate(context)
                decoder.start(cache)
                token = int(ids[0, -1])
                start = time.perf_counter()
                for _ in range(steps):
                    token = int(decoder.step(token).argmax())
                times.setdefault((spec, context), []).append(
                    (time.perf_counter() - start) / steps * 1000)
    for spec, decoder in decoders.items():
        row: dict[str, Any] = {"kernels": spec, "path": decoder.path,
                               "isa": getattr(decoder, "isa", None)}
        for context in contexts:
            row[f"ms_per_token_{context}"] = statistics.median(times[(spec, context)])
        rows.append(row)
        print(f"{spec:<18}{decoder.path:<14}" + "".join(
            f"{row[f'ms_per_token_{c}']:>9.1f} ms" for c in contexts), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="fp32,bf16,fp32p,bf16p,int8h",
                        help=f"of {','.join([*DTYPES, *INT8_DTYPES])}")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-default", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--isa", default=None, help="force the native kernels' ISA: "
                        f"{' or '.join(native.ISA_FLAGS)} (refused where the CPU lacks it)")
    parser.add_argument("--weights", default=None, choices=["auto", *native.WEIGHT_FORMATS],
                        help="how the native kernels store an fp32 model's matrices")
    parser.add_argument("--kernels", default=None,
                        help="only compare decode kernels (see the docstring), e.g. "
                        "torch,avx2:fp32,avx2:f16,avx512:fp32")
    parser.add_argument("--contexts", default="512,2048", help="for --kernels")
    parser.add_argument("--rounds", type=int, default=5, help="for --kernels")
    args = parser.parse_args()
    try:
        native.override(args.isa, args.weights)
    except ValueError as exc:
        parser.error(str(exc))
    if args.kernels:
        if args.threads:
            torch.set_num_threads(args.threads)
        with torch.inference_mode():
            rows = compare_kernels(args.kernels.split(","),
                                   [int(c) for c in args.contexts.split(",")],
                                   args.steps, args.rounds)
        print(json.dumps({"bench": "decode-kernels", "cpu": cpu_name(),
                          "cpu_flags": sorted(native.cpu_flags() & {
                              "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni"}),
                          "threads": torch.get_num_threads(), "steps": args.steps,
                          "rounds": args.rounds, "rows": rows}))
        return
    unknown = set(args.dtypes.split(",")) - {*DTYPES, *INT8_DTYPES}
    if unknown:
        parser.error(f"unknown dtypes {sorted(unknown)}; "
                     f"choose from {','.join([*DTYPES, *INT8_DTYPES])}")
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch here")
    cpu_only = {"bf16i", *INT8_DTYPES} & set(args.dtypes.split(","))
    if DEVICE.type != "cpu" and cpu_only:
        parser.error(f"{sorted(cpu_only)} run on the CPU only")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes: list[tuple[str, GPTBigCodeForCausalLM]] = [
        ("tiny_starcoder", GPTBigCodeForCausalLM(GPTBigCodeConfig(**TINY_STARCODER)).eval())
    ]
    if not args.skip_default:
        try:
            shapes.append(("default", GPTBigCodeForCausalLM.from_pretrained("default")))
        except CheckpointError as exc:
            print(f"default model skipped: {exc}")
    bandwidth = measure_bandwidth()
    print(f"device {DEVICE}; memory bandwidth (read): {bandwidth / 1e9:.1f} GB/s; "
          f"threads {torch.get_num_threads()}; cpu {cpu_name()}; native ISA {isa_in_use()}")
    print(HEADER)
    rows = []
    with torch.inference_mode():
        for dtype_name in args.dtypes.split(","):
            for name, model in shapes:
                rows.extend(bench_shape(name, model, dtype_name, args.steps, bandwidth))
    add_int8_ratios(rows)
    print(json.dumps({
        "bench": "decode",
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_name(),
        "native_isa": isa_in_use(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bandwidth_gb_s": bandwidth / 1e9,
        "rows": rows,
    }))


if __name__ == "__main__":
    main()
