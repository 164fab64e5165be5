"""The training corpus of released Python: pinned wheels of permissively licensed packages plus
the standard library, licence read from each wheel's metadata, generated and vendored files
dropped, exact and near duplicates removed, and a held-out split by package.

    python -m model.train.corpus fetch               # pip download, once, at development time
    python -m model.train.corpus build --out runs/corpus

`build` writes train.jsonl and held_out.jsonl ({"path", "text", "package"} a line, what
`data.load_corpus` reads), manifest.json (every package with version, licence and its source,
files and bytes; the excluded packages and why; the dropped files by reason) and manifest.md
(the same as tables, for the model card). Wheels are cached in ~/.cache/gptbigcode-lsp/corpus
as realcode.py caches its source archives; nothing here downloads unless asked to (`fetch`).
pip, attrs, cattrs, pygls, lsprotocol, click, rich and httpx are never used (realcode.RESERVED),
and neither is any package that realcode.py holds out for testing the diagnostics or that the
completion benchmarks judge on (tests/bench/accept.py, replay.py), except as this corpus's
held-out split.
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import hashlib
import json
import logging
import platform
import re
import subprocess
import sys
import warnings
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from . import realcode
from .data import Corpus, SourceFile, collect_corpus, save_corpus

log = logging.getLogger(__name__)

CACHE = Path.home() / ".cache" / "gptbigcode-lsp" / "corpus"
PERMISSIVE = frozenset({"MIT", "BSD-2-Clause", "BSD-3-Clause", "BSD", "Apache-2.0", "PSF-2.0",
                        "ISC"})
STDLIB = "python-stdlib"


@dataclass(frozen=True)
class Release:
    """A pinned wheel; split is "train", "held_out", or "guard" (read for deduplication only:
    training drops copies of its files, and it is written nowhere)."""

    name: str
    version: str
    split: str = "train"

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def stem(self) -> str:
        """The wheel file name's start (PEP 427 normalises `-` and `.` in names to `_`)."""
        return re.sub(r"[-_.]+", "_", self.name).lower() + "-" + self.version + "-"


def _releases(spec: str, split: str = "train") -> tuple[Release, ...]:
    """Releases from whitespace-separated name==version requirements."""
    pairs = (item.split("==", 1) for item in spec.split())
    return tuple(Release(name, version, split) for name, version in pairs)


