"""Stop rules applied to the text a generation has produced so far: whole characters only,
stop strings, and one line when the cursor is mid-line."""

from __future__ import annotations

from collections.abc import Sequence


def whole_characters(data: bytes) -> str:
    """UTF-8 text of `data` without an incomplete character at its end."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def cut_at_stops(text: str, stops: Sequence[str], single_line: bool) -> tuple[str, str]:
    """`text` up to the first stop string (or line break, when one line is wanted), and
    which kind of stop cut it ("" when none did)."""
    cut, why = len(text), ""
    for stop in stops:
        at = text.find(stop)
        if 0 <= at < cut:
            cut, why = at, "stop"
    if single_line:
        breaks = [at for at in (text.find("\n"), text.find("\r")) if at >= 0]
        if breaks and min(breaks) < cut:
            cut, why = min(breaks), "newline"
    return text[:cut], why
