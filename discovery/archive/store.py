"""The ``Archive``: every run, candidate, evaluation and LLM call, in one SQLite file.

The dashboard and the export read only this file, so everything a run decides on is
written here as it happens.

Concurrency. One process writes (the discovery run, with several worker threads); any
number of processes read (``Archive.open_readonly``). The file is in WAL mode, so readers
never block the writer nor the writer the readers. Inside the writer process an
``Archive`` holds ONE ``sqlite3`` connection (``check_same_thread=False``) guarded by a
``threading.RLock``: each public method holds the lock for its whole, short transaction,
so threads serialize on the lock rather than on SQLite's file lock. Connections per
thread were rejected because our own threads would then compete for SQLite's single
write lock through the busy handler, and a short busy timeout would turn ordinary
contention into spurious "locked" errors. Writes use ``BEGIN IMMEDIATE`` (the busy
timeout applies when the transaction starts, never half-way); reads run in one deferred
transaction, so a multi-query read (``lineage``) sees one snapshot.

Errors. Anything wrong with the file (not a database, locked beyond the busy timeout,
unreadable, read-only, newer schema) raises ``ArchiveError`` with a one-line message; a
failed write is rolled back, never half-applied. Bad arguments (unknown status or field)
raise ``ValueError``: those are bugs, not conditions of the file.

Records. Candidates and evaluations come back as typed records
(:class:`discovery.records.Candidate`, :class:`~discovery.records.Evaluation`), decoded in one
place (their ``from_row``); runs and LLM calls as plain dicts with each ``x_json`` column
decoded into key ``x`` (see ``codec.decode_row``). ``get_*`` returns ``None`` for an unknown
id. Fitness is "higher is better" everywhere.

Reuse. An evaluation is a pure function of (task and task version, normalized code, suite,
configuration, seed, device kind; the held-out suite's secret is the archive's own), which each
row keeps. ``reusable`` finds stored results of the same function for other candidates, of any
run, and ``reuse_evaluation`` copies one, its ``reused_from`` naming the trained row.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from discovery.records import Ancestor, Candidate, Evaluation
from sandbox.base import Status

from . import schema
from .codec import decode_row, now, to_json, to_real
from .errors import ArchiveError, from_sqlite

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a statement waits for a lock held by another connection before giving up."""

RUN_STATUSES = ("running", "finished", "stopped", "failed")
CANDIDATE_STATUSES = tuple(status.value for status in Status)
UNFINISHED_STATUSES = (Status.PENDING.value, Status.EVALUATING.value)
SUITES = ("discover", "heldout")

_CANDIDATE_JSON = ("parents", "per_config", "heldout_per_config", "curve")
_CANDIDATE_REAL = (
    "fitness",
    "fitness_ci_low",
    "fitness_ci_high",
    "heldout_fitness",
    "heldout_ci_low",
    "heldout_ci_high",
    "seconds",
)
_CANDIDATE_INT = ("generation", "island", "n_seeds", "heldout_n_seeds", "error_line")
_CANDIDATE_SELECT = "SELECT c.*, r.task AS task FROM candidates c JOIN runs r ON r.id = c.run_id"
_CANDIDATE_TEXT = (
    "name",
    "thought",
    "code",
    "code_hash",
    "proposer",
    "status",
    "failed_stage",
    "reason",
    "error_class",
    "error_message",
    "feedback_shown",
    "evaluated_at",
)
UPDATABLE_CANDIDATE_FIELDS = frozenset(
    (*_CANDIDATE_JSON, *_CANDIDATE_REAL, *_CANDIDATE_INT, *_CANDIDATE_TEXT, "is_baseline")
)
"""Fields ``update_candidate`` accepts (JSON ones also under their ``x_json`` column name)."""

_RUN_SELECT = """
SELECT runs.*,
       (SELECT COUNT(*) FROM candidates c WHERE c.run_id = runs.id) AS n_candidates,
       (SELECT MAX(c.fitness) FROM candidates c
         WHERE c.run_id = runs.id AND c.status = 'ok') AS best_fitness,
       (SELECT COALESCE(SUM(l.cost_usd), 0.0) FROM llm_calls l
         WHERE l.run_id = runs.id) AS cost_usd
FROM runs
"""


