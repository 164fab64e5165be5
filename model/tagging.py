"""BIO tags over tokens (StarPII's label scheme): training targets from character spans, and
the tagger's per-token probabilities decoded back into the values they mark."""

from __future__ import annotations

import ipaddress
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
_MIN_CHARS = {"KEY": 8, "PASSWORD": 3, "USERNAME": 2, "EMAIL": 6, "IP_ADDRESS": 3}


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
    entities: list[Entity] = []
    for start, end, label in candidates:
        if label == "IP_ADDRESS" and not public_address(text[start:end]):
            continue
        first = max(0, bisect_right(starts, start) - 1)
        last = bisect_left(starts, end)
        covered = [i for i in range(first, last) if offsets[i][1] > start]
        score = float(grouped[covered, kinds.index(label) + 1].mean()) if covered else 0.0
        limit = (thresholds if isinstance(thresholds, int | float)
                 else thresholds.get(label, 0.5))
        if score < limit:
            continue
        if entities and entities[-1].end > start:  # two types claim the same characters
            if entities[-1].score >= score:
                continue
            entities.pop()
        entities.append(Entity(start, end, label, score))
    return entities


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
    if label == "EMAIL" and "@" not in text[start:end]:
        return None
    return start, end


def public_address(value: str) -> bool:
    """Whether a value tagged IP_ADDRESS is one: a globally routable address (with an optional
    port). The training data labels only those (private, loopback, link-local, reserved and
    documentation ranges are no personal data), and a fragment such as a port number is not an
    address at all."""
    host = value
    if host.startswith("[") and "]" in host:  # [2001:db8::1]:443
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:  # 203.0.113.7:8080
        host = host.split(":", 1)[0]
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return False
