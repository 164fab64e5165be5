"""The confidence gate: token log-probabilities mapped onto a suggestion's lines, a score per
line, hiding a suggestion the model was unsure of and cutting one where it became unsure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lsp_server.engine.confidence import (
    CALIBRATION_FILE,
    Scored,
    calibrated_threshold,
    gate,
    line_scores,
)
from model.checkpoint import DEFAULT_MODEL_DIR

SURE, UNSURE = math.log(0.9), math.log(0.05)


def scored(*tokens: tuple[str, float], skip: int = 0) -> Scored:
    return Scored.from_tokens([t.encode() for t, _ in tokens], [lp for _, lp in tokens], skip)


def test_tokens_are_placed_at_their_first_character() -> None:
    found = scored(("x", SURE), (" =", SURE), (" é", UNSURE), ("\n", SURE))
    assert found.text == "x = é\n"
    assert found.starts == (0, 1, 3, 5)


def test_retyped_bytes_are_left_out_and_a_token_across_them_starts_at_zero() -> None:
    # "    re" was already typed: the token "    ret" re-typed it and added "t".
    found = scored(("    ret", SURE), ("urn", UNSURE), (" x", SURE), skip=len("    re"))
    assert found.text == "turn x"
    assert found.starts == (0, 1, 4)
    assert found.logprobs == (SURE, UNSURE, SURE)


def test_a_token_count_that_does_not_match_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 tokens but 1 log-probabilities"):
        Scored.from_tokens([b"a", b"b"], [0.0], 0)


def test_a_line_score_weighs_its_least_likely_token() -> None:
    found = scored(("a", math.log(0.8)), (" b", math.log(0.2)))
    # geometric mean 0.4, least likely 0.2: sqrt(0.4 * 0.2)
    assert found.span_score(0, 3) == pytest.approx(math.sqrt(0.4 * 0.2))
    assert found.span_score(3, 9) is None


def test_each_line_owns_the_break_before_it() -> None:
    found = scored(("x = 1", SURE), ("\n    ", UNSURE), ("y", SURE))
    scores = line_scores(found, found.text)
    assert scores[0] == pytest.approx(0.9)
    assert scores[1] == pytest.approx(math.sqrt(math.sqrt(0.05 * 0.9) * 0.05))


def test_an_unsure_first_line_hides_the_suggestion() -> None:
    found = scored(("foo", UNSURE), ("(", SURE), ("x", SURE), (")", SURE))
    text, score = gate("foo(x)", found, 0.4)
    assert text == "" and score is not None and score < 0.4
    assert gate("foo(x)", found, 0.0)[0] == "foo(x)"  # threshold 0: the gate is off


def test_an_unsure_later_line_cuts_the_suggestion_before_it() -> None:
    found = scored(("a = 1", SURE), ("\n", SURE), ("b = 2", SURE), ("\n", SURE),
                   ("zz", UNSURE), ("\n", SURE), ("c = 3", SURE))
    assert gate(found.text, found, 0.5) == ("a = 1\nb = 2", pytest.approx(0.9))


def test_the_suggestion_may_be_a_cut_of_the_generation() -> None:
    found = scored(("a = 1", SURE), ("\n", SURE), ("b", UNSURE), (" = 2", UNSURE))
    assert gate("a = 1", found, 0.5) == ("a = 1", pytest.approx(0.9))


def test_leading_line_breaks_are_judged_with_the_first_line_after_them() -> None:
    found = scored(("\n    ", SURE), ("zz", UNSURE))
    assert gate("\n    zz", found, 0.5)[0] == ""
    found = scored(("\n    ", SURE), ("return", SURE))
    assert gate("\n    return", found, 0.5)[0] == "\n    return"


def test_the_calibrated_threshold_lives_beside_the_weights(tmp_path: Path) -> None:
    """The packaged model's, found by its folder however the options name it; a checkpoint
    without one is not gated; a broken one is an error naming the file."""
    assert 0 < calibrated_threshold(DEFAULT_MODEL_DIR) < 1
    assert calibrated_threshold(tmp_path) == 0.0
    (tmp_path / CALIBRATION_FILE).write_text('{"min_confidence": 1.5}')
    with pytest.raises(ValueError, match=r"calibration\.json: min_confidence must be"):
        calibrated_threshold(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{")
    with pytest.raises(ValueError, match="no readable min_confidence"):
        calibrated_threshold(tmp_path)
