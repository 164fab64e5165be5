"""How sure the model was of a suggestion, from its own token log-probabilities: a score per
line in [0, 1], which hides a suggestion whose first line falls below a threshold and cuts one
at the first later line that does."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# A checkpoint's calibrated minConfidence lives beside its weights, in this file
# ({"min_confidence": x}, written from tests/bench/calibrate_confidence.py, on packages held
# apart from the acceptance harness' evaluation places). A model without one is not gated:
# its probabilities mean something else.
CALIBRATION_FILE = "calibration.json"


def calibrated_threshold(folder: Path) -> float:
    """The minConfidence calibrated for the checkpoint in `folder`, else 0 (no gate)."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return 0.0
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["min_confidence"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: no readable min_confidence ({exc})") from None
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: min_confidence must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Scored:
    """A generation's text and, for each of its tokens, where it starts in the text (a
    character offset) and its log-probability."""

    text: str
    starts: tuple[int, ...]
    logprobs: tuple[float, ...]

    @classmethod
    def from_tokens(cls, pieces: Sequence[bytes], logprobs: Sequence[float],
                    skip: int = 0) -> Scored:
        """From the tokens' bytes and log-probabilities, leaving out the first `skip` bytes
        (text the tokens re-typed, already in the document). A token that starts inside the
        skipped bytes or inside a character counts from the next character."""
        if len(pieces) != len(logprobs):
            raise ValueError(f"{len(pieces)} tokens but {len(logprobs)} log-probabilities")
        data = b"".join(pieces)[skip:]
        text = data.decode("utf-8", errors="ignore")
        starts: list[int] = []
        kept: list[float] = []
        offset = -skip
        for piece, logprob in zip(pieces, logprobs, strict=True):
            if offset + len(piece) > 0:
                start = max(offset, 0)
                starts.append(len(data[:start].decode("utf-8", errors="ignore")))
                kept.append(logprob)
            offset += len(piece)
        return cls(text, tuple(starts), tuple(kept))

    def span_score(self, start: int, end: int) -> float | None:
        """The score of the tokens that start in [start, end) (None when none does): the
        geometric mean of their geometric mean probability and the probability of the least
        likely of them, so that one token the model guessed weighs more than in a plain mean
        (on the calibration places this hides fewer right lines for as much junk)."""
        chosen = [lp for s, lp in zip(self.starts, self.logprobs, strict=True)
                  if start <= s < end]
        if not chosen:
            return None
        return math.exp((sum(chosen) / len(chosen) + min(chosen)) / 2)


def line_scores(scored: Scored, text: str) -> list[float | None]:
    """The score of each line of `text` (a suggestion cut from scored.text: it agrees with it
    up to where it was cut), from the tokens starting on that line; a line's leading line
    break belongs to it, so a line made only of "\\n    " tokens still has a score."""
    scores: list[float | None] = []
    start = 0
    for number, line in enumerate(text.split("\n")):
        end = start + len(line)
        # The break before a line (start - 1) is that line's, not the previous one's.
        scores.append(scored.span_score(start - 1 if number else 0, end))
        start = end + 1
    return scores


def gate(text: str, scored: Scored, threshold: float) -> tuple[str, float | None]:
    """(text to show, its head's score), the head being its first line with a token of its
    own: "" when the head scores below `threshold`, else `text` cut before the first later
    line that does (a line without a token of its own is not judged)."""
    scores = line_scores(scored, text)
    head = next((n for n, score in enumerate(scores) if score is not None), None)
    if head is None:
        return text, None
    first = scores[head]
    assert first is not None
    if first < threshold:
        return "", first
    lines = text.split("\n")
    for number in range(head + 1, len(lines)):
        score = scores[number]
        if score is not None and score < threshold:
            return "\n".join(lines[:number]).rstrip(), first
    return text, first
