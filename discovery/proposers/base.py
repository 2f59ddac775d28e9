"""What every proposer receives and returns.

The loop selects parents and a bounded view of the archive, packs them into a
:class:`~discovery.selection.ProposalContext` (typed :class:`~discovery.records.Candidate`
records; importable from here too), and asks a proposer for one new program.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from discovery.selection import ProposalContext

__all__ = ["ProposalContext", "Proposed", "Proposer", "ProposerUnavailable"]


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
    """The proposer cannot go on (the LLM stays unreachable, the cost budget is spent): stop the run.

    ``records`` are the LLM attempts of the call that failed (``CallRecord``), for the archive."""

    def __init__(self, message: str, records: Sequence[Any] = ()):
        super().__init__(message)
        self.records = list(records)