# Well-known pure-Python packages with modern code (type hints, f-strings, dataclasses, async).
# Some are listed although their licence is not permissive: the builder reads it from the
# wheel and excludes them by name in the manifest (hypothesis, pathspec, certifi: MPL-2.0;
# pylint: GPL; astroid: LGPL; docutils: public domain / BSD / GPL; chardet: 0BSD). Not typer:
# it carries a copy of click (typer/_click).
TRAIN = _releases("""
    accelerate==1.16.0 aiofiles==25.1.0 aiosqlite==0.22.1 alembic==1.20.1 amqp==5.4.2
    annotated-types==0.8.0 anthropic==2.16.0 anyio==4.16.0 arrow==1.4.0 asgiref==3.13.0
    astroid==4.4.0 babel==2.19.0 backoff==2.2.1 beartype==0.23.1 beautifulsoup4==4.15.0
    black==26.10.1 blinker==1.9.0 boto3==1.44.8 botocore==1.44.8 build==1.6.1
    cachetools==8.0.2 celery==5.7.0 certifi==2026.10.19.post1 chardet==7.7.0
    cloudpickle==3.1.3 dask==2026.8.0 datasets==5.2.0 decorator==5.3.1 deprecated==1.3.1
    distlib==0.4.4 distributed==2026.8.0 django==5.2.19 djangorestframework==3.18.3
    docker==7.2.0 docutils==0.23.1 einops==0.8.2 exceptiongroup==1.3.2 execnet==2.1.2
    factory-boy==3.3.3 faker==40.63.0 fastapi==0.165.0 filelock==4.3.2 flake8==7.5.0
    flask==3.1.3 freezegun==1.5.5 fsspec==2026.9.0 google-auth==2.63.0 graphql-core==3.3.2
    gunicorn==27.0.1 h11==0.16.0 hatchling==1.33.0 html5lib==1.1 humanize==4.17.0
    hypothesis==6.155.7 iniconfig==2.3.1 installer==1.1.0 invoke==3.0.3 ipython==9.18.1
    isort==9.0.2 itsdangerous==2.2.0 jedi==0.20.1 jmespath==1.1.0
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 jupyter-client==8.10.0
    jupyter-core==5.9.1 kombu==5.7.0 langchain-core==1.8.4 litestar==2.25.0 locket==1.0.0
    loguru==0.7.3 mako==1.4.3 markdown==3.11.3 markdown-it-py==4.3.0 marshmallow==4.4.0
    mdurl==0.1.2 mistune==3.4.0 mkdocs==1.6.1 mpmath==1.4.1
    nbformat==5.11.1 networkx==3.6.1 nox==2026.10.20 oauthlib==4.0.1 openai==3.60.0
    outcome==1.3.0.post0 parso==0.8.7 partd==1.4.2 pathspec==1.1.1
    pdm-backend==2.5.0 pexpect==4.9.0 pluggy==1.7.0 poetry-core==2.5.0 pre-commit==4.7.0
    prompt-toolkit==3.0.53 ptyprocess==0.7.0 pyasn1==0.6.5 pycodestyle==2.15.0
    pydantic==2.14.4 pydantic-settings==2.16.3 pyflakes==4.1.0 pygments==2.21.0
    pyjwt==2.15.1 pylint==4.1.5 pytest==9.2.0 pytest-asyncio==1.5.0
    pytest-cov==7.1.0 pytest-mock==3.17.0 pytest-xdist==3.8.0
    python-dotenv==1.2.4 python-slugify==9.2.0 pytz==2026.6 redis==8.1.0 referencing==0.37.0
    requests-oauthlib==2.0.0 requests-toolbelt==1.0.0 responses==0.26.3
    rsa==4.9.1 s3transfer==0.19.3 seaborn==0.13.2 sniffio==1.3.1 soupsieve==2.10
    sphinx==9.0.4 sqlalchemy==2.1.9 sqlmodel==0.0.50 sqlparse==0.6.1 starlette==1.10.0
    strawberry-graphql==0.341.2 structlog==26.1.0 tabulate==0.10.0 tenacity==9.2.1
    tomlkit==0.15.3 tox==4.67.16 traitlets==5.16.1 transformers==5.25.0
    trio==0.35.0 typeguard==4.6.1 typing-extensions==4.16.0
    uvicorn==0.55.0 vine==5.1.0 virtualenv==21.15.13 wcwidth==0.9.4 wheel==0.48.0
""")
# Held out by package: realcode.py's test packages that come as pure-Python wheels and carry a
# permissive licence, at realcode's versions (markupsafe has no such wheel; tqdm is
# MPL-2.0 AND MIT; setuptools and sympy are mostly vendored or older code).
HELD_OUT = tuple(Release(p.name, p.version, "held_out") for p in realcode.PACKAGES
                 if p.name in {"huggingface_hub", "werkzeug", "platformdirs", "tomli", "idna",
                               "charset-normalizer"})

# The completion acceptance harness's evaluation and calibration packages
# (tests/bench/accept.py) and the edit replay's (tests/bench/replay.py), at their versions:
# never trained on, and read only so that training drops its copies of their files
# (a package may carry another's code: vendored, or pasted in).
GUARDS = _releases("""
    requests==2.32.3 more-itertools==10.5.0 packaging==24.2 toolz==1.0.0
    python-dateutil==2.9.0.post0 urllib3==2.2.3 pyparsing==3.2.0 jinja2==3.1.4 six==1.16.0
    packaging==24.1 jinja2==3.1.5
""", "guard")
JUDGED_ELSEWHERE = frozenset(r.name for r in GUARDS) | {"idna"}
RELEASES = TRAIN + HELD_OUT + GUARDS
_REALCODE_TEST = {p.name.lower() for p in realcode.PACKAGES if p.split == "test"}
assert not realcode.RESERVED & {r.name.lower() for r in RELEASES}
assert not (_REALCODE_TEST | JUDGED_ELSEWHERE) & {r.name.lower() for r in TRAIN}

