"""Seeded bug mutations: function extraction, the exact edit of each kind, and the properties
every mutant of real library code keeps (parses, means something else, one edit at its line)."""

from __future__ import annotations

import ast
import os
import random
import sysconfig
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from model.functions import Function, extract_functions
from model.train.data import SourceFile, read_source
from model.train.mutations import KINDS, Mutant, make_pairs, mutate

STDLIB_FILES = (
    "textwrap.py", "bisect.py", "heapq.py", "shlex.py", "fnmatch.py", "glob.py", "colorsys.py",
    "string.py", "copy.py", "base64.py", "posixpath.py", "json/decoder.py", "json/encoder.py",
    "reprlib.py", "sched.py", "quopri.py", "gettext.py", "fractions.py", "statistics.py",
    "difflib.py",
)


@pytest.fixture(scope="module")
def stdlib_files() -> list[SourceFile]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [read_source(root / name, root) for name in STDLIB_FILES if (root / name).is_file()]
    return [f for f in files if f is not None]


def function_named(source: str, name: str) -> Function:
    files = [SourceFile("example.py", textwrap.dedent(source))]
    return next(f for f in extract_functions(files, min_lines=1) if f.name == name)


def mutated_text(source: str, kind: str, seed: int = 0) -> str | None:
    fn = function_named(source, source.split("def ", 1)[1].split("(", 1)[0])
    mutant = mutate(fn, kind, random.Random(seed))
    return None if mutant is None else mutant.text


# ------------------------------------------------------------------------------ extraction

CLASS_SOURCE = '''\
import os


class Shape:
    """A shape."""

    @staticmethod
    # the decorator and this comment belong to the function
    def scaled(size, factor):
        def inner(v):
            return v * factor
        return inner(size)

    class Corner:
        def angle(self, other):
            return self.degrees - other.degrees

    def area(self):
        raise NotImplementedError

    def name(self):
        """The name."""


def top(a, b):
    return a + b
'''


def test_methods_are_dedented_and_qualified_and_stubs_skipped() -> None:
    functions = extract_functions([SourceFile("shape.py", CLASS_SOURCE)], min_lines=1)
    assert [f.name for f in functions] == ["Shape.scaled", "Shape.Corner.angle", "top"]
    scaled = functions[0]
    assert scaled.text == (
        "@staticmethod\n"
        "# the decorator and this comment belong to the function\n"
        "def scaled(size, factor):\n"
        "    def inner(v):\n"
        "        return v * factor\n"
        "    return inner(size)\n")
    assert scaled.context == CLASS_SOURCE[:CLASS_SOURCE.index("    @staticmethod")]
    assert scaled.path == "shape.py"
    assert functions[1].text == "def angle(self, other):\n    return self.degrees - other.degrees\n"


def test_extraction_bounds_function_length() -> None:
    files = [SourceFile("shape.py", CLASS_SOURCE)]
    assert [f.name for f in extract_functions(files)] == ["Shape.scaled"]  # 6 lines
    assert extract_functions(files, max_lines=5) == []


def test_less_indented_string_lines_are_kept_verbatim() -> None:
    source = (
        "class Tool:\n"
        "    def usage(self):\n"
        '        text = """\\\n'
        "Usage: tool [options]\n"
        "  -h  help\n"
        '"""\n'
        "        return text.strip()\n")
    (usage,) = extract_functions([SourceFile("tool.py", source)], min_lines=1)
    assert usage.text == (
        'def usage(self):\n    text = """\\\nUsage: tool [options]\n  -h  help\n"""\n'
        "    return text.strip()\n")


def test_files_that_do_not_parse_are_skipped() -> None:
    files = [SourceFile("bad.py", "def broken(:\n    pass\n"),
             SourceFile("good.py", "def ok(x):\n    return x\n")]
    assert [f.path for f in extract_functions(files, min_lines=1)] == ["good.py"]


# ------------------------------------------------------------------------------ each kind

