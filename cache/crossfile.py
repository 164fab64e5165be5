"""Context from other files in StarCoder's repository format (`<reponame>name`, then
`<filename>path` and text per file, the current file last): which other documents go ahead of
a FIM prompt, chosen by relevance within a token budget, and kept unchanged while the user types
in the current file, so that the cached prompt behind it stays valid."""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass
from posixpath import dirname, relpath
from typing import Protocol
from urllib.parse import unquote, urlparse

from .window import Edit, line_end, line_start

REPONAME = "<reponame>"
FILENAME = "<filename>"

# Lines around the cursor whose names may be defined in another file (and choose it).
NEAR_BEFORE, NEAR_AFTER = 12, 3
# A definition of a name used near the cursor shows at most this many lines (its signature,
# docstring and first lines); one only imported, and a module imported without names' top-level
# definitions, their first SIGNATURE_LINES lines.
DEFINITION_LINES = 16
SIGNATURE_LINES = 3
# Lines shown either side of another document's last edit, and how many such documents count.
EDIT_LINES = 4
RECENT_EDITS = 4
# Context files at most; pieces that fit in fewer tokens than this are not worth a header.
MAX_FILES = 4
MIN_PIECE_TOKENS = 8
WHY = ("name", "import", "edit")  # why a piece was chosen, the most telling first

_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w. \t,]+)", re.M)
_FROM_IMPORT = re.compile(
    r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)?|[^\n]*)", re.M
)
_DEFINITION = re.compile(
    r"^([ \t]*)(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z_]\w*)"
    r"|^([A-Za-z_]\w*)[ \t]*(?::[^=\n]*)?=(?!=)",
    re.M,
)
_NOT_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))
_NOT_NAMES |= {"self", "cls"}


class RepoTokenizer(Protocol):
    """What the repository format needs of a tokenizer (model.Tokenizer is one); the ids of
    its two tokens come from `token_to_id` where it has one (see repo_token_ids)."""

    def encode_text(self, text: str) -> list[int]: ...


def repo_token_ids(tokenizer: object) -> tuple[int, int] | None:
    """The ids of <reponame> and <filename>, or None where the tokenizer lacks either (the
    model never saw the format: no context from other files)."""
    lookup = getattr(tokenizer, "token_to_id", None)
    if lookup is None:
        return None
    reponame, filename = lookup(REPONAME), lookup(FILENAME)
    return None if reponame is None or filename is None else (reponame, filename)


@dataclass(frozen=True)
class OtherDocument:
    """Another document of the workspace: open in the editor, or the region of a closed one's
    last edit."""

    uri: str
    text: str
    language_id: str = ""


@dataclass(frozen=True)
class Piece:
    """Text of another file shown in the prompt, under its `<filename>` line; `why` it was
    chosen: "import" (a module the current file imports), "name" (defines a name used near
    the cursor), "edit" (around its last edit)."""

    path: str
    text: str
    why: str


@dataclass(frozen=True)
class RepoContext:
    """What goes ahead of the current file's FIM prompt: `<reponame>name`, each piece as
    `<filename>path\\n` and its text, then `<filename>path\\n` of the current file."""

    reponame: str
    path: str  # the current file's
    pieces: tuple[Piece, ...]

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(p.path for p in self.pieces))


def repo_context_ids(tokenizer: RepoTokenizer, context: RepoContext) -> list[int]:
    """The ids of `context`, each text tokenised on its own as model/train/repo_format.py does
    (the name, each path with its newline, each piece's text)."""
    ids = repo_token_ids(tokenizer)
    if ids is None:
        raise ValueError("the tokenizer has no <reponame> / <filename> tokens: the repository "
                         "format cannot be written for this model")
    reponame, filename = ids
    encode = tokenizer.encode_text
    out = [reponame, *encode(context.reponame)]
    for piece in context.pieces:
        out += [filename, *encode(piece.path + "\n"), *encode(piece.text)]
    return [*out, filename, *encode(context.path + "\n")]


# -- what a Python file imports, defines and uses ---------------------------------------------