# A package's Python beyond this many bytes (after filtering) is sampled by a hash of the path,
# so that a few giants (transformers: 54 MB) do not drown the rest.
MAX_PACKAGE_BYTES = 3_000_000


# -- fetching -------------------------------------------------------------------------------


def wheel_of(release: Release, cache: Path = CACHE) -> Path | None:
    for path in sorted((cache / "wheels").glob("*.whl")):
        if path.name.lower().startswith(release.stem):
            return path
    return None


def fetch(releases: Sequence[Release] = RELEASES, cache: Path = CACHE) -> None:
    """pip download the pure-Python wheels not cached yet (no dependencies, one at a time so
    that one failure names its package)."""
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    for release in releases:
        if wheel_of(release, cache) is not None:
            continue
        log.info("downloading %s", release.requirement)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--only-binary=:all:", "--platform", "any", "--python-version", "3.11",
                   "--implementation", "py", "--abi", "none", "-d", str(cache / "wheels"),
                   release.requirement]
        subprocess.run(command, check=True, stdout=sys.stderr)
        if wheel_of(release, cache) is None:
            raise RuntimeError(f"pip did not download a wheel of {release.requirement}")


# -- licences -------------------------------------------------------------------------------

_CLASSIFIERS = {
    "MIT License": "MIT", "BSD License": "BSD", "Apache Software License": "Apache-2.0",
    "Python Software Foundation License": "PSF-2.0", "ISC License (ISCL)": "ISC",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
}
# Free-text licence names, lower case with punctuation and "license"/"version" removed.
_NAMES = {
    "mit": "MIT", "bsd": "BSD", "bsd 2 clause": "BSD-2-Clause", "bsd 3 clause": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause", "simplified bsd": "BSD-2-Clause", "apache": "Apache-2.0",
    "apache 2": "Apache-2.0", "apache 2 0": "Apache-2.0", "apache software": "Apache-2.0",
    "apache20": "Apache-2.0", "isc": "ISC", "psf": "PSF-2.0", "psf 2 0": "PSF-2.0",
    "python software foundation": "PSF-2.0",
}


def spdx_name(text: str) -> str | None:
    """An SPDX id for a licence id or free-text name, or None when it is not one we know."""
    text = text.strip()
    if text in PERMISSIVE or re.fullmatch(r"[A-Za-z0-9.+-]+", text) and "-" in text:
        return text
    key = re.sub(r"\b(the|license|licence|version|v)\b", " ", text.lower())
    key = " ".join(re.sub(r"[^a-z0-9]+", " ", key).split())
    return _NAMES.get(key)


def licence_from_text(text: str) -> str | None:
    """The licence a LICENSE file's text is, by its operative sentences."""
    if "Permission is hereby granted, free of charge" in text:
        return "MIT"
    if "Redistribution and use in source and binary forms" in text:
        return "BSD-3-Clause" if "Neither the name" in text else "BSD-2-Clause"
    if re.search(r"Apache License\s+Version 2\.0", text):
        return "Apache-2.0"
    if "PYTHON SOFTWARE FOUNDATION LICENSE" in text:
        return "PSF-2.0"
    if "Permission to use, copy, modify, and/or distribute" in text:
        return "ISC"
    return None


def is_permissive(expression: str) -> bool:
    """An SPDX expression is permissive when one of its OR alternatives is all permissive."""
    alternatives = expression.replace("(", " ").replace(")", " ").split(" OR ")
    return any(all(part.strip() in PERMISSIVE for part in alt.split(" AND "))
               for alt in alternatives)


