"""Does the archive's guidance help? Offline search vs random sampling of the same mutations.

    python bench/offline_search.py [--budget 200] [--workers 2] [--out bench/results/offline_search]

Runs two offline discovery runs with the same budget, seed and evaluation settings:
``mutation`` (parents selected from the archive by tournament within islands, crossover and
gated blends of archive members) and ``random`` (chains of the same mutation operators
applied to the seed program, no archive guidance). Prints the best-so-far curves (fitness on
the discover suite after every 10 proposals) and confirms each run's winner against DPO on
10 fresh seeds (seeds 10-19, never used during the search, so the winner's curse does not
inflate the comparison): paired difference per seed, mean and 95% CI. Held-out scores of the
winners come from the run's own held-out phase.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from discovery.agent.loop import DiscoveryRun
from discovery.archive import Archive
from discovery.config import RunConfig
from discovery.evaluation import Evaluator
from discovery.records import Candidate
from discovery.stats import mean_ci
from discovery.tasks import get_task
from sandbox.base import Status
from sandbox.host.local import LocalSandbox

CONFIRM_SEEDS = list(range(10, 20))


def _fields(c: Candidate, *names: str) -> dict[str, object]:
    """Some of the record's values, for the JSON summary."""
    values = c.to_dict()
    return {name: values[name] for name in names}


def best_so_far(db: str, run_id: str) -> list[tuple[int, float | None]]:
    with Archive.open_readonly(db) as archive:
        rows = archive.candidates(run_id, order_by_fitness=False)
    rows = sorted((c for c in rows if not c.is_baseline), key=lambda c: c.created_at)
    curve, best = [], None
    for i, c in enumerate(rows, 1):
        if c.scored:
            best = c.fitness if best is None else max(best, c.fitness)
        curve.append((i, best))
    return curve


def confirm(code: str, reference: str) -> dict[str, float]:
    task = get_task("preference")
    evaluator = Evaluator(task)
    with LocalSandbox(threads=2) as box:
        a = evaluator.evaluate(code, box, "discover", seeds=CONFIRM_SEEDS)
        b = evaluator.evaluate(reference, box, "discover", seeds=CONFIRM_SEEDS)
    assert a.ok and b.ok, (a.one_line(), b.one_line())

    def per_seed(report) -> dict[int, float]:  # noqa: ANN001
        out: dict[int, list[float]] = {}
        for c in report.configs:
            for m in c.seeds:
                out.setdefault(m.seed, []).append(m.fitness)
        return {s: sum(v) / len(v) for s, v in out.items()}

    pa, pb = per_seed(a), per_seed(b)
    diff = mean_ci([pa[s] - pb[s] for s in CONFIRM_SEEDS])
    return {
        "candidate": a.fitness.mean,
        "candidate_ci": a.fitness.half_width,
        "dpo": b.fitness.mean,
        "dpo_ci": b.fitness.half_width,
        "diff": diff.mean,
        "diff_low": diff.low,
        "diff_high": diff.high,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/offline_search")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for proposer in ("mutation", "random"):
        db = str(out / f"{proposer}.db")
        Path(db).unlink(missing_ok=True)
        config = RunConfig(budget=args.budget, workers=args.workers, seed=args.seed, db=db, proposer=proposer)
        run = DiscoveryRun(config)
        result = run.execute()
        curve = best_so_far(db, result.run_id)
        with Archive.open_readonly(db) as archive:
            ok = [c for c in archive.candidates(result.run_id, status=Status.OK) if c.fitness is not None]
            ranked = sorted((c for c in ok if not c.is_baseline), key=lambda c: c.fitness, reverse=True)
            ref = next(c for c in ok if c.is_baseline)
            statuses = dict(
                Counter(
                    c.status.value
                    for c in archive.candidates(result.run_id, order_by_fitness=False)
                    if not c.is_baseline
                )
            )
        best = ranked[0]
        results[proposer] = {
            "run": result.run_id,
            "status": result.status,
            "curve": curve,
            "statuses": statuses,
            "best": _fields(
                best,
                "id",
                "name",
                "fitness",
                "fitness_ci_low",
                "fitness_ci_high",
                "n_seeds",
                "heldout_fitness",
                "heldout_ci_low",
                "heldout_ci_high",
                "code",
            ),
            "dpo": _fields(
                ref,
                "fitness",
                "fitness_ci_low",
                "fitness_ci_high",
                "heldout_fitness",
                "heldout_ci_low",
                "heldout_ci_high",
            ),
            "confirm": confirm(best.code, get_task("preference").baselines["dpo"]),
            # the runners-up too, so a reader sees whether the winner's result is typical of the top
            "runners_up": [
                {
                    **_fields(c, "name", "fitness", "heldout_fitness"),
                    "confirm": confirm(c.code, get_task("preference").baselines["dpo"]),
                }
                for c in ranked[1:3]
            ],
        }
        print(f"== {proposer}: run {result.run_id} {result.status}; statuses {statuses}")
        print(
            "best so far after n proposals: "
            + ", ".join(f"{n}:{v:.3f}" for n, v in curve if n % 10 == 0 and v is not None)
        )
        b, c = results[proposer]["best"], results[proposer]["confirm"]
        print(
            f"winner {b['name']} ({b['id']}): search fitness {b['fitness']:.3f} "
            f"[{b['fitness_ci_low']:.3f}, {b['fitness_ci_high']:.3f}] over {b['n_seeds']} seeds; "
            f"held-out {b['heldout_fitness']}"
        )
        print(
            f"confirmation on seeds 10-19: winner {c['candidate']:.3f} ± {c['candidate_ci']:.3f}, "
            f"DPO {c['dpo']:.3f} ± {c['dpo_ci']:.3f}, paired difference {c['diff']:+.3f} "
            f"[{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]"
        )
        for r in results[proposer]["runners_up"]:
            c = r["confirm"]
            print(
                f"  runner-up {r['name']}: search {r['fitness']:.3f}, held-out {r['heldout_fitness']}, "
                f"paired difference on seeds 10-19 {c['diff']:+.3f} [{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]"
            )
    (out / "summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
