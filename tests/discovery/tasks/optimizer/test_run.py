"""An end-to-end short offline ``discovery run --task optimizer`` (real sandboxes, real SQLite)."""

from discovery.archive import Archive
from discovery.tasks import get_task


def test_offline_run_on_the_optimizer_task(short_run_db):
    db = short_run_db(task="optimizer", budget=6)
    task = get_task("optimizer")
    discover = {c.name for c in task.suite("discover").configs}
    heldout = {c.name for c in task.suite("heldout").configs}
    with Archive.open_readonly(db) as archive:
        (run,) = archive.list_runs()
        assert run["status"] == "finished" and run["config"]["task"] == "optimizer"
        rows = archive.candidates(run["id"], order_by_fitness=False)
        assert [r.name for r in rows if r.is_baseline] == ["adamw"]
        proposed = [r for r in rows if not r.is_baseline]
        assert len(proposed) == 6 and all(r.proposer.startswith("mutation") for r in proposed)
        # every proposal ran: fully scored (ok) or stopped by the cascade (culled), none broken
        assert all(r.status in ("ok", "culled") for r in proposed), [(r.name, r.reason) for r in proposed]
        cascade = set(task.cascade_configs)
        for r in proposed:
            assert set(r.per_config) >= cascade and r.fitness is not None
        ok = [r for r in proposed if r.status == "ok"]
        assert ok, [(r.name, r.reason) for r in proposed]
        for r in ok + [r for r in rows if r.is_baseline]:
            assert set(r.per_config) == discover
            for score in r.per_config.values():
                assert isinstance(score["fitness"], float) and "grid_mean" in score["metrics"]
        scored_heldout = [r for r in rows if r.heldout_fitness is not None]
        assert any(r.is_baseline for r in scored_heldout) and len(scored_heldout) >= 2
        for r in scored_heldout:
            assert set(r.heldout_per_config) == heldout
        reference = next(r for r in rows if r.is_baseline)
        assert abs(reference.fitness - 1.0) < 0.1  # AdamW is the unit of fitness


def test_the_run_exports_a_torch_optimizer(short_run_db):
    import torch

    from discovery.export import export

    db = short_run_db(task="optimizer", budget=6)
    text, chosen, _ = export(db, top=2, fmt="py", task="optimizer")
    namespace: dict = {}
    exec(compile(text, "exported.py", "exec"), namespace)
    assert set(namespace["REGISTRY"]) == {name for name, _ in chosen}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(64, 5)
    y = x.sum(1, keepdim=True)
    for name in namespace["REGISTRY"]:
        opt = namespace["make_optimizer"](name, model.parameters(), lr=0.01)
        assert isinstance(opt, torch.optim.Optimizer)
        losses = []
        for _ in range(40):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])
