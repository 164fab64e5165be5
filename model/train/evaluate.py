"""Score a checkpoint on held-out files: bits per byte beside `xz -9e` (overall and per
package), next-line exact match, and single-line fill-in-the-middle exact match in PSM and SPM.

    python -m model.train.evaluate --model default                  # held-out stdlib files
    python -m model.train.evaluate --model default --data runs/corpus --max-bytes-per-package 400000

With --data a corpus folder of model.train.corpus, the held-out files are its held-out packages
(never trained on); --max-bytes-per-package samples each package's files by a hash of the path.
--repo-header puts StarCoder's repository header (`<reponame>package<filename>path` and a
newline, as model/train/repo_format.py writes it in training and the server's prompts carry it)
before each file's text, prompt and FIM prompt: context, never scored.
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..checkpoint import resolve_checkpoint
from ..kv_cache import KVCache
from ..modeling import GPTBigCodeForCausalLM
from .data import SourceFile, load_corpus
from .fim import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from .realcode import RealFile, sample
from .repo_format import FILENAME, REPONAME

log = logging.getLogger(__name__)


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level mapping, printable character -> byte: how tokens spell raw bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {chr(b if b in printable else next(extra)): b for b in range(256)}


@dataclass
class Scorer:
    """A model with its tokenizer, and each token's raw bytes (None for special tokens)."""

    model: GPTBigCodeForCausalLM
    tok: Tokenizer
    token_bytes: list[bytes | None]
    autocast: bool

    @classmethod
    def load(cls, name: str, autocast: bool) -> Scorer:
        folder = resolve_checkpoint(name)
        model = GPTBigCodeForCausalLM.from_pretrained(name).eval()
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        alphabet = byte_level_alphabet()
        special = {t.content for t in tok.get_added_tokens_decoder().values()}
        token_bytes: list[bytes | None] = []
        for i in range(tok.get_vocab_size()):
            piece = tok.id_to_token(i)
            token_bytes.append(None if piece is None or piece in special
                               else bytes(alphabet[c] for c in piece))
        return cls(model, tok, token_bytes, autocast)

    @property
    def n_positions(self) -> int:
        return self.model.config.n_positions

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def header(self, package: str, path: str) -> list[int]:
        """`<reponame>package<filename>path` and a newline, each part encoded on its own as
        in training; nothing without a package or path."""
        if not package or not path:
            return []
        return [REPONAME, *self.encode(package), FILENAME, *self.encode(path + "\n")]

    def logits(self, ids: Sequence[int], cache: KVCache | None = None, last_only: bool = False
               ) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.autocast):
            out = self.model(torch.tensor([list(ids)]), past_key_values=cache,
                             use_cache=cache is not None, logits_to_keep=1 if last_only else 0)
        return out.logits[0].float()  # (T, V)

    def greedy(self, prompt: list[int], max_new: int, first_allowed: torch.Tensor | None = None
               ) -> bytes:
        """Greedy continuation up to a special token, a newline after the first token's text,
        or max_new tokens; first_allowed (a bool mask over the vocabulary) restricts step one."""
        cache = KVCache(self.model.config, 1, len(prompt) + max_new, dtype=self.model.dtype)
        logits = self.logits(prompt, cache, last_only=True)[-1]
        out = b""
        first_len = 0
        for step in range(max_new):
            if step == 0 and first_allowed is not None:
                logits = logits.masked_fill(~first_allowed, -math.inf)
            token = int(logits.argmax())
            piece = self.token_bytes[token]
            if piece is None:
                break
            out += piece
            first_len = first_len or len(piece)
            if b"\n" in out[first_len:] or len(prompt) + step + 1 >= self.n_positions:
                break
            logits = self.logits([token], cache, last_only=True)[-1]
        return out


# -- bits per byte --------------------------------------------------------------------------


def file_nll_bits(scorer: Scorer, text: str, stride: int, header: Sequence[int] = ()) -> float:
    """Negative log-likelihood in bits of text after <|endoftext|> (and `header`, unscored);
    windows of n_positions tokens slide by stride, so every token after the first window has
    stride-plus context."""
    ids = [EOT, *header, *scorer.encode(text)]
    n = scorer.n_positions
    start, end, scored, nats = 0, min(n, len(ids)), len(header), 0.0
    while True:
        logp = F.log_softmax(scorer.logits(ids[start:end]), dim=-1)  # (end - start, V)
        targets = torch.tensor(ids[scored + 1:end])
        rows = torch.arange(scored, end - 1) - start
        nats -= float(logp[rows, targets].sum())
        scored = end - 1
        if end == len(ids):
            return nats / math.log(2)
        end = min(end + stride, len(ids))
        start = max(0, end - n)


