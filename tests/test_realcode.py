"""The real-code evaluation's pieces that need no download: file kinds, package samples, the
split's package list, and credentials planted into a long real file (a standard-library module
of the running interpreter)."""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path

import pytest

from model.train import realcode
from model.train.planted import FORMATS, long_files, plant, planted_files
from model.train.realcode import RealFile, file_kind, sample

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.mark.parametrize("path, kind", [
    ("src/requests/api.py", "python"), ("tqdm/std.pyi", "python"),
    ("PKG-INFO", "dependency"), ("requirements-dev.txt", "dependency"), ("uv.lock", "dependency"),
    ("pyproject.toml", "dependency"), ("src/rust/Cargo.lock", "dependency"),
    ("tox.ini", "config"), (".github/workflows/ci.yml", "config"), ("docs/conf.json", "config"),
    ("README.md", "docs"), ("docs/index.rst", "docs"), ("LICENSE", "docs"),
    ("src/_speedups.c", "other"),
])
def test_file_kinds(path: str, kind: str) -> None:
    assert file_kind(path) == kind


def test_packages_are_split_and_none_is_reserved_for_other_evaluations() -> None:
    splits = {p.split for p in realcode.PACKAGES}
    assert splits == {"train", "test"}
    names = [p.name.lower() for p in realcode.PACKAGES]
    assert len(names) == len(set(names))
    assert not set(names) & realcode.RESERVED


def test_a_package_sample_keeps_config_and_dependency_files_and_is_stable() -> None:
    files = [RealFile("p", f"m{i}.py", "python", "x = 1\n" * 100) for i in range(20)]
    files += [RealFile("p", "pyproject.toml", "dependency", "[project]\n" * 200),
              RealFile("p", "tox.ini", "config", "[tox]\n" * 200)]
    chosen = sample(files, 5000)  # the two config files take 3,200 bytes of it
    assert {"pyproject.toml", "tox.ini"} <= {f.path for f in chosen}
    python = [f for f in chosen if f.kind == "python"]
    assert len(python) == 3 and sum(f.nbytes for f in chosen) <= 5000
    assert sample(list(reversed(files)), 5000) == chosen
    assert {"pyproject.toml", "tox.ini"} <= {f.path for f in sample(files, 100)}


@pytest.fixture(scope="module")
def long_file() -> RealFile:
    text = (STDLIB / "typing.py").read_text(encoding="utf-8")
    assert text.count("\n") >= 2000
    return RealFile("cpython", "typing.py", "python", text)


def test_planted_credentials_sit_where_their_spans_say_in_code_that_still_parses(
    long_file: RealFile
) -> None:
    planted = plant(long_file, 11, FORMATS, random.Random(3))
    assert len(planted.plants) >= 11  # a connection string plants one value; a URL's user none
    ast.parse(planted.text)
    lines = planted.text.split("\n")
    for p in planted.plants:
        value = planted.text[p.start : p.end]
        assert value and value == value.strip()
        assert value.split("\n", 1)[0] in lines[p.line]
    # every original line is still there, in order
    original = long_file.text.split("\n")
    it = iter(lines)
    assert all(any(line == other for other in it) for line in original)
    depths = [p.line / len(lines) for p in planted.plants]
    assert min(depths) < 0.3 and max(depths) > 0.7  # spread through the file


def test_planted_files_cover_every_format(long_file: RealFile) -> None:
    short = RealFile("cpython", "short.py", "python", "x = 1\n" * 50)
    assert long_files([long_file, short]) == [long_file]
    planted = planted_files([long_file, short], seed=1, per_format=2, per_file=8)
    formats = [p.format for f in planted for p in f.plants]
    assert {f: formats.count(f) for f in FORMATS} == {f: 2 for f in FORMATS}
    with pytest.raises(ValueError, match="no Python file of 2000"):
        planted_files([short], seed=1, per_format=1)
