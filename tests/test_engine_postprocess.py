"""Post-processing of raw generations: line mode, block ends by indentation, bracket balance,
text that repeats what follows the cursor, trailing whitespace and line endings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_server.engine.postprocess import C_LIKE, PYTHON, postprocess, syntax_for, wants_single_line

CURSOR = "█"


def complete(document: str, generated: str, language_id: str = "python") -> str:
    """postprocess for a document written with █ where the cursor is."""
    prefix, suffix = document.split(CURSOR)
    return postprocess(generated, prefix, suffix, language_id)


# ---- single-line mid-line, multi-line at a line end


@pytest.mark.parametrize("rest", ["", "   ", ")", "})", ");", "],", "\t)\n    more()"])
def test_only_closers_after_cursor_leave_room_for_a_block(rest: str):
    assert not wants_single_line(rest + "\nnext_line()")


@pytest.mark.parametrize("rest", ["x)", ", flag=True)", '")', " + 1", "):"])
def test_code_after_cursor_on_its_line_wants_a_single_line(rest: str):
    assert wants_single_line(rest + "\r\nnext_line()")


def test_mid_line_call_args_keep_first_line_and_stop_before_existing_closer():
    document = "def f():\n    result = compute(█, flag=True)\n    return result\n"
    assert complete(document, "x, y), flag=True)\n    print(result)\n") == "x, y"


def test_mid_line_generation_starting_on_a_new_line_gives_nothing():
    assert complete("x = foo(█a)\n", "\n    b") == ""


def test_after_def_line_and_newline_suggests_the_body_only():
    document = "def add(a, b):\n    █\n\nprint(add(1, 2))\n"
    generated = "return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    assert complete(document, generated) == "return a + b"


def test_at_end_of_def_line_suggests_the_indented_body_on_new_lines():
    document = "def add(a, b):█\n\nprint(add(1, 2))\n"
    generated = "\n    total = a + b\n    return total\n\ndef sub(a, b):\n    return a - b\n"
    assert complete(document, generated) == "\n    total = a + b\n    return total"


def test_inside_if_block_stops_where_indentation_leaves_it():
    document = "def f(x):\n    if x > 0:\n        █\n    return x\n"
    generated = "y = x * 2\n        print(y)\n    return y\n"
    assert complete(document, generated) == "y = x * 2\n        print(y)"


def test_equally_indented_statements_continue_when_first_line_opens_no_block():
    document = "def f(x):\n    y = 1\n    █\n"
    generated = "z = y + x\n    w = z * 2\n    return w\n\nf(1)\n"
    assert complete(document, generated) == "z = y + x\n    w = z * 2\n    return w"


def test_suggestion_that_opens_a_block_ends_with_that_block():
    document = "def f(items):\n    █\n"
    generated = "for item in items:\n        print(item)\n    return len(items)\n"
    assert complete(document, generated) == "for item in items:\n        print(item)"


def test_lines_inside_brackets_the_suggestion_opened_are_continuations():
    document = "def f():\n    █\n"
    generated = "x = call(a,\nb)\n    return x\nprint(1)\n"
    assert complete(document, generated) == "x = call(a,\nb)\n    return x"


def test_docstring_lines_at_lower_indentation_are_kept():
    document = 'def f(x):\n    """█\n'
    generated = 'Doc.\n\nNot indented.\n    """\n    return x\ndef g():\n    pass\n'
    assert complete(document, generated) == 'Doc.\n\nNot indented.\n    """\n    return x'


def test_never_runs_into_a_new_function_even_from_an_open_docstring():
    document = "def f(x):\n    █\n"
    generated = '"""Return x.\n\ndef g(y):\n    return y\n'
    assert complete(document, generated) == '"""Return x.\n'.rstrip()
    document = "class A:\n    x = 1\n    █\n"
    generated = "y = 2\n\n    @property\n    def z(self):\n        return 3\n"
    assert complete(document, generated) == "y = 2"


