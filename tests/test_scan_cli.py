"""`gptbigcode-lsp scan`: one JSON line per finding in files on disk, exit status 1 when
something is found, 0 when nothing is, 2 for a path that does not exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_client import ROOT
from test_lsp_diagnostics_e2e import AWS_KEY, DOCUMENT


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lsp_server", "scan", "--threads", "1", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scan-repo")
    (root / "settings.py").write_text(DOCUMENT, encoding="utf-8")
    (root / "clean.py").write_text("def add(a, b):\n    return a + b\n", encoding="utf-8")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + AWS_KEY.encode())
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text(f'key = "{AWS_KEY}"\n', encoding="utf-8")
    return root


def test_scan_prints_one_json_line_per_finding_and_exits_1(repo: Path) -> None:
    result = scan(str(repo))
    assert result.returncode == 1, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    key_line = DOCUMENT[: DOCUMENT.index(AWS_KEY)].count("\n") + 1
    key_column = DOCUMENT.split("\n")[key_line - 1].index(AWS_KEY) + 1
    assert {"path": str(repo / "settings.py"), "line": key_line, "column": key_column,
            "endLine": key_line, "endColumn": key_column + len(AWS_KEY),
            "start": DOCUMENT.index(AWS_KEY), "end": DOCUMENT.index(AWS_KEY) + len(AWS_KEY),
            "label": "KEY", "code": "secret/KEY"}.items() <= rows[0].items(), rows
    assert 0.0 <= rows[0]["score"] <= 1.0
    assert all(r["path"] == str(repo / "settings.py") for r in rows)  # .git and binaries skipped
    assert AWS_KEY not in result.stdout + result.stderr


def test_scan_of_clean_files_prints_nothing_and_exits_0(repo: Path) -> None:
    result = scan(str(repo / "clean.py"))
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


def test_scan_of_a_missing_path_exits_2_naming_it(repo: Path) -> None:
    result = scan(str(repo / "nope.py"))
    assert result.returncode == 2
    assert "nope.py" in result.stderr and result.stdout == ""
