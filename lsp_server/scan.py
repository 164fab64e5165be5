"""`gptbigcode-lsp scan PATH...`: the server's diagnostics for files on disk, one JSON line per
finding on stdout (never the flagged text), so it can run in a pre-commit hook."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .documents import offset_to_position
from .engine import Diagnoser, Finding, set_threads
from .options import DiagnosticsOptions

SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__",
                          ".mypy_cache", ".ruff_cache", ".pytest_cache", ".tox", "dist", "build"})
LANGUAGES = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".ts": "typescript", ".tsx": "typescriptreact",
    ".jsx": "javascriptreact", ".sh": "shellscript", ".bash": "shellscript",
    ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml", ".ini": "ini",
    ".cfg": "ini", ".env": "dotenv",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptbigcode-lsp scan",
        description="Report hard-coded secrets, personal data and (with --bugs) functions that "
                    "look wrong, one JSON line per finding.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="files or folders")
    parser.add_argument("--model", default="default", help='diagnostics model folder or "default"')
    parser.add_argument("--bugs", action="store_true", help="also score Python functions")
    parser.add_argument("--no-personal-data", action="store_true",
                        help="report secrets only (no email or IP addresses)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="one probability threshold for every label (default: the model's)")
    parser.add_argument("--max-bytes", type=int, default=1_000_000,
                        help="skip files larger than this (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model")
    return parser


def iter_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def language_of(path: Path) -> str:
    if path.name == ".env" or path.name.startswith(".env."):
        return "dotenv"
    return LANGUAGES.get(path.suffix.lower(), "plaintext")


def read_text(path: Path, max_bytes: int) -> str | None:
    """The file's text, or None (with a note on stderr) when it is not a text file to scan."""
    size = path.stat().st_size
    if size > max_bytes:
        print(f"gptbigcode-lsp scan: {path}: skipped, {size} bytes (--max-bytes {max_bytes})",
              file=sys.stderr)
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        print(f"gptbigcode-lsp scan: {path}: skipped, not UTF-8", file=sys.stderr)
        return None


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters; lines end as LSP counts them) of an offset."""
    line, column = offset_to_position(text, offset, "utf-32")
    return line + 1, column + 1


def finding_json(path: Path, text: str, f: Finding) -> str:
    line, column = line_column(text, f.start)
    end_line, end_column = line_column(text, f.end)
    return json.dumps({
        "path": str(path), "line": line, "column": column, "endLine": end_line,
        "endColumn": end_column, "start": f.start, "end": f.end, "label": f.label,
        "code": f.code, "score": round(f.score, 4),
    })


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 nothing found, 1 findings, 2 a usage error or a file that could not be
    read. Folders are walked, skipping version-control, virtual-environment and dependency
    folders; binary, non-UTF-8 and files over --max-bytes are skipped (with a note on stderr)."""
    args = build_parser().parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print("gptbigcode-lsp scan: --threshold must be in [0, 1]", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"gptbigcode-lsp scan: no such file or folder: {', '.join(missing)}",
              file=sys.stderr)
        return 2
    if args.threads is not None:
        set_threads(max(args.threads, 1))
    try:
        diagnoser = Diagnoser.load(args.model)
    except Exception as error:
        print(f"gptbigcode-lsp scan: could not load diagnostics model {args.model!r}: {error}",
              file=sys.stderr)
        return 2
    options = DiagnosticsOptions(
        bugs=args.bugs, personal_data=not args.no_personal_data,
        secret_threshold=args.threshold, personal_data_threshold=args.threshold,
        bug_threshold=args.threshold, max_chars=args.max_bytes,
    )
    found = unreadable = 0
    for path in iter_files(args.paths):
        try:
            text = read_text(path, args.max_bytes)
        except OSError as error:
            print(f"gptbigcode-lsp scan: {path}: {error.strerror or error}", file=sys.stderr)
            unreadable += 1
            continue
        if text is None:
            continue
        key = str(path.resolve())
        findings = diagnoser.findings(key, text, language_of(path), options) or []
        diagnoser.forget(key)
        for f in findings:
            print(finding_json(path, text, f))
        found += len(findings)
    sys.stdout.flush()
    return 2 if unreadable else 1 if found else 0
