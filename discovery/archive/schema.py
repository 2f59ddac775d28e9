"""The archive's versioned schema and its migrations.

``MIGRATIONS[i]`` takes a database from schema version ``i`` to ``i + 1``; the version
this code writes is ``len(MIGRATIONS)``. Version 0 is an empty database. The
``schema_version`` table keeps one row per applied version (``MAX(version)`` is the
current one). Opening an older file for writing applies the missing migrations in one
``BEGIN IMMEDIATE`` transaction, so a failure leaves the file exactly as it was.

Rules for future migrations: append, never edit a released one; use plain SQL (the
library's DDL helpers may change under us). Migrations run with ``PRAGMA foreign_keys``
off (it cannot be switched inside a transaction, and a table rebuild's ``DROP TABLE``
would otherwise orphan the children for good); ``migrate`` runs ``foreign_key_check``
before it commits, so a rebuild must leave every reference valid.

Indexes: the partial unique index ``(run_id, code_hash) WHERE duplicate_of IS NULL``
(one evaluated copy of each program per run; duplicates point at it, unusable replies
have no hash) also serves ``candidates.run_id`` lookups, and
``UNIQUE(candidate_id, suite, config, seed)`` serves ``evaluations.candidate_id``;
``idx_evaluations_reuse (task, task_version, code_hash, suite, config, seed, device_kind)``
serves the lookup of a stored result to reuse (``Archive.reusable``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlite_utils import Database

from .codec import now
from .errors import ArchiveError

_V1 = [
    """CREATE TABLE schema_version (
        version INTEGER PRIMARY KEY,
        applied_at TEXT NOT NULL
    )""",
    """CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        task TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'running',
        config_json TEXT NOT NULL DEFAULT '{}',
        started_at TEXT NOT NULL,
        ended_at TEXT,
        isolation_json TEXT NOT NULL DEFAULT '[]',
        seed INTEGER,
        message TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX idx_runs_task ON runs (task, started_at)",
    """CREATE TABLE candidates (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        thought TEXT NOT NULL DEFAULT '',
        code TEXT NOT NULL,
        code_hash TEXT NOT NULL,
        parents_json TEXT NOT NULL DEFAULT '[]',
        generation INTEGER NOT NULL DEFAULT 0,
        island INTEGER NOT NULL DEFAULT 0,
        proposer TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'pending',
        failed_stage TEXT,
        reason TEXT,
        feedback_shown TEXT NOT NULL DEFAULT '',
        fitness REAL,
        fitness_ci_low REAL,
        fitness_ci_high REAL,
        n_seeds INTEGER,
        per_config_json TEXT,
        heldout_fitness REAL,
        heldout_ci_low REAL,
        heldout_ci_high REAL,
        heldout_n_seeds INTEGER,
        heldout_per_config_json TEXT,
        curve_json TEXT,
        seconds REAL,
        created_at TEXT NOT NULL,
        evaluated_at TEXT,
        is_baseline INTEGER NOT NULL DEFAULT 0 CHECK (is_baseline IN (0, 1)),
        UNIQUE (run_id, code_hash)
    )""",
    "CREATE INDEX idx_candidates_run_fitness ON candidates (run_id, fitness)",
    "CREATE INDEX idx_candidates_run_status ON candidates (run_id, status)",
    """CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY,
        candidate_id TEXT NOT NULL REFERENCES candidates (id),
        suite TEXT NOT NULL CHECK (suite IN ('discover', 'heldout')),
        config TEXT NOT NULL,
        seed INTEGER NOT NULL,
        stage TEXT NOT NULL DEFAULT 'full',
        fitness REAL,
        metrics_json TEXT,
        curve_json TEXT,
        seconds REAL,
        created_at TEXT NOT NULL,
        UNIQUE (candidate_id, suite, config, seed)
    )""",
    """CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (id),
        candidate_id TEXT REFERENCES candidates (id),
        model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        reply TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost_usd REAL,
        latency_s REAL,
        error TEXT,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX idx_llm_calls_run ON llm_calls (run_id)",
    "CREATE INDEX idx_llm_calls_candidate ON llm_calls (candidate_id)",
]


def _v0_to_v1(db: Database) -> None:
    """The first schema: runs, candidates, evaluations, llm_calls."""
    for statement in _V1:
        db.execute(statement)


def _v1_to_v2(db: Database) -> None:
    """The candidate's own failing line, for OPTO-style feedback and the dashboard."""
    db.execute("ALTER TABLE candidates ADD COLUMN error_line INTEGER")


def _v2_to_v3(db: Database) -> None:
    """Secrets of the archive (the held-out suite's environment salt), never shown or exported."""
    db.execute("CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)")


