"""From a raw generation at the cursor to the text an editor shows: one line mid-line, a block
at a line end, cut where brackets, the block or the text after the cursor say so."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

OPENERS = "([{"
CLOSERS = ")]}"
MATCHING = {")": "(", "]": "[", "}": "{"}
# Text after the cursor made only of these still leaves room for a block: `foo(|)`, `{|}`.
LINE_END_CHARS = frozenset(CLOSERS + ";, \t")
BLOCK_OPENERS = (":", *OPENERS)
_NEW_DEFINITION = re.compile(
    r"(?:async\s+)?def\s+\w+\s*\(|class\s+\w+\s*[:(]|@\w|function\s+\w+\s*\("
)
RETYPED_REST_CHARS = 6  # of the rest of the line that a suggestion must re-type to be cut
SCAN_CHARS = 4_000  # of context before and after the cursor scanned for brackets and strings


@dataclass(frozen=True)
class Syntax:
    """What a language's strings and comments look like, enough to skip brackets inside them."""

    line_comment: str
    block_comment: tuple[str, str] | None
    quotes: tuple[str, ...]  # longest first: a triple quote is not three single ones
    multiline_quotes: frozenset[str]


PYTHON = Syntax("#", None, ('"""', "'''", '"', "'"), frozenset({'"""', "'''"}))
C_LIKE = Syntax("//", ("/*", "*/"), ("`", '"', "'"), frozenset({"`"}))
HASH_COMMENT_LANGUAGES = frozenset(
    {"python", "ruby", "shellscript", "perl", "r", "julia", "elixir", "coffeescript", "yaml",
     "toml", "makefile", "dockerfile", "powershell", "nim", "cython"}
)  # fmt: skip


def syntax_for(language_id: str) -> Syntax:
    """PYTHON for languages with `#` comments, C_LIKE (JS, TS, Java, C, Go, Rust...) otherwise."""
    return PYTHON if language_id.lower() in HASH_COMMENT_LANGUAGES else C_LIKE


# ---- lexing: brackets outside strings and comments


@lru_cache(maxsize=64)
def _pattern(syntax: Syntax, mode: str) -> re.Pattern[str]:
    """What can change the state in `mode` ("" in code, else the opening delimiter)."""
    if not mode:
        block_start = [syntax.block_comment[0]] if syntax.block_comment else []
        tokens = [*syntax.quotes, syntax.line_comment, *block_start, *OPENERS, *CLOSERS, "\n"]
    elif mode == syntax.line_comment:
        tokens = ["\n"]
    elif syntax.block_comment and mode == syntax.block_comment[0]:
        tokens = [syntax.block_comment[1], "\n"]
    else:
        return re.compile(r"\\[^\n]|" + re.escape(mode) + r"|\n")  # escapes are skipped
    return re.compile("|".join(map(re.escape, tokens)))


class _Lexer:
    """Follows strings and comments through text, which may come in several pieces."""

    def __init__(self, syntax: Syntax, mode: str = "") -> None:
        self.syntax = syntax
        self.mode = mode  # "" in code, else the delimiter of the open string or comment

    def events(self, text: str) -> Iterator[tuple[int, str]]:
        """(index, char) of each bracket in code and of each line break, in order."""
        pos = 0
        while (match := _pattern(self.syntax, self.mode).search(text, pos)) is not None:
            token, pos = match.group(), match.end()
            if token == "\n":
                if self.mode and self.mode not in self._multiline_modes():
                    self.mode = ""  # a line comment or a one-line string ends with its line
                yield match.start(), token
            elif not self.mode:
                if token in OPENERS or token in CLOSERS:
                    yield match.start(), token
                else:
                    self.mode = token
            elif token == self._closing():
                self.mode = ""

    def _multiline_modes(self) -> frozenset[str]:
        block = self.syntax.block_comment
        return self.syntax.multiline_quotes | ({block[0]} if block else set())

    def _closing(self) -> str:
        block = self.syntax.block_comment
        return block[1] if block and self.mode == block[0] else self.mode


@dataclass
class _Cursor:
    """Lexer state and open brackets at the cursor, from the text around it."""

    mode: str
    open: list[str]  # brackets open before the cursor, innermost last
    closed_after: int  # how many of the innermost `open` the text after the cursor closes


def _cursor(before: str, after: str, syntax: Syntax) -> _Cursor:
    lexer = _Lexer(syntax)
    stack: list[str] = []
    for _, char in lexer.events(before):
        if char in OPENERS:
            stack.append(char)
        elif char in CLOSERS and stack and stack[-1] == MATCHING[char]:
            stack.pop()
    mode = lexer.mode
    return _Cursor(mode, stack, _count_closed(after, _Lexer(syntax, mode), stack))


