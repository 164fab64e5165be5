"""End to end: the real server publishes diagnostics from the packaged diagnostics model, keeps
them in step with edits, offers the environment-variable quick fix (only while the text it was
computed on is still there), and keeps secrets out of its log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from lsp_client import Client, start, stop
from lsp_fixtures import build_checkpoint
from lsprotocol import types

from model.heads import load_tokenizer

pytestmark = pytest.mark.asyncio(loop_scope="module")

AWS_KEY = "AKIAQ3EGRT7ZPWXLMN4K"
TOKEN = "ghp_4fK9sLq2ZxW8eR1tY6uI0oP3aS5dF7gH9jK2"
OPTIONS = {"debounceMs": 0, "maxNewTokens": 4,
           "diagnostics": {"debounceMs": 0, "bugs": False}}
DOCUMENT = f'''"""Upload reports to the archive."""

import os

import boto3

REGION = "eu-west-1"
ACCESS_KEY_ID = "{AWS_KEY}"
SECRET_FROM_ENV = os.environ["AWS_SECRET_ACCESS_KEY"]
PLACEHOLDER = "<your-api-key>"
CHECKSUM = "d41d8cd98f00b204e9800998ecf8427e"
HOST = "127.0.0.1"


def client(region=None):
    """An S3 client for the archive's region."""
    if region is None:
        region = REGION
    return boto3.client("s3", region_name=region, aws_access_key_id=ACCESS_KEY_ID)
