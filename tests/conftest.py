"""Shared fixtures: paths to ../shared and small seeded models.

``../shared`` (beside the checkout) holds read-only fixtures. A test that needs it takes the
``shared_dir`` fixture, the one place that decides what a missing folder means: under CI
(``CI=true``) the suite must not pass without it, so the test fails; elsewhere (someone who cloned
only the project) it is skipped with the reason shown in pytest's summary (``-ra``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Answers are decoded by PyTorch's fp32 serving copy in every test, whether or not llama-cpp-python is
# installed here and whatever the CPU (an AMX CPU's plan is bf16); subprocesses inherit it. Tests of the
# llama.cpp path and of the plan's precision ask for theirs by name.
os.environ["CLARA_LITE_SERVING"] = "torch-fp32"


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_shared(*parts: str) -> Path:
    """``../shared/<parts>``; fails (CI) or skips (elsewhere) with the path when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        why = f"{path} is missing: these tests need the project's shared/ folder beside the checkout"
        if on_ci():
            pytest.fail(why + " (CI=true: a missing fixture is a failure)", pytrace=False)
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(autouse=True)
def _quiet_logs():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """stage1/2/3.jsonl of the synthetic world (``synthetic_data.write_run_data``), written once per session.
    Read-only: a test that edits rows writes its own copy (``test_hostile_data`` has its own folder)."""
    from synthetic_data import write_run_data

    return write_run_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (servers and decoders in threads; a loaded 2-core machine), then back."""
    from helpers import one_thread

    with one_thread():
        yield
