"""The packaged diagnostics model over long real files, window by window: released code with no
secret in it gives no finding where windows meet, and a credential is found wherever it falls
in a window (its first tokens, the window edges, where ownership passes, the middle, the end).

The real text is the standard library of the running interpreter (released code, read from the
installation, never downloaded)."""

from __future__ import annotations

import sysconfig
from bisect import bisect_left
from pathlib import Path

import pytest

from cache.scanner import DocumentScanner
from model.heads import DIAGNOSTICS_DIR, DiagnosticsModel, find_entities, load_tokenizer, windows
from model.tagging import decode_entities
from model.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CLEAN_FILE = "dataclasses.py"  # 1,500 lines, no addresses, keys or passwords in it


@pytest.fixture(scope="module")
def model() -> DiagnosticsModel:
    return DiagnosticsModel.from_pretrained(DIAGNOSTICS_DIR)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer(DIAGNOSTICS_DIR)


def real_text(lines: int | None = None) -> str:
    text = (STDLIB / CLEAN_FILE).read_text(encoding="utf-8")
    return text if lines is None else "\n".join(text.split("\n")[:lines]) + "\n"


@pytest.mark.slow
def test_a_long_real_file_without_secrets_has_no_finding(model: DiagnosticsModel,
                                                          tok: Tokenizer) -> None:
    text = real_text()
    ids = tok.encode_text(text)
    plan = windows(len(ids), model.tag_window)
    assert len(plan) > 20, "the file spans many windows"
    found = find_entities(model, tok, text)
    assert [(text[e.start : e.end], e.label) for e in found] == []


def test_the_incremental_scanner_agrees_on_a_real_file(model: DiagnosticsModel, tok: Tokenizer
                                                       ) -> None:
    text = real_text(300)
    ids, offsets = tok.encode_with_offsets(text, as_text=True)
    scan = DocumentScanner(model).scan("file:///dataclasses.py", ids)
    assert scan is not None and len(windows(len(ids), model.tag_window)) >= 6
    assert decode_entities(text, offsets, scan.probs, model.labels,
                           model.settings.thresholds) == find_entities(model, tok, text)


CREDENTIALS = [
    ('GITHUB_TOKEN = "', "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2", '"', "KEY"),
    ('AWS_SECRET_ACCESS_KEY = "', "wJalrXUtnFEMI/K7MDENG/bPxRfiCYz9Qm2Lk3Tq", '"', "KEY"),
    ('DATABASE_URL = "postgresql://app:', "Tr0ub4dor-3xyz", '@db.acme.io:5432/app"',
     "PASSWORD"),
]


def planted_at(text: str, tok: Tokenizer, token: int, credential: tuple[str, str, str, str]
               ) -> tuple[str, int, int]:
    """The text with the credential's statement on its own line at the line start nearest to
    `token` (-1: after the last line), and the value's character span."""
    _, offsets = tok.encode_with_offsets(text, as_text=True)
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text)]
    if token < 0:
        at = len(text)
    else:
        target = offsets[min(token, len(offsets) - 1)][0]
        at = min(starts, key=lambda s: abs(s - target))
    head, value, tail, _ = credential
    line_indent = text[at:].split("\n", 1)[0]
    indent = line_indent[: len(line_indent) - len(line_indent.lstrip())]
    statement = f"{indent}{head}{value}{tail}\n"
    start = at + len(indent) + len(head)
    return text[:at] + statement + text[at:], start, start + len(value)


# Token positions in the file, in tagging windows (W tokens, a new one every W/2): the file's
# first tokens; the second window's first token; where ownership passes from the first window to
# the second (3W/4); the first window's last token; the third window's first; deep in the file;
# after the last line.
POSITIONS = {"start": 0.0, "window start": 0.5, "ownership passes": 0.75,
             "window end": 1.0, "next window": 1.5, "deep": 4.3, "end": -1.0}


@pytest.mark.parametrize("where", list(POSITIONS))
def test_a_credential_is_found_wherever_it_falls_in_a_window(model: DiagnosticsModel,
                                                             tok: Tokenizer, where: str) -> None:
    window = model.tag_window
    position = -1 if POSITIONS[where] < 0 else max(2, int(POSITIONS[where] * window) - 1)
    credential = CREDENTIALS[list(POSITIONS).index(where) % len(CREDENTIALS)]
    text, start, end = planted_at(real_text(300), tok, position, credential)
    ids, offsets = tok.encode_with_offsets(text, as_text=True)
    assert len(ids) > 5 * window, "many windows"
    token = bisect_left([a for a, _ in offsets], start)
    if position >= 0:
        assert abs(token - position) < 40, (token, position)
    found = [(text[e.start : e.end], e.label) for e in find_entities(model, tok, text)]
    assert (text[start:end], credential[3]) in found
    assert len(found) <= 2, found  # the value (and, in a URL, its user name); nothing else
