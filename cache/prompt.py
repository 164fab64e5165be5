"""Prompt ids for a document at a cursor: the layout, and a window per document whose edges
stay put while the user types, so the prompt keeps a long common prefix with the last one."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .crossfile import RepoContext, repo_context_ids
from .layout import Layout, TextTokenizer, assemble, check_layout, split
from .prefix import CacheKey
from .window import (
    REMEMBERED_STARTS,
    ContextBudget,
    Edit,
    choose_start,
    cut_end,
    cut_start,
    is_line_start,
    line_end,
    line_start,
    place_end,
    place_start,
    within_reach,
)


@dataclass(frozen=True)
class Prompt:
    """Ids to run for (uri, layout), and the span text[start:end] of the document they show."""

    uri: str
    layout: str
    ids: list[int]
    start: int
    end: int
    prefix_tokens: int  # of text before the cursor
    suffix_tokens: int  # of text after it
    cut: int | None = None  # psm_line: where the text before the cursor is split (see split)
    context: RepoContext | None = None  # other files' text ahead of the document's
    context_tokens: int = 0

    @property
    def key(self) -> CacheKey:
        return (self.uri, self.layout)


@dataclass
class DocumentWindow:
    """Where one (document, layout)'s window is, in the text it was last built from."""

    text: str
    start: int = 0
    end: int | None = None  # None: the window reaches the end of the file
    fresh: bool = True  # not placed yet: placing it is not a move
    cut: int | None = None  # psm_line: a line start at or before the cursor's line
    # Piece name -> (text, ids) last tokenised: unchanged pieces are not tokenised again.
    encoded: dict[str, tuple[str, list[int]]] = field(default_factory=dict)
    starts: list[int] = field(default_factory=list)  # recent starts a move placed (window.py)
    context: tuple[RepoContext, list[int]] | None = None  # the last context and its ids


