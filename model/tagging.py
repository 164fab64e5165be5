"""BIO tags over tokens (StarPII's label scheme): training targets from character spans, and
the tagger's per-token probabilities decoded back into the values they mark, less the values
that are never live credentials."""

from __future__ import annotations

import ipaddress
import keyword
import re
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

ENTITY_TYPES = ("KEY", "PASSWORD", "EMAIL", "IP_ADDRESS", "USERNAME")

Offsets = Sequence[tuple[int, int]]

# Characters that end a value in source text: whitespace, quotes, brackets, separators.
_WHITESPACE = frozenset(" \t\r\n")
_STOPS = _WHITESPACE | frozenset("\"'`,;()[]{}<>")
_TRAILING_ASSIGNMENT = re.compile(r"\s+[:=]+\s*\Z")  # `API_KEY =` before the value
# Per type, characters that additionally separate the value from its surroundings.
_TYPE_STOPS = {
    "KEY": frozenset(":"),
    "PASSWORD": frozenset(":@/"),
    "USERNAME": frozenset(":@/"),
    "EMAIL": frozenset(":/"),
    "IP_ADDRESS": frozenset("/@="),
}
_LEADING_TRIM = frozenset("=:@/")
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MIN_CHARS = {"KEY": 8, "PASSWORD": 3, "USERNAME": 2, "EMAIL": 6, "IP_ADDRESS": 3}
SECRET_TYPES = frozenset({"KEY", "PASSWORD", "USERNAME"})
# Lines away from a KEY or PASSWORD within which a USERNAME is reported: a user name is only a
# secret beside a credential (StarPII's labelling; the training data's too).
USERNAME_REACH = 2


def bio_labels(types: Sequence[str] = ENTITY_TYPES) -> list[str]:
    """["O", "B-KEY", "I-KEY", ...]: the id order of the classifier's outputs."""
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in "BI"]


@dataclass(frozen=True)
class Entity:
    """A tagged value: characters [start, end) of the text, its type and mean probability."""

    start: int
    end: int
    label: str
    score: float


def token_tags(
    offsets: Offsets, spans: Sequence[tuple[int, int, str]], labels: Sequence[str]
) -> list[int]:
    """Training targets: B for the token holding a span's first character, I for the other
    tokens overlapping it, O elsewhere. Unknown span types raise ValueError."""
    index = {name: i for i, name in enumerate(labels)}
    tags = [0] * len(offsets)
    for start, end, kind in spans:
        if f"B-{kind}" not in index:
            raise ValueError(f"span type {kind!r} is not one of the labels {list(labels)}")
        first = True
        for t, (a, b) in enumerate(offsets):
            if b > start and a < end and tags[t] == 0:
                tags[t] = index[f"{'B' if first else 'I'}-{kind}"]
                first = False
    return tags


def type_probabilities(
    probs: torch.Tensor, labels: Sequence[str]
) -> tuple[torch.Tensor, list[str]]:
    """(T, 1 + types) probabilities: O, then B + I of each type; and the type names."""
    kinds = list(dict.fromkeys(name[2:] for name in labels if name != "O"))
    labels = list(labels)
    columns = [probs[:, labels.index("O")]]
    for kind in kinds:
        columns.append(probs[:, labels.index(f"B-{kind}")] + probs[:, labels.index(f"I-{kind}")])
    return torch.stack(columns, dim=1), kinds


def decode_entities(
    text: str,
    offsets: Offsets,
    probs: torch.Tensor,
    labels: Sequence[str],
    thresholds: Mapping[str, float] | float = 0.5,
) -> list[Entity]:
    """Spans of `text` from per-token label probabilities (T, len(labels)), sorted and
    disjoint. With a causal backbone a token's tag is decided from the text up to it, so a
    value's first tokens are the least certain: each run of tokens whose most likely type is
    the same entity type is cut at quotes, brackets and separators (a value never holds them;
    whitespace may, as in a PEM block), extended over the characters that can belong to the
    value, and joined with fragments of the same value. A value is kept when the mean
    probability of all its tokens reaches the type's threshold (a number applies to all
    types); an IP_ADDRESS value only when it is a public address, as the tagger was taught."""
    if probs.shape != (len(offsets), len(labels)):
        raise ValueError(
            f"probabilities of shape {tuple(probs.shape)} do not match {len(offsets)} tokens "
            f"x {len(labels)} labels"
        )
    grouped, kinds = type_probabilities(probs.float(), labels)
    candidates = join_fragments(text, candidate_spans(text, offsets, grouped, kinds))
    starts = [a for a, _ in offsets]
    scored: list[Entity] = []
    for start, end, label in candidates:
        if label == "IP_ADDRESS" and not public_address(text[start:end]):
            continue
        first = max(0, bisect_right(starts, start) - 1)
        last = bisect_left(starts, end)
        covered = [i for i in range(first, last) if offsets[i][1] > start]
        score = float(grouped[covered, kinds.index(label) + 1].mean()) if covered else 0.0
        limit = (thresholds if isinstance(thresholds, int | float)
                 else thresholds.get(label, 0.5))
        if score >= limit:
            scored.append(Entity(start, end, label, score))
    entities: list[Entity] = []
    for e in whole_key_blocks(text, credible(text, scored)):
        if entities and entities[-1].end > e.start:  # two types claim the same characters
            if entities[-1].score >= e.score:
                continue
            entities.pop()
        entities.append(e)
    return entities


