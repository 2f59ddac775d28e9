"""Parent selection: tournaments, the per-configuration Pareto front, and a proposal's view of the archive."""

from __future__ import annotations

import random

import pytest

from discovery.records import Candidate
from discovery.selection import choose, pareto_front, scored, tournament
from sandbox.base import Status


def candidate(
    id: str,
    fitness: float | None = None,
    *,
    island: int = 0,
    status: str = "ok",
    per_config: dict[str, float] | None = None,
) -> Candidate:
    """What selection is given for one candidate; the tests compare selection's answers with these
    objects, so only this function knows their type."""
    return Candidate(
        id=id,
        run_id="run",
        name=id,
        code="",
        status=Status(status),
        island=island,
        fitness=fitness,
        per_config={c: {"fitness": f} for c, f in per_config.items()} if per_config is not None else None,
    )


class Draws(random.Random):
    """A random source whose ``randrange`` returns the given indices in turn."""

    def __init__(self, *indices: int):
        super().__init__(0)
        self.indices = list(indices)
        self.asked: list[int] = []

    def randrange(self, n, *args, **kwargs):
        self.asked.append(n)
        return self.indices.pop(0)


def test_scored_keeps_ok_candidates_with_a_fitness_best_first():
    a, b, c = candidate("a", 0.2), candidate("b", 0.9), candidate("c", 0.5)
    rows = [
        a,
        candidate("no-fitness"),
        b,
        candidate("bad", 0.99, status="error"),
        c,
        candidate("dup", 0.95, status="duplicate"),
    ]
    assert scored(rows) == [b, c, a]


def test_tournament_takes_the_fittest_of_the_drawn():
    low, high, mid = candidate("low", 1.0), candidate("high", 5.0), candidate("mid", 3.0)
    rng = Draws(0, 2, 0)
    assert tournament([low, high, mid], rng) is mid  # draws low, mid, low: high was never drawn
    assert rng.asked == [3, 3, 3]
    rng = Draws(1, 0)
    assert tournament([low, high, mid], rng, size=2) is high
    assert rng.asked == [3, 3]


def test_tournament_draws_at_most_the_pool_size():
    only = candidate("only", 0.1)
    rng = Draws(0)
    assert tournament([only], rng, size=5) is only and rng.asked == [1]
    low, high = candidate("low", 1.0), candidate("high", 2.0)
    assert tournament([low, high], Draws(0, 0)) is low  # two draws, both the first


def test_tournament_with_a_real_random_source_favours_the_fittest():
    low, high = candidate("low", 1.0), candidate("high", 2.0)
    wins = [tournament([low, high], random.Random(seed)) is high for seed in range(400)]
    # low wins only when both draws pick it: 1 in 4
    assert 0.65 < sum(wins) / len(wins) < 0.85


def test_pareto_front_drops_dominated_candidates():
    a = candidate("a", 0.5, per_config={"x": 1.0, "y": 0.0})
    b = candidate("b", 0.5, per_config={"x": 0.0, "y": 1.0})
    c = candidate("c", 0.9, per_config={"x": 0.5, "y": -1.0})  # a is better on both
    d = candidate("d", 0.9, per_config={"x": 1.0, "y": -1.0})  # a is as good on x and better on y
    assert pareto_front([a, b, c, d]) == [a, b]


def test_pareto_front_keeps_ties_and_ignores_candidates_without_configs():
    a = candidate("a", 0.5, per_config={"x": 1.0, "y": 2.0})
    twin = candidate("twin", 0.5, per_config={"x": 1.0, "y": 2.0})
    assert pareto_front([a, candidate("none", 0.9), twin, candidate("empty", 0.9, per_config={})]) == [a, twin]
    assert pareto_front([]) == []


def test_pareto_front_compares_only_shared_configurations():
    a = candidate("a", 0.5, per_config={"x": 1.0, "y": 0.0})
    other = candidate("other", 0.5, per_config={"w": 9.0})  # shares nothing with the others
    better_on_x = candidate("better_on_x", 0.5, per_config={"x": 2.0, "z": 0.0})  # shares only x with a
    assert pareto_front([a, other]) == [a, other]
    assert pareto_front([a, other, better_on_x]) == [other, better_on_x]


