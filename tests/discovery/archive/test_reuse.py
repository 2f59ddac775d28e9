"""Reuse of stored results in the archive, on real files: lookup, copies, their roots, the v4 -> v5 migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from discovery.archive import SCHEMA_VERSION, Archive, schema

KEY = {"task_version": "v1", "code_hash": "h-same", "device_kind": "cpu"}
CELLS = [("c1", 0), ("c1", 1), ("c2", 0), ("c2", 1)]


@pytest.fixture
def archive(tmp_path: Path):
    with Archive(tmp_path / "archive.db") as arc:
        yield arc


def candidate(archive: Archive, task: str = "t", code_hash: str = "h-same", name: str = "x") -> str:
    run = archive.create_run(task, {}, 0, [])
    return archive.add_candidate(run, name=name, code=f"# {name}", code_hash=code_hash, proposer="p").id


def trained(archive: Archive, cid: str, cell: tuple[str, int], fitness: float, **key: str) -> None:
    config, seed = cell
    metrics, curve = {"acc": fitness / 2}, {"loss": [1.0, fitness]}
    fields = {**KEY, "trainer_path": "batched-vmap x2", **key}
    assert archive.record_evaluation(cid, "discover", config, seed, "full", fitness, metrics, curve, 1.5, **fields)


def test_a_stored_result_is_found_for_another_candidate_and_copied_with_its_origin(archive: Archive) -> None:
    first = candidate(archive, name="first")
    for i, cell in enumerate(CELLS[:3]):
        trained(archive, first, cell, 0.1 * (i + 1))
    second = candidate(archive, name="second")  # another run, the same normalized code

    found = archive.reusable("t", "v1", "h-same", "discover", "cpu", CELLS, exclude=second)
    assert set(found) == set(CELLS[:3])  # (c2, 1) was never trained
    assert {cell: e.candidate_id for cell, e in found.items()} == dict.fromkeys(CELLS[:3], first)
    assert archive.reusable("t", "v1", "h-same", "discover", "cpu", CELLS, exclude=first) == {}  # not its own

    source = found[("c1", 1)]
    assert archive.reuse_evaluation(second, source, "cascade")
    assert not archive.reuse_evaluation(second, source, "full")  # that cell is stored already: exactly once
    (copy,) = archive.evaluations(second)
    assert copy.reused and copy.reused_from == source.id and not source.reused
    assert (copy.config, copy.seed, copy.stage) == ("c1", 1, "cascade")
    same = (
        "fitness",
        "metrics",
        "curve",
        "seconds",
        "task",
        "task_version",
        "code_hash",
        "device_kind",
        "trainer_path",
    )
    assert {f: getattr(copy, f) for f in same} == {f: getattr(source, f) for f in same}
    assert copy.fitness == pytest.approx(0.2) and copy.trainer_path == "batched-vmap x2"
    assert copy.id != source.id


def test_a_copy_of_a_copy_points_at_the_trained_row(archive: Archive) -> None:
    first, second, third = (candidate(archive, name=n) for n in ("first", "second", "third"))
    trained(archive, first, ("c1", 0), 0.5)
    (root,) = archive.evaluations(first)
    archive.reuse_evaluation(second, root, "full")
    (copy,) = archive.evaluations(second)
    # only the copy is visible to the third: the lookup offers it, and copying it goes back to the root
    offered = archive.reusable("t", "v1", "h-same", "discover", "cpu", [("c1", 0)], exclude=first)
    assert offered[("c1", 0)].id == copy.id
    assert archive.reuse_evaluation(third, copy, "full")
    (again,) = archive.evaluations(third)
    assert again.reused_from == root.id and again.fitness == 0.5
    # with both on offer, the trained row comes first
    assert archive.reusable("t", "v1", "h-same", "discover", "cpu", [("c1", 0)])[("c1", 0)].id == root.id


@pytest.mark.parametrize(
    "differs",
    [
        {"task_version": "v2"},  # the task's code or settings changed
        {"code_hash": "h-other"},  # other code
        {"device_kind": "cuda"},  # trained on another kind of device
        {"suite": "heldout"},
        {"task": "other-task"},
    ],
)
def test_a_result_differing_in_any_part_of_its_key_is_not_reused(archive: Archive, differs: dict) -> None:
    trained(archive, candidate(archive), ("c1", 0), 0.5)
    ask = {"task": "t", "suite": "discover", **KEY, **differs}
    assert (
        archive.reusable(ask["task"], ask["task_version"], ask["code_hash"], ask["suite"], ask["device_kind"], CELLS)
        == {}
    )
    assert archive.reusable("t", "v1", "h-same", "discover", "cpu", CELLS)  # while the exact key finds it


def test_results_without_a_version_or_device_are_never_reused(archive: Archive) -> None:
    cid = candidate(archive)
    archive.record_evaluation(cid, "discover", "c1", 0, "full", 0.5, {}, None, 1.0)  # no key given
    (row,) = archive.evaluations(cid)
    assert row.task == "t" and row.code_hash == "h-same"  # from the candidate and its run
    assert row.task_version is None and row.device_kind is None and row.reused_from is None
    assert archive.reusable("t", "", "h-same", "discover", "cpu", CELLS) == {}
    assert archive.reusable("t", "v1", "h-same", "discover", "cpu", CELLS) == {}
    assert not archive.has_reusable("t", "v1", "h-same", "cpu")


def test_has_reusable_says_whether_the_code_trained_for_this_version_and_device(archive: Archive) -> None:
    assert not archive.has_reusable("t", "v1", "h-same", "cpu")
    trained(archive, candidate(archive), ("c1", 0), 0.5)
    assert archive.has_reusable("t", "v1", "h-same", "cpu")
    assert not archive.has_reusable("t", "v1", "h-same", "cuda") and not archive.has_reusable(
        "t", "v2", "h-same", "cpu"
    )


def test_a_result_of_another_task_cannot_be_copied(archive: Archive) -> None:
    source_id = candidate(archive, task="t")
    trained(archive, source_id, ("c1", 0), 0.5)
    (source,) = archive.evaluations(source_id)
    other = candidate(archive, task="other-task")
    with pytest.raises(ValueError, match="other-task"):
        archive.reuse_evaluation(other, source, "full")
    assert archive.evaluations(other) == []


def test_the_lookup_uses_its_index(archive: Archive) -> None:
    trained(archive, candidate(archive), ("c1", 0), 0.5)
    plan = archive.db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM evaluations WHERE task = ? AND task_version = ? AND code_hash = ?"
        " AND suite = ? AND device_kind = ? AND config IN (?, ?) AND candidate_id != ?",
        ["t", "v1", "h-same", "discover", "cpu", "c1", "c2", "x"],
    ).fetchall()
    assert "idx_evaluations_reuse" in " ".join(str(row[-1]) for row in plan)


def test_a_v4_archive_migrates_to_v5_keeping_its_evaluations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v4.db"
    with monkeypatch.context() as m:  # the archive as the v4 code made it
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
        with Archive(path) as arc:
            assert arc.schema_version == 4
            rid = arc.create_run("preference", {"budget": 1}, 0, [])
            cid = arc.add_candidate(rid, name="dpo", code="x", code_hash="h-dpo", proposer="baseline").id
    conn = sqlite3.connect(path)  # the v4 record_evaluation's columns
    conn.execute(
        "INSERT INTO evaluations (candidate_id, suite, config, seed, stage, fitness, metrics_json, curve_json,"
        " seconds, created_at) VALUES (?, 'discover', 'clean', 0, 'full', 0.25, '{\"kl\":1.5}', '[1,2]', 3.0, 'then')",
        [cid],
    )
    conn.commit()
    conn.close()

    with Archive(path) as arc:
        assert arc.schema_version == SCHEMA_VERSION == 5
        (old,) = arc.evaluations(cid)
        assert (old.config, old.seed, old.stage, old.fitness, old.metrics, old.curve, old.seconds) == (
            "clean",
            0,
            "full",
            0.25,
            {"kl": 1.5},
            [1, 2],
            3.0,
        )
        assert (old.task, old.code_hash) == ("preference", "h-dpo")  # filled in from its candidate and run
        assert old.task_version is None and old.device_kind is None and not old.reused  # unknown: never reused
        assert arc.reusable("preference", "v1", "h-dpo", "discover", "cpu", [("clean", 0)]) == {}
        assert arc.record_evaluation(
            cid, "discover", "clean", 1, "full", 0.5, {}, None, 1.0, **{**KEY, "code_hash": "h-dpo"}
        )
        assert arc.reusable("preference", "v1", "h-dpo", "discover", "cpu", [("clean", 1)])
    conn = sqlite3.connect(path)
    assert "idx_evaluations_reuse" in [row[1] for row in conn.execute("PRAGMA index_list(evaluations)")]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