def _count_closed(after: str, lexer: _Lexer, open_before: list[str]) -> int:
    """How many of the innermost brackets in open_before the text `after` closes."""
    own: list[str] = []
    closed = 0
    if not open_before:
        return 0
    for _, char in lexer.events(after):
        if char in OPENERS:
            own.append(char)
        elif char in CLOSERS and own:
            own.pop()
        elif char in CLOSERS:
            waiting = len(open_before) - closed
            if waiting == 0 or open_before[waiting - 1] != MATCHING[char]:
                break
            closed += 1
            if closed == len(open_before):
                break
    return closed


def _scan(text: str, cursor: _Cursor, syntax: Syntax) -> tuple[int, list[bool]]:
    """Where the suggestion must stop for its brackets (len(text) if nowhere), and for each line
    whether it starts inside a string, a comment or a bracket the suggestion opened.

    It stops at a closer that matches nothing, and at one that closes a bracket from before the
    cursor that the text after the cursor already closes.
    """
    own: list[str] = []
    outer = len(cursor.open)  # brackets from before the cursor not yet closed
    free = len(cursor.open) - cursor.closed_after  # ... of which the first `free` stay open after
    continued = [False]
    lexer = _Lexer(syntax, cursor.mode)
    for index, char in lexer.events(text):
        if char == "\n":
            continued.append(bool(lexer.mode or own))
        elif char in OPENERS:
            own.append(char)
        elif own and own[-1] == MATCHING[char]:
            own.pop()
        elif own or outer == 0 or outer > free or cursor.open[outer - 1] != MATCHING[char]:
            return index, continued
        else:
            outer -= 1
    return len(text), continued


def unbalance(text: str, syntax: Syntax) -> tuple[int, int]:
    """(closers matching nothing in text, openers left open at its end), string-aware."""
    own: list[str] = []
    unmatched = 0
    for _, char in _Lexer(syntax).events(text):
        if char in OPENERS:
            own.append(char)
        elif char in CLOSERS and own:
            own.pop()
        elif char in CLOSERS:
            unmatched += 1
    return unmatched, len(own)


# ---- lines and indentation


def wants_single_line(suffix: str) -> bool:
    """True when the cursor is mid-line: the rest of its line holds more than closing brackets,
    `;`, `,` and whitespace. Then only one line is suggested (generation may stop at a newline)."""
    rest = re.split(r"\r|\n", suffix[:SCAN_CHARS], maxsplit=1)[0]
    return not set(rest) <= LINE_END_CHARS


def _indent(line: str) -> int:
    return len(line[: len(line) - len(line.lstrip(" \t"))].expandtabs(4))


def _closes_only(line: str) -> bool:
    """A line such as `}`, `});` or `],` that only closes what lines above opened."""
    stripped = line.strip()
    return bool(stripped) and stripped[0] in CLOSERS and set(stripped) <= LINE_END_CHARS


def _block_end(text: str, line_prefix: str, continued: list[bool]) -> int:
    """Where a multi-line suggestion leaves the cursor's block, or len(text).

    The block's indentation is that of the first non-blank line (the cursor's line with the
    suggestion's first line). A later line that is less indented ends the block; so does one
    as indented when that first line opens a block (`def f(x):`, `function f() {`): the
    suggestion ends with the block it opened. A line that only closes brackets is kept as
    the last. Lines inside strings, comments, brackets or after a backslash are not checked,
    except that no line after the first may start a definition (`def`, `class`, a decorator)
    at the block's indentation or less: a docstring that never closes ends there too.
    """
    lines = (line_prefix + text).split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if first == len(lines):
        return len(text)
    base = _indent(lines[first])
    opens_block = lines[first].rstrip().endswith(BLOCK_OPENERS)
    start = -len(line_prefix)  # index in text of the current line's start
    for i, line in enumerate(lines):
        if i > first and _NEW_DEFINITION.match(line.lstrip()) and _indent(line) <= base:
            return start - 1  # never into a new function or class, not even from a string
        checked = i > first and line.strip() and not continued[i]
        if checked and not lines[i - 1].endswith("\\"):
            indent = _indent(line)
            if indent < base or (opens_block and indent == base):
                return start + len(line) if _closes_only(line) else start - 1
        start += len(line) + 1
    return len(text)


# ---- text that repeats what follows the cursor


