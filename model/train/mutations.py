"""Seeded bug mutations of real Python functions, paired with the unmutated originals: the
training and evaluation data of the "this function looks like a bug" classification head.

Sites are found with `ast`, but every mutation edits the original text at exact character
positions, so formatting and comments survive and the only difference is the bug itself.
"""

from __future__ import annotations

import ast
import bisect
import io
import itertools
import logging
import random
import re
import tokenize
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from ..functions import (
    FUNCTIONS,
    Function,
    blocks,
    end_position,
    extract_functions,
    line_starts,
    parse_quietly,
)
from .data import SourceFile

log = logging.getLogger(__name__)

KINDS = ("swap_operator", "off_by_one", "wrong_variable", "invert_condition", "swap_arguments",
         "drop_return")

DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
SCOPES = (*DEFINITIONS, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
ANNOTATION_FIELDS = frozenset({"annotation", "returns"})

# Operator as written -> the operator a slip of the keyboard or of the mind puts there instead.
BINARY_SWAPS: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
    ast.FloorDiv: ("//", "/"), ast.LShift: ("<<", ">>"), ast.RShift: (">>", "<<"),
    ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&"),
}
COMPARE_SWAPS: dict[type[ast.cmpop], tuple[str, str]] = {
    ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
    ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"),
    ast.IsNot: ("is not", "is"), ast.In: ("in", "not in"), ast.NotIn: ("not in", "in"),
}
# The logical negation of each comparison, for invert_condition.
COMPARE_NEGATIONS: dict[type[ast.cmpop], str] = {
    ast.Lt: ">=", ast.LtE: ">", ast.Gt: "<=", ast.GtE: "<", ast.Eq: "!=", ast.NotEq: "==",
    ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in",
}
BOOL_SWAPS: dict[type[ast.boolop], tuple[str, str]] = {ast.And: ("and", "or"),
                                                        ast.Or: ("or", "and")}
ORDERING_OPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
# `not` binds looser than these, so `not x` needs no parentheses around them.
TIGHT_EXPRESSIONS = (ast.Name, ast.Attribute, ast.Call, ast.Subscript)
# Calls whose argument order does not change what they do, or only changes printed output.
ORDER_FREE_CALLS = frozenset({"max", "min", "print"})
# A receiver swapped for another name (or the reverse) is too easy to spot to teach anything.
NEVER_SWAPPED_NAMES = frozenset({"self", "cls"})
DECIMAL = re.compile(r"0|[1-9][0-9]*")
NEGATIVE_DECIMAL = re.compile(r"-\s*(0|[1-9][0-9]*)")


@dataclass(frozen=True)
class Mutant:
    """A copy of a function with one seeded bug at 0-based line `line` of its text."""

    original: Function
    text: str
    kind: str
    line: int


# ---------------------------------------------------------------------------- text positions

class Token(NamedTuple):
    start: int
    end: int
    string: str


@dataclass(frozen=True)
class Edit:
    """Replace text[start:end] by replacement."""

    start: int
    end: int
    replacement: str

    def apply(self, text: str) -> str:
        return text[:self.start] + self.replacement + text[self.end:]


# One place in the code that a kind can mutate, as its alternative edits.
Site = list[Edit]


