"""Fixtures shared by the test packages.

``docker_image`` starts a Docker engine (``.ci/docker-engine.sh``) and builds the
registry-free test image ``discovery-sandbox:test`` (``.ci/docker-test-image.sh``) once per
session. When either fails the tests that need it are skipped, except under ``CI=true``
where that is a failure.

Tests may add rows to :data:`HOSTILE_ROWS` (in ``config.stash``); they are printed as a table
in the terminal summary (the hostile-candidate corpus does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI_DIR = ROOT / ".ci"
DOCKER_TEST_IMAGE = "discovery-sandbox:test"

#: rows (backend, case, status, reason) that the terminal summary prints as a table
HOSTILE_ROWS = pytest.StashKey[list[tuple[str, str, str, str]]]()


def _prepare(script: str, timeout: float) -> str | None:
    """Run a CI helper script; the reason it failed, or None."""
    try:
        # the image mirrors the interpreter that runs the tests (a venv's: its site-packages go in)
        env = {**os.environ, "SANDBOX_PYTHON": os.environ.get("SANDBOX_PYTHON", sys.executable)}
        proc = subprocess.run(["bash", str(CI_DIR / script)], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"{script} did not finish in {timeout:g} s"
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
        return f"{script} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}"
    return None


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The local test image, built if needed; skip (or, under CI=true, fail) without an engine."""
    for script, timeout in (("docker-engine.sh", 300), ("docker-test-image.sh", 900)):
        reason = _prepare(script, timeout)
        if reason:
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
    return DOCKER_TEST_IMAGE


def pytest_configure(config: pytest.Config) -> None:
    config.stash[HOSTILE_ROWS] = []


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    rows = config.stash.get(HOSTILE_ROWS, [])
    if not rows:
        return
    terminalreporter.section("hostile candidates: status and reason per backend")
    width = max(len(case) for _, case, _, _ in rows)
    for backend, case, status, reason in sorted(rows, key=lambda r: (r[1], r[0])):
        terminalreporter.write_line(f"{case:<{width}}  {backend:<6}  {status:<8}  {reason[:160]}")


SHORT_RUN_CONFIG = """
[run]
task = "{task}"
budget = {budget}
workers = 2
islands = 2
heldout_top = 2
leaders = 1
extra_seeds = 1
seed = 3
"""


@pytest.fixture(scope="session")
def short_run_db(tmp_path_factory):
    """``short_run_db(task="preference", budget=6)``: the path of an archive made by a real short
    offline ``discovery run`` (real sandboxes, real SQLite), made once per session and task.
    Tests that read it must not change it; copy it first to write."""
    import sys

    made: dict[tuple[str, int], Path] = {}

    def make(task: str = "preference", budget: int = 6) -> Path:
        key = (task, budget)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"short-run-{Path(task).stem}")
            config = folder / "run.toml"
            config.write_text(SHORT_RUN_CONFIG.format(task=task, budget=budget))
            db = folder / "runs.db"
            proc = subprocess.run(
                [sys.executable, "-m", "discovery.cli", "run", "--config", str(config), "--db", str(db), "--quiet"],
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, f"short run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            made[key] = db
        return made[key]

    return make
