"""The agent's graph as LangGraph draws it: Mermaid text, and the nodes and edges behind it.

The drawing comes from the compiled graph of :mod:`discovery.agent.pipeline` (no Runtime:
its nodes are never run here), so it cannot drift from the code; ``docs/architecture.md``
holds a copy that a test compares with :func:`mermaid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from discovery.agent.pipeline import pipeline_graph

__all__ = ["Edge", "edges", "mermaid", "nodes"]


@dataclass(frozen=True)
class Edge:
    """One edge of the graph: ``label`` names the branch of a conditional edge."""

    source: str
    target: str
    conditional: bool
    label: str | None


@lru_cache(maxsize=1)
def _drawable():  # noqa: ANN202 - langchain_core's Graph
    return pipeline_graph(None).compile().get_graph()


def mermaid() -> str:
    """The graph in Mermaid syntax, exactly as LangGraph's ``draw_mermaid()`` writes it."""
    return _drawable().draw_mermaid()


def nodes() -> list[str]:
    """The node names, ``__start__`` and ``__end__`` included."""
    return list(_drawable().nodes)


def edges() -> list[Edge]:
    """Every edge; a conditional edge's ``label`` is its branch (None when it is the target's name)."""
    return [
        Edge(e.source, e.target, e.conditional, e.data if isinstance(e.data, str) else None) for e in _drawable().edges
    ]