class PromptBuilder:
    """Builds prompts within a token budget; `window_moves` counts the moves of a window's
    edges that edits did not cause (each costs the tokens after the moved edge)."""

    def __init__(self, tokenizer: TextTokenizer, budget: ContextBudget | None = None) -> None:
        self.tokenizer = tokenizer
        self.budget = budget or ContextBudget()
        self.window_moves = 0
        self._windows: dict[CacheKey, DocumentWindow] = {}

    def build(self, uri: str, text: str, cursor: int, layout: Layout | str = "spm",
              context: RepoContext | None = None) -> Prompt:
        """The prompt for `text` with the cursor at character offset `cursor`, after the
        other files of `context` (their tokens come out of the budget's)."""
        check_layout(layout, self.tokenizer)
        if not 0 <= cursor <= len(text):
            raise ValueError(f"{uri}: cursor offset {cursor} is outside the text (0..{len(text)})")
        window = self._follow((uri, layout), text)
        ahead = self._encode_context(window, context)
        if len(ahead) > self.budget.tokens // 2:
            raise ValueError(f"{uri}: {len(ahead)} tokens of other files' context leave too "
                             f"little of the {self.budget.tokens}-token budget")
        carried = (window.start, window.end)
        suffix = [] if layout == "plain" else self._fit_suffix(window, text, cursor)
        if layout == "psm_line":
            self._place_cut(window, text, cursor)
        # The prefix may use what the suffix and the context leave.
        limit = self.budget.tokens - len(suffix) - len(ahead)
        prefix, line = self._fit_prefix(window, layout, text, cursor, limit)
        if not window.fresh:  # a move: an edge not where the edits carried it
            self.window_moves += (window.start, window.end) != carried
        window.fresh = False
        end = cursor if layout == "plain" else self._end(window, text)
        ids = ahead + assemble(layout, self.tokenizer.fim, prefix, line, suffix)
        cut = None if window.cut is None else max(window.start, window.cut)
        return Prompt(uri, layout, ids, window.start, end, len(prefix) + len(line), len(suffix),
                      cut, context, len(ahead))

    def preview(self, uri: str, text: str, cursor: int, layout: Layout | str = "spm",
                context: RepoContext | None = None) -> Prompt:
        """The prompt `build` would give now, leaving every window (and window_moves) as it
        is: for warming the cache ahead of a request that may never come."""
        key = (uri, layout)
        window, moves = self._windows.get(key), self.window_moves
        if window is not None:
            self._windows[key] = replace(window, encoded=dict(window.encoded),
                                         starts=list(window.starts))
        try:
            return self.build(uri, text, cursor, layout, context)
        finally:
            self.window_moves = moves
            if window is None:
                self._windows.pop(key, None)
            else:
                self._windows[key] = window

    def forget(self, uri: str) -> None:
        """Drop a closed document's windows."""
        for key in [key for key in self._windows if key[0] == uri]:
            del self._windows[key]

    # -- the window's edges -----------------------------------------------------------------

    def _follow(self, key: CacheKey, text: str) -> DocumentWindow:
        """The window of `key`, its edges carried through the edit since the last build."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = DocumentWindow(text)
            return window
        if window.text is text or window.text == text:
            return window
        edit = Edit.between(window.text, text)
        start = edit.follow(window.start)
        if is_line_start(window.text, window.start) and not is_line_start(text, start):
            start = line_start(text, start)  # the edit took out the line start it sat on
        window.start = start
        if window.end is not None:
            end = edit.follow(window.end)
            window.end = end if is_line_start(text, end) else line_end(text, end)
        window.starts = [s for s in map(edit.follow, window.starts) if is_line_start(text, s)]
        if window.cut is not None:
            cut = edit.follow(window.cut)
            window.cut = cut if is_line_start(text, cut) else line_start(text, cut)
        window.text = text
        return window

    def _place_cut(self, window: DocumentWindow, text: str, cursor: int) -> None:
        """Keep psm_line's cut while the text from it to the cursor stays within the suffix's
        budget (typing on, new lines included, then only appends to the prompt); else put it
        at the cursor's line start. Moving it costs the tokens after it, like a cursor move."""
        here = line_start(text, cursor)
        cut, limit = window.cut, self.budget.suffix_tokens
        keep = (
            cut is not None
            and max(window.start, cut) < here
            and within_reach(cut, cursor, limit)
            and len(self._encode(window, "line", text[max(window.start, cut) : cursor])) <= limit
        )
        if not keep:
            window.cut = here

    def _fit_suffix(self, window: DocumentWindow, text: str, cursor: int) -> list[int]:
        limit = self.budget.suffix_tokens
        slack = self.budget.jump(limit)
        if window.fresh or not within_reach(cursor, self._end(window, text), limit):
            self._move_end(window, text, cursor, limit, slack)
        ids = self._encode(window, "suffix", text[cursor : self._end(window, text)])
        too_short = window.end is not None and len(ids) < limit - 2 * slack
        if len(ids) > limit or too_short:
            if self._move_end(window, text, cursor, limit, slack):
                ids = self._encode(window, "suffix", text[cursor : self._end(window, text)])
        while len(ids) > limit:  # the line-by-line estimate was short; drop whole lines
            end = self._end(window, text)
            if end > line_end(text, cursor):
                window.end = line_start(text, end - 1)
            else:
                window.end = min(end - 1, cut_end(text, cursor, end, limit, self._count))
            ids = self._encode(window, "suffix", text[cursor : window.end])
        return ids

    def _fit_prefix(
        self, window: DocumentWindow, layout: str, text: str, cursor: int, limit: int
    ) -> tuple[list[int], list[int]]:
        slack = self.budget.jump(limit)
        if window.fresh or not within_reach(window.start, cursor, limit):
            self._move_start(window, text, cursor, limit, slack)
        prefix, line = self._encode_prefix(window, layout, text, cursor)
        used = len(prefix) + len(line)
        # Placed, the prefix fills its limit less the slack. A cursor moved back (or text
        # deleted before it) keeps the start until the prefix is down to the slack: moving
        # the start recomputes the whole window, a move back only the suffix and the line.
        if used > limit or (window.start > 0 and used < slack):
            if self._move_start(window, text, cursor, limit, slack):
                prefix, line = self._encode_prefix(window, layout, text, cursor)
        while len(prefix) + len(line) > limit:  # the line-by-line estimate was short
            next_line = line_end(text, window.start)
            if next_line <= line_start(text, cursor):
                window.start = next_line
            else:
                window.start = max(window.start + 1, cut_start(
                    text, window.start, cursor, limit, self._count
                ))
            prefix, line = self._encode_prefix(window, layout, text, cursor)
        return prefix, line

    def _move_start(
        self, window: DocumentWindow, text: str, cursor: int, limit: int, slack: int
    ) -> bool:
        start = place_start(text, cursor, limit, slack, self._count)
        if start > 0:  # on the grid, or where it was before (window.py: choose_start)
            start = choose_start(text, start, cursor, window.starts, limit - 2 * slack,
                                 limit - slack // 2, self._count)
            window.starts = [s for s in window.starts if s != start][1 - REMEMBERED_STARTS:]
            window.starts.append(start)
        moved, window.start = start != window.start, start
        return moved

    def _move_end(
        self, window: DocumentWindow, text: str, cursor: int, limit: int, slack: int
    ) -> bool:
        placed = place_end(text, cursor, limit, slack, self._count)
        end = None if placed == len(text) else placed
        moved, window.end = end != window.end, end
        return moved

    @staticmethod
    def _end(window: DocumentWindow, text: str) -> int:
        return len(text) if window.end is None else window.end

    # -- tokens -----------------------------------------------------------------------------

    def _encode_context(self, window: DocumentWindow, context: RepoContext | None) -> list[int]:
        """The context's ids, tokenised again only when it changed (another file did, or the
        choice of files)."""
        if context is None:
            return []
        if window.context is None or window.context[0] != context:
            window.context = (context, repo_context_ids(self.tokenizer, context))
        return window.context[1]

    def _encode_prefix(
        self, window: DocumentWindow, layout: str, text: str, cursor: int
    ) -> tuple[list[int], list[int]]:
        pieces = split(layout, text, cursor, window.start, cursor, window.cut)
        prefix = self._encode(window, "prefix", pieces.prefix)
        return prefix, self._encode(window, "line", pieces.line)

    def _encode(self, window: DocumentWindow, piece: str, text: str) -> list[int]:
        known = window.encoded.get(piece)
        if known is not None and known[0] == text:
            return known[1]
        # A tokenizer that can re-encode from the last line break before the change does
        # (model.Tokenizer.encode_text_after): a keystroke then costs a line, not the piece.
        after = getattr(self.tokenizer, "encode_text_after", None)
        if not text:
            ids = []
        elif after is not None and known is not None:
            ids = after(known, text)
        else:
            ids = self.tokenizer.encode_text(text)
        window.encoded[piece] = (text, ids)
        return ids

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode_text(text)) if text else 0
