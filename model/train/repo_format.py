"""StarCoder's repository format for training: the files of one package in one sequence,
`<reponame>name` first and `<filename>path` + newline before each file, so the model sees other
files' definitions before the one it writes.

    <reponame>fastapi<filename>fastapi/routing.py\\n{text or FIM form}<filename>...<|endoftext|>

Each file (each piece of a file longer than a training sequence, its `<filename>` line
repeated) goes through SantaCoder's fill-in-the-middle transformation on its own, as fim.py
draws it (rate 0.5, PSM and SPM half each), with the metadata left outside the FIM sentinels.
An epoch shuffles the repositories and the files within each, then packs everything end to
end into fixed-length rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import SourceFile
from .fim import EOT, EncodeBatch, FimSample, sample_ids, split_fim
from .tokenizer_recipe import SPECIAL_TOKENS

REPONAME = SPECIAL_TOKENS.index("<reponame>")
FILENAME = SPECIAL_TOKENS.index("<filename>")

@dataclass(frozen=True)
class RepoFile:
    """A file's path and its text, cut into pieces that fit a training sequence."""

    path: str
    pieces: tuple[str, ...]


@dataclass(frozen=True)
class Repository:
    name: str
    files: tuple[RepoFile, ...]

    @property
    def text_chars(self) -> int:
        return sum(len(p) for f in self.files for p in f.pieces)


def repositories(files: Sequence[SourceFile], pieces: Sequence[Sequence[str]]
                 ) -> list[Repository]:
    """The files grouped by package (in first-seen order), each as its pieces (fim.chunk_text:
    pieces[i] is files[i] cut to fit a training sequence)."""
    if len(files) != len(pieces):
        raise ValueError(f"{len(files)} files but {len(pieces)} lists of pieces")
    groups: dict[str, list[RepoFile]] = {}
    for f, parts in zip(files, pieces, strict=True):
        if not f.package:
            raise ValueError(f"{f.path}: no package; the repository format needs a corpus "
                             f"built by `python -m model.train.corpus build`")
        groups.setdefault(f.package, []).append(RepoFile(f.path, tuple(parts)))
    return [Repository(name, tuple(repo_files)) for name, repo_files in groups.items()]


def repository_samples(repo: Repository, rng: random.Random, rate: float, spm_rate: float
                       ) -> list[tuple[str, FimSample]]:
    """(path, sample) for each piece: files in a shuffled order, a file's pieces in order."""
    order = list(range(len(repo.files)))
    rng.shuffle(order)
    return [(repo.files[i].path, split_fim(piece, rng, rate, spm_rate))
            for i in order for piece in repo.files[i].pieces]


def repository_ids(name: str, samples: Sequence[tuple[str, FimSample]],
                   encode_batch: EncodeBatch) -> list[int]:
    """<reponame>name, then <filename>path\\n and the sample per piece, then <|endoftext|>.

    One tokenizer batch: the name, and per piece its path line and three FIM segments.
    """
    segments = [name]
    for path, s in samples:
        segments += [path + "\n", s.prefix, s.middle, s.suffix]
    ids = encode_batch(segments)
    out = [REPONAME, *ids[0]]
    for i, (_, s) in enumerate(samples):
        path_ids, prefix, middle, suffix = ids[1 + 4 * i:5 + 4 * i]
        out += [FILENAME, *path_ids, *sample_ids(s, prefix, middle, suffix)[:-1]]  # no EOT
    out.append(EOT)
    return out


def build_repository_sequences(repos: Sequence[Repository], encode_batch: EncodeBatch,
                               seq_len: int, seed: int, rate: float = 0.5, spm_rate: float = 0.5
                               ) -> torch.Tensor:
    """One epoch of packed rows (N, seq_len), int32: repositories shuffled, FIM per piece.

    The stream is kept as int32 arrays a repository at a time, not as one Python list: a
    100 MB corpus is tens of millions of tokens.
    """
    rng = random.Random(seed)
    order = list(range(len(repos)))
    rng.shuffle(order)
    parts = []
    for i in order:
        samples = repository_samples(repos[i], rng, rate, spm_rate)
        parts.append(np.asarray(repository_ids(repos[i].name, samples, encode_batch),
                                dtype=np.int32))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    rows = len(stream) // seq_len
    return torch.from_numpy(stream[:rows * seq_len].reshape(rows, seq_len).copy())
