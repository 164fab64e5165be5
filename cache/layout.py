"""FIM prompt layouts that put what changes while typing at the end, so a keystroke at the
cursor leaves the cached tokens before it valid."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

from .crossfile import RepoContext, repo_context_ids
from .window import line_start

# - "spm":      <fim_prefix><fim_suffix>{suffix}<fim_middle>{prefix}
# - "psm_line": <fim_prefix>{prefix up to the cut}<fim_suffix>{suffix}<fim_middle>
#               {the cut to the cursor}; the cut is a line start at or before the cursor's
#               line (by default the cursor's line start; PromptBuilder keeps it in place
#               while the user types on, so that new lines are appends too)
# - "plain":    {prefix}, left to right without FIM tokens (diagnostics, non-FIM models)
# Each piece of text is tokenised on its own and joined with the special ids, so an edit in
# one piece never changes another's tokens. Context from other files (crossfile.RepoContext:
# <reponame>, <filename>path and text per file, <filename>path of this one) comes first.
Layout = Literal["spm", "psm_line", "plain"]
LAYOUTS: tuple[str, ...] = get_args(Layout)


class FimIds(Protocol):
    """The ids of the FIM special tokens (model.tokenizer.FimTokens has these)."""

    @property
    def prefix(self) -> int: ...

    @property
    def middle(self) -> int: ...

    @property
    def suffix(self) -> int: ...


class TextTokenizer(Protocol):
    """What the layouts need of a tokenizer (model.Tokenizer is one)."""

    @property
    def fim(self) -> FimIds | None: ...

    def encode_text(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Pieces:
    """The document text a layout shows, cut where the layout puts special tokens."""

    prefix: str  # before the cursor (psm_line: before the cut)
    line: str  # psm_line only: from the cut to the cursor
    suffix: str  # after the cursor, up to the window's end

    def __iter__(self) -> Iterator[str]:
        return iter((self.prefix, self.line, self.suffix))


def check_layout(layout: str, tokenizer: TextTokenizer) -> None:
    """Raise ValueError when the layout is unknown or needs FIM tokens the tokenizer lacks."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}; expected one of {list(LAYOUTS)}")
    if layout != "plain" and tokenizer.fim is None:
        raise ValueError(
            f"layout {layout!r} needs FIM special tokens, which this tokenizer lacks; "
            "use layout 'plain'"
        )


def split(
    layout: str, text: str, cursor: int, start: int, end: int, cut: int | None = None
) -> Pieces:
    """Cut the window text[start:end] around the cursor as `layout` shows it. `cut` (psm_line
    only; default: the cursor's line start) is where the text before the cursor is split."""
    if layout == "plain":
        return Pieces(prefix=text[start:cursor], line="", suffix="")
    if layout == "spm":
        return Pieces(prefix=text[start:cursor], line="", suffix=text[cursor:end])
    cut = line_start(text, cursor) if cut is None else cut
    if not cut <= cursor:
        raise ValueError(f"psm_line cut {cut} is after the cursor {cursor}")
    cut = max(start, cut)
    return Pieces(prefix=text[start:cut], line=text[cut:cursor], suffix=text[cursor:end])


def assemble(
    layout: str, fim: FimIds | None, prefix: list[int], line: list[int], suffix: list[int]
) -> list[int]:
    """Join the pieces' ids with the layout's special ids."""
    if layout == "plain":
        return prefix + line
    assert fim is not None
    if layout == "spm":
        return [fim.prefix, fim.suffix, *suffix, fim.middle, *prefix, *line]
    return [fim.prefix, *prefix, fim.suffix, *suffix, fim.middle, *line]


def layout_ids(
    layout: str,
    tokenizer: TextTokenizer,
    text: str,
    cursor: int,
    start: int = 0,
    end: int | None = None,
    cut: int | None = None,
    context: RepoContext | None = None,
) -> list[int]:
    """The prompt ids for the window text[start:end] with the cursor at `cursor` (and, for
    psm_line, the text before it split at `cut`: see split), after `context` if given."""
    check_layout(layout, tokenizer)
    pieces = split(layout, text, cursor, start, len(text) if end is None else end, cut)
    prefix, line, suffix = (tokenizer.encode_text(t) if t else [] for t in pieces)
    ahead = [] if context is None else repo_context_ids(tokenizer, context)
    return ahead + assemble(layout, tokenizer.fim, prefix, line, suffix)