EXACT_CASES = [
    ("swap_operator",
     "def area(w, h):\n    return w * h  # square units\n",
     "def area(w, h):\n    return w / h  # square units\n"),
    ("swap_operator",
     "def first(items, default):\n    if items is not None:\n        return items[0]\n"
     "    return default\n",
     "def first(items, default):\n    if items is None:\n        return items[0]\n"
     "    return default\n"),
    ("off_by_one",
     "def each(items):\n    for i in range(len(items)):\n        yield items[i]\n",
     "def each(items):\n    for i in range(len(items) - 1):\n        yield items[i]\n"),
    ("off_by_one",
     "def head(items):\n    return items[0]\n",
     "def head(items):\n    return items[1]\n"),
    ("wrong_variable",
     "def total(a):\n    if a:\n        b = 1\n    c = a + 2\n    return c\n",
     "def total(a):\n    if a:\n        b = 1\n    c = a + 2\n    return a\n"),
    ("invert_condition",
     "def both(a, b):\n    if a and b:\n        return 1\n    return 0\n",
     "def both(a, b):\n    if not (a and b):\n        return 1\n    return 0\n"),
    ("invert_condition",
     "def wait(ready):\n    if not ready:\n        sleep()\n",
     "def wait(ready):\n    if ready:\n        sleep()\n"),
    ("invert_condition",
     "def count(n):\n    i = 0\n    while i < n:\n        i += 1\n",
     "def count(n):\n    i = 0\n    while i >= n:\n        i += 1\n"),
    ("invert_condition",
     "def pick(flag):\n    return X if flag else Y\n",
     "def pick(flag):\n    return X if not flag else Y\n"),
    ("swap_arguments",
     "def split(a, b):\n    return divmod(a, b)\n",
     "def split(a, b):\n    return divmod(b, a)\n"),
    ("drop_return",
     "def double(x):\n    total = x * 2\n    return total\n",
     "def double(x):\n    total = x * 2\n"),
    ("drop_return",
     "def run(x):\n    return helper(x)  # delegate\n",
     "def run(x):\n    helper(x)  # delegate\n"),
]


@pytest.mark.parametrize("kind, source, expected", EXACT_CASES)
def test_each_kind_makes_the_expected_edit(kind: str, source: str, expected: str) -> None:
    assert mutated_text(source, kind) == expected


NO_SITE_CASES = [
    ("swap_operator", "def f(x):\n    return g(x)\n"),
    ("off_by_one", "def f(x):\n    return x + 1\n"),  # not a count, bound or index
    ("wrong_variable", "def f(x):\n    return len(x)\n"),  # no other local
    ("wrong_variable", "def f(self):\n    other = 1\n    return self.g(other)\n"),
    ("invert_condition", "def f(x):\n    while True:\n        x()\n"),
    ("swap_arguments", "def f(x):\n    return g(x, x) + max(x, 2)\n"),
    ("drop_return", "def f(x):\n    if x:\n        return None\n    g(x)\n"),
    ("drop_return", "def f(x):\n    if x:\n        return 1\n    g(x)\n"),  # would need `pass`
    ("drop_return", "def f(x):\n    def g():\n        return x\n    g()\n"),  # not f's return
]


@pytest.mark.parametrize("kind, source", NO_SITE_CASES)
def test_no_site_gives_none(kind: str, source: str) -> None:
    assert mutated_text(source, kind) is None


def test_off_by_one_reaches_every_alternative_at_a_site() -> None:
    source = "def after(items, i):\n    return items[i + 1]\n"
    texts = {mutated_text(source, "off_by_one", seed) for seed in range(30)}
    assert texts == {"def after(items, i):\n    return items[i + 2]\n",
                     "def after(items, i):\n    return items[i]\n"}


SCOPED_SOURCE = """\
def f(items, limit):
    if limit:
        extra = 1
    for item in items:
        print(item)
    try:
        import json
    except ImportError as error:
        raise ValueError(limit) from error
    return items
"""


def test_wrong_variable_only_uses_names_bound_on_every_path() -> None:
    fn = function_named(SCOPED_SOURCE, "f")
    lines = fn.text.split("\n")
    seen = set()
    for seed in range(200):
        mutant = mutate(fn, "wrong_variable", random.Random(seed))
        assert mutant is not None
        seen.add((mutant.line, mutant.text.split("\n")[mutant.line]))
        assert mutant.text.split("\n")[:mutant.line] == lines[:mutant.line]
    # `extra` (bound only if the `if` runs), `json` (only if the import succeeds) and `item`
    # outside its loop must never be swapped in.
    assert seen == {
        (1, "    if items:"),
        (3, "    for item in limit:"),
        (4, "        print(items)"),
        (4, "        print(limit)"),
        (8, "        raise ValueError(items) from error"),
        (8, "        raise ValueError(error) from error"),
        (8, "        raise ValueError(limit) from items"),
        (8, "        raise ValueError(limit) from limit"),
        (9, "    return limit"),
    }


@pytest.mark.parametrize("kind, expected", [
    ("swap_operator", {'    return "héllo, wörld → " * n - name[1:]'}),
    ("off_by_one", {'    return "héllo, wörld → " * n + name[2:]',
                    '    return "héllo, wörld → " * n + name[0:]'}),
])
def test_non_ascii_lines_are_edited_at_the_right_columns(kind: str, expected: set[str]) -> None:
    source = ('def greet(name, n):\n    """Grüße."""\n'
              '    return "héllo, wörld → " * n + name[1:]\n')
    texts = {mutated_text(source, kind, seed) for seed in range(20)}
    assert {text.split("\n")[2] for text in texts if text is not None} == expected


