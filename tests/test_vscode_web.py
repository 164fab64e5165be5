"""VS Code for real: code-server (VS Code 1.100 in the browser) runs the packaged extension
(.vsix) with the real server and the packaged models, and Debian's Chromium, driven by
playwright-core (tests/vscode_web/drive.mjs), types in a Python file as a user does. The
screenshots of each step are kept in build/test-artifacts/vscode-web/ (see the README)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "tests" / "vscode_web"
VSCODE = ROOT / "editors" / "vscode"
ARTIFACTS = ROOT / "build" / "test-artifacts" / "vscode-web"

HEADER = "def add(a, b):"
# What the scripted server answers once the model has answered: two lines, so that Tab must
# accept more than the first.
SUGGESTION = "total = a + b\n    return total"
SECRET_VALUE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ1x9Lq3Ts"
SECRET = f'AWS_SECRET_ACCESS_KEY = "{SECRET_VALUE}"'
ABOVE = "# rotated keys"  # typed at the top of the file, above a flagged secret
FIX_TITLE = "Read this secret from the environment variable AWS_SECRET_ACCESS_KEY"
ENV_LOOKUP = re.compile(
    r"""^AWS_SECRET_ACCESS_KEY = os\.environ\[["']AWS_SECRET_ACCESS_KEY["']\]$""")
# A workspace module named like the server's: launched from this folder, the server must not
# import it (a project's model.py once crashed the server).
SHADOW = 'raise SystemExit("the workspace\'s model.py was imported by the server")\n'


def _installer() -> Any:
    spec = importlib.util.spec_from_file_location("vscode_web_install", WEB / "install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(command: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    return output


def _package_extension(out: Path) -> Path:
    """The extension built and packaged as a user installs it (the .vsix)."""
    npm = shutil.which("npm")
    assert npm is not None
    if not (VSCODE / "node_modules" / ".installed").is_file():
        _run([npm, "ci", "--no-audit", "--no-fund"], VSCODE, timeout=600)
        (VSCODE / "node_modules" / ".installed").touch()
    _run([npm, "run", "build"], VSCODE, timeout=300)
    vsix = out / "gptbigcode-lsp.vsix"
    _run([str(VSCODE / "node_modules" / ".bin" / "vsce"), "package", "--no-dependencies",
          "--allow-missing-repository", "--out", str(vsix)], VSCODE, timeout=300)
    return vsix


def _settings(run: Path) -> dict[str, Any]:
    return {
        # The scripted server: the real server, whose answers (after the model has run) are
        # SUGGESTION, so that what Tab must insert is known.
        "gptbigcode.server.command": sys.executable,
        "gptbigcode.server.args": [str(ROOT / "tests" / "fixtures" / "scripted_server.py"),
                                   "--threads", "1", "-v", "--log-file", str(run / "server.log")],
        # Wide enough that a line typed above a secret leaves its warning a version behind
        # while the quick fix menu is asked for.
        "gptbigcode.diagnostics.debounceMs": 2500,
        # Every suggestion shown: the editor's path is under test here; the confidence gate is
        # measured by tests/bench/accept.py.
        "gptbigcode.minConfidence": 0,
        "workbench.startupEditor": "none",
        "security.workspace.trust.enabled": False,
        "telemetry.telemetryLevel": "off",
        "extensions.ignoreRecommendations": True,
        "workbench.tips.enabled": False,
        "workbench.enableExperiments": False,
        "update.mode": "none",
        # The word-based suggest widget would take Tab from the ghost text.
        "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
        "editor.suggestOnTriggerCharacters": False,
        "editor.wordBasedSuggestions": "off",
    }


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """End a process started in its own session and everything it started (code-server: the
    extension host and the language server; the driver: the browser)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            time.sleep(0.5)  # children of the group may outlive the leader for a moment
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def vscode_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    installer = _installer()
    chromium = shutil.which("chromium")
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed: install Node 20 to run VS Code's test")
    if not installer.installed() or chromium is None:
        pytest.skip("code-server and Chromium are not installed: run `make vscode-web` "
                    "(apt-get needs root)")
    run = tmp_path_factory.mktemp("vscode-web")
    for sub in ("ext", "user/User", "workspace", "xdg-config", "xdg-data", "xdg-cache", "tmp"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.iterdir():
        old.unlink()
    workspace = run / "workspace"
    sample = workspace / "sample.py"
    sample.write_text("import os\n\n", encoding="utf-8")
    (workspace / "model.py").write_text(SHADOW, encoding="utf-8")
    (run / "user" / "User" / "settings.json").write_text(json.dumps(_settings(run), indent=2))
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(run / "xdg-config"),
        "XDG_DATA_HOME": str(run / "xdg-data"),
        "XDG_CACHE_HOME": str(run / "xdg-cache"),
        "TMPDIR": str(run / "tmp"),
        "GPTBIGCODE_SCRIPTED_SUGGESTIONS": json.dumps([SUGGESTION]),
        "GPTBIGCODE_SERVER_PIDS": str(run / "server.pids"),
    }
    code_server = str(installer.code_server())
    dirs = ["--extensions-dir", str(run / "ext"), "--user-data-dir", str(run / "user")]
    vsix = _package_extension(run)
    _run([code_server, *dirs, "--install-extension", str(vsix)], run, timeout=120, env=env)

    port = _free_port()
    with open(run / "code-server.log", "wb") as log:
        server = subprocess.Popen(
            [code_server, *dirs, "--auth", "none", "--bind-addr", f"127.0.0.1:{port}",
             "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
             "--disable-getting-started-override", str(workspace)],
            cwd=workspace, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "HTTP server listening" not in (run / "code-server.log").read_text(errors="replace"):
            assert server.poll() is None, (run / "code-server.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "code-server did not start listening in 60 s"
            time.sleep(0.2)
        config = {
            "url": f"http://127.0.0.1:{port}/?folder={workspace}",
            "file": str(sample), "out": str(ARTIFACTS), "browser": chromium,
            "modules": str(installer.install_dir() / "node_modules"),
            "header": HEADER, "secret": SECRET, "above": ABOVE, "pids": str(run / "server.pids"),
            "timeoutMs": 90_000,
        }
        (run / "drive.json").write_text(json.dumps(config))
        # Its own process group too, so that a driver stopped by the timeout takes its
        # browser with it.
        driver = subprocess.Popen(["node", str(WEB / "drive.mjs"), str(run / "drive.json")],
                                  cwd=run, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = driver.communicate(timeout=600)
        finally:
            _stop_group(driver)
    finally:
        _stop_group(server)
        for name in ("server.log", "code-server.log"):
            if (run / name).is_file():
                shutil.copyfile(run / name, ARTIFACTS / name)
    result = json.loads((ARTIFACTS / "result.json").read_text())
    result["driver_output"] = output.decode(errors="replace")[-8000:]
    result["by_step"] = {s["step"]: s for s in result["steps"]}
    result["leftover"] = [pid for pid in _pids(run / "server.pids") if _alive(pid)]
    return result


def _pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").is_dir() and "zombie" not in Path(
        f"/proc/{pid}/status").read_text().lower()


def _step(session: dict[str, Any], name: str) -> dict[str, Any]:
    assert not session["errors"], (session["errors"], session["driver_output"])
    assert name in session["by_step"], (sorted(session["by_step"]), session["driver_output"])
    step: dict[str, Any] = session["by_step"][name]
    assert (ARTIFACTS / step["screenshot"]).stat().st_size > 10_000  # a real PNG of the window
    return step


def _no_part_of_the_secret(text: str) -> None:
    """Not the value, nor any 8-character piece of it."""
    pieces = {SECRET_VALUE[i : i + 8] for i in range(len(SECRET_VALUE) - 7)}
    assert not [p for p in pieces if p in text], text


@pytest.mark.slow
def test_vscode_status_item_reaches_ready(vscode_session: dict[str, Any]) -> None:
    ready = _step(vscode_session, "ready")
    assert "GPTBigCode: ready" in ready["label"]
    assert "default on cpu" in ready["label"]  # the packaged model, from the server's status
    assert re.fullmatch(r"GPTBigCode: default ready on cpu \((float32|bfloat16)\)",
                        ready["message"]), ready["message"]


@pytest.mark.slow
def test_vscode_tab_accepts_the_whole_multiline_suggestion(vscode_session: dict[str, Any]
                                                            ) -> None:
    ghost = _step(vscode_session, "ghost")["ghost"]
    # VS Code renders the first line inline and the rest as lines below the cursor.
    shown = ghost.replace("\u241f", "").replace("\xa0", " ")
    assert "total = a + b" in shown and "    return total" in shown, shown
    accepted = _step(vscode_session, "accepted")["text"]
    assert accepted == f"import os\n\n{HEADER}\n    total = a + b\n    return total"


@pytest.mark.slow
def test_vscode_quick_fix_moves_a_settled_secret_into_the_environment(
    vscode_session: dict[str, Any]
) -> None:
    assert SECRET in _step(vscode_session, "secret")["warned"]
    menu = _step(vscode_session, "settled-menu")["titles"]
    assert FIX_TITLE in menu
    fixed = _step(vscode_session, "settled-fixed")
    assert fixed["chosen"] == FIX_TITLE
    lines = fixed["text"].split("\n")
    assert ENV_LOOKUP.match(lines[-1]), lines[-1]
    _no_part_of_the_secret(fixed["text"])
    compile(fixed["text"], "sample.py", "exec")  # still Python


@pytest.mark.slow
def test_vscode_quick_fix_on_a_warning_a_version_behind_takes_the_whole_secret(
    vscode_session: dict[str, Any]
) -> None:
    """A line typed above a flagged secret: the warning moves with its line and is a version
    behind the text (the server re-diagnoses after 2.5 s); its fix, computed on the text as
    it now is, replaces the whole literal."""
    settled = _step(vscode_session, "settled-fixed")["text"]
    menu = _step(vscode_session, "behind-menu")
    assert menu["warned"] is True and FIX_TITLE in menu["titles"]
    fixed = _step(vscode_session, "behind-fixed")
    assert fixed["chosen"] == FIX_TITLE
    lines = fixed["text"].split("\n")
    assert lines[0] == ABOVE and lines[1:-1] == settled.split("\n")
    assert ENV_LOOKUP.match(lines[-1]), lines[-1]
    _no_part_of_the_secret(fixed["text"])
    compile(fixed["text"], "sample.py", "exec")


@pytest.mark.slow
def test_vscode_a_key_typed_into_a_secret_withdraws_its_warning_and_fix(
    vscode_session: dict[str, Any]
) -> None:
    """The warning goes at once (the server withdraws a finding whose text an edit touched,
    without waiting for the heads), no fix is offered for the old text, and the fix after the
    server has re-diagnosed the line takes the secret as it now reads."""
    before = _step(vscode_session, "behind-fixed")["text"]
    menu = _step(vscode_session, "edited-menu")
    assert menu["withdrawn"] is True
    assert FIX_TITLE not in menu["titles"]
    unfixed = _step(vscode_session, "edited-unfixed")
    assert unfixed["chosen"] is None
    assert unfixed["text"] == before + "\n" + SECRET[:-2] + "Q" + SECRET[-2:]
    final = _step(vscode_session, "caught-up-fixed")["text"]
    lines = final.split("\n")
    assert lines[:-1] == before.split("\n")
    assert ENV_LOOKUP.match(lines[-1]), lines[-1]
    _no_part_of_the_secret(final)
    compile(final, "sample.py", "exec")


@pytest.mark.slow
def test_vscode_restart_command_starts_a_new_server(vscode_session: dict[str, Any]) -> None:
    restarted = _step(vscode_session, "restarted")
    before, after = restarted["before"], restarted["after"]
    assert len(before) == 1 and len(after) == 2 and after[0] == before[0]
    assert restarted["oldAlive"] == []  # the old server exited
    assert "GPTBigCode: ready" in restarted["label"]
    assert vscode_session["leftover"] == []  # and nothing outlives code-server


@pytest.mark.slow
def test_vscode_session_logs_no_server_error(vscode_session: dict[str, Any]) -> None:
    log = (ARTIFACTS / "server.log").read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "workspace's model.py" not in log, log[-4000:]
