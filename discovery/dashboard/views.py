"""The dashboard's pages, rendered with Streamlit from the frames in ``data``.

Every page takes the archive path (not an open archive): the run page re-opens it on each
live refresh. Links between pages are plain ``?candidate=ID`` / ``?run=ID`` query strings
opened in the same tab, so every page is linkable. Text that comes from candidates (names,
reasons, code) is HTML-escaped before it goes into a link or a table.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import altair as alt
import pandas as pd
import streamlit as st

from discovery import describe
from discovery.archive import Archive
from discovery.records import Candidate
from sandbox.base import Status

from . import data, graph_view

REFRESH_SECONDS = 5.0
"""How often the run page re-reads the archive while its run is going."""

MAX_TABLE_ROWS = 200
"""Rows the linked leaderboard table shows (the data table below it has them all)."""

SORTABLE = {
    "rank": "rank (discover)",
    "fitness": "fitness",
    "fitness_pm": "CI half-width",
    "heldout_rank": "rank (held-out)",
    "heldout_fitness": "held-out fitness",
    "n_seeds": "seeds",
    "name": "name",
    "id": "candidate id",
    "status": "status",
    "baseline": "baseline",
    "task": "task",
    "run_id": "run",
    "generation": "generation",
    "island": "island",
    "proposer": "proposer",
    "evaluated_at": "evaluated at",
}


def _over_time(usage: Any, column: str, title: str, tooltip: list[str]) -> alt.Chart:
    """A line of ``usage[column]`` over the calls' times, with the call's id and model in the tooltip."""
    return (
        alt.Chart(usage)
        .mark_line(point=True)
        .encode(
            x=alt.X("created_at:T", title="time"),
            y=alt.Y(f"{column}:Q", title=title),
            tooltip=["id", "model", *tooltip],
        )
    )


def href(**params: str) -> str:
    """A same-page link target: ``?candidate=c-1``; no parameters is the leaderboard."""
    return "?" + urlencode(params) if params else "?"


def link(label: str, **params: str) -> str:
    """An HTML link to another page of the dashboard, opened in the same tab."""
    return f'<a href="{html.escape(href(**params))}" target="_self">{html.escape(str(label))}</a>'


STYLE = """<style>
table.dash td, table.dash th { padding: 0.25rem 0.5rem; font-size: 0.9rem; vertical-align: top; }
table.dash td.nowrap { white-space: nowrap; }
table.dash td.wide { min-width: 11rem; }
</style>"""


def _html(markup: str) -> None:
    """Raw HTML as one block: Markdown never touches it (names may hold ``*``, ``_`` or ``~``)."""
    st.markdown(f"<div>{' '.join(markup.split(chr(10)))}</div>", unsafe_allow_html=True)


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return html.escape(str(value))


def _table(
    header: list[str], rows: list[list[str]], test_id: str, wrap: tuple[int, ...] = (), narrow: tuple[int, ...] = ()
) -> str:
    """An HTML table of escaped markup cells: columns in ``wrap`` wrap their text (at least 11rem wide), those
    in ``narrow`` wrap freely, the others never wrap."""

    def css(i: int) -> str:
        return "wide" if i in wrap else "" if i in narrow else "nowrap"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="{css(i)}">{c}</td>' for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return (
        f'{STYLE}<div style="overflow-x: auto"><table class="dash" id="{test_id}"><thead><tr>{head}</tr>'
        f"</thead><tbody>{body}</tbody></table></div>"
    )


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------ empty


def welcome(db: str | Path, opened: data.Opened) -> None:
    """The page for a missing, empty or unreadable archive: what happened and how to start a run."""
    st.title("discovery dashboard")
    if opened.state == "error":
        st.error(f"Cannot read the archive: {opened.message}")
    else:
        st.info(f"Nothing to show yet: {opened.message}.")
    st.markdown("Start a discovery run that writes to this archive, then reload this page:")
    st.code(f"discovery run --db {db}", language="bash")
    st.markdown("A short offline run (the mutation proposer, no LLM, no API key):")
    st.code(f"discovery run --db {db} --budget 12", language="bash")
    st.caption("The dashboard only reads the archive; it refreshes a run's page while the run is going.")


@contextmanager
def archive_or_welcome(db: str | Path) -> Iterator[Archive | None]:
    """The archive at ``db``, opened read-only and closed on exit; ``None`` after showing the
    welcome page when there is no usable archive."""
    opened = data.open_archive(db)
    if opened.archive is None:
        welcome(db, opened)
        yield None
        return
    try:
        yield opened.archive
    finally:
        opened.close()


def sidebar(db: str | Path, runs: pd.DataFrame) -> None:
    """Navigation: the leaderboard and the newest runs."""
    with st.sidebar:
        st.header("discovery")
        _html(link("Leaderboard"))
        st.subheader("Runs")
        rows = [
            f"{link(r.id, run=r.id)} · {html.escape(str(r.task))} · {html.escape(str(r.status))}"
            for r in runs.head(20).itertuples()
        ]
        _html("<br>".join(rows) or "no runs")
        st.caption(f"archive: {db} (read-only)")


# ------------------------------------------------------------------ leaderboard


def leaderboard_page(db: str | Path) -> None:
    """All candidates across runs and tasks with fitness, CI, held-out fitness and ranks; baselines included."""
    with archive_or_welcome(db) as archive:
        if archive is None:
            return
        st.title("Leaderboard")
        task_names = data.tasks(archive)
        c1, c2, c3, c4 = st.columns([1, 2, 2, 2])
        task = c1.selectbox("Task", ["all", *task_names], key="lb_task")
        task = None if task == "all" else task
        run_ids = data.runs(archive, task)["id"].tolist()
        run_id = c2.selectbox("Run", ["all", *run_ids], key="lb_run")
        run_id = None if run_id == "all" else run_id
        full = data.leaderboard(archive, task=task, run_id=run_id)
        present = sorted(full["status"].unique().tolist())
        statuses = c3.multiselect("Status", present, default=present, key="lb_status")
        sort_by = c4.selectbox("Sort by", list(SORTABLE), format_func=SORTABLE.__getitem__, key="lb_sort") or "rank"
        descending = c4.toggle(
            "Descending", value=sort_by in {"fitness", "heldout_fitness", "evaluated_at"}, key=f"lb_desc_{sort_by}"
        )
        df = data.leaderboard(
            archive, task=task, run_id=run_id, statuses=statuses, sort_by=sort_by, descending=descending
        )
        ok = df[df["status"] == Status.OK.value]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("Candidates", len(df))
        m2.metric("Evaluated ok", len(ok))
        m3.metric("Runs", df["run_id"].nunique())
        best = ok.dropna(subset=["fitness"]).sort_values("fitness", ascending=False).head(1)
        m4.metric("Best fitness", "-" if best.empty else f"{best['fitness'].iloc[0]:.4f}")
        st.caption(
            "Fitness is the discover-suite mean over configurations (higher is better) with its 95% CI "
            "over seeds; held-out is scored on the suite no proposer sees. Ranks count `ok` candidates, "
            "per task. Baselines are marked. Click a name to open the candidate."
        )
        if df.empty:
            st.info("No candidate matches these filters.")
            return
        _html(_leaderboard_table(df.head(MAX_TABLE_ROWS)))
        if len(df) > MAX_TABLE_ROWS:
            st.caption(f"{len(df) - MAX_TABLE_ROWS} more rows in the data table below.")
        with st.expander("Data table (sort by clicking a header, download as CSV)"):
            table = df.copy()
            table.insert(0, "open", [href(candidate=c) for c in table["id"]])
            st.dataframe(
                table,
                hide_index=True,
                column_config={
                    "open": st.column_config.LinkColumn("open", display_text=r"\?candidate=(.*)"),
                    "fitness": st.column_config.NumberColumn(format="%.4f"),
                    "fitness_pm": st.column_config.NumberColumn("±", format="%.4f"),
                    "heldout_fitness": st.column_config.NumberColumn(format="%.4f"),
                    "heldout_pm": st.column_config.NumberColumn("held-out ±", format="%.4f"),
                },
            )


def _leaderboard_table(df: pd.DataFrame) -> str:
    """The linked leaderboard; the task column only when the rows span several tasks."""
    with_task = df["task"].nunique() > 1
    rows = []
    for r in df.itertuples():
        name = link(r.name, candidate=r.id) + (" · <b>baseline</b>" if r.baseline else "")
        status = _cell(r.outcome) + (f"<br><small>{html.escape(_short(r.reason, 120))}</small>" if r.reason else "")
        rows.append(
            [
                _cell(r.rank),
                name,
                html.escape(data.fmt_ci(r.fitness, r.fitness_ci_low, r.fitness_ci_high)),
                _cell(r.n_seeds),
                _cell(r.heldout_rank),
                html.escape(data.fmt_ci(r.heldout_fitness, r.heldout_ci_low, r.heldout_ci_high)),
                status,
                *([_cell(r.task)] if with_task else []),
                link(r.run_id, run=r.run_id),
            ]
        )
    header = [
        "rank",
        "name",
        "fitness (95% CI)",
        "seeds",
        "held-out rank",
        "held-out (95% CI)",
        "status",
        *(["task"] if with_task else []),
        "run",
    ]
    return _table(header, rows, "leaderboard", wrap=(1, 6), narrow=(len(header) - 1,))


# -------------------------------------------------------------------------- run


def run_page(db: str | Path, run_id: str) -> None:
    """One run: progress chart, candidates, failures by reason, LLM cost and tokens, config.

    While the run's status is ``running`` the page body is a fragment re-read every
    ``REFRESH_SECONDS``; when the run ends the whole page reruns once in its final form.
    """
    with archive_or_welcome(db) as archive:
        if archive is None:
            return
        run = data.run_info(archive, run_id)
    if run is None:
        st.warning(f"No run {run_id} in {db}.")
        _html(link("Back to the leaderboard"))
        return
    if run["status"] == "running":
        st.fragment(_run_body, run_every=REFRESH_SECONDS)(db, run_id, True)
    else:
        _run_body(db, run_id, False)
    graph_view.agent_graph()  # outside the live fragment: drawn once, not on every refresh


def _run_body(db: str | Path, run_id: str, live: bool) -> None:
    with archive_or_welcome(db) as archive:
        if archive is None:
            return
        run = data.run_info(archive, run_id)
        if run is None:
            st.warning(f"No run {run_id} in {db}.")
            return
        if live and run["status"] != "running":
            st.rerun()  # the run ended: draw the final page once, without the timer
        st.title(f"Run {run_id}")
        ended = f", ended {run['ended_at']}" if run.get("ended_at") else ""
        st.markdown(
            f"task **{run['task']}** · status **{run['status']}** · started {run['started_at']}{ended}"
            + (f" · {run['message']}" if run.get("message") else "")
        )
        if live:
            st.caption(f"Live: this page re-reads the archive every {REFRESH_SECONDS:g} s while the run is going.")
        tl = data.timeline(archive, run_id)
        usage = data.llm_usage(archive, run_id)
        statuses = run["statuses"]
        n_not_ok = sum(n for s, n in statuses.items() if Status(s).finished and s != Status.OK)
        m = st.columns(6)
        m[0].metric("Candidates", run["n_candidates"])
        m[1].metric("Evaluated ok", statuses.get(Status.OK, 0))
        m[2].metric("Not ok", n_not_ok, help="failed, duplicate or culled")
        m[3].metric("In progress", sum(n for s, n in statuses.items() if not Status(s).finished))
        m[4].metric("Best fitness", "-" if run.get("best_fitness") is None else f"{run['best_fitness']:.4f}")
        m[5].metric(
            "LLM cost",
            f"${float(run.get('cost_usd') or 0):.4f}",
            help=f"{int(usage['tokens'].sum()) if not usage.empty else 0} tokens in {len(usage)} calls",
        )

        st.subheader("Progress")
        if tl.empty:
            st.info("No candidate has finished yet.")
        else:
            st.altair_chart(progress_chart(tl), width="stretch")
            st.caption(
                "Each point is a candidate in the order its evaluation finished; colour and shape mark the "
                "outcome (failures without a fitness sit on the bottom line); the line is the best `ok` "
                "fitness so far."
            )
            rows = [
                [
                    str(r.evaluation),
                    link(r.name, candidate=r.id) + (" · <b>baseline</b>" if r.baseline else ""),
                    _cell(None if pd.isna(r.fitness) else f"{r.fitness:.4f}"),
                    _cell(r.outcome),
                    html.escape(_short(r.reason)),
                    _cell(r.proposer),
                ]
                for r in tl.itertuples()
            ]
            with st.expander(f"All {len(tl)} finished candidates", expanded=len(tl) <= 30):
                header = ["#", "name", "fitness", "outcome", "reason", "proposer"]
                _html(_table(header, rows, "run-candidates", wrap=(1, 4)))

        st.subheader("Failures by reason")
        fails = data.failures(archive, run_id)
        if fails.empty:
            st.success("No candidate failed.")
        else:
            st.altair_chart(
                alt.Chart(fails)
                .mark_bar()
                .encode(
                    x=alt.X("count:Q", title="candidates"),
                    y=alt.Y("label:N", sort="-x", title=None),
                    tooltip=["status", "stage", "count", "example"],
                ),
                width="stretch",
            )
            st.dataframe(fails.drop(columns=["label"]), hide_index=True)

        st.subheader("LLM cost and tokens")
        if usage.empty:
            st.info("No LLM calls in this run (the offline mutation proposer costs nothing).")
        else:
            c1, c2 = st.columns(2)
            c1.altair_chart(
                _over_time(usage, "cumulative_cost_usd", "cost so far (USD)", ["cost_usd", "cumulative_cost_usd"]),
                width="stretch",
            )
            c2.altair_chart(
                _over_time(usage, "cumulative_tokens", "tokens so far", ["prompt_tokens", "completion_tokens"]),
                width="stretch",
            )
            by_model = usage.groupby("model", as_index=False).agg(
                calls=("id", "count"),
                prompt_tokens=("prompt_tokens", "sum"),
                completion_tokens=("completion_tokens", "sum"),
                cost_usd=("cost_usd", "sum"),
                errors=("error", lambda e: int((e != "").sum())),
            )
            st.dataframe(by_model, hide_index=True)

        st.subheader("Configuration")
        st.json(run.get("config") or {}, expanded=False)
        for note in run.get("isolation") or []:
            st.caption(f"sandbox: {note}")


def progress_chart(tl: pd.DataFrame) -> alt.Chart:
    """Best-so-far line over every candidate as a point, coloured and shaped by outcome."""
    base = alt.Chart(tl).encode(
        x=alt.X(
            "evaluation:Q", title="evaluation (candidates in finishing order)", axis=alt.Axis(format="d", tickMinStep=1)
        )
    )
    points = base.mark_point(filled=True, size=70).encode(
        y=alt.Y("plotted:Q", title="fitness"),
        color=alt.Color("outcome:N", title="outcome"),
        shape=alt.Shape("outcome:N"),
        tooltip=["name", "id", "outcome", "fitness", "reason", "proposer"],
    )
    best = base.mark_line(interpolate="step-after", color="#333333").encode(y="best_so_far:Q")
    return alt.layer(points, best).properties(height=320)


# -------------------------------------------------------------------- candidate


def candidate_page(db: str | Path, candidate_id: str) -> None:
    """One candidate: scores, thought, code, diff against its parents, lineage, charts, feedback shown."""
    with archive_or_welcome(db) as archive:
        if archive is None:
            return
        c = data.candidate(archive, candidate_id)
        if c is None:
            st.warning(f"No candidate {candidate_id} in {db}.")
            _html(link("Back to the leaderboard"))
            return
        _candidate(archive, c)


def _candidate(archive: Any, c: Candidate) -> None:
    st.title(c.name)
    kind = "baseline" if c.is_baseline else "candidate"
    _html(
        f"{kind} <code>{html.escape(c.id)}</code> · run {link(c.run_id, run=c.run_id)} · task "
        f"{html.escape(c.task)} · generation {c.generation} · island {c.island} · "
        f"proposer {html.escape(c.proposer)} · {link('leaderboard')}"
    )
    m = st.columns([3, 1, 3, 2])
    m[0].metric("Fitness (discover, 95% CI)", data.fmt_ci(c.fitness, c.fitness_ci_low, c.fitness_ci_high))
    m[1].metric("Seeds", c.n_seeds or 0)
    m[2].metric("Held-out fitness (95% CI)", data.fmt_ci(c.heldout_fitness, c.heldout_ci_low, c.heldout_ci_high))
    m[3].metric("Status", describe.status_label(c))
    _outcome(c)
    if c.thought:
        st.subheader("Thought")
        st.text(c.thought)
    st.subheader("Code")
    st.code(c.code, language="python", line_numbers=True)

    diffs = data.parent_diffs(archive, c)
    if diffs:
        st.subheader("Diff against " + ("its parent" if len(diffs) == 1 else "its parents"))
        for parent, diff in diffs:
            score = data.fmt_ci(parent.fitness, parent.fitness_ci_low, parent.fitness_ci_high)
            _html(f"parent {link(parent.name, candidate=parent.id)} (fitness {html.escape(score)})")
            st.code(diff or "(same code)", language="diff")

    st.subheader("Lineage")
    lin = data.lineage(archive, c.id)
    rows = [
        [
            str(r.depth),
            link(r.name, candidate=r.id),
            f"<code>{_cell(r.id)}</code>",
            _cell(r.outcome),
            _cell(None if pd.isna(r.fitness) else f"{r.fitness:.4f}"),
            _cell(r.proposer),
            _cell(r.generation),
        ]
        for r in lin.itertuples()
    ]
    _html(_table(["depth", "name", "id", "status", "fitness", "proposer", "generation"], rows, "lineage", wrap=(1,)))

    st.subheader("Per configuration, against the baselines")
    per = data.per_config_vs_baselines(archive, c)
    if not per["who"].str.startswith("this: ").any():
        st.info("No per-configuration scores (the candidate did not finish a full evaluation).")
    else:
        st.altair_chart(per_config_chart(per), width="stretch")
        st.caption(
            "Discover-suite fitness per configuration with its 95% CI over seeds, next to the baselines "
            "of the same run."
        )
    evals = data.evaluations(archive, c.id)
    if not evals.empty:
        with st.expander(f"All {len(evals)} evaluations (configuration x seed)"):
            st.dataframe(evals, hide_index=True)

    st.subheader("Training curves")
    curves = data.training_curves(archive, c.id)
    if curves.empty:
        st.info("No training curves recorded.")
    else:
        c1, c2 = st.columns(2)
        suites = sorted(curves["suite"].unique().tolist())
        suite = c1.selectbox("Suite", suites, key="curve_suite")
        series_names = sorted(curves.loc[curves["suite"] == suite, "series"].unique().tolist())
        series = c2.selectbox(
            "Series",
            series_names,
            index=series_names.index("loss") if "loss" in series_names else 0,
            key="curve_series",
        )
        shown = curves[(curves["suite"] == suite) & (curves["series"] == series)]
        st.altair_chart(
            alt.Chart(shown)
            .mark_line(opacity=0.8)
            .encode(
                x=alt.X("step:Q", title="recorded step"),
                y=alt.Y("value:Q", title=series),
                color=alt.Color("config:N", title="configuration"),
                detail="seed:N",
                tooltip=["config", "seed", "step", "value"],
            )
            .properties(height=300),
            width="stretch",
        )
        st.caption("One line per (configuration, seed).")

    st.subheader("Feedback the proposer was shown")
    if c.feedback_shown:
        st.code(c.feedback_shown, language=None, wrap_lines=True)
    else:
        st.info("None: baselines and seeds are not proposed.")
    for call in data.llm_calls_for(archive, c.id):
        with st.expander(f"LLM call {call['id']} ({call['model']}, {call['created_at']})"):
            st.code(str(call.get("prompt") or ""), language=None, wrap_lines=True)
            st.markdown("**Reply**")
            st.code(str(call.get("reply") or call.get("error") or ""), language=None, wrap_lines=True)


def _outcome(c: Candidate) -> None:
    """Why a candidate is not ``ok``: status at stage, the error (class, line, message) or the reason,
    the stored reason when it adds context, and a link to the original of a duplicate."""
    if c.status is Status.OK or not c.status.finished:
        return
    text = describe.outcome_line(c)
    extra = describe.extra_reason(c)
    box = st.error if c.failed else st.warning  # culled and duplicate are the search's decisions, not errors
    box(text + (f"\n\n{extra}" if extra else ""))
    if c.duplicate_of:
        _html(f"duplicate of {link(c.duplicate_of, candidate=c.duplicate_of)} (same normalized code; not evaluated)")


def per_config_chart(per: pd.DataFrame) -> alt.LayerChart:
    """Grouped bars (candidate vs baselines) per configuration with 95% CI error bars."""
    base = alt.Chart(per).encode(x=alt.X("config:N", title="configuration"), xOffset="who:N")
    legend = alt.Legend(orient="bottom", labelLimit=400)
    bars = base.mark_bar().encode(
        y=alt.Y("fitness:Q", title="fitness"),
        color=alt.Color("who:N", title=None, legend=legend),
        tooltip=["who", "config", "fitness", "ci_low", "ci_high", "n"],
    )
    errors = base.mark_rule(color="#222222").encode(y="ci_low:Q", y2="ci_high:Q")
    return alt.layer(bars, errors).properties(height=320)
