"""Which part of a long document a prompt shows: edges on line boundaries, placed with room to
spare so that typing moves them only in coarse jumps, and followed through edits elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .prefix import longest_common_prefix

CountTokens = Callable[[str], int]


# Tokens of text after the cursor a prompt shows at most. With the prefix first (psm_line), a
# cursor move recomputes the suffix whatever the file's size, so its size is the floor of a
# move's cost: 128 tokens (12-15 lines of Python) is about 0.5-0.8 s of prefill for
# tiny_starcoder_py's shape on a 2-core CPU in fp32 (tests/bench/keystroke.py --moves).
SUFFIX_CAP = 128


@dataclass(frozen=True)
class ContextBudget:
    """Tokens of document text in a prompt (FIM special tokens come on top).

    The text after the cursor gets `1 - prefix_share` of `tokens`, at most `suffix_cap`
    (None: no cap); the text before it gets the rest. When an edge must move, it is placed
    `jump_share` of its budget inside the limit, so the next move is that many tokens of
    typing away.
    """

    tokens: int = 2048
    prefix_share: float = 0.75
    jump_share: float = 0.25
    suffix_cap: int | None = SUFFIX_CAP

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, int) or self.tokens < 8:
            raise ValueError(f"ContextBudget.tokens must be an integer >= 8, got {self.tokens!r}")
        if self.suffix_cap is not None and (
            not isinstance(self.suffix_cap, int) or self.suffix_cap < 0
        ):
            raise ValueError(
                f"ContextBudget.suffix_cap must be None or an integer >= 0, got "
                f"{self.suffix_cap!r}"
            )
        if not 0.0 < self.prefix_share <= 1.0:
            raise ValueError(
                f"ContextBudget.prefix_share must be in (0, 1], got {self.prefix_share!r}"
            )
        if not 0.0 < self.jump_share < 0.5:
            raise ValueError(
                f"ContextBudget.jump_share must be in (0, 0.5), got {self.jump_share!r}"
            )

    @property
    def suffix_tokens(self) -> int:
        share = self.tokens - round(self.tokens * self.prefix_share)
        return share if self.suffix_cap is None else min(share, self.suffix_cap)

    def jump(self, limit: int) -> int:
        return int(limit * self.jump_share)


# -- lines ----------------------------------------------------------------------------------


def line_start(text: str, pos: int) -> int:
    """Offset of the first character of the line holding `pos`."""
    return text.rfind("\n", 0, pos) + 1


def line_end(text: str, pos: int) -> int:
    """Offset just past the newline ending the line holding `pos` (or the end of the text)."""
    newline = text.find("\n", pos)
    return len(text) if newline < 0 else newline + 1


def is_line_start(text: str, pos: int) -> bool:
    return pos == 0 or text[pos - 1] == "\n"


# -- following edits ------------------------------------------------------------------------


# Characters around an offset looked up to find it again after several edits.
PROBE = 64


@dataclass(frozen=True)
class Edit:
    """The span that differs between two versions of a text: old[head:old_end] became
    new[head:new_end]; everything before and after it is unchanged."""

    old: str
    new: str
    head: int
    old_end: int
    new_end: int

    @classmethod
    def between(cls, old: str, new: str) -> Edit:
        head = longest_common_prefix(old, new)
        tail = longest_common_prefix(old[::-1], new[::-1])
        tail = min(tail, len(old) - head, len(new) - head)
        return cls(old, new, head, len(old) - tail, len(new) - tail)

    def follow(self, offset: int) -> int:
        """Where `offset` of the old text is in the new one."""
        if offset <= self.head:
            return offset
        shift = self.new_end - self.old_end
        if offset >= self.old_end:
            return offset + shift
        # Several edits since the last look, with the offset between them: the text next to it
        # moved by some of the shift. Find that text again, nearest to where it would be.
        guesses = (offset, offset + shift)
        after = self.old[offset : offset + PROBE]
        before = self.old[max(0, offset - PROBE) : offset]
        for probe, width in ((after, 0), (before, len(before))):
            found = self._nearest(probe, guesses, width)
            if found is not None:
                return found
        return self.head

    def _nearest(self, probe: str, guesses: tuple[int, ...], width: int) -> int | None:
        """The offset just after `width` characters of the occurrence of `probe` in the
        changed span of the new text that is nearest a guess."""
        if len(probe) < PROBE // 2:
            return None  # too short to tell one place from another
        lo, hi = max(0, self.head - len(probe)), min(len(self.new), self.new_end + len(probe))
        best: int | None = None
        at = self.new.find(probe, lo, hi)
        while at >= 0:
            pos = at + width
            if best is None or min(abs(pos - g) for g in guesses) < min(
                abs(best - g) for g in guesses
            ):
                best = pos
            at = self.new.find(probe, at + 1, hi)
        return best


# -- placing edges --------------------------------------------------------------------------


# No token of a code tokenizer stands for this many characters on average over a span, so
# a span longer than this many characters per token of budget cannot fit: re-place the edge
# from the cursor instead of tokenising the span (megabytes after a jump in a large file).
MAX_CHARS_PER_TOKEN = 32


def within_reach(lo: int, hi: int, limit: int) -> bool:
    """Whether the text between offsets lo <= hi could fit in `limit` tokens."""
    return 0 <= hi - lo <= MAX_CHARS_PER_TOKEN * limit


def place_start(text: str, cursor: int, limit: int, slack: int, count: CountTokens) -> int:
    """A start for the text before `cursor`: the file's start if it all fits in `limit`
    tokens, else the earliest line start leaving `slack` tokens of room to type."""
    start = line_start(text, cursor)
    used = count(text[start:cursor])
    if used > limit - slack:
        return cut_start(text, start, cursor, limit - slack, count)
    with_room = start
    while start > 0:
        previous = line_start(text, start - 1)
        used += count(text[previous:start])
        if used > limit:
            return with_room
        start = previous
        if used <= limit - slack:
            with_room = start
    return 0


# A window's start, when a cursor move makes it move, goes to a line whose number is a multiple
# of this (the first such line at or after the earliest start that fits, if the prefix keeps
# at least half its budget), or back to a start the window had before: cursors near one
# another then get the same start, so that a move back to a region seen before (or warmed:
# lsp_server/engine/warming.py) finds its prompt's prefix cached.
GRID_LINES = 8
REMEMBERED_STARTS = 8  # per window, most recent last


def choose_start(text: str, start: int, cursor: int, remembered: list[int], lo: int, hi: int,
                 count: CountTokens, lines: int = GRID_LINES) -> int:
    """A start for a window whose earliest fitting start is `start` (a line start): the most
    recent of `remembered` whose text to the cursor is `lo` to `hi` tokens, else the grid's
    line (see on_grid), else `start`."""
    here = line_start(text, cursor)
    for old in reversed(remembered):
        if 0 < old <= here and is_line_start(text, old) and within_reach(old, cursor, hi) and (
            lo <= count(text[old:cursor]) <= hi
        ):
            return old
    return on_grid(text, start, cursor, lo, count, lines)


def on_grid(text: str, start: int, cursor: int, keep: int, count: CountTokens,
            lines: int = GRID_LINES) -> int:
    """The first line start at or after `start` (a line start) whose line number is a multiple
    of `lines`, if the text from it to the cursor is still at least `keep` tokens; else
    `start`."""
    if start == 0 or lines <= 1:
        return start
    snapped = start
    for _ in range(-text.count("\n", 0, start) % lines):
        snapped = line_end(text, snapped)
    if snapped == start or snapped > line_start(text, cursor):
        return start
    return snapped if count(text[snapped:cursor]) >= keep else start


def place_end(text: str, cursor: int, limit: int, slack: int, count: CountTokens) -> int:
    """An end for the text after `cursor`: whole lines, the file's end if it all fits in
    `limit` tokens, else as many lines as fit in `limit - slack`."""
    end = line_end(text, cursor)
    used = count(text[cursor:end])
    if used > limit - slack:
        return cut_end(text, cursor, end, limit - slack, count)
    with_room = end
    while end < len(text):
        following = line_end(text, end)
        used += count(text[end:following])
        if used > limit:
            return with_room
        end = following
        if used <= limit - slack:
            with_room = end
    return len(text)


def cut_start(text: str, lo: int, cursor: int, limit: int, count: CountTokens) -> int:
    """The earliest offset in [lo, cursor] whose text up to the cursor fits in `limit`
    tokens: for a line too long to show whole."""
    hi = cursor
    while lo < hi:
        mid = (lo + hi) // 2
        if count(text[mid:cursor]) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return lo


def cut_end(text: str, cursor: int, hi: int, limit: int, count: CountTokens) -> int:
    """The latest offset in [cursor, hi] whose text from the cursor fits in `limit` tokens."""
    lo = cursor
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[cursor:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo
