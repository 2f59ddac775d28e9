"""Which candidates to export, read from the archive (read-only): ``Candidate`` records reduced to plain ``Chosen``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discovery import describe
from discovery.archive import Archive, ArchiveError
from discovery.records import Candidate
from sandbox.base import Status


class ExportError(Exception):
    """Nothing sensible to export (unknown run or candidate, empty archive, ...): a one-line message."""


@dataclass
class Chosen:
    """One candidate to export: its record reduced to plain values (str, float, int, None), ready to be
    written into a module as literals."""

    id: str
    name: str
    run_id: str
    task: str
    task_ref: str  # how to load the task: a built-in name or the task file the run used
    code: str
    thought: str
    is_baseline: bool
    fitness: float | None
    fitness_ci: tuple[float | None, float | None]
    seeds: list[int]
    heldout_fitness: float | None
    heldout_ci: tuple[float | None, float | None]
    heldout_seeds: list[int]
    parents: list[tuple[str, str]] = field(default_factory=list)  # (id, name or "")
    date: str = ""
    proposer: str = ""
    generation: int = 0
    status: str = Status.OK.value  # the status's text: ok, or why it stopped (culled, invalid, error, ...)
    reason: str = ""  # ``stage: reason`` when not ok


def _real(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _record(archive: Archive, c: Candidate, run: dict[str, Any]) -> Chosen:
    seeds = {
        suite: sorted({e.seed for e in archive.evaluations(c.id, suite) if e.fitness is not None})
        for suite in ("discover", "heldout")
    }
    parents = []
    for pid in c.parents:
        parent = archive.get_candidate(pid)
        parents.append((pid, parent.name if parent else ""))
    return Chosen(
        id=c.id,
        name=c.name,
        run_id=c.run_id,
        task=c.task,
        task_ref=str((run.get("config") or {}).get("task") or c.task),
        code=c.code,
        thought=c.thought,
        is_baseline=c.is_baseline,
        fitness=_real(c.fitness),
        fitness_ci=(_real(c.fitness_ci_low), _real(c.fitness_ci_high)),
        seeds=seeds["discover"],
        heldout_fitness=_real(c.heldout_fitness),
        heldout_ci=(_real(c.heldout_ci_low), _real(c.heldout_ci_high)),
        heldout_seeds=seeds["heldout"],
        parents=parents,
        date=c.evaluated_at or c.created_at,
        proposer=c.proposer,
        generation=c.generation,
        status=c.status.value,
        reason=_reason(c),
    )


def _reason(c: Candidate) -> str:
    """``stage: reason`` of a candidate that is not ok (either part may be missing), else "".

    The stored reason says the most (which configuration and seed, the code line); without one,
    what the error fields say."""
    if c.status is Status.OK:
        return ""
    stage = (c.failed_stage or "").strip()
    detail = (c.reason or "").strip() or describe.failure_detail(c)
    return f"{stage}: {detail}" if stage and detail else stage or detail


def _open(db: str | Path) -> Archive:
    if not Path(db).exists():
        raise ExportError(f"no archive at {db}")
    try:
        return Archive.open_readonly(db)
    except ArchiveError as exc:
        raise ExportError(str(exc)) from None


def choose(
    db: str | Path,
    run_id: str | None = None,
    top: int | None = None,
    candidate_ids: Sequence[str] = (),
    task: str | None = None,
) -> list[Chosen]:
    """The candidates to export: best first, or in the order named.

    ``candidate_ids``: exactly those, whatever their status (culled, failed, a baseline...),
    as long as they have code; the docstring says the status. Otherwise the ``top`` best
    evaluated (status ``ok``) non-baseline candidates by discover fitness, of ``run_id`` or of
    every run (of ``task``), one per distinct program. Raises ``ExportError`` with a one-line reason.
    """
    if candidate_ids and top is not None:
        raise ExportError("give either --top or --candidate, not both")
    if top is not None and top < 1:
        raise ExportError(f"--top must be at least 1 (got {top})")
    with _open(db) as archive:
        runs = {r["id"]: r for r in archive.list_runs()}
        if not runs:
            raise ExportError(f"archive {db} has no runs")
        if run_id is not None and run_id not in runs:
            raise ExportError(
                f"no run {run_id} in {db} (have: {', '.join(list(runs)[:5])}{', ...' if len(runs) > 5 else ''})"
            )
        if candidate_ids:
            return [_explicit(archive, db, cid, runs, run_id) for cid in dict.fromkeys(candidate_ids)]
        rows = archive.leaderboard(run_id=run_id, task=task, limit=1_000_000)
        rows = [c for c in rows if not c.is_baseline and c.code]
        tasks = sorted({c.task for c in rows})
        if len(tasks) > 1:
            raise ExportError(f"the best candidates belong to several tasks ({', '.join(tasks)}); pass --run or --task")
        chosen: list[Chosen] = []
        seen: set[str] = set()
        for c in rows:
            if c.code_hash in seen:
                continue
            if c.code_hash is not None:
                seen.add(c.code_hash)
            chosen.append(_record(archive, c, runs[c.run_id]))
            if len(chosen) >= (top or 5):
                break
    if not chosen:
        where = f"run {run_id}" if run_id else (f"task {task}" if task else str(db))
        raise ExportError(f"no evaluated (status ok) non-baseline candidate in {where}")
    return chosen


def _explicit(archive: Archive, db: str | Path, cid: str, runs: dict[str, Any], run_id: str | None) -> Chosen:
    c = archive.get_candidate(cid)
    if c is None:
        raise ExportError(f"no candidate {cid} in {db}")
    if run_id is not None and c.run_id != run_id:
        raise ExportError(f"candidate {cid} belongs to run {c.run_id}, not {run_id}")
    if not c.code.strip():
        raise ExportError(f"candidate {cid} has no code (status {c.status.value}); nothing to export")
    return _record(archive, c, runs[c.run_id])
