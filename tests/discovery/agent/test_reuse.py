"""Runs that reuse stored results: real runs of the example task file, real sandboxes, one SQLite archive.

The same code, task version, suite, configuration, seed and device kind give the same result, so a
second run in an archive (its baselines, its proposals), a resumed run, and the held-out phase copy
what the archive holds instead of training again; ``--no-reuse`` trains everything afresh.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from discovery.agent.loop import DiscoveryRun
from discovery.archive import Archive
from discovery.config import RunConfig
from discovery.records import Candidate, Evaluation
from sandbox.base import Sandbox

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "regression_task.py"
#: a short run: one worker, one seed per configuration, no extra seeds; the best one held out
SETTINGS = dict(
    task=str(EXAMPLE), budget=3, workers=1, islands=1, seeds=1, leaders=0, extra_seeds=0, heldout_top=1, seed=3
)
TOML = "[run]\n" + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in SETTINGS.items()) + "\n"


@dataclass
class Finished:
    """A run driven here, and the sandbox borrows it made, by the run's phase at the time."""

    run_id: str
    borrows: list[str]
    seconds_to_first_proposal: float


def _execute(run: DiscoveryRun) -> list[str]:
    """Run it to the end; the phase (baselines, search, held-out) of every sandbox borrowed on the way."""
    borrows: list[str] = []
    real = run.pool.borrow

    @contextmanager
    def counted() -> Iterator[Sandbox]:  # the real sandbox, counted
        borrows.append(run.progress.phase)
        with real() as box:
            yield box

    run.pool.borrow = counted  # type: ignore[method-assign]
    result = run.execute()
    assert result.status == "finished", result.message
    return borrows


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.rstrip("Z"))


def _drive(config: RunConfig, **kwargs: object) -> Finished:
    run = DiscoveryRun(config, **kwargs)  # type: ignore[arg-type]
    borrows = _execute(run)
    with Archive.open_readonly(config.db) as archive:
        stored = archive.get_run(run.run_id)
        assert stored is not None
        started = _time(stored["started_at"])
        rows = archive.candidates(run.run_id, order_by_fitness=False)
        first = min(_time(r.created_at) for r in rows if not r.is_baseline)
    return Finished(run.run_id, borrows, (first - started).total_seconds())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Finished, Finished]:
    """One archive holding two runs of the same settings: the first trained, the second reused."""
    db = tmp_path_factory.mktemp("reuse") / "runs.db"
    config = RunConfig(**SETTINGS, db=str(db))
    return db, _drive(config), _drive(config)


def _baseline(archive: Archive, run_id: str) -> Candidate:
    (row,) = [r for r in archive.candidates(run_id) if r.is_baseline]
    return row


def _cells(evaluations: list[Evaluation]) -> dict[tuple[str, str, int], Evaluation]:
    return {(e.suite, e.config, e.seed): e for e in evaluations}


def test_a_second_run_reuses_its_baselines_without_a_sandbox_and_proposes_at_once(two_runs):
    db, first, second = two_runs
    assert "baselines" in first.borrows  # the first run trained its baseline
    assert "baselines" not in second.borrows  # the second ran no sandbox job for it, not even the contract check
    assert second.seconds_to_first_proposal < min(2.0, first.seconds_to_first_proposal / 5)
    with Archive.open_readonly(db) as archive:
        trained, reused = _baseline(archive, first.run_id), _baseline(archive, second.run_id)
        assert trained.id != reused.id and trained.name == reused.name
        assert (reused.status, reused.fitness, reused.heldout_fitness) == (
            trained.status,
            trained.fitness,
            trained.heldout_fitness,
        )  # identical, not close
        assert reused.per_config == trained.per_config
        originals, copies = _cells(archive.evaluations(trained.id)), _cells(archive.evaluations(reused.id))
        assert set(copies) == set(originals) and {s for s, _, _ in copies} == {"discover", "heldout"}
        for cell, copy in copies.items():
            original = originals[cell]
            assert not original.reused and original.trainer_path
            assert copy.reused_from == original.id  # marked with the evaluation it came from
            assert (copy.fitness, copy.metrics, copy.curve, copy.trainer_path) == (
                original.fitness,
                original.metrics,
                original.curve,
                original.trainer_path,
            )
            assert copy.task_version == original.task_version and copy.device_kind == original.device_kind == "cpu"