def test_a_nested_definition_in_the_suggestion_is_kept():
    document = "class A:\n    █\n"
    generated = "def f(self):\n        def g():\n            pass\n        return g\n"
    assert complete(document, generated) == generated.rstrip()


def test_line_after_a_backslash_is_a_continuation():
    generated = "\n2\n    y = 3\nz = 4\n"
    assert complete("def f():\n    x = 1 + \\█\n", generated) == "\n2\n    y = 3"


def test_closing_line_at_lower_indentation_is_kept_as_the_last():
    document = "values = [█\n"
    generated = "\n    1,\n    2,\n]\nprint(values)\n"
    assert complete(document, generated) == "\n    1,\n    2,\n]"


def test_js_function_at_end_of_file_keeps_its_closing_brace_and_stops():
    document = "function inc(x) {█"
    generated = "\n  return x + 1;\n}\n\nfunction dec(x) {\n  return x - 1;\n}\n"
    assert complete(document, generated, "javascript") == "\n  return x + 1;\n}"


def test_js_empty_block_ends_on_a_new_line_before_the_existing_brace():
    document = "  function inc(x) {█}\n"
    generated = "\n    return x + 1;\n  }\n"
    assert complete(document, generated, "javascript") == "\n    return x + 1;\n  "


def test_call_args_on_new_lines_end_where_enter_puts_the_closer():
    document = "    foo(█)\n"
    generated = "\n        a,\n        b,\n    )\n    bar()\n"
    assert complete(document, generated) == "\n        a,\n        b,\n    "


# ---- brackets


def test_closer_of_a_bracket_the_suffix_already_closes_is_cut():
    assert complete("print(█)\n", "len(items))\n") == "len(items)"


def test_closer_of_a_bracket_the_suffix_does_not_close_is_kept():
    assert complete("total = sum(█", "values)\nprint(total)\n") == "values)\nprint(total)"


def test_closer_matching_nothing_open_stops_the_suggestion():
    assert complete("x = 1\n█", "print(x))\ny = 2\n") == "print(x)"


def test_closer_of_the_wrong_kind_stops_the_suggestion():
    assert complete("x = [1, 2█\n", ", 3)\n") == ", 3"


def test_brackets_inside_strings_and_comments_are_not_counted():
    generated = "x, \")\", '('  # ) [\n"
    assert complete("foo(█", generated) == generated.rstrip()


def test_line_comment_ends_with_its_line():
    assert complete("x = foo(█)\n", "a,  # first (\n    b)\n") == "a,  # first (\n    b"


def test_cursor_inside_a_string_knows_its_quote_closes_first():
    assert complete('print("Hello, █")\n', 'world")\n') == "world"


def test_js_block_comment_and_template_literal_hide_brackets():
    generated = "`a ${b} )` /* ) } */ + c);\nnext();\n"
    assert complete("log(█);\n", generated, "javascript") == "`a ${b} )` /* ) } */ + c"


def test_js_closing_brace_of_enclosing_function_is_not_repeated():
    document = "function f(a) {\n  if (a) {\n    █\n  }\n  return a;\n}\n"
    generated = "a += 1;\n  }\n  return a;\n}\n"
    assert complete(document, generated, "javascript") == "a += 1;"


# ---- text that repeats the suffix


def test_trailing_lines_repeating_the_suffix_are_dropped():
    document = "def f(x):\n    total = 0\n    █\n    return total\n"
    generated = "total += x\n    total *= 2\n    return total\n"
    assert complete(document, generated) == "total += x\n    total *= 2"


def test_repetition_cut_short_and_blank_lines_still_count():
    document = "def f(x):\n    total = 0\n    █\n\n    return total\n"
    generated = "total += x\n\n    return tot"
    assert complete(document, generated) == "total += x"


def test_suggestion_that_is_the_next_line_again_gives_nothing():
    document = "def f(x):\n    █\n    return x\n"
    assert complete(document, "return x\n") == ""
    assert complete(document, "return") == "return"  # may go on differently: kept