_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
                  re.DOTALL)


def whole_key_blocks(text: str, entities: list[Entity]) -> list[Entity]:
    """KEY values inside a private key block made one value, the whole block (as the tagger was
    taught to mark it), scored by the best of them; sorted by start."""
    if "PRIVATE KEY-----" not in text:
        return entities
    out = list(entities)
    for block in _PEM.finditer(text):
        inside = [e for e in out if e.label == "KEY" and block.start() <= e.start < block.end()]
        if inside:
            out = [e for e in out if e not in inside]
            out.append(Entity(block.start(), block.end(), "KEY", max(e.score for e in inside)))
    return sorted(out, key=lambda e: (e.start, e.end))


def credible(text: str, entities: list[Entity]) -> list[Entity]:
    """`entities` less the secrets that are never live credentials (never_a_credential), the
    published contacts of package metadata, and the user names with no credential beside them
    (none found within USERNAME_REACH lines, nothing on their line that asks for one)."""
    kept = [e for e in entities
            if not (e.label in SECRET_TYPES and never_a_credential(text, e.start, e.end, e.label)
                    or e.label == "EMAIL" and published_contact(text, e.start))]
    credentials = [text.count("\n", 0, e.start) for e in kept if e.label in ("KEY", "PASSWORD")]
    return [e for e in kept if e.label != "USERNAME" or _PASSWORD_CUE.search(line_of(text, e.start))
            or any(abs(text.count("\n", 0, e.start) - line) <= USERNAME_REACH
                   for line in credentials)]


def line_of(text: str, offset: int) -> str:
    end = text.find("\n", offset)
    return text[text.rfind("\n", 0, offset) + 1 : len(text) if end < 0 else end]


# -- values that are never credentials --------------------------------------------------------

_VERSION = re.compile(r"v?\d+(?:\.\d+)+(?:[-.+]?[A-Za-z0-9]+)*")
_HEX = re.compile(r"(?:sha\d*[:-]|md5[:-])?[0-9a-fA-F]{32,}")
_HASH_CONTEXT = re.compile(r"(?i)hash|sha\d|md5|checksum|digest|integrity|commit|\brev\b|"
                           r"revision|etag|fingerprint|blake|crc")
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_NAME_PART = re.compile(r"[A-Za-z]+[0-9]{0,3}|[0-9]{1,4}")
_CONSONANTS = re.compile(r"(?i)[bcdfghjklmnpqrstvwxz]{5}")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-/ ]+")
LONGEST_WORD = 20
_NOT_SECRETS = frozenset({"self", "cls", "none", "true", "false", "null", "undefined", "nil"})
_URL_USERINFO = re.compile(r"://[^/@\s]*@")
# What a password stands beside on its line (or the one before): a name or flag that asks for
# one, or a URL's user name.
_PASSWORD_CUE = re.compile(r"(?i)pass|pwd|\bpw\b|secret|auth|login|cred|token|key|sign|\s-[pu]\b|"
                           r"://[^/@\s:]*:")


