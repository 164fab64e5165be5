"""Tagger rows cut from released code: windows of real files as negatives, and windows of real
Python files with credentials planted at random statement boundaries as positives.

The generated documents of `secrets_data` are short and tidy; released code is long and full of
things that look like secrets and are not (hashes in lock files, header and constant names,
docstring prose, version strings, URLs). Training on both teaches the tagger what a scanner
meets. Windows start anywhere in a file, so a value is seen at every position of the scanning
window, and a planted value may sit at any depth of a long file.

Text in released code that could truly be a credential or personal datum is not taught as
"nothing": e-mail addresses, IPv4 addresses, string literals assigned to credential-like names
and private key blocks get no target (`IGNORE`) in negatives, so a test fixture's
`password = "secret"` neither teaches the tagger to miss passwords nor to flag fixtures.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..tagging import token_tags
from ..tokenizer import Tokenizer
from .planted import FORMATS, Plant, plant
from .realcode import RealFile
from .secrets_data import Sample, Span, insertion_points

IGNORE = -100
MIN_HOST_LINES = 80  # planting needs some code around the value

_UNCERTAIN = (
    re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),  # e-mail addresses
    re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])"),  # IPv4 addresses
    # a string literal given to a credential-like name: `password = "..."`, `token: '...'`,
    # `api_key="..."`, `"secret": "..."`
    re.compile(r"(?i)[\w\"']*(?:pass(?:word|wd)?|pwd|secret|token|api_?key|auth\w*|credential)"
               r"[\w\"']*\s*[:=]\s*[rbuf]{0,2}(?:\"[^\"\n]*\"|'[^'\n]*')"),
    re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)",
               re.S),
)


@dataclass(frozen=True)
class Row:
    """Token ids and their targets (tag index, or IGNORE)."""

    ids: list[int]
    tags: list[int]


def uncertain_spans(text: str) -> list[tuple[int, int]]:
    """Character ranges of `text` that may hold a real credential or personal datum."""
    return [m.span() for pattern in _UNCERTAIN for m in pattern.finditer(text)]


def _mask(offsets: Sequence[tuple[int, int]], tags: list[int], spans: Sequence[tuple[int, int]]
          ) -> list[int]:
    out = list(tags)
    ends = [b for _, b in offsets]
    for start, end in spans:
        t = bisect.bisect_right(ends, start)  # the first token ending after `start`
        while t < len(offsets) and offsets[t][0] < end:
            out[t] = IGNORE
            t += 1
    return out


def _window_starts(n_tokens: int, size: int, count: int, rng: random.Random) -> list[int]:
    if n_tokens <= size:
        return [0]
    return [rng.randrange(0, n_tokens - size + 1) for _ in range(count)]


def negative_rows(files: Sequence[RealFile], tok: Tokenizer, labels: Sequence[str], size: int,
                  count: int, seed: int) -> list[Row]:
    """About `count` windows of at most `size` tokens from `files` (each file's share in
    proportion to its length), every target "O" except where `uncertain_spans` says IGNORE."""
    rng = random.Random(seed)
    encoded = []
    for f in files:
        ids, offsets = tok.encode_with_offsets(f.text, as_text=True)
        if ids:
            encoded.append((f, ids, offsets))
    total = sum(len(ids) for _, ids, _ in encoded) or 1
    rows: list[Row] = []
    for f, ids, offsets in encoded:
        share = count * len(ids) / total
        n = int(share) + (rng.random() < share - int(share))
        if not n:
            continue
        tags = _mask(offsets, [0] * len(ids), uncertain_spans(f.text))
        for start in _window_starts(len(ids), size, n, rng):
            window = tags[start : start + size]
            if any(t != IGNORE for t in window):
                rows.append(Row(ids[start : start + size], window))
    rng.shuffle(rows)
    return rows


def plant_hosts(files: Sequence[RealFile]) -> list[RealFile]:
    """Python files long enough to plant into whose statements are known (they parse); a
    ValueError when there is none."""
    hosts = [f for f in files if f.kind == "python" and f.text.count("\n") >= MIN_HOST_LINES
             and insertion_points(f.text)]
    if not hosts:
        raise ValueError(f"no Python file of {MIN_HOST_LINES}+ lines to plant credentials into")
    return hosts


def planted_rows(files: Sequence[RealFile], tok: Tokenizer, labels: Sequence[str], size: int,
                 count: int, seed: int, per_file: int = 6) -> list[Row]:
    """`count` windows of at most `size` tokens, each holding a credential planted into a real
    Python file (formats in turn) at a random place of the window; the file's other text is
    targeted as in `negative_rows`."""
    rng = random.Random(seed)
    hosts = plant_hosts(files)
    rows: list[Row] = []
    turn = 0
    while len(rows) < count:
        host = rng.choice(hosts)
        formats = [FORMATS[(turn + i) % len(FORMATS)] for i in range(per_file)]
        turn += per_file
        planted = plant(host, per_file, formats, rng)
        rows += _rows_of(planted.text, planted.plants, tok, labels, size, rng)
    rows = rows[:count]
    rng.shuffle(rows)
    return rows


def _rows_of(text: str, plants: Sequence[Plant], tok: Tokenizer, labels: Sequence[str],
             size: int, rng: random.Random) -> list[Row]:
    ids, offsets = tok.encode_with_offsets(text, as_text=True)
    tags = token_tags(offsets, [(p.start, p.end, p.label) for p in plants], labels)
    planted_at = [(p.start, p.end) for p in plants]
    uncertain = [(a, b) for a, b in uncertain_spans(text)
                 if not any(a < end and start < b for start, end in planted_at)]
    tags = _mask(offsets, tags, uncertain)
    rows = []
    for p in plants:
        first = next(t for t, (_, b) in enumerate(offsets) if b > p.start)
        last = max(t for t, (a, _) in enumerate(offsets) if a < p.end)
        if last - first + 1 > size:
            continue
        lo, hi = max(0, last + 1 - size), min(first, max(0, len(ids) - size))
        start = rng.randint(lo, max(lo, hi))
        rows.append(Row(ids[start : start + size], tags[start : start + size]))
    return rows


def planted_samples(files: Sequence[RealFile], count: int, seed: int, size_lines: int = 60,
                    per_file: int = 2) -> list[Sample]:
    """Calibration documents: stretches of about `size_lines` lines of real Python files with
    credentials planted in them (spans known), and stretches with none, half each; a stretch
    with text `uncertain_spans` would flag is skipped (its truth is unknown)."""
    rng = random.Random(seed)
    hosts = plant_hosts(files)
    out: list[Sample] = []
    turn = 0
    attempts = 0
    while len(out) < count and attempts < 50 * count:
        attempts += 1
        host = rng.choice(hosts)
        lines = host.text.split("\n")
        first = rng.randrange(0, max(1, len(lines) - size_lines))
        stretch = "\n".join(lines[first : first + size_lines])
        if not insertion_points(stretch) or uncertain_spans(stretch):
            continue
        if len(out) % 2:
            out.append(Sample(stretch, (), "python", ()))
            continue
        formats = [FORMATS[(turn + i) % len(FORMATS)] for i in range(per_file)]
        turn += per_file
        planted = plant(RealFile(host.package, host.path, "python", stretch), per_file, formats,
                        rng)
        out.append(Sample(planted.text, tuple(Span(p.start, p.end, p.label)
                                              for p in planted.plants), "python",
                          tuple(p.format for p in planted.plants)))
    return out
