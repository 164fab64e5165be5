"""Diagnostics in LSP form: findings as diagnostics (label and score, never the flagged text)
and the quick fix that moves a hard-coded secret into an environment variable lookup, offered
only for a string value used as a credential and checked against the text it is applied to."""

from __future__ import annotations

import ast
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, replace

from lsprotocol import types

from .documents import Document, PositionEncoding
from .engine.diagnose import Finding
from .engine.findings_policy import BUG, SECRET_TYPES, never_a_credential

SOURCE = "gptbigcode"
MESSAGES = {
    "KEY": "Hard-coded API key or token",
    "PASSWORD": "Hard-coded password",
    "USERNAME": "Hard-coded user name beside a credential",
    "EMAIL": "Email address (personal data) in the source",
    "IP_ADDRESS": "Public IP address in the source",
    BUG: "This function looks like it may contain a bug",
}


# -- findings as diagnostics ------------------------------------------------------------------


def to_lsp(findings: list[Finding], document: Document, encoding: PositionEncoding
           ) -> list[types.Diagnostic]:
    out = []
    for f in findings:
        start = document.position_at(f.start, encoding)
        end = document.position_at(f.end, encoding)
        severity = (types.DiagnosticSeverity.Warning if f.label in SECRET_TYPES
                    else types.DiagnosticSeverity.Information)
        out.append(types.Diagnostic(
            range=types.Range(types.Position(*start), types.Position(*end)),
            message=f"{MESSAGES.get(f.label, f.label)} (score {f.score:.2f})",
            severity=severity,
            code=f.code,
            source=SOURCE,
            # the version it was computed on, and what the quick fix checks the text against
            data={"label": f.label, "score": round(f.score, 4), "start": f.start, "end": f.end,
                  "version": document.version, **fingerprint(document.text, f.start, f.end)},
        ))
    return out


# A diagnostic travels to the client and back (and may sit in a client's log): it identifies
# its text by a keyed digest, so neither the text nor a guessable hash of it leaves the process.
_DIGEST_KEY = os.urandom(16)


def changed_span(old: str, new: str) -> tuple[int, int, int]:
    """(start, old_end, new_end): what an edit did, as old[start:old_end] becoming
    new[start:new_end], from the longest common prefix and then suffix (binary searches over
    slices compared in C: a few milliseconds for a megabyte)."""
    shorter = min(len(old), len(new))
    low, high = 0, shorter
    while low < high:
        mid = (low + high + 1) // 2
        if old[:mid] == new[:mid]:
            low = mid
        else:
            high = mid - 1
    start = low
    low, high = 0, shorter - start
    while low < high:
        mid = (low + high + 1) // 2
        if old[len(old) - mid :] == new[len(new) - mid :]:
            low = mid
        else:
            high = mid - 1
    return start, len(old) - low, len(new) - low


def carried(old: str, new: str, findings: list[Finding]) -> list[Finding]:
    """The findings computed on `old`, on the text `new` an edit made of it: those before the
    edit as they were, those after it moved with their text, those the edit touched or
    adjoins dropped (their text, or the value it belongs to, is no longer what the heads
    judged)."""
    start, old_end, new_end = changed_span(old, new)
    shift = new_end - old_end
    kept = []
    for f in findings:
        if f.end < start:
            kept.append(f)
        elif f.start > old_end:
            kept.append(replace(f, start=f.start + shift, end=f.end + shift))
    return kept


def _digest(text: str) -> str:
    return hmac.new(_DIGEST_KEY, text.encode("utf-8", "surrogatepass"), hashlib.sha256
                    ).hexdigest()[:16]


def fingerprint(text: str, start: int, end: int) -> dict[str, str | None]:
    """What a quick fix checks before it edits [start, end): digests of the flagged text and of
    the string literal around it (None where there is none)."""
    literal = enclosing_literal(text, start, end)
    return {"digest": _digest(text[start:end]),
            "literal": _digest(text[literal[0] : literal[1] + 1]) if literal else None}


# -- the code action: a secret into an environment variable ---------------------------------

_NAME_BEFORE = re.compile(r"""["']?([A-Za-z_][\w.-]*)["']?\s*(?::=|=|:)\s*[rbfu]?["'`]?[^"'`]*\Z""")
JS_LANGUAGES = frozenset({"javascript", "typescript", "javascriptreact", "typescriptreact"})
SHELL_LANGUAGES = frozenset({"shellscript", "sh", "bash", "zsh"})
# What separates a value from its neighbours in a URL, header, connection string or f-string;
# not "/" or "+", which base64 keys hold (an AWS secret key is one value with slashes in it).
_SEPARATOR = re.compile(r"[\s:@;,=&?#{}]")
DEFAULT_NAMES = {"KEY": "API_KEY", "PASSWORD": "PASSWORD", "USERNAME": "USERNAME"}


