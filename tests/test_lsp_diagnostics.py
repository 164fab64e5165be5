"""Diagnostics in the server, without a model: findings to LSP ranges, the secret-to-environment
code action's edits in each language and its checks against the current text, findings carried
along with edits, where a function's bug diagnostic sits, and options."""

from __future__ import annotations

from dataclasses import replace

import pytest
from lsprotocol import types

from lsp_server.diagnostics import (
    carried,
    changed_span,
    env_replacements,
    secret_action,
    to_lsp,
    variable_name,
)
from lsp_server.documents import Document, DocumentStore, Position, Range, TextChange
from lsp_server.engine import Finding
from lsp_server.engine.findings_policy import BUG, python_functions, reported_types, thresholds
from lsp_server.options import DiagnosticsOptions, parse_options


def document(text: str, language: str = "python", uri: str = "file:///w/a.py") -> Document:
    store = DocumentStore()
    return store.open(uri, text, 1, language)


def apply(text: str, edits: list[types.TextEdit], encoding: str = "utf-16") -> str:
    """The text after LSP edits (all relative to the original text), applied back to front."""
    doc = document(text)
    spans = sorted(((doc.offset_at(e.range.start, encoding),  # type: ignore[arg-type]
                     doc.offset_at(e.range.end, encoding), e.new_text)  # type: ignore[arg-type]
                    for e in edits), reverse=True)
    for start, end, new in spans:
        text = text[:start] + new + text[end:]
    return text


def finding_of(text: str, value: str, label: str = "KEY", score: float = 0.97) -> Finding:
    start = text.index(value)
    return Finding(start, start + len(value), label, score)


# -- ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding, column", [("utf-16", 18), ("utf-8", 22), ("utf-32", 16)])
def test_finding_after_an_emoji_maps_to_the_negotiated_columns(encoding: str, column: int) -> None:
    # "s = '😀😀' ; k = '" is 16 code points; each emoji is 2 UTF-16 units and 4 UTF-8 bytes.
    text = "x = 1\ns = '😀😀' ; k = 'AKIAABCDEFGHIJKLMNOP'\n"
    value = "AKIAABCDEFGHIJKLMNOP"
    diag = to_lsp([finding_of(text, value)], document(text), encoding)[0]  # type: ignore[arg-type]
    assert diag.range.start == types.Position(1, column)
    assert diag.range.end == types.Position(1, column + len(value))


def test_finding_in_a_crlf_document_is_on_the_right_line() -> None:
    text = "import os\r\n\r\npassword = 'hunter22!'\r\nprint(1)\r\n"
    diag = to_lsp([finding_of(text, "hunter22!", "PASSWORD")], document(text), "utf-16")[0]
    assert diag.range == types.Range(types.Position(2, 12), types.Position(2, 21))


def test_diagnostic_carries_source_code_severity_and_score_but_not_the_text() -> None:
    text = "token = 'ghp_abcdefghijklmnopqrstuvwxyz0123456789'\n"
    value = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
    bug = Finding(0, 5, BUG, 0.81)
    email = finding_of(text, "ghp_abcdefghij", "EMAIL", 0.66)
    secret, info, pii = to_lsp([finding_of(text, value), bug, email], document(text), "utf-16")
    assert (secret.source, secret.code, secret.severity) == (
        "gptbigcode", "secret/KEY", types.DiagnosticSeverity.Warning)
    assert (info.code, info.severity) == ("bug/looks-wrong", types.DiagnosticSeverity.Information)
    assert (pii.code, pii.severity) == ("pii/EMAIL", types.DiagnosticSeverity.Information)
    assert "0.97" in secret.message and "0.81" in info.message
    for diag in (secret, info, pii):
        assert value not in diag.message and "ghp_" not in str(diag.data)


# -- names and edits ------------------------------------------------------------------------


@pytest.mark.parametrize("line, label, name", [
    ('api_key = "', "KEY", "API_KEY"),
    ('    self.secret_token = "', "KEY", "SECRET_TOKEN"),
    ('config = {"client-secret": "', "KEY", "CLIENT_SECRET"),
    ('db_password: "', "PASSWORD", "DB_PASSWORD"),
    ('user = "', "PASSWORD", "USER_PASSWORD"),
    ('connect("', "PASSWORD", "PASSWORD"),
    ('export GITHUB_TOKEN=', "KEY", "GITHUB_TOKEN"),
])
def test_variable_name_comes_from_the_assignment_target(line: str, label: str, name: str) -> None:
    text = line + "VALUE"
    assert variable_name(text, len(line), label) == name


def test_python_whole_literal_becomes_an_environ_lookup_and_os_is_imported() -> None:
    text = ('"""Settings."""\nfrom __future__ import annotations\n\n'
            'API_KEY = "sk_live_abcdefgh12345678"\n')
    f = finding_of(text, "sk_live_abcdefgh12345678")
    edits = env_replacements(text, f.start, f.end, "API_KEY", "python")
    assert edits is not None
    result = text
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        result = result[: e.start] + e.text + result[e.end :]
    assert result == ('"""Settings."""\nfrom __future__ import annotations\nimport os\n\n'
                      'API_KEY = os.environ["API_KEY"]\n')


def test_python_value_inside_a_url_becomes_an_f_string_field() -> None:
    text = 'import os\nurl = "postgresql://admin:S3cr3t!pw@db.acme.io:5432/app"\n'
    f = finding_of(text, "S3cr3t!pw", "PASSWORD")
    edits = env_replacements(text, f.start, f.end, "DB_PASSWORD", "python")
    assert edits is not None and all("import os" not in e.text for e in edits)
    result = text
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        result = result[: e.start] + e.text + result[e.end :]
    assert result == ('import os\n'
                      'url = f"postgresql://admin:{os.environ[\'DB_PASSWORD\']}@db.acme.io:5432/app"\n')
    compile(result, "<edit>", "exec")


@pytest.mark.parametrize("text, value", [
    ('x = b"AKIAABCDEFGHIJKLMNOP"\n', "AKIAABCDEFGHIJKLMNOP"),  # bytes: no str lookup fits
    ('x = "{0}:AKIAABCDEFGHIJKLMNOP"\n', "AKIAABCDEFGHIJKLMNOP"),  # braces would need doubling
    ("x = AKIAABCDEFGHIJKLMNOP\n", "AKIAABCDEFGHIJKLMNOP"),  # not in a literal
])
def test_python_edits_are_refused_where_they_would_change_the_meaning(text: str, value: str
                                                                       ) -> None:
    f = finding_of(text, value)
    assert env_replacements(text, f.start, f.end, "API_KEY", "python") is None


@pytest.mark.parametrize("language, text, value, expected", [
    ("javascript", "const key = 'AKIAABCDEFGHIJKLMNOP';\n", "AKIAABCDEFGHIJKLMNOP",
     "const key = process.env.API_KEY;\n"),
    ("typescript", 'const url = "https://u:pw12345@h.io";\n', "pw12345",
     "const url = `https://u:${process.env.API_KEY}@h.io`;\n"),
    ("shellscript", "export TOKEN=ghp_abcdefghijklmnop\n", "ghp_abcdefghijklmnop",
     'export TOKEN="${API_KEY}"\n'),
    ("shellscript", 'curl -H "Authorization: Bearer abcdef123456" x\n', "abcdef123456",
     'curl -H "Authorization: Bearer ${API_KEY}" x\n'),
    ("shellscript", "mysql -p'hunter22' db\n", "hunter22", "mysql -p''\"${API_KEY}\"'' db\n"),
])
def test_other_languages_read_the_environment_their_own_way(
    language: str, text: str, value: str, expected: str
) -> None:
    f = finding_of(text, value)
    edits = env_replacements(text, f.start, f.end, "API_KEY", language)
    assert edits is not None
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: e.start] + e.text + text[e.end :]
    assert text == expected


def test_no_edit_for_languages_without_a_known_lookup() -> None:
    text = "password: hunter22\n"
    f = finding_of(text, "hunter22", "PASSWORD")
    assert env_replacements(text, f.start, f.end, "PASSWORD", "yaml") is None


def test_code_action_edits_exactly_the_flagged_secret() -> None:
    text = 'import os\n\n# 😀 keys\nclient = Client(api_key="AKIAABCDEFGHIJKLMNOP", region="eu")\n'
    doc = document(text)
    diag = to_lsp([finding_of(text, "AKIAABCDEFGHIJKLMNOP")], doc, "utf-16")[0]
    action = secret_action(doc, diag, "utf-16")
    assert action is not None and action.kind == types.CodeActionKind.QuickFix
    assert action.diagnostics == [diag] and "API_KEY" in action.title
    assert action.edit is not None and action.edit.changes is not None
    edits = action.edit.changes["file:///w/a.py"]
    assert apply(text, edits) == (
        'import os\n\n# 😀 keys\nclient = Client(api_key=os.environ["API_KEY"], region="eu")\n')