class ParsedFunction:
    """A function's text with its syntax tree, and the mapping from the tree's positions
    (line, UTF-8 byte column) to character offsets in the text."""

    def __init__(self, fn: Function) -> None:
        tree = parse_quietly(fn.text)
        if tree is None or len(tree.body) != 1 or not isinstance(tree.body[0], FUNCTIONS):
            raise ValueError(f"{fn.path}: {fn.name}: text is not one function definition "
                             "that parses")
        self.text = fn.text
        self.tree = tree
        self.node: ast.FunctionDef | ast.AsyncFunctionDef = tree.body[0]
        self.lines = fn.text.split("\n")
        self.starts = line_starts(self.lines)

    def offset(self, lineno: int, byte_col: int) -> int:
        line = self.lines[lineno - 1]
        if line.isascii():
            return self.starts[lineno - 1] + byte_col
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:byte_col].decode("utf-8"))

    def span(self, node: ast.expr | ast.stmt) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset), self.offset(*end_position(node)))

    def source(self, node: ast.expr | ast.stmt) -> str:
        start, end = self.span(node)
        return self.text[start:end]

    @cached_property
    def dump(self) -> str:
        return ast.dump(self.tree)

    @cached_property
    def tokens(self) -> list[Token]:
        """Tokens that are code (no comments, line ends or indentation), in order."""
        layout = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                  tokenize.DEDENT, tokenize.ENDMARKER}
        try:
            raw = list(tokenize.generate_tokens(io.StringIO(self.text).readline))
        except (tokenize.TokenError, SyntaxError):
            return []
        # tokenize reads str, so its columns are characters already.
        return [Token(self.starts[t.start[0] - 1] + t.start[1],
                      self.starts[t.end[0] - 1] + t.end[1], t.string)
                for t in raw if t.type not in layout]

    @cached_property
    def token_starts(self) -> list[int]:
        return [t.start for t in self.tokens]

    def operator_edit(self, left: ast.expr, right: ast.expr, written: str, replacement: str
                      ) -> Edit | None:
        """Replace the operator between two operands, which must read `written`."""
        gap = range(self.span(left)[1], self.span(right)[0] + 1)
        i = bisect.bisect_left(self.token_starts, gap.start)
        found = []
        for token in self.tokens[i:]:
            if token.end not in gap:
                break
            if token.string not in ("(", ")"):
                found.append(token)
        if " ".join(t.string for t in found) != written:
            return None
        return Edit(found[0].start, found[-1].end, replacement)

    def keyword_removal(self, start: int, keyword: str) -> Edit | None:
        """Delete the keyword at start and the space up to the next token."""
        i = bisect.bisect_left(self.token_starts, start)
        if i + 1 >= len(self.tokens) or self.tokens[i] != (start, start + len(keyword), keyword):
            return None
        return Edit(start, self.tokens[i + 1].start, "")

    def accepts(self, text: str) -> bool:
        """Whether a mutated text parses and means something else than the original."""
        tree = parse_quietly(text)
        return tree is not None and ast.dump(tree) != self.dump


def code_nodes(roots: Sequence[ast.AST], own_scope: bool = False) -> Iterator[ast.AST]:
    """Nodes under roots in a fixed order, without type annotations, without the inside of
    f-strings (whose inner positions are unreliable before Python 3.12) and, with own_scope,
    without the inside of nested functions, classes, lambdas and comprehensions."""
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.JoinedStr) or (own_scope and isinstance(node, SCOPES)):
            continue
        children = [child for field, value in ast.iter_fields(node)
                    if field not in ANNOTATION_FIELDS
                    for child in (value if isinstance(value, list) else [value])
                    if isinstance(child, ast.AST)]
        stack.extend(reversed(children))


# ---------------------------------------------------------------------------- sites per kind

def swap_operator_sites(p: ParsedFunction) -> list[Site]:
    sites = []
    for node in code_nodes(p.node.body):
        for left, right, written, swapped in operator_pairs(node):
            edit = p.operator_edit(left, right, written, swapped)
            if edit is not None:
                sites.append([edit])
    return sites


def operator_pairs(node: ast.AST) -> Iterator[tuple[ast.expr, ast.expr, str, str]]:
    """(left operand, right operand, operator as written, its swap) for each operator of node."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_SWAPS:
        # `"-" * 40 / 2` or `"a" - b` fails at once: not the kind of bug worth learning.
        if not (is_text(node.left) or is_text(node.right)):
            yield node.left, node.right, *BINARY_SWAPS[type(node.op)]
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINARY_SWAPS:
        if not is_text(node.value):
            written, swapped = BINARY_SWAPS[type(node.op)]
            yield node.target, node.value, written + "=", swapped + "="
    elif isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            yield operands[i], operands[i + 1], *COMPARE_SWAPS[type(op)]
    elif isinstance(node, ast.BoolOp):
        for left, right in itertools.pairwise(node.values):
            yield left, right, *BOOL_SWAPS[type(node.op)]


def is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)))


def off_by_one_sites(p: ParsedFunction) -> list[Site]:
    sites = []
    for node in code_nodes(p.node.body):
        for expr in counting_positions(node):
            edits = off_by_one_edits(p, expr)
            if edits:
                sites.append(edits)
    return sites


def counting_positions(node: ast.AST) -> list[ast.expr]:
    """The expressions of node where an integer is a count, a bound or an index."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        return [arg for arg in node.args if not isinstance(arg, ast.Starred)]
    if isinstance(node, ast.Subscript):
        index = node.slice
        if isinstance(index, ast.Slice):
            return [bound for bound in (index.lower, index.upper) if bound is not None]
        return [] if isinstance(index, ast.Tuple) else [index]
    if isinstance(node, ast.Compare) and all(isinstance(op, ORDERING_OPS) for op in node.ops):
        return [node.left, *node.comparators]
    return []


