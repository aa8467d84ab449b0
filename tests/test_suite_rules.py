"""The suite itself: tests that read ../shared find it relative to the checkout, fail without it
under CI and skip (with the reason shown) elsewhere, so a fresh clone of the project alone passes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_test_reads_an_absolute_machine_path():
    absolute = re.compile(r"""["'](/work|/home|/Users|/mnt|/content)/""")
    found = [f"{p.name}:{n}" for p in sorted((ROOT / "tests").glob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if absolute.search(line)]
    assert found == []


def _run_without_shared(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    """A project checkout with no shared/ beside it, running one test that needs ../shared."""
    project = tmp_path / f"project-ci-{ci}"
    (project / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "conftest.py", project / "tests")
    (project / "tests" / "test_needs_shared.py").write_text(
        "def test_reads_the_sample(shared_dir):\n    assert (shared_dir / 'data').is_dir()\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_missing_shared_fails_under_ci_and_skips_visibly_elsewhere(tmp_path):
    ci = _run_without_shared(tmp_path, "true")
    assert ci.returncode == 1 and re.search(r"1 (failed|error)", ci.stdout), ci.stdout
    assert "shared/ folder beside the checkout" in ci.stdout and "CI=true" in ci.stdout
    local = _run_without_shared(tmp_path, None)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    assert re.search(r"SKIPPED \[1\] .*shared is missing", local.stdout), local.stdout