def test_code_action_ignores_other_sources_and_personal_data() -> None:
    text = 'email = "jane.doe@acme.io"\n'
    doc = document(text)
    diag = to_lsp([finding_of(text, "jane.doe@acme.io", "EMAIL")], doc, "utf-16")[0]
    assert secret_action(doc, diag, "utf-16") is None
    foreign = types.Diagnostic(range=diag.range, message="x", source="pylint",
                               data={"label": "KEY"})
    assert secret_action(doc, foreign, "utf-16") is None


# -- functions for the bug head -------------------------------------------------------------


def test_bug_findings_sit_on_the_function_names() -> None:
    text = ("import functools\n\n\n@functools.cache\ndef total(items):\n    s = 0\n"
            "    for x in items:\n        s += x\n    return s\n\n\nclass Box:\n"
            "    def area(self, w, h):\n        if w < 0:\n            return 0\n"
            "        return w * h\n")
    spans = python_functions(text)
    names = [text[start:end] for start, end, _ in spans]
    assert names == ["total", "area"]
    assert spans[0][2].startswith("@functools.cache\ndef total(items):")
    assert spans[1][2].startswith("def area(self, w, h):\n    if w < 0:")


def test_no_functions_while_the_file_does_not_parse() -> None:
    assert python_functions("def broken(:\n    return 1\n") == []


# -- options --------------------------------------------------------------------------------


def test_diagnostics_options_are_checked_key_by_key() -> None:
    options, messages = parse_options({"diagnostics": {
        "secretThreshold": 0.8, "bugs": False, "bugThreshold": 1.5, "debounceMs": -1,
        "colour": "red"}})
    d = options.diagnostics
    assert (d.secret_threshold, d.bugs, d.bug_threshold, d.debounce_ms) == (0.8, False, None, 400)
    assert len(messages) == 3
    assert any("bugThreshold" in m and "1.5" in m for m in messages)
    assert any("diagnostics.colour: unknown option" in m for m in messages)


def test_option_thresholds_override_the_calibrated_ones_per_kind() -> None:
    calibrated = {"KEY": 0.6, "EMAIL": 0.7, BUG: 0.8}
    types_ = ["KEY", "PASSWORD", "EMAIL"]
    assert thresholds(calibrated, types_, DiagnosticsOptions()) == {
        "KEY": 0.6, "PASSWORD": 0.5, "EMAIL": 0.7, BUG: 0.8}
    options = DiagnosticsOptions(secret_threshold=0.9, bug_threshold=0.2)
    assert thresholds(calibrated, types_, options) == {
        "KEY": 0.9, "PASSWORD": 0.9, "EMAIL": 0.7, BUG: 0.2}
    assert reported_types(DiagnosticsOptions(secrets=False)) == {"EMAIL", "IP_ADDRESS"}
    assert reported_types(DiagnosticsOptions(personal_data=False)) == {
        "KEY", "PASSWORD", "USERNAME"}


def test_code_action_widens_a_partial_finding_to_the_whole_literal() -> None:
    text = 'KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ1x9+Q=="\n'
    doc = document(text)
    partial = finding_of(text, "K7MDENG")  # the tagger flagged one piece of an AWS secret key
    action = secret_action(doc, to_lsp([partial], doc, "utf-16")[0], "utf-16")
    assert action is not None and action.edit is not None and action.edit.changes is not None
    assert apply(text, action.edit.changes["file:///w/a.py"]) == (
        'import os\nKEY = os.environ["KEY"]\n')


def test_code_action_replaces_the_whole_literal_around_a_value_inside_a_url() -> None:
    text = 'import os\nurl = "postgresql://admin:S3cr3t!pw@db.acme.io:5432/app"\n'
    doc = document(text)
    diag = to_lsp([finding_of(text, "S3cr", "PASSWORD")], doc, "utf-16")[0]
    action = secret_action(doc, diag, "utf-16")
    assert action is not None and action.edit is not None and action.edit.changes is not None
    (edit,) = action.edit.changes["file:///w/a.py"]
    literal = '"postgresql://admin:S3cr3t!pw@db.acme.io:5432/app"'
    assert doc.offset_at(edit.range.start, "utf-16") == text.index(literal)
    assert doc.offset_at(edit.range.end, "utf-16") == text.index(literal) + len(literal)
    assert edit.new_text == 'f"postgresql://admin:{os.environ[\'URL_PASSWORD\']}@db.acme.io:5432/app"'


# -- quick fixes against the current text ---------------------------------------------------

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
URI = "file:///w/a.py"