def uri_path(uri: str) -> str:
    """The file system path of a file: URI (other schemes: what follows the scheme)."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.path else uri


def imports(text: str) -> dict[str, frozenset[str]]:
    """Modules the text imports (relative ones with their dots), each with the names imported
    from it (empty for `import module`). `from pkg import mod` also lists `pkg.mod`."""
    found: dict[str, set[str]] = {}
    for match in _IMPORT.finditer(text):
        for part in match.group(1).split(","):
            words = part.split()
            if words:
                found.setdefault(words[0], set())
    for match in _FROM_IMPORT.finditer(text):
        module = match.group(1)
        names = set()
        for part in match.group(2).strip("()").replace("\\", " ").split(","):
            words = part.split("#")[0].split()
            if words and _IDENTIFIER.fullmatch(words[0]) and words[0] != "import":
                names.add(words[0])
        found.setdefault(module, set()).update(names)
        for name in names:  # the name may be a submodule
            sep = "" if module.endswith(".") else "."
            found.setdefault(module + sep + name, set())
    return {module: frozenset(names) for module, names in found.items()}


def module_paths(module: str, path: str) -> tuple[str, ...]:
    """The file paths (ends of paths, "/"-separated) that `module`, imported from the file at
    `path`, may be: `pkg/mod.py` or `pkg/mod/__init__.py`; relative imports from path's
    folder."""
    dots = len(module) - len(module.lstrip("."))
    parts = [p for p in module[dots:].split(".") if p]
    if dots:
        folder = dirname(path)
        for _ in range(dots - 1):
            folder = dirname(folder)
        parts = [p for p in folder.split("/") if p] + parts
    if not parts:
        return ()
    stem = "/".join(parts)
    return (stem + ".py", stem + "/__init__.py")


def definitions(text: str) -> dict[str, list[int]]:
    """Name -> offsets of the lines defining it: def and class at any depth, assignments at
    the top level."""
    found: dict[str, list[int]] = {}
    for match in _DEFINITION.finditer(text):
        name = match.group(2) or match.group(3)
        found.setdefault(name, []).append(match.start())
    return found


def names_near(text: str, cursor: int) -> set[str]:
    """Identifiers on the lines around the cursor, Python's keywords and builtins left out."""
    start, end = line_start(text, cursor), line_end(text, cursor)
    for _ in range(NEAR_BEFORE):
        if start == 0:
            break
        start = line_start(text, start - 1)
    for _ in range(NEAR_AFTER):
        if end >= len(text):
            break
        end = line_end(text, end)
    return {name for name in _IDENTIFIER.findall(text, start, end) if name not in _NOT_NAMES}


def block_end(text: str, start: int, max_lines: int) -> int:
    """The end of the definition starting on the line at `start`: before the first later line
    indented no deeper than it (blank lines and comments aside, trailing blank lines left
    out), `max_lines` at most."""
    first = text[start:line_end(text, start)]
    indent = len(first) - len(first.lstrip(" \t"))
    end = last = line_end(text, start)
    lines = 1
    while end < len(text) and lines < max_lines:
        following = line_end(text, end)
        line = text[end:following]
        body = line.lstrip(" \t")
        if body.strip() and not body.startswith("#") and len(line) - len(body) <= indent:
            if not body.startswith((")", "]", "}")):  # a signature's closing bracket
                break
        end, lines = following, lines + 1
        if body.strip():
            last = end
    return last


# -- choosing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    score: int
    path: str
    regions: tuple[tuple[int, int, str], ...]  # (start, end, why) in text, in text order
    text: str


