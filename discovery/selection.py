"""Parent selection and the bounded view of the archive a proposer gets.

Islands evolve separately (a candidate lives on its parent's island); parents are drawn
by tournament among an island's best; the proposer also sees a few diverse members: the
best of other islands and members of the per-configuration Pareto front. What one proposal
is given is a :class:`ProposalContext`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from discovery.records import Candidate
from discovery.tasks import Task

__all__ = ["ProposalContext", "choose", "pareto_front", "scored", "tournament"]


@dataclass
class ProposalContext:
    """A bounded view of the archive for one proposal. The held-out suite never appears here."""

    task: Task
    run_id: str
    parent: Candidate | None  # the candidate to improve (None: start from the seed program)
    second_parent: Candidate | None  # for crossover / blends
    top: list[Candidate]  # best candidates of the parent's island, sorted ascending (best last)
    diverse: list[Candidate]  # from other islands or the per-configuration Pareto front
    failures: list[Candidate]  # recent failed candidates and unusable replies, newest last
    reference: Candidate | None  # the reference baseline (e.g. DPO), for deltas
    island: int
    generation: int
    rng: random.Random


def _fitness(c: Candidate) -> float:
    return c.fitness if c.fitness is not None else -math.inf


def scored(candidates: list[Candidate]) -> list[Candidate]:
    """Fully evaluated candidates (status ok with a fitness), best first."""
    return sorted((c for c in candidates if c.scored), key=_fitness, reverse=True)


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates not dominated on every configuration's fitness by another candidate."""
    with_configs = [c for c in candidates if c.per_config]
    front = []
    for c in with_configs:
        configs = c.per_config or {}
        dominated = False
        for other in with_configs:
            if other is c:
                continue
            o = other.per_config or {}
            shared = [name for name in configs if name in o]
            if not shared:
                continue
            ge = all(o[name]["fitness"] >= configs[name]["fitness"] for name in shared)
            gt = any(o[name]["fitness"] > configs[name]["fitness"] for name in shared)
            if ge and gt:
                dominated = True
                break
        if not dominated:
            front.append(c)
    return front


def tournament(pool: list[Candidate], rng: random.Random, size: int = 3) -> Candidate:
    """The fittest of ``size`` candidates drawn at random from ``pool``."""
    picks = [pool[rng.randrange(len(pool))] for _ in range(min(size, len(pool)))]
    return max(picks, key=_fitness)


def choose(
    candidates: list[Candidate],
    island: int,
    rng: random.Random,
    top_k: int,
    n_diverse: int,
    n_failures: int,
) -> tuple[Candidate | None, Candidate | None, list[Candidate], list[Candidate], list[Candidate]]:
    """(parent, second parent, top ascending, diverse, recent failures) for one proposal.

    The failures are the latest ``n_failures`` whose code failed (``Candidate.failed``: not
    duplicates, culled or unfinished ones), in stored order.
    """
    ranked = scored(candidates)
    local = [c for c in ranked if c.island == island] or ranked
    parent = tournament(local[: max(top_k, 1)], rng) if local else None
    others = [c for c in ranked if c is not parent]
    second = tournament(others[: max(top_k, 1)], rng) if others else None
    top = list(reversed(local[:top_k]))  # ascending: the best comes last (OPRO)
    shown = {c.id for c in top}
    diverse: list[Candidate] = []
    for other_island in sorted({c.island for c in ranked} - {island}):
        best = next((c for c in ranked if c.island == other_island and c.id not in shown), None)
        if best is not None:
            diverse.append(best)
            shown.add(best.id)
    for c in pareto_front(ranked):
        if c.id not in shown:
            diverse.append(c)
            shown.add(c.id)
    failures = [c for c in candidates if c.failed][-n_failures:] if n_failures else []
    return parent, second, top, diverse[:n_diverse], failures