def variable_name(text: str, start: int, label: str) -> str:
    """An environment variable name for the value at `start`: the name it is assigned to on
    its line (api_key = "..." -> API_KEY), else one for its label."""
    line_start = text.rfind("\n", 0, start) + 1
    found = _NAME_BEFORE.search(text[line_start:start])
    raw = found.group(1) if found else DEFAULT_NAMES.get(label, "SECRET")
    name = re.sub(r"[^A-Za-z0-9]+", "_", raw.rsplit(".", 1)[-1]).strip("_").upper()
    if not name or name[0].isdigit():
        name = DEFAULT_NAMES.get(label, "SECRET")
    if label == "PASSWORD" and "PASS" not in name and "PWD" not in name:
        name += "_PASSWORD"
    return name


@dataclass(frozen=True)
class Replacement:
    start: int
    end: int
    text: str


def env_replacements(text: str, start: int, end: int, name: str, language_id: str
                     ) -> list[Replacement] | None:
    """Edits that read the value at [start, end) from the environment variable `name`, in the
    document's language; None where there is no safe edit."""
    literal = enclosing_literal(text, start, end)
    if language_id == "python":
        return python_replacements(text, start, end, name, literal)
    if language_id in JS_LANGUAGES:
        if literal is None or re.match(r"\s*:", text[literal[1] + 1 :]):
            return None  # not in a literal, or the literal is an object's key
        open_at, close_at = literal
        if (open_at, close_at) == (start - 1, end):
            return [Replacement(open_at, close_at + 1, f"process.env.{name}")]
        inner = text[open_at + 1 : close_at]
        if "`" in inner or "${" in inner:
            return None
        return [Replacement(open_at, open_at + 1, "`"),
                Replacement(start, end, f"${{process.env.{name}}}"),
                Replacement(close_at, close_at + 1, "`")]
    if language_id in SHELL_LANGUAGES:
        if literal is not None and text[literal[0]] == "'":
            return [Replacement(start, end, f"'\"${{{name}}}\"'")]
        quoted = literal is not None
        return [Replacement(start, end, f"${{{name}}}" if quoted else f"\"${{{name}}}\"")]
    return None


_COMMENT_STARTS = ("#", "//", "/*", "*")


def in_comment(text: str, offset: int) -> bool:
    """Whether the line holding offset is a comment line (in any of the usual syntaxes)."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text[line_start:offset].lstrip().startswith(_COMMENT_STARTS)


def enclosing_literal(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Offsets of the quotes of a one-line string literal holding [start, end), if any."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    for quote in "\"'`":
        open_at = text.rfind(quote, line_start, start)
        close_at = text.find(quote, end, line_end)
        if open_at >= 0 and close_at >= 0 and text.count(quote, line_start, open_at) % 2 == 0:
            return open_at, close_at
    return None


def python_replacements(text: str, start: int, end: int, name: str,
                        literal: tuple[int, int] | None) -> list[Replacement] | None:
    if literal is None or text[literal[0]] == "`" or not python_value(text, start, end):
        return None
    open_at, close_at = literal
    lookup = f'os.environ["{name}"]'
    prefix_at = open_at
    while prefix_at > 0 and text[prefix_at - 1] in "rRbBuUfF":
        prefix_at -= 1
    prefix = text[prefix_at:open_at].lower()
    if "b" in prefix:
        return None
    edits: list[Replacement] = []
    if (open_at, close_at) == (start - 1, end) and not prefix:
        edits.append(Replacement(open_at, close_at + 1, lookup))
    else:
        quote = text[open_at]
        inner_quote = "'" if quote == '"' else '"'
        expression = f"{{os.environ[{inner_quote}{name}{inner_quote}]}}"
        if "f" not in prefix:
            body = text[open_at + 1 : close_at]
            if "{" in body or "}" in body:
                return None  # would need every brace doubled: leave it to the user
            edits.append(Replacement(open_at, open_at, "f"))
        edits.append(Replacement(start, end, expression))
    if not re.search(r"^\s*import\s+os\b|^\s*import\s+[\w, ]*\bos\b", text, re.MULTILINE):
        edits.insert(0, Replacement(import_offset(text), import_offset(text), "import os\n"))
    return edits


# Where a string literal is a value the program uses: assigned, passed, a dict's value.
_VALUE_PARENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr, ast.keyword)


def python_value(text: str, start: int, end: int) -> bool:
    """Whether [start, end) lies in a one-line str literal that is assigned, passed as an
    argument or a dict's value (directly, in an f-string, or in a tuple or list that is one):
    not a docstring, a comment, a dict key, a comparison. False while the file does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return False
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.end_lineno == node.lineno and node.end_col_offset is not None):
            continue
        line = text[line_starts[node.lineno - 1] :].split("\n", 1)[0].encode("utf-8")
        first = line_starts[node.lineno - 1] + len(line[: node.col_offset].decode("utf-8"))
        last = line_starts[node.lineno - 1] + len(line[: node.end_col_offset].decode("utf-8"))
        if first <= start and end <= last:
            return used_as_value(node, parents)
    return False


