"""The Streamlit dashboard (``app.py``), every page through Streamlit's AppTest.

The archive comes from a real short offline ``discovery run`` (``short_run_db``); the pages
must read it without changing a byte, show what the archive holds (checked against the
``Archive`` API, not against the dashboard's own queries), and turn a missing, empty or
foreign file into a page that says how to start a run.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import sqlite3
from pathlib import Path

import pytest
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from discovery import describe
from discovery.archive import Archive
from discovery.cli import dashboard_command
from discovery.dashboard import data, entry_script
from discovery.dashboard.app import db_from_argv
from sandbox.base import Status

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "app.py"
TIMEOUT = 120


def page(db: Path | str, monkeypatch: pytest.MonkeyPatch, **params: str) -> AppTest:
    """Run app.py once over ``db`` with the given query parameters; fail on any exception."""
    monkeypatch.setenv("DISCOVERY_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update(params)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def html_of(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def charts(at: AppTest) -> list[tuple[dict, list]]:
    """(Vega-Lite spec, [data frames]) of every chart on the page."""
    out = []
    for chart in at.get("vega_lite_chart"):
        frames = [dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
        out.append((json.loads(chart.proto.spec), frames))
    return out


def leaderboard_names(at: AppTest) -> list[str]:
    """Candidate names in the order the leaderboard table lists them."""
    table = re.search(r'<table class="dash" id="leaderboard">.*?</table>', html_of(at), re.S)
    assert table, "no leaderboard table"
    return [html.unescape(n) for n in re.findall(r'\?candidate=[^"]+" target="_self">([^<]*)</a>', table[0])]


def snapshot(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_size


@pytest.fixture(scope="module")
def run_db(short_run_db) -> Path:
    return short_run_db()


@pytest.fixture(scope="module")
def facts(run_db: Path) -> dict:
    """What the archive holds, read through the Archive API."""
    with Archive.open_readonly(run_db) as archive:
        (run,) = archive.list_runs()
        rows = archive.candidates(run["id"], order_by_fitness=False)
        board = archive.leaderboard(run_id=run["id"])
        child = next(c for c in rows if c.parents and c.status is Status.OK)
        return {
            "run": run,
            "rows": rows,
            "board": board,
            "child": child,
            "parent": archive.get_candidate(child.parents[0]),
            "baselines": [c for c in rows if c.is_baseline and c.status is Status.OK],
        }


def test_leaderboard_page_shows_ranked_candidates_with_ci_heldout_and_baselines(run_db, facts, monkeypatch):
    at = page(run_db, monkeypatch)
    assert [t.value for t in at.title] == ["Leaderboard"]
    board = facts["board"]
    names = leaderboard_names(at)
    assert names[: len(board)] == [c.name for c in board]  # ok candidates best first, by the archive's order
    assert len(names) == len(facts["rows"])  # failures listed too (after the ranked ones)
    text = html_of(at)
    best = board[0]
    assert f'href="?candidate={best.id}"' in text
    assert data.fmt_ci(best.fitness, best.fitness_ci_low, best.fitness_ci_high) in text
    heldout = [c for c in board if c.heldout_fitness is not None]
    assert heldout, "the short run scores its leaders on the held-out suite"
    for c in heldout:
        assert data.fmt_ci(c.heldout_fitness, c.heldout_ci_low, c.heldout_ci_high) in text
    for b in facts["baselines"]:
        assert re.search(rf">{re.escape(b.name)}</a> · <b>baseline</b>", text)
    assert f'href="?run={facts["run"]["id"]}"' in text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Candidates"] == str(len(facts["rows"]))
    assert metrics["Evaluated ok"] == str(sum(c.status is Status.OK for c in facts["rows"]))
    assert metrics["Best fitness"] == f"{best.fitness:.4f}"


def test_leaderboard_filters_and_sorts_by_any_column(run_db, facts, monkeypatch):
    at = page(run_db, monkeypatch)
    at.selectbox(key="lb_sort").set_value("name").run()
    assert leaderboard_names(at) == sorted(c.name for c in facts["rows"])
    at.toggle(key="lb_desc_name").set_value(True).run()
    assert leaderboard_names(at) == sorted((c.name for c in facts["rows"]), reverse=True)
    at.multiselect(key="lb_status").set_value(["ok"]).run()
    assert sorted(leaderboard_names(at)) == sorted(c.name for c in facts["board"])
    at.selectbox(key="lb_task").set_value("preference").run()
    at.selectbox(key="lb_run").set_value(facts["run"]["id"]).run()
    assert not at.exception
    assert sorted(leaderboard_names(at)) == sorted(c.name for c in facts["board"])
    # every sortable column sorts without error
    with Archive.open_readonly(run_db) as archive:
        for column in data.LEADERBOARD_COLUMNS:
            for descending in (False, True):
                df = data.leaderboard(archive, sort_by=column, descending=descending)
                assert len(df) == len(facts["rows"])
        with pytest.raises(ValueError, match="cannot sort by"):
            data.leaderboard(archive, sort_by="no_such_column")
        df = data.leaderboard(archive)
    ok = df[df["status"] == "ok"]
    assert ok["rank"].tolist() == list(range(1, len(ok) + 1))
    assert df.loc[df["status"] != "ok", "rank"].isna().all()


def test_run_page_shows_progress_failures_cost_and_config(run_db, facts, monkeypatch):
    run = facts["run"]
    at = page(run_db, monkeypatch, run=run["id"])
    assert at.title[0].value == f"Run {run['id']}"
    metrics = {m.label: m.value for m in at.metric}
    rows = facts["rows"]
    assert metrics["Candidates"] == str(len(rows))
    assert metrics["Evaluated ok"] == str(sum(c.status is Status.OK for c in rows))
    failed = [c for c in rows if c.status.finished and c.status is not Status.OK]
    assert metrics["Not ok"] == str(len(failed))
    assert metrics["Best fitness"] == f"{facts['board'][0].fitness:.4f}"
    assert not any("Live:" in c.value for c in at.caption)  # the run has finished: no timer

    specs = charts(at)
    progress = next(
        frames[0]
        for spec, frames in specs
        if "layer" in spec and any(layer.get("mark", {}).get("type") == "line" for layer in spec["layer"])
    )
    assert len(progress) == len(rows)  # every candidate is a point
    assert progress["best_so_far"].dropna().is_monotonic_increasing
    assert progress["best_so_far"].max() == pytest.approx(facts["board"][0].fitness)
    assert set(progress["id"]) == {c.id for c in rows}
    if failed:  # failures are marked by their status and stage, with the reason in the tooltip
        marked = progress[progress["status"] != "ok"]
        assert set(marked["outcome"]) == {
            f"{c.status.value} at {c.failed_stage}"
            if c.failed_stage and c.failed_stage != c.status.value
            else c.status.value
            for c in failed
        }
        by_reason = next(frames[0] for spec, frames in specs if spec.get("mark", {}).get("type") == "bar")
        assert by_reason["count"].sum() == len(failed)
    else:
        assert any("No candidate failed" in s.value for s in at.success)
    assert any("No LLM calls" in i.value for i in at.info)  # the offline proposer
    config = json.loads(at.json[0].value)
    assert config["budget"] == run["config"]["budget"] and config["seed"] == run["config"]["seed"]


def test_run_page_shows_the_agent_graph_the_code_draws(run_db, facts, monkeypatch):
    from discovery.agent.graph_drawing import mermaid
    from discovery.dashboard.graph_view import for_streamlit

    at = page(run_db, monkeypatch, run=facts["run"]["id"])
    assert "The agent graph" in [h.value for h in at.subheader]
    drawn = mermaid()
    body = for_streamlit(drawn).split("graph TD;", 1)[1]  # Streamlit's alt-text comment goes before "graph TD;"
    charts = [m.value for m in at.markdown if m.value.startswith("````mermaid\n")]
    assert len(charts) == 1 and body in charts[0] and "store -.  retry  .-> propose;" in charts[0]
    assert any(c.value.strip() == drawn.strip() for c in at.code)  # and the source, in an expander


def test_run_page_shows_llm_cost_and_tokens_over_time(run_db, facts, monkeypatch, tmp_path):
    copy = tmp_path / "runs.db"
    with sqlite3.connect(f"file:{run_db}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    run_id = facts["run"]["id"]
    with Archive(copy) as archive:
        for i, (pt, ct, cost) in enumerate([(1200, 300, 0.002), (1500, 350, 0.0025), (900, 0, None)]):
            archive.record_llm_call(
                run_id,
                facts["child"].id if i == 0 else None,
                "openai/test-model",
                f"prompt {i}",
                None if cost is None else f"reply {i}",
                pt,
                ct,
                cost,
                1.5,
                "timeout" if cost is None else None,
            )
    at = page(copy, monkeypatch, run=run_id)
    assert {m.label: m.value for m in at.metric}["LLM cost"] == "$0.0045"
    usage = [frames[0] for spec, frames in charts(at) if "cumulative_cost_usd" in json.dumps(spec)]
    assert usage and usage[0]["cumulative_cost_usd"].tolist() == pytest.approx([0.002, 0.0045, 0.0045])
    tokens = [frames[0] for spec, frames in charts(at) if '"cumulative_tokens"' in json.dumps(spec)]
    assert tokens[0]["cumulative_tokens"].tolist() == [1500, 3350, 4250]
    by_model = at.dataframe[-1].value
    assert by_model.loc[0, "calls"] == 3 and by_model.loc[0, "errors"] == 1
    # the candidate the first call produced shows that exact prompt
    at = page(copy, monkeypatch, candidate=facts["child"].id)
    assert any(c.value == "prompt 0" for c in at.code)


def test_candidate_page_shows_code_diff_lineage_scores_curves_and_feedback(run_db, facts, monkeypatch):
    child, parent = facts["child"], facts["parent"]
    at = page(run_db, monkeypatch, candidate=child.id)
    assert at.title[0].value == child.name
    codes = {c.language: c for c in at.code}
    assert codes["python"].value == child.code.rstrip("\n")  # st.code drops the final newline
    diffs = [c.value for c in at.code if c.language == "diff"]
    assert diffs and diffs[0].startswith(f"--- {parent.name} ({parent.id})\n+++ {child.name} ({child.id})")
    changed = [ln for ln in diffs[0].splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert changed
    text = html_of(at)
    assert f'href="?candidate={parent.id}"' in text  # diff header and lineage link to the parent
    assert re.search(r'<table class="dash" id="lineage">.*' + re.escape(parent.id), text, re.S)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Fitness (discover, 95% CI)"] == data.fmt_ci(
        child.fitness, child.fitness_ci_low, child.fitness_ci_high
    )
    assert metrics["Status"] == "ok"
    if child.thought:
        assert at.text[0].value == child.thought
    assert any(c.value == child.feedback_shown.rstrip("\n") for c in at.code if c.language == "plaintext")

    specs = charts(at)
    per = next(frames[0] for spec, frames in specs if '"xOffset"' in json.dumps(spec))
    mine = per[per["who"] == f"this: {child.name}"].set_index("config")
    assert set(mine.index) == set(child.per_config)
    for config, value in child.per_config.items():
        assert mine.loc[config, "fitness"] == pytest.approx(value["fitness"])
    for b in facts["baselines"]:
        assert (per["who"] == f"baseline: {b.name}").sum() == len(b.per_config)
    curves = next(frames[0] for spec, frames in specs if '"step"' in json.dumps(spec))
    with Archive.open_readonly(run_db) as archive:
        evals = archive.evaluations(child.id, suite="discover")
    assert set(curves["config"]) == {e.config for e in evals}
    assert set(curves["series"]) == {"loss"}
    assert len(curves) == sum(len(e.curve["loss"]) for e in evals)
    at.selectbox(key="curve_series").set_value("grad_norm").run()
    curves = next(frames[0] for spec, frames in charts(at) if '"step"' in json.dumps(spec))
    assert set(curves["series"]) == {"grad_norm"}


def test_failed_candidate_and_unknown_ids(run_db, facts, monkeypatch):
    failed = [c for c in facts["rows"] if c.failed]
    if failed:
        at = page(run_db, monkeypatch, candidate=failed[0].id)
        assert at.error and describe.outcome_line(failed[0]) in at.error[0].value
    at = page(run_db, monkeypatch, candidate="c-nope")
    assert "No candidate c-nope" in at.warning[0].value
    at = page(run_db, monkeypatch, run="r-nope")
    assert "No run r-nope" in at.warning[0].value


@pytest.mark.parametrize("kind", ["missing", "zero-bytes", "no-tables", "no-runs", "not-sqlite", "directory"])
def test_missing_or_empty_archive_gives_a_page_that_says_how_to_start(kind, tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    if kind == "zero-bytes":
        db.touch()
    elif kind == "no-tables":
        with sqlite3.connect(db) as conn:  # a valid SQLite file with no tables
            conn.execute("CREATE TABLE t (x)")
            conn.execute("DROP TABLE t")
        conn.close()
    elif kind == "no-runs":
        Archive(db).close()
    elif kind == "not-sqlite":
        db.write_text("hello, not a database\n" * 100)
    elif kind == "directory":
        db.mkdir()
    before = snapshot(db) if db.is_file() else None
    at = page(db, monkeypatch, candidate="c-1")
    assert at.title[0].value == "discovery dashboard"
    assert any(c.value == f"discovery run --db {db}" for c in at.code)
    if kind in ("not-sqlite", "directory"):
        assert len(at.error) == 1 and "\n" not in at.error[0].value
    else:
        assert at.info and not at.error
    if before is not None:
        assert snapshot(db) == before
    else:
        assert not db.exists() or db.is_dir()


def test_every_page_leaves_the_archive_unchanged(run_db, facts, monkeypatch):
    wal = run_db.with_name(run_db.name + "-wal")
    before, wal_before = snapshot(run_db), (wal.stat().st_size if wal.exists() else 0)
    at = page(run_db, monkeypatch)
    at.selectbox(key="lb_sort").set_value("heldout_fitness").run()
    page(run_db, monkeypatch, run=facts["run"]["id"])
    for c in facts["rows"]:
        page(run_db, monkeypatch, candidate=c.id)
    assert snapshot(run_db) == before
    assert (wal.stat().st_size if wal.exists() else 0) == wal_before


def test_a_run_being_written_is_read_live(run_db, facts, monkeypatch, tmp_path):
    """A running run (WAL, a writer holding an open write transaction) is read as of its last commit."""
    copy = tmp_path / "live.db"
    with sqlite3.connect(f"file:{run_db}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    run_id = facts["run"]["id"]
    writer = Archive(copy)  # the run's own connection: WAL mode
    try:
        writer.reopen_run(run_id)
        added = writer.add_candidate(
            run_id, name="written-while-watching", code="def loss(): pass\n", code_hash="live-hash", proposer="test"
        )
        other = sqlite3.connect(copy, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a write in flight, not committed
        other.execute("UPDATE runs SET message = 'uncommitted' WHERE id = ?", [run_id])
        assert copy.with_name("live.db-wal").stat().st_size > 0  # the new rows live in the WAL only
        at = page(copy, monkeypatch, run=run_id)
        assert "status **running**" in html_of(at)
        assert "uncommitted" not in html_of(at)
        assert any("Live:" in c.value for c in at.caption)
        assert {m.label: m.value for m in at.metric}["In progress"] == "1"
        at = page(copy, monkeypatch, candidate=added.id)
        assert at.title[0].value == "written-while-watching"
        other.execute("ROLLBACK")
        other.close()
        writer.finish_run(run_id, "finished")
        at = page(copy, monkeypatch, run=run_id)
        assert "status **finished**" in html_of(at)
        assert not any("Live:" in c.value for c in at.caption)
    finally:
        writer.close()


def test_db_path_and_dashboard_command(tmp_path):
    assert db_from_argv(["--db", "x.db"], {}) == "x.db"
    assert db_from_argv(["-q", "tests/test_app.py"], {"DISCOVERY_DB": "y.db"}) == "y.db"
    assert db_from_argv([], {}) == "runs.db"
    cmd = dashboard_command(str(tmp_path / "r.db"), "127.0.0.1", 8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == entry_script() and entry_script().is_file()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[-2:] == ["--db", str(tmp_path / "r.db")]


def test_hostile_names_and_malformed_rows_are_shown_escaped_not_crashing(run_db, facts, monkeypatch, tmp_path):
    copy = tmp_path / "hostile.db"
    with sqlite3.connect(f"file:{run_db}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    run_id = facts["run"]["id"]
    name = "<script>alert(1)</script> *bold* ~~x~~ | $x$"
    with Archive(copy) as archive:
        added = archive.add_candidate(
            run_id,
            name=name,
            code="def loss(:\n",
            code_hash="hostile",
            proposer="test",
            thought="line one\n\nline <b>two</b>",
            parents=[facts["child"].id, "c-gone"],
            feedback_shown="exact\n  feedback <i>as shown</i>\n",
        )
        archive.update_candidate(
            added.id,
            status="ok",
            fitness=9.5,
            fitness_ci_low=None,
            fitness_ci_high=None,
            per_config={"clean": "not a dict", "noise20": {"fitness": None}},
            n_seeds=1,
        )
        archive.record_evaluation(
            added.id, "discover", "clean", 0, fitness=9.5, metrics={"kl": "high"}, curve=["not", "a", "mapping"]
        )
        archive.record_evaluation(
            added.id, "discover", "noise20", 0, fitness=9.5, curve={"loss": [1.0, float("nan"), "x", 0.5]}
        )
    at = page(copy, monkeypatch)
    assert leaderboard_names(at)[0] == name  # the best fitness, listed first, text intact
    assert "<script>" not in html_of(at) and "&lt;script&gt;" in html_of(at)
    at = page(copy, monkeypatch, candidate=added.id)
    assert at.title[0].value == name
    assert "<script>" not in html_of(at)
    assert at.text[0].value == "line one\n\nline <b>two</b>"
    assert any(c.value == "exact\n  feedback <i>as shown</i>" for c in at.code)
    assert {m.label: m.value for m in at.metric}["Fitness (discover, 95% CI)"] == "9.5000"
    assert any("No per-configuration scores" in i.value for i in at.info)
    curves = next(frames[0] for spec, frames in charts(at) if '"step"' in json.dumps(spec))
    assert curves["value"].tolist()[0] == 1.0 and curves["value"].isna().sum() == 2
    page(copy, monkeypatch, run=run_id)


def test_ranks_are_per_task_and_the_task_filter_splits_them(run_db, facts, monkeypatch, tmp_path):
    copy = tmp_path / "two-tasks.db"
    with sqlite3.connect(f"file:{run_db}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with Archive(copy) as archive:
        other = archive.create_run("other-task", {"budget": 2})
        for i, fitness in enumerate([0.1, 0.3]):
            cid = archive.add_candidate(
                other, name=f"other-{i}", code=f"x = {i}\n", code_hash=f"o{i}", proposer="test"
            ).id
            archive.update_candidate(
                cid,
                status="ok",
                fitness=fitness,
                fitness_ci_low=fitness - 0.05,
                fitness_ci_high=fitness + 0.05,
                n_seeds=2,
            )
        archive.finish_run(other, "finished")
    at = page(copy, monkeypatch)
    assert "<th>task</th>" in html_of(at)
    with Archive.open_readonly(copy) as archive:
        df = data.leaderboard(archive)
    ranks = df[df["task"] == "other-task"].set_index("name")["rank"]
    assert ranks["other-1"] == 1 and ranks["other-0"] == 2
    assert df.loc[df["task"] == "preference", "rank"].dropna().tolist() == list(range(1, len(facts["board"]) + 1))
    at.selectbox(key="lb_task").set_value("other-task").run()
    assert leaderboard_names(at) == ["other-1", "other-0"]
    assert "<th>task</th>" not in html_of(at)
    assert at.selectbox(key="lb_run").options == ["all", other]


# ------------------------------------------------- every outcome, on an archive built through the Archive API

HEAD = "import torch\nimport torch.nn.functional as F\n\n\n"
SIG = "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):\n"
H = "    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)\n"


def _code(extra: str = "") -> str:
    return HEAD + SIG + H + extra + "    return -F.logsigmoid(beta * h)\n"


@pytest.fixture
def outcomes_db(tmp_path) -> tuple[Path, dict[str, str]]:
    """A finished run with one candidate per kind of outcome, written as the pipeline writes them."""
    db = tmp_path / "outcomes.db"
    ids: dict[str, str] = {}
    with Archive(db) as archive:
        run = archive.create_run("preference", {"task": "preference", "budget": 8})
        ids["dpo"] = archive.add_candidate(
            run, name="dpo", code=_code(), code_hash="dpo", proposer="baseline", is_baseline=True
        ).id
        archive.update_candidate(
            ids["dpo"], status=Status.OK, fitness=0.5, fitness_ci_low=0.4, fitness_ci_high=0.6, n_seeds=2
        )
        ids["bad_contract"] = archive.add_candidate(
            run,
            name="bad_contract",
            code=_code("    h = h * 2\n"),
            code_hash="bc",
            proposer="mutation",
            parents=[ids["dpo"]],
        ).id
        archive.update_candidate(
            ids["bad_contract"],
            status=Status.INVALID,
            failed_stage="contract",
            reason="loss returns shape (1,), expected (10,)",
        )
        ids["raises"] = archive.add_candidate(
            run, name="raises", code=_code("    h = hx\n"), code_hash="r", proposer="mutation"
        ).id
        archive.update_candidate(
            ids["raises"],
            status=Status.ERROR,
            failed_stage="contract",
            reason="NameError: name 'hx' is not defined (line 7: `h = hx`)",
            error_class="NameError",
            error_line=7,
            error_message="name 'hx' is not defined",
        )
        ids["culled"] = archive.add_candidate(
            run, name="culled", code=_code("    h = h * 3\n"), code_hash="c", proposer="mutation"
        ).id
        archive.update_candidate(
            ids["culled"],
            status=Status.CULLED,
            failed_stage="cascade",
            fitness=0.2,
            reason="cascade fitness 0.200 < best 0.500 - margin 0.05; full suite not run",
        )
        ids["dup"] = archive.add_duplicate(
            run, original_id=ids["dpo"], code=_code(), code_hash="dpo", name="dup", proposer="mutation"
        )
        ids["unusable"] = archive.add_unusable(
            run, reason="no code block in the reply", name="unusable", proposer="llm"
        )
        archive.finish_run(run, "finished")
    return db, ids


def test_failures_show_status_at_stage_and_the_structured_error(outcomes_db, monkeypatch):
    db, ids = outcomes_db
    at = page(db, monkeypatch)
    table = re.search(r'<table class="dash" id="leaderboard">.*?</table>', html_of(at), re.S)[0]
    for fragment in (
        "invalid at contract<br><small>loss returns shape (1,), expected (10,)",
        "error at contract<br><small>NameError line 7 — name &#x27;hx&#x27; is not defined",
        "culled at cascade",
        "duplicate at dedup",
        "parse at reply",
    ):
        assert fragment in table, fragment
    assert "contract:" not in table  # the stage is next to the status, not repeated in the reason

    at = page(db, monkeypatch, candidate=ids["raises"])
    assert {m.label: m.value for m in at.metric}["Status"] == "error at contract"
    (error,) = at.error
    assert error.value.startswith("error at contract: NameError line 7 — name 'hx' is not defined")
    assert "(line 7: `h = hx`)" in error.value  # the stored reason too, for the code line it names

    at = page(db, monkeypatch, candidate=ids["bad_contract"])
    assert at.error[0].value == "invalid at contract: loss returns shape (1,), expected (10,)"

    at = page(db, monkeypatch, candidate=ids["dup"])
    assert not at.error and at.warning[0].value.startswith("duplicate at dedup: same normalized syntax tree as")
    assert f'duplicate of <a href="?candidate={ids["dpo"]}" target="_self">{ids["dpo"]}</a>' in html_of(at)
    at = page(db, monkeypatch, candidate=ids["culled"])
    assert not at.error and at.warning[0].value.startswith("culled at cascade: cascade fitness 0.200")

    with Archive.open_readonly(db) as archive:
        run_id = archive.list_runs()[0]["id"]
        fails = data.failures(archive, run_id)
    assert set(fails["label"]) == {
        "invalid at contract",
        "error at contract",
        "culled at cascade",
        "duplicate at dedup",
        "parse at reply",
    }
    at = page(db, monkeypatch, run=run_id)
    assert {m.label: m.value for m in at.metric}["Not ok"] == "5"
    bars = next(frames[0] for spec, frames in charts(at) if spec.get("mark", {}).get("type") == "bar")
    assert set(bars["label"]) == set(fails["label"])
