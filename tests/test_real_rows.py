"""Tagger rows cut from released code (model/train/real_rows.py), on standard-library modules
of the running interpreter: negatives target nothing but leave possible credentials untaught,
planted positives hold their whole value at varied window positions, calibration stretches
know their truth."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from model.heads import bio_labels
from model.tokenizer import Tokenizer
from model.train.real_rows import (
    IGNORE,
    negative_rows,
    planted_rows,
    planted_samples,
    uncertain_spans,
)
from model.train.realcode import RealFile

STDLIB = Path(sysconfig.get_paths()["stdlib"])
LABELS = bio_labels()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(Path(__file__).parents[1] / "model" / "default")


@pytest.fixture(scope="module")
def files() -> list[RealFile]:
    names = ("textwrap.py", "smtplib.py", "ftplib.py", "netrc.py", "csv.py")
    return [RealFile("cpython", name, "python", (STDLIB / name).read_text(encoding="utf-8"))
            for name in names]


@pytest.mark.parametrize("text, flagged", [
    ('    password = "hunter2"\n', 'password = "hunter2"'),
    ("conn.login(user, 'x')  # mail the.admin+ops@example.co.uk\n", "the.admin+ops@example.co.uk"),
    ("HOST = '192.168.10.4'\n", "192.168.10.4"),
    ('{"api_key": "abc123"}', '"api_key": "abc123"'),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
     "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----"),
])
def test_possible_credentials_are_marked_uncertain(text: str, flagged: str) -> None:
    assert [text[a:b] for a, b in uncertain_spans(text)] == [flagged]


@pytest.mark.parametrize("text", [
    "version = '1.2.3.4.5'\n", "def password_prompt(prompt):\n", "token = next(tokens)\n",
    'HEADER = "X-Access-Token"\n', "digest = hashlib.sha256(data).hexdigest()\n",
])
def test_ordinary_code_is_not_uncertain(text: str) -> None:
    assert uncertain_spans(text) == []


def test_negatives_target_nothing_and_skip_uncertain_text(tok: Tokenizer,
                                                          files: list[RealFile]) -> None:
    rows = negative_rows(files, tok, LABELS, 256, 60, seed=3)
    assert 40 <= len(rows) <= 80
    assert all(1 <= len(r.ids) <= 256 and len(r.ids) == len(r.tags) for r in rows)
    assert {t for r in rows for t in r.tags} <= {0, IGNORE}
    smtp = next(f for f in files if f.path == "smtplib.py")
    ignored = [r for r in negative_rows([smtp], tok, LABELS, 10**6, 1, seed=3)][0]
    text = tok.decode([i for i, t in zip(ignored.ids, ignored.tags, strict=True) if t == IGNORE])
    assert "@" in text  # the module's e-mail addresses are left out of the targets


def test_planted_rows_hold_the_whole_value_at_varied_positions(tok: Tokenizer,
                                                               files: list[RealFile]) -> None:
    rows = planted_rows(files, tok, LABELS, 256, 48, seed=5)
    assert len(rows) == 48
    firsts = []
    for r in rows:
        assert len(r.ids) <= 256 and len(r.ids) == len(r.tags)
        begins = [i for i, t in enumerate(r.tags) if t >= 0 and LABELS[t].startswith("B-")]
        assert begins, "every planted window holds a value's first token"
        firsts.append(begins[0])
        kinds = {LABELS[t][2:] for t in r.tags if t > 0}
        assert kinds <= {"KEY", "PASSWORD"}
    assert min(firsts) < 64 and max(firsts) > 160  # values near the start and near the end


def test_calibration_stretches_know_their_truth(files: list[RealFile]) -> None:
    samples = planted_samples(files, 10, seed=7)
    assert len(samples) == 10
    planted = [s for s in samples if s.spans]
    assert len(planted) == 5 and all(len(s.spans) == 2 for s in planted)
    for s in planted:
        for span in s.spans:
            value = s.text[span.start:span.end]
            assert value.strip() and "\n" not in value.strip() or "PRIVATE KEY" in value
    assert all(not uncertain_spans(s.text) for s in samples if not s.spans)


def test_no_file_to_plant_into_is_a_clear_error(tok: Tokenizer) -> None:
    short = [RealFile("p", "a.py", "python", "x = 1\n" * 10),
             RealFile("p", "b.toml", "config", "[tool]\n" * 500)]
    with pytest.raises(ValueError, match="no Python file of 80\\+ lines"):
        planted_rows(short, tok, LABELS, 256, 4, seed=1)
    with pytest.raises(ValueError, match="no Python file of 80\\+ lines"):
        planted_samples(short, 4, seed=1)
