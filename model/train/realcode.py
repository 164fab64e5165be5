"""Released code for judging the diagnostics on real files: pinned source archives of
permissively licensed packages, fetched once with pip into ~/.cache/gptbigcode-lsp/realcode,
split by package into a training / calibration set and a held-out test set, files by kind.

Nothing here is test data: the archives are downloaded at development time (`fetch`), never by
the test suite. pip, attrs, cattrs, pygls, lsprotocol, click, rich and httpx are never used:
they are kept for evaluation elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

CACHE = Path.home() / ".cache" / "gptbigcode-lsp" / "realcode"
RESERVED = frozenset({"pip", "attrs", "cattrs", "pygls", "lsprotocol", "click", "rich", "httpx"})


@dataclass(frozen=True)
class Package:
    """A released source archive; `only` limits a large one to some folders (path prefixes)."""

    name: str
    version: str
    license: str
    split: str  # "train" (training and calibration) or "test" (held out)
    only: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


PACKAGES = (
    # training and calibration
    Package("requests", "2.32.3", "Apache-2.0", "train"),
    Package("urllib3", "2.2.3", "MIT", "train"),
    Package("jinja2", "3.1.4", "BSD-3-Clause", "train"),
    Package("fsspec", "2024.10.0", "BSD-3-Clause", "train"),
    Package("pyyaml", "6.0.2", "MIT", "train"),
    Package("networkx", "3.4.2", "BSD-3-Clause", "train"),
    Package("packaging", "24.2", "Apache-2.0 OR BSD-2-Clause", "train"),
    Package("six", "1.16.0", "MIT", "train"),
    Package("flask", "3.1.0", "BSD-3-Clause", "train"),
    Package("pygments", "2.18.0", "BSD-2-Clause", "train"),
    Package("python-dateutil", "2.9.0.post0", "Apache-2.0 AND BSD-3-Clause", "train"),
    Package("filelock", "3.16.1", "Unlicense", "train"),
    # held out: never seen by training or calibration
    Package("huggingface_hub", "0.26.2", "Apache-2.0", "test"),
    Package("setuptools", "75.3.0", "MIT", "test", only=("setuptools/", "docs/", "pyproject.toml",
                                                          "setup.cfg", "tox.ini", "PKG-INFO",
                                                          "mypy.ini", "pytest.ini", "NEWS.rst")),
    Package("sympy", "1.13.3", "BSD-3-Clause", "test",
            only=("sympy/core/", "sympy/printing/", "sympy/utilities/", "doc/src/tutorials/",
                  "setup.py", "setup.cfg", "PKG-INFO", "README.md", "pyproject.toml")),
    Package("tqdm", "4.67.0", "MPL-2.0 AND MIT", "test"),
    Package("markupsafe", "3.0.2", "BSD-3-Clause", "test"),
    Package("idna", "3.10", "BSD-3-Clause", "test"),
    Package("charset-normalizer", "3.4.0", "MIT", "test"),
    Package("werkzeug", "3.1.3", "BSD-3-Clause", "test"),
    Package("platformdirs", "4.3.6", "MIT", "test"),
    Package("tomli", "2.0.2", "MIT", "test"),
)
assert not RESERVED & {p.name.lower() for p in PACKAGES}

KINDS = ("python", "config", "dependency", "docs", "other")
PYTHON_SUFFIXES = frozenset({".py", ".pyi", ".pyx", ".pxd"})
CONFIG_SUFFIXES = frozenset({".toml", ".cfg", ".ini", ".yaml", ".yml", ".json", ".env",
                             ".sh", ".bat", ".ps1", ".conf", ".in"})
CONFIG_NAMES = frozenset({"dockerfile", "makefile", ".editorconfig", ".gitignore",
                          ".gitattributes", ".coveragerc", ".flake8", ".readthedocs.yaml",
                          ".pre-commit-config.yaml", ".env"})
DOCS_SUFFIXES = frozenset({".md", ".rst", ".txt", ".html", ".css", ".js", ".svg", ""})
MAX_FILE_BYTES = 1_000_000  # as `gptbigcode-lsp scan` skips larger files


def file_kind(path: str) -> str:
    """python, config, dependency (requirements, lock files, package metadata), docs or other."""
    name = PurePosixPath(path).name.lower()
    suffix = PurePosixPath(name).suffix
    if suffix in PYTHON_SUFFIXES:
        return "python"
    if (name in {"pkg-info", "metadata", "requires.txt", "pipfile", "pipfile.lock",
                 "cargo.lock", "cargo.toml", "package.json", "package-lock.json",
                 "pyproject.toml", "setup.cfg"}
            or suffix == ".lock" or "requirements" in name or name.startswith("constraints")):
        return "dependency"
    if suffix in CONFIG_SUFFIXES or name in CONFIG_NAMES:
        return "config"
    if suffix in DOCS_SUFFIXES:
        return "docs"
    return "other"


@dataclass(frozen=True)
class RealFile:
    package: str
    path: str  # inside the package's archive, without its top folder
    kind: str
    text: str

    @property
    def nbytes(self) -> int:
        return len(self.text.encode("utf-8"))


def archive_of(package: Package, cache: Path) -> Path | None:
    stem = f"{package.name}-{package.version}".lower().replace("_", "-")
    for path in sorted((cache / "dist").glob("*")):
        if path.name.lower().replace("_", "-").startswith(stem + "."):
            return path
    return None


def fetch(packages: tuple[Package, ...] = PACKAGES, cache: Path = CACHE) -> None:
    """Download the source archives that are not in the cache yet (pip, no dependencies)."""
    missing = [p for p in packages if archive_of(p, cache) is None]
    if not missing:
        return
    (cache / "dist").mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", ", ".join(p.requirement for p in missing))
    # Source archives of these packages only: their build backends may come as wheels (with
    # :all: pip would compile Cython and the like from source just to read the metadata).
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
               ",".join(p.name for p in missing), "--quiet", "-d", str(cache / "dist"),
               *(p.requirement for p in missing)]
    subprocess.run(command, check=True, stdout=sys.stderr)
    still = [p.requirement for p in packages if archive_of(p, cache) is None]
    if still:
        raise RuntimeError(f"pip did not download {', '.join(still)} into {cache / 'dist'}")


def archive_members(path: Path) -> list[tuple[str, bytes]]:
    """(path without the top folder, bytes) of the archive's regular files."""
    out: list[tuple[str, bytes]] = []
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is not None and member.size <= MAX_FILE_BYTES:
                    out.append((member.name.split("/", 1)[-1], handle.read()))
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir() and info.file_size <= MAX_FILE_BYTES:
                    out.append((info.filename.split("/", 1)[-1], archive.read(info)))
    else:
        raise ValueError(f"{path}: not a source archive (.tar.gz or .zip)")
    return out


