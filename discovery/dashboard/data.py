"""Read-only queries over a discovery archive for the dashboard: pandas frames built from its records.

Nothing here imports Streamlit or writes to the file: the archive is opened with
``Archive.open_readonly`` (a ``mode=ro`` SQLite URI with ``query_only``), so a database a
running ``discovery run`` is writing (WAL mode) is read as of its last commit, and a
missing, empty or foreign file becomes an ``Opened`` with a one-line message instead of an
exception. Fitness is "higher is better" everywhere.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from discovery import describe
from discovery.archive import Archive, ArchiveError
from discovery.records import Candidate
from sandbox.base import Status

FAILED_FLOOR_PAD = 0.1
"""Failed candidates without a fitness are drawn this fraction of the fitness span below the lowest point."""

LEADERBOARD_COLUMNS = [
    "rank",
    "id",
    "name",
    "baseline",
    "fitness",
    "fitness_pm",
    "fitness_ci_low",
    "fitness_ci_high",
    "n_seeds",
    "heldout_rank",
    "heldout_fitness",
    "heldout_pm",
    "heldout_ci_low",
    "heldout_ci_high",
    "heldout_n_seeds",
    "status",
    "stage",
    "outcome",
    "reason",
    "task",
    "run_id",
    "generation",
    "island",
    "proposer",
    "evaluated_at",
]


@dataclass
class Opened:
    """The result of opening an archive: ``archive`` when ``state == "ok"``, else a reason.

    ``state`` is ``ok``, ``missing`` (no file), ``empty`` (no tables or no runs yet) or
    ``error`` (not an archive, unreadable, other schema); ``message`` is one line.
    """

    archive: Archive | None
    state: str
    message: str

    def close(self) -> None:
        """Close the archive if one is open."""
        if self.archive is not None:
            self.archive.close()
            self.archive = None


def open_archive(path: str | Path) -> Opened:
    """Open ``path`` read-only; never raises for a problem with the file."""
    p = Path(path)
    if not p.exists():
        return Opened(None, "missing", f"no archive at {p}")
    if p.is_dir():
        return Opened(None, "error", f"{p} is a directory, not an archive file")
    try:
        if p.stat().st_size == 0:
            return Opened(None, "empty", f"{p} is empty: no run has written to it yet")
        archive = Archive.open_readonly(p)
    except ArchiveError as exc:
        if "empty database" in str(exc):
            return Opened(None, "empty", f"{p} is empty: no run has written to it yet")
        return Opened(None, "error", str(exc))
    except OSError as exc:
        return Opened(None, "error", f"cannot read {p}: {exc}")
    try:
        n_runs = archive.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except Exception as exc:  # a damaged file can fail on the first real read
        archive.close()
        return Opened(None, "error", f"cannot read {p}: {type(exc).__name__}: {exc}")
    if not n_runs:
        archive.close()
        return Opened(None, "empty", f"{p} has no runs yet")
    return Opened(archive, "ok", "")


def _frame(archive: Archive, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> pd.DataFrame:
    """One query as a DataFrame (one statement: a consistent snapshot under WAL)."""
    cursor = archive.db.execute(sql, list(params))
    columns = [d[0] for d in cursor.description]
    return pd.DataFrame.from_records(cursor.fetchall(), columns=columns)


def half_width(low: Any, high: Any) -> float | None:
    """Half the width of a confidence interval, ``None`` when either end is missing."""
    if low is None or high is None:
        return None
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        return None
    if math.isnan(low) or math.isnan(high):
        return None
    return (high - low) / 2


def fmt_ci(mean: Any, low: Any = None, high: Any = None, digits: int = 4) -> str:
    """``0.4866 ± 0.1425``, or the mean alone without an interval, or ``-`` without a value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    pm = half_width(low, high)
    if not pm:
        return f"{float(mean):.{digits}f}"
    return f"{float(mean):.{digits}f} ± {pm:.{digits}f}"


# ------------------------------------------------------------------- leaderboard


def tasks(archive: Archive) -> list[str]:
    """The tasks that have runs, sorted."""
    return [r[0] for r in archive.db.execute("SELECT DISTINCT task FROM runs ORDER BY task").fetchall()]


def runs(archive: Archive, task: str | None = None) -> pd.DataFrame:
    """Runs (of ``task``), newest first: id, task, status, started/ended, candidates, best, cost, message."""
    rows = archive.list_runs(task=task)
    columns = [
        "id",
        "task",
        "status",
        "started_at",
        "ended_at",
        "n_candidates",
        "best_fitness",
        "cost_usd",
        "seed",
        "message",
    ]
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)