def wheel_licence(archive: zipfile.ZipFile) -> tuple[str, str]:
    """(SPDX expression, where it was read) from the wheel's METADATA, then its licence files.

    In order: License-Expression; the License field when it names one licence; the licence
    classifiers (joined with AND: a package that lists several may use each somewhere); the
    licence file's text. ("unknown", "") when none says.
    """
    name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.parser.Parser().parsestr(archive.read(name).decode("utf-8", "replace"))
    if meta.get("License-Expression"):
        return str(meta["License-Expression"]).strip(), "License-Expression"
    field_text = str(meta.get("License") or "").strip()
    first_line = field_text.split("\n", 1)[0].strip(" -")
    if first_line and (found := spdx_name(first_line)) is not None:
        return found, "License"
    classifiers = [c.rsplit("::", 1)[-1].strip() for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::")]
    if classifiers:
        ids = sorted({_CLASSIFIERS.get(c, c) for c in classifiers})
        return " AND ".join(ids), "classifiers"
    if field_text and (found := licence_from_text(field_text)) is not None:
        return found, "License"
    for member in archive.namelist():
        folder, _, base = member.rpartition("/")
        if ".dist-info" in folder and base.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
            found = licence_from_text(archive.read(member).decode("utf-8", "replace"))
            if found is not None:
                return found, f"file {base}"
    return "unknown", ""


# -- file filters ---------------------------------------------------------------------------

VENDORED_PARTS = frozenset({"_vendor", "vendor", "vendored", "_vendored", "third_party",
                            "_third_party", "extern", "_extern"})
# A copy of a reserved package under another's folder (typer/_click is click's code).
RESERVED_FOLDERS = realcode.RESERVED | {"attr", "cattr"}
GENERATED_HEADER = re.compile(
    r"auto-?generated|autogenerated|do not (edit|modify)|generated (by|from|with) |"
    r"this file (is|was) (automatically )?generated|code generated by", re.IGNORECASE)
MAX_LINE_CHARS = 1000
MAX_MEAN_LINE_CHARS = 100
MIN_ALNUM_SHARE = 0.25
# A single literal (string, bytes, or a list/tuple/dict/set of constants) this large, or
# taking over half of a file over DATA_FILE_BYTES, makes the file data rather than code.
MAX_LITERAL_BYTES = 50_000
DATA_FILE_BYTES = 20_000
MIN_CODE_CHARS = 32


def is_literal(node: ast.expr) -> bool:
    """A string or bytes constant, or a collection of over 50 constants (nested allowed)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str | bytes)
    elements = (node.values if isinstance(node, ast.Dict)
                else node.elts if isinstance(node, ast.List | ast.Tuple | ast.Set) else None)
    return (elements is not None and len(elements) > 50
            and all(isinstance(e, ast.Constant | ast.Tuple | ast.List | ast.Dict)
                    for e in elements))


def largest_literal_chars(tree: ast.AST, text: str) -> int:
    """About the characters spanned by the largest literal in the module (columns count
    UTF-8 bytes)."""
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    largest = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.expr) and node.end_lineno is not None and is_literal(node):
            begin = starts[node.lineno - 1] + node.col_offset
            end = starts[node.end_lineno - 1] + (node.end_col_offset or 0)
            largest = max(largest, end - begin)
    return largest


def header_text(text: str) -> str:
    """Where a generator says so: the first 5 lines (a module docstring's opening), and the
    comment lines among the first 30 (not prose further down, such as "tokens generated by
    the model" in a docstring)."""
    lines = text.split("\n", 30)[:30]
    return "\n".join(lines[:5] + [line for line in lines[5:] if line.lstrip().startswith("#")])


def drop_reason(path: str, text: str) -> str | None:
    """Why a Python file is left out of the corpus, or None to keep it."""
    parts = PurePosixPath(path).parts
    if any(part.lower() in VENDORED_PARTS for part in parts[:-1]):
        return "vendored"
    if any(part.lower().strip("_") in RESERVED_FOLDERS for part in parts[:-1]):
        return "folder named after a reserved package"
    if parts[-1].endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")):
        return "generated (protobuf)"
    if GENERATED_HEADER.search(header_text(text)):
        return "generated (header)"
    if len(text.strip()) < MIN_CODE_CHARS:
        return "empty"
    lines = text.split("\n")
    if max(len(line) for line in lines) > MAX_LINE_CHARS:
        return "long lines"
    if len(text) / len(lines) > MAX_MEAN_LINE_CHARS:
        return "long lines"
    if sum(c.isalnum() for c in text) / len(text) < MIN_ALNUM_SHARE:
        return "low alphanumeric share"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            return "does not parse (Python 3.11)"
    literal = largest_literal_chars(tree, text)
    if literal > MAX_LITERAL_BYTES or (len(text) > DATA_FILE_BYTES and literal > len(text) / 2):
        return "data literal"
    return None


# -- near duplicates: MinHash over token shingles, LSH bands ----------------------------------

SHINGLE_TOKENS = 5
NUM_PERM = 128
BANDS = 32  # 32 bands of 4 rows: pairs at Jaccard 0.5 become candidates with p = 0.87
NEAR_DUPLICATE_JACCARD = 0.7  # estimated from the signatures, after the bands
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class MinHasher:
    """MinHash signatures of texts' SHINGLE_TOKENS-token shingles; deterministic."""

    def __init__(self, num_perm: int = NUM_PERM, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
        self.vocab: dict[str, int] = {}

    def shingles(self, text: str) -> np.ndarray:
        ids = np.array([self.vocab.setdefault(t, len(self.vocab) + 1)
                        for t in _TOKEN.findall(text)], dtype=np.uint64)
        if len(ids) < SHINGLE_TOKENS:
            ids = np.pad(ids, (0, SHINGLE_TOKENS - len(ids)))
        h = np.zeros(len(ids) - SHINGLE_TOKENS + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(SHINGLE_TOKENS):
                h = _mix(h ^ ids[k:len(h) + k])
        return np.unique(h)

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint64: the minimum of each hash function over the shingles."""
        h = self.shingles(text)
        sig = np.empty(len(self.a), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(self.a), 16):  # bounded memory for big files
                a, b = self.a[start:start + 16, None], self.b[start:start + 16, None]
                sig[start:start + 16] = _mix(a * h[None, :] + b).min(axis=1)
        return sig


@dataclass
class NearDuplicateIndex:
    """LSH over MinHash signatures: `add` answers the first kept text a new one nearly equals."""

    threshold: float = NEAR_DUPLICATE_JACCARD
    bands: int = BANDS
    hasher: MinHasher = field(default_factory=MinHasher)
    buckets: dict[tuple[int, bytes], int] = field(default_factory=dict)
    signatures: list[np.ndarray] = field(default_factory=list)

    def similarity(self, index: int, sig: np.ndarray) -> float:
        """Estimated Jaccard: the share of hash functions whose minima agree."""
        return float(np.mean(self.signatures[index] == sig))

    def add(self, text: str) -> int | None:
        """Index of a kept text with estimated Jaccard >= threshold, else keep this one (None)."""
        sig = self.hasher.signature(text)
        rows = len(sig) // self.bands
        keys = [(band, sig[band * rows:(band + 1) * rows].tobytes()) for band in range(self.bands)]
        for key in keys:
            other = self.buckets.get(key)
            if other is not None and self.similarity(other, sig) >= self.threshold:
                return other
        index = len(self.signatures)
        self.signatures.append(sig)
        for key in keys:
            self.buckets.setdefault(key, index)
        return None


# -- building -------------------------------------------------------------------------------


@dataclass
class PackageFiles:
    release: Release
    licence: str
    licence_source: str
    files: list[SourceFile]
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_bytes: Counter[str] = field(default_factory=Counter)


def read_wheel(release: Release, cache: Path = CACHE) -> PackageFiles:
    """The wheel's UTF-8 Python files (normalised line ends, filtered), with its licence."""
    path = wheel_of(release, cache)
    if path is None:
        raise FileNotFoundError(f"{release.requirement}: no wheel in {cache / 'wheels'}; "
                                f"run `python -m model.train.corpus fetch`")
    with zipfile.ZipFile(path) as archive:
        licence, source = wheel_licence(archive)
        result = PackageFiles(release, licence, source, [])
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not info.filename.endswith((".py", ".pyi")):
                continue
            data = archive.read(info)
            reason = None
            if info.file_size > realcode.MAX_FILE_BYTES:
                reason = "too large"
            else:
                try:
                    text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
                except UnicodeDecodeError:
                    reason = "not UTF-8"
                else:
                    reason = drop_reason(info.filename, text)
            if reason is None:
                result.files.append(SourceFile(info.filename, text, release.name))
            else:
                result.dropped[reason] += 1
                result.dropped_bytes[reason] += len(data)
    return result


def cap_bytes(package: PackageFiles, max_bytes: int) -> None:
    """Keep files in an order fixed by a hash of their path while they fit in max_bytes."""
    order = sorted(package.files, key=lambda f: hashlib.sha256(f.path.encode()).digest())
    kept, total = set(), 0
    for f in order:
        if total + f.nbytes <= max_bytes:
            kept.add(f.path)
            total += f.nbytes
        else:
            package.dropped["over the package's byte cap"] += 1
            package.dropped_bytes["over the package's byte cap"] += f.nbytes
    package.files = [f for f in package.files if f.path in kept]


def stdlib_package() -> PackageFiles:
    """The running interpreter's library as data.py collects it (no test suites), train only."""
    corpus = collect_corpus()
    files = [SourceFile(f.path, f.text, STDLIB) for f in corpus.train + corpus.held_out
             if drop_reason(f.path, f.text) is None]
    release = Release(STDLIB, platform.python_version(), "train")
    return PackageFiles(release, "PSF-2.0", "CPython's LICENSE", files)


def deduplicate(packages: Sequence[PackageFiles]) -> dict[str, int]:
    """Drop exact copies (content hash) and near copies (MinHash) in place, guard and held-out
    packages first so that training never holds a copy of their files; counts by the kind of
    copy and the split of the file it copies."""
    ordered = sorted(packages, key=lambda p: p.release.split == "train")
    seen: dict[str, str] = {}  # content hash -> split of the first file with it
    index = NearDuplicateIndex()
    owners: list[str] = []  # split of each file kept in the index
    counts: Counter[str] = Counter()
    for package in ordered:
        kept = []
        for f in package.files:
            key = hashlib.sha256(f.text.encode("utf-8")).hexdigest()
            reason, twin = None, None
            if key in seen:
                reason, twin = "exact duplicate", seen[key]
            elif (near := index.add(f.text)) is not None:
                reason, twin = "near duplicate", owners[near]
            else:
                owners.append(package.release.split)
            seen.setdefault(key, package.release.split)
            if reason is None or package.release.split == "guard":
                kept.append(f)
            else:
                package.dropped[reason] += 1
                package.dropped_bytes[reason] += f.nbytes
                counts[f"{reason} of a {twin} file"] += 1
        package.files = kept
    return dict(sorted(counts.items()))


def build(out: Path, releases: Sequence[Release] = RELEASES, cache: Path = CACHE,
          with_stdlib: bool = True, max_package_bytes: int = MAX_PACKAGE_BYTES
          ) -> dict[str, Any]:
    """Read, filter, deduplicate and split; write the jsonl files and the manifests."""
    packages, excluded = [], []
    for release in releases:
        package = read_wheel(release, cache)
        if release.split != "guard" and not is_permissive(package.licence):
            excluded.append({"name": release.name, "version": release.version,
                             "licence": package.licence, "licence_source": package.licence_source,
                             "reason": "licence not in " + ", ".join(sorted(PERMISSIVE))})
            log.info("excluded %s: licence %s", release.requirement, package.licence)
            continue
        if release.split != "guard":
            cap_bytes(package, max_package_bytes)
        packages.append(package)
    if with_stdlib:
        packages.append(stdlib_package())
    dedup = deduplicate(packages)
    guards = [p for p in packages if p.release.split == "guard"]
    packages = [p for p in packages if p.release.split != "guard"]
    train = [f for p in packages if p.release.split == "train" for f in p.files]
    held_out = [f for p in packages if p.release.split == "held_out" for f in p.files]
    save_corpus(Corpus(train, held_out), out)
    dropped: Counter[str] = Counter()
    dropped_bytes: Counter[str] = Counter()
    for p in packages:
        dropped.update(p.dropped)
        dropped_bytes.update(p.dropped_bytes)
    manifest: dict[str, Any] = {
        "packages": [{"name": p.release.name, "version": p.release.version,
                      "split": p.release.split, "licence": p.licence,
                      "licence_source": p.licence_source, "files": len(p.files),
                      "bytes": sum(f.nbytes for f in p.files)} for p in packages],
        "excluded_packages": excluded,
        "guard_packages": [{"name": p.release.name, "version": p.release.version,
                            "files": len(p.files)} for p in guards],
        "dropped_files": {r: {"files": dropped[r], "bytes": dropped_bytes[r]}
                          for r in sorted(dropped)},
        "duplicates": dedup,
        "totals": {"train_packages": sum(p.release.split == "train" for p in packages),
                   "train_files": len(train), "train_bytes": sum(f.nbytes for f in train),
                   "held_out_packages": sum(p.release.split == "held_out" for p in packages),
                   "held_out_files": len(held_out),
                   "held_out_bytes": sum(f.nbytes for f in held_out)},
        "settings": {"permissive": sorted(PERMISSIVE), "max_package_bytes": max_package_bytes,
                     "near_duplicate_jaccard": NEAR_DUPLICATE_JACCARD,
                     "shingle_tokens": SHINGLE_TOKENS, "num_perm": NUM_PERM, "bands": BANDS,
                     "max_line_chars": MAX_LINE_CHARS, "min_alnum_share": MIN_ALNUM_SHARE,
                     "max_literal_bytes": MAX_LITERAL_BYTES},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "manifest.md").write_text(manifest_markdown(manifest))
    return manifest


def manifest_markdown(manifest: dict[str, Any]) -> str:
    """The manifest as model-card tables."""
    lines = ["| package | version | licence | split | files | bytes |", "|---|---|---|---|---|---|"]
    for p in manifest["packages"]:
        lines.append(f"| {p['name']} | {p['version']} | {p['licence']} | {p['split']} | "
                     f"{p['files']} | {p['bytes']:,} |")
    lines += ["", "Excluded packages:", "", "| package | version | licence |", "|---|---|---|"]
    for p in manifest["excluded_packages"]:
        lines.append(f"| {p['name']} | {p['version']} | {p['licence']} |")
    lines += ["", "Dropped files:", "", "| reason | files | bytes |", "|---|---|---|"]
    for reason, row in manifest["dropped_files"].items():
        lines.append(f"| {reason} | {row['files']} | {row['bytes']:,} |")
    lines += ["", "Totals: " + ", ".join(f"{k} {v:,}" for k, v in
                                        manifest["totals"].items()), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="pip download the pinned wheels into the cache")
    b = sub.add_parser("build", help="write the corpus and its manifest")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--no-stdlib", action="store_true")
    b.add_argument("--max-package-bytes", type=int, default=MAX_PACKAGE_BYTES)
    args = p.parse_args(argv)
    if args.command == "fetch":
        fetch()
        return
    manifest = build(args.out, with_stdlib=not args.no_stdlib,
                     max_package_bytes=args.max_package_bytes)
    print(json.dumps({"out": str(args.out), **manifest["totals"],
                      "excluded": [p["name"] for p in manifest["excluded_packages"]]}))


if __name__ == "__main__":
    main()
