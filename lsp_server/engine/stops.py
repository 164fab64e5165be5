"""Stop rules applied to the text a generation has produced so far: whole characters only,
stop strings, one line when the cursor is mid-line, loops; and where a generation cut by a
budget ends cleanly."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .postprocess import PYTHON, Syntax, unbalance


def whole_characters(data: bytes) -> str:
    """UTF-8 text of `data` without an incomplete character at its end."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def cut_at_stops(text: str, stops: Sequence[str], single_line: bool, line_prefix: str = ""
                 ) -> tuple[str, str]:
    """`text` up to the first stop string (or line break, when one line is wanted) and the
    start of a loop, and which kind of stop cut it ("" when none did). `line_prefix`: the
    text before the cursor on its line, which the first line of `text` completes."""
    cut, why = len(text), ""
    for stop in stops:
        at = text.find(stop)
        if 0 <= at < cut:
            cut, why = at, "stop"
    if single_line:
        breaks = [at for at in (text.find("\n"), text.find("\r")) if at >= 0]
        if breaks and min(breaks) < cut:
            cut, why = min(breaks), "newline"
    looping = loop_start(text[:cut].replace("\r", "\n"), line_prefix)
    if looping is not None:
        cut, why = looping, "repetition"
    return text[:cut], why


# ---- loops: a weak model's greedy decoding falls into them (`name, name, name`,
# `self._get_set_set_set`, the same line again and again)

# A piece of two different characters or more (`FFFF` and `====` are no loop) repeated in a
# row on one line: three times when it holds two letters (or one, in five characters or
# more), twice when it holds two words, eight times otherwise (`, 1`).
_TRIPLED = re.compile(r"(?P<unit>[^\n]{2,24}?)(?P=unit){2}")
_DOUBLED = re.compile(r"(?P<unit>[^\n]{6,40}?)(?P=unit)")
_EIGHTFOLD = re.compile(r"(?P<unit>[^\n]{2,12}?)(?P=unit){7}")
_WORD = re.compile(r"[A-Za-z_]\w*")
_LETTER = re.compile(r"[A-Za-z]")
LOOP_LINES = 4  # the longest group of lines whose repetition counts as a loop
# Lines without two letters (`#`, `)`) loop when their group comes four times in a row,
# unless they only close brackets.
_CLOSERS_ONLY = re.compile(r"[)\]},;:\s]*")


def _loops_on_line(line: str) -> bool:
    for found in _TRIPLED.finditer(line):
        unit = found.group("unit")
        letters = len(_LETTER.findall(unit))
        if len(set(unit)) >= 2 and (letters >= 2 or (letters and len(unit) >= 5)):
            return True
    if any(len(_WORD.findall(m.group("unit"))) >= 2 for m in _DOUBLED.finditer(line)):
        return True
    return any(len(set(m.group("unit"))) >= 2 for m in _EIGHTFOLD.finditer(line))


def _repeated_copies(stripped: list[str], number: int, size: int) -> int:
    """How many copies of the `size` lines ending at `number` stand in a row, counting them,
    when that makes a loop (two, or four for lines without two letters); else 0."""
    group = stripped[number - size + 1 : number + 1]
    lettered = len(_LETTER.findall("".join(group))) >= 2
    copies = 2 if lettered else 4
    if number + 1 < copies * size or (not lettered and all(
            _CLOSERS_ONLY.fullmatch(line) for line in group)):
        return 0
    earlier = (stripped[number - (k + 1) * size + 1 : number - k * size + 1]
               for k in range(1, copies))
    return copies if all(lines == group for lines in earlier) else 0