def test_repeated_rest_of_line_is_dropped_mid_line():
    assert complete("x = █ + 1\n", "a + 1\n") == "a"
    assert complete("def █(x):\n", "square(x):\n") == "square"


def test_mid_line_suggestion_never_retypes_the_text_after_the_cursor():
    # The issue's `open(filename)filename, mode)`: the suggestion starts re-typing the rest.
    assert complete("f = open(█filename, mode)\n", "filename)\n") == ""
    assert complete("f = open(█filename, mode)\n", "path + filename, mode)") == "path +"
    assert complete("x = max(█x)\n", "y, x)") == "y,"  # a short rest counts whole


def test_mid_line_suggestion_may_hold_a_word_that_starts_the_rest():
    assert complete("f(█self.x)\n", "self.y + ") == "self.y +"  # `self.` alone is no retype
    assert complete("x = f(█value)\n", "max_value, ") == "max_value,"  # not at a word start


def test_closer_repeating_suffix_stays_when_the_suggestion_opened_it():
    assert complete("foo(█)\n", "bar())\n") == "bar()"


def test_last_line_closing_what_the_suggestion_opened_is_not_taken_for_repetition():
    document = "matrix = [\n    [1, 2],\n    █\n]\n"
    generated = "[\n        3, 4,\n]"
    assert complete(document, generated) == "[\n        3, 4,\n]"


# ---- whitespace, line endings, nothing left


def test_trailing_whitespace_lines_are_stripped():
    assert complete("def f():\n    █\n", "return 1  \n\n   \n") == "return 1"


def test_a_suggestion_that_leaves_the_cursors_empty_line_empty_gives_nothing():
    assert complete("import os\n█\nx = 1\n", "\n\nclass A:\n    pass\n") == ""
    assert complete("def f():\n    █\n", "  \n    return 1") == ""
    assert complete("def f():█\n", "\n    return 1") == "\n    return 1"  # after code: kept


def test_empty_comments_alone_give_nothing():
    assert complete("def f():\n    █\n", "#\n    #\n") == ""
    assert complete("def f():\n    █\n", "# why\n") == "# why"


def test_whitespace_only_generation_gives_nothing():
    assert complete("x = 1█\n", "\n\n   \n") == ""


def test_suggestion_uses_the_documents_crlf_line_endings():
    document = "def f(x):\r\n    if x:\r\n        █\r\n    return x\r\n"
    generated = "y = 1\r\n        z = 2\n    return y\n"
    assert complete(document, generated) == "y = 1\r\n        z = 2"


def test_syntax_follows_language_id():
    assert syntax_for("python") is PYTHON and syntax_for("ruby") is PYTHON
    assert syntax_for("typescript") is C_LIKE and syntax_for("") is C_LIKE
    # `//` is division in Python and `#` starts no comment in JS
    assert complete("x = f(█", "a // 2)\n") == "a // 2)"
    assert complete("x = f(█", "a) # )\n", "javascript") == "a) #"


def test_lone_cr_documents_get_cr_line_endings():
    assert complete("if x:\r    █\ry = 1\r", "a = 1\n    b = 2\n") == "a = 1\r    b = 2"


code_text = st.lists(
    st.sampled_from(["x", " ", "    ", "\n", "\r\n", "(", ")", "[", "]", "{", "}", ":", "'",
                     '"', '"""', "#", "//", "/*", "*/", "`", "\\", "😀", "\ud800", ";", ","]),
    max_size=25,
).map("".join)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    generated=code_text,
    prefix=code_text,
    suffix=code_text,
    language_id=st.sampled_from(["python", "javascript"]),
)
def test_suggestion_is_a_cut_of_the_generation_for_any_input(
    generated: str, prefix: str, suffix: str, language_id: str
):
    result = postprocess(generated, prefix, suffix, language_id)
    one_break = generated.replace("\r\n", "\n").replace("\r", "\n")
    assert one_break.startswith(result.replace("\r\n", "\n").replace("\r", "\n").rstrip())