def word_shaped(value: str) -> bool:
    """Whether a value reads as a name or words, not random characters: identifiers, header and
    constant names, dotted and slashed paths (`X-Xet-Access-Token`, `nn.Module`, `FUNC_COT`,
    `docs/api/auth.html`). Each part between separators is letters with at most a short number
    after them (`sha256`, `http2`); split at case changes, the letters are mostly words of three
    or more letters, none longer than a word, none a run of five consonants."""
    if not _NAME_CHARS.fullmatch(value):
        return False
    parts = [p for p in re.split(r"[_.\-/ ]+", value) if p]
    if not parts or not all(_NAME_PART.fullmatch(p) for p in parts):
        return False
    words = [w for p in parts for w in _WORD.findall(p)]
    if not words or any(len(w) > LONGEST_WORD or _CONSONANTS.search(w) for w in words):
        return False
    return sum(1 for w in words if len(w) <= 2) <= max(1, len(words) // 4)


# A package's published authors and maintainers: core metadata headers (PKG-INFO, METADATA)
# and pyproject.toml's {name = ..., email = ...} tables.
# Where a package publishes its authors' and maintainers' addresses: core metadata's
# Author-email / Maintainer-email, setup()'s author_email / maintainer_email (and constants
# named so), pyproject.toml's inline {name = ..., email = ...} tables.
_PUBLISHED_CONTACT = re.compile(
    r"(?:Author|Maintainer)-email:|\{\s*name\s*=\s*[\"'][^\"'\n]*[\"']\s*,\s*email\s*="
    r"|\b(?:author|maintainer)_email\b\s*[=:]", re.IGNORECASE)
_METADATA_FILE = re.compile(r"Metadata-Version: \d")  # PKG-INFO, METADATA: all of it published
_EMAIL_KEY = re.compile(r"\s*email\s*=")
_AUTHORS_TABLE = re.compile(r"\s*\[\[?\s*project\.(?:authors|maintainers)\s*\]\]?\s*$")


def published_contact(text: str, offset: int) -> bool:
    """Whether the address at offset is a package's published contact (its metadata's author or
    maintainer, anywhere in a core metadata file): put there to be read, not personal data
    leaked into the code."""
    if _METADATA_FILE.match(text):
        return True
    line_start = text.rfind("\n", 0, offset) + 1
    if _PUBLISHED_CONTACT.match(text, line_start) is not None or _PUBLISHED_CONTACT.search(
            text[line_start:offset]):
        return True
    if _EMAIL_KEY.match(text, line_start):  # `email = ...` under [[project.authors]]
        for line in reversed(text[max(0, line_start - 2000) : line_start].splitlines()):
            if line.lstrip().startswith("["):
                return _AUTHORS_TABLE.match(line) is not None
    return False


def in_public_block(text: str, offset: int) -> bool:
    """Whether offset lies in a PEM block that holds no secret (a certificate, a public key)."""
    begin = text.rfind("-----BEGIN ", 0, offset + 11)
    if begin < 0 or text.rfind("-----END ", begin, offset) >= 0:
        return False
    kind = text[begin + 11 : text.find("-----", begin + 11)]
    return "PRIVATE" not in kind and "-----" in text[begin + 11 : begin + 80]


def surrounding_word(text: str, start: int, end: int) -> str:
    """The characters around [start, end) up to whitespace, quotes and brackets."""
    stops = _STOPS - {":", ";", ","}
    while start > 0 and text[start - 1] not in stops:
        start -= 1
    while end < len(text) and text[end] not in stops:
        end += 1
    return text[start:end]


def never_a_credential(text: str, start: int, end: int, label: str) -> str | None:
    """Why the value at [start, end), flagged as a secret of type `label`, is never a live
    credential (None when it may be one): a keyword; a version string; a URL without
    credentials in it (or, for a password or user name, a piece of one); a password with
    nothing on its line or the one before that asks for one (prose); a hex digest beside a
    hash's name; a KEY in a certificate or public key block, or one that reads as a name."""
    value = text[start:end]
    line_start = text.rfind("\n", 0, start) + 1
    line = line_of(text, start)
    if keyword.iskeyword(value) or value.lower() in _NOT_SECRETS:
        return "keyword"
    if _VERSION.fullmatch(value):
        return "version"
    if ("://" in value or value.startswith(("www.", "//"))) and "@" not in value:
        return "url"
    word = surrounding_word(text, start, end)
    if label != "KEY" and "://" in word and not _URL_USERINFO.search(word):
        return "url"  # a password or user name only sits in a URL before its "@"
    if label == "PASSWORD":
        before = text[text.rfind("\n", 0, max(0, line_start - 1)) + 1 : start]
        if not _PASSWORD_CUE.search(before):
            return "no cue"
    if _HEX.fullmatch(value) and _HASH_CONTEXT.search(line):
        return "digest"
    if label == "KEY" and in_public_block(text, start):
        return "public"
    if label == "KEY" and word_shaped(value):
        return "name"
    if _UUID.fullmatch(value) and names_an_identifier(text[line_start:start]):
        return "identifier"
    return None


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# The name a value is given on its line: `name = "`, `"name": "`, `name: '`, `name=["`.
_GIVEN_TO = re.compile(
    r"""([A-Za-z_][A-Za-z0-9_\-]*)["']?\s*[:=]\s*[\[(]?\s*[rbuRBU]?["']?\s*\Z""")
_IDENTIFIER_WORDS = frozenset({"id", "ids", "uuid", "guid"})
_CREDENTIAL_WORDS = re.compile(r"(?i)key|token|secret|pass|pwd|auth|cred|sign|private")


def names_an_identifier(before: str) -> bool:
    """Whether the text before a value on its line gives it to a name of an identifier
    (`request_id`, `traceId`, `tenant-uuid`) that asks for no credential: a UUID there is a
    record's id, not a key (an Azure client id, a request id). A UUID given to a key's name
    (`HEROKU_API_KEY`) is still judged by the tagger."""
    given = _GIVEN_TO.search(before)
    if given is None or _CREDENTIAL_WORDS.search(given.group(1)):
        return False
    words = [w.lower() for w in _WORD.findall(given.group(1))]
    return bool(words) and words[-1] in _IDENTIFIER_WORDS


def candidate_spans(text: str, offsets: Offsets, grouped: torch.Tensor, kinds: list[str]
                    ) -> list[tuple[int, int, str]]:
    """Value spans of the runs of tokens whose most likely type is an entity type."""
    best = grouped.argmax(dim=1).tolist()
    spans: list[tuple[int, int, str]] = []
    t = 0
    while t < len(best):
        if best[t] == 0:
            t += 1
            continue
        kind, run_start = best[t], t
        while t < len(best) and best[t] == kind:
            t += 1
        label = kinds[kind - 1]
        for start, end in pieces(text, offsets[run_start][0], offsets[t - 1][1], label):
            span = value_span(text, start, end, label, spans[-1][1] if spans else 0)
            if span is not None:
                spans.append((*span, label))
    return spans


def join_fragments(text: str, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """One span for neighbours of a type with nothing between them that separates values of
    that type (a password the tagger split at an `=` it holds, a key split mid-way)."""
    joined: list[tuple[int, int, str]] = []
    for start, end, label in spans:
        if joined and joined[-1][2] == label:
            stops = _STOPS | _TYPE_STOPS.get(label, frozenset())
            if not any(c in stops for c in text[joined[-1][1] : start]):
                joined[-1] = (joined[-1][0], max(end, joined[-1][1]), label)
                continue
        joined.append((start, end, label))
    return joined


def pieces(text: str, start: int, end: int, label: str) -> list[tuple[int, int]]:
    """[start, end) cut at the characters no value of the type holds (whitespace excepted),
    and at an `=` with more value after it (`NAME=value`; base64 padding stays)."""
    hard = (_STOPS - _WHITESPACE) | _TYPE_STOPS.get(label, frozenset())
    out, piece_start = [], start
    for i in range(start, end + 1):
        assigns = (i + 1 < end and text[i] == "=" and text[i + 1] != "="
                   and text[i + 1] not in _STOPS)
        if i == end or text[i] in hard or assigns:
            if i > piece_start:
                out.append((piece_start, i))
            piece_start = i + 1
    return out


def value_span(
    text: str, start: int, end: int, label: str, floor: int = 0
) -> tuple[int, int] | None:
    """Tidy a piece's characters into the value: trim separators and quotes the tokens carried
    at its edges (and a trailing ` =` of an assignment), extend it over value characters on
    both sides (back no further than `floor`), require a minimum length."""
    stops = _STOPS | _TYPE_STOPS.get(label, frozenset())
    start = max(start, floor)
    while start < end and (text[start] in stops or text[start] in _LEADING_TRIM):
        start += 1
    while end > start and text[end - 1] in stops:
        end -= 1
    assignment = _TRAILING_ASSIGNMENT.search(text, start, end)
    if assignment is not None:
        end = assignment.start()
    if start >= end:
        return None
    back_stops = stops | (_LEADING_TRIM - {"@"} if label == "EMAIL" else _LEADING_TRIM)
    while start > floor and text[start - 1] not in back_stops:
        start -= 1
    while end < len(text) and text[end] not in stops:
        end += 1
    if end - start < _MIN_CHARS.get(label, 1):
        return None
    if label == "EMAIL" and not _ADDRESS.fullmatch(text[start:end]):
        return None  # no domain: a handle (@name) or a fragment
    return start, end


# Public resolvers everyone configures: a service's address, no person's.
WELL_KNOWN_RESOLVERS = frozenset({"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9",
                                  "208.67.222.222", "208.67.220.220", "2001:4860:4860::8888",
                                  "2001:4860:4860::8844", "2606:4700:4700::1111"})


def public_address(value: str) -> bool:
    """Whether a value tagged IP_ADDRESS is one: a globally routable address (with an optional
    port) other than a well-known public resolver. The training data labels only those
    (private, loopback, link-local, reserved and documentation ranges, and the resolvers
    everyone configures, are no personal data), and a fragment such as a port number is not an
    address at all."""
    host = value
    if host.startswith("[") and "]" in host:  # [2001:db8::1]:443
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:  # 203.0.113.7:8080
        host = host.split(":", 1)[0]
    if "%" in host:  # a zone: only meaningful for a link-local address
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_global and str(address) not in WELL_KNOWN_RESOLVERS
