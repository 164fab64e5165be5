"""The packaged diagnostics model (model/default/diagnostics): it loads in this package and in
transformers, finds unmistakable secrets and personal data exactly, stays quiet on the hard
negatives, gives the same findings incrementally as in one pass, and fits the size limit."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from cache.scanner import DocumentScanner
from model.checkpoint import DEFAULT_MODEL_DIR
from model.heads import DIAGNOSTICS_DIR, DiagnosticsModel, find_entities, load_tokenizer
from model.tagging import decode_entities
from model.tokenizer import Tokenizer
from model.train.data import SourceFile
from model.train.secrets_data import generate

PACKAGE_LIMIT = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def model() -> DiagnosticsModel:
    return DiagnosticsModel.from_pretrained(DIAGNOSTICS_DIR)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer(DIAGNOSTICS_DIR)


def found(model: DiagnosticsModel, tok: Tokenizer, text: str) -> list[tuple[str, str]]:
    return [(text[e.start : e.end], e.label) for e in find_entities(model, tok, text)]


def test_the_packaged_folder_fits_the_size_limit() -> None:
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert total <= PACKAGE_LIMIT, f"model/default holds {total / 2**20:.1f} MB"


def test_settings_carry_calibrated_thresholds(model: DiagnosticsModel) -> None:
    limits = model.settings.thresholds
    assert set(limits) >= {"KEY", "PASSWORD", "EMAIL", "IP_ADDRESS", "BUG"}
    assert all(0.0 < v < 1.0 for v in limits.values()), limits
    assert model.settings.training["steps"] > 0


@pytest.mark.parametrize("text, value, label", [
    ('import boto3\n\nACCESS_KEY = "AKIAQ3EGRT7ZPWXLMN4K"\n', "AKIAQ3EGRT7ZPWXLMN4K", "KEY"),
    ('headers = {"Authorization": "token ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"}\n',
     "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2", "KEY"),
    ('DB_HOST = "db.internal"\ndb_password = "Tr0ub4dor&3xyz"\n', "Tr0ub4dor&3xyz", "PASSWORD"),
    ('__author__ = "Maria Keller <maria.keller@gmail.com>"\n', "maria.keller@gmail.com", "EMAIL"),
    ('allowed = ["52.14.203.77", "18.202.4.31"]\n', "52.14.203.77", "IP_ADDRESS"),
])
def test_unmistakable_values_are_found_exactly(model: DiagnosticsModel, tok: Tokenizer,
                                               text: str, value: str, label: str) -> None:
    assert (value, label) in found(model, tok, text)


@pytest.mark.parametrize("text", [
    'API_KEY = os.environ["API_KEY"]\n',
    'token = os.getenv("GITHUB_TOKEN")\n',
    'password = ""\n',
    'SECRET = "<your-secret-here>"\n',
    'api_key = "YOUR_API_KEY"\n',
    'sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"\n',
    'commit = "9fceb02d0ae598e95dc970b74767f19372d61af8"\n',
    'request_id = "123e4567-e89b-12d3-a456-426614174000"\n',
    'HOST = "127.0.0.1"\nDNS = "8.8.8.8"\nLAN = "192.168.1.20"\n',
    '__version__ = "1.2.3.4"\n',
    'CONTACT = "someone@example.com"\n',
    "def add(a, b):\n    return a + b\n",
])
def test_hard_negatives_stay_quiet(model: DiagnosticsModel, tok: Tokenizer, text: str) -> None:
    assert found(model, tok, text) == []


def test_generated_negative_documents_rarely_raise_anything(
    model: DiagnosticsModel, tok: Tokenizer
) -> None:
    hosts = [SourceFile("textwrap.py", Path(random.__file__).with_name("textwrap.py")
                        .read_text(encoding="utf-8"))]
    negatives = [s for s in generate(7, 120, hosts, split="eval") if not s.spans]
    noisy = [s for s in negatives if find_entities(model, tok, s.text)]
    assert len(negatives) >= 40
    assert len(noisy) <= 0.1 * len(negatives), [s.formats for s in noisy]


def test_incremental_findings_equal_a_full_pass(model: DiagnosticsModel, tok: Tokenizer) -> None:
    text = Path(random.__file__).with_name("textwrap.py").read_text(encoding="utf-8")[:6000]
    secret = '\nGITHUB_TOKEN = "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"\n'
    scanner = DocumentScanner(model)
    rng = random.Random(3)
    for step in range(8):
        at = rng.randrange(len(text))
        text = text[:at] + (secret if step % 2 == 0 else "x") + text[at:]
        ids, offsets = tok.encode_with_offsets(text, as_text=True)
        scan = scanner.scan("file:///doc.py", ids)
        full = find_entities(model, tok, text)
        limits = model.settings.thresholds
        assert decode_entities(text, offsets, scan.probs, model.labels, limits) == full
    assert scan.reused > 0


def test_transformers_reads_the_packaged_folder_as_both_classes(model: DiagnosticsModel) -> None:
    transformers = pytest.importorskip("transformers")
    ids = torch.tensor([[17, 300, 5, 901, 44, 2048, 7]])
    with torch.no_grad():
        ours_hidden = model.hidden(ids)
        tagger = transformers.GPTBigCodeForTokenClassification.from_pretrained(DIAGNOSTICS_DIR)
        scorer = transformers.GPTBigCodeForSequenceClassification.from_pretrained(
            DIAGNOSTICS_DIR, num_labels=2)
        torch.testing.assert_close(tagger.eval()(ids).logits.float(),
                                   model.tag_logits(ours_hidden), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(scorer.eval()(ids).logits.float(),
                                   model.bug_logits(ours_hidden[:, -1]), rtol=1e-4, atol=1e-4)
