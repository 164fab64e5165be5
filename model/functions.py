"""The functions of a Python source file as the bug head reads them (top-level functions and
methods, dedented, with the file's text before them): its training data and its input alike."""

from __future__ import annotations

import ast
import itertools
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

# Longer lines are data tables and generated code, not functions people write and misedit.
MAX_LINE_CHARS = 200

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


class Source(Protocol):
    """A file's relative path and text (model.train.data.SourceFile is one)."""

    @property
    def path(self) -> str: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Function:
    """One function of a source file, dedented to column 0, with the file's text before it."""

    path: str
    name: str
    text: str
    context: str


def extract_functions(files: Sequence[Source], min_lines: int = 4, max_lines: int = 60
                      ) -> list[Function]:
    """Top-level functions and methods (nested functions stay in their parent's text), in file
    order, without placeholders and without functions outside [min_lines, max_lines] lines."""
    return [fn for file in files for fn in functions_of(file.text, file.path, min_lines, max_lines)]


def functions_of(text: str, path: str = "", min_lines: int = 4, max_lines: int = 60
                 ) -> list[Function]:
    """extract_functions for one file's text; nothing when the text does not parse."""
    tree = parse_quietly(text)
    if tree is None:
        log.debug("skipping %s: does not parse", path)
        return []
    lines = text.split("\n")
    starts = line_starts(lines)
    functions = []
    for name, node in definitions(tree.body, ""):
        first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        last = end_position(node)[0]
        if not min_lines <= last - first <= max_lines or is_placeholder(node):
            continue
        body = dedent(lines[first:last])
        if max(map(len, body.split("\n"))) <= MAX_LINE_CHARS and parse_quietly(body):
            functions.append(Function(path, name, body, text[: starts[first]]))
    return functions


def parse_quietly(text: str) -> ast.Module | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes and `is` with a literal still parse
        try:
            return ast.parse(text)
        except (SyntaxError, ValueError):
            return None


def line_starts(lines: Sequence[str]) -> list[int]:
    """Character offset of each line of "\\n".join(lines)."""
    return list(itertools.accumulate((len(line) + 1 for line in lines[:-1]), initial=0))


def definitions(body: list[ast.stmt], prefix: str
                ) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of the functions defined in body, in classes, and in conditional
    blocks at these levels, but not inside other functions."""
    for stmt in body:
        if isinstance(stmt, FUNCTIONS):
            yield prefix + stmt.name, stmt
        elif isinstance(stmt, ast.ClassDef):
            yield from definitions(stmt.body, f"{prefix}{stmt.name}.")
        else:
            for block in blocks(stmt):
                yield from definitions(block, prefix)


def blocks(stmt: ast.stmt) -> Iterator[list[ast.stmt]]:
    """The statement lists directly inside a compound statement."""
    for field in ("body", "orelse", "finalbody"):
        block = getattr(stmt, field, None)
        if isinstance(block, list):
            yield block
    for handler in getattr(stmt, "handlers", ()):
        yield handler.body
    for case in getattr(stmt, "cases", ()):
        yield case.body


def is_placeholder(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the body is only a docstring, `pass`, `...` or `raise NotImplementedError`."""
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return all(is_placeholder_statement(stmt) for stmt in body)


def is_placeholder_statement(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return stmt.value.value is Ellipsis
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        raised = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(raised, ast.Name) and raised.id == "NotImplementedError"
    return False


def dedent(lines: list[str]) -> str:
    """Remove the first line's indentation from every line that has it; other lines (inside
    multi-line strings, or blank) stay as they are, so the text still parses."""
    indent = lines[0][:len(lines[0]) - len(lines[0].lstrip(" \t"))]
    return "\n".join(line[len(indent):] if line.startswith(indent) else line
                     for line in lines) + "\n"


def end_position(node: ast.expr | ast.stmt) -> tuple[int, int]:
    if node.end_lineno is None or node.end_col_offset is None:
        raise ValueError(f"{type(node).__name__} at line {node.lineno} has no end position")
    return node.end_lineno, node.end_col_offset
