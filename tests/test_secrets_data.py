"""The labelled secrets / personal data documents: determinism, held-out formats, exact spans,
hard negatives that stay unlabelled, documents that parse, and the detect-secrets baseline."""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import re
import warnings

import pytest

from model.train.data import SourceFile, read_source, stdlib_root
from model.train.secrets_baseline import flagged_lines, line_scores, line_truth
from model.train.secrets_data import (
    HELD_OUT_FORMATS,
    KEY_FORMATS,
    LABELS,
    WELL_KNOWN_DNS,
    Draw,
    Sample,
    Span,
    assemble,
    aws_access_key,
    generate,
    python_blocks,
)

FLAT_HOST = SourceFile("flat.py", "\n".join(
    ["import os", "import sys", "", "# Module constants."]
    + [f"value_{i} = {i} * 2" if i % 3 else f"print(value_{i - 1})" for i in range(1, 80)]) + "\n")
NESTED_HOST = SourceFile("nested.py", '''class Config:
    """Settings read once."""

    def load(self, path):
        if path:
            data = open(path).read()
        else:
            data = ""
        return data


def main(argv):
    for arg in argv:
        print(arg)
    return 0
''')

POSITIVE_FORMATS = frozenset(KEY_FORMATS) | {
    "password_human", "password_random", "url_credentials", "email", "ipv4", "ipv6", "auth_tuple",
    "cli_credentials"}
HELD_OUT_SURFACES = {
    "twilio_key": re.compile(r"\bSK[0-9a-fA-F]{32}\b"),
    "sendgrid_key": re.compile(r"SG\.[\w-]{22}\.[\w-]{43}"),
    "anthropic_key": re.compile(r"sk-ant-"),
    "azure_storage_key": re.compile(r"AccountKey="),
    "npm_token": re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),
}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


@pytest.fixture(scope="module")
def hosts() -> list[SourceFile]:
    root = stdlib_root()
    real = [read_source(root / name, root) for name in ("colorsys.py", "bisect.py")]
    return [FLAT_HOST, NESTED_HOST, *(f for f in real if f is not None)]


@pytest.fixture(scope="module")
def train(hosts: list[SourceFile]) -> list[Sample]:
    return generate(11, 300, hosts, "train")


@pytest.fixture(scope="module")
def evaluation(hosts: list[SourceFile]) -> list[Sample]:
    return generate(12, 300, hosts, "eval")


def test_same_seed_gives_identical_samples(hosts: list[SourceFile]) -> None:
    assert generate(5, 40, hosts) == generate(5, 40, hosts)


def test_different_seeds_give_different_samples(hosts: list[SourceFile]) -> None:
    first, second = generate(5, 40, hosts), generate(6, 40, hosts)
    assert sum(a.text != b.text for a, b in zip(first, second, strict=True)) > 30


def test_unknown_split_is_refused(hosts: list[SourceFile]) -> None:
    with pytest.raises(ValueError, match="split"):
        generate(0, 1, hosts, "test")


def test_train_split_never_uses_held_out_formats(train: list[Sample]) -> None:
    for sample in train:
        assert not HELD_OUT_FORMATS & set(sample.formats), sample.formats
        assert sample.language != "toml"
        for fmt, surface in HELD_OUT_SURFACES.items():
            assert not surface.search(sample.text), (fmt, sample.text)


def test_eval_split_builds_a_third_of_positives_on_held_out_formats(
        evaluation: list[Sample]) -> None:
    positives = [s for s in evaluation if s.spans]
    held_out = [s for s in positives if HELD_OUT_FORMATS & set(s.formats)]
    assert len(held_out) >= 0.3 * len(positives)
    used = {f for s in held_out for f in s.formats} & HELD_OUT_FORMATS
    assert used == HELD_OUT_FORMATS


def test_sample_mix_has_positives_negatives_and_plain_host_code(train: list[Sample]) -> None:
    positives = sum(bool(s.spans) for s in train)
    plain = sum(s.formats == ("host_plain",) for s in train)
    assert 0.35 * len(train) < positives < 0.55 * len(train)
    assert 0.08 * len(train) < plain < 0.22 * len(train)
    assert {s.language for s in train} >= {"python", "yaml", "json", "dotenv", "shellscript",
                                           "javascript", "ini", "dockerfile"}


def test_spans_are_exact_unquoted_sorted_and_disjoint(train: list[Sample],
                                                      evaluation: list[Sample]) -> None:
    for sample in train + evaluation:
        end = 0
        for span in sample.spans:
            value = sample.text[span.start:span.end]
            assert span.label in LABELS
            assert end <= span.start < span.end <= len(sample.text)
            assert value == value.strip() and value[0] not in "\"'`" and value[-1] not in "\"'`"
            end = span.end


def test_only_samples_with_positive_formats_carry_spans(train: list[Sample]) -> None:
    for sample in train:
        assert bool(sample.spans) == bool(POSITIVE_FORMATS & set(sample.formats)), sample.formats