class RepoContextChooser:
    """Chooses the context of each document and keeps it while its inputs stay the same:
    the other documents (their texts), the current file's imports and the token limit. Names
    near the cursor count when it chooses, but moving the cursor or typing elsewhere in the
    file does not make it choose again: the context, and the cached prompt after it, stay.

    Not thread-safe: the inference worker calls it.
    """

    def __init__(self, tokenizer: RepoTokenizer) -> None:
        self.tokenizer = tokenizer
        self.available = repo_token_ids(tokenizer) is not None
        self.choices = 0  # times a choice was made (a changed input)
        self._chosen: dict[str, tuple[object, RepoContext | None]] = {}
        self._seen: dict[str, str] = {}  # the last text of each document seen
        self._edits: dict[str, tuple[int, int, int]] = {}  # uri -> (start, end, tick)
        self._closed: dict[str, OtherDocument] = {}  # closed documents' last edited regions
        self._tick = 0

    def choose(self, uri: str, text: str, cursor: int, others: Sequence[OtherDocument],
               max_tokens: int, root: str = "", language_id: str = "") -> RepoContext | None:
        """The context for `uri` (None: nothing worth showing, or no repository tokens)."""
        if not self.available:
            return None
        for document in (OtherDocument(uri, text), *others):
            self._track(document)
        same = [o for o in others if o.uri != uri and (o.language_id or language_id)
                == (language_id or o.language_id)]
        same += [c for u, c in self._closed.items() if u != uri and all(o.uri != u for o in same)]
        key = (max_tokens, root, imports(text),
               tuple((o.uri, o.text, o.uri in self._closed) for o in same))
        known = self._chosen.get(uri)
        if known is not None and known[0] == key:
            return known[1]
        self.choices += 1
        context = self._choose(uri, text, cursor, same, max_tokens, root)
        if known is not None and known[1] == context:
            context = known[1]  # the same context: its ids stay cached where they are
        self._chosen[uri] = (key, context)
        return context

    def forget(self, uri: str) -> None:
        """A document closed: its choice goes; the region of its last edit stays a candidate
        where it is relevant (the last RECENT_EDITS closed ones)."""
        self._chosen.pop(uri, None)
        text = self._seen.pop(uri, None)
        edit = self._edits.pop(uri, None)
        if text is not None and edit is not None:
            self._closed[uri] = OtherDocument(uri, text[edit[0]:edit[1]])
            while len(self._closed) > RECENT_EDITS:
                del self._closed[next(iter(self._closed))]

    def _track(self, document: OtherDocument) -> None:
        """Note where a document changed since it was last seen."""
        old = self._seen.get(document.uri)
        self._seen[document.uri] = document.text
        if old is None or old is document.text or old == document.text:
            return
        new = document.text
        edit = Edit.between(old, new)
        start, end = line_start(new, edit.head), line_end(new, edit.new_end)
        for _ in range(EDIT_LINES):
            start = line_start(new, start - 1) if start > 0 else 0
            end = line_end(new, end) if end < len(new) else end
        self._tick += 1
        self._edits[document.uri] = (start, end, self._tick)

    def _choose(self, uri: str, text: str, cursor: int, others: Sequence[OtherDocument],
                max_tokens: int, root: str) -> RepoContext | None:
        paths = {o.uri: uri_path(o.uri) for o in others}
        here = uri_path(uri)
        base, reponame = repo_root([here, *paths.values()], uri_path(root) if root else "")
        current = relpath(here, base) if base else here
        relative = {u: relpath(p, base) if base else p for u, p in paths.items()}
        wanted = imports(text)
        near = names_near(text, cursor) - set(definitions(text))
        edited = [(u, edit) for u, edit in self._edits.items() if u != uri]
        recent_uris = {u for u, _ in sorted(edited, key=lambda e: -e[1][2])[:RECENT_EDITS]}
        candidates = []
        for other in others:
            found = _candidate(other, relative[other.uri], current, wanted, near,
                               self._edits.get(other.uri) if other.uri in recent_uris else None,
                               other.uri in self._closed)
            if found is not None:
                candidates.append(found)
        candidates.sort(key=lambda c: (-c.score, c.path))
        candidates = candidates[:MAX_FILES]
        header = 2 + len(self._encode(reponame)) + len(self._encode(current + "\n"))
        left = max_tokens - header
        # Round by round, each file (the most relevant first) gets its next region (its most
        # telling first): one file's many definitions never crowd out another's first.
        queues = [sorted(c.regions, key=lambda r: (WHY.index(r[2]), r[0])) for c in candidates]
        taken: list[list[tuple[int, Piece]]] = [[] for _ in candidates]
        while left >= MIN_PIECE_TOKENS and any(queues):
            for n, candidate in enumerate(candidates):
                if queues[n]:
                    piece, left = self._fit(candidate, queues[n].pop(0), left)
                    if piece is not None:
                        taken[n].append(piece)
        # The most relevant file last, nearest the current one; a file's pieces in its order.
        pieces = [p for pairs in reversed(taken) for _, p in sorted(pairs, key=lambda t: t[0])]
        if not pieces and (header > max_tokens or not current):
            return None
        # With nothing from other files, the header alone (`<reponame>name<filename>path`) still
        # tells a model trained in this format where the file lives (a test, a package module).
        return RepoContext(reponame, current, tuple(pieces))

    def _fit(self, candidate: _Candidate, region: tuple[int, int, str], left: int
             ) -> tuple[tuple[int, Piece] | None, int]:
        """The region as a piece (cut by lines to fit) and the tokens left after it, or None
        when not a line of it fits in `left`."""
        start, end, why = region
        path_tokens = 1 + len(self._encode(candidate.path + "\n"))
        room = left - path_tokens
        text = candidate.text[start:end].lstrip("\n")
        cost = len(self._encode(text))
        while cost > room and "\n" in text.rstrip("\n"):
            text = text[: text.rstrip("\n").rfind("\n") + 1]  # drop the last line
            cost = len(self._encode(text))
        if cost > room or cost < 1 or not text.strip():
            return None, left
        return (start, Piece(candidate.path, text, why)), left - path_tokens - cost

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_text(text) if text else []