_CANDIDATES_V4 = """CREATE TABLE candidates_v4 (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        thought TEXT NOT NULL DEFAULT '',
        code TEXT NOT NULL,
        code_hash TEXT,
        duplicate_of TEXT REFERENCES candidates (id),
        parents_json TEXT NOT NULL DEFAULT '[]',
        generation INTEGER NOT NULL DEFAULT 0,
        island INTEGER NOT NULL DEFAULT 0,
        proposer TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'pending',
        failed_stage TEXT,
        reason TEXT,
        error_class TEXT,
        error_line INTEGER,
        error_message TEXT,
        feedback_shown TEXT NOT NULL DEFAULT '',
        fitness REAL,
        fitness_ci_low REAL,
        fitness_ci_high REAL,
        n_seeds INTEGER,
        per_config_json TEXT,
        heldout_fitness REAL,
        heldout_ci_low REAL,
        heldout_ci_high REAL,
        heldout_n_seeds INTEGER,
        heldout_per_config_json TEXT,
        curve_json TEXT,
        seconds REAL,
        created_at TEXT NOT NULL,
        evaluated_at TEXT,
        is_baseline INTEGER NOT NULL DEFAULT 0 CHECK (is_baseline IN (0, 1))
    )"""

_KEPT_V3_COLUMNS = (
    "id, run_id, name, thought, code, code_hash, parents_json, generation, island, proposer, status, "
    "failed_stage, reason, error_line, feedback_shown, fitness, fitness_ci_low, fitness_ci_high, n_seeds, "
    "per_config_json, heldout_fitness, heldout_ci_low, heldout_ci_high, heldout_n_seeds, "
    "heldout_per_config_json, curve_json, seconds, created_at, evaluated_at, is_baseline"
)

#: the exception class at the front of a v3 reason ("NameError: name 'x' is not defined (line 3: `...`)")
_V3_CLASS = re.compile(
    r"^(?:recursion without end: )?([A-Za-z_][A-Za-z0-9_.]*(?:Error|Exception|Exit|Interrupt|Warning))(?::\s*(.*))?$"
)
_V3_WHERE = re.compile(r"\s*\(line \d+:\s*`[^`]*`\)\s*$")


def _v3_error(status: str, reason: str | None) -> tuple[str | None, str | None]:
    """The (class, message) a v3 archive kept only inside the reason text of an ``error`` row."""
    if status != "error" or not reason:
        return None, None
    match = _V3_CLASS.match(_V3_WHERE.sub("", reason.strip()))
    if match is None:
        return None, None
    return match.group(1).rsplit(".", 1)[-1], (match.group(2) or "").strip() or None


def _v3_to_v4(db: Database) -> None:
    """Typed candidate records: structured errors, ``duplicate_of`` instead of fake hashes, one status vocabulary.

    Rebuilds ``candidates`` (SQLite cannot drop a table constraint): ``code_hash`` becomes
    nullable and loses its table-wide UNIQUE for a partial unique index; v3's fake hashes
    (``unusable:<uuid>`` -> NULL, ``duplicate:<hash>:<uuid>`` -> ``<hash>`` with ``duplicate_of``
    the run's original) are undone; status ``contract`` (a stage, not an outcome) becomes
    ``invalid`` at stage ``contract``; the error class and message of ``error`` rows are read
    once out of the reason text, so that nothing needs to parse it again.
    """
    db.execute(_CANDIDATES_V4)
    db.execute(f"INSERT INTO candidates_v4 ({_KEPT_V3_COLUMNS}) SELECT {_KEPT_V3_COLUMNS} FROM candidates")
    db.execute("UPDATE candidates_v4 SET code_hash = NULL WHERE code_hash LIKE 'unusable:%'")
    fakes = db.execute("SELECT id, run_id, code_hash FROM candidates_v4 WHERE code_hash LIKE 'duplicate:%'").fetchall()
    for cid, run_id, fake in fakes:
        real = fake.split(":")[1] if fake.count(":") >= 2 else None
        original = db.execute(
            "SELECT id FROM candidates_v4 WHERE run_id = ? AND code_hash = ? AND id != ?", [run_id, real, cid]
        ).fetchone()
        db.execute(
            "UPDATE candidates_v4 SET code_hash = ?, duplicate_of = ? WHERE id = ?",
            [real, original[0] if original else None, cid],
        )
    db.execute(
        "UPDATE candidates_v4 SET status = 'invalid', failed_stage = COALESCE(failed_stage, 'contract') "
        "WHERE status = 'contract'"
    )
    for cid, status, reason in db.execute("SELECT id, status, reason FROM candidates_v4").fetchall():
        error_class, message = _v3_error(status, reason)
        if error_class is not None:
            db.execute(
                "UPDATE candidates_v4 SET error_class = ?, error_message = ? WHERE id = ?", [error_class, message, cid]
            )
    db.execute("DROP TABLE candidates")
    db.execute("ALTER TABLE candidates_v4 RENAME TO candidates")
    db.execute("CREATE UNIQUE INDEX idx_candidates_code ON candidates (run_id, code_hash) WHERE duplicate_of IS NULL")
    db.execute("CREATE INDEX idx_candidates_run_fitness ON candidates (run_id, fitness)")
    db.execute("CREATE INDEX idx_candidates_run_status ON candidates (run_id, status)")