def used_as_value(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    value, parent = node, parents.get(node)
    while isinstance(parent, ast.JoinedStr | ast.FormattedValue | ast.Tuple | ast.List):
        value, parent = parent, parents.get(parent)
    if isinstance(parent, _VALUE_PARENTS):
        return getattr(parent, "value", None) is value
    if isinstance(parent, ast.Call):
        return any(arg is value for arg in parent.args)
    if isinstance(parent, ast.Dict):
        return any(v is value for v in parent.values)
    return False


def import_offset(text: str) -> int:
    """Where `import os` goes: after a module docstring, shebang or __future__ imports."""
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError, RecursionError):
        return 0
    line = 0
    for node in body:
        is_doc = (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                  and isinstance(node.value.value, str) and node is body[0])
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if not (is_doc or is_future):
            break
        line = node.end_lineno or line
    if line == 0:
        return len(text.split("\n", 1)[0]) + 1 if text.startswith("#!") else 0
    offsets = [m.end() for m in re.finditer("\n", text)]
    return offsets[line - 1] if line - 1 < len(offsets) else len(text)


def secret_span(text: str, start: int, end: int, literal: tuple[int, int] | None
                ) -> tuple[int, int]:
    """The whole value [start, end) is part of: the tagger may flag only some of a key's tokens,
    so widen it within its literal to the separators around it (a trailing "=" padding too)."""
    if literal is None:
        return start, end
    open_at, close_at = literal
    while start > open_at + 1 and not _SEPARATOR.match(text[start - 1]):
        start -= 1
    while end < close_at and not _SEPARATOR.match(text[end]):
        end += 1
    if not text[end:close_at].strip("="):
        end = close_at
    return start, end


def whole_literal(text: str, edits: list[Replacement], literal: tuple[int, int] | None
                  ) -> list[Replacement]:
    """`edits` with those inside `literal` made one edit of the whole literal, quote to quote:
    the fix replaces the literal, never pieces of it."""
    if literal is None:
        return edits
    open_at, close_at = literal[0], literal[1] + 1
    inside = sorted((e for e in edits if open_at <= e.start and e.end <= close_at),
                    key=lambda e: e.start)
    if not inside:
        return edits
    pieces, at = [], open_at
    for e in inside:
        pieces += [text[at : e.start], e.text]
        at = e.end
    merged = Replacement(open_at, close_at, "".join(pieces) + text[at:close_at])
    return [e for e in edits if e not in inside] + [merged]


def secret_action(document: Document, diagnostic: types.Diagnostic, encoding: PositionEncoding
                  ) -> types.CodeAction | None:
    """"Move this secret into an environment variable" for one of our secret diagnostics, if the
    document still holds, at its range, the text it was computed on (same flagged text, same
    literal around it); the edit is computed on the current text and names its version."""
    data = diagnostic.data if isinstance(diagnostic.data, dict) else {}
    label = data.get("label")
    if diagnostic.source != SOURCE or label not in SECRET_TYPES:
        return None
    start = document.offset_at(diagnostic.range.start, encoding)
    end = document.offset_at(diagnostic.range.end, encoding)
    text = document.text
    if not 0 <= start < end <= len(text):
        return None
    if {k: data.get(k) for k in ("digest", "literal")} != fingerprint(text, start, end):
        return None  # computed on another text: the line was edited since
    literal = enclosing_literal(text, start, end)
    start, end = secret_span(text, start, end, literal)
    if never_a_credential(text, start, end, str(label)) is not None or in_comment(text, start):
        return None  # a name, a version, a URL, a digest; or prose
    name = variable_name(text, start, str(label))
    edits = env_replacements(text, start, end, name, document.language_id)
    if not edits:
        return None
    lsp_edits = [types.TextEdit(
        range=types.Range(types.Position(*document.position_at(e.start, encoding)),
                          types.Position(*document.position_at(e.end, encoding))),
        new_text=e.text) for e in whole_literal(text, edits, literal)]
    # documentChanges name the version the edit was computed on, so a client that has moved on
    # refuses it; changes are for clients without versioned edits (documentChanges win where
    # both are understood).
    versioned_edit = types.TextDocumentEdit(
        text_document=types.OptionalVersionedTextDocumentIdentifier(
            uri=document.uri, version=document.version),
        edits=lsp_edits)
    return types.CodeAction(
        title=f"Read this secret from the environment variable {name}",
        kind=types.CodeActionKind.QuickFix,
        diagnostics=[diagnostic],
        is_preferred=True,
        edit=types.WorkspaceEdit(changes={document.uri: lsp_edits},
                                 document_changes=[versioned_edit]),
    )
