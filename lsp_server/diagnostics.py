"""Diagnostics from the classification heads: hard-coded secrets and personal data (BIO tags
over the document, recomputed from the first changed token), functions that look like a bug
(scored one by one, remembered by their text), their LSP form, and the code action that moves
a secret into an environment variable lookup.

The text of a finding never reaches a log or a message: diagnostics name the label and score.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lsprotocol import types

from cache.scanner import DocumentScanner
from model.functions import functions_of
from model.heads import DIAGNOSTICS_DIR, DiagnosticsModel, load_tokenizer
from model.tagging import SECRET_TYPES, decode_entities
from model.tokenizer import Tokenizer

from .documents import Document, PositionEncoding
from .options import DiagnosticsOptions

log = logging.getLogger(__name__)

SOURCE = "gptbigcode"
BUG = "BUG"
PERSONAL_TYPES = frozenset({"EMAIL", "IP_ADDRESS"})
MESSAGES = {
    "KEY": "Hard-coded API key or token",
    "PASSWORD": "Hard-coded password",
    "USERNAME": "Hard-coded user name beside a credential",
    "EMAIL": "Email address (personal data) in the source",
    "IP_ADDRESS": "Public IP address in the source",
    BUG: "This function looks like it may contain a bug",
}
BUG_MEMO = 4096  # function scores remembered, by the SHA-256 of their text


@dataclass(frozen=True)
class Finding:
    """Characters [start, end) of a document flagged with a label and a probability."""

    start: int
    end: int
    label: str  # an entity type (KEY, PASSWORD, ...) or BUG
    score: float

    @property
    def code(self) -> str:
        if self.label == BUG:
            return "bug/looks-wrong"
        kind = "secret" if self.label in SECRET_TYPES else "pii"
        return f"{kind}/{self.label}"


class Diagnoser:
    """The diagnostics model with its per-document state; lives on the inference worker."""

    def __init__(self, model: DiagnosticsModel, tok: Tokenizer, max_documents: int = 64) -> None:
        self.model = model
        self.tok = tok
        self.scanner = DocumentScanner(model, max_documents)
        self.bug_scores: OrderedDict[bytes, float] = OrderedDict()
        self.tokens_computed = 0
        self.functions_scored = 0

    @classmethod
    def load(cls, name: str) -> Diagnoser:
        folder = DIAGNOSTICS_DIR if name == "default" else Path(name).expanduser()
        return cls(DiagnosticsModel.from_pretrained(folder), load_tokenizer(folder))

    def thresholds(self, options: DiagnosticsOptions) -> dict[str, float]:
        limits = dict(self.model.settings.thresholds)
        for label in self.model_types():
            override = (options.secret_threshold if label in SECRET_TYPES
                        else options.personal_data_threshold)
            limits[label] = override if override is not None else limits.get(label, 0.5)
        if options.bug_threshold is not None:
            limits[BUG] = options.bug_threshold
        limits.setdefault(BUG, 0.5)
        return limits

    def model_types(self) -> list[str]:
        return list(dict.fromkeys(name[2:] for name in self.model.labels if name != "O"))

    def findings(self, uri: str, text: str, language_id: str, options: DiagnosticsOptions,
                 cancelled: Callable[[], bool] = lambda: False) -> list[Finding] | None:
        """Everything the options ask for in `text`, sorted; None when cancelled part-way."""
        limits = self.thresholds(options)
        found: list[Finding] = []
        if options.secrets or options.personal_data:
            ids, offsets = self.tok.encode_with_offsets(text, as_text=True)
            scan = self.scanner.scan(uri, ids, cancelled)
            if scan is None:
                return None
            self.tokens_computed += scan.computed
            wanted = (SECRET_TYPES if options.secrets else frozenset()) | (
                PERSONAL_TYPES if options.personal_data else frozenset())
            found += [Finding(e.start, e.end, e.label, e.score)
                      for e in decode_entities(text, offsets, scan.probs, self.model.labels, limits)
                      if e.label in wanted]
        if options.bugs and language_id == "python":
            for start, end, function_text in python_functions(text):
                if cancelled():
                    return None
                score = self.bug_probability(function_text)
                if score >= limits[BUG]:
                    found.append(Finding(start, end, BUG, score))
        return sorted(found, key=lambda f: (f.start, f.end, f.label))

    def bug_probability(self, function_text: str) -> float:
        key = hashlib.sha256(function_text.encode("utf-8", "surrogatepass")).digest()
        score = self.bug_scores.get(key)
        if score is None:
            score = self.model.bug_probability(self.tok.encode_text(function_text))
            self.functions_scored += 1
            self.bug_scores[key] = score
            if len(self.bug_scores) > BUG_MEMO:
                self.bug_scores.popitem(last=False)
        else:
            self.bug_scores.move_to_end(key)
        return score

    def forget(self, uri: str) -> None:
        self.scanner.drop(uri)


def python_functions(text: str) -> list[tuple[int, int, str]]:
    """(start, end, dedented text) of each function the bug head was trained on: start..end is
    the name in its `def` line. Nothing while the file does not parse (mid-edit)."""
    try:
        functions = functions_of(text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    spans = []
    for fn in functions:
        line_start = len(fn.context)
        line_end = text.find("\n", line_start)
        header = text[line_start : len(text) if line_end < 0 else line_end]
        name = fn.name.rsplit(".", 1)[-1]
        found = re.search(rf"\bdef\s+({re.escape(name)})\b", header)
        if found is None:  # a decorator line comes first: find the def below it
            index = text.find(f"def {name}", line_start)
            start, end = (index + 4, index + 4 + len(name)) if index >= 0 else (line_start,
                                                                                  line_start)
        else:
            start, end = line_start + found.start(1), line_start + found.end(1)
        spans.append((start, end, fn.text))
    return spans


# -- LSP ------------------------------------------------------------------------------------


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
            data={"label": f.label, "score": round(f.score, 4), "start": f.start, "end": f.end},
        ))
    return out


# -- the code action: a secret into an environment variable ---------------------------------

_NAME_BEFORE = re.compile(r"""["']?([A-Za-z_][\w.-]*)["']?\s*(?::=|=|:)\s*[rbfu]?["'`]?[^"'`]*\Z""")
JS_LANGUAGES = frozenset({"javascript", "typescript", "javascriptreact", "typescriptreact"})
SHELL_LANGUAGES = frozenset({"shellscript", "sh", "bash", "zsh"})
_NOT_ONE_VALUE = re.compile(r"[\s:@/;,=]")  # a literal holding these holds more than a value
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
        if literal is None:
            return None
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
    if literal is None or text[literal[0]] == "`":
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


def secret_action(document: Document, diagnostic: types.Diagnostic, encoding: PositionEncoding
                  ) -> types.CodeAction | None:
    """"Move this secret into an environment variable" for one of our secret diagnostics."""
    data = diagnostic.data if isinstance(diagnostic.data, dict) else {}
    label = data.get("label")
    if diagnostic.source != SOURCE or label not in SECRET_TYPES:
        return None
    start = document.offset_at(diagnostic.range.start, encoding)
    end = document.offset_at(diagnostic.range.end, encoding)
    text = document.text
    if not 0 <= start < end <= len(text):
        return None
    literal = enclosing_literal(text, start, end)
    if literal is not None and not _NOT_ONE_VALUE.search(text, literal[0] + 1, literal[1]):
        start, end = literal[0] + 1, literal[1]  # the literal is the value: replace it whole
    name = variable_name(text, start, str(label))
    edits = env_replacements(text, start, end, name, document.language_id)
    if not edits:
        return None
    lsp_edits = [types.TextEdit(
        range=types.Range(types.Position(*document.position_at(e.start, encoding)),
                          types.Position(*document.position_at(e.end, encoding))),
        new_text=e.text) for e in edits]
    return types.CodeAction(
        title=f"Read this secret from the environment variable {name}",
        kind=types.CodeActionKind.QuickFix,
        diagnostics=[diagnostic],
        is_preferred=True,
        edit=types.WorkspaceEdit(changes={document.uri: lsp_edits}),
    )
