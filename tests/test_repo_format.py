"""StarCoder's repository format for training: metadata tokens, FIM per file, packing."""

from __future__ import annotations

import random

import pytest

from model.train.data import SourceFile
from model.train.fim import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FimSample
from model.train.repo_format import (
    FILENAME,
    REPONAME,
    RepoFile,
    Repository,
    build_repository_sequences,
    repositories,
    repository_ids,
    repository_samples,
)

SPECIAL = {EOT: "<eot>", FIM_PREFIX: "<pre>", FIM_MIDDLE: "<mid>", FIM_SUFFIX: "<suf>",
           REPONAME: "<repo>", FILENAME: "<file>"}


def char_ids(texts: list[str]) -> list[list[int]]:
    """A stand-in tokenizer: one token per character, above the special ids."""
    return [[100 + ord(c) for c in t] for t in texts]


def show(ids: list[int]) -> str:
    return "".join(SPECIAL.get(i) or chr(i - 100) for i in ids)


def test_reponame_then_filename_line_before_each_file_and_one_endoftext() -> None:
    samples = [("a.py", FimSample("plain", "x = 1\n")),
               ("b.py", FimSample("psm", "def f", "(y)", ":\n")),
               ("c.py", FimSample("spm", "p", "m", "s"))]
    ids = repository_ids("pkg", samples, char_ids)
    assert show(ids) == ("<repo>pkg<file>a.py\nx = 1\n"
                         "<file>b.py\n<pre>def f<suf>:\n<mid>(y)"
                         "<file>c.py\n<pre><suf>s<mid>pm<eot>")
    assert ids.count(EOT) == 1 and ids[0] == REPONAME


def test_files_are_shuffled_but_a_files_pieces_stay_in_order_each_with_its_name() -> None:
    repo = Repository("r", tuple(RepoFile(f"f{i}.py", (f"{i}a", f"{i}b")) for i in range(8)))
    orders = set()
    for seed in range(5):
        samples = repository_samples(repo, random.Random(seed), rate=0.0, spm_rate=0.5)
        paths = [p for p, _ in samples]
        assert [s.text for _, s in samples] == [x for p in paths[::2] for x in
                                                (p[1] + "a", p[1] + "b")]
        assert paths[::2] == paths[1::2]
        orders.add(tuple(paths[::2]))
    assert len(orders) > 1


def test_fim_is_drawn_per_piece_at_the_given_rate() -> None:
    repo = Repository("r", tuple(RepoFile(f"f{i}.py", ("abcdef\n",)) for i in range(2000)))
    samples = repository_samples(repo, random.Random(0), rate=0.5, spm_rate=0.5)
    layouts = [s.layout for _, s in samples]
    assert 0.45 < layouts.count("plain") / 2000 < 0.55
    assert 0.2 < layouts.count("spm") / 2000 < 0.3
    assert all(s.text == "abcdef\n" for _, s in samples)


def test_repositories_group_files_by_package_and_need_packages() -> None:
    files = [SourceFile("a/x.py", "1", "a"), SourceFile("b/y.py", "2", "b"),
             SourceFile("a/z.py", "3", "a")]
    repos = repositories(files, [["1"], ["2"], ["3"]])
    assert [(r.name, [f.path for f in r.files]) for r in repos] == [
        ("a", ["a/x.py", "a/z.py"]), ("b", ["b/y.py"])]
    with pytest.raises(ValueError, match="no package"):
        repositories([SourceFile("x.py", "1")], [["1"]])


def test_epochs_pack_full_rows_reproducibly() -> None:
    repos = [Repository(f"pkg{r}", tuple(RepoFile(f"m{i}.py", (f"v{i} = {r}\n" * 3,))
                                         for i in range(5))) for r in range(6)]
    rows = build_repository_sequences(repos, char_ids, seq_len=64, seed=1)
    assert rows.shape[1] == 64 and rows.shape[0] > 5
    assert rows.equal(build_repository_sequences(repos, char_ids, seq_len=64, seed=1))
    assert not rows.equal(build_repository_sequences(repos, char_ids, seq_len=64, seed=2))
    stream = rows.flatten().tolist()
    assert stream.count(REPONAME) >= 5 and stream.count(FILENAME) >= 25