def xz_bits_per_byte(texts: Sequence[str]) -> float:
    data = "".join(texts).encode("utf-8")
    return 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data)


# -- exact match ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LineSite:
    """One masked line: file text split around a non-blank line (without its newline)."""

    prefix: str
    line: str
    suffix: str
    package: str = ""
    path: str = ""


def sample_lines(files: Sequence[SourceFile], count: int, seed: int) -> list[LineSite]:
    """count non-blank lines, drawn deterministically; the first line of a file is skipped."""
    sites = []
    for f in files:
        start = 0
        for line in f.text.split("\n"):
            if start > 0 and line.strip():
                sites.append(LineSite(f.text[:start], line, f.text[start + len(line):],
                                      f.package, f.path))
            start += len(line) + 1
    picks = random.Random(seed).sample(range(len(sites)), min(count, len(sites)))
    return [sites[i] for i in sorted(picks)]


def decoded_line(generated: bytes) -> str:
    return generated.split(b"\n", 1)[0].decode("utf-8", errors="replace")


def heal(scorer: Scorer, prefix: list[int]) -> tuple[list[int], bytes, torch.Tensor]:
    """Token healing: drop the prefix's last token and allow as first generated token only
    those that start with its bytes. A prefix ending at a line start ends in a bare newline
    token, which training text never has before indentation (the tokenizer merges the two)."""
    healed = (scorer.token_bytes[prefix[-1]] if prefix else None) or b""
    allowed = torch.tensor([b is not None and b.startswith(healed) for b in scorer.token_bytes])
    return prefix[:-1] if healed else prefix, healed, allowed


def next_line_match(scorer: Scorer, site: LineSite, max_new: int, repo_header: bool = False
                    ) -> bool:
    """The greedy line after the (healed) prefix must equal the true next line exactly."""
    ids = scorer.encode(site.prefix)
    header = scorer.header(site.package, site.path) if repo_header else []
    budget = scorer.n_positions - max_new - 1 - len(header)
    body = [EOT, *header, *ids] if len(ids) <= budget else [*header, *ids[-budget:]]
    prompt, healed, allowed = heal(scorer, body)
    generated = scorer.greedy(prompt, max_new, allowed)
    return decoded_line(generated[len(healed):]) == site.line


