"""Offline proposers: new programs from syntax-tree mutations and crossovers, no LLM.

:class:`MutationProposer` follows the archive: it mutates the parent the loop selected (or,
with a second parent, crosses or gate-blends the two), and records the same parent trace an
LLM would have been shown as ``feedback_shown``.

:class:`RandomMutationProposer` is the ablation "the same operators without the archive's
guidance": it ignores the parent and the archive and applies a random chain of 1-3
operators (mutations, and blends with a random baseline of the task) to the seed program.

Both are deterministic functions of ``ctx.rng`` and keep no per-call state (thread-safe).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from discovery.prompting import feedback
from discovery.proposers.base import ProposalContext, Proposed
from discovery.proposers.codehash import normalized_hash
from discovery.proposers.mutations import OPERATORS, Mutant, crossover, gate_blend, mutate
from discovery.records import Candidate
from sandbox.text import one_line

__all__ = ["MutationProposer", "RandomMutationProposer"]

MAX_NAME_CHARS = 60
LABEL_CHARS = 20
STEP_ATTEMPTS = 5  # tries per step of a random chain to reach a program not yet visited


def _label(candidate_or_name: Candidate | str | None, default: str = "seed") -> str:
    """A short stem for names: ``dpo~swap_fn(...)~perturb(...)`` -> ``dpo``."""
    if isinstance(candidate_or_name, Candidate):
        name = candidate_or_name.name or candidate_or_name.id or default
    else:
        name = str(candidate_or_name or default)
    stem = "".join(name.split()).split("~", 1)[0] or default
    return stem[:LABEL_CHARS]


def _clip_name(name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 3] + "..."


def _usable(c: Candidate | None) -> bool:
    """Whether ``c`` can be mutated: it has code and is not shown as a failure (duplicates included)."""
    return c is not None and bool(c.code) and not feedback.shown_as_failed(c)


def _seed_parents(ctx: ProposalContext, seed_code: str) -> list[str]:
    """The reference candidate's id when it holds the seed program (lineage), else nothing."""
    ref = ctx.reference
    if ref is not None and ref.id and ref.code:
        if normalized_hash(ref.code) == normalized_hash(seed_code):
            return [ref.id]
    return []


def _check_operators(operators: Sequence[str] | None) -> list[str] | None:
    if operators is None:
        return None
    unknown = [op for op in operators if op not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown mutation operator(s): {', '.join(unknown)}; known: {', '.join(OPERATORS)}")
    return list(operators)


def _shown_name(c: Candidate) -> str:
    return one_line(c.name or c.id or "candidate", 60)


def _failed(proposer: str, parents: list[str], why: str, shown: str) -> Proposed:
    return Proposed(
        code=None,
        name="no-mutant",
        thought="",
        parents=parents,
        proposer=proposer,
        feedback_shown=shown,
        error=one_line(why, 300),
    )


def _combine(a: tuple[str, str], b: tuple[str, str], rng: random.Random, slot: str, gate: bool) -> Mutant:
    """A gate blend (falling back to a crossover) or a crossover of ``a`` and ``b``, each (code, label)."""
    (code_a, label_a), (code_b, label_b) = a, b
    if gate:
        try:
            return gate_blend(code_a, label_a, code_b, label_b, rng, slot)
        except ValueError:
            pass  # not the five preference arguments: a crossover instead
    return crossover(code_a, label_a, code_b, label_b, rng, slot)


class MutationProposer:
    """Mutate the selected parent, or combine it with the second parent.

    With a usable second parent, a combination is tried with probability ``crossover_rate``:
    :func:`~discovery.proposers.mutations.gate_blend` with probability ``gate_probability``,
    else :func:`~discovery.proposers.mutations.crossover`. Otherwise (or if the combination
    cannot apply) the parent is mutated; without a usable parent the task's seed program is.
    ``operators`` restricts the mutation operators tried first.
    """

    name = "mutation"

    def __init__(
        self,
        *,
        crossover_rate: float = 0.25,
        gate_probability: float = 0.5,
        operators: Sequence[str] | None = None,
        slot_name: str | None = None,
    ):
        if not 0.0 <= crossover_rate <= 1.0 or not 0.0 <= gate_probability <= 1.0:
            raise ValueError("crossover_rate and gate_probability must be in [0, 1]")
        self.crossover_rate = crossover_rate
        self.gate_probability = gate_probability
        self.operators = _check_operators(operators)
        self.slot_name = slot_name

    def propose(self, ctx: ProposalContext) -> Proposed:
        rng = ctx.rng
        slot = self.slot_name or ctx.task.slot.name
        parent = ctx.parent if _usable(ctx.parent) else None
        second = ctx.second_parent if parent is not None and _usable(ctx.second_parent) else None
        if second is not None and parent is not None and second.id == parent.id:
            second = None

        if parent is not None and second is not None and rng.random() < self.crossover_rate:
            use_gate = rng.random() < self.gate_probability
            try:
                mutant = _combine((parent.code, _label(parent)), (second.code, _label(second)), rng, slot, use_gate)
            except ValueError:
                mutant = None
            if mutant is not None:
                return self._proposed(ctx, mutant, [parent, second], slot)

        if parent is not None:
            try:
                mutant = mutate(parent.code, _label(parent), rng, slot, operators=self.operators)
                return self._proposed(ctx, mutant, [parent], slot)
            except ValueError:
                pass  # a parent no operator applies to: start again from the seed program

        seed = ctx.task.seed_program
        parents = _seed_parents(ctx, seed)
        shown = self._seed_text(ctx, slot)
        try:
            mutant = mutate(seed, _label(ctx.task.reference_baseline), rng, slot, operators=self.operators)
        except ValueError as exc:
            return _failed("mutation:none", parents, f"no mutation applies to the seed program: {exc}", shown)
        return Proposed(
            code=mutant.code,
            name=_clip_name(mutant.name),
            thought=mutant.thought,
            parents=parents,
            proposer=f"mutation:{mutant.operator}",
            feedback_shown=f"Offline {mutant.operator} of the seed program: {mutant.thought}\n\n{shown}",
            extra={"operator": mutant.operator},
        )

    @staticmethod
    def _seed_text(ctx: ProposalContext, slot: str) -> str:
        ref = ctx.reference
        seed = ctx.task.seed_program
        if ref and _seed_parents(ctx, seed):
            trace = feedback.candidate_trace(ref, None, None, slot_name=slot)
            return f"Seed program (the reference baseline):\n{trace}"
        return f"Seed program:\n```python\n{feedback.clip_code(seed)}\n```"

    @staticmethod
    def _proposed(ctx: ProposalContext, mutant: Mutant, based: list[Candidate], slot: str) -> Proposed:
        parent = based[0]
        based_on = " and ".join(f"`{_shown_name(c)}` ({feedback.fitness_text(c)})" for c in based)
        what = f"Offline {mutant.operator} of {based_on}"
        parts = [
            f"{what}: {mutant.thought}",
            "",
            "Parent trace:",
            feedback.candidate_trace(parent, None, ctx.reference, slot_name=slot),
        ]
        if len(based) > 1:
            parts += [
                "",
                "Second parent:",
                feedback.candidate_trace(based[1], None, ctx.reference, slot_name=slot, curves=False),
            ]
        return Proposed(
            code=mutant.code,
            name=_clip_name(mutant.name),
            thought=mutant.thought,
            parents=[c.id for c in based],
            proposer=f"mutation:{mutant.operator}",
            feedback_shown="\n".join(parts),
            extra={"operator": mutant.operator},
        )


class RandomMutationProposer:
    """Ablation: a random chain of 1..``max_chain`` operators applied to the seed program,
    ignoring the parent and the archive. Each step is, with probability ``crossover_rate``,
    a gate blend (``gate_probability``) or crossover with a random baseline of the task, else
    a mutation."""

    name = "random-mutation"

    def __init__(
        self,
        *,
        max_chain: int = 3,
        crossover_rate: float = 0.25,
        gate_probability: float = 0.5,
        operators: Sequence[str] | None = None,
        slot_name: str | None = None,
    ):
        if max_chain < 1:
            raise ValueError("max_chain must be at least 1")
        if not 0.0 <= crossover_rate <= 1.0 or not 0.0 <= gate_probability <= 1.0:
            raise ValueError("crossover_rate and gate_probability must be in [0, 1]")
        self.max_chain = max_chain
        self.crossover_rate = crossover_rate
        self.gate_probability = gate_probability
        self.operators = _check_operators(operators)
        self.slot_name = slot_name

    def _step(
        self, code: str, label: str, baselines: list[tuple[str, str]], rng: random.Random, slot: str
    ) -> tuple[Mutant, str] | None:
        """One random operator applied to ``code``: (mutant, description), or None if none applies."""
        if baselines and rng.random() < self.crossover_rate:
            current = normalized_hash(code)
            others = [(n, c) for n, c in baselines if normalized_hash(c) != current]
            if others:
                other_name, other_code = rng.choice(others)
                use_gate = rng.random() < self.gate_probability
                try:
                    mutant = _combine((code, _label(label)), (other_code, _label(other_name)), rng, slot, use_gate)
                    return mutant, f"{mutant.operator} with baseline `{other_name}`: {mutant.thought}"
                except ValueError:
                    pass
        try:
            mutant = mutate(code, label, rng, slot, operators=self.operators)
        except ValueError:
            return None
        return mutant, f"{mutant.operator}: {mutant.thought}"

    def propose(self, ctx: ProposalContext) -> Proposed:
        rng = ctx.rng
        task = ctx.task
        slot = self.slot_name or task.slot.name
        seed = task.seed_program
        baselines = sorted(task.baselines.items())
        parents = _seed_parents(ctx, seed)
        code, label = seed, _label(task.reference_baseline)
        names: list[str] = []
        steps: list[str] = []
        operators: list[str] = []
        seen = {normalized_hash(seed)}  # a later step must not undo an earlier one
        for _ in range(rng.randint(1, self.max_chain)):
            step = None
            for _attempt in range(STEP_ATTEMPTS):
                step = self._step(code, label, baselines, rng, slot)
                if step is not None and normalized_hash(step[0].code) not in seen:
                    break
                step = None
            if step is None:
                break  # nothing new reachable from here: stop the chain
            mutant, text = step
            seen.add(normalized_hash(mutant.code))
            code = mutant.code
            steps.append(text)
            names.append(mutant.name[len(label) :] if mutant.name.startswith(label) else f"~{mutant.name}")
            operators.append(mutant.operator)
        proposer = "random:" + ("+".join(operators) or "none")
        shown = "Random chain of operators applied to the seed program (no archive guidance):\n" + "\n".join(
            f"{i}. {s}" for i, s in enumerate(steps, 1)
        )
        if not operators:
            return _failed(proposer, parents, "no mutation applies to the seed program", shown)
        return Proposed(
            code=code,
            name=_clip_name(label + "".join(names)),
            thought=" Then ".join(s.split(": ", 1)[-1] for s in steps),
            parents=parents,
            proposer=proposer,
            feedback_shown=shown,
            extra={"operators": operators},
        )