def archive() -> dict[str, Candidate]:
    """Two islands, failures and undecided candidates, in the order they were stored."""
    return {
        "a": candidate("a", 0.9, island=0, per_config={"x": 0.9, "y": 0.1}),
        "d": candidate("d", 0.8, island=1),
        "f": candidate("f", island=0, status="error"),
        "c": candidate("c", 0.7, island=0, per_config={"x": 0.5, "y": 0.05}),  # dominated by a
        "h": candidate("h", 0.99, island=0, status="duplicate"),
        "b": candidate("b", 0.5, island=0, per_config={"x": 0.1, "y": 0.9}),
        "g": candidate("g", island=1, status="timeout"),
        "e": candidate("e", 0.2, island=1),
        "p": candidate("p", island=0, status="pending"),
        "u": candidate("u", None, island=0),  # ok without a fitness: not ranked
    }


def test_choose_shows_the_island_best_ascending_other_islands_and_the_front():
    c = archive()
    rows = list(c.values())
    parent, second, top, diverse, failures = choose(rows, 0, random.Random(0), top_k=2, n_diverse=5, n_failures=5)
    assert top == [c["c"], c["a"]]  # the island's two best, the best last
    assert diverse == [c["d"], c["b"]]  # island 1's best, then the front's member not already shown
    assert failures == [c["f"], c["g"]]  # failed code only, in stored order (not duplicate, pending)
    assert parent in (c["a"], c["c"])
    assert second is not parent and second in ([c["d"], c["c"]] if parent is c["a"] else [c["a"], c["d"]])


def test_choose_bounds_the_diverse_members_and_failures():
    c = archive()
    rows = list(c.values())
    _, _, _, diverse, failures = choose(rows, 0, random.Random(0), top_k=2, n_diverse=1, n_failures=1)
    assert diverse == [c["d"]] and failures == [c["g"]]  # the latest failure
    _, _, top, diverse, failures = choose(rows, 0, random.Random(0), top_k=0, n_diverse=0, n_failures=0)
    assert top == [] and diverse == [] and failures == []


def test_choose_parents_come_from_the_island_top_and_the_best_wins_most():
    c = archive()
    rows = list(c.values())
    parents = []
    for seed in range(200):
        parent, second, *_ = choose(rows, 0, random.Random(seed), top_k=2, n_diverse=3, n_failures=3)
        assert parent in (c["a"], c["c"]) and second is not None and second is not parent
        parents.append(parent)
    # c wins a tournament of three draws from (a, c) only when all three are c: 1 in 8
    assert 0.05 < sum(p is c["c"] for p in parents) / len(parents) < 0.25


def test_choose_on_the_other_island():
    c = archive()
    parent, second, top, diverse, _ = choose(list(c.values()), 1, random.Random(0), top_k=8, n_diverse=5, n_failures=5)
    assert top == [c["e"], c["d"]] and parent in (c["d"], c["e"])
    assert diverse == [c["a"], c["b"]]  # island 0's best (also on the front), then the rest of the front


def test_an_island_without_members_draws_from_every_island():
    c = archive()
    parent, _, top, diverse, _ = choose(list(c.values()), 7, random.Random(0), top_k=3, n_diverse=5, n_failures=0)
    assert top == [c["c"], c["d"], c["a"]]
    assert parent in top
    assert diverse == [c["b"], c["e"]]  # island 0's best not shown, then island 1's; the front adds nothing new


@pytest.mark.parametrize("rows", [[], [candidate("f", status="error"), candidate("u", None)]])
def test_choose_without_scored_candidates(rows):
    parent, second, top, diverse, failures = choose(rows, 0, random.Random(0), top_k=3, n_diverse=3, n_failures=3)
    assert (parent, second, top, diverse) == (None, None, [], [])
    assert failures == [r for r in rows if r is not rows[-1]]


def test_choose_with_one_scored_candidate_has_no_second_parent():
    only = candidate("only", 0.4)
    parent, second, top, diverse, _ = choose([only], 0, random.Random(0), top_k=3, n_diverse=3, n_failures=3)
    assert parent is only and second is None and top == [only] and diverse == []