def _drop_repeated_lines(text: str, line_prefix: str, following: str, syntax: Syntax) -> str:
    """Drop the suggestion's last lines when they re-type the lines after the cursor's line,
    blank lines and trailing spaces aside. On a blank cursor line the whole suggestion may be
    dropped; a suggestion that leaves lines before the repetition may stop partway through
    the last repeated line."""
    lines = text.split("\n")
    full = [line_prefix + lines[0], *lines[1:]]  # as they will read in the document
    wanted = [line.rstrip() for line in following.split("\n") if line.strip()]
    for cut in range(0 if not line_prefix.strip() else 1, len(lines)):
        tail = [line.rstrip() for line in full[cut:] if line.strip()]
        if not tail or len(tail) > len(wanted) or tail[:-1] != wanted[: len(tail) - 1]:
            continue
        last = wanted[len(tail) - 1]
        if last == tail[-1] or (cut > 0 and last.startswith(tail[-1])):
            kept = "\n".join(lines[:cut])
            if unbalance("\n".join(lines[cut:]), syntax)[0] and unbalance(kept, syntax)[1]:
                continue  # the tail closes what the kept lines opened: not a repetition
            return kept
    return text


def _cut_before_rest(text: str, rest: str) -> str:
    """Mid-line, the suggestion up to where it starts re-typing the rest of the line
    (`open(|filename, mode)` suggesting `filename)`): where it agrees with that rest on its
    first RETYPED_REST_CHARS characters (all of them when it is shorter), a letter or digit
    among them, and starts a word there when the rest starts with one."""
    rest = rest.rstrip()
    needed = min(len(rest), RETYPED_REST_CHARS)
    if not needed or not any(char.isalnum() for char in rest[:needed]):
        return text
    word_start = rest[0].isalnum() or rest[0] == "_"
    for at in range(len(text) - needed + 1):
        if text[at : at + needed] != rest[:needed]:
            continue
        if word_start and at and (text[at - 1].isalnum() or text[at - 1] == "_"):
            continue
        return text[:at]
    return text


def _drop_repeated_rest(text: str, rest: str) -> str:
    """Drop the end of the suggestion that re-types the start of the rest of the cursor's line,
    when that holds more than closers and spaces (closers are left to the bracket rules)."""
    text = text.rstrip(" \t")
    last_line = text.rpartition("\n")[2]
    for size in range(min(len(last_line), len(rest)), 0, -1):
        if last_line.endswith(rest[:size]) and not set(rest[:size]) <= LINE_END_CHARS:
            return text[:-size]
    return text


def _trim_end(text: str, rest: str, line_prefix: str) -> str:
    """Without trailing whitespace. When closers follow the cursor and the suggestion moved to
    new lines, end on a new line at the cursor line's indentation, where Enter puts closers."""
    body = text.rstrip()
    moved = text.startswith("\n") or "\n" in text[len(body) :]
    if rest.strip() and "\n" in body and moved:
        return body + "\n" + line_prefix[: len(line_prefix) - len(line_prefix.lstrip(" \t"))]
    return body


# ---- the whole


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _line_ending(prefix: str, suffix: str) -> str:
    """The line break ending the line before the cursor, else the first one after it."""
    found = re.search(r"(\r\n|\r|\n)[^\r\n]*\Z", prefix[-SCAN_CHARS:]) or re.search(
        r"(\r\n|\r|\n)", suffix[:SCAN_CHARS]
    )
    return found.group(1) if found else "\n"


def postprocess(generated: str, prefix: str, suffix: str, language_id: str = "python") -> str:
    """The suggestion to show for `generated` between the document's `prefix` and `suffix`
    (text before and after the cursor), in the document's line endings; "" for nothing."""
    syntax = syntax_for(language_id)
    before, after = _normalise(prefix[-SCAN_CHARS:]), _normalise(suffix[:SCAN_CHARS])
    line_prefix, (rest, _, following) = before.rpartition("\n")[2], after.partition("\n")
    single_line = wants_single_line(after)
    text = _normalise(generated)
    if single_line:
        text = _cut_before_rest(text.partition("\n")[0], rest)
    elif not line_prefix.strip() and not rest.strip() and text.lstrip(" \t").startswith("\n"):
        return ""  # it would leave the empty line the cursor is on empty: not for this line
    cut, continued = _scan(text, _cursor(before, after, syntax), syntax)
    text = text[:cut]
    if not single_line:
        text = text[: _block_end(text, line_prefix, continued)]
        text = _drop_repeated_lines(text, line_prefix, following, syntax)
    text = _trim_end(_drop_repeated_rest(text, rest), rest, line_prefix)
    if not text.replace(syntax.line_comment, "").strip():
        return ""  # nothing, or only empty comments: nothing worth a keystroke
    return text.replace("\n", _line_ending(prefix, suffix))
