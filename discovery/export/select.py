"""Which candidates to export, read from the archive (read-only) as plain records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discovery.archive import Archive, ArchiveError


class ExportError(Exception):
    """Nothing sensible to export (unknown run or candidate, empty archive, ...): a one-line message."""


@dataclass
class Chosen:
    """One candidate to export: its archive row reduced to plain values (str, float, int, None)."""

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
    status: str = "ok"  # the archive's status: ok, or why it stopped (culled, contract, error, ...)
    reason: str = ""  # the archive's one-line reason when not ok (with the stage it stopped at)


def _real(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _record(archive: Archive, row: dict[str, Any], run: dict[str, Any]) -> Chosen:
    seeds = {s: sorted({int(e["seed"]) for e in archive.evaluations(row["id"], s) if e.get("fitness") is not None})
             for s in ("discover", "heldout")}
    parents = []
    for pid in row.get("parents") or []:
        parent = archive.get_candidate(str(pid))
        parents.append((str(pid), _text(parent.get("name")) if parent else ""))
    return Chosen(
        id=str(row["id"]), name=_text(row.get("name")), run_id=_text(row.get("run_id")), task=_text(run.get("task")),
        task_ref=_text((run.get("config") or {}).get("task") or run.get("task")),
        code=_text(row.get("code")), thought=_text(row.get("thought")), is_baseline=bool(row.get("is_baseline")),
        fitness=_real(row.get("fitness")),
        fitness_ci=(_real(row.get("fitness_ci_low")), _real(row.get("fitness_ci_high"))),
        seeds=seeds["discover"], heldout_fitness=_real(row.get("heldout_fitness")),
        heldout_ci=(_real(row.get("heldout_ci_low")), _real(row.get("heldout_ci_high"))),
        heldout_seeds=seeds["heldout"], parents=parents,
        date=_text(row.get("evaluated_at") or row.get("created_at")), proposer=_text(row.get("proposer")),
        generation=int(row.get("generation") or 0), status=_text(row.get("status")) or "ok",
        reason=_reason(row),
    )


def _reason(row: dict[str, Any]) -> str:
    """``stage: reason`` of a candidate that is not ok (either part may be missing), else ""."""
    if row.get("status") == "ok":
        return ""
    stage, reason = _text(row.get("failed_stage")).strip(), _text(row.get("reason")).strip()
    return f"{stage}: {reason}" if stage and reason else stage or reason


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
            raise ExportError(f"no run {run_id} in {db} (have: {', '.join(list(runs)[:5])}"
                              f"{', ...' if len(runs) > 5 else ''})")
        if candidate_ids:
            return [_explicit(archive, db, cid, runs, run_id) for cid in dict.fromkeys(candidate_ids)]
        rows = archive.leaderboard(run_id=run_id, task=task, limit=1_000_000)
        rows = [r for r in rows if not r.get("is_baseline") and r.get("code")]
        tasks = sorted({r["task"] for r in rows})
        if len(tasks) > 1:
            raise ExportError(f"the best candidates belong to several tasks ({', '.join(tasks)}); "
                              "pass --run or --task")
        chosen: list[Chosen] = []
        seen: set[str] = set()
        for row in rows:
            if row.get("code_hash") in seen:
                continue
            seen.add(row.get("code_hash"))
            chosen.append(_record(archive, row, runs[row["run_id"]]))
            if len(chosen) >= (top or 5):
                break
    if not chosen:
        where = f"run {run_id}" if run_id else (f"task {task}" if task else str(db))
        raise ExportError(f"no evaluated (status ok) non-baseline candidate in {where}")
    return chosen


def _explicit(archive: Archive, db: str | Path, cid: str, runs: dict[str, Any], run_id: str | None) -> Chosen:
    row = archive.get_candidate(cid)
    if row is None:
        raise ExportError(f"no candidate {cid} in {db}")
    if run_id is not None and row["run_id"] != run_id:
        raise ExportError(f"candidate {cid} belongs to run {row['run_id']}, not {run_id}")
    if not _text(row.get("code")).strip():
        raise ExportError(f"candidate {cid} has no code (status {row.get('status')}); nothing to export")
    return _record(archive, row, runs[row["run_id"]])