def off_by_one_edits(p: ParsedFunction, expr: ast.expr) -> list[Edit]:
    """`n` -> `n + 1` or `n - 1` (never turning a count or index negative), `len(x)` ->
    `len(x) - 1`, and in `i + 1` either term shifted or the adjustment dropped."""
    start, end = p.span(expr)
    value = int_literal(p, expr)
    if value is not None:
        return [Edit(start, end, str(shifted)) for shifted in (value + 1, value - 1)
                if shifted >= 0 or value < 0]
    if is_len_call(expr):
        return [Edit(start, end, p.text[start:end] + " - 1")]
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Sub)):
        return shifted_term_edits(p, expr)
    return []


def int_literal(p: ParsedFunction, expr: ast.expr) -> int | None:
    """The value of a plain decimal literal, or of one negated, as written in the text."""
    source = p.source(expr)
    if isinstance(expr, ast.Constant) and type(expr.value) is int and DECIMAL.fullmatch(source):
        return expr.value
    if (isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub)
            and NEGATIVE_DECIMAL.fullmatch(source)):
        return -int(source[1:])
    return None


def is_len_call(expr: ast.expr) -> bool:
    return (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)
            and expr.func.id == "len" and len(expr.args) == 1 and not expr.keywords
            and not isinstance(expr.args[0], ast.Starred))


def shifted_term_edits(p: ParsedFunction, expr: ast.BinOp) -> list[Edit]:
    edits = []
    for term in (expr.left, expr.right):
        value = int_literal(p, term)
        if value is not None and value >= 0:
            start, end = p.span(term)
            # `i + 0` is not code anyone writes; dropping the term (below) is that bug.
            edits += [Edit(start, end, str(v)) for v in (value + 1, value - 1) if v >= 1]
    if int_literal(p, expr.right) == 1:
        written = "+" if isinstance(expr.op, ast.Add) else "-"
        operator = p.operator_edit(expr.left, expr.right, written, "")
        if operator is not None:
            start = len(p.text[:operator.start].rstrip(" \t"))
            edits.append(Edit(start, p.span(expr)[1], ""))
    return edits


def wrong_variable_sites(p: ParsedFunction) -> list[Site]:
    fn = p.node
    parameters = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args, fn.args.vararg,
                                  *fn.args.kwonlyargs, fn.args.kwarg) if a is not None]
    own = list(code_nodes(fn.body, own_scope=True))
    unsafe = NEVER_SWAPPED_NAMES | {name for node in own
                                    if isinstance(node, (ast.Global, ast.Nonlocal))
                                    for name in node.names}
    unsafe |= {node.id for node in own if isinstance(node, ast.Name)
               and isinstance(node.ctx, ast.Del)}
    local = (set(parameters) | bound_anywhere(own)) - unsafe
    walk = BindingWalk(p, local)
    walk.block(fn.body, tuple(name for name in parameters if name in local))
    return walk.sites


def bound_anywhere(nodes: list[ast.AST]) -> set[str]:
    """Names that the function's own code binds somewhere (its local variables)."""
    names = set()
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (*DEFINITIONS, ast.ExceptHandler)) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(imported_names(node))
    return names


def imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    return [alias.asname or alias.name.split(".")[0] for alias in node.names if alias.name != "*"]