def _rank(values: pd.Series, mask: pd.Series, groups: pd.Series) -> pd.Series:
    """1 = best (highest) among the rows in ``mask``, within each group; <NA> elsewhere."""
    ranked = values.where(mask).groupby(groups).rank(ascending=False, method="min")
    return ranked.astype("Int64")


def _not_ok(c: Candidate) -> bool:
    """Finished, and not ``ok``: a failure, a duplicate or a culled candidate."""
    return c.status.finished and c.status is not Status.OK


def candidates_frame(rows: Iterable[Candidate]) -> pd.DataFrame:
    """The records as a table: a column per ``Candidate`` field (``to_dict``), plus ``outcome`` (the
    status with its stage, ``invalid at contract``) and ``detail`` (what went wrong, "" when ok).

    Every candidate table of the dashboard starts from this one.
    """
    rows = list(rows)
    columns = [f.name for f in fields(Candidate)]
    df = pd.DataFrame([c.to_dict() for c in rows], columns=columns)
    df["outcome"] = [describe.status_label(c) for c in rows]
    df["detail"] = [describe.failure_detail(c) for c in rows]
    for col in ("fitness", "fitness_ci_low", "fitness_ci_high", "heldout_fitness", "heldout_ci_low", "heldout_ci_high"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in ("n_seeds", "heldout_n_seeds", "generation", "island"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    df["is_baseline"] = df["is_baseline"].astype(bool)
    return df


def _candidates_of(archive: Archive, task: str | None, run_id: str | None) -> list[Candidate]:
    """Every candidate of ``run_id`` (or of every run), of ``task`` if given, oldest first."""
    run_ids = [run_id] if run_id else [r["id"] for r in reversed(archive.list_runs(task=task))]
    rows = [c for rid in run_ids for c in archive.candidates(rid, order_by_fitness=False)]
    if task:
        rows = [c for c in rows if c.task == task]
    return sorted(rows, key=lambda c: c.created_at)  # stable: a run's own order within one instant


def leaderboard(
    archive: Archive,
    task: str | None = None,
    run_id: str | None = None,
    statuses: list[str] | None = None,
    sort_by: str = "rank",
    descending: bool = False,
) -> pd.DataFrame:
    """Every candidate (baselines included) with fitness, CI, held-out fitness and ranks.

    ``rank`` ranks the ``ok`` candidates by discover fitness and ``heldout_rank`` those with
    a held-out fitness, each within its task (1 = best), after the ``task``/``run_id``
    filters and before the ``statuses`` filter. ``outcome`` is the status with its stage
    (``invalid at contract``), ``reason`` what went wrong ("" when ok). ``sort_by`` is any
    column; missing values sort last either way.
    """
    rows = _candidates_of(archive, task, run_id)
    if not rows:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    df = candidates_frame(rows)
    df["baseline"] = df["is_baseline"]
    df["stage"] = [(c.failed_stage or "") if c.status is not Status.OK else "" for c in rows]
    df["reason"] = df["detail"]
    df["fitness_pm"] = (df["fitness_ci_high"] - df["fitness_ci_low"]) / 2
    df["heldout_pm"] = (df["heldout_ci_high"] - df["heldout_ci_low"]) / 2
    ok = pd.Series([c.scored for c in rows], index=df.index)
    df["rank"] = _rank(df["fitness"], ok, df["task"])
    df["heldout_rank"] = _rank(df["heldout_fitness"], ok & df["heldout_fitness"].notna(), df["task"])
    if statuses:
        df = df[df["status"].isin(list(statuses))]
    df = df[LEADERBOARD_COLUMNS]
    if sort_by not in df.columns:
        raise ValueError(f"cannot sort by {sort_by!r}; columns: {', '.join(df.columns)}")
    secondary = "fitness" if sort_by != "fitness" else "id"
    df = df.sort_values(
        [sort_by, secondary], ascending=[not descending, secondary == "id"], na_position="last", kind="stable"
    )
    return df.reset_index(drop=True)


# -------------------------------------------------------------------------- run


def run_info(archive: Archive, run_id: str) -> dict[str, Any] | None:
    """The run (config and isolation decoded, counts and cost), plus ``statuses``: count per status."""
    run = archive.get_run(run_id)
    if run is None:
        return None
    counts = Counter(c.status.value for c in archive.candidates(run_id, order_by_fitness=False))
    run["statuses"] = dict(sorted(counts.items()))
    return run


TIMELINE_COLUMNS = [
    "evaluation",
    "id",
    "name",
    "status",
    "outcome",
    "reason",
    "fitness",
    "plotted",
    "best_so_far",
    "evaluated_at",
    "baseline",
    "proposer",
]


def timeline(archive: Archive, run_id: str) -> pd.DataFrame:
    """The run's finished candidates in the order they finished, one row per evaluation.

    Columns: ``evaluation`` (1, 2, ...), id, name, status, ``outcome`` (``ok`` or
    ``status at stage``), reason (what went wrong), fitness, ``plotted`` (the fitness, or for
    a failure without one a floor below every point), ``best_so_far`` (running max over
    ``ok`` candidates), evaluated_at, baseline, proposer.
    """
    rows = [c for c in archive.candidates(run_id, order_by_fitness=False) if c.status.finished]
    if not rows:
        return pd.DataFrame(columns=TIMELINE_COLUMNS)
    rows.sort(key=lambda c: c.evaluated_at or c.created_at)
    df = candidates_frame(rows)
    df["evaluation"] = range(1, len(df) + 1)
    df["baseline"] = df["is_baseline"]
    df["reason"] = df["detail"]
    df["best_so_far"] = df["fitness"].where(df["status"] == Status.OK.value).cummax()
    known = df["fitness"].dropna()
    if known.empty:
        floor = 0.0
    else:
        span = float(known.max() - known.min()) or 1.0
        floor = float(known.min()) - FAILED_FLOOR_PAD * span
    df["plotted"] = df["fitness"].fillna(floor)
    df["evaluated_at"] = pd.to_datetime([c.evaluated_at or c.created_at for c in rows], utc=True, errors="coerce")
    return df[TIMELINE_COLUMNS]


def failures(archive: Archive, run_id: str) -> pd.DataFrame:
    """Finished candidates that are not ``ok``, counted by status and stage (``label``: ``invalid at
    contract``), most frequent first, with an example of what went wrong."""
    columns = ["status", "stage", "label", "count", "example"]
    rows = [c for c in archive.candidates(run_id, order_by_fitness=False) if _not_ok(c)]
    if not rows:
        return pd.DataFrame(columns=columns)
    df = candidates_frame(rows)
    df["stage"] = df["failed_stage"].fillna("")
    grouped = df.groupby(["status", "stage"], as_index=False).agg(
        label=("outcome", "first"), count=("id", "count"), example=("detail", "min")
    )
    return grouped.sort_values(["count", "status"], ascending=[False, True], kind="stable")[columns].reset_index(
        drop=True
    )


def llm_usage(archive: Archive, run_id: str) -> pd.DataFrame:
    """The run's LLM calls in order: time, model, tokens, cost, their running totals, error."""
    df = _frame(
        archive,
        "SELECT id, created_at, model, candidate_id, prompt_tokens, completion_tokens, cost_usd, latency_s, error"
        " FROM llm_calls WHERE run_id = ? ORDER BY id",
        [run_id],
    )
    columns = [
        "id",
        "created_at",
        "model",
        "candidate_id",
        "prompt_tokens",
        "completion_tokens",
        "tokens",
        "cost_usd",
        "cumulative_cost_usd",
        "cumulative_tokens",
        "latency_s",
        "error",
    ]
    if df.empty:
        return pd.DataFrame(columns=columns)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True, errors="coerce")
    for col in ("prompt_tokens", "completion_tokens", "cost_usd", "latency_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["tokens"] = df["prompt_tokens"].fillna(0) + df["completion_tokens"].fillna(0)
    df["cumulative_cost_usd"] = df["cost_usd"].fillna(0.0).cumsum()
    df["cumulative_tokens"] = df["tokens"].cumsum()
    df["error"] = df["error"].fillna("")
    return df[columns]


# -------------------------------------------------------------------- candidate


def candidate(archive: Archive, candidate_id: str) -> Candidate | None:
    """The candidate (its run's task included), or ``None`` if unknown."""
    return archive.get_candidate(candidate_id)


LINEAGE_COLUMNS = ["depth", "id", "name", "status", "outcome", "fitness", "proposer", "generation", "parents"]


def lineage(archive: Archive, candidate_id: str) -> pd.DataFrame:
    """The candidate and its ancestors (depth 0 = itself), with status (and its stage), fitness and proposer."""
    ancestors = archive.lineage(candidate_id)
    if not ancestors:
        return pd.DataFrame(columns=LINEAGE_COLUMNS)
    df = candidates_frame(a.candidate for a in ancestors)
    df["depth"] = [a.depth for a in ancestors]
    df["parents"] = [", ".join(a.candidate.parents) for a in ancestors]
    return df[LINEAGE_COLUMNS]


def parent_diffs(archive: Archive, c: Candidate) -> list[tuple[Candidate, str]]:
    """``(parent, unified diff parent -> candidate)`` for each parent the archive has."""
    out: list[tuple[Candidate, str]] = []
    for parent_id in c.parents:
        parent = archive.get_candidate(parent_id)
        if parent is None:
            continue
        diff = difflib.unified_diff(
            parent.code.splitlines(keepends=True),
            c.code.splitlines(keepends=True),
            fromfile=f"{parent.name} ({parent.id})",
            tofile=f"{c.name} ({c.id})",
        )
        out.append((parent, "".join(line if line.endswith("\n") else line + "\n" for line in diff)))
    return out


def _per_config_rows(who: str, per_config: Any) -> list[dict[str, Any]]:
    if not isinstance(per_config, dict):
        return []
    rows = []
    for config, value in per_config.items():
        if not isinstance(value, dict) or value.get("fitness") is None:
            continue
        fit = float(value["fitness"])
        low = value.get("ci_low")
        high = value.get("ci_high")
        rows.append(
            {
                "who": who,
                "config": str(config),
                "fitness": fit,
                "ci_low": float(low) if low is not None else fit,
                "ci_high": float(high) if high is not None else fit,
                "n": value.get("n"),
            }
        )
    return rows


def per_config_vs_baselines(archive: Archive, c: Candidate) -> pd.DataFrame:
    """Discover-suite fitness per configuration of the candidate and of its run's ``ok`` baselines.

    Columns: who (``this: name`` or ``baseline: name``), config, fitness, ci_low, ci_high, n.
    """
    data = _per_config_rows(f"this: {c.name}", c.per_config)
    for baseline in archive.candidates(c.run_id, status=Status.OK):  # best first
        if baseline.is_baseline and baseline.id != c.id:
            data.extend(_per_config_rows(f"baseline: {baseline.name}", baseline.per_config))
    return pd.DataFrame(data, columns=["who", "config", "fitness", "ci_low", "ci_high", "n"])


def evaluations(archive: Archive, candidate_id: str) -> pd.DataFrame:
    """The candidate's (suite, config, seed) evaluations: stage, fitness, numeric metrics, seconds, and the
    evaluation a reused one was copied from."""
    out = []
    for e in archive.evaluations(candidate_id):
        metrics = e.metrics if isinstance(e.metrics, dict) else {}
        out.append(
            {
                "suite": e.suite,
                "config": e.config,
                "seed": e.seed,
                "stage": e.stage,
                "fitness": e.fitness,
                **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
                "seconds": e.seconds,
                "trainer": e.trainer_path or "",  # sequential, batched-vmap xS, or batched-loop xS (why)
                "reused from": f"evaluation {e.reused_from}" if e.reused else "",  # a copy, not trained here
            }
        )
    return pd.DataFrame(out)


def training_curves(archive: Archive, candidate_id: str) -> pd.DataFrame:
    """Long-form training curves of the candidate's evaluations: suite, config, seed, series, step, value.

    Each recorded curve is a mapping ``series -> list of numbers`` (loss, grad_norm, ...);
    anything else is skipped. Non-finite values become missing.
    """
    out: list[tuple[str, str, int, str, int, float | None]] = []
    for e in archive.evaluations(candidate_id):
        if not isinstance(e.curve, dict):
            continue
        for series, values in e.curve.items():
            if not isinstance(values, list):
                continue
            for step, value in enumerate(values):
                number = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
                out.append((e.suite, e.config, e.seed, str(series), step, number))
    return pd.DataFrame(out, columns=["suite", "config", "seed", "series", "step", "value"])


def llm_calls_for(archive: Archive, candidate_id: str) -> list[dict[str, Any]]:
    """The LLM calls that produced the candidate (prompt and reply verbatim), oldest first."""
    cursor = archive.db.execute(
        "SELECT id, created_at, model, prompt, reply, prompt_tokens, completion_tokens, cost_usd, error"
        " FROM llm_calls WHERE candidate_id = ? ORDER BY id",
        [candidate_id],
    )
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, r, strict=True)) for r in cursor.fetchall()]
