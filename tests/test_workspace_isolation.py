"""The server never imports from the workspace it is started in: each launch path runs in a
folder whose `model.py`, `cache.py`, `secrets.py`, `tokenizers.py`, `torch.py` (and, where the
launch protects it, `lsp_server.py`) would break or hijack it, and still completes and
diagnoses. The Neovim plugin's launch belongs with the plugin's tests (tests/test_editors.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_client import Client, stop
from lsp_fixtures import build_checkpoint
from lsprotocol import types
from test_editors import VSCODE, install_node_modules

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SHADOWING = ("model", "cache", "secrets", "tokenizers", "torch")
MARK = "imported from the workspace"
OPTIONS = {"debounceMs": 0, "maxNewTokens": 4, "diagnostics": {"debounceMs": 0, "bugs": False}}
AWS_KEY = "AKIAQ3EGRT7ZPWXLMN4K"
DOCUMENT = f'import os\n\nACCESS_KEY_ID = "{AWS_KEY}"\n\n\ndef area(width, height):\n'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("isolation-model") / "tiny")


def workspace(folder: Path, *, with_lsp_server: bool) -> Path:
    """A folder of modules that announce themselves on stdout (the protocol stream) and fail
    if imported, so a hijack breaks the session visibly."""
    names = SHADOWING + (("lsp_server",) if with_lsp_server else ())
    for name in names:
        (folder / f"{name}.py").write_text(
            f"print('{name}.py {MARK}')\nraise ImportError('{name}.py {MARK}')\n",
            encoding="utf-8",
        )
    return folder


def vscode_launch(python: str, server_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment the VS Code extension starts the server with, from
    its built settings module (server.pythonPath set, as its README asks for a venv)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: the VS Code extension is not built")
    built, source = VSCODE / "dist" / "settings.js", VSCODE / "src" / "settings.ts"
    if not built.is_file() or built.stat().st_mtime < source.stat().st_mtime:
        install_node_modules(npm)
        subprocess.run([npm, "run", "build"], cwd=VSCODE, check=True, capture_output=True,
                       timeout=300)
    script = (
        "const s = require(process.argv[1]);"
        "const values = { 'server.pythonPath': process.argv[2],"
        "  'server.args': JSON.parse(process.argv[3]) };"
        "const { command, args } = s.serverCommand((key) => values[key]);"
        "console.log(JSON.stringify({ command, args, env: s.serverEnvironment(process.env) }));"
    )
    done = subprocess.run([node, "-e", script, str(built), python, json.dumps(server_args)],
                          capture_output=True, text=True, check=True, timeout=60)
    launch = json.loads(done.stdout)
    return [launch["command"], *launch["args"]], launch["env"]


def launch_command(path: str, server_args: list[str]) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    if path == "console script":
        script = Path(sys.executable).parent / "gptbigcode-lsp"
        if not script.is_file():
            pytest.skip(f"no console script at {script} (pip install -e .)")
        return [str(script), *server_args], env
    if path == "python -P -m":
        return [sys.executable, "-P", "-m", "lsp_server", *server_args], env
    if path == "python -m":
        return [sys.executable, "-m", "lsp_server", *server_args], env
    assert path == "vscode"
    return vscode_launch(sys.executable, server_args)


async def talk(command: list[str], env: dict[str, str], cwd: Path) -> tuple[Client, str]:
    """Start the server, initialize it, and return the client and a document's URI in the
    workspace."""
    client = Client("gptbigcode-isolation")
    await client.start_io(*command, cwd=str(cwd), env=env)
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), initialization_options=OPTIONS,
        root_uri=cwd.as_uri(),
    ))
    client.initialized(types.InitializedParams())
    return client, (cwd / "app.py").as_uri()


@pytest.mark.parametrize("path", ["console script", "python -P -m", "python -m", "vscode"])
async def test_server_started_in_a_shadowing_workspace_completes_and_diagnoses(
    path: str, checkpoint: Path, tmp_path: Path
) -> None:
    # `python -m` imports lsp_server from the working directory before any of our code runs:
    # only -P (PYTHONSAFEPATH) protects that one name, so it is left out for that launch.
    (tmp_path / "ws").mkdir()
    folder = workspace(tmp_path / "ws", with_lsp_server=path != "python -m")
    log = tmp_path / "server.log"
    command, env = launch_command(
        path, ["--model", str(checkpoint), "--threads", "1", "--log-file", str(log), "-v"]
    )
    client, uri = await asyncio.wait_for(talk(command, env, folder), 60)
    try:
        status = await asyncio.wait_for(client.wait_until_loaded(), 90)
        assert status["state"] == "ready", status
        client.open(uri, DOCUMENT)
        end = types.Position(line=DOCUMENT.count("\n"), character=0)
        await asyncio.wait_for(client.inline(uri, end), 60)
        recent = (await client.status(requests=True))["recent"]
        assert recent[-1]["outcome"] == "model" and recent[-1]["modelSteps"] >= 1, recent
        diagnostics = await client.published(uri, timeout=60)
        assert [d.code for d in diagnostics] == ["secret/KEY"], diagnostics
    finally:
        await asyncio.wait_for(stop(client), 30)
    assert MARK not in log.read_text(encoding="utf-8")
