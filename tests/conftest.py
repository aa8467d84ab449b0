"""Shared fixtures: paths to ../shared and small seeded models."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need the project's shared/ folder beside the checkout")
    return SHARED


@pytest.fixture(autouse=True)
def _quiet_logs():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield
