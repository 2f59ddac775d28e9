"""The entry points: :func:`mutate`, :func:`crossover` and :func:`gate_blend` choose operators or
modes, draw candidates from them and return the first one accepted."""

from __future__ import annotations

import random
from collections.abc import Sequence

from discovery.proposers.mutations.combine import blend, splice
from discovery.proposers.mutations.operators import GENERATORS
from discovery.proposers.mutations.parents import Parent, accept
from discovery.proposers.mutations.table import (
    ATTEMPTS,
    CROSSOVER_MODES,
    CROSSOVER_WEIGHTS,
    FALLBACK_OPERATORS,
    OPAQUE_ARGS,
    OPERATOR_WEIGHTS,
    OPERATORS,
    SCALAR_ARGS,
    Mutant,
)


def mutate(
    code: str,
    parent_id: str,
    rng: random.Random,
    slot_name: str = "loss",
    *,
    operators: Sequence[str] | None = None,
) -> Mutant:
    """One mutant of ``code``; ``operators`` restricts the operators tried first.

    Raises ValueError if ``code`` does not parse or define ``slot_name``, or (only for
    degenerate programs, e.g. one returning a constant) if no operator applies.
    """
    parent = Parent(code, slot_name)
    chosen = list(operators) if operators else list(OPERATORS)
    unknown = [op for op in chosen if op not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown mutation operator(s): {', '.join(unknown)}")
    order = _weighted_order(chosen, OPERATOR_WEIGHTS, rng)
    order += [op for op in FALLBACK_OPERATORS if op not in order]
    for op in order:
        for i, cand in enumerate(GENERATORS[op](parent, rng)):
            if i >= ATTEMPTS:
                break
            out = accept(cand, [parent], slot_name)
            if out is not None:
                return Mutant(out, f"{parent_id}~{cand.detail}", cand.thought, op, [parent_id])
    raise ValueError(f"no mutation operator applies to {parent_id!r}")


def crossover(
    code_a: str,
    id_a: str,
    code_b: str,
    id_b: str,
    rng: random.Random,
    slot_name: str = "loss",
    *,
    mode: str | None = None,
) -> Mutant:
    """Combine two parents: splice a subexpression of B into A, or blend both per-example losses.

    ``mode`` is one of :data:`CROSSOVER_MODES` (random when None). A splice that cannot
    apply falls back to a convex blend.
    """
    a, b = Parent(code_a, slot_name), Parent(code_b, slot_name)
    if len(a.args) != len(b.args):
        raise ValueError(f"parents take {len(a.args)} and {len(b.args)} arguments")
    if mode is not None and mode not in CROSSOVER_MODES:
        raise ValueError(f"unknown crossover mode {mode!r}")
    modes = [mode] if mode else _weighted_order(list(CROSSOVER_MODES), CROSSOVER_WEIGHTS, rng)
    if "convex" not in modes:
        modes.append("convex")
    for m in modes:
        if m == "splice":
            gen = splice(a, b, id_a, id_b, rng, slot_name)
        else:
            gen = blend(a, b, id_a, id_b, rng, slot_name, m)
        for i, cand in enumerate(gen):
            if i >= ATTEMPTS:
                break
            out = accept(cand, [a, b], slot_name)
            if out is not None:
                return Mutant(out, f"{id_a}x{id_b}~{cand.detail}", cand.thought, "crossover", [id_a, id_b])
    raise ValueError(f"cannot cross {id_a!r} with {id_b!r}")


def gate_blend(code_a: str, id_a: str, code_b: str, id_b: str, rng: random.Random, slot_name: str = "loss") -> Mutant:
    """LRML-style blend: ``(1 - sigmoid(x / tau)) * A + sigmoid(x / tau) * B`` per example.

    ``x = beta * ((pc - rc) - (pr - rr))`` is the margin both parents share (read from the
    slot's five arguments in order) and ``tau`` is log-uniform in :data:`TAU_RANGE`.
    """
    a, b = Parent(code_a, slot_name), Parent(code_b, slot_name)
    if not all(_preference_like(p.args) for p in (a, b)):
        raise ValueError("gate_blend needs slots with the five preference arguments")
    cand = next(blend(a, b, id_a, id_b, rng, slot_name, "gate"), None)
    out = accept(cand, [a, b], slot_name) if cand is not None else None
    if cand is None or out is None:  # only if torch cannot be imported under any name
        raise ValueError(f"cannot blend {id_a!r} with {id_b!r}")
    return Mutant(out, f"{id_a}x{id_b}~{cand.detail}", cand.thought, "gate_blend", [id_a, id_b])


def _preference_like(args: list[str]) -> bool:
    """Four per-example tensor arguments, then a positive scalar: the margin a gate blend reads."""
    return len(args) == 5 and args[4] in SCALAR_ARGS and not set(args[:4]) & (SCALAR_ARGS | OPAQUE_ARGS)


def _weighted_order(items: list[str], weights: dict[str, float], rng: random.Random) -> list[str]:
    """``items`` in a random order, each next one drawn with probability proportional to its weight."""
    pool = list(dict.fromkeys(items))
    order: list[str] = []
    while pool:
        pick = rng.choices(pool, weights=[weights.get(x, 1.0) for x in pool])[0]
        order.append(pick)
        pool.remove(pick)
    return order