def edited(store: DocumentStore, version: int, old: str, new: str) -> Document:
    """The store's document at `version`, after replacing the first `old` by `new`."""
    text = store.get(URI).text
    offset = text.index(old)
    doc = store.get(URI)
    where = Range(Position(*doc.position_at(offset, "utf-16")),
                  Position(*doc.position_at(offset + len(old), "utf-16")))
    return store.change(URI, version, [TextChange(new, where)])


@pytest.mark.parametrize("typed, fix_then", [
    ('AWS_SECRET_ACCESS_KEY = "wJalrXUt"', True),  # the editor closed the quote as it opened
    ('AWS_SECRET_ACCESS_KEY = "wJalrXUt', False),  # no closing quote yet: no literal to fix
])
def test_a_diagnostic_on_a_half_typed_secret_gets_no_fix_once_the_line_is_completed(
    typed: str, fix_then: bool
) -> None:
    store = DocumentStore()
    half = store.open(URI, f"import os\n\n{typed}\n", 1, "python")
    diag = to_lsp([finding_of(half.text, "wJalrXUt")], half, "utf-16")[0]
    assert (secret_action(half, diag, "utf-16") is not None) == fix_then
    completed = edited(store, 2, typed, f'AWS_SECRET_ACCESS_KEY = "{AWS_SECRET}"')
    # The range still holds "wJalrXUt", but its literal is not the one the diagnostic saw.
    start = completed.offset_at(diag.range.start, "utf-16")
    assert completed.text[start : start + 8] == "wJalrXUt"
    assert secret_action(completed, diag, "utf-16") is None


def test_a_diagnostic_whose_range_now_holds_other_text_gets_no_fix() -> None:
    store = DocumentStore()
    doc = store.open(URI, f'KEY = "{AWS_SECRET}"\n', 1, "python")
    diag = to_lsp([finding_of(doc.text, AWS_SECRET)], doc, "utf-16")[0]
    moved = edited(store, 2, "KEY", "# keys\nKEY")  # a line above: the range is a line behind
    assert secret_action(moved, diag, "utf-16") is None


def test_a_diagnostic_a_version_behind_gets_a_fix_computed_on_the_current_text() -> None:
    store = DocumentStore()
    doc = store.open(URI, f'KEY = "{AWS_SECRET}"  # old\n', 1, "python")
    diag = to_lsp([finding_of(doc.text, "K7MDENG")], doc, "utf-16")[0]
    now = edited(store, 2, "# old", "# rotate me")  # same line, outside the literal
    action = secret_action(now, diag, "utf-16")
    assert action is not None and action.edit is not None
    (change,) = action.edit.document_changes or []
    assert isinstance(change, types.TextDocumentEdit)
    assert (change.text_document.uri, change.text_document.version) == (URI, 2)
    assert apply(now.text, list(change.edits)) == (  # type: ignore[arg-type]
        'import os\nKEY = os.environ["KEY"]  # rotate me\n')
    assert action.edit.changes == {URI: change.edits}


def test_diagnostic_data_names_the_version_and_digests_not_the_text() -> None:
    text = f'KEY = "{AWS_SECRET}"\n'
    diag = to_lsp([finding_of(text, AWS_SECRET)], document(text), "utf-16")[0]
    assert isinstance(diag.data, dict) and diag.data["version"] == 1
    assert diag.data["digest"] and diag.data["literal"]
    data = str(diag.data)
    assert all(piece not in data for piece in AWS_SECRET.split("/"))


def test_shell_quick_fix_answers_to_the_shell_language_ids_of_editors() -> None:
    text = "export TOKEN=ghp_abcdefghijklmnop\n"
    f = finding_of(text, "ghp_abcdefghijklmnop")
    for language in ("sh", "bash", "zsh"):
        edits = env_replacements(text, f.start, f.end, "TOKEN", language)
        assert edits is not None and edits[0].text == '"${TOKEN}"'


# -- no quick fix where the flagged text is not a credential value ---------------------------


