"""What every proposer receives and returns.

The loop selects parents and a bounded view of the archive, packs them into a
:class:`ProposalContext`, and asks a proposer for one new program. Rows are archive
candidate rows (dicts, JSON columns decoded: ``per_config``, ``curve``, ``parents``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from discovery.tasks import Task


@dataclass
class ProposalContext:
    """A bounded view of the archive for one proposal. The held-out suite never appears here."""

    task: Task
    run_id: str
    parent: dict[str, Any] | None  # the candidate to improve (None: start from the seed program)
    second_parent: dict[str, Any] | None  # for crossover / blends
    top: list[dict[str, Any]]  # best candidates of the parent's island, sorted ascending (best last)
    diverse: list[dict[str, Any]]  # from other islands or the per-configuration Pareto front
    failures: list[dict[str, Any]]  # recent failed candidates and unusable replies, newest last
    reference: dict[str, Any] | None  # the reference baseline's row (e.g. DPO), for deltas
    island: int
    generation: int
    rng: random.Random


@dataclass
class Proposed:
    """One proposal. ``code`` is None when the proposer could not produce a usable program
    (an unusable LLM reply); ``error`` then says why in one line, and goes back in the next prompt."""

    code: str | None
    name: str
    thought: str
    parents: list[str]
    proposer: str  # e.g. "mutation:swap_function" or "llm:openai/gpt-4o"
    feedback_shown: str = ""  # the exact prompt / feedback text the proposer saw
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Proposer(Protocol):
    """Anything that turns a context into a proposal. Must be thread-safe (the loop runs several)."""

    name: str

    def propose(self, ctx: ProposalContext) -> Proposed:
        """Return one new program (or an error) for ``ctx``."""
        ...


class ProposerUnavailable(RuntimeError):
    """The proposer cannot go on (the LLM stays unreachable, the cost budget is spent): stop the run."""
