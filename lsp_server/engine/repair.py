"""Partial-token repair at the cursor: end the prompt on a token boundary that more typing
cannot move, and constrain the first generated tokens to re-type the text taken off."""

from __future__ import annotations

import re
import weakref
from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate
from typing import Protocol

# A prompt ending in "x = fo" tokenises "fo" as the model rarely saw it before "o(": the model
# then continues from a split it never learned. Taking " fo" off the prompt and allowing only
# tokens that start with it (" foo", " for") or are a prefix of it (" f", then "o...") lets
# the model choose the tokenization itself.
#
# Use: `stable, typed = split_unstable_tail(tok, prefix)`; build the prompt from `stable`;
# while `rest = typed.encode()` is not empty, pick the next token among `index.allowed(rest)`
# and set `rest = index.remaining(rest, token)`; the decoded generation then starts with
# `typed`, which is already in the document: drop it before post-processing.

# What typing more can re-tokenize: the last word with the space before it, the last run of
# punctuation with the space before it, or trailing whitespace (the byte-level pre-tokenizer's
# pieces; BPE never merges across them).
_UNSTABLE_TAIL = re.compile(r"(?: ?\w+| ?[^\s\w]+|\s+)\Z")
WINDOW_CHARS = 256  # of prefix re-tokenised to find the tail's token boundaries
# A `\Z`-anchored search tries every start position: look only at the end of the prefix.
TAIL_SEARCH_CHARS = 4 * WINDOW_CHARS