def repo_root(paths: Sequence[str], root: str = "") -> tuple[str, str]:
    """The folder paths are shown relative to, and the repository's name: the workspace
    `root` when it holds them all; else the parent of their common folder (so that the paths
    start with the package's folder, as a wheel's do), named after that common folder."""
    if root and all(p.startswith(root.rstrip("/") + "/") for p in paths):
        root = root.rstrip("/")
        return root, root.rsplit("/", 1)[-1]
    folders = [dirname(p).split("/") for p in paths]
    common: list[str] = []
    for parts in zip(*folders, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    folder = "/".join(common)
    if not folder.strip("/"):
        return "", ""
    return dirname(folder), folder.rsplit("/", 1)[-1]


def _candidate(other: OtherDocument, path: str, current: str,
               wanted: dict[str, frozenset[str]], near: set[str],
               edit: tuple[int, int, int] | None, closed: bool) -> _Candidate | None:
    """Another document's relevance and the regions worth showing: definitions of names it
    is imported for or that are used near the cursor, else its top-level definitions if the
    current file imports it; the lines around its last edit. What is left of a closed
    document (the lines around its last edit) counts only where it is imported or defines
    such a name."""
    text = other.text
    defined = definitions(text)
    names: set[str] = set()
    imported = False
    for module, from_it in wanted.items():
        if any(_same_file(path, end) for end in module_paths(module, current)):
            imported = True
            names |= from_it
    names |= near
    hits = sorted(n for n in names if n in defined)
    if closed:
        if not imported and not hits:
            return None
        return _Candidate(100 * imported + 3 * len(hits) + 1, path, ((0, len(text), "edit"),),
                          text)
    regions: list[tuple[int, int, str]] = []
    for name in hits:
        for start in defined[name]:
            # A name used near the cursor shows its definition's start; one only imported,
            # its signature, so that more of them fit.
            why, lines = ("name", DEFINITION_LINES) if name in near else ("import",
                                                                            SIGNATURE_LINES)
            regions.append((start, block_end(text, start, lines), why))
    if imported and not hits:
        tops = sorted(s for offsets in defined.values() for s in offsets
                      if s == line_start(text, s) and text[s:s + 1] not in " \t")
        regions += [(s, block_end(text, s, SIGNATURE_LINES), "import") for s in tops]
    if edit is not None:
        regions.append((edit[0], min(edit[1], len(text)), "edit"))
    score = 100 * imported + 3 * len(hits) + (edit is not None)
    if not regions or score == 0:
        return None
    return _Candidate(score, path, _merged(regions), text)


def _merged(regions: list[tuple[int, int, str]]) -> tuple[tuple[int, int, str], ...]:
    """Overlapping regions as one, in text order, with the most telling reason of those
    merged."""
    out: list[tuple[int, int, str]] = []
    for start, end, why in sorted(regions):
        if out and start < out[-1][1]:
            last = out[-1]
            best = min(last[2], why, key=WHY.index)
            out[-1] = (last[0], max(last[1], end), best)
        else:
            out.append((start, end, why))
    return tuple(out)


def _same_file(path: str, end: str) -> bool:
    return path == end or path.endswith("/" + end)