def loop_start(text: str, line_prefix: str = "") -> int | None:
    """Where `text` starts to loop, or None: the start of the first line holding a piece
    repeated in a row, or the start of the second copy of a group of up to LOOP_LINES lines
    repeating the lines just before it (compared without indentation; the first line with
    `line_prefix`, the cursor line's text before it: `import` + ` sys\nimport sys`)."""
    starts = [0] + [at + 1 for at, char in enumerate(text) if char == "\n"]
    lines = text.split("\n")
    stripped = [line.strip() for line in lines]
    stripped[0] = (line_prefix + lines[0]).strip()
    for number, (start, line) in enumerate(zip(starts, lines, strict=True)):
        if _loops_on_line(line):
            return start
        for size in range(1, LOOP_LINES + 1):
            copies = _repeated_copies(stripped, number, size)
            if copies:
                return starts[number - (copies - 1) * size + 1]
    return None


# ---- a generation cut by a budget ends on a clean boundary

# The end of a line that goes on: an operator, an opening bracket, a dot, a comma, a
# backslash, or a keyword that needs what follows it.
_GOES_ON = re.compile(
    r"(?:[-+*/%@&|^~<>=!.,\\([{]|\b(?:and|or|not|in|is|if|elif|while|for|import|from|as|def"
    r"|class|lambda|with|assert|del|await|async|global|nonlocal))\s*\Z"
)
_OPEN_QUOTE = re.compile(r"""("|')(?:\\.|(?!\1)[^\\\n])*\Z""")  # a string open at the end


def _code(line: str) -> str:
    """The line with its closed strings as `s` and its docstring quotes gone."""
    code = re.sub(r'"""|\'\'\'', "", line)  # a docstring's line may open or close it
    return re.sub(r"""("|')(?:\\.|(?!\1)[^\\\n])*\1""", "s", code)


def _open_string(line: str) -> bool:
    return bool(_OPEN_QUOTE.search(_code(line).partition("#")[0]))


def _opens_a_string(line: str, before: str) -> bool:
    """Whether `line` leaves open a string that it opened itself: a string open before the
    cursor may stay open (the cursor is inside it), but once the line closes that one, a
    string it opens after is its own (`"reset` + `e", "` is cut short)."""
    opened = _OPEN_QUOTE.search(_code(before).partition("#")[0])
    if opened is None:
        return _open_string(before + line)
    closing = re.search(r"(?:\\.|[^\\" + opened.group(1) + r"\n])*" + opened.group(1), line)
    return closing is not None and _open_string(line[closing.end():])


def _clean_line_end(line: str, before: str = "") -> bool:
    """Whether a line (after `before`, its text before the cursor) ends a statement or a
    word: no operator, opening bracket or comma last, and no string it opened left open
    (a string open before the cursor may stay open)."""
    whole = before + line
    if _opens_a_string(line, before):
        return False
    code = _code(whole).partition("#")[0].rstrip()
    return not code or not _GOES_ON.search(code)


def clean_end(text: str, line_prefix: str = "", syntax: Syntax = PYTHON) -> str:
    """`text` (a generation stopped by a budget, not by the model) cut back to its last clean
    boundary: the end of its last line that ends a statement or a word (not an operator, an
    opening bracket, a comma or an open string) with every bracket it opened closed; on its
    first line alone, before the word it may have been writing and the operators before
    that. `line_prefix`: the text before the cursor on its line."""
    lines = text.split("\n")
    for end in range(len(lines) - 1, 0, -1):
        kept = lines[:end]
        before, last = (line_prefix, kept[0]) if end == 1 else ("", kept[-1])
        if (not (before + last).strip() or _clean_line_end(last, before)) and \
                not unbalance("\n".join(kept), syntax)[1]:
            return "\n".join(kept)
    line = lines[0]
    while line:
        line = re.sub(r"\w+\Z", "", line)  # the word may have gone on
        line = re.sub(r"[^\w)\]}'\"]+\Z", "", line)  # and the operators before it
        if _clean_line_end(line, line_prefix) and not unbalance(line, syntax)[1]:
            return line
        quote = _OPEN_QUOTE.search(line)
        line = line[: quote.start()] if quote else line[:-1]
    return ""
