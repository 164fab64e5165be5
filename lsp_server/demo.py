"""`make demo`: the real server over stdio on a sample file, showing what an editor would show
(`python -m lsp_server.demo [--model default|FOLDER|ID] [--threads N]`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from importlib import resources
from typing import Any

from lsprotocol import types

from .client import Client, start, stop

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


def report(method: str, params: Any) -> None:
    """Print what the server reports on its own: progress and messages."""
    if method == types.PROGRESS:
        value = params.value
        get = value.get if isinstance(value, dict) else lambda k: getattr(value, k, None)
        print(f"  [progress] {get('kind')}: {get('title') or get('message') or ''}")
    elif method == types.WINDOW_SHOW_MESSAGE:
        print(f"  [message] {params.type.name}: {params.message}")


async def inline(client: Client, at: types.Position) -> tuple[str, float]:
    """The first inline suggestion at `at` ("" for none), and how long it took in ms."""
    started = time.perf_counter()
    items = await client.inline(URI, at)
    elapsed = (time.perf_counter() - started) * 1000
    return (str(items[0].insert_text) if items else ""), elapsed


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
    args = ["--model", model]
    if threads:
        args += ["--threads", str(threads)]
    print(f"starting: {sys.executable} -m lsp_server {' '.join(args)}")
    client = await start(args, {"maxNewTokens": 48, "debounceMs": 0},
                         client=Client("gptbigcode-demo", report))
    try:
        return await drive(client, text)
    finally:
        await stop(client)


async def drive(client: Client, text: str) -> int:
    status = await client.status()
    while status["state"] in ("idle", "loading"):
        await asyncio.sleep(0.1)
        status = await client.status()
    if not status["ready"]:
        print(f"\nthe server could not load the model: {status['error']}\n"
              "demo: is the packaged model (model/default/) installed? Or run with "
              "--model FOLDER", file=sys.stderr)
        return 1
    print(f"model {status['model']} on {status['device']} ({status['dtype']}), "
          f"layout {status['layout']}\n")
    client.open(URI, text)
    typed_through = False
    for title, needle, inserted in PLACES:  # later places lie above earlier ones
        at = position_after(text, needle)
        if inserted:
            client.type(URI, at, inserted + "\n")
            text = text.replace(needle, needle + inserted + "\n", 1)
            at = types.Position(line=at.line, character=at.character + len(inserted))
        suggestion, ms = await inline(client, at)
        print(f"-- {title} (line {at.line + 1}), {ms:.1f} ms")
        show(text, at, suggestion)
        gated = False
        if not suggestion:
            # Hidden by the confidence gate, or nothing worth showing: what the model said.
            client.configure({"minConfidence": 0})
            suggestion, _ = await inline(client, at)
            gated = bool(suggestion)
            if gated:
                print("  below the confidence gate (hidden; minConfidence 0 shows it):")
                show(text, at, suggestion)
            else:
                client.configure({"minConfidence": None})
        print()
        if suggestion and not typed_through:
            text = await type_through(client, text, at, suggestion)
            typed_through = True
        if gated:
            client.configure({"minConfidence": None})
    await show_diagnostics(client, text)
    status = await client.status()
    print("-- status (gptbigcode.status)")
    print(json.dumps(status, indent=2, ensure_ascii=False))
    return 0


async def show_diagnostics(client: Client, text: str, timeout: float = 60.0) -> None:
    """Type a line with a key at the end of the file; print the diagnostics and quick fix."""
    lines = text.split("\n")
    end = types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2)
    print("-- typing a line with a hard-coded token at the end of the file")
    client.type(URI, end, SECRET_LINE)
    try:
        diagnostics = await client.published(URI, client.versions[URI], timeout=timeout)
    except TimeoutError:
        print("  (no diagnostics arrived)\n")
        return
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


async def type_through(client: Client, text: str, at: types.Position, suggestion: str) -> str:
    """Type the start of a suggestion one character at a time, asking again after each."""
    print(f"-- typing the first {TYPED} characters of the suggestion at line {at.line + 1}")
    for char in suggestion[:TYPED]:
        steps = (await client.status())["modelSteps"]
        client.type(URI, at, char)
        offset = _offset(text, at)
        text = text[:offset] + char + text[offset:]
        if char == "\n":
            at = types.Position(line=at.line + 1, character=0)
        else:
            at = types.Position(line=at.line, character=at.character + len(char.encode(
                "utf-16-le")) // 2)
        suggestion, ms = await inline(client, at)
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
    return asyncio.run(run(args.model, args.threads))


if __name__ == "__main__":
    sys.exit(main())