class VocabTokenizer(Protocol):
    """What repair needs of a tokenizer; model.Tokenizer (byte-level BPE) is one."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_ids(self) -> frozenset[int]: ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...

    def id_to_token(self, token_id: int) -> str | None: ...


def split_unstable_tail(
    tokenizer: VocabTokenizer, prefix: str, max_tokens: int = 4
) -> tuple[str, str]:
    """(stable, typed) with stable + typed == prefix, for a prompt that ends with `stable`.

    `stable` ends on a boundary of prefix's own tokens, and encodes alone to those tokens:
    before the last word, punctuation run or whitespace when that is at most `max_tokens`
    tokens back, else `max_tokens` back (inside a long word). (prefix, "") when no boundary
    qualifies.
    """
    tail = _UNSTABLE_TAIL.search(prefix, max(len(prefix) - TAIL_SEARCH_CHARS, 0))
    if tail is None:
        return prefix, ""
    start = _window_start(prefix, tail.start())
    window = prefix[start:]
    ids = tokenizer.encode_text(window)
    ends = _token_ends(tokenizer, window, ids)
    lowest = max(len(ids) - max_tokens, 0 if start == 0 else 1)
    for count, end in _cuts(ends, tail.start() - start, lowest):
        if tokenizer.encode_text(window[:end]) == ids[:count]:
            return prefix[: start + end], prefix[start + end :]
    return prefix, ""


def _cuts(ends: list[int | None], tail_start: int, lowest: int) -> list[tuple[int, int]]:
    """(tokens kept, where they end) to try, best first: the most tokens that end before the
    tail, then cuts inside the tail, the earliest first."""
    known = [(k, end) for k in range(lowest, len(ends) - 1) if (end := ends[k]) is not None]
    before = [cut for cut in known if cut[1] <= tail_start]
    return before[::-1] + [cut for cut in known if cut[1] > tail_start]


def _window_start(prefix: str, tail_start: int) -> int:
    """A line start well before the tail: tokens there do not reach the tail."""
    earliest = max(tail_start - WINDOW_CHARS, 0)
    line_start = prefix.find("\n", earliest, tail_start) + 1
    return line_start if 0 < line_start else earliest


def _token_ends(tokenizer: VocabTokenizer, text: str, ids: list[int]) -> list[int | None]:
    """For each k in 0..len(ids), the character offset where ids[:k] end in text; None where
    that falls inside a character, or everywhere when the tokens do not spell text's bytes
    (a normalizer changed the text)."""
    data = text.encode("utf-8")
    pieces = [tokenizer.decode_bytes([i]) for i in ids]
    if b"".join(pieces) != data:
        return [None] * (len(ids) + 1)
    return [_char_offset(data, end) for end in accumulate(map(len, pieces), initial=0)]


def _char_offset(data: bytes, end: int) -> int | None:
    if end < len(data) and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
        return None
    return len(data[:end].decode("utf-8"))


_BLANKS = (b" ", b"\t")


class TokenIndex:
    """The vocabulary's token bytes, sorted, for the ids that continue a given byte string.

    Special tokens and tokens with no bytes are left out: generation may never pick them
    while re-typing text.
    """

    def __init__(self, tokenizer: VocabTokenizer) -> None:
        by_bytes = sorted((data, token_id) for token_id, data in _token_bytes(tokenizer) if data)
        self.keys = [data for data, _ in by_bytes]
        self.ids = [token_id for _, token_id in by_bytes]
        self.bytes_of = {token_id: data for data, token_id in by_bytes}
        self._after_blank: dict[bytes, list[int]] = {}  # allowed() after whitespace, by text

    def starting_with(self, data: bytes) -> list[int]:
        """Ids of tokens whose bytes start with `data`."""
        low = bisect_left(self.keys, data)
        high = bisect_left(self.keys, _successor(data)) if data.rstrip(b"\xff") else len(self.keys)
        return self.ids[low:high]

    def prefixes_of(self, data: bytes) -> list[int]:
        """Ids of tokens whose bytes are a proper prefix of `data`."""
        found: list[int] = []
        for size in range(1, len(data)):
            low = bisect_left(self.keys, data[:size])
            while low < len(self.keys) and self.keys[low] == data[:size]:
                found.append(self.ids[low])
                low += 1
        return found

    def allowed(self, typed: bytes) -> list[int]:
        """Ids the next token may take while `typed` is still to be re-typed, in no particular
        order: those that start with it and those that are a proper prefix of it.

        After typed whitespace (the indentation of the cursor's line, the space after `=`),
        no token that goes on past it may add more: the user chose it, and `x =  1` or a line
        indented deeper than the cursor is never what they want."""
        if typed[-1:] not in _BLANKS:
            return self.starting_with(typed) + self.prefixes_of(typed)
        longer = self._after_blank.get(typed)
        if longer is None:
            size = len(typed)
            longer = [i for i in self.starting_with(typed)
                      if self.bytes_of[i][size:size + 1] not in _BLANKS]
            if len(self._after_blank) >= 256:
                self._after_blank.clear()
            self._after_blank[typed] = longer
        return longer + self.prefixes_of(typed)

    def remaining(self, typed: bytes, token_id: int) -> bytes:
        """What is still to be re-typed after `token_id` (one of allowed(typed))."""
        return typed[len(self.bytes_of[token_id]) :]


def _successor(data: bytes) -> bytes:
    """The smallest byte string above every string that starts with data (data not all 0xff)."""
    head = data.rstrip(b"\xff")
    return head[:-1] + bytes([head[-1] + 1])


def _token_bytes(tokenizer: VocabTokenizer) -> Iterable[tuple[int, bytes]]:
    special = tokenizer.special_ids
    for token_id in range(tokenizer.vocab_size):
        if token_id not in special and tokenizer.id_to_token(token_id) is not None:
            yield token_id, tokenizer.decode_bytes([token_id])


_INDEXES: weakref.WeakKeyDictionary[VocabTokenizer, TokenIndex] = weakref.WeakKeyDictionary()


def token_index(tokenizer: VocabTokenizer) -> TokenIndex:
    """The TokenIndex of a tokenizer, built on first use and kept while the tokenizer lives."""
    index = _INDEXES.get(tokenizer)
    if index is None:
        index = _INDEXES[tokenizer] = TokenIndex(tokenizer)
    return index