def test_labelled_ips_are_public_and_unlabelled_ones_are_not(train: list[Sample],
                                                              evaluation: list[Sample]) -> None:
    for sample in train + evaluation:
        labelled = [sample.text[s.start:s.end] for s in sample.spans if s.label == "IP_ADDRESS"]
        for text in labelled:
            assert ipaddress.ip_address(text).is_global and text not in WELL_KNOWN_DNS, text
        for line in sample.text.split("\n"):
            if "version" in line.lower():
                continue  # "1.2.3.4" as a version is a negative by context
            for found in IPV4.findall(line):
                ip = ipaddress.ip_address(found)
                assert found in labelled or not ip.is_global or found in WELL_KNOWN_DNS, line


def test_unlabelled_addresses_use_example_domains(train: list[Sample]) -> None:
    for sample in train:
        labelled = {sample.text[s.start:s.end] for s in sample.spans if s.label == "EMAIL"}
        for address in EMAIL.findall(sample.text):
            domain = address.split("@")[1]
            if address not in labelled and "://" not in sample.text.split(address)[0][-60:]:
                assert domain.startswith("example.") or domain == "test.com", address
        for address in labelled:
            assert not address.split("@")[1].startswith(("example.", "test.com")), address


def test_python_documents_compile_when_their_host_window_does(hosts: list[SourceFile]) -> None:
    host_lines = {line for f in hosts[:2] for line in f.text.split("\n")}
    checked = 0
    for sample in generate(3, 200, hosts[:2]):
        if sample.language != "python" or "python_host" not in sample.formats:
            continue
        window = "\n".join(line for line in sample.text.split("\n") if line in host_lines)
        try:
            compile(window, "window.py", "exec")
        except SyntaxError:
            continue
        compile(sample.text, "sample.py", "exec")
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("positive", [True, False])
def test_inserted_python_snippets_compile_on_their_own(positive: bool) -> None:
    rng = random.Random(7)
    for _ in range(60):
        draw = Draw(rng, tuple(KEY_FORMATS))
        families = [rng.choice(("key", "password", "url", "email", "ip")) for _ in range(2)]
        labelled = 0
        for block in python_blocks(draw, families if positive else [], positive):
            text, spans = assemble(block)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                compile(text, "snippet.py", "exec")
            labelled += len(spans)
        assert (labelled > 0) == positive


def test_json_documents_parse(train: list[Sample], evaluation: list[Sample]) -> None:
    documents = [s for s in train + evaluation if s.language == "json"]
    assert len(documents) >= 10
    for sample in documents:
        json.loads(sample.text)


def test_jwt_headers_decode_to_an_algorithm_header(evaluation: list[Sample]) -> None:
    tokens = [s.text[sp.start:sp.end] for s in evaluation for sp in s.spans
              if s.text[sp.start:sp.end].startswith("eyJ")]
    assert tokens
    for token in tokens:
        header = token.split(".")[0]
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
        assert decoded["typ"] == "JWT" and decoded["alg"] in ("HS256", "RS256", "ES256")


def test_private_key_span_runs_from_begin_to_end_line(evaluation: list[Sample]) -> None:
    keys = [s.text[sp.start:sp.end] for s in evaluation for sp in s.spans
            if "PRIVATE KEY" in s.text[sp.start:sp.end]]
    assert keys
    for key in keys:
        assert key.startswith("-----BEGIN ") and key.endswith("PRIVATE KEY-----")
        assert key.count("-----BEGIN") == 1 and "-----END" in key


def test_line_truth_and_scores_count_lines() -> None:
    text = "a = 1\nkey = 'XYZ'\nb = 2\npw = 'hunter2'\nmail = 'x@y.io'\n"
    spans = tuple(Span(text.index(v), text.index(v) + len(v), label)
                  for v, label in (("XYZ", "KEY"), ("hunter2", "PASSWORD"), ("x@y.io", "EMAIL")))
    sample = Sample(text, spans, "python", ("generic_token",))
    assert line_truth(sample) == {1, 3}
    assert line_truth(sample, ("EMAIL",)) == {4}
    scores = line_scores([{1, 2}], [line_truth(sample)])
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 1)
    assert scores["precision"] == scores["recall"] == scores["f1"] == 0.5


def test_detect_secrets_flags_aws_key_and_ignores_env_lookups() -> None:
    rng = random.Random(1)
    key = aws_access_key(rng)
    keyed = f'import boto3\n\nREGION = "eu-west-1"\nAWS_ACCESS_KEY_ID = "{key}"\n'
    start = keyed.index(key)
    lookups = ('import os\n\nAPI_KEY = os.environ["API_KEY"]\n'
               'DB_PASSWORD = os.getenv("DB_PASSWORD")\n')
    span = Span(start, start + len(key), "KEY")
    samples = [Sample(keyed, (span,), "python", ("aws_access_key",)),
               Sample(lookups, (), "python", ("neg_env_lookup",)),
               Sample('API_KEY=${API_KEY}\nDEBUG=false\n', (), "dotenv", ("neg_env_lookup",))]
    flagged = flagged_lines(samples)
    assert 3 in flagged[0]
    assert flagged[1] == set() and flagged[2] == set()