def test_the_same_proposals_in_a_second_run_are_reused_too(two_runs):
    """The offline proposer with the same seed proposes the same programs: nothing trains again."""
    db, first, second = two_runs
    assert first.borrows and second.borrows == []
    with Archive.open_readonly(db) as archive:
        by_hash = {r.code_hash: r for r in archive.candidates(first.run_id) if not r.is_baseline}
        again = [r for r in archive.candidates(second.run_id) if not r.is_baseline]
        assert again and all(r.code_hash in by_hash for r in again)
        for row in again:
            assert (row.status, row.fitness) == (by_hash[row.code_hash].status, by_hash[row.code_hash].fitness)
            assert all(e.reused for e in archive.evaluations(row.id))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "discovery.cli", *args], capture_output=True, text=True, timeout=600)


def test_no_reuse_trains_again_and_show_tells_reused_from_trained(two_runs, tmp_path):
    source, first, second = two_runs
    db = tmp_path / "runs.db"
    shutil.copy(source, db)
    config = tmp_path / "run.toml"
    config.write_text(TOML.replace("budget = 3", "budget = 1"))
    proc = _cli("run", "--config", str(config), "--db", str(db), "--no-reuse", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Archive.open_readonly(db) as archive:
        (third,) = [r["id"] for r in archive.list_runs() if r["id"] not in (first.run_id, second.run_id)]
        assert archive.get_run(third)["config"]["reuse"] is False
        fresh, trained = _baseline(archive, third), _baseline(archive, first.run_id)
        rows = [e for c in archive.candidates(third) for e in archive.evaluations(c.id)]
        assert rows and not any(e.reused for e in rows)  # everything trained afresh
        assert fresh.fitness == pytest.approx(trained.fitness, abs=1e-6)  # and the same function of its inputs
        reused_id = _baseline(archive, second.run_id).id
    shown = _cli("show", reused_id, "--db", str(db))
    assert shown.returncode == 0 and "reused" in shown.stdout, shown.stdout + shown.stderr
    plain = _cli("show", fresh.id, "--db", str(db))
    assert plain.returncode == 0 and "reused" not in plain.stdout
    assert "trainer: batched-vmap x" in plain.stdout  # the path its trainings took (the example task batches)


def _stopped_run(db: Path, code_of: Candidate, **settings: object) -> str:
    """A run stopped with one proposal still pending (as a Ctrl-C leaves it), holding ``code_of``'s code."""
    config = RunConfig(**{**SETTINGS, "budget": 1, **settings}, db=str(db))
    with Archive(db) as archive:
        run_id = archive.create_run("robust_regression", config.model_dump(), config.seed, [])
        archive.add_candidate(
            run_id, name=code_of.name, code=code_of.code, code_hash=code_of.code_hash or "", proposer="mutation:again"
        )
        archive.finish_run(run_id, "stopped", "stopped by Ctrl-C")
    return run_id


def test_a_resumed_run_reuses_what_the_archive_holds(two_runs, tmp_path):
    source, first, _ = two_runs
    db = tmp_path / "runs.db"
    shutil.copy(source, db)
    with Archive.open_readonly(db) as archive:
        best = next(r for r in archive.candidates(first.run_id) if r.scored and not r.is_baseline)
        assert best.heldout_fitness is not None
    run_id = _stopped_run(db, best)
    resumed = _drive(RunConfig(db=str(db)), resume=run_id)
    assert resumed.run_id == run_id and resumed.borrows == []  # baseline, proposal and held-out: all copied
    with Archive.open_readonly(db) as archive:
        (again,) = [r for r in archive.candidates(run_id) if not r.is_baseline]
        assert (again.status, again.fitness, again.heldout_fitness) == (best.status, best.fitness, best.heldout_fitness)
        originals = _cells(archive.evaluations(best.id))
        for cell, copy in _cells(archive.evaluations(again.id)).items():
            assert copy.reused_from == originals[cell].id


def test_a_resumed_run_keeps_its_stored_reuse_unless_given(two_runs, tmp_path):
    source, first, _ = two_runs
    db = tmp_path / "runs.db"
    shutil.copy(source, db)
    with Archive.open_readonly(db) as archive:
        best = next(r for r in archive.candidates(first.run_id) if r.scored and not r.is_baseline)
    run_id = _stopped_run(db, best, reuse=False)
    kept = DiscoveryRun(RunConfig(db=str(db)), resume=run_id, explicit={"db"})
    try:
        assert kept.config.reuse is False and kept.rt.config.reuse is False
    finally:
        kept.pool.close()
        kept.archive.close()
    given = _drive(RunConfig(db=str(db), reuse=True), resume=run_id, explicit={"db", "reuse"})
    assert given.borrows == []  # asked for explicitly: reused after all
