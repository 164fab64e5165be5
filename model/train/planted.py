"""Credentials of the common formats planted into long real Python files at random statement
boundaries, with the characters of each planted value: the recall half of the real-code
evaluation (and positives for training on real files)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .realcode import RealFile
from .secrets_data import (
    B64,
    GENERIC_NAMES,
    USERNAMES,
    Draw,
    Mark,
    Piece,
    aws_access_key,
    chars,
    generic_token,
    github_token,
    insertion_points,
    jwt_token,
    openai_key,
    password,
    private_key,
    slack_token,
    stripe_key,
)

MIN_LINES = 2000
MAX_LINES = 5000  # longer files cost more to tag than they add


@dataclass(frozen=True)
class Plant:
    """A planted value: characters [start, end) of the planted text, its label and format."""

    start: int
    end: int
    label: str
    format: str
    line: int  # 0-based line of its first character


@dataclass(frozen=True)
class PlantedFile:
    source: RealFile
    text: str
    plants: tuple[Plant, ...]


def _name(rng: random.Random, words: Sequence[str]) -> str:
    joined = "_".join(words)
    return joined.upper() if rng.random() < 0.5 else joined


def _assign(name: str, value: Mark, quote: str = '"') -> list[Piece]:
    return [f"{name} = {quote}", value, quote]


Statement = Callable[[random.Random], list[Piece]]

STATEMENTS: dict[str, Statement] = {
    "aws_access_key": lambda r: _assign(_name(r, ("aws", "access", "key", "id")),
                                        Mark(aws_access_key(r), "KEY")),
    "aws_secret_key": lambda r: _assign(_name(r, ("aws", "secret", "access", "key")),
                                        Mark(chars(r, B64, 40), "KEY")),
    "github_token": lambda r: ['headers = {"Authorization": "token ',
                               Mark(github_token(r), "KEY"), '"}'],
    "slack_token": lambda r: _assign(_name(r, ("slack", "bot", "token")),
                                     Mark(slack_token(r), "KEY")),
    "stripe_key": lambda r: ['stripe.api_key = "', Mark(stripe_key(r), "KEY"), '"'],
    "openai_key": lambda r: ['client = OpenAI(api_key="', Mark(openai_key(r), "KEY"), '")'],
    "jwt": lambda r: ['session.headers["Authorization"] = "Bearer ', Mark(jwt_token(r), "KEY"),
                      '"'],
    "private_key": lambda r: _assign(_name(r, ("signing", "key")), Mark(private_key(r), "KEY"),
                                     '"""'),
    "generic_key": lambda r: _assign(_name(r, r.choice(GENERIC_NAMES)),
                                     Mark(generic_token(r), "KEY")),
    "password": lambda r: _assign(_name(r, r.choice((("password",), ("db", "password"),
                                                     ("smtp", "password"), ("admin", "pass")))),
                                  Mark(password(Draw(r, ())), "PASSWORD")),
    "connection_string": lambda r: [
        _name(r, ("database", "url")) + ' = "' + r.choice(("postgresql", "mysql", "redis",
                                                            "mongodb")) + "://",
        r.choice(USERNAMES), ":", Mark(password(Draw(r, ()), "-_.~"), "PASSWORD"),
        "@" + r.choice(("db.prod.internal", "10.20.0.5", "cache.acme.io")) + ":5432/app" + '"'],
}
FORMATS = tuple(STATEMENTS)


def long_files(files: Sequence[RealFile], min_lines: int = MIN_LINES,
               max_lines: int = MAX_LINES) -> list[RealFile]:
    """Python files of min_lines to max_lines lines that parse (so statement boundaries are
    known)."""
    return [f for f in files if f.kind == "python"
            and min_lines <= f.text.count("\n") + 1 <= max_lines and insertion_points(f.text)]


def plant(source: RealFile, count: int, formats: Sequence[str], rng: random.Random
          ) -> PlantedFile:
    """`source` with `count` credentials (formats in turn) at distinct random statement
    boundaries, anywhere in the file, each indented to fit."""
    points = insertion_points(source.text)
    chosen = sorted(rng.sample(points, min(count, len(points))))
    lines = source.text.split("\n")
    inserts = {line: (indent, formats[i % len(formats)]) for i, (line, indent) in
               enumerate(chosen)}
    out: list[str] = []
    at = 0
    plants: list[Plant] = []
    for number, line in enumerate(lines):
        if number in inserts:
            indent, fmt = inserts[number]
            out.append(indent)
            at += len(indent)
            for piece in STATEMENTS[fmt](rng):
                if isinstance(piece, Mark):
                    newlines = sum(s.count("\n") for s in out)
                    plants.append(Plant(at, at + len(piece.text), piece.label, fmt, newlines))
                    out.append(piece.text)
                    at += len(piece.text)
                else:
                    out.append(piece)
                    at += len(piece)
            out.append("\n")
            at += 1
        out.append(line + ("\n" if number < len(lines) - 1 else ""))
        at += len(out[-1])
    return PlantedFile(source, "".join(out), tuple(plants))


def planted_files(files: Sequence[RealFile], seed: int, per_format: int, per_file: int = 8
                  ) -> list[PlantedFile]:
    """Long files of `files` with per_format credentials of every format planted in all, at
    most per_file in one file; files are taken in a shuffled order, formats in turn."""
    rng = random.Random(seed)
    hosts = long_files(files)
    if not hosts:
        raise ValueError(f"no Python file of {MIN_LINES}+ lines to plant credentials into")
    rng.shuffle(hosts)
    queue = [fmt for _ in range(per_format) for fmt in FORMATS]
    out = []
    for i in range(0, len(queue), per_file):
        formats = queue[i : i + per_file]
        rng.shuffle(formats)
        out.append(plant(hosts[(i // per_file) % len(hosts)], len(formats), formats, rng))
    return out

