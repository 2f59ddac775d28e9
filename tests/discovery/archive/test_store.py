"""The SQLite archive, on real files: tables, exactly-once, schema versions, bad files, locks."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from discovery.archive import SCHEMA_VERSION, Added, Archive, ArchiveError, schema

BUSY = 0.2


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "archive.db"


@pytest.fixture
def archive(path: Path):
    with Archive(path, busy_timeout=BUSY) as arc:
        yield arc


@pytest.fixture
def run_id(archive: Archive) -> str:
    return archive.create_run("preference", {"budget": 3, "model": "m"}, 7, ["no network"])


def add(archive: Archive, run_id: str, name: str, **kw) -> Added:
    fields = {
        "code": f"def loss(x):\n    return x  # {name}\n",
        "code_hash": f"h-{name}",
        "proposer": "llm:m",
    }
    fields.update(kw)
    return archive.add_candidate(run_id, name=name, **fields)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# ------------------------------------------------------------------- roundtrips


def test_run_roundtrip(archive: Archive, run_id: str) -> None:
    assert run_id.startswith("r-") and len(run_id.split("-")) == 4
    run = archive.get_run(run_id)
    assert run is not None
    assert run["task"] == "preference" and run["status"] == "running" and run["seed"] == 7
    assert run["config"] == {"budget": 3, "model": "m"}
    assert run["isolation"] == ["no network"]
    assert run["ended_at"] is None and run["n_candidates"] == 0 and run["cost_usd"] == 0.0

    other = archive.create_run("other", {}, None, [], run_id="r-fixed")
    assert other == "r-fixed"
    with pytest.raises(ArchiveError):
        archive.create_run("other", {}, None, [], run_id="r-fixed")
    assert {r["id"] for r in archive.list_runs()} == {run_id, "r-fixed"}
    assert [r["id"] for r in archive.list_runs(task="preference")] == [run_id]

    archive.finish_run(run_id, "stopped", "budget spent")
    run = archive.get_run(run_id)
    assert run["status"] == "stopped" and run["message"] == "budget spent" and run["ended_at"]
    with pytest.raises(ValueError):
        archive.finish_run(run_id, "exploded")
    with pytest.raises(ArchiveError, match="unknown run"):
        archive.finish_run("r-nope", "finished")
    assert archive.get_run("r-nope") is None


def test_candidate_roundtrip(archive: Archive, run_id: str) -> None:
    parent = add(archive, run_id, "seed", is_baseline=True, generation=0)
    added = add(
        archive,
        run_id,
        "child",
        thought="swap the sign",
        parents=[parent.id],
        generation=1,
        island=2,
        proposer="mutation:swap_op",
        feedback_shown="PROMPT: improve the loss",
    )
    assert added.duplicate is False and added.id != parent.id
    cand = archive.get_candidate(added.id)
    assert cand is not None
    assert cand.status == "pending" and cand.parents == (parent.id,)
    assert cand.thought == "swap the sign" and cand.generation == 1 and cand.island == 2
    assert cand.proposer == "mutation:swap_op" and cand.feedback_shown == "PROMPT: improve the loss"
    assert cand.is_baseline is False and archive.get_candidate(parent.id).is_baseline is True
    assert cand.evaluated_at is None and cand.fitness is None

    per_config = {"small": {"fitness": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 3, "win_rate": 0.7}}
    archive.update_candidate(added.id, status="evaluating")
    assert archive.get_candidate(added.id).evaluated_at is None
    archive.update_candidate(
        added.id,
        status="ok",
        fitness=0.5,
        fitness_ci_low=0.4,
        fitness_ci_high=0.6,
        n_seeds=3,
        per_config=per_config,
        heldout_fitness=0.45,
        heldout_ci_low=0.3,
        heldout_ci_high=0.6,
        heldout_n_seeds=5,
        heldout_per_config_json={"big": {"fitness": 0.45}},
        curve={"loss": [1.0, 0.5, float("nan")]},
        seconds=12.5,
    )
    cand = archive.get_candidate(added.id)
    assert cand.status == "ok" and cand.evaluated_at
    assert (cand.fitness, cand.fitness_ci_low, cand.fitness_ci_high, cand.n_seeds) == (
        0.5,
        0.4,
        0.6,
        3,
    )
    assert cand.per_config == per_config and cand.heldout_per_config == {"big": {"fitness": 0.45}}
    assert cand.heldout_fitness == 0.45 and cand.heldout_n_seeds == 5 and cand.seconds == 12.5
    assert cand.curve == {"loss": [1.0, 0.5, None]}  # NaN stored as null: strict JSON

    archive.update_candidate(parent.id, status="timeout", failed_stage="cascade", reason="took 60 s")
    failed = archive.get_candidate(parent.id)
    assert (failed.status, failed.failed_stage, failed.reason) == ("timeout", "cascade", "took 60 s")

    with pytest.raises(ValueError):
        archive.update_candidate(added.id, status="great")
    with pytest.raises(ValueError):
        archive.update_candidate(added.id, run_id="r-other")
    with pytest.raises(ArchiveError, match="unknown candidate"):
        archive.update_candidate("c-nope", status="ok")
    assert archive.get_candidate("c-nope") is None

    run = archive.get_run(run_id)
    assert run["n_candidates"] == 2 and run["best_fitness"] == 0.5


def test_candidates_listing_and_unfinished(archive: Archive, run_id: str) -> None:
    ids = {name: add(archive, run_id, name).id for name in ["a", "b", "c", "d", "e"]}
    archive.update_candidate(ids["a"], status="ok", fitness=0.1)
    archive.update_candidate(ids["b"], status="ok", fitness=0.9)
    archive.update_candidate(ids["c"], status="crashed", reason="boom")
    archive.update_candidate(ids["d"], status="evaluating")

    best = archive.candidates(run_id)
    assert [c.name for c in best][:2] == ["b", "a"]
    assert [c.name for c in archive.candidates(run_id, order_by_fitness=False)] == list("abcde")
    assert [c.name for c in archive.candidates(run_id, status="ok")] == ["b", "a"]
    assert [c.name for c in archive.candidates(run_id, status=["crashed", "ok"], limit=1)] == ["b"]
    assert [c.name for c in archive.unfinished_candidates(run_id)] == ["d", "e"]
    with pytest.raises(ValueError):
        archive.candidates(run_id, status="bogus")


def test_duplicate_hash_returns_existing(archive: Archive, run_id: str) -> None:
    first = add(archive, run_id, "one", code_hash="same")
    again = add(archive, run_id, "two", code_hash="same", code="different formatting")
    assert again == Added(first.id, True)
    assert archive.get_candidate(first.id).name == "one"
    assert len(archive.candidates(run_id)) == 1

    other_run = archive.create_run("preference", {}, 1, [])
    elsewhere = add(archive, other_run, "one", code_hash="same")
    assert elsewhere.duplicate is False and elsewhere.id != first.id

    with pytest.raises(ArchiveError, match="unknown run"):
        add(archive, "r-nope", "x")


def test_record_evaluation_exactly_once(archive: Archive, run_id: str) -> None:
    cid = add(archive, run_id, "a").id
    assert archive.record_evaluation(cid, "discover", "small", 0, "cascade", 0.5, {"acc": 0.9}, [1, 0.5], 1.5)
    again = archive.record_evaluation(cid, "discover", "small", 0, "full", 0.1, {"acc": 0.1}, None, 9.0)
    assert again is False
    assert archive.record_evaluation(cid, "discover", "small", 1, "full", 0.7, {"acc": 0.8}, None, 1.0)
    assert archive.record_evaluation(cid, "heldout", "small", 0, "full", float("nan"), {}, None, 1.0)

    rows = archive.evaluations(cid, "discover")
    assert [(r.config, r.seed) for r in rows] == [("small", 0), ("small", 1)]
    kept = rows[0]
    assert (kept.stage, kept.fitness, kept.metrics, kept.curve, kept.seconds) == (
        "cascade",
        0.5,
        {"acc": 0.9},
        [1, 0.5],
        1.5,
    )
    assert len(archive.evaluations(cid)) == 3
    assert archive.evaluations(cid, "heldout")[0].fitness is None  # NaN fitness -> NULL
    assert archive.done_keys(cid, "discover") == {("small", 0), ("small", 1)}
    assert archive.done_keys(cid, "heldout") == {("small", 0)}
    assert archive.done_keys("c-nope", "discover") == set()

    with pytest.raises(ValueError):
        archive.record_evaluation(cid, "train", "small", 0, "full", 0.5, {}, None, 1.0)
    with pytest.raises(ArchiveError, match="unknown candidate"):
        archive.record_evaluation("c-nope", "discover", "small", 0, "full", 0.5, {}, None, 1.0)


def test_llm_calls_and_cost(archive: Archive, run_id: str) -> None:
    cid = add(archive, run_id, "a").id
    first = archive.record_llm_call(run_id, None, "gpt-4o", "propose", "def loss...", 100, 50, 0.01, 1.2, None)
    second = archive.record_llm_call(
        run_id, cid, "gpt-4o", [{"role": "user", "content": "fix"}], None, 10, 0, 0.0025, 0.3, "timeout"
    )
    assert second > first
    calls = archive.llm_calls(run_id)
    assert [c["id"] for c in calls] == [first, second]
    assert calls[0]["prompt"] == "propose" and calls[0]["reply"] == "def loss..." and calls[0]["candidate_id"] is None
    assert (calls[0]["prompt_tokens"], calls[0]["completion_tokens"], calls[0]["latency_s"]) == (100, 50, 1.2)
    assert json.loads(calls[1]["prompt"]) == [{"role": "user", "content": "fix"}]
    assert calls[1]["error"] == "timeout" and calls[1]["candidate_id"] == cid and calls[1]["reply"] is None
    assert math.isclose(archive.run_cost(run_id), 0.0125)
    assert archive.get_run(run_id)["cost_usd"] == pytest.approx(0.0125)
    assert archive.run_cost("r-nope") == 0.0
    with pytest.raises(ArchiveError, match="unknown run"):
        archive.record_llm_call("r-nope", None, "m", "p", "r", 1, 1, 0.0, 0.1, None)


def test_leaderboard(archive: Archive, run_id: str) -> None:
    other = archive.create_run("optimizer", {}, 0, [])
    base = add(archive, run_id, "dpo", is_baseline=True).id
    good = add(archive, run_id, "good").id
    bad = add(archive, run_id, "crashy").id
    pending = add(archive, run_id, "pending").id
    opt = add(archive, other, "adam", is_baseline=True).id
    archive.update_candidate(base, status="ok", fitness=0.5)
    archive.update_candidate(good, status="ok", fitness=0.8)
    archive.update_candidate(bad, status="crashed", fitness=0.99)
    archive.update_candidate(opt, status="ok", fitness=0.6)

    rows = archive.leaderboard()
    assert [r.id for r in rows] == [good, opt, base]
    assert rows[0].task == "preference"
    assert [r.is_baseline for r in rows] == [False, True, True]
    assert pending not in {r.id for r in rows}
    assert [r.id for r in archive.leaderboard(run_id=run_id)] == [good, base]
    assert [r.id for r in archive.leaderboard(task="optimizer")] == [opt]
    assert [r.id for r in archive.leaderboard(limit=1)] == [good]


def test_lineage(archive: Archive, run_id: str) -> None:
    root = add(archive, run_id, "root").id
    a = add(archive, run_id, "a", parents=[root], generation=1).id
    b = add(archive, run_id, "b", parents=[root], generation=1).id
    child = add(archive, run_id, "child", parents=[a, b, "c-missing"], generation=2).id
    rows = archive.lineage(child)
    assert [(depth, r.id) for depth, r in rows] == [(0, child), (1, a), (1, b), (2, root)]
    assert archive.lineage(root) == [(0, archive.get_candidate(root))]
    assert archive.lineage("c-nope") == []


# -------------------------------------------------------------- schema versions


def test_reopen_keeps_data_and_version(path: Path) -> None:
    with Archive(path) as arc:
        rid = arc.create_run("t", {"x": 1}, 1, [])
        cid = add(arc, rid, "a").id
        arc.record_evaluation(cid, "discover", "c", 0, "full", 0.5, {}, None, 1.0)
    with Archive(path) as arc:
        assert arc.schema_version == SCHEMA_VERSION == 5
        assert arc.get_run(rid)["config"] == {"x": 1}
        assert arc.get_candidate(cid).name == "a"
        assert arc.done_keys(cid, "discover") == {("c", 0)}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 5
    conn.close()


def old_archive(path: Path, version: int, monkeypatch: pytest.MonkeyPatch, candidates: list[dict]) -> str:
    """An archive file at schema ``version`` holding one run and ``candidates`` (raw v1..v3 columns)."""
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        with Archive(path) as arc:
            assert arc.schema_version == version
            rid = arc.create_run("preference", {"x": 1}, 1, [])
    conn = sqlite3.connect(path)
    for row in candidates:
        row = {"run_id": rid, "name": row["id"], "code": "", "created_at": "2026-01-01T00:00:00.000Z", **row}
        conn.execute(
            f"INSERT INTO candidates ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values())
        )
    conn.commit()
    conn.close()
    return rid


def test_v1_archive_migrates_keeping_data(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_archive(path, 1, monkeypatch, [{"id": "c-a", "code_hash": "h-a", "name": "a"}])
    with Archive(path) as arc:
        assert arc.schema_version == SCHEMA_VERSION
        assert arc.get_candidate("c-a").name == "a"
        assert arc.get_candidate("c-a").error_line is None
        arc.update_candidate("c-a", status="error", error_line=7, reason="boom")
        assert arc.get_candidate("c-a").error_line == 7


def test_v3_archive_migrates_to_records_without_fake_hashes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """v3 kept duplicates and unusable replies under fake hashes, and NaN outputs as status 'contract'."""
    rid = old_archive(
        path,
        3,
        monkeypatch,
        [
            {"id": "c-orig", "code": "x", "code_hash": "abc", "status": "ok", "fitness": 0.5},
            {
                "id": "c-dup",
                "code": "x",
                "code_hash": "duplicate:abc:0f0f",
                "status": "duplicate",
                "failed_stage": "dedup",
                "reason": "same normalized syntax tree as c-orig (orig); not evaluated",
            },
            {
                "id": "c-unusable",
                "code_hash": "unusable:1234",
                "status": "parse",
                "failed_stage": "reply",
                "reason": "unusable reply: no code block",
            },
            {"id": "c-unusable2", "code_hash": "unusable:5678", "status": "parse", "failed_stage": "reply"},
            {
                "id": "c-nan",
                "code": "y",
                "code_hash": "def",
                "status": "contract",
                "failed_stage": "contract",
                "reason": "loss returned NaN",
            },
            {
                "id": "c-name",
                "code": "z",
                "code_hash": "ghi",
                "status": "error",
                "failed_stage": "contract",
                "error_line": 3,
                "reason": "NameError: name 'hx' is not defined (line 3: `return hx`)",
            },
        ],
    )
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO evaluations (candidate_id, suite, config, seed, created_at) "
        "VALUES ('c-orig', 'discover', 'small', 0, 'now')"
    )
    conn.commit()
    conn.close()
    with Archive(path) as arc:
        assert arc.schema_version == SCHEMA_VERSION == 5
        dup, orig = arc.get_candidate("c-dup"), arc.get_candidate("c-orig")
        assert (dup.status, dup.code_hash, dup.duplicate_of) == ("duplicate", "abc", "c-orig")
        assert orig.fitness == 0.5 and orig.duplicate_of is None and len(arc.evaluations("c-orig")) == 1
        assert arc.get_candidate("c-unusable").code_hash is None and arc.get_candidate("c-unusable2").code_hash is None
        nan = arc.get_candidate("c-nan")
        assert (nan.status, nan.failed_stage, nan.error_class) == ("invalid", "contract", None)
        name = arc.get_candidate("c-name")
        assert (name.status, name.error_class, name.error_line) == ("error", "NameError", 3)
        assert name.error_message == "name 'hx' is not defined"
        # the partial unique index still keeps one evaluated copy per program, and takes new duplicates
        assert add(arc, rid, "again", code_hash="abc") == Added("c-orig", True)
        again = arc.add_duplicate(rid, original_id="c-orig", code="x", code_hash="abc", name="again", proposer="p")
        assert arc.get_candidate(again).duplicate_of == "c-orig"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_unusable_replies_and_duplicates_are_recorded_without_fake_hashes(archive: Archive, run_id: str) -> None:
    orig = add(archive, run_id, "orig").id
    first = archive.add_unusable(run_id, reason="unusable reply: no code", name="u1", proposer="llm:m")
    second = archive.add_unusable(run_id, reason="unusable reply: empty", name="u2", proposer="llm:m", generation=3)
    dup = archive.add_duplicate(
        run_id, original_id=orig, code="c", code_hash="h-orig", name="d", proposer="llm:m", thought="same again"
    )
    rows = {c.id: c for c in archive.candidates(run_id)}
    assert {rows[first].status, rows[second].status} == {"parse"} and rows[first].failed_stage == "reply"
    assert rows[first].code_hash is None and rows[second].generation == 3 and rows[first].evaluated_at
    assert (rows[dup].status, rows[dup].duplicate_of, rows[dup].code_hash) == ("duplicate", orig, "h-orig")
    assert orig in rows[dup].reason and rows[dup].thought == "same again"
    with pytest.raises(ArchiveError):
        archive.add_duplicate(run_id, original_id="c-nope", code="c", code_hash="h", name="d", proposer="p")


def test_the_heldout_secret_is_made_once_per_archive_and_kept(path: Path, tmp_path: Path) -> None:
    with Archive(path) as arc:
        secret = arc.heldout_secret()
        assert len(secret) == 32 and arc.heldout_secret() == secret
    with Archive(path) as arc:  # reopened (a resume): the same secret
        assert arc.heldout_secret() == secret
    with Archive(tmp_path / "other.db") as other:  # another archive draws its own
        assert other.heldout_secret() != secret


def test_newer_schema_is_refused(path: Path) -> None:
    with Archive(path) as arc:
        arc.create_run("t", {}, 1, [])
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (999, 'future')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    expected = f"archive schema v999 is newer than this discovery (v{SCHEMA_VERSION}); upgrade discovery"
    with pytest.raises(ArchiveError) as exc:
        Archive(path)
    assert one_line(exc) == expected
    with pytest.raises(ArchiveError) as exc:
        Archive.open_readonly(path)
    assert one_line(exc) == expected
    assert path.read_bytes() == before


def test_migration_runs_in_one_transaction(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", [schema.MIGRATIONS[0]])
    with Archive(path) as arc:
        rid = arc.create_run("t", {}, 1, [])

    def v1_to_v2_broken(db) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")
        raise RuntimeError("bug in migration")

    monkeypatch.setattr(schema, "MIGRATIONS", [schema.MIGRATIONS[0], v1_to_v2_broken])
    with pytest.raises(ArchiveError) as exc:
        Archive(path)
    assert "cannot migrate" in one_line(exc) and "v1 to v2" in one_line(exc)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 1
    assert "note" not in [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
    conn.close()

    def v1_to_v2(db) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT DEFAULT 'migrated'")

    monkeypatch.setattr(schema, "MIGRATIONS", [schema.MIGRATIONS[0], v1_to_v2])
    with pytest.raises(ArchiveError, match="older"):
        Archive.open_readonly(path)  # readers never migrate
    with Archive(path) as arc:
        assert arc.schema_version == 2
        assert arc.get_run(rid)["note"] == "migrated"
    with Archive.open_readonly(path) as reader:
        assert reader.schema_version == 2


def test_foreign_sqlite_database_is_refused(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE stuff (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ArchiveError) as exc:
        Archive(path)
    assert "not a discovery archive" in one_line(exc)
    assert path.read_bytes() == before


# -------------------------------------------------------------------- bad files


def test_garbage_file_is_refused_and_untouched(path: Path) -> None:
    garbage = b"this is not sqlite at all\x00\x01\x02" * 200
    path.write_bytes(garbage)
    with pytest.raises(ArchiveError) as exc:
        Archive(path)
    assert "not a SQLite database" in one_line(exc)
    with pytest.raises(ArchiveError) as exc:
        Archive.open_readonly(path)
    assert "not a SQLite database" in one_line(exc)
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_locked_database_gives_up_within_busy_timeout(path: Path) -> None:
    holder = sqlite3.connect(path, isolation_level=None)  # a plain rollback-journal database
    holder.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        with pytest.raises(ArchiveError) as exc:
            Archive(path, busy_timeout=BUSY)
        assert "locked" in one_line(exc)
        assert time.monotonic() - start < BUSY + 2.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Archive(path, busy_timeout=BUSY) as arc:  # and it was left usable
        assert arc.schema_version == SCHEMA_VERSION


def test_locked_wal_archive_refuses_writes_not_reads(archive: Archive, run_id: str, path: Path) -> None:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        with pytest.raises(ArchiveError) as exc:
            archive.create_run("t", {}, 1, [])
        assert "locked" in one_line(exc)
        assert time.monotonic() - start < BUSY + 2.0
        assert archive.get_run(run_id)["task"] == "preference"  # WAL: readers are not blocked
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert archive.create_run("t", {}, 1, [])  # the failed write left no open transaction


def test_readonly_never_creates_and_cannot_write(path: Path, archive: Archive, run_id: str) -> None:
    missing = path.parent / "missing.db"
    with pytest.raises(ArchiveError) as exc:
        Archive.open_readonly(missing)
    assert "no archive" in one_line(exc)
    assert not missing.exists()

    with Archive.open_readonly(path) as reader:
        assert reader.get_run(run_id)["task"] == "preference"
        cid = add(archive, run_id, "late").id  # the writer keeps writing; the reader sees it
        assert reader.get_candidate(cid).name == "late"
        with pytest.raises(ArchiveError, match="read-only"):
            reader.create_run("t", {}, 1, [])
        with pytest.raises(ArchiveError, match="read-only"):
            reader.update_candidate(cid, status="ok")
        with pytest.raises(sqlite3.OperationalError):
            reader.db.execute("DELETE FROM runs")
        assert reader.get_run(run_id) is not None


def test_empty_database_is_not_readable_as_archive(path: Path) -> None:
    path.write_bytes(b"")
    with pytest.raises(ArchiveError, match="not a discovery archive"):
        Archive.open_readonly(path)
    assert path.read_bytes() == b""


def test_closed_archive_raises(path: Path) -> None:
    arc = Archive(path)
    arc.close()
    arc.close()
    with pytest.raises(ArchiveError, match="closed"):
        arc.list_runs()


def test_failed_write_is_rolled_back(archive: Archive, run_id: str) -> None:
    a = add(archive, run_id, "a", code_hash="ha").id
    b = add(archive, run_id, "b", code_hash="hb").id
    with pytest.raises(ArchiveError) as exc:
        archive.update_candidate(b, code_hash="ha", name="renamed")  # UNIQUE(run_id, code_hash)
    one_line(exc)
    assert archive.get_candidate(b).name == "b" and archive.get_candidate(a).code_hash == "ha"


# ---------------------------------------------------------- concurrency and WAL


def test_wal_mode_is_on(archive: Archive, path: Path) -> None:
    assert archive.db.journal_mode == "wal"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_concurrent_writes_from_threads_all_land(archive: Archive, run_id: str) -> None:
    per_thread = 25
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                cid = add(archive, run_id, f"t{t}-{i}").id
                archive.record_evaluation(cid, "discover", "cfg", 0, "full", t + i / 100, {}, None, 0.1)
                archive.record_llm_call(run_id, cid, "m", "p", "r", 1, 1, 0.001, 0.01, None)
                archive.update_candidate(cid, status="ok", fitness=t + i / 100)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = 4 * per_thread
    assert len(archive.candidates(run_id, status="ok")) == total
    assert len(archive.llm_calls(run_id)) == total
    assert archive.run_cost(run_id) == pytest.approx(total * 0.001)
    assert sum(len(archive.evaluations(c.id)) for c in archive.candidates(run_id)) == total


def test_stored_json_is_strict(archive: Archive, run_id: str, path: Path) -> None:
    cid = add(archive, run_id, "a").id
    archive.record_evaluation(cid, "discover", "c", 0, "full", 1.0, {"loss": float("inf")}, None, 1.0)
    conn = sqlite3.connect(path)
    value = conn.execute("SELECT json_extract(metrics_json, '$.loss') FROM evaluations").fetchone()[0]
    conn.close()
    assert value is None


def test_reopen_run_marks_it_running(path: Path) -> None:
    with Archive(path) as arc:
        rid = arc.create_run("t", {}, 1, [])
        arc.finish_run(rid, "stopped", "ctrl-c")
        arc.reopen_run(rid)
        run = arc.get_run(rid)
        assert run["status"] == "running" and run["ended_at"] is None
        with pytest.raises(ArchiveError):
            arc.reopen_run("r-unknown")
