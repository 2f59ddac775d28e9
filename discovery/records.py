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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple, TypeVar

from sandbox.base import Status

T = TypeVar("T")


def _json(value: object) -> Any:
    """A decoded ``*_json`` column (``None`` stays ``None``)."""
    return json.loads(value) if isinstance(value, str) else value


#: how a column becomes a field, by the field's declared type (``None`` stays ``None``)
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "str": str,
    "str | None": str,
    "int": int,
    "int | None": int,
    "float | None": float,
    "bool": bool,
    "Status": Status,
    "tuple[str, ...]": lambda value: tuple(str(item) for item in value),
}


def _decode(record: type[T], row: Mapping[str, Any], json_fields: frozenset[str]) -> T:
    """``record`` built from a row: ``x_json`` columns decoded into ``x``, each value to its field's type.

    A missing or NULL column keeps the field's default (a required field must be present).
    """
    values: dict[str, Any] = {}
    for spec in fields(record):  # type: ignore[arg-type]
        value = _json(row.get(f"{spec.name}_json")) if spec.name in json_fields else row.get(spec.name)
        if value is not None:
            decoder = _DECODERS.get(str(spec.type))
            values[spec.name] = decoder(value) if decoder is not None else value
    return record(**values)


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
    curve: dict[str, Any] | None = None  # training curves by configuration
    seconds: float | None = None
    created_at: str = ""
    evaluated_at: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Candidate:
        """Decode a ``candidates`` row (``SELECT c.*, r.task`` or plain ``SELECT *``)."""
        return _decode(cls, row, _CANDIDATE_JSON)

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


_CANDIDATE_JSON = frozenset({"parents", "per_config", "heldout_per_config", "curve"})
_EVALUATION_JSON = frozenset({"metrics", "curve"})


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
    metrics: dict[str, Any] = field(default_factory=dict)  # NULL decodes to {}
    curve: Any = None
    seconds: float | None = None
    created_at: str = ""
    id: int | None = None  # the row's id (None before it is stored)
    # what the result is a pure function of, for reuse (NULL in rows older than schema v5):
    task: str | None = None
    task_version: str | None = None
    code_hash: str | None = None  # the normalized hash of the code that trained
    device_kind: str | None = None  # cpu or cuda
    trainer_path: str | None = None  # sequential, batched-vmap xS, batched-loop xS (why)
    reused_from: int | None = None  # the trained evaluation this one was copied from; None when trained

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Evaluation:
        """Decode an ``evaluations`` row."""
        return _decode(cls, row, _EVALUATION_JSON)

    @property
    def reused(self) -> bool:
        """Whether this result was copied from an identical earlier training instead of trained."""
        return self.reused_from is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)
