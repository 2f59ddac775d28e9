"""Read-only queries over a discovery archive for the dashboard: pandas frames and dicts.

Nothing here imports Streamlit or writes to the file: the archive is opened with
``Archive.open_readonly`` (a ``mode=ro`` SQLite URI with ``query_only``), so a database a
running ``discovery run`` is writing (WAL mode) is read as of its last commit, and a
missing, empty or foreign file becomes an ``Opened`` with a one-line message instead of an
exception. Fitness is "higher is better" everywhere.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from discovery.archive import Archive, ArchiveError

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
    columns = ["id", "task", "status", "started_at", "ended_at", "n_candidates", "best_fitness", "cost_usd",
               "seed", "message"]
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)


def _rank(values: pd.Series, mask: pd.Series, groups: pd.Series) -> pd.Series:
    """1 = best (highest) among the rows in ``mask``, within each group; <NA> elsewhere."""
    ranked = values.where(mask).groupby(groups).rank(ascending=False, method="min")
    return ranked.astype("Int64")


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
    filters and before the ``statuses`` filter. ``sort_by`` is any column; missing values
    sort last either way.
    """
    sql = (
        "SELECT c.id, c.name, c.is_baseline, c.fitness, c.fitness_ci_low, c.fitness_ci_high, c.n_seeds,"
        " c.heldout_fitness, c.heldout_ci_low, c.heldout_ci_high, c.heldout_n_seeds, c.status, c.failed_stage,"
        " c.reason, r.task, c.run_id, c.generation, c.island, c.proposer, c.evaluated_at"
        " FROM candidates c JOIN runs r ON r.id = c.run_id WHERE 1 = 1"
    )
    params: list[Any] = []
    if task:
        sql += " AND r.task = ?"
        params.append(task)
    if run_id:
        sql += " AND c.run_id = ?"
        params.append(run_id)
    df = _frame(archive, sql + " ORDER BY c.created_at, c.rowid", params)
    if df.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    df["baseline"] = df.pop("is_baseline").astype(bool)
    for col in ("fitness", "fitness_ci_low", "fitness_ci_high", "heldout_fitness", "heldout_ci_low",
                "heldout_ci_high"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["fitness_pm"] = (df["fitness_ci_high"] - df["fitness_ci_low"]) / 2
    df["heldout_pm"] = (df["heldout_ci_high"] - df["heldout_ci_low"]) / 2
    ok = (df["status"] == "ok") & df["fitness"].notna()
    df["rank"] = _rank(df["fitness"], ok, df["task"])
    df["heldout_rank"] = _rank(df["heldout_fitness"], ok & df["heldout_fitness"].notna(), df["task"])
    df["reason"] = [
        ("" if stage is None else f"{stage}: ") + (reason or "") if status != "ok" else ""
        for status, stage, reason in zip(df["status"], df["failed_stage"], df["reason"], strict=True)
    ]
    for col in ("n_seeds", "heldout_n_seeds", "generation", "island"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    if statuses:
        df = df[df["status"].isin(statuses)]
    df = df[LEADERBOARD_COLUMNS]
    if sort_by not in df.columns:
        raise ValueError(f"cannot sort by {sort_by!r}; columns: {', '.join(df.columns)}")
    secondary = "fitness" if sort_by != "fitness" else "id"
    df = df.sort_values([sort_by, secondary], ascending=[not descending, secondary == "id"], na_position="last",
                        kind="stable")
    return df.reset_index(drop=True)


# -------------------------------------------------------------------------- run


def run_info(archive: Archive, run_id: str) -> dict[str, Any] | None:
    """The run (config and isolation decoded, counts and cost), plus ``statuses``: count per status."""
    run = archive.get_run(run_id)
    if run is None:
        return None
    rows = archive.db.execute(
        "SELECT status, COUNT(*) FROM candidates WHERE run_id = ? GROUP BY status ORDER BY status", [run_id]
    ).fetchall()
    run["statuses"] = {status: int(n) for status, n in rows}
    return run


def timeline(archive: Archive, run_id: str) -> pd.DataFrame:
    """The run's finished candidates in the order they finished, one row per evaluation.

    Columns: ``evaluation`` (1, 2, ...), id, name, status, ``outcome`` (``ok`` or
    ``status (stage)``), reason, fitness, ``plotted`` (the fitness, or for a failure
    without one a floor below every point), ``best_so_far`` (running max over ``ok``
    candidates), evaluated_at, baseline, proposer.
    """
    df = _frame(
        archive,
        "SELECT id, name, status, failed_stage, reason, fitness, is_baseline, proposer, created_at,"
        " COALESCE(evaluated_at, created_at) AS evaluated_at FROM candidates"
        " WHERE run_id = ? AND status NOT IN ('pending', 'evaluating')"
        " ORDER BY COALESCE(evaluated_at, created_at), rowid",
        [run_id],
    )
    columns = ["evaluation", "id", "name", "status", "outcome", "reason", "fitness", "plotted", "best_so_far",
               "evaluated_at", "baseline", "proposer"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    df["fitness"] = pd.to_numeric(df["fitness"], errors="coerce")
    df["evaluation"] = range(1, len(df) + 1)
    df["baseline"] = df.pop("is_baseline").astype(bool)
    df["outcome"] = [s if s == "ok" or not stage else f"{s} ({stage})"
                     for s, stage in zip(df["status"], df["failed_stage"], strict=True)]
    df["reason"] = df["reason"].fillna("")
    ok_fitness = df["fitness"].where(df["status"] == "ok")
    df["best_so_far"] = ok_fitness.cummax()
    known = df["fitness"].dropna()
    if known.empty:
        floor = 0.0
    else:
        span = float(known.max() - known.min()) or 1.0
        floor = float(known.min()) - FAILED_FLOOR_PAD * span
    df["plotted"] = df["fitness"].fillna(floor)
    df["evaluated_at"] = pd.to_datetime(df["evaluated_at"], utc=True, errors="coerce")
    return df[columns]


def failures(archive: Archive, run_id: str) -> pd.DataFrame:
    """Candidates that did not end ``ok``, counted by status and stage, with an example reason."""
    df = _frame(
        archive,
        "SELECT status, COALESCE(failed_stage, '') AS stage, COUNT(*) AS count, MIN(COALESCE(reason, '')) AS"
        " example FROM candidates WHERE run_id = ? AND status NOT IN ('ok', 'pending', 'evaluating')"
        " GROUP BY status, stage ORDER BY count DESC, status",
        [run_id],
    )
    if df.empty:
        return pd.DataFrame(columns=["status", "stage", "count", "example"])
    return df


def llm_usage(archive: Archive, run_id: str) -> pd.DataFrame:
    """The run's LLM calls in order: time, model, tokens, cost, their running totals, error."""
    df = _frame(
        archive,
        "SELECT id, created_at, model, candidate_id, prompt_tokens, completion_tokens, cost_usd, latency_s, error"
        " FROM llm_calls WHERE run_id = ? ORDER BY id",
        [run_id],
    )
    columns = ["id", "created_at", "model", "candidate_id", "prompt_tokens", "completion_tokens", "tokens",
               "cost_usd", "cumulative_cost_usd", "cumulative_tokens", "latency_s", "error"]
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


def candidate(archive: Archive, candidate_id: str) -> dict[str, Any] | None:
    """The decoded candidate row plus ``task`` (of its run), or ``None`` if unknown."""
    row = archive.get_candidate(candidate_id)
    if row is None:
        return None
    run = archive.get_run(row["run_id"])
    row["task"] = run["task"] if run else ""
    return row


def lineage(archive: Archive, candidate_id: str) -> pd.DataFrame:
    """The candidate and its ancestors (depth 0 = itself), with status, fitness and proposer."""
    rows = archive.lineage(candidate_id)
    columns = ["depth", "id", "name", "status", "fitness", "proposer", "generation", "parents"]
    return pd.DataFrame(
        [{**{c: r.get(c) for c in columns}, "parents": ", ".join(r.get("parents") or [])} for r in rows],
        columns=columns,
    )


def parent_diffs(archive: Archive, row: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """``(parent, unified diff parent -> candidate)`` for each parent the archive has."""
    out: list[tuple[dict[str, Any], str]] = []
    for parent_id in row.get("parents") or []:
        parent = archive.get_candidate(parent_id)
        if parent is None:
            continue
        diff = difflib.unified_diff(
            (parent.get("code") or "").splitlines(keepends=True),
            (row.get("code") or "").splitlines(keepends=True),
            fromfile=f"{parent['name']} ({parent['id']})",
            tofile=f"{row['name']} ({row['id']})",
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
        rows.append({"who": who, "config": str(config), "fitness": fit,
                     "ci_low": float(low) if low is not None else fit,
                     "ci_high": float(high) if high is not None else fit, "n": value.get("n")})
    return rows


def per_config_vs_baselines(archive: Archive, row: dict[str, Any]) -> pd.DataFrame:
    """Discover-suite fitness per configuration of the candidate and of its run's ``ok`` baselines.

    Columns: who (``this: name`` or ``baseline: name``), config, fitness, ci_low, ci_high, n.
    """
    data = _per_config_rows(f"this: {row['name']}", row.get("per_config"))
    baselines = archive.db.execute(
        "SELECT id, name, per_config_json FROM candidates WHERE run_id = ? AND is_baseline = 1 AND status = 'ok'"
        " ORDER BY fitness DESC",
        [row["run_id"]],
    ).fetchall()
    for bid, name, per_config_json in baselines:
        if bid == row["id"]:
            continue
        try:
            per_config = json.loads(per_config_json) if per_config_json else None
        except ValueError:
            per_config = None
        data.extend(_per_config_rows(f"baseline: {name}", per_config))
    return pd.DataFrame(data, columns=["who", "config", "fitness", "ci_low", "ci_high", "n"])


def evaluations(archive: Archive, candidate_id: str) -> pd.DataFrame:
    """The candidate's (suite, config, seed) evaluations: stage, fitness, metrics, seconds."""
    rows = archive.evaluations(candidate_id)
    out = []
    for r in rows:
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        out.append({"suite": r["suite"], "config": r["config"], "seed": r["seed"], "stage": r["stage"],
                    "fitness": r.get("fitness"), **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
                    "seconds": r.get("seconds")})
    return pd.DataFrame(out)


def training_curves(archive: Archive, candidate_id: str) -> pd.DataFrame:
    """Long-form training curves of the candidate's evaluations: suite, config, seed, series, step, value.

    Each recorded curve is a mapping ``series -> list of numbers`` (loss, grad_norm, ...);
    anything else is skipped. Non-finite values become missing.
    """
    out: list[tuple[str, str, int, str, int, float | None]] = []
    for r in archive.evaluations(candidate_id):
        curve = r.get("curve")
        if not isinstance(curve, dict):
            continue
        for series, values in curve.items():
            if not isinstance(values, list):
                continue
            for step, value in enumerate(values):
                number = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
                out.append((r["suite"], r["config"], int(r["seed"]), str(series), step, number))
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