def _v4_to_v5(db: Database) -> None:
    """Reuse of stored results: each evaluation keeps what it is a pure function of, and where a copy came from.

    ``task`` (denormalised from the run, for the lookup index), ``task_version``
    (:func:`discovery.tasks.version.task_version`), ``code_hash`` (the normalized hash of the code
    that trained), ``device_kind`` (``cpu`` or ``cuda``), ``trainer_path`` (``sequential``,
    ``batched-vmap xS``, ...) and ``reused_from`` (the id of the trained evaluation a copy was made
    from; NULL when trained). v4 rows get their task and code hash back from their candidate and
    run; their task version and device stay unknown (NULL), so they are never reused.
    """
    for column in (
        "task TEXT",
        "task_version TEXT",
        "code_hash TEXT",
        "device_kind TEXT",
        "trainer_path TEXT",
        "reused_from INTEGER REFERENCES evaluations (id)",
    ):
        db.execute(f"ALTER TABLE evaluations ADD COLUMN {column}")
    db.execute(
        "UPDATE evaluations SET "
        "task = (SELECT r.task FROM candidates c JOIN runs r ON r.id = c.run_id WHERE c.id = evaluations.candidate_id),"
        " code_hash = (SELECT c.code_hash FROM candidates c WHERE c.id = evaluations.candidate_id)"
    )
    db.execute(
        "CREATE INDEX idx_evaluations_reuse ON evaluations "
        "(task, task_version, code_hash, suite, config, seed, device_kind)"
    )


Migration = Callable[[Database], None]

MIGRATIONS: list[Migration] = [_v0_to_v1, _v1_to_v2, _v2_to_v3, _v3_to_v4, _v4_to_v5]


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def latest_version(migrations: Sequence[Migration] | None = None) -> int:
    """The schema version this code writes."""
    return len(MIGRATIONS if migrations is None else migrations)


def stored_version(db: Database) -> int | None:
    """The file's schema version: 0 for an empty database, ``None`` for a foreign one.

    A database with tables but no ``schema_version`` table belongs to something else and
    is never touched.
    """
    tables = [t for t in db.table_names() if not t.startswith("sqlite_")]
    if "schema_version" not in tables:
        return 0 if not tables else None
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def check_version(db: Database, path: str | Path, known: int) -> int:
    """The stored version, or ``ArchiveError`` if the file is foreign or newer than ``known``."""
    version = stored_version(db)
    if version is None:
        raise ArchiveError(f"{path} is a SQLite database but not a discovery archive")
    if version > known:
        raise ArchiveError(f"archive schema v{version} is newer than this discovery (v{known}); upgrade discovery")
    return version


def migrate(db: Database, path: str | Path, migrations: Sequence[Migration] | None = None) -> int:
    """Bring ``db`` to the latest schema in one transaction; return the version now stored.

    Takes the write lock only when something is missing, and re-reads the version under
    it (another process may have migrated meanwhile). ``db.conn`` must be in autocommit
    mode (``isolation_level=None``), outside a transaction and with ``PRAGMA foreign_keys``
    off (the caller switches it on afterwards). ``sqlite3`` errors (a lock
    held elsewhere) propagate unchanged for the caller to translate; a failing migration
    step becomes an ``ArchiveError`` after the rollback.
    """
    steps = list(MIGRATIONS if migrations is None else migrations)
    target = len(steps)
    if check_version(db, path, target) == target:
        return target
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = check_version(db, path, target)
        for step in range(version, target):
            try:
                steps[step](db)
            except ArchiveError:
                raise
            except Exception as exc:
                if isinstance(exc, sqlite3.OperationalError) and _is_lock_error(exc):
                    raise
                raise ArchiveError(
                    f"cannot migrate archive {path} from v{step} to v{step + 1}: {type(exc).__name__}: {exc}"
                ) from exc
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", [step + 1, now()])
        broken = conn.execute("PRAGMA foreign_key_check").fetchone()
        if broken is not None:
            raise ArchiveError(
                f"cannot migrate archive {path}: a reference from {broken[0]} row {broken[1]} "
                f"to {broken[2]} would break"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return target
