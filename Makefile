# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch; on a GPU machine set TORCH to the build you want.
TORCH ?= torch==2.13.0

.PHONY: setup test lint demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check model cache lsp_server tests
	$(VENV)/bin/mypy model cache lsp_server

# Drives the real server over stdio on a sample file with the packaged default model.
demo: setup
	$(PY) -m lsp_server.demo

clean:
	rm -rf $(VENV) build *.egg-info
