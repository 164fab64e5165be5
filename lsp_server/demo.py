"""`make demo`: start the real server over stdio, open a sample file, ask for inline
completions at a few places and type through one, then type a hard-coded key and show the
diagnostics and quick fix that come back, printing what an editor would show.

    python -m lsp_server.demo [--model default|FOLDER|ID] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from importlib import resources
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

URI = "file:///demo/demo_sample.py"
CURSOR = "▌"
# (title, text the cursor follows, text inserted there first): a line end, mid-line, and an
# empty line inside a function body, with the rest of the function after it. Each lies above
# the one before, so that typing at one leaves the positions of the next unchanged.
PLACES = [
    ("at a line end", "    a, b = 0, 1", ""),
    ("mid-line", "return math.hypot(", ""),
    ("inside a function, with a suffix", "    best = points[0]\n", "    "),
]
TYPED = 3  # characters of the first suggestion typed one by one
# A line typed at the end of the file for the diagnostics part (a made-up key).
SECRET_LINE = 'GITHUB_TOKEN = "ghp_R7c2XfKq9LmZ0aTyW4bN8sVdE1hJ6uPo3gQi"\n'


class DemoClient(LanguageClient):
    """Prints what the server reports on its own: progress and messages."""

    def __init__(self) -> None:
        super().__init__("gptbigcode-demo", "0")
        self.document_version = 1
        self.published: list[types.PublishDiagnosticsParams] = []

        @self.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def diagnostics(params: types.PublishDiagnosticsParams) -> None:
            self.published.append(params)

        @self.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def create_progress(params: types.WorkDoneProgressCreateParams) -> None:
            return None

        @self.feature(types.PROGRESS)
        def progress(params: types.ProgressParams) -> None:
            value = params.value
            get = value.get if isinstance(value, dict) else lambda k: getattr(value, k, None)
            print(f"  [progress] {get('kind')}: {get('title') or get('message') or ''}")

        @self.feature(types.WINDOW_SHOW_MESSAGE)
        def show_message(params: types.ShowMessageParams) -> None:
            print(f"  [message] {params.type.name}: {params.message}")

    async def inline(self, at: types.Position) -> tuple[str, float]:
        started = time.perf_counter()
        result = await self.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI), position=at,
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
            ),
        ))
        elapsed = (time.perf_counter() - started) * 1000
        items = result.items if isinstance(result, types.InlineCompletionList) else result or []
        return (str(items[0].insert_text) if items else ""), elapsed

    def insert(self, at: types.Position, text: str) -> None:
        self.document_version += 1
        self.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(
                uri=URI, version=self.document_version
            ),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(at, at), text=text
            )],
        ))

    async def status(self, requests: bool = False) -> dict[str, Any]:
        result = await self.workspace_execute_command_async(types.ExecuteCommandParams(
            command="gptbigcode.status", arguments=[{"requests": requests}]
        ))
        return dict(result or {})


def packaged_model_missing(model: str) -> str | None:
    """Why `--model default` cannot work here, or None."""
    if model != "default":
        return None
    from model.checkpoint import CheckpointError, resolve_checkpoint

    try:
        resolve_checkpoint("default")
    except CheckpointError as error:
        return str(error)
    return None


def position_after(text: str, needle: str) -> types.Position:
    offset = text.index(needle) + len(needle)
    line = text.count("\n", 0, offset)
    column = text[text.rfind("\n", 0, offset) + 1 : offset]
    return types.Position(line=line, character=len(column.encode("utf-16-le")) // 2)


def show(text: str, at: types.Position, suggestion: str) -> None:
    """The cursor's line (and the next two) as an editor would draw the ghost text."""
    lines = text.split("\n")
    line = lines[at.line]
    head = line.encode("utf-16-le")[: 2 * at.character].decode("utf-16-le")
    ghost = suggestion.replace("\n", "\n      ") if suggestion else "(no suggestion)"
    print(f"  {at.line + 1:4d}  {head}{CURSOR}{ghost}{line[len(head):]}")
    for number in range(at.line + 1, min(at.line + 3, len(lines))):
        print(f"  {number + 1:4d}  {lines[number]}")


async def run(model: str, threads: int | None) -> int:
    text = resources.files("lsp_server").joinpath("demo_sample.py").read_text(encoding="utf-8")
    client = DemoClient()
    args = ["-m", "lsp_server", "--model", model]
    if threads:
        args += ["--threads", str(threads)]
    print(f"starting: {sys.executable} {' '.join(args)}")
    await client.start_io(sys.executable, *args)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(
            window=types.WindowClientCapabilities(work_done_progress=True)
        ),
        initialization_options={"maxNewTokens": 48, "debounceMs": 0},
    ))
    client.initialized(types.InitializedParams())
    try:
        return await drive(client, text)
    finally:
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()


async def drive(client: DemoClient, text: str) -> int:
    status = await client.status()
    while status["state"] in ("idle", "loading"):
        await asyncio.sleep(0.1)
        status = await client.status()
    if not status["ready"]:
        print(f"\nthe server could not load the model: {status['error']}", file=sys.stderr)
        return 1
    print(f"model {status['model']} on {status['device']} ({status['dtype']}), "
          f"layout {status['layout']}\n")
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.
        TextDocumentItem(uri=URI, language_id="python", version=1, text=text)))
    typed_through = False
    for title, needle, inserted in PLACES:  # later places lie above earlier ones
        at = position_after(text, needle)
        if inserted:
            client.insert(at, inserted + "\n")
            text = text.replace(needle, needle + inserted + "\n", 1)
            at = types.Position(line=at.line, character=at.character + len(inserted))
        suggestion, ms = await client.inline(at)
        print(f"-- {title} (line {at.line + 1}), {ms:.1f} ms")
        show(text, at, suggestion)
        print()
        if suggestion and not typed_through:
            text = await type_through(client, text, at, suggestion)
            typed_through = True
    await show_diagnostics(client, text)
    status = await client.status()
    print("-- status (gptbigcode.status)")
    print(json.dumps(status, indent=2, ensure_ascii=False))
    return 0


async def show_diagnostics(client: DemoClient, text: str, timeout: float = 60.0) -> None:
    """Type a line with a key at the end of the file; print the diagnostics and quick fix."""
    lines = text.split("\n")
    end = types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2)
    print("-- typing a line with a hard-coded token at the end of the file")
    seen = len(client.published)
    client.insert(end, SECRET_LINE)
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        fresh = [p for p in client.published[seen:] if p.version == client.document_version]
        if fresh:
            break
        await asyncio.sleep(0.05)
    else:
        print("  (no diagnostics arrived)\n")
        return
    diagnostics = fresh[-1].diagnostics
    for d in diagnostics:
        print(f"  line {d.range.start.line + 1}:{d.range.start.character + 1}-"
              f"{d.range.end.character + 1} {d.severity.name if d.severity else ''} "
              f"{d.code}: {d.message}")
    secrets = [d for d in diagnostics if str(d.code).startswith("secret/")]
    if secrets:
        actions = await client.text_document_code_action_async(types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=URI), range=secrets[0].range,
            context=types.CodeActionContext(diagnostics=[secrets[0]])))
        for action in actions or []:
            if isinstance(action, types.CodeAction) and action.edit and action.edit.changes:
                edits = action.edit.changes[URI]
                print(f"  quick fix: {action.title}: "
                      + "; ".join(repr(e.new_text) for e in edits))
    print()


async def type_through(client: DemoClient, text: str, at: types.Position, suggestion: str) -> str:
    """Type the start of a suggestion one character at a time, asking again after each."""
    print(f"-- typing the first {TYPED} characters of the suggestion at line {at.line + 1}")
    for char in suggestion[:TYPED]:
        steps = (await client.status())["modelSteps"]
        client.insert(at, char)
        offset = _offset(text, at)
        text = text[:offset] + char + text[offset:]
        if char == "\n":
            at = types.Position(line=at.line + 1, character=0)
        else:
            at = types.Position(line=at.line, character=at.character + len(char.encode(
                "utf-16-le")) // 2)
        suggestion, ms = await client.inline(at)
        ran = (await client.status())["modelSteps"] - steps
        how = "type-through, no model step" if ran == 0 else f"{ran} model steps"
        print(f"  typed {char!r}: {ms:.1f} ms, {how}")
        show(text, at, suggestion)
    print()
    return text


def _offset(text: str, at: types.Position) -> int:
    start = sum(len(line) + 1 for line in text.split("\n")[: at.line])
    line = text.split("\n")[at.line]
    return start + len(line.encode("utf-16-le")[: 2 * at.character].decode("utf-16-le"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsp_server.demo", description=__doc__)
    parser.add_argument("--model", default="default", help="default, a folder or a model id")
    parser.add_argument("--threads", type=int, help="CPU threads for the server's model")
    args = parser.parse_args(argv)
    missing = packaged_model_missing(args.model)
    if missing is not None:
        print(f"demo: cannot run with the packaged default model: {missing}\n"
              "demo: train or install it first, or run with --model FOLDER", file=sys.stderr)
        return 1
    return asyncio.run(run(args.model, args.threads))


if __name__ == "__main__":
    sys.exit(main())