'''


def position(text: str, offset: int) -> types.Position:
    line = text.count("\n", 0, offset)
    column = text[text.rfind("\n", 0, offset) + 1 : offset]
    return types.Position(line=line, character=len(column.encode("utf-16-le")) // 2)


def span_range(text: str, value: str) -> types.Range:
    start = text.index(value)
    return types.Range(position(text, start), position(text, start + len(value)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("diag-lm") / "tiny")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Client]:
    folder = tmp_path_factory.mktemp("diag-server")
    client = await start(str(checkpoint), folder, options=OPTIONS)
    client.log_path = folder / "server.log"  # type: ignore[attr-defined]
    yield client
    await stop(client)


async def runs_after(client: Client, runs: int, timeout: float = 30.0) -> None:
    """Wait until the server has finished a diagnostics run beyond `runs`."""
    deadline = time.monotonic() + timeout
    while (await client.status())["diagnostics"]["runs"] <= runs:
        if time.monotonic() > deadline:
            raise TimeoutError("no diagnostics run finished")
        await asyncio.sleep(0.02)


_uris = iter(range(1_000_000))


def fresh_uri(suffix: str = ".py") -> str:
    return f"file:///work/diag{next(_uris)}{suffix}"


async def test_a_hard_coded_key_is_published_as_a_warning_on_its_characters(client: Client
                                                                             ) -> None:
    uri = fresh_uri()
    client.open(uri, DOCUMENT)
    diagnostics = await client.published(uri)
    keys = [d for d in diagnostics if d.code == "secret/KEY"]
    assert [d.range for d in keys] == [span_range(DOCUMENT, AWS_KEY)], diagnostics
    assert keys[0].severity == types.DiagnosticSeverity.Warning
    assert keys[0].source == "gptbigcode" and AWS_KEY not in keys[0].message
    flagged_lines = {d.range.start.line for d in diagnostics}
    assert flagged_lines == {DOCUMENT[: DOCUMENT.index(AWS_KEY)].count("\n")}, diagnostics


async def test_negatives_stay_quiet(client: Client) -> None:
    text = (
        'import os\n\nAPI_KEY = os.environ["API_KEY"]\nTOKEN = os.getenv("GITHUB_TOKEN", "")\n'
        'PASSWORD = ""\nSECRET = "<your-secret-here>"\nDIGEST = "e3b0c44298fc1c149afbf4c8996fb924'
        '27ae41e4649b934ca495991b7852b855"\nCOMMIT = "9fceb02d0ae598e95dc970b74767f19372d61af8"\n'
        'ID = "123e4567-e89b-12d3-a456-426614174000"\nDNS = "8.8.8.8"\nLOCAL = "192.168.1.20"\n'
        '__version__ = "1.2.3.4"\nCONTACT = "someone@example.com"\n'
    )
    uri = fresh_uri()
    runs = (await client.status())["diagnostics"]["runs"]
    client.open(uri, text)
    await runs_after(client, runs)
    assert not client.diagnostics.get(uri), client.diagnostics.get(uri)


async def test_editing_the_secret_away_clears_the_diagnostic(client: Client) -> None:
    uri = fresh_uri()
    client.open(uri, DOCUMENT)
    assert await client.published(uri)
    where = span_range(DOCUMENT, f'"{AWS_KEY}"')
    client.replace(uri, where.start, where.end, 'os.environ["AWS_ACCESS_KEY_ID"]')
    assert await client.published(uri, count=2) == []


async def test_typing_a_secret_at_the_end_recomputes_only_the_new_tokens(client: Client) -> None:
    uri = fresh_uri()
    client.open(uri, DOCUMENT)
    await client.published(uri)
    before = (await client.status())["diagnostics"]["tokensComputed"]
    end = position(DOCUMENT, len(DOCUMENT))
    line = f'GITHUB_TOKEN = "{TOKEN}"\n'
    client.replace(uri, end, end, line)
    diagnostics = await client.published(uri, count=2)
    after = (await client.status())["diagnostics"]["tokensComputed"]
    text = DOCUMENT + line
    tok = load_tokenizer()
    new_line, whole = len(tok.encode_text(line)), len(tok.encode_text(text))
    # Tagging windows overlap by half, so a token is run in at most two of them.
    assert 0 < after - before <= 2 * (new_line + 2) < whole // 2, (before, after, new_line, whole)
    assert any(d.code == "secret/KEY" and d.range == span_range(text, TOKEN)
               for d in diagnostics), diagnostics


async def test_ranges_count_utf16_units_in_a_crlf_document_with_emoji(client: Client) -> None:
    text = DOCUMENT.replace('"""Upload', '"""😀 Upload').replace("\n", "\r\n")
    uri = fresh_uri()
    client.open(uri, text)
    keys = [d for d in await client.published(uri) if d.code == "secret/KEY"]
    line = text[: text.index(AWS_KEY)].count("\n")
    assert [d.range for d in keys] == [types.Range(types.Position(line, 17),
                                                   types.Position(line, 17 + len(AWS_KEY)))]


async def test_quick_fix_reads_the_key_from_the_environment(client: Client) -> None:
    uri = fresh_uri()
    client.open(uri, DOCUMENT)
    key = next(d for d in await client.published(uri) if d.code == "secret/KEY")
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=key.range,
        context=types.CodeActionContext(diagnostics=[key])))
    assert actions is not None and len(actions) == 1
    action = actions[0]
    assert isinstance(action, types.CodeAction) and action.edit is not None
    assert action.edit.changes is not None
    (edit,) = action.edit.changes[uri]
    assert edit.range == span_range(DOCUMENT, f'"{AWS_KEY}"')
    assert edit.new_text == 'os.environ["ACCESS_KEY_ID"]'
    (versioned,) = action.edit.document_changes or []
    assert isinstance(versioned, types.TextDocumentEdit) and list(versioned.edits) == [edit]
    assert (versioned.text_document.uri, versioned.text_document.version) == (uri, 1)


async def code_actions(client: Client, uri: str, diagnostic: types.Diagnostic
                       ) -> list[types.CodeAction]:
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=diagnostic.range,
        context=types.CodeActionContext(diagnostics=[diagnostic])))
    assert all(isinstance(a, types.CodeAction) for a in actions or [])
    return list(actions or [])  # type: ignore[arg-type]


async def test_a_stale_diagnostic_gets_a_fix_for_the_current_text_or_none(client: Client
                                                                           ) -> None:
    uri = fresh_uri()
    client.open(uri, DOCUMENT)
    key = next(d for d in await client.published(uri) if d.code == "secret/KEY")
    client.type(uri, position(DOCUMENT, len(DOCUMENT)), "# rotated\n")  # another line: version 2
    (action,) = await code_actions(client, uri, key)
    assert action.edit is not None
    (versioned,) = action.edit.document_changes or []
    assert isinstance(versioned, types.TextDocumentEdit)
    assert versioned.text_document.version == 2
    assert [e.range for e in versioned.edits] == [span_range(DOCUMENT, f'"{AWS_KEY}"')]
    # The key's line is completed after the diagnostic: its range still holds the flagged
    # characters, but not the literal they were flagged in. No edit, rather than a partial one.
    client.type(uri, position(DOCUMENT, DOCUMENT.index(AWS_KEY) + len(AWS_KEY)), "/x9Q+TAIL")
    assert await code_actions(client, uri, key) == []


async def test_bug_scores_sit_on_function_names_when_asked_for(client: Client) -> None:
    uri = fresh_uri()
    client.configure({"diagnostics": {"bugs": True, "bugThreshold": 0.0}})
    try:
        client.open(uri, DOCUMENT)
        bugs = [d for d in await client.published(uri) if d.code == "bug/looks-wrong"]
    finally:
        client.configure({"diagnostics": {"bugs": False, "bugThreshold": None}})
    assert [d.range for d in bugs] == [span_range(DOCUMENT, "client")]
    assert bugs[0].severity == types.DiagnosticSeverity.Information


async def test_closing_a_document_clears_its_diagnostics(client: Client) -> None:
    uri = fresh_uri()
    client.open(uri, DOCUMENT)
    assert await client.published(uri)
    client.close(uri)
    assert await client.published(uri, count=2) == []


async def test_secrets_never_reach_the_log(client: Client) -> None:
    uri = fresh_uri()
    client.open(uri, DOCUMENT)
    await client.published(uri)
    await client.status()
    log_text = client.log_path.read_text(encoding="utf-8")  # type: ignore[attr-defined]
    assert "diagnostics model" in log_text  # the log is written (at -v)
    assert AWS_KEY not in log_text and TOKEN not in log_text


async def test_an_edit_withdraws_the_findings_it_touched_before_the_heads_run_again(
    client: Client,
) -> None:
    """With the heads waiting a minute for edits to settle: a line typed above moves the
    warning with its text (published for the new version, and its fix offered at its new place
    without the client's diagnostic); a key typed into the flagged value withdraws it at once."""
    uri = fresh_uri()
    client.open(uri, DOCUMENT)
    assert [d.code for d in await client.published(uri)] == ["secret/KEY"]
    client.configure({"diagnostics": {"debounceMs": 60_000}})
    try:
        client.type(uri, position(DOCUMENT, 0), "# archive\n")  # version 2, above the key
        moved = "# archive\n" + DOCUMENT
        (key,) = await client.published(uri, version=2)
        assert key.range == span_range(moved, AWS_KEY)
        actions = await client.text_document_code_action_async(types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), range=key.range,
            context=types.CodeActionContext(diagnostics=[])))  # the client sends none
        assert [a.title for a in actions or []] == [  # type: ignore[union-attr]
            "Read this secret from the environment variable ACCESS_KEY_ID"]
        inside = moved.index(AWS_KEY) + 4
        client.type(uri, position(moved, inside), "Q")  # version 3, into the key
        assert await client.published(uri, version=3) == []
    finally:
        client.configure({"diagnostics": {"debounceMs": 0}})
