"""Open documents by URI, and conversion between LSP positions (line, character in the
negotiated encoding) and offsets into the Python string of a document's text."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple, Protocol, get_args

# LSP counts lines by "\n", "\r\n" and "\r" (not by the other breaks str.splitlines knows)
# and characters in UTF-16 code units unless client and server agreed on UTF-8 bytes or
# UTF-32 code points. A Python str indexes code points, so only UTF-32 columns are indexes.
PositionEncoding = Literal["utf-16", "utf-8", "utf-32"]
ENCODINGS: tuple[str, ...] = get_args(PositionEncoding)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Characters wider than one code unit in each encoding (lone surrogates count as one
# UTF-16 unit and three UTF-8 bytes, as with the "surrogatepass" error handler).
_WIDE = {
    "utf-16": re.compile("[\U00010000-\U0010ffff]"),
    "utf-8": re.compile("[^\x00-\x7f]"),
}


class UnknownDocumentError(LookupError):
    """A URI that is not open in the store (never opened, or closed)."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"no open document {uri!r}")
        self.uri = uri


class PositionLike(Protocol):
    """Anything with a line and a character: our Position, or lsprotocol's types.Position."""

    @property
    def line(self) -> int: ...

    @property
    def character(self) -> int: ...


class RangeLike(Protocol):
    """Anything with a start and an end position: our Range, or lsprotocol's types.Range."""

    @property
    def start(self) -> PositionLike: ...

    @property
    def end(self) -> PositionLike: ...


class Position(NamedTuple):
    line: int
    character: int


class Range(NamedTuple):
    start: Position
    end: Position


@dataclass(frozen=True)
class TextChange:
    """One entry of didChange's contentChanges: replace `range` by `text`, or the whole document
    when range is None. lsprotocol's ranges can be passed as they are."""

    text: str
    range: RangeLike | None = None


def choose_encoding(offered: Sequence[str] | None) -> PositionEncoding:
    """The first encoding the client offers (general.positionEncodings, in its order of
    preference) that we support; UTF-16, which every client must support, otherwise."""
    for name in offered or ():
        if name in ENCODINGS:
            return name  # type: ignore[return-value]  # narrowed by the membership test
    return "utf-16"


def _width(char: str, encoding: PositionEncoding) -> int:
    code = ord(char)
    if encoding == "utf-16":
        return 2 if code > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 1


def column_to_index(line: str, column: int, encoding: PositionEncoding) -> int:
    """Index into `line` (no line break) of the character `column` code units in.

    A column past the end clamps to the end; a column inside a character (between the two
    halves of a surrogate pair, or inside a UTF-8 sequence) moves to that character's start.
    """
    column = max(column, 0)
    if encoding == "utf-32":
        return min(column, len(line))
    extra = 0  # code units so far beyond one per character
    for match in _WIDE[encoding].finditer(line):
        start = match.start() + extra
        if column < start:
            break
        width = _width(match.group(), encoding)
        if column < start + width:
            return match.start()
        extra += width - 1
    return min(column - extra, len(line))


def index_to_column(line: str, index: int, encoding: PositionEncoding) -> int:
    """Code units of `encoding` in line[:index]."""
    head = line[:index]
    if encoding == "utf-16":
        return len(head.encode("utf-16-le", "surrogatepass")) // 2
    if encoding == "utf-8":
        return len(head.encode("utf-8", "surrogatepass"))
    return len(head)


