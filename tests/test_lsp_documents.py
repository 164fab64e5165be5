"""Document store: LSP positions <-> offsets in each encoding, incremental edits, and a property
test that random edits leave the store's text equal to a code-point reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_server.documents import (
    Document,
    DocumentStore,
    LineIndex,
    Position,
    PositionEncoding,
    Range,
    TextChange,
    UnknownDocumentError,
    choose_encoding,
    offset_to_position,
    position_to_offset,
)

ENCODINGS: list[PositionEncoding] = ["utf-16", "utf-8", "utf-32"]


def _range(l1: int, c1: int, l2: int, c2: int) -> Range:
    return Range(Position(l1, c1), Position(l2, c2))


@pytest.mark.parametrize(("encoding", "column"), [("utf-16", 3), ("utf-8", 5), ("utf-32", 2)])
def test_column_after_emoji_counts_its_code_units(encoding: PositionEncoding, column: int):
    text = "a😀b"
    assert position_to_offset(text, Position(0, column), encoding) == 2
    assert offset_to_position(text, 2, encoding) == Position(0, column)


@pytest.mark.parametrize(("encoding", "column"), [("utf-16", 2), ("utf-8", 6), ("utf-32", 2)])
def test_cjk_is_one_utf16_unit_and_three_utf8_bytes(encoding: PositionEncoding, column: int):
    text = "世界x"
    assert position_to_offset(text, Position(0, column), encoding) == 2
    assert offset_to_position(text, 2, encoding) == Position(0, column)


def test_crlf_lone_cr_and_lf_each_end_a_line():
    text = "a\r\nb\rc\nd"
    starts = [position_to_offset(text, Position(line, 0), "utf-16") for line in range(4)]
    assert [text[s] for s in starts] == ["a", "b", "c", "d"]


def test_other_unicode_line_breaks_are_not_lsp_lines():
    text = "a\u2028b\x0cc\x85d\nz"
    assert position_to_offset(text, Position(1, 0), "utf-16") == text.index("z")
    assert position_to_offset(text, Position(0, 6), "utf-16") == 6


def test_character_past_line_end_clamps_before_the_crlf():
    text = "ab\r\ncd"
    assert position_to_offset(text, Position(0, 99), "utf-16") == 2


def test_line_past_end_clamps_to_document_end():
    text = "ab\ncd"
    assert position_to_offset(text, Position(7, 0), "utf-16") == len(text)
    assert position_to_offset(text, Position(2, 0), "utf-8") == len(text)


def test_negative_position_clamps_to_document_start():
    assert position_to_offset("ab\ncd", Position(-1, -5), "utf-16") == 0
    assert position_to_offset("ab\ncd", Position(1, -5), "utf-16") == 3


def test_last_line_after_trailing_newline_is_empty_and_addressable():
    text = "ab\n"
    assert position_to_offset(text, Position(1, 0), "utf-16") == 3
    assert offset_to_position(text, 3, "utf-16") == Position(1, 0)


@pytest.mark.parametrize(("encoding", "column"), [("utf-16", 2), ("utf-8", 2), ("utf-8", 4)])
def test_column_inside_a_character_moves_to_its_start(encoding: PositionEncoding, column: int):
    assert position_to_offset("a😀b", Position(0, column), encoding) == 1


def test_offset_between_cr_and_lf_maps_to_line_end():
    assert offset_to_position("ab\r\ncd", 3, "utf-16") == Position(0, 2)


def test_offset_out_of_range_clamps():
    assert offset_to_position("ab\ncd", 99, "utf-16") == Position(1, 2)
    assert offset_to_position("ab\ncd", -3, "utf-16") == Position(0, 0)


def test_lone_surrogate_is_one_utf16_unit_and_three_utf8_bytes():
    text = "\ud800x"
    assert position_to_offset(text, Position(0, 1), "utf-16") == 1
    assert position_to_offset(text, Position(0, 3), "utf-8") == 1
    assert offset_to_position(text, 1, "utf-8") == Position(0, 3)


def test_choose_encoding_takes_clients_first_supported_else_utf16():
    assert choose_encoding(["utf-8", "utf-16"]) == "utf-8"
    assert choose_encoding(["latin-1", "utf-32"]) == "utf-32"
    assert choose_encoding(["latin-1"]) == "utf-16"
    assert choose_encoding(None) == "utf-16"


def test_incremental_change_replaces_range_after_emoji_in_utf16():
    store = DocumentStore("utf-16")
    store.open("file:///a.py", "x = '😀'\r\ny = 1\r\n", 1)
    doc = store.change("file:///a.py", 2, [TextChange("2", _range(1, 4, 1, 5))])
    assert doc.text == "x = '😀'\r\ny = 2\r\n"
    assert doc.version == 2


def test_changes_apply_in_order_each_to_the_previous_result():
    store = DocumentStore()
    store.open("u", "abc", 1)
    changes = [TextChange("X", _range(0, 0, 0, 1)), TextChange("\n", _range(0, 1, 0, 1))]
    assert store.change("u", 2, changes).text == "X\nbc"


def test_change_without_range_replaces_whole_text():
    store = DocumentStore()
    store.open("u", "old\ntext", 1)
    assert store.change("u", 2, [TextChange("new")]).text == "new"


def test_reversed_range_is_taken_in_order():
    store = DocumentStore()
    store.open("u", "abcdef", 1)
    assert store.change("u", 2, [TextChange("-", _range(0, 4, 0, 1))]).text == "a-ef"


def test_inserting_lf_after_cr_joins_them_into_one_line_break():
    store = DocumentStore()
    store.open("u", "a\rb", 1)
    doc = store.change("u", 2, [TextChange("\n", _range(1, 0, 1, 0))])
    assert doc.text == "a\r\nb"
    assert doc.offset_at(Position(1, 0), "utf-16") == 3
    assert doc.offset_at(Position(2, 0), "utf-16") == 4


def test_old_document_snapshot_is_unchanged_by_later_edits():
    store = DocumentStore()
    first = store.open("u", "abc", 1)
    store.change("u", 2, [TextChange("Z", _range(0, 0, 0, 3))])
    assert (first.text, first.version) == ("abc", 1)
    assert store.get("u").text == "Z"


@pytest.mark.parametrize("call", ["get", "close", "change"])
def test_unknown_uri_raises_naming_it(call: str):
    store = DocumentStore()
    with pytest.raises(UnknownDocumentError, match="file:///nope.py"):
        if call == "change":
            store.change("file:///nope.py", 2, [TextChange("x")])
        else:
            getattr(store, call)("file:///nope.py")


def test_close_forgets_the_document():
    store = DocumentStore()
    opened = store.open("u", "abc", 1, "python")
    assert store.close("u") is opened
    assert (opened.text, opened.language_id) == ("abc", "python")
    assert "u" not in store and len(store) == 0


# ---- property: the store against a reference on a list of code points

PIECES = ["a", "Z", " ", "\t", "(", "\n", "\r", "\r\n", "é", "世", "😀", "\U0010ffff", "\ud800"]
texts = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)


def _reference_lines(chars: list[str]) -> list[tuple[int, int]]:
    """(start, content end) of each line, breaking at CRLF, CR and LF, by walking code points."""
    lines, start, i = [], 0, 0
    while i < len(chars):
        if chars[i] in "\r\n":
            width = 2 if chars[i : i + 2] == ["\r", "\n"] else 1
            lines.append((start, i))
            start = i = i + width
        else:
            i += 1
    return [*lines, (start, len(chars))]


CODECS = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2), "utf-32": ("utf-32-le", 4)}


def _units(chars: list[str], encoding: str) -> int:
    codec, unit = CODECS[encoding]
    return len("".join(chars).encode(codec, "surrogatepass")) // unit


def _draw_position(data: st.DataObject, chars: list[str], encoding: str) -> tuple[Position, int]:
    """A position, possibly past the line or the document end, and the offset it must mean."""
    lines = _reference_lines(chars)
    line = data.draw(st.integers(0, len(lines)))
    if line == len(lines):
        return Position(line + data.draw(st.integers(0, 3)), 0), len(chars)
    start, end = lines[line]
    index = data.draw(st.integers(0, end - start))
    past_end = data.draw(st.integers(0, 4)) if index == end - start else 0
    column = _units(chars[start : start + index], encoding) + past_end
    return Position(line, column), start + index


@settings(max_examples=75, deadline=None)
@given(initial=texts, data=st.data())
def test_random_incremental_edits_match_code_point_reference(initial: str, data: st.DataObject):
    encoding = data.draw(st.sampled_from(ENCODINGS))
    store = DocumentStore(encoding)
    store.open("u", initial, 0)
    reference = list(initial)
    for version in range(1, data.draw(st.integers(1, 6)) + 1):
        new_text = data.draw(texts)
        if data.draw(st.integers(0, 9)) == 0:
            store.change("u", version, [TextChange(new_text)])
            reference = list(new_text)
            continue
        (p1, o1), (p2, o2) = (_draw_position(data, reference, encoding) for _ in range(2))
        store.change("u", version, [TextChange(new_text, Range(p1, p2))])
        lo, hi = sorted((o1, o2))
        reference[lo:hi] = list(new_text)
        document = store.get("u")
        assert document.text == "".join(reference)
        assert document.lines.starts == LineIndex(document.text).starts  # updated in place


@settings(max_examples=100, deadline=None)
@given(text=texts, encoding=st.sampled_from(ENCODINGS))
def test_offset_position_round_trip_outside_crlf(text: str, encoding: PositionEncoding):
    doc = Document("u", 0, LineIndex(text))
    for offset in range(len(text) + 1):
        if text[offset - 1 : offset + 1] == "\r\n":
            continue
        assert doc.offset_at(doc.position_at(offset, encoding), encoding) == offset
