"""Training text for the default model: the running interpreter's standard library sources.

Files are read as UTF-8, deduplicated (exactly and by near-identical line sets) and split into
training and held-out sets by a hash of their relative path, so the split never depends on
which other files exist or on the order they are read in. `load_corpus` also reads the
package corpus that model/train/corpus.py writes (same files, each row with its package).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Test suites (`test/` alone is 19 MB, more than the rest of the library) are mostly assertion
# boilerplate and fixtures made to be odd on purpose: files in legacy encodings, deliberately bad
# syntax, Python 2 sources (lib2to3/tests/data), large data blobs. They never enter the held-out
# set, so its figures are about ordinary library code; with `with_tests` the ones that compile
# are added to the training set, for runs long enough to repeat the library many times.
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
EXCLUDED_DIRS = frozenset({"site-packages", "__pycache__"})

# Files that are data rather than code written by people: 0.75 MB of documentation prose in one
# string literal, and the build machine's configuration variables (named after the platform).
EXCLUDED_FILES = frozenset({"pydoc_data/topics.py"})
EXCLUDED_NAME_PREFIXES = ("_sysconfigdata",)
# Scripts that wrote the file they are named in, near its top: the 65 codec charmap tables
# (1.4 MB of Unicode names) and stringprep's tables.
GENERATOR_MARKERS = ("gencodec.py", "mkstringprep.py")

HELD_OUT_FRACTION = 0.05
NEAR_DUPLICATE_JACCARD = 0.7


@dataclass(frozen=True)
class SourceFile:
    """One source file: its path relative to the library root (or inside its package's wheel),
    its text (\\n line ends) and the package it comes from ("" for the stdlib-only corpus)."""

    path: str
    text: str
    package: str = ""

    @property
    def nbytes(self) -> int:
        return len(self.text.encode("utf-8"))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_test_suite(relative: Path) -> bool:
    return any(part in TEST_DIRS for part in relative.parts[:-1])


def is_excluded(relative: Path) -> bool:
    """Never read: other packages, caches, and data files (test suites are read on request)."""
    return (any(part in EXCLUDED_DIRS for part in relative.parts[:-1])
            or relative.as_posix() in EXCLUDED_FILES
            or relative.name.startswith(EXCLUDED_NAME_PREFIXES))


def iter_source_paths(root: Path, tests: bool = False) -> Iterator[Path]:
    """Python files under root, sorted, minus the excluded directories and files; with tests,
    the test-suite files instead."""
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if path.is_file() and not is_excluded(relative) and is_test_suite(relative) == tests:
            yield path


def read_source(path: Path, root: Path) -> SourceFile | None:
    """The file with normalised line ends, or None when it is not UTF-8 or was generated."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        log.debug("skipping %s: not UTF-8", path)
        return None
    if any(marker in text[:1000] for marker in GENERATOR_MARKERS):
        log.debug("skipping %s: generated tables", path)
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return SourceFile(path.relative_to(root).as_posix(), text)


def content_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def line_set(text: str) -> frozenset[str]:
    """Distinct non-blank lines with indentation removed: what near-duplicates share."""
    return frozenset(s for line in text.split("\n") if (s := line.strip()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def deduplicate(files: Iterable[SourceFile], threshold: float = NEAR_DUPLICATE_JACCARD
                ) -> list[SourceFile]:
    """Keep the first of each group of equal or near-equal files (by line-set Jaccard)."""
    kept: list[SourceFile] = []
    kept_lines: list[frozenset[str]] = []
    seen: set[str] = set()
    for f in files:
        key = content_key(f.text)
        if key in seen or not f.text.strip():
            continue
        seen.add(key)
        lines = line_set(f.text)
        # Jaccard >= t needs the smaller set to be at least t times the larger one.
        twin = next((k for k, other in zip(kept, kept_lines, strict=True)
                     if threshold * max(len(lines), len(other)) <= min(len(lines), len(other))
                     and jaccard(lines, other) >= threshold), None)
        if twin is not None:
            log.debug("skipping %s: near-duplicate of %s", f.path, twin.path)
            continue
        kept.append(f)
        kept_lines.append(lines)
    return kept


def is_held_out(path: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Deterministic membership of the held-out split, from the relative path alone."""
    digest = hashlib.sha256(("held-out:" + path).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


@dataclass(frozen=True)
class Corpus:
    train: list[SourceFile]
    held_out: list[SourceFile]

    def summary(self) -> dict[str, int]:
        return {
            "train_files": len(self.train),
            "train_bytes": sum(f.nbytes for f in self.train),
            "held_out_files": len(self.held_out),
            "held_out_bytes": sum(f.nbytes for f in self.held_out),
        }


def compiles(f: SourceFile) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # test fixtures provoke SyntaxWarnings on purpose
        try:
            compile(f.text, f.path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return False
    return True


def collect_corpus(root: Path | None = None, with_tests: bool = False) -> Corpus:
    """Read, deduplicate and split the library under root (default: this interpreter's).

    with_tests adds the test suites' files that compile to the training set only.
    """
    root = stdlib_root() if root is None else root
    if not root.is_dir():
        raise FileNotFoundError(f"standard library folder not found: {root}")
    files = [f for p in iter_source_paths(root) if (f := read_source(p, root)) is not None]
    if with_tests:
        tests = (f for p in iter_source_paths(root, tests=True)
                 if (f := read_source(p, root)) is not None and compiles(f))
        files = deduplicate([*files, *tests])
    else:
        files = deduplicate(files)
    return Corpus(
        train=[f for f in files if is_test_suite(Path(f.path)) or not is_held_out(f.path)],
        held_out=[f for f in files if not is_test_suite(Path(f.path)) and is_held_out(f.path)],
    )


def save_corpus(corpus: Corpus, folder: Path) -> None:
    """Write train.jsonl and held_out.jsonl (one {"path", "text"[, "package"]} object a line)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, files in (("train", corpus.train), ("held_out", corpus.held_out)):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as out:
            for f in files:
                row = {"path": f.path, "text": f.text}
                if f.package:
                    row["package"] = f.package
                out.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[SourceFile]:
    files = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                files.append(SourceFile(row["path"], row["text"], row.get("package", "")))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a {{path, text}} row ({exc})") from None
    return files


def load_corpus(folder: Path | None = None, with_tests: bool = False) -> Corpus:
    """The corpus cached in folder, collected (and cached there) on first use."""
    if folder is None:
        return collect_corpus(with_tests=with_tests)
    manifest = folder / "corpus.json"
    wanted = {"stdlib": str(stdlib_root()), "with_tests": with_tests}
    if not (folder / "held_out.jsonl").is_file():
        save_corpus(collect_corpus(with_tests=with_tests), folder)
        manifest.write_text(json.dumps(wanted) + "\n")
    elif manifest.is_file() and json.loads(manifest.read_text()) != wanted:
        raise ValueError(f"{folder} caches a corpus made with {manifest.read_text().strip()}, "
                         f"not {wanted}; use another folder")
    return Corpus(read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "held_out.jsonl"))
