"""The typed records a candidate travels as: :class:`Candidate` and :class:`Evaluation`.

The archive decodes its rows into these in one place (:meth:`Candidate.from_row`,
:meth:`Evaluation.from_row`); selection, feedback, prompting, the dashboard, the CLI and the
export read attributes, never string keys. Records are frozen: a change goes through the
archive (``Archive.update_candidate``) and comes back as a new record.

The error of a failed candidate is structured (``error_class``, ``error_line``,
``error_message``) as the jail or the checker knew it; ``reason`` is the one-line text a
person reads. Nothing re-parses ``reason``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from sandbox.base import Status


def _json(value: object) -> Any:
    """A decoded ``*_json`` column (``None`` stays ``None``)."""
    return json.loads(value) if isinstance(value, str) else value


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Candidate:
    """One proposed program of a run and everything the archive knows about it."""

    id: str
    run_id: str
    name: str
    code: str
    status: Status
    code_hash: str | None = None  # None for a reply without usable code
    task: str = ""  # the run's task
    thought: str = ""
    parents: tuple[str, ...] = ()
    generation: int = 0
    island: int = 0
    proposer: str = ""
    is_baseline: bool = False
    feedback_shown: str = ""
    failed_stage: str | None = None  # where it failed or stopped (reply, static, contract, cascade, ...)
    reason: str | None = None  # one line for people
    error_class: str | None = None  # e.g. "NameError"; None when no exception was raised
    error_line: int | None = None  # the candidate's own line where it failed
    error_message: str | None = None  # the exception's message, without class or line
    duplicate_of: str | None = None  # the earlier candidate with the same normalized code
    fitness: float | None = None
    fitness_ci_low: float | None = None
    fitness_ci_high: float | None = None
    n_seeds: int | None = None
    per_config: dict[str, Any] | None = None
    heldout_fitness: float | None = None
    heldout_ci_low: float | None = None
    heldout_ci_high: float | None = None
    heldout_n_seeds: int | None = None
    heldout_per_config: dict[str, Any] | None = None
    curve: list[Any] | None = None
    seconds: float | None = None
    created_at: str = ""
    evaluated_at: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Candidate:
        """Decode a ``candidates`` row (``SELECT c.*, r.task`` or plain ``SELECT *``)."""
        parents = _json(row.get("parents_json")) or []
        return cls(
            id=str(row["id"]),
            run_id=str(row["run_id"]),
            name=str(row.get("name") or ""),
            code=str(row.get("code") or ""),
            status=Status(row["status"]),
            code_hash=row.get("code_hash"),
            task=str(row.get("task") or ""),
            thought=str(row.get("thought") or ""),
            parents=tuple(str(p) for p in parents),
            generation=int(row.get("generation") or 0),
            island=int(row.get("island") or 0),
            proposer=str(row.get("proposer") or ""),
            is_baseline=bool(row.get("is_baseline")),
            feedback_shown=str(row.get("feedback_shown") or ""),
            failed_stage=row.get("failed_stage"),
            reason=row.get("reason"),
            error_class=row.get("error_class"),
            error_line=_int(row.get("error_line")),
            error_message=row.get("error_message"),
            duplicate_of=row.get("duplicate_of"),
            fitness=_float(row.get("fitness")),
            fitness_ci_low=_float(row.get("fitness_ci_low")),
            fitness_ci_high=_float(row.get("fitness_ci_high")),
            n_seeds=_int(row.get("n_seeds")),
            per_config=_json(row.get("per_config_json")),
            heldout_fitness=_float(row.get("heldout_fitness")),
            heldout_ci_low=_float(row.get("heldout_ci_low")),
            heldout_ci_high=_float(row.get("heldout_ci_high")),
            heldout_n_seeds=_int(row.get("heldout_n_seeds")),
            heldout_per_config=_json(row.get("heldout_per_config_json")),
            curve=_json(row.get("curve_json")),
            seconds=_float(row.get("seconds")),
            created_at=str(row.get("created_at") or ""),
            evaluated_at=row.get("evaluated_at"),
        )

    @property
    def failed(self) -> bool:
        """Whether the candidate's code failed a check or its training (see ``Status.failed``)."""
        return self.status.failed

    @property
    def scored(self) -> bool:
        """Whether it finished ``ok`` with a discover fitness (what rankings and selection use)."""
        return self.status is Status.OK and self.fitness is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``status`` as its text, ``parents`` as a list)."""
        out = asdict(self)
        out["status"] = self.status.value
        out["parents"] = list(self.parents)
        return out


class Ancestor(NamedTuple):
    """A candidate in a lineage, ``depth`` steps above the one asked about (0 for itself)."""

    depth: int
    candidate: Candidate


@dataclass(frozen=True)
class Evaluation:
    """One finished (suite, configuration, seed) training of a candidate."""

    candidate_id: str
    suite: str
    config: str
    seed: int
    stage: str = "full"  # which step produced it: cascade, full, extra
    fitness: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: Any = None
    seconds: float | None = None
    created_at: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Evaluation:
        """Decode an ``evaluations`` row."""
        return cls(
            candidate_id=str(row["candidate_id"]),
            suite=str(row["suite"]),
            config=str(row["config"]),
            seed=int(row["seed"]),
            stage=str(row.get("stage") or "full"),
            fitness=_float(row.get("fitness")),
            metrics=_json(row.get("metrics_json")) or {},
            curve=_json(row.get("curve_json")),
            seconds=_float(row.get("seconds")),
            created_at=str(row.get("created_at") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)