def target_names(target: ast.expr | None) -> list[str]:
    """Names an assignment target binds (`a`, `a, *b`, `[a, (b, c)]`; not `a.b` or `a[0]`)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Starred):
        return target_names(target.value)
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in target_names(element)]
    return []


def header_bindings(stmt: ast.stmt) -> list[str]:
    """Names bound for the body of a compound statement: loop targets and `with ... as` names."""
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return target_names(stmt.target)
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return [name for item in stmt.items for name in target_names(item.optional_vars)]
    return []


def statement_bindings(stmt: ast.stmt) -> list[str]:
    """Names certainly bound once stmt has run (bindings in its inner blocks may not run)."""
    if isinstance(stmt, ast.Assign):
        return [name for target in stmt.targets for name in target_names(target)]
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return target_names(stmt.target)
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return imported_names(stmt)
    if isinstance(stmt, DEFINITIONS):
        return [stmt.name]
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return header_bindings(stmt)
    return []


class BindingWalk:
    """Loaded local names, each with the other local names certainly bound where it is read:
    the parameters, names bound by earlier statements of the enclosing blocks, loop targets
    and `as` names of the enclosing statements. Swapping in one of these never reads a name
    that is unbound."""

    def __init__(self, p: ParsedFunction, local: set[str]) -> None:
        self.p = p
        self.local = local
        self.sites: list[Site] = []

    def block(self, body: list[ast.stmt], bound: tuple[str, ...]) -> None:
        for stmt in body:
            self.statement(stmt, bound)
            bound = self.extended(bound, statement_bindings(stmt))

    def extended(self, bound: tuple[str, ...], names: list[str]) -> tuple[str, ...]:
        new = [name for name in dict.fromkeys(names) if name in self.local and name not in bound]
        return (*bound, *new)

    def statement(self, stmt: ast.stmt, bound: tuple[str, ...]) -> None:
        if isinstance(stmt, DEFINITIONS):
            return
        for field, value in ast.iter_fields(stmt):
            if field == "body":
                self.block(value, self.extended(bound, header_bindings(stmt)))
            elif field in ("orelse", "finalbody"):
                self.block(value, bound)
            elif field == "handlers":
                for handler in value:
                    self.block(handler.body, self.extended(bound, [handler.name or ""]))
            elif field == "cases":
                for case in value:
                    self.block(case.body, bound)
            else:
                for node in value if isinstance(value, list) else [value]:
                    if isinstance(node, ast.AST):
                        self.expression(node, bound)

    def expression(self, root: ast.AST, bound: tuple[str, ...]) -> None:
        for node in code_nodes([root], own_scope=True):
            if (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
                    and node.id in self.local and self.p.source(node) == node.id):
                start, end = self.p.span(node)
                edits = [Edit(start, end, name) for name in bound if name != node.id]
                if edits:
                    self.sites.append(edits)


def invert_condition_sites(p: ParsedFunction) -> list[Site]:
    sites = []
    for node in code_nodes(p.node.body):
        if (isinstance(node, (ast.If, ast.While, ast.IfExp))
                and not isinstance(node.test, ast.Constant)):
            edit = inverted(p, node.test)
            if edit is not None:
                sites.append([edit])
    return sites


def inverted(p: ParsedFunction, test: ast.expr) -> Edit | None:
    """`a < b` -> `a >= b`, `not x` -> `x`, `x` -> `not x`, `a and b` -> `not (a and b)`."""
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        op = type(test.ops[0])
        return p.operator_edit(test.left, test.comparators[0], COMPARE_SWAPS[op][0],
                               COMPARE_NEGATIONS[op])
    start, end = p.span(test)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return p.keyword_removal(start, "not")
    source = p.text[start:end]
    return Edit(start, end, f"not {source}" if isinstance(test, TIGHT_EXPRESSIONS)
                else f"not ({source})")


def swap_arguments_sites(p: ParsedFunction) -> list[Site]:
    sites = []
    for node in code_nodes(p.node.body):
        if not isinstance(node, ast.Call) or len(node.args) < 2 or is_order_free(node):
            continue
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            continue
        dumps = [ast.dump(arg) for arg in node.args]
        edits = [swapped(p, node.args[i], node.args[j])
                 for i, j in itertools.combinations(range(len(node.args)), 2)
                 if dumps[i] != dumps[j]]
        if edits:
            sites.append(edits)
    return sites


def is_order_free(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id in ORDER_FREE_CALLS


def swapped(p: ParsedFunction, first: ast.expr, second: ast.expr) -> Edit:
    (a, b), (c, d) = p.span(first), p.span(second)
    return Edit(a, d, p.text[c:d] + p.text[b:c] + p.text[a:b])


def drop_return_sites(p: ParsedFunction) -> list[Site]:
    sites = []
    for block in own_blocks(p.node.body):
        for stmt in block:
            if isinstance(stmt, ast.Return) and returns_value(stmt):
                edit = dropped_return(p, stmt, alone=len(block) == 1)
                if edit is not None:
                    sites.append([edit])
    return sites


def own_blocks(body: list[ast.stmt]) -> Iterator[list[ast.stmt]]:
    """body and the statement lists nested in it, but not in nested functions or classes."""
    yield body
    for stmt in body:
        if not isinstance(stmt, DEFINITIONS):
            for block in blocks(stmt):
                yield from own_blocks(block)


def returns_value(stmt: ast.Return) -> bool:
    value = stmt.value
    return value is not None and not (isinstance(value, ast.Constant) and value.value is None)


def dropped_return(p: ParsedFunction, stmt: ast.Return, alone: bool) -> Edit | None:
    """`return f(x)` -> `f(x)`; any other `return x` is deleted with its lines (a statement
    `x` or `a + f(b)` is code nobody writes), unless it is alone in its block (the `pass` it
    would need is an artefact real code rarely has either)."""
    start, end = p.span(stmt)
    if isinstance(stmt.value, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)):
        return p.keyword_removal(start, "return")
    if alone:
        return None
    first = p.starts[stmt.lineno - 1]
    end_line = end_position(stmt)[0]
    last = p.starts[end_line] if end_line < len(p.starts) else len(p.text)
    rest = p.text[end:last].strip()
    if p.text[first:start].strip() or (rest and not rest.startswith("#")):
        return None  # shares its lines with another statement
    return Edit(first, last, "")


SITE_FINDERS = {
    "swap_operator": swap_operator_sites,
    "off_by_one": off_by_one_sites,
    "wrong_variable": wrong_variable_sites,
    "invert_condition": invert_condition_sites,
    "swap_arguments": swap_arguments_sites,
    "drop_return": drop_return_sites,
}


# ---------------------------------------------------------------------------- mutants

def mutate(fn: Function, kind: str, rng: random.Random) -> Mutant | None:
    """One mutant of fn of the given kind at a site drawn uniformly, or None without a site."""
    if kind not in SITE_FINDERS:
        raise ValueError(f"unknown mutation kind {kind!r}; expected one of {', '.join(KINDS)}")
    p = ParsedFunction(fn)
    return pick_mutant(fn, p, kind, SITE_FINDERS[kind](p), rng)


def pick_mutant(fn: Function, p: ParsedFunction, kind: str, sites: list[Site],
                rng: random.Random) -> Mutant | None:
    """Draw a site, then one of its edits; an edit whose result does not parse or means the
    same is struck out and the draw repeated, so the choice is uniform over the valid ones."""
    while sites:
        i = rng.randrange(len(sites))
        j = rng.randrange(len(sites[i]))
        edit = sites[i][j]
        text = edit.apply(p.text)
        if p.accepts(text):
            return Mutant(fn, text, kind, p.text.count("\n", 0, edit.start))
        del sites[i][j]
        if not sites[i]:
            del sites[i]
    return None


def make_pairs(files: Sequence[SourceFile], seed: int, per_function: int = 1
               ) -> list[tuple[Function, Mutant]]:
    """(original, mutant) pairs, per_function mutants of distinct kinds for each function of
    files, shuffled; the same for the same files and seed.

    Each function takes, among the kinds that have a site in it, one of those used least so
    far, so that common kinds (every function calls something) do not crowd out rare ones.
    """
    if per_function < 1:
        raise ValueError(f"per_function must be at least 1, not {per_function}")
    rng = random.Random(seed)
    counts = Counter(dict.fromkeys(KINDS, 0))
    pairs = []
    for fn in extract_functions(files):
        for mutant in function_mutants(fn, per_function, counts, rng):
            pairs.append((fn, mutant))
            counts[mutant.kind] += 1
    rng.shuffle(pairs)
    log.info("%d mutation pairs: %s", len(pairs), ", ".join(f"{k} {n}" for k, n in counts.items()))
    return pairs


def function_mutants(fn: Function, wanted: int, counts: Counter[str], rng: random.Random
                     ) -> list[Mutant]:
    p = ParsedFunction(fn)
    untried = list(KINDS)
    mutants: list[Mutant] = []
    while untried and len(mutants) < wanted:
        fewest = min(counts[kind] for kind in untried)
        kind = rng.choice([kind for kind in untried if counts[kind] == fewest])
        untried.remove(kind)
        mutant = pick_mutant(fn, p, kind, SITE_FINDERS[kind](p), rng)
        if mutant is not None:
            mutants.append(mutant)
    return mutants