@dataclass(frozen=True)
class Added:
    """What ``add_candidate`` did: the candidate's id, and whether it already existed."""

    id: str
    duplicate: bool


def _new_run_id() -> str:
    return f"r-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _new_candidate_id() -> str:
    return f"c-{secrets.token_hex(4)}"


def _text(value: Any) -> str | None:
    """Text for a TEXT column: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return to_json(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _statuses(status: str | Status | Iterable[str | Status] | None) -> list[str] | None:
    if status is None:
        return None
    wanted = [status] if isinstance(status, str) else list(status)
    wanted = [s.value if isinstance(s, Status) else s for s in wanted]
    unknown = [s for s in wanted if s not in CANDIDATE_STATUSES]
    if unknown:
        raise ValueError(f"unknown candidate status {unknown[0]!r}; expected one of {CANDIDATE_STATUSES}")
    return wanted


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:  # the connection already rolled back (or is gone)
            pass


class Archive:
    """A discovery archive file, opened for writing (created and migrated if needed).

    ``Archive(path)`` creates the file (and its parent directories) when missing, switches
    it to WAL mode and migrates an older schema. ``Archive.open_readonly(path)`` only
    reads. Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        readonly: bool = False,
    ) -> None:
        """Open ``path``; ``busy_timeout`` is in seconds. Raises ``ArchiveError``.

        Prefer ``Archive.open_readonly(path)`` to ``readonly=True``.
        """
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._db: Database | None = None
        self.schema_version = 0
        self._db, self.schema_version = self._open()

    @classmethod
    def open_readonly(cls, path: str | Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Archive:
        """Open an existing archive for reading only: never creates, migrates or writes it.

        Raises ``ArchiveError`` when the file is missing, is not an archive, or has a schema
        other than the one this code knows (older: open it once for writing to migrate).
        """
        return cls(path, busy_timeout=busy_timeout, readonly=True)

    # ------------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        options: dict[str, Any] = {
            "timeout": self.busy_timeout,
            "isolation_level": None,  # we issue BEGIN/COMMIT ourselves
            "check_same_thread": False,  # shared by threads under self._lock
        }
        if self.readonly:
            if not self.path.is_file():
                raise ArchiveError(f"no archive at {self.path}")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            return sqlite3.connect(uri, uri=True, **options)
        if self.path.is_dir():
            raise ArchiveError(f"{self.path} is a directory, not an archive file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(str(self.path), **options)

    def _open(self) -> tuple[Database, int]:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            db = Database(conn, execute_plugins=False)
            # Touch the file before anything else: garbage or a lock fails here, unchanged.
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            latest = schema.latest_version()
            if self.readonly:
                conn.execute("PRAGMA query_only = ON")
                version = schema.check_version(db, self.path, latest)
                if version == 0:
                    raise ArchiveError(f"{self.path} is not a discovery archive (empty database)")
                if version < latest:
                    raise ArchiveError(
                        f"archive schema v{version} is older than this discovery (v{latest}); "
                        "open it once for writing to migrate it"
                    )
            else:
                # Refuse a foreign or newer file before switching its journal mode.
                schema.check_version(db, self.path, latest)
                db.enable_wal()
                conn.execute("PRAGMA synchronous = NORMAL")
                version = schema.migrate(db, self.path)  # with foreign keys off: see schema
            conn.execute("PRAGMA foreign_keys = ON")
            return db, version
        except ArchiveError:
            if conn is not None:
                conn.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                _rollback(conn)
                conn.close()
            raise from_sqlite(exc, self.path, self.busy_timeout) from exc

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise ``ArchiveError``."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "read-write"
        return f"Archive({str(self.path)!r}, {mode}, schema v{self.schema_version})"

    @property
    def db(self) -> Database:
        """The underlying ``sqlite_utils.Database``, for ad-hoc reads by one thread at a time."""
        return self._require_open()

    def _require_open(self) -> Database:
        if self._db is None:
            raise ArchiveError(f"archive {self.path} is closed")
        return self._db

    # ------------------------------------------------------------ transactions

    @contextmanager
    def _reading(self) -> Iterator[Database]:
        """Hold the lock and one read snapshot; translate SQLite errors."""
        with self._transaction("BEGIN") as db:
            yield db

    @contextmanager
    def _writing(self, what: str) -> Iterator[Database]:
        """Hold the lock and one ``BEGIN IMMEDIATE`` transaction: committed, or rolled back."""
        if self.readonly:
            raise ArchiveError(f"archive {self.path} is open read-only; cannot {what}")
        with self._transaction("BEGIN IMMEDIATE") as db:
            yield db

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Database]:
        """Under the lock: ``begin``, the caller's statements, ``COMMIT`` (or a rollback on any error)."""
        with self._lock:
            db = self._require_open()
            conn = db.conn
            try:
                conn.execute(begin)
                try:
                    yield db
                except BaseException:
                    _rollback(conn)
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise from_sqlite(exc, self.path, self.busy_timeout) from exc

    @staticmethod
    def _exists(db: Database, table: str, row_id: Any) -> bool:
        return db.execute(f"SELECT 1 FROM {table} WHERE id = ?", [row_id]).fetchone() is not None

    # --------------------------------------------------------------------- runs

    def create_run(
        self,
        task: str,
        config: dict[str, Any],
        seed: int | None = None,
        isolation: Sequence[str] = (),
        *,
        run_id: str | None = None,
    ) -> str:
        """Record a new run (status ``running``) and return its id, e.g. ``r-20261123-195300-ab12``.

        ``config`` is the full configuration used, ``isolation`` the sandbox notes (one line
        each). Pass ``run_id`` to choose the id (``ArchiveError`` if it is taken).
        """
        with self._writing("create a run") as db:
            if run_id is not None and self._exists(db, "runs", run_id):
                raise ArchiveError(f"run {run_id} already exists in {self.path}")
            new_id = run_id or _new_run_id()
            while self._exists(db, "runs", new_id):
                new_id = _new_run_id()
            db.table("runs").insert(
                {
                    "id": new_id,
                    "task": task,
                    "status": "running",
                    "config_json": to_json(config if config is not None else {}),
                    "started_at": now(),
                    "ended_at": None,
                    "isolation_json": to_json(list(isolation)),
                    "seed": _int(seed),
                    "message": "",
                }
            )
        return new_id

    def heldout_secret(self) -> str:
        """This archive's held-out secret (made on first use, then the same for every run and resume
        in this file): mixed into the held-out suite's environment seeds, so that they cannot be
        rebuilt from the public code and seeds. Never shown by the dashboard or exported."""
        import secrets

        with self._writing("read the held-out secret") as db:
            row = db.execute("SELECT value FROM secrets WHERE name = 'heldout'").fetchone()
            if row is not None:
                return str(row[0])
            value = secrets.token_hex(16)
            db.execute("INSERT INTO secrets (name, value) VALUES ('heldout', ?)", [value])
            return value

    def finish_run(self, run_id: str, status: str, message: str = "") -> None:
        """End a run: ``status`` is finished, stopped or failed; ``message`` one line for humans."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"cannot finish a run with status {status!r}; use finished, stopped or failed")
        with self._writing("finish a run") as db:
            cursor = db.execute(
                "UPDATE runs SET status = ?, ended_at = ?, message = ? WHERE id = ?",
                [status, now(), message or "", run_id],
            )
            if cursor.rowcount != 1:
                raise ArchiveError(f"unknown run {run_id} in {self.path}")

    def reopen_run(self, run_id: str, message: str = "resumed") -> None:
        """Mark a stopped, failed or killed run as running again (``--resume``)."""
        with self._writing("reopen a run") as db:
            cursor = db.execute(
                "UPDATE runs SET status = 'running', ended_at = NULL, message = ? WHERE id = ?",
                [message, run_id],
            )
            if cursor.rowcount != 1:
                raise ArchiveError(f"unknown run {run_id} in {self.path}")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """One run with ``config`` and ``isolation`` decoded, plus ``n_candidates``,
        ``best_fitness`` (best ``ok`` candidate) and ``cost_usd``; ``None`` if unknown."""
        with self._reading() as db:
            rows = list(db.query(_RUN_SELECT + " WHERE runs.id = ?", [run_id]))
        return decode_row(rows[0]) if rows else None

    def list_runs(self, task: str | None = None) -> list[dict[str, Any]]:
        """All runs (of ``task`` if given), newest first, shaped like ``get_run``."""
        sql, params = _RUN_SELECT, []
        if task is not None:
            sql += " WHERE runs.task = ?"
            params.append(task)
        sql += " ORDER BY runs.started_at DESC, runs.rowid DESC"
        with self._reading() as db:
            return [decode_row(r) for r in db.query(sql, params)]

    # --------------------------------------------------------------- candidates

    def add_candidate(
        self,
        run_id: str,
        *,
        name: str,
        code: str,
        code_hash: str,
        proposer: str,
        thought: str = "",
        parents: Sequence[str] = (),
        generation: int = 0,
        island: int = 0,
        feedback_shown: str = "",
        is_baseline: bool = False,
        candidate_id: str | None = None,
    ) -> Added:
        """Store a proposed candidate with status ``pending``.

        ``code_hash`` is the caller's normalized hash of ``code``; if the run already has a
        candidate with that hash, nothing is written and ``Added(existing_id, duplicate=True)``
        is returned. ``feedback_shown`` is the exact prompt/feedback the proposer saw.
        """
        with self._writing("add a candidate") as db:
            if not self._exists(db, "runs", run_id):
                raise ArchiveError(f"unknown run {run_id} in {self.path}")
            row = db.execute(
                "SELECT id FROM candidates WHERE run_id = ? AND code_hash = ? AND duplicate_of IS NULL",
                [run_id, code_hash],
            ).fetchone()
            if row is not None:
                return Added(row[0], True)
            new_id = self._insert_candidate(
                db,
                run_id,
                candidate_id,
                code=code,
                code_hash=code_hash,
                status=Status.PENDING,
                name=name,
                thought=thought,
                parents=parents,
                generation=generation,
                island=island,
                proposer=proposer,
                feedback_shown=feedback_shown,
                is_baseline=is_baseline,
            )
        return Added(new_id, False)

    def add_unusable(self, run_id: str, *, reason: str, name: str, proposer: str, **proposal: Any) -> str:
        """Store an LLM reply that held no usable code: status ``parse`` at stage ``reply``, no code hash.

        ``proposal`` takes ``add_candidate``'s other keywords (thought, parents, generation,
        island, feedback_shown). Returns the new candidate's id.
        """
        with self._writing("add an unusable reply") as db:
            if not self._exists(db, "runs", run_id):
                raise ArchiveError(f"unknown run {run_id} in {self.path}")
            return self._insert_candidate(
                db,
                run_id,
                None,
                code="",
                code_hash=None,
                status=Status.PARSE,
                name=name,
                proposer=proposer,
                failed_stage="reply",
                reason=reason,
                evaluated_at=now(),
                **proposal,
            )

    def add_duplicate(
        self, run_id: str, *, original_id: str, code: str, code_hash: str, name: str, proposer: str, **proposal: Any
    ) -> str:
        """Store a proposal whose normalized code equals ``original_id``'s: status ``duplicate``, not evaluated.

        The row keeps its own code, name and prompt (what the LLM was shown and said) and
        points at the original through ``duplicate_of``. Returns the new candidate's id.
        """
        with self._writing("add a duplicate") as db:
            row = db.execute(
                "SELECT name FROM candidates WHERE id = ? AND run_id = ?", [original_id, run_id]
            ).fetchone()
            if row is None:
                raise ArchiveError(f"unknown candidate {original_id} of run {run_id} in {self.path}")
            return self._insert_candidate(
                db,
                run_id,
                None,
                code=code,
                code_hash=code_hash,
                status=Status.DUPLICATE,
                name=name,
                proposer=proposer,
                duplicate_of=original_id,
                failed_stage="dedup",
                evaluated_at=now(),
                reason=f"same normalized syntax tree as {original_id} ({row[0]}); not evaluated",
                **proposal,
            )

    def _insert_candidate(
        self,
        db: Database,
        run_id: str,
        candidate_id: str | None,
        *,
        code: str,
        code_hash: str | None,
        status: Status,
        name: str,
        proposer: str,
        thought: str = "",
        parents: Sequence[str] = (),
        generation: int = 0,
        island: int = 0,
        feedback_shown: str = "",
        is_baseline: bool = False,
        **outcome: Any,
    ) -> str:
        """Insert one candidate row inside the caller's write transaction; return its id."""
        if candidate_id is not None and self._exists(db, "candidates", candidate_id):
            raise ArchiveError(f"candidate {candidate_id} already exists in {self.path}")
        new_id = candidate_id or _new_candidate_id()
        while self._exists(db, "candidates", new_id):
            new_id = _new_candidate_id()
        db.table("candidates").insert(
            {
                "id": new_id,
                "run_id": run_id,
                "name": name,
                "thought": thought or "",
                "code": code,
                "code_hash": code_hash,
                "parents_json": to_json([str(p) for p in parents]),
                "generation": int(generation),
                "island": int(island),
                "proposer": proposer,
                "status": status.value,
                "feedback_shown": feedback_shown or "",
                "created_at": now(),
                "is_baseline": int(bool(is_baseline)),
                **outcome,
            }
        )
        return new_id

    def update_candidate(self, candidate_id: str, **fields: Any) -> None:
        """Set some fields of a candidate (see ``UPDATABLE_CANDIDATE_FIELDS``).

        JSON fields take Python values, under either name (``per_config=`` or
        ``per_config_json=``). Moving ``status`` out of pending/evaluating stamps
        ``evaluated_at`` unless it is given. Unknown fields or statuses raise ``ValueError``;
        an unknown candidate raises ``ArchiveError``.
        """
        columns: dict[str, Any] = {}
        for key, value in fields.items():
            if isinstance(value, Status):
                value = value.value
            name = key[: -len("_json")] if key.endswith("_json") else key
            if name in _CANDIDATE_JSON:
                columns[f"{name}_json"] = to_json(value)
            elif key in _CANDIDATE_REAL:
                columns[key] = to_real(value)
            elif key in _CANDIDATE_INT:
                columns[key] = _int(value)
            elif key == "is_baseline":
                columns[key] = int(bool(value))
            elif key in _CANDIDATE_TEXT:
                columns[key] = _text(value)
            else:
                raise ValueError(f"cannot update candidate field {key!r}")
        if "status" in columns:
            _statuses(columns["status"])
            if columns["status"] not in UNFINISHED_STATUSES and "evaluated_at" not in columns:
                columns["evaluated_at"] = now()
        if not columns:
            return
        with self._writing("update a candidate") as db:
            try:
                db.table("candidates").update(candidate_id, columns)
            except NotFoundError:
                raise ArchiveError(f"unknown candidate {candidate_id} in {self.path}") from None

    def get_candidate(self, candidate_id: str) -> Candidate | None:
        """One candidate, or ``None`` if unknown."""
        with self._reading() as db:
            rows = list(db.query(f"{_CANDIDATE_SELECT} WHERE c.id = ?", [candidate_id]))
        return Candidate.from_row(rows[0]) if rows else None

    def candidates(
        self,
        run_id: str,
        status: str | Status | Iterable[str | Status] | None = None,
        order_by_fitness: bool = True,
        limit: int | None = None,
    ) -> list[Candidate]:
        """The run's candidates (with one of ``status`` if given).

        Best fitness first (no fitness last) by default, else in creation order.
        """
        wanted = _statuses(status)
        sql = f"{_CANDIDATE_SELECT} WHERE c.run_id = ?"
        params: list[Any] = [run_id]
        if wanted is not None:
            sql += f" AND c.status IN ({', '.join('?' for _ in wanted)})"
            params.extend(wanted)
        if order_by_fitness:
            sql += " ORDER BY c.fitness IS NULL, c.fitness DESC, c.created_at, c.rowid"
        else:
            sql += " ORDER BY c.created_at, c.rowid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._reading() as db:
            return [Candidate.from_row(r) for r in db.query(sql, params)]

    def unfinished_candidates(self, run_id: str) -> list[Candidate]:
        """The run's candidates still pending or evaluating, oldest first (to resume them)."""
        return self.candidates(run_id, status=UNFINISHED_STATUSES, order_by_fitness=False)

    def leaderboard(self, run_id: str | None = None, task: str | None = None, limit: int = 50) -> list[Candidate]:
        """Evaluated (status ``ok``) candidates with a fitness, best first, across runs.

        Baselines are included and flagged by ``is_baseline``. Filter by ``run_id`` and/or ``task``.
        """
        sql = f"{_CANDIDATE_SELECT} WHERE c.status = 'ok' AND c.fitness IS NOT NULL"
        params: list[Any] = []
        if run_id is not None:
            sql += " AND c.run_id = ?"
            params.append(run_id)
        if task is not None:
            sql += " AND r.task = ?"
            params.append(task)
        sql += " ORDER BY c.fitness DESC, c.fitness_ci_low DESC, c.created_at, c.rowid LIMIT ?"
        params.append(int(limit))
        with self._reading() as db:
            return [Candidate.from_row(r) for r in db.query(sql, params)]

    def lineage(self, candidate_id: str) -> list[Ancestor]:
        """The candidate and all its ancestors up to the roots, breadth first.

        Each entry is an ``Ancestor(depth, candidate)`` (depth 0 for ``candidate_id`` itself, 1 for
        its parents, ...). A candidate reached by two paths appears once, at its smallest
        depth; parents missing from the archive are skipped; ``[]`` for an unknown id.
        """
        out: list[Ancestor] = []
        seen = {candidate_id}
        frontier = [candidate_id]
        depth = 0
        with self._reading() as db:
            while frontier:
                marks = ", ".join("?" for _ in frontier)
                rows = {
                    r["id"]: Candidate.from_row(r)
                    for r in db.query(f"{_CANDIDATE_SELECT} WHERE c.id IN ({marks})", frontier)
                }
                next_frontier: list[str] = []
                for cid in frontier:  # keep the parents' listed order
                    row = rows.get(cid)
                    if row is None:
                        continue
                    out.append(Ancestor(depth, row))
                    for parent in row.parents:
                        if parent not in seen:
                            seen.add(parent)
                            next_frontier.append(parent)
                frontier = next_frontier
                depth += 1
        return out

    # -------------------------------------------------------------- evaluations

    def record_evaluation(
        self,
        candidate_id: str,
        suite: str,
        config: str,
        seed: int,
        stage: str = "full",
        fitness: float | None = None,
        metrics: dict[str, Any] | None = None,
        curve: Any = None,
        seconds: float | None = None,
        *,
        task_version: str | None = None,
        code_hash: str | None = None,
        device_kind: str | None = None,
        trainer_path: str | None = None,
    ) -> bool:
        """Keep one finished (configuration, seed) evaluation of a candidate, exactly once.

        Returns ``False`` (and writes nothing) if that (candidate, suite, config, seed) was
        already recorded, e.g. when a resumed run re-evaluates it. ``stage`` says which
        step produced it (``cascade``, ``full``, ``extra``). ``task_version``, ``code_hash`` (default:
        the candidate's), ``device_kind`` and ``trainer_path`` say what the result is a pure function
        of and how it trained; a row without a task version or a device kind is never reused.
        """
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
        with self._writing("record an evaluation") as db:
            owner = db.execute(
                "SELECT r.task, c.code_hash FROM candidates c JOIN runs r ON r.id = c.run_id WHERE c.id = ?",
                [candidate_id],
            ).fetchone()
            if owner is None:
                raise ArchiveError(f"unknown candidate {candidate_id} in {self.path}")
            cursor = db.execute(
                "INSERT OR IGNORE INTO evaluations (candidate_id, suite, config, seed, stage, fitness,"
                " metrics_json, curve_json, seconds, created_at, task, task_version, code_hash, device_kind,"
                " trainer_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    candidate_id,
                    suite,
                    str(config),
                    int(seed),
                    stage,
                    to_real(fitness),
                    to_json(metrics),
                    to_json(curve),
                    to_real(seconds),
                    now(),
                    owner[0],
                    task_version or None,
                    code_hash or owner[1],
                    device_kind or None,
                    trainer_path or None,
                ],
            )
            return cursor.rowcount == 1

    def reusable(
        self,
        task: str,
        task_version: str,
        code_hash: str,
        suite: str,
        device_kind: str,
        cells: Iterable[tuple[str, int]],
        *,
        exclude: str | None = None,
    ) -> dict[tuple[str, int], Evaluation]:
        """Stored results of ``cells`` ((config, seed) pairs) for the same task version, normalized
        code, suite and device kind, by cell: trained rows first, else a copy of one (whose
        ``reused_from`` names the trained row). ``exclude``: a candidate whose own rows do not count
        (the one asking). Empty when nothing matches or the version, hash or device is empty."""
        wanted = {(str(config), int(seed)) for config, seed in cells}
        if not (wanted and task_version and code_hash and device_kind):
            return {}
        configs = sorted({config for config, _ in wanted})
        sql = (
            "SELECT * FROM evaluations WHERE task = ? AND task_version = ? AND code_hash = ? AND suite = ?"
            f" AND device_kind = ? AND config IN ({', '.join('?' for _ in configs)}) AND candidate_id != ?"
            " ORDER BY reused_from IS NOT NULL, id"
        )
        params = [task, task_version, code_hash, suite, device_kind, *configs, exclude or ""]
        found: dict[tuple[str, int], Evaluation] = {}
        with self._reading() as db:
            for row in db.query(sql, params):
                evaluation = Evaluation.from_row(row)
                cell = (evaluation.config, evaluation.seed)
                if cell in wanted and cell not in found:
                    found[cell] = evaluation
        return found

    def has_reusable(self, task: str, task_version: str, code_hash: str, device_kind: str) -> bool:
        """Whether any result of this code was stored for this task version and device kind (then it
        trained, so it passed the task's contract check: every job checks before it trains)."""
        if not (task_version and code_hash and device_kind):
            return False
        with self._reading() as db:
            row = db.execute(
                "SELECT 1 FROM evaluations WHERE task = ? AND task_version = ? AND code_hash = ?"
                " AND device_kind = ? LIMIT 1",
                [task, task_version, code_hash, device_kind],
            ).fetchone()
        return row is not None

    def reuse_evaluation(self, candidate_id: str, source: Evaluation, stage: str) -> bool:
        """Record ``source``'s result as the candidate's own evaluation of the same cell, at ``stage``,
        with ``reused_from`` the trained row it goes back to (a copy of a copy points at the original).

        The stored row is copied, not the record passed in. Returns ``False`` (writing nothing) when the
        candidate already has that cell. Raises ``ArchiveError`` for an unknown candidate or source, and
        ``ValueError`` when the source belongs to another task (a bug of the caller)."""
        if source.id is None:
            raise ValueError("cannot reuse an evaluation that was never stored (it has no id)")
        with self._writing("reuse an evaluation") as db:
            owner = db.execute(
                "SELECT r.task FROM candidates c JOIN runs r ON r.id = c.run_id WHERE c.id = ?", [candidate_id]
            ).fetchone()
            if owner is None:
                raise ArchiveError(f"unknown candidate {candidate_id} in {self.path}")
            root_id, seen = int(source.id), set()
            while True:  # up the chain of copies to the trained row
                rows = list(db.query("SELECT * FROM evaluations WHERE id = ?", [root_id]))
                if not rows:
                    raise ArchiveError(f"unknown evaluation {root_id} in {self.path}")
                columns = rows[0]
                if columns["reused_from"] is None:
                    break
                if root_id in seen:
                    raise ArchiveError(f"evaluation {root_id} in {self.path} is reused from itself")
                seen.add(root_id)
                root_id = int(columns["reused_from"])
            if columns["task"] != owner[0]:
                raise ValueError(f"evaluation {root_id} is of task {columns['task']!r}, not {owner[0]!r}")
            cursor = db.execute(
                "INSERT OR IGNORE INTO evaluations (candidate_id, suite, config, seed, stage, fitness,"
                " metrics_json, curve_json, seconds, created_at, task, task_version, code_hash, device_kind,"
                " trainer_path, reused_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    candidate_id,
                    columns["suite"],
                    columns["config"],
                    columns["seed"],
                    stage,
                    columns["fitness"],
                    columns["metrics_json"],
                    columns["curve_json"],
                    columns["seconds"],
                    now(),
                    columns["task"],
                    columns["task_version"],
                    columns["code_hash"],
                    columns["device_kind"],
                    columns["trainer_path"],
                    root_id,
                ],
            )
            return cursor.rowcount == 1

    def evaluations(self, candidate_id: str, suite: str | None = None) -> list[Evaluation]:
        """The candidate's recorded evaluations (of ``suite`` if given) by suite, config, seed."""
        sql, params = "SELECT * FROM evaluations WHERE candidate_id = ?", [candidate_id]
        if suite is not None:
            sql += " AND suite = ?"
            params.append(suite)
        sql += " ORDER BY suite, config, seed"
        with self._reading() as db:
            return [Evaluation.from_row(r) for r in db.query(sql, params)]

    def done_keys(self, candidate_id: str, suite: str) -> set[tuple[str, int]]:
        """The (config, seed) pairs of ``suite`` already recorded for the candidate."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT config, seed FROM evaluations WHERE candidate_id = ? AND suite = ?",
                [candidate_id, suite],
            ).fetchall()
        return {(config, int(seed)) for config, seed in rows}

    # ---------------------------------------------------------------- LLM calls

    def record_llm_call(
        self,
        run_id: str,
        candidate_id: str | None,
        model: str,
        prompt: Any,
        reply: Any,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cost_usd: float | None = None,
        latency_s: float | None = None,
        error: str | None = None,
    ) -> int:
        """Keep one LLM call (failed ones too, with ``error``); return its id.

        ``prompt`` and ``reply`` are stored verbatim when strings, else as JSON (a list of
        chat messages, say).
        """
        with self._writing("record an LLM call") as db:
            if not self._exists(db, "runs", run_id):
                raise ArchiveError(f"unknown run {run_id} in {self.path}")
            if candidate_id is not None and not self._exists(db, "candidates", candidate_id):
                raise ArchiveError(f"unknown candidate {candidate_id} in {self.path}")
            table = db.table("llm_calls")
            table.insert(
                {
                    "run_id": run_id,
                    "candidate_id": candidate_id,
                    "model": model,
                    "prompt": _text(prompt) or "",
                    "reply": _text(reply),
                    "prompt_tokens": _int(prompt_tokens),
                    "completion_tokens": _int(completion_tokens),
                    "cost_usd": to_real(cost_usd),
                    "latency_s": to_real(latency_s),
                    "error": _text(error),
                    "created_at": now(),
                }
            )
            rowid = table.last_rowid
            assert rowid is not None, "set by the insert above"
            return int(rowid)

    def run_cost(self, run_id: str) -> float:
        """Total ``cost_usd`` of the run's LLM calls (0.0 when none)."""
        with self._reading() as db:
            row = db.execute("SELECT COALESCE(SUM(cost_usd), 0.0) FROM llm_calls WHERE run_id = ?", [run_id]).fetchone()
        return float(row[0])

    def llm_calls(self, run_id: str) -> list[dict[str, Any]]:
        """The run's LLM calls in the order they were made."""
        with self._reading() as db:
            rows = db.query("SELECT * FROM llm_calls WHERE run_id = ? ORDER BY id", [run_id])
            return [decode_row(r) for r in rows]
