"""Stop rules on generated text: loops a weak model falls into, and where a generation cut by
the token or time budget may end (never inside the word or expression it was writing)."""

from __future__ import annotations

import pytest

from lsp_server.engine.stops import clean_end, cut_at_stops, loop_start

# ---- loops


@pytest.mark.parametrize("text", [
    "if obj is obj is obj:",
    "return self._get_set_set_set",
    "def _format(code, name, name, name, name",
    "x = a.b(c) a.b(c) more",
    "the number of the number of things",
    "x = 1 << 1 << 1 << 1 << 1 << 1 << 1 << 1 << 1",
    "'T': 'MT': 'MT': 'MT': 'MT'",
])
def test_a_line_that_loops_is_cut_at_its_start(text: str) -> None:
    assert loop_start(text) == 0
    assert loop_start("y = 2\n" + text) == len("y = 2\n")


@pytest.mark.parametrize("text", [
    "x = [0, 0, 0, 0]",
    'print("%s, %s, %s" % args)',
    "MASK = 0xFFFFFFFFFFFFFFFF",
    "# ==================================",
    "def __init__(self, name, value):",
    "a = 1\n)\n)\n)\n)\n)",  # closers of nested calls
    "x = 1\ny = 2\nx = 1",  # a line again, but not right after itself
    "self.x = x\nself.y = y",
])
def test_ordinary_code_does_not_loop(text: str) -> None:
    assert loop_start(text) is None


def test_a_repeated_line_keeps_its_first_copy() -> None:
    text = "x = 1\n    self._hour = None\n    self._hour = None\n    self._hour = None"
    assert text[: loop_start(text)] == "x = 1\n    self._hour = None\n"


def test_a_repeated_group_of_lines_keeps_its_first_copy() -> None:
    text = "a = 0\nif lo == 1:\n    lo = lo + 1\nif lo == 1:\n    lo = lo + 1\n"
    assert text[: loop_start(text)] == "a = 0\nif lo == 1:\n    lo = lo + 1\n"


def test_the_first_line_is_compared_with_the_cursor_lines_text_before_it() -> None:
    # `import` + ` sys\nimport sys`: the second line repeats the whole first one.
    assert loop_start(" sys\nimport sys", "import") == len(" sys\n")
    assert cut_at_stops(" sys\nimport sys\n", (), False, "import") == (" sys\n", "repetition")
    assert loop_start(" sys\nimport os", "import") is None
    assert loop_start(" sys\nsys", "import") is None  # the line is `import sys`, not `sys`


def test_lines_without_letters_loop_only_at_four_copies() -> None:
    assert loop_start("x\n#\n#\n#") is None
    text = "x\n#\n#\n#\n#\n#"
    assert text[: loop_start(text)] == "x\n#\n"


def test_cut_at_stops_names_a_loop_as_repetition() -> None:
    assert cut_at_stops("x = 1\nimport sys\nimport sys\n", (), False) == \
        ("x = 1\nimport sys\n", "repetition")
    assert cut_at_stops("x = 1\ny = 2", (), False) == ("x = 1\ny = 2", "")
    # A stop string before the loop wins; one line mid-line hides a loop on later lines.
    assert cut_at_stops("a;;b b b b b b b", (";;",), False) == ("a", "stop")
    assert cut_at_stops("ab\nname, name, name, name", (), True) == ("ab", "newline")


# ---- the end of a generation cut by a budget


@pytest.mark.parametrize(("text", "kept"), [
    ("i+1 = i+", "i+1 = i"),  # the issue's `i+1 = i+`: the operator goes
    ("return self._get_se", "return self"),  # the word may have gone on
    ("x = call(a,\n    b)\n    y = (", "x = call(a,\n    b)"),  # back to a finished line
    ("a = 1\nb = [\n    c,\n    d", "a = 1"),  # over lines that end in an opener or a comma
    ('raise ValueError("out of', "raise ValueError"),  # not inside a string
    ("x = 'a' + b", "x = 'a'"),
    ("y = 2\n# a comment.\nz = x +", "y = 2\n# a comment."),  # a comment's dot is no operator
    ("if hasattr(t\n        return x", "if hasattr"),  # a line that leaves its bracket open
    ("x = f(a)\ny = g(\n    b,", "x = f(a)"),
    ("    for item in", "    for item"),  # `in` may have been the start of `index`
    ("foo(", "foo"),
    ("(", ""),  # nothing clean is left
])
def test_a_budget_cut_ends_on_a_clean_boundary(text: str, kept: str) -> None:
    assert clean_end(text) == kept


def test_inside_a_string_the_cursor_is_in_the_words_go_on() -> None:
    assert clean_end("secret and more wor", 'KEY = "AKIA') == "secret and more"
    assert clean_end('abc" + x(\n', 'KEY = "') == 'abc" + x'  # `x` was followed by `(`


def test_a_string_opened_after_the_cursors_string_closes_is_cut() -> None:
    # Seen on requests' status_codes.py: the cursor's string closed, a new one opened and left.
    before = '    205: ("reset_content", "reset'
    assert clean_end('e", "', before) == 'e"'
    assert clean_end('e", "reset_con', before) == 'e"'
    assert clean_end("it's a", 'x = "') == "it's"  # another quote inside the open string


def test_the_cursor_lines_prefix_judges_the_first_line() -> None:
    # The string the first line closes was opened before the cursor.
    assert clean_end('abc", y\nz = (', 'f("') == 'abc", y'
    assert clean_end('abc", y\nz = (') == ""