class LineIndex:
    """A text and where each of its lines starts, for position <-> offset conversion."""

    def __init__(self, text: str, starts: list[int] | None = None) -> None:
        self.text = text
        self.starts = [0, *_break_ends(text, 0, len(text))] if starts is None else starts

    def replaced(self, start: int, end: int, new: str) -> LineIndex:
        """The index of the text with text[start:end] replaced by `new`. Only the lines the
        edit touches are scanned again, with the line before (its "\r" may meet a "\n")."""
        text = self.text[:start] + new + self.text[end:]
        first = max(bisect_right(self.starts, start) - 2, 0)
        shift = len(new) - (end - start)
        moved = [line_start + shift for line_start in self.starts[bisect_right(self.starts, end) :]]
        stop = moved[0] if moved else len(text) + 1  # the first line start not rescanned
        rescanned = _break_ends(text, self.starts[first], min(stop, len(text)))
        return LineIndex(
            text, self.starts[: first + 1] + [e for e in rescanned if e < stop] + moved
        )

    def line_end(self, line: int) -> int:
        """Offset of the end of `line`'s content, before its line break."""
        if line + 1 >= len(self.starts):
            return len(self.text)
        next_start = self.starts[line + 1]
        crlf = self.text.startswith("\r\n", next_start - 2)
        return next_start - (2 if crlf else 1)

    def offset(self, position: PositionLike, encoding: PositionEncoding) -> int:
        """Offset of an LSP position. A line past the last clamps to the end of the text; a
        character past the end of its line clamps to the line's end (the LSP rule)."""
        line = max(position.line, 0)
        if line >= len(self.starts):
            return len(self.text)
        start = self.starts[line]
        content = self.text[start : self.line_end(line)]
        return start + column_to_index(content, position.character, encoding)

    def position(self, offset: int, encoding: PositionEncoding) -> Position:
        """LSP position of an offset, clamped into the text. An offset between the "\r" and
        "\n" of a CRLF maps to the end of that line."""
        offset = min(max(offset, 0), len(self.text))
        line = bisect_right(self.starts, offset) - 1
        start = self.starts[line]
        offset = min(offset, self.line_end(line))
        return Position(line, index_to_column(self.text[start:offset], offset - start, encoding))


def _break_ends(text: str, start: int, stop: int) -> list[int]:
    """Where a line starts after each line break in text[start:stop]."""
    return [match.end() for match in _LINE_BREAK.finditer(text, start, stop)]


def position_to_offset(text: str, position: PositionLike, encoding: PositionEncoding) -> int:
    """One-off conversion; Document.offset_at reuses the document's line index."""
    return LineIndex(text).offset(position, encoding)


def offset_to_position(text: str, offset: int, encoding: PositionEncoding) -> Position:
    """One-off conversion; Document.position_at reuses the document's line index."""
    return LineIndex(text).position(offset, encoding)


def apply_changes(
    lines: LineIndex, changes: Iterable[TextChange], encoding: PositionEncoding
) -> LineIndex:
    """The text (with its index) after didChange's changes, each applied to the result of the
    one before (the LSP rule). A range whose end comes before its start is taken in order."""
    for change in changes:
        if change.range is None:
            lines = LineIndex(change.text)
            continue
        ends = (
            lines.offset(change.range.start, encoding),
            lines.offset(change.range.end, encoding),
        )
        start, end = sorted(ends)
        lines = lines.replaced(start, end, change.text)
    return lines


@dataclass(frozen=True)
class Document:
    """One version of an open document. Immutable: a change makes a new Document, so a worker
    may keep the one it was given while the editor goes on typing."""

    uri: str
    version: int
    lines: LineIndex  # the text, and where its lines start
    language_id: str = ""

    @property
    def text(self) -> str:
        return self.lines.text

    def offset_at(self, position: PositionLike, encoding: PositionEncoding) -> int:
        return self.lines.offset(position, encoding)

    def position_at(self, offset: int, encoding: PositionEncoding) -> Position:
        return self.lines.position(offset, encoding)


class DocumentStore:
    """The open documents, by URI, kept in step with didOpen / didChange / didClose.

    `encoding` is the position encoding agreed in `initialize`; set it before documents open.
    """

    def __init__(self, encoding: PositionEncoding = "utf-16") -> None:
        self.encoding: PositionEncoding = encoding
        self._documents: dict[str, Document] = {}

    def open(self, uri: str, text: str, version: int, language_id: str = "") -> Document:
        """Add a document; opening an open URI again replaces it."""
        document = Document(uri, version, LineIndex(text), language_id)
        self._documents[uri] = document
        return document

    def change(self, uri: str, version: int, changes: Iterable[TextChange]) -> Document:
        """Apply didChange's content changes in order; raises UnknownDocumentError."""
        old = self.get(uri)
        lines = apply_changes(old.lines, changes, self.encoding)
        document = replace(old, version=version, lines=lines)
        self._documents[uri] = document
        return document

    def close(self, uri: str) -> Document:
        """Forget a document and return its last version; raises UnknownDocumentError."""
        document = self.get(uri)
        del self._documents[uri]
        return document

    def get(self, uri: str) -> Document:
        try:
            return self._documents[uri]
        except KeyError:
            raise UnknownDocumentError(uri) from None

    def __contains__(self, uri: object) -> bool:
        return uri in self._documents

    def __len__(self) -> int:
        return len(self._documents)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._documents))
