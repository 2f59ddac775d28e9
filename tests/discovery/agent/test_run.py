"""`discovery run` end to end, offline: a real archive, real sandboxes, real processes."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from discovery.archive import Archive

FAST = """
[run]
budget = {budget}
workers = 2
islands = 2
heldout_top = 1
leaders = 1
extra_seeds = 1
seed = 3
"""


def cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "discovery.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def write_config(tmp_path: Path, budget: int) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(FAST.format(budget=budget))
    return path


def evaluation_rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        query = "SELECT id, candidate_id, suite, config, seed, fitness FROM evaluations ORDER BY id"
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def test_offline_run_records_everything(tmp_path):
    db = tmp_path / "runs.db"
    proc = cli("run", "--config", str(write_config(tmp_path, 6)), "--db", str(db), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "leaderboard" in proc.stdout and "archive:" in proc.stdout
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        assert run["status"] == "finished"
        assert run["config"]["budget"] == 6
        assert any("bubblewrap" in note for note in run["isolation"])
        rows = archive.candidates(run["id"], order_by_fitness=False)
        baselines = [r for r in rows if r.is_baseline]
        proposed = [r for r in rows if not r.is_baseline]
        assert [b.name for b in baselines] == ["dpo"] and baselines[0].status == "ok"
        assert len(proposed) == 6
        assert all(r.status not in ("pending", "evaluating") for r in rows)
        for r in proposed:
            assert r.proposer.startswith("mutation:")
            assert r.feedback_shown
            if r.status != "ok":
                assert r.reason, r
        ok = [r for r in rows if r.status == "ok"]
        for r in ok:
            assert r.n_seeds >= 3 and r.fitness_ci_low <= r.fitness <= r.fitness_ci_high
            assert set(r.per_config) == {"clean", "noise20", "noise40", "small_data", "beta05_len8"}
        # the reference and the best proposed candidate were scored on the held-out suite
        assert baselines[0].heldout_fitness is not None
        best = max((r for r in proposed if r.status == "ok"), key=lambda r: r.fitness, default=None)
        if best is not None:
            assert best.heldout_n_seeds == 3
    keys = [(r[1], r[2], r[3], r[4]) for r in evaluation_rows(db)]
    assert len(keys) == len(set(keys))
    board = cli("leaderboard", "--db", str(db))
    assert board.returncode == 0 and "dpo" in board.stdout
    shown = cli("show", baselines[0].id, "--db", str(db))
    assert shown.returncode == 0 and "def loss" in shown.stdout and "clean" in shown.stdout


def test_resume_after_sigkill_keeps_every_finished_evaluation_once(tmp_path):
    db = tmp_path / "runs.db"
    config = write_config(tmp_path, 8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "discovery.cli", "run", "--config", str(config), "--db", str(db), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # kill once some proposed candidates are mid-evaluation
            time.sleep(0.5)
            if not db.exists():
                continue
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                evaluating = conn.execute(
                    "SELECT COUNT(*) FROM candidates WHERE status = 'evaluating' AND is_baseline = 0"
                ).fetchone()[0]
                n_evals = conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
                conn.close()
            except sqlite3.Error:
                continue
            if evaluating and n_evals >= 17:
                break
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = evaluation_rows(db)
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        assert run["status"] == "running"  # killed: nobody could say otherwise
        run_id = run["id"]
    resumed = cli("run", "--resume", run_id, "--db", str(db), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = evaluation_rows(db)
    assert before == after[: len(before)]  # every finished evaluation kept, unchanged, same row
    keys = [(r[1], r[2], r[3], r[4]) for r in after]
    assert len(keys) == len(set(keys))  # and none repeated
    with Archive.open_readonly(db) as archive:
        run = archive.get_run(run_id)
        assert run["status"] == "finished"
        rows = archive.candidates(run_id, order_by_fitness=False)
        assert len([r for r in rows if not r.is_baseline]) == 8
        assert all(r.status not in ("pending", "evaluating") for r in rows)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def existing_db(tmp_path):
    db = tmp_path / "runs.db"
    with Archive(db) as archive:
        archive.create_run("preference", {"budget": 1}, 0, [])
    return db


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "nosuchprovider/some-model"], "nosuchprovider"),
        (["--model", "openai/gpt-4o"], "key"),
        (["--model", "openai/local", "--api-base", "http://127.0.0.1:9"], "127.0.0.1:9"),
        (["--budget", "0"], "budget"),
        (["--proposer", "telepathy"], "proposer"),
    ],
)
def test_bad_options_fail_before_any_work(existing_db, args, fragment):
    before = file_digest(existing_db)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = cli("run", "--db", str(existing_db), *args, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert fragment in lines[0]
    assert file_digest(existing_db) == before


def test_invalid_config_file(tmp_path, existing_db):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nbudget = 'many'\n")
    proc = cli("run", "--db", str(existing_db), "--config", str(bad))
    assert proc.returncode == 2 and "budget" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[run\nbudget=")
    proc = cli("run", "--db", str(existing_db), "--config", str(broken))
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr


def test_unreadable_database_is_left_alone(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    before = file_digest(garbage)
    proc = cli("run", "--db", str(garbage), "--budget", "1")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert file_digest(garbage) == before


def test_locked_database_is_a_clear_error(existing_db):
    holder = sqlite3.connect(existing_db, timeout=0)
    holder.execute("PRAGMA journal_mode=DELETE")  # a non-WAL exclusive lock blocks readers too
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = cli("run", "--db", str(existing_db), "--budget", "1", timeout=120)
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "locked" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with Archive.open_readonly(existing_db) as archive:  # nothing lost
        assert [r["config"] for r in archive.list_runs()] == [{"budget": 1}]


def _start_and_wait_for_a_candidate(tmp_path, budget: int):
    db = tmp_path / "runs.db"
    config = write_config(tmp_path, budget)
    proc = subprocess.Popen(
        [sys.executable, "-m", "discovery.cli", "run", "--config", str(config), "--db", str(db), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            started = conn.execute("SELECT COUNT(*) FROM candidates WHERE is_baseline = 0").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            continue
        if started:
            break
    return proc, db


def _stderr_line_within(proc: subprocess.Popen, text: str, seconds: float) -> str:
    """The first stderr line containing ``text`` if it comes within ``seconds``, else ""."""
    found: list[str] = []

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            if text in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    return found[0] if found else ""


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    proc, db = _start_and_wait_for_a_candidate(tmp_path, 6)
    proc.send_signal(signal.SIGINT)
    # the first Ctrl-C answers at once, while running evaluations finish
    answer = _stderr_line_within(proc, "stopping:", 5.0)
    assert "evaluation(s) still running; Ctrl-C again to abort" in answer
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by Ctrl-C" in out and "Traceback" not in err
    assert "resume: discovery run --resume" in out
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        assert run["status"] == "stopped"
        rows = archive.candidates(run["id"], order_by_fitness=False)
        assert all(r.status not in ("pending", "evaluating") for r in rows)  # running ones finished
        assert len([r for r in rows if not r.is_baseline]) < 6
    resumed = cli("run", "--resume", run["id"], "--db", str(db), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with Archive.open_readonly(db) as archive:
        assert archive.get_run(run["id"])["status"] == "finished"
        assert len([r for r in archive.candidates(run["id"]) if not r.is_baseline]) == 6


def test_second_ctrl_c_aborts_at_once_and_resume_finishes(tmp_path):
    proc, db = _start_and_wait_for_a_candidate(tmp_path, 4)
    proc.send_signal(signal.SIGINT)
    assert _stderr_line_within(proc, "stopping:", 5.0)
    aborted_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert time.monotonic() - aborted_at < 20  # running jobs are killed, not waited for
    assert "aborted; resume: discovery run --resume" in err and "Traceback" not in err
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        assert run["status"] == "stopped" and "aborted" in run["message"]
    resumed = cli("run", "--resume", run["id"], "--db", str(db), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with Archive.open_readonly(db) as archive:
        assert archive.get_run(run["id"])["status"] == "finished"
        rows = [r for r in archive.candidates(run["id"], order_by_fitness=False) if not r.is_baseline]
        assert len(rows) == 4 and all(r.status not in ("pending", "evaluating") for r in rows)


def test_internal_errors_in_a_row_fail_the_run(tmp_path, monkeypatch):
    """A bug (or a broken installation) that hits every candidate stops the run as failed, with the
    reason, instead of finishing "successfully" with every candidate in error."""
    from discovery.agent import loop
    from discovery.config import RunConfig

    def broken(self, state):  # noqa: ANN001, ANN202
        raise RuntimeError("a bug in the pipeline")

    monkeypatch.setattr(loop.DiscoveryRun, "_run_pipeline", broken)
    result = loop.DiscoveryRun(RunConfig(budget=8, workers=1, db=str(tmp_path / "r.db"))).execute()
    assert result.status == "failed"
    assert f"{loop.MAX_INTERNAL_ERRORS_IN_A_ROW} internal errors in a row" in result.message
    assert "RuntimeError: a bug in the pipeline" in result.message
    with Archive.open_readonly(str(tmp_path / "r.db")) as archive:
        rows = archive.candidates(archive.list_runs()[0]["id"], order_by_fitness=False)
        assert len(rows) < 8 and all(r.status == "error" for r in rows)