def test_unknown_kind_is_refused_by_name() -> None:
    fn = function_named("def f(x):\n    return x\n", "f")
    with pytest.raises(ValueError, match="'flip_bits'"):
        mutate(fn, "flip_bits", random.Random(0))


def test_text_that_is_not_one_function_is_refused() -> None:
    fn = Function("m.py", "f", "x = 1\n", "")
    with pytest.raises(ValueError, match="m.py: f"):
        mutate(fn, "swap_operator", random.Random(0))


# ------------------------------------------------------------------------------ real code

def assert_one_edit_at_its_line(mutant: Mutant) -> None:
    before, after = mutant.original.text, mutant.text
    assert ast.dump(ast.parse(after)) != ast.dump(ast.parse(before))
    prefix = len(os.path.commonprefix([before, after]))
    assert before.count("\n", 0, prefix) == mutant.line
    suffix = min(len(os.path.commonprefix([before[::-1], after[::-1]])),
                 min(len(before), len(after)) - prefix)
    changed = before[prefix:len(before) - suffix] + after[prefix:len(after) - suffix]
    if mutant.kind in ("swap_operator", "off_by_one", "wrong_variable"):
        assert "\n" not in changed


def swapped_in_name(mutant: Mutant) -> tuple[str, int]:
    """The name that wrong_variable put in, and the line (1-based) where it did."""
    old = [n for n in ast.walk(ast.parse(mutant.original.text)) if isinstance(n, ast.Name)]
    new = [n for n in ast.walk(ast.parse(mutant.text)) if isinstance(n, ast.Name)]
    ((name, line),) = [(b.id, b.lineno) for a, b in zip(old, new, strict=True) if a.id != b.id]
    return name, line


def bound_lines(text: str) -> dict[str, int]:
    """Each name the function binds (parameters at line 1) -> the first line binding it."""
    fn = ast.parse(text).body[0]
    assert isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
    bindings = [(a.arg, 1) for a in ast.walk(fn.args) if isinstance(a, ast.arg)]
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bindings.append((node.id, node.lineno))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bindings += [(alias.asname or alias.name.split(".")[0], node.lineno)
                         for alias in node.names]
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.ExceptHandler) and node.name:
            bindings.append((node.name, node.lineno))
    first: dict[str, int] = {}
    for name, line in bindings:
        first[name] = min(line, first.get(name, line))
    return first


def test_real_mutants_parse_differ_once_and_bind_their_names(stdlib_files: list[SourceFile]
                                                             ) -> None:
    functions = extract_functions(stdlib_files)
    assert len(functions) > 200
    assert all(ast.parse(f.text) and not f.text[0].isspace() for f in functions)
    pairs = make_pairs(stdlib_files, seed=0)
    for fn, mutant in pairs:
        assert_one_edit_at_its_line(mutant)
        if mutant.kind == "wrong_variable":
            name, line = swapped_in_name(mutant)
            assert bound_lines(fn.text).get(name, line + 1) <= line, (fn.name, name)
    counts = Counter(mutant.kind for _, mutant in pairs)
    assert min(counts[kind] for kind in KINDS) > 30, counts


def test_make_pairs_is_deterministic_and_balanced(stdlib_files: list[SourceFile]) -> None:
    files = stdlib_files[:8]
    pairs = make_pairs(files, seed=5)
    assert make_pairs(files, seed=5) == pairs
    assert make_pairs(files, seed=6) != pairs
    assert all(m.original is fn and m.kind in KINDS for fn, m in pairs)
    counts = Counter(m.kind for _, m in pairs)
    assert len(counts) == len(KINDS) and max(counts.values()) <= 2 * min(counts.values()), counts
    order = {(f.path, f.name, f.text): i for i, f in enumerate(extract_functions(files))}
    positions = [order[fn.path, fn.name, fn.text] for fn, _ in pairs]
    assert positions != sorted(positions)  # shuffled, not in file order


def test_make_pairs_gives_distinct_kinds_per_function(stdlib_files: list[SourceFile]) -> None:
    pairs = make_pairs(stdlib_files[:3], seed=1, per_function=3)
    by_function: dict[tuple[str, str, str], list[str]] = {}
    for fn, mutant in pairs:
        by_function.setdefault((fn.path, fn.name, fn.text), []).append(mutant.kind)
    assert max(len(kinds) for kinds in by_function.values()) == 3
    assert all(len(set(kinds)) == len(kinds) for kinds in by_function.values())
    with pytest.raises(ValueError, match="per_function"):
        make_pairs(stdlib_files[:1], seed=1, per_function=0)
