"""Parent selection and the bounded view of the archive a proposer gets.

Islands evolve separately (a candidate lives on its parent's island); parents are drawn
by tournament among an island's best; the proposer also sees a few diverse members: the
best of other islands and members of the per-configuration Pareto front.
"""

from __future__ import annotations

import random
from typing import Any

Row = dict[str, Any]

FAILED = ("policy", "parse", "contract", "timeout", "memory", "output", "crashed", "invalid", "error")


def scored(rows: list[Row]) -> list[Row]:
    """Fully evaluated rows (status ok with a fitness), best first."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("fitness") is not None]
    return sorted(ok, key=lambda r: r["fitness"], reverse=True)


def pareto_front(rows: list[Row]) -> list[Row]:
    """Rows not dominated on every configuration's fitness by another row."""
    with_configs = [r for r in rows if r.get("per_config")]
    front = []
    for r in with_configs:
        configs = r["per_config"]
        dominated = False
        for other in with_configs:
            if other is r:
                continue
            o = other["per_config"]
            shared = [c for c in configs if c in o]
            if not shared:
                continue
            ge = all(o[c]["fitness"] >= configs[c]["fitness"] for c in shared)
            gt = any(o[c]["fitness"] > configs[c]["fitness"] for c in shared)
            if ge and gt:
                dominated = True
                break
        if not dominated:
            front.append(r)
    return front


def tournament(pool: list[Row], rng: random.Random, size: int = 3) -> Row:
    """The fittest of ``size`` rows drawn at random from ``pool``."""
    picks = [pool[rng.randrange(len(pool))] for _ in range(min(size, len(pool)))]
    return max(picks, key=lambda r: r["fitness"])


def choose(
    rows: list[Row], island: int, rng: random.Random, top_k: int, n_diverse: int, n_failures: int,
) -> tuple[Row | None, Row | None, list[Row], list[Row], list[Row]]:
    """(parent, second parent, top ascending, diverse, recent failures) for one proposal."""
    ranked = scored(rows)
    local = [r for r in ranked if r.get("island") == island] or ranked
    parent = tournament(local[: max(top_k, 1)], rng) if local else None
    others = [r for r in ranked if r is not parent]
    second = tournament(others[: max(top_k, 1)], rng) if others else None
    top = list(reversed(local[:top_k]))  # ascending: the best comes last (OPRO)
    shown = {r["id"] for r in top}
    diverse: list[Row] = []
    for other_island in sorted({r.get("island") for r in ranked} - {island}):
        best = next((r for r in ranked if r.get("island") == other_island and r["id"] not in shown), None)
        if best is not None:
            diverse.append(best)
            shown.add(best["id"])
    for r in pareto_front(ranked):
        if r["id"] not in shown:
            diverse.append(r)
            shown.add(r["id"])
    failures = [r for r in rows if r.get("status") in FAILED][-n_failures:] if n_failures else []
    return parent, second, top, diverse[:n_diverse], failures
