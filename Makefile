# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch; on a GPU machine set TORCH to the build you want.
TORCH ?= torch==2.13.0
NPM ?= npm
VSCODE := editors/vscode

.PHONY: setup editors vscode-web test lint demo clean

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

test: setup editors vscode-web
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check model cache lsp_server tests
	$(VENV)/bin/mypy model cache lsp_server

# Drives the real server over stdio on a sample file with the packaged default model.
demo: setup
	$(PY) -m lsp_server.demo

clean:
	rm -rf $(VENV) build *.egg-info $(VSCODE)/node_modules $(VSCODE)/dist $(VSCODE)/*.vsix
