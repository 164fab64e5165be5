"""Fill-in-the-middle training sequences (SantaCoder's recipe) from source files.

Each document chunk becomes one sample: with probability `rate` it is cut at two character
positions drawn uniformly and rearranged into PSM or SPM (half each), otherwise kept as plain
text. Samples end with <|endoftext|> and are packed end to end into fixed-length sequences.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .tokenizer_recipe import SPECIAL_TOKENS

EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = (
    SPECIAL_TOKENS.index(t)
    for t in ("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>")
)

Layout = Literal["plain", "psm", "spm"]
EncodeBatch = Callable[[list[str]], list[list[int]]]
EncodeWithOffsets = Callable[[str], Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class FimSample:
    """A chunk of text in one layout; for "plain" the whole text is in `prefix`."""

    layout: Layout
    prefix: str
    middle: str = ""
    suffix: str = ""

    @property
    def text(self) -> str:
        """The original chunk, whatever the layout."""
        return self.prefix + self.middle + self.suffix


def split_fim(text: str, rng: random.Random, rate: float = 0.5, spm_rate: float = 0.5
              ) -> FimSample:
    """Draw the layout, then two split points uniformly over the character positions."""
    if rng.random() >= rate:
        return FimSample("plain", text)
    layout: Layout = "spm" if rng.random() < spm_rate else "psm"
    low, high = sorted(rng.randint(0, len(text)) for _ in range(2))
    return FimSample(layout, text[:low], text[low:high], text[high:])


def sample_ids(sample: FimSample, prefix: list[int], middle: list[int], suffix: list[int]
               ) -> list[int]:
    """Token ids of a sample from its separately tokenised segments.

    PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle <|endoftext|>
    SPM: <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle <|endoftext|>  (StarCoder)
    """
    if sample.layout == "plain":
        return [*prefix, EOT]
    if sample.layout == "psm":
        return [FIM_PREFIX, *prefix, FIM_SUFFIX, *suffix, FIM_MIDDLE, *middle, EOT]
    return [FIM_PREFIX, FIM_SUFFIX, *suffix, FIM_MIDDLE, *prefix, *middle, EOT]


def encode_samples(samples: Sequence[FimSample], encode_batch: EncodeBatch) -> list[list[int]]:
    """Token ids of each sample; all segments go through the tokenizer in one batch."""
    segments = [part for s in samples for part in (s.prefix, s.middle, s.suffix)]
    ids = encode_batch(segments)  # (3 * len(samples)) lists
    return [sample_ids(s, *ids[3 * i:3 * i + 3]) for i, s in enumerate(samples)]


def chunk_text(text: str, offsets: Sequence[tuple[int, int]], max_tokens: int) -> list[str]:
    """Cut text into pieces of at most about max_tokens tokens, at line starts where possible.

    offsets are the (start, end) characters of the text's tokens. The pieces join back to text.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    starts = [start for start, _ in offsets]
    chunks: list[str] = []
    begin = 0
    first_token = 0
    while len(starts) - first_token > max_tokens:
        limit = starts[first_token + max_tokens]
        cut = text.rfind("\n", begin, limit) + 1
        if cut <= begin:  # one line longer than a chunk: cut inside it
            cut = limit
        chunks.append(text[begin:cut])
        begin = cut
        first_token = bisect.bisect_left(starts, cut)
    chunks.append(text[begin:])
    return chunks


def pack(samples: Iterable[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate samples and cut into rows of seq_len; the incomplete last row is dropped."""
    stream = [token for ids in samples for token in ids]
    rows = len(stream) // seq_len
    return torch.tensor(stream[:rows * seq_len], dtype=torch.long).view(rows, seq_len)


def build_sequences(chunks: Sequence[str], encode_batch: EncodeBatch, seq_len: int, seed: int,
                    rate: float = 0.5, spm_rate: float = 0.5) -> torch.Tensor:
    """One epoch of packed training rows (N, seq_len): chunks shuffled, FIM drawn per chunk."""
    rng = random.Random(seed)
    order = list(range(len(chunks)))
    rng.shuffle(order)
    samples = [split_fim(chunks[i], rng, rate, spm_rate) for i in order]
    return pack(encode_samples(samples, encode_batch), seq_len)