def fim_prompt(scorer: Scorer, prefix: list[int], suffix: list[int], layout: str,
               max_new: int) -> list[int]:
    """PSM or SPM prompt, prefix and suffix cut to share what the context leaves."""
    budget = scorer.n_positions - max_new - 3
    keep_suffix = min(len(suffix), max(budget // 2, budget - len(prefix)))
    keep_prefix = min(len(prefix), budget - keep_suffix)
    prefix, suffix = prefix[len(prefix) - keep_prefix:], suffix[:keep_suffix]
    if layout == "psm":
        return [FIM_PREFIX, *prefix, FIM_SUFFIX, *suffix, FIM_MIDDLE]
    return [FIM_PREFIX, FIM_SUFFIX, *suffix, FIM_MIDDLE, *prefix]


def fim_match(scorer: Scorer, site: LineSite, layout: str, max_new: int,
              repo_header: bool = False) -> bool:
    """The middle after the (healed) prefix, up to its first newline, must equal the masked
    line exactly. The header goes before the FIM sentinels, as in training."""
    prefix, healed, allowed = heal(scorer, scorer.encode(site.prefix))
    header = scorer.header(site.package, site.path) if repo_header else []
    prompt = [*header, *fim_prompt(scorer, prefix, scorer.encode(site.suffix), layout,
                                   max_new + len(header))]
    generated = scorer.greedy(prompt, max_new, allowed)
    return decoded_line(generated[len(healed):]) == site.line


def rate(hits: Sequence[bool]) -> float:
    return sum(hits) / max(1, len(hits))


# -- the report -----------------------------------------------------------------------------


def sample_packages(files: Sequence[SourceFile], max_bytes: int | None) -> list[SourceFile]:
    """Each package's files (all, or a sample of about max_bytes fixed by path hashes)."""
    if max_bytes is None:
        return list(files)
    by_path = {(f.package, f.path): f for f in files}
    chosen: list[SourceFile] = []
    for package in dict.fromkeys(f.package for f in files):
        real = [RealFile(package, f.path, "python", f.text) for f in files if f.package == package]
        chosen += [by_path[package, r.path] for r in sample(real, max_bytes)]
    return chosen


def per_package(files: Sequence[SourceFile], bits: Sequence[float]) -> list[dict[str, object]]:
    """Bits per byte of the model and of xz -9e for each package's files."""
    rows = []
    for package in dict.fromkeys(f.package for f in files):
        mine = [(f, b) for f, b in zip(files, bits, strict=True) if f.package == package]
        nbytes = sum(f.nbytes for f, _ in mine)
        rows.append({"package": package or "(no package)", "files": len(mine), "bytes": nbytes,
                     "bits_per_byte": round(sum(b for _, b in mine) / nbytes, 4),
                     "xz_bits_per_byte": round(xz_bits_per_byte([f.text for f, _ in mine]), 4)})
    return rows


def evaluate(scorer: Scorer, files: Sequence[SourceFile], lines: int, seed: int, stride: int,
             max_new: int, repo_header: bool = False) -> dict[str, object]:
    started = time.monotonic()
    nbytes = sum(f.nbytes for f in files)
    file_bits = [file_nll_bits(scorer, f.text, stride,
                               scorer.header(f.package, f.path) if repo_header else ())
                 for f in files]
    bits = sum(file_bits)
    log.info("bits per byte done (%.0f s)", time.monotonic() - started)
    next_sites = sample_lines(files, lines, seed)
    next_line = [next_line_match(scorer, s, max_new, repo_header) for s in next_sites]
    fim_sites = sample_lines(files, lines, seed + 1)
    psm = [fim_match(scorer, s, "psm", max_new, repo_header) for s in fim_sites]
    spm = [fim_match(scorer, s, "spm", max_new, repo_header) for s in fim_sites]
    return {
        "held_out_files": len(files), "held_out_bytes": nbytes, "repo_header": repo_header,
        "bits_per_byte": round(bits / nbytes, 4),
        "xz_bits_per_byte": round(xz_bits_per_byte([f.text for f in files]), 4),
        "next_line_exact_match": round(rate(next_line), 4), "next_line_samples": len(next_line),
        "fim_psm_exact_match": round(rate(psm), 4), "fim_spm_exact_match": round(rate(spm), 4),
        "fim_samples": len(fim_sites), "seconds": round(time.monotonic() - started, 1),
        "packages": per_package(files, file_bits),
    }


def print_report(name: str, result: dict[str, object]) -> None:
    rows = [
        ("bits per byte, model", f"{result['bits_per_byte']:.3f}"),
        ("bits per byte, xz -9e (baseline)", f"{result['xz_bits_per_byte']:.3f}"),
        ("next-line exact match", f"{result['next_line_exact_match']:.1%} "
                                  f"of {result['next_line_samples']}"),
        ("FIM exact match, PSM", f"{result['fim_psm_exact_match']:.1%} of {result['fim_samples']}"),
        ("FIM exact match, SPM", f"{result['fim_spm_exact_match']:.1%} of {result['fim_samples']}"),
    ]
    header = ", repository header before each file" if result.get("repo_header") else ""
    print(f"{name}: {result['held_out_files']} held-out files, {result['held_out_bytes']} bytes"
          f"{header}")
    for label, value in rows:
        print(f"  {label:<32} {value}")
    packages = cast(list[dict[str, object]], result["packages"])
    if len(packages) > 1:
        print(f"  {'package':<24} {'files':>6} {'bytes':>10} {'bpb':>7} {'xz -9e':>7}")
        for p in packages:
            print(f"  {p['package']!s:<24} {p['files']:>6} {p['bytes']:>10} "
                  f"{p['bits_per_byte']:>7.3f} {p['xz_bits_per_byte']:>7.3f}")
    print(json.dumps({"model": name, **result}))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="checkpoint folder, or 'default'")
    p.add_argument("--data", type=Path, default=None,
                   help="corpus cache folder (default: read this interpreter's library)")
    p.add_argument("--max-bytes-per-package", type=int, default=None,
                   help="sample each held-out package down to about this many bytes")
    p.add_argument("--lines", type=int, default=200, help="lines sampled for each exact match")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stride", type=int, default=None,
                   help="sliding-window step for bits per byte (default n_positions / 2)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster, less exact)")
    p.add_argument("--repo-header", action="store_true",
                   help="<reponame>package<filename>path before each file (context, unscored)")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scorer = Scorer.load(args.model, args.bf16)
    files = sample_packages(load_corpus(args.data).held_out, args.max_bytes_per_package)
    stride = args.stride or scorer.n_positions // 2
    if args.repo_header and any(not f.package for f in files):
        sys.exit("error: --repo-header needs a corpus of packages (--data, from "
                 "`python -m model.train.corpus build`)")
    result = evaluate(scorer, files, args.lines, args.seed, stride, args.max_new_tokens,
                      args.repo_header)
    print_report(args.model, result)


if __name__ == "__main__":
    main()
