"""The command line (`gptbigcode-lsp`): its help and version, and the server's way out: `exit`
and the client closing the pipes (Neovim's `:qa!`) end it with no traceback in the log."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lsp_fixtures import build_checkpoint
from lsp_wire import ROOT, WireClient, encode, frame

from lsp_server import cli, scan


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("cli-model") / "tiny")


# ---- help and version


def test_help_usage_names_the_scan_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.startswith("usage: gptbigcode-lsp [options]")
    assert "gptbigcode-lsp scan [scan options] PATH..." in usage


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    version = importlib.metadata.version("gptbigcode-lsp")
    assert capsys.readouterr().out.strip() == f"gptbigcode-lsp {version}"


@pytest.mark.parametrize("parser", [cli.build_parser(), scan.build_parser()],
                         ids=["server", "scan"])
def test_every_flag_has_help_text(parser: argparse.ArgumentParser) -> None:
    silent = [a.dest for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
    assert silent == [], f"arguments without help: {silent}"


# ---- shutdown


def start(checkpoint: Path, stderr: Path) -> WireClient:
    with stderr.open("wb") as log:  # the child keeps its own copy
        return WireClient(["--model", str(checkpoint), "-v"], stderr=log)


def assert_no_traceback(stderr: Path) -> None:
    log = stderr.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "Error" not in log, log[-3000:]


@pytest.mark.slow
def test_exit_after_shutdown_ends_with_status_0_and_no_traceback(
    checkpoint: Path, tmp_path: Path
) -> None:
    client = start(checkpoint, tmp_path / "stderr.txt")
    client.initialize({"diagnostics": {"enabled": False}})
    assert client.wait_until_loaded()["state"] == "ready"
    assert client.close() == 0
    assert_no_traceback(tmp_path / "stderr.txt")


@pytest.mark.slow
def test_exit_without_shutdown_ends_with_status_1(checkpoint: Path, tmp_path: Path) -> None:
    client = start(checkpoint, tmp_path / "stderr.txt")
    client.initialize({"diagnostics": {"enabled": False}})
    client.notify("exit")
    assert client.process.wait(30) == 1
    assert_no_traceback(tmp_path / "stderr.txt")


@pytest.mark.slow
def test_client_closing_both_pipes_ends_the_server_without_traceback(
    checkpoint: Path, tmp_path: Path
) -> None:
    """As Neovim quitting with `:qa!`: the server's output closes first, while it still has
    answers and progress to write, then its input."""
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lsp_server", "--model", str(checkpoint), "--threads", "1",
             "-v"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT,
        )
    assert process.stdin is not None and process.stdout is not None
    process.stdout.close()  # nobody reads: every write of the server hits a closed pipe

    def send(message: dict[str, object]) -> None:
        assert process.stdin is not None
        process.stdin.write(frame(encode({"jsonrpc": "2.0", **message})))
        process.stdin.flush()

    send({"id": 1, "method": "initialize", "params": {
        "capabilities": {"window": {"workDoneProgress": True}},
        "initializationOptions": {"diagnostics": {"enabled": False}}}})
    send({"method": "initialized", "params": {}})
    for n in range(5):
        send({"id": 2 + n, "method": "workspace/executeCommand",
              "params": {"command": "gptbigcode.status", "arguments": []}})
        time.sleep(0.1)
    process.stdin.close()
    assert process.wait(30) == 0
    assert_no_traceback(stderr)
    assert "the client closed the server's output" in stderr.read_text(encoding="utf-8")