@pytest.mark.parametrize("text, flagged, label", [
    # a header's name held in a constant, and used as a dict key
    ('XET_HEADER = "X-Xet-Access-Token"\n', "X-Xet-Access-Token", "KEY"),
    ('headers = {"X-Xet-Access-Token": token}\n', "X-Xet-Access-Token", "KEY"),
    ('API_KEY_HEADER = "Authorization"\n', "Authorization", "KEY"),
    # prose in a docstring and in a comment
    ('def f():\n    """Endpoints scaled to zero will not be charged."""\n', "charged", "PASSWORD"),
    ('# password = "hunter22" in the old config\nx = 1\n', "hunter22", "PASSWORD"),
    # identifiers and keywords
    ("class Net(nn.Module):\n    pass\n", "nn.Module", "KEY"),
    ("FUNC_COT = compile_template(source)\n", "FUNC_COT", "KEY"),
    ("def check(password):\n    return password\n", "def", "PASSWORD"),
    # a version, a URL without credentials, a digest beside a hash's name
    ('__version__ = "2.32.3"\n', "2.32.3", "PASSWORD"),
    ('DOCS = "https://huggingface.co/docs/hub/security-tokens"\n',
     "https://huggingface.co/docs/hub/security-tokens", "KEY"),
    ('sha256 = "' + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" + '"\n',
     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "KEY"),
    # a string that is compared with, not used as, a value
    ('if token == "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2":\n    pass\n',
     "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2", "KEY"),
])
def test_no_fix_for_names_prose_identifiers_and_non_values(text: str, flagged: str, label: str
                                                           ) -> None:
    doc = document(text)
    diag = to_lsp([finding_of(text, flagged, label)], doc, "utf-16")[0]
    assert secret_action(doc, diag, "utf-16") is None


@pytest.mark.parametrize("text, secret", [
    ('TOKEN = "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"\n',
     "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"),
    ('client = Client("ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2")\n',
     "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"),
    ('headers = {"Authorization": "Bearer ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"}\n',
     "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"),
    ('auth = ("admin", "Tr0ub4dor&3xyz")\n', "Tr0ub4dor&3xyz"),
    ('url = f"postgresql://admin:S3cr3t!pw@{host}/app"\n', "S3cr3t!pw"),
])
def test_a_credential_assigned_passed_or_interpolated_gets_a_fix_that_compiles(
    text: str, secret: str
) -> None:
    doc = document(text)
    diag = to_lsp([finding_of(text, secret, "KEY")], doc, "utf-16")[0]
    action = secret_action(doc, diag, "utf-16")
    assert action is not None and action.edit is not None and action.edit.changes is not None
    fixed = apply(text, action.edit.changes[URI])
    assert secret not in fixed and "os.environ" in fixed
    compile(fixed, "<fixed>", "exec")


def test_a_javascript_object_key_gets_no_fix() -> None:
    text = 'const headers = {"X-Api-Key-7f3a9c2b": key};\n'
    f = finding_of(text, "X-Api-Key-7f3a9c2b")
    assert env_replacements(text, f.start, f.end, "API_KEY", "javascript") is None


@pytest.mark.parametrize("old, new, expected", [
    ("abcdef", "abcXdef", (3, 3, 4)),  # insertion
    ("abcdef", "abdef", (2, 3, 2)),  # deletion
    ("abcdef", "abZZef", (2, 4, 4)),  # replacement
    ("aaaa", "aaaaa", (4, 4, 5)),  # repeated text: the longest common prefix first
    ("same", "same", (4, 4, 4)),
    ("", "new", (0, 0, 3)),
])
def test_changed_span_names_what_an_edit_replaced(old: str, new: str,
                                                  expected: tuple[int, int, int]) -> None:
    start, old_end, new_end = changed_span(old, new)
    assert (start, old_end, new_end) == expected
    assert old[:start] + new[start:new_end] + old[old_end:] == new


def test_findings_move_with_their_text_and_an_edit_drops_those_it_touches() -> None:
    text = 'A = "AKIAQ3EGRT7ZPWXLMN4K"\nB = "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"\n'
    first, second = finding_of(text, "AKIAQ3EGRT7ZPWXLMN4K"), finding_of(text, "ghp_4fK9sLq2")
    above = "# keys\n" + text
    moved = carried(text, above, [first, second])
    assert [above[f.start : f.end] for f in moved] == ["AKIAQ3EGRT7ZPWXLMN4K", "ghp_4fK9sLq2"]
    inside = text.replace("AKIAQ3", "AKIAQ3Z")
    assert carried(text, inside, [first, second]) == [replace(second, start=second.start + 1,
                                                              end=second.end + 1)]
    at_end = text.replace('MN4K"', 'MN4Kx"')  # adjoining the value: the value changed
    assert [at_end[f.start : f.end] for f in carried(text, at_end, [first, second])] == [
        "ghp_4fK9sLq2"]
    below = text + "C = 1\n"
    assert carried(text, below, [first, second]) == [first, second]
