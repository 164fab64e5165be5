"""What span decoding drops as never a live credential (names, versions, URLs without
credentials, digests beside a hash's name, certificates, prose passwords, lone user names,
published maintainers' addresses), and what it must keep: every format the tagger is taught."""

from __future__ import annotations

import random

import pytest
import torch

from model.tagging import (
    Entity,
    bio_labels,
    decode_entities,
    names_an_identifier,
    never_a_credential,
    public_address,
    published_contact,
    word_shaped,
)
from model.train import secrets_data

LABELS = bio_labels()


def reason(line: str, value: str, label: str = "KEY") -> str | None:
    start = line.index(value)
    return never_a_credential(line, start, start + len(value), label)


@pytest.mark.parametrize("line, value, label, why", [
    ('XET_HEADER = "X-Xet-Access-Token"', "X-Xet-Access-Token", "KEY", "name"),
    ("class Net(nn.Module):", "nn.Module", "KEY", "name"),
    ("FUNC_COT = 3", "FUNC_COT", "KEY", "name"),
    ("def check(password):", "def", "PASSWORD", "keyword"),
    ('__version__ = "2.32.3"', "2.32.3", "PASSWORD", "version"),
    ('URL = "https://huggingface.co/settings/tokens"', "https://huggingface.co/settings/tokens",
     "KEY", "url"),
    ('assert url == "http://example.com/?z=1&a=1&k=1&d=1"', "1&k=1&d=1", "PASSWORD", "url"),
    ("    --hash=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "KEY", "digest"),
    ("    Endpoints scaled to zero will not be charged.", "charged", "PASSWORD", "no cue"),
    ('request_id = "123e4567-e89b-12d3-a456-426614174000"',
     "123e4567-e89b-12d3-a456-426614174000", "KEY", "identifier"),
    ('    "traceId": "0F8FAD5B-D9CB-469F-A165-70867728950E",',
     "0F8FAD5B-D9CB-469F-A165-70867728950E", "KEY", "identifier"),
    ('client(tenant_uuid="7c9e6679-7425-40de-944b-e07fc1f90ae7")',
     "7c9e6679-7425-40de-944b-e07fc1f90ae7", "KEY", "identifier"),
])
def test_values_that_are_never_credentials(line: str, value: str, label: str, why: str) -> None:
    assert reason(line, value, label) == why


@pytest.mark.parametrize("line, value, label", [
    ('api_key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "KEY"),
    ('url = "postgresql://admin:S3cr3t!pw@db.acme.io/app"', "S3cr3t!pw", "PASSWORD"),
    ('SLACK = "https://hooks.slack.com/services/T0ABCDEF1/B0ABCDEF12/Xq7zLp9kW2abcdEFGH123456"',
     "Xq7zLp9kW2abcdEFGH123456", "KEY"),
    ('smtp.login("ops@acme.io", "dragon")', "dragon", "PASSWORD"),
    ("mysql -u root -p'hunter22' app", "hunter22", "PASSWORD"),
    ('password = "summer"', "summer", "PASSWORD"),
    ('HEROKU_API_KEY = "01234567-89ab-4def-8123-456789abcdef"',
     "01234567-89ab-4def-8123-456789abcdef", "KEY"),
    ('api_key_id = "01234567-89ab-4def-8123-456789abcdef"',
     "01234567-89ab-4def-8123-456789abcdef", "KEY"),
    ('print("01234567-89ab-4def-8123-456789abcdef")', "01234567-89ab-4def-8123-456789abcdef",
     "KEY"),
])
def test_credentials_are_kept(line: str, value: str, label: str) -> None:
    assert reason(line, value, label) is None


def test_no_key_format_the_tagger_is_taught_reads_as_a_name() -> None:
    rng = random.Random(0)
    named = 0
    for make, _ in secrets_data.KEY_FORMATS.values():
        for _ in range(200):
            value = "".join(p.text for p in make(rng) if isinstance(p, secrets_data.Mark))
            named += word_shaped(value)
    assert named <= 5, named  # of 4,200 values


def test_published_maintainers_are_not_personal_data_leaks() -> None:
    assert published_contact("Author-email: Jane <jane@x.io>\n", 22)
    line = 'authors = [{ name = "Jane", email = "jane@x.io" }]'
    assert published_contact(line, line.index("jane@"))
    line = '__author__ = "Jane Doe <jane@x.io>"'
    assert not published_contact(line, line.index("jane@"))


@pytest.mark.parametrize("text", [
    # a core metadata file: its long description's credits are published too
    "Metadata-Version: 2.1\nName: graphs\n\nCredits\n    Ann Smith <ann@lab.gov>\n",
    "[project]\nname = 'graphs'\n\n[[project.authors]]\n"
    "name = 'Ann Smith'\nemail = 'ann@lab.gov'\n",
    "authors = [{ name = 'Ann Smith', email = 'ann@lab.gov' }]\n",
    "AUTHOR_EMAIL = 'ann@lab.gov'\n",
    "setup(name='graphs', author_email='ann@lab.gov')\n",
])
def test_the_forms_of_package_metadata_publish_their_contacts(text: str) -> None:
    assert published_contact(text, text.index("ann@"))


@pytest.mark.parametrize("text", [
    "[tool.contacts]\nname = 'Ann Smith'\nemail = 'ann@lab.gov'\n",  # not the project's authors
    "# Metadata-Version: 2.1 is what we write\nOWNER = 'ann@lab.gov'\n",
    "notify(to='ann@lab.gov')\n",
])
def test_addresses_outside_package_metadata_stay_personal_data(text: str) -> None:
    assert not published_contact(text, text.index("ann@"))


def tagged_as(text: str, offsets: list[tuple[int, int]], tags: list[str]) -> torch.Tensor:
    probs = torch.zeros(len(offsets), len(LABELS))
    for t, tag in enumerate(tags):
        probs[t, LABELS.index(tag)] = 1.0
    return probs


def line_tokens(text: str) -> list[tuple[int, int]]:
    """One token a line (its line break included)."""
    offsets, at = [], 0
    for line in text.splitlines(keepends=True):
        offsets.append((at, at + len(line)))
        at += len(line)
    return offsets


def test_key_lines_of_a_private_key_block_are_one_value_and_certificates_none() -> None:
    body = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", "x9Kq2Zr7pLw3vT8m"]
    key = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END PRIVATE KEY-----"
    cert = key.replace("PRIVATE KEY", "CERTIFICATE")
    text = f"KEY = '''{key}'''\nCERT = '''{cert}'''\n"
    offsets = line_tokens(text)
    tags = ["O", "B-KEY", "B-KEY", "O", "O", "B-KEY", "B-KEY", "O"]
    found = decode_entities(text, offsets, tagged_as(text, offsets, tags), LABELS)
    start = text.index("-----BEGIN PRIVATE")
    assert found == [Entity(start, start + len(key), "KEY", 1.0)]


def decoded(tokens: list[str], tags: list[str]) -> list[tuple[str, str]]:
    text = "".join(tokens)
    offsets, at = [], 0
    for token in tokens:
        offsets.append((at, at + len(token)))
        at += len(token)
    found = decode_entities(text, offsets, tagged_as(text, offsets, tags), LABELS)
    return [(text[e.start : e.end], e.label) for e in found]


def test_a_user_name_is_reported_only_beside_a_credential() -> None:
    tags = ["O", "B-USERNAME", "O", "O", "B-PASSWORD", "O"]
    far = ['user = "', "deploy", '"\n\n\n\nother = 1\n', 'password = "', "Tr0ub4dor-3", '"\n']
    assert decoded(far, tags) == [("Tr0ub4dor-3", "PASSWORD")]  # four lines apart
    near = ['user = "', "deploy", '"\n', 'password = "', "Tr0ub4dor-3", '"\n']
    assert decoded(near, tags) == [("deploy", "USERNAME"), ("Tr0ub4dor-3", "PASSWORD")]


@pytest.mark.parametrize("before, named", [
    ('request_id = "', True), ("    trace_id='", True), ('"correlationId": "', True),
    ("guid: ", True), ('session_key_id = "', False), ('password = "', False),
    ('validate(', False), ('ids = ["', True), ('api_key = "', False),
])
def test_which_names_name_an_identifier(before: str, named: bool) -> None:
    assert names_an_identifier(before) is named


@pytest.mark.parametrize("value, public", [
    ("52.14.203.77", True), ("52.14.203.77:8443", True), ("[2600:1f18::7]:443", True),
    ("8.8.8.8", False), ("1.1.1.1:53", False), ("2001:4860:4860::8888", False),
    ("192.168.1.20", False), ("127.0.0.1", False), ("203.0.113.7", False), ("443", False),
])
def test_only_addresses_of_hosts_people_run_are_personal(value: str, public: bool) -> None:
    assert public_address(value) is public


def test_the_generated_resolvers_are_all_dropped() -> None:
    assert not any(public_address(a) for a in secrets_data.WELL_KNOWN_DNS)
