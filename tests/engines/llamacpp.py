"""llama.cpp's llama-server for the remote backend's tests and the replay benchmark.

`python -m tests.engines.llamacpp install` builds llama-server from the source vendored in
llama-cpp-python's sdist (pip download, CMake, no network at run time) under
~/.cache/gptbigcode-lsp/llama.cpp/<version>-<variant>, and `convert` writes a model folder as
GGUF with the converter from the same source. `LlamaServer` starts it on loopback. `make
engines` runs the install; where it cannot (no cmake, no compiler) it says why and the tests
skip with that reason (CI fails such a skip)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

VERSION = "0.3.36"  # llama-cpp-python's sdist, which vendors the llama.cpp source it binds
# "native": built for this CPU (GGML_NATIVE). "avx2": AVX2 + FMA + F16C only, what a CPU
# without AVX-512 runs; the replay benchmark compares it with our AVX2 kernels.
VARIANTS = {
    "native": ["-DGGML_NATIVE=ON"],
    "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
             "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF"],
}
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DGGML_OPENMP=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
]


def cache_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gptbigcode-lsp" / "llama.cpp"


def cpu_tag() -> str:
    """A native build runs only on CPUs with the same vector extensions: key it by them."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = " ".join(sorted(f for f in line.split(":", 1)[1].split()
                                        if f.startswith(("avx", "fma", "f16c", "sse", "bmi"))))
                break
    except OSError:
        pass
    return hashlib.sha256(flags.encode()).hexdigest()[:10]


def build_dir(variant: str = "native") -> Path:
    tag = f"{VERSION}-{variant}" + (f"-{cpu_tag()}" if variant == "native" else "")
    return cache_root() / tag


def source_dir() -> Path:
    return cache_root() / f"src-{VERSION}" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"


def server_binary(variant: str = "native") -> Path:
    return build_dir(variant) / "bin" / "llama-server"


def fetch_source() -> Path:
    src = source_dir()
    if (src / "CMakeLists.txt").is_file():
        return src
    root = cache_root() / f"src-{VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    ":all:", f"llama-cpp-python=={VERSION}", "-d", str(root)], check=True)
    archive = root / f"llama_cpp_python-{VERSION}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    archive.unlink()
    return src


BUILD_PACKAGES = {"cmake": "cmake", "c++": "g++", "cc": "gcc"}  # Debian's, by the tool


def install_build_tools() -> None:
    """apt-get the build tools that are missing, where that can be done (root, Debian)."""
    missing = [pkg for tool, pkg in BUILD_PACKAGES.items() if shutil.which(tool) is None]
    if not missing or shutil.which("apt-get") is None or os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(command, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(command, env=env, check=True)


def why_not_buildable() -> str | None:
    for tool in BUILD_PACKAGES:
        if shutil.which(tool) is None:
            return f"llama-server: {tool} not found (install cmake and a C++ compiler)"
    return None


def install(variant: str = "native", jobs: int | None = None) -> Path:
    """Build llama-server (once per variant and CPU); returns its path."""
    binary = server_binary(variant)
    if binary.is_file():
        return binary
    install_build_tools()
    reason = why_not_buildable()
    if reason:
        raise RuntimeError(reason)
    src = fetch_source()
    work = build_dir(variant).with_name(build_dir(variant).name + ".build")
    subprocess.run(["cmake", "-S", str(src), "-B", str(work), *CMAKE_OPTIONS,
                    *VARIANTS[variant]], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(work), "--target", "llama-server", "-j",
                    str(jobs or os.cpu_count() or 2)], check=True)
    built = work / "bin" / "llama-server"
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, binary)
    shutil.rmtree(work, ignore_errors=True)
    return binary


def model_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in model_dir.iterdir() if p.is_file()):
        h.update(name.encode())
        h.update((model_dir / name).read_bytes())
    return h.hexdigest()[:12]


_CONVERT = """
import sys
sys.path.insert(0, {src!r})
sys.path.insert(1, {gguf!r})
import conversion.base as base
original = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    # The pre-tokenizer is StarCoder's (digits one at a time, GPT-2's splitting otherwise);
    # the converter only knows it by the hash of StarCoder's own vocabulary.
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        return "starcoder"
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = ["convert_hf_to_gguf.py", *{args!r}]
import runpy
runpy.run_path({script!r}, run_name="__main__")
"""


def convert(model_dir: Path, outtype: str = "f32") -> Path:
    """The model folder as GGUF (cached by its files' digest)."""
    model_dir = Path(model_dir).resolve()
    out = cache_root() / "gguf" / f"{model_dir.name}-{model_digest(model_dir)}-{outtype}.gguf"
    if out.is_file():
        return out
    src = fetch_source()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    code = _CONVERT.format(src=str(src), gguf=str(src / "gguf-py"),
                           script=str(src / "convert_hf_to_gguf.py"),
                           args=[str(model_dir), "--outtype", outtype, "--outfile", str(partial)])
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
    partial.rename(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """llama-server on loopback for the duration of a `with` block."""

    def __init__(self, gguf: Path, *, ctx: int = 2048, threads: int = 1, variant: str = "native",
                 port: int | None = None, slots: int = 1, api_key: str | None = None,
                 extra: list[str] | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [str(server_binary(variant)), "-m", str(gguf), "--host", "127.0.0.1",
                        "--port", str(self.port), "-c", str(ctx), "-t", str(threads), "-tb",
                        str(threads), "-np", str(slots), "--no-webui", "--metrics",
                        *(["--api-key", api_key] if api_key else []), *(extra or [])]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if json.load(r).get("status") == "ok":
                        return self
            except urllib.error.HTTPError as error:
                if error.code == 401:  # up, and asking for the key
                    return self
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError("llama-server did not become healthy within 120 s")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="build llama-server into the cache")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="native")
    p.add_argument("--soft", action="store_true",
                   help="where it cannot be built, say why and exit 0 (the tests then skip)")
    c = sub.add_parser("convert", help="write a model folder as GGUF")
    c.add_argument("model_dir", type=Path)
    c.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16"])
    args = parser.parse_args()
    if args.command == "install":
        try:
            print(install(args.variant))
        except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
            if not args.soft:
                raise
            print(f"llama-server could not be built ({error}): its tests will skip",
                  file=sys.stderr)
    else:
        print(convert(args.model_dir, args.outtype))


if __name__ == "__main__":
    main()