def files_of(package: Package, cache: Path = CACHE) -> list[RealFile]:
    """The package's UTF-8 text files (within `only`), sorted by path."""
    archive = archive_of(package, cache)
    if archive is None:
        raise FileNotFoundError(f"{package.requirement} is not in {cache / 'dist'}: run fetch()")
    files = []
    for path, data in sorted(archive_members(archive)):
        if package.only and not path.startswith(package.only):
            continue
        if b"\0" in data[:8192]:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(RealFile(package.name, path, file_kind(path), text))
    return files


def load(split: str, cache: Path = CACHE, download: bool = True,
         max_bytes_per_package: int | None = None) -> list[RealFile]:
    """The files of the split's packages ("train" or "test"), fetching archives if needed; with
    a byte limit, a sample of each package (`sample`)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    packages = tuple(p for p in PACKAGES if p.split == split)
    if download:
        fetch(packages, cache)
    files = []
    for p in packages:
        found = files_of(p, cache)
        files += found if max_bytes_per_package is None else sample(found, max_bytes_per_package)
    return files


def sample(files: list[RealFile], max_bytes: int) -> list[RealFile]:
    """Every config and dependency file, then other files in an order fixed by a hash of their
    path while they fit in max_bytes all together; in path order."""
    def order(f: RealFile) -> tuple[bool, bytes]:
        return f.kind not in ("config", "dependency"), hashlib.sha256(f.path.encode()).digest()

    chosen, total = [], 0
    for f in sorted(files, key=order):
        if total + f.nbytes <= max_bytes or f.kind in ("config", "dependency"):
            chosen.append(f)
            total += f.nbytes
    return sorted(chosen, key=lambda f: f.path)
