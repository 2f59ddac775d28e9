"""An end-to-end short offline ``discovery run --task classification`` (real sandboxes, real SQLite)."""

from discovery.archive import Archive
from discovery.tasks import get_task


def test_offline_run_on_the_classification_task(short_run_db):
    db = short_run_db(task="classification", budget=6)
    task = get_task("classification")
    discover = {c.name for c in task.suite("discover").configs}
    heldout = {c.name for c in task.suite("heldout").configs}
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        assert run["status"] == "finished" and run["config"]["task"] == "classification"
        rows = archive.candidates(run["id"], order_by_fitness=False)
        assert all(r.status not in ("pending", "evaluating") for r in rows)
        baselines = [r for r in rows if r.is_baseline]
        assert [r.name for r in baselines] == ["cross_entropy"] and baselines[0].status == "ok"
        proposed = [r for r in rows if not r.is_baseline]
        assert len(proposed) == 6 and all(r.proposer.startswith("mutation") for r in proposed)
        ok = [r for r in proposed if r.status == "ok"]
        assert len(ok) >= 2, [(r.name, r.status, r.reason) for r in proposed]
        for r in proposed:
            if r.status != "ok":
                assert r.reason, r
        full = [r for r in [*baselines, *ok] if set(r.per_config) == discover]
        assert len(full) >= 2, [sorted(r.per_config) for r in ok]
        for r in full:
            assert r.n_seeds >= 3 and r.fitness_ci_low <= r.fitness <= r.fitness_ci_high
            for score in r.per_config.values():
                assert isinstance(score["fitness"], float) and "ece" in score["metrics"]
        assert 0.7 < baselines[0].fitness < 0.95  # cross-entropy, see docs/benchmarks.md
        scored_heldout = [r for r in rows if r.heldout_fitness is not None]
        assert any(r.is_baseline for r in scored_heldout) and len(scored_heldout) >= 2
        for r in scored_heldout:
            assert set(r.heldout_per_config) == heldout
