"""The durable queue and record of every query. The only module that speaks SQL.

SQLite in WAL mode with `synchronous=FULL`: a submission acknowledged with 202 survives a kill -9 or a power
cut. The queue is the table: FIFO by `seq`, claimed with a conditional UPDATE so a row moves
queued -> running once, and every terminal write is conditional on the row not being terminal yet, so each
query reaches exactly one terminal state whatever races (cancel vs. finish, restart vs. finish).
An idempotency key is a row whose primary key is (client, key), written in the transaction that inserts
its query, so one key can never name two queries. The queue limit is checked in that transaction too (a
count on the status index under the write lock), so a burst of submissions cannot overshoot it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.launchers.base import QueryLimits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    operation    TEXT NOT NULL,
    request      TEXT NOT NULL,
    limits       TEXT NOT NULL,
    status       TEXT NOT NULL,
    result       TEXT,
    error        TEXT,
    placement    TEXT NOT NULL DEFAULT '{}',
    attempts     INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL
);
CREATE INDEX IF NOT EXISTS queries_by_status ON queries (status, seq);
CREATE INDEX IF NOT EXISTS queries_by_operation ON queries (operation, seq);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    client      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    query_id    TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (client, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);
"""

_ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Row:
    seq: int
    id: str
    operation: str
    request: dict[str, Any]
    limits: QueryLimits
    status: str
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    placement: dict[str, Any]
    attempts: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _row(raw: sqlite3.Row) -> Row:
    return Row(
        seq=raw["seq"],
        id=raw["id"],
        operation=raw["operation"],
        request=json.loads(raw["request"]),
        limits=QueryLimits.from_stored(json.loads(raw["limits"])),
        status=raw["status"],
        result=_loads(raw["result"]),
        error=_loads(raw["error"]),
        placement=json.loads(raw["placement"]),
        attempts=raw["attempts"],
        submitted_at=raw["submitted_at"],
        started_at=raw["started_at"],
        finished_at=raw["finished_at"],
    )


class QueueFull(Exception):
    """The queue already holds the most queries it may; nothing was stored."""

    def __init__(self, queued: int) -> None:
        super().__init__(f"{queued} queries queued")
        self.queued = queued


def _insert(
    db: sqlite3.Connection,
    query_id: str,
    operation: str,
    request: dict[str, Any],
    limits: QueryLimits,
    *,
    max_queued: int | None,
) -> Row:
    if max_queued is not None:
        (queued,) = db.execute("SELECT COUNT(*) FROM queries WHERE status = 'queued'").fetchone()
        if queued >= max_queued:
            raise QueueFull(queued)
    db.execute(
        "INSERT INTO queries (id, operation, request, limits, status, submitted_at)"
        " VALUES (?, ?, ?, ?, 'queued', ?)",
        (query_id, operation, json.dumps(request), json.dumps(limits.stored()), time.time()),
    )
    return _row(db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone())


@dataclass(frozen=True)
class IdempotencyKey:
    """A client's `Idempotency-Key` and the fingerprint of the request it first came with."""

    client: str
    key: str
    fingerprint: str


class KeyReused(Exception):
    """The idempotency key is taken by a different request."""


def _keyed(db: sqlite3.Connection, key: IdempotencyKey, born_after: float) -> Row | None:
    raw = db.execute(
        "SELECT k.fingerprint AS fingerprint, q.* FROM idempotency_keys k JOIN queries q ON q.id = k.query_id"
        " WHERE k.client = ? AND k.key = ? AND k.created_at >= ?",
        (key.client, key.key, born_after),
    ).fetchone()
    if raw is None:
        return None
    if raw["fingerprint"] != key.fingerprint:
        raise KeyReused(key.key)
    return _row(raw)


class StoreUnavailable(Exception):
    """The store cannot write just now (disk full, I/O error, locked past the timeout); nothing was written,
    and the same write may succeed later."""


# Primary result codes (the low byte of an extended code) of a write that failed for want of room or access.
_TRANSIENT_FAILURES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
)


@dataclass(frozen=True)
class Recovery:
    requeued: list[str]
    failed: list[str]


class Store:
    """One SQLite connection shared by the controller's threads, serialised by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing; `StoreUnavailable` if SQLite could not write (a failed COMMIT included)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    # After SQLITE_FULL or an I/O error SQLite may have rolled back already.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF in _TRANSIENT_FAILURES:
                    raise StoreUnavailable(str(exc)) from exc
                raise

    def ping(self) -> None:
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def insert(
        self,
        query_id: str,
        operation: str,
        request: dict[str, Any],
        limits: QueryLimits,
        *,
        max_queued: int | None = None,
    ) -> Row:
        """Queue a query; `QueueFull` (nothing stored) if `max_queued` are queued already."""
        with self._transaction() as db:
            return _insert(db, query_id, operation, request, limits, max_queued=max_queued)

    def insert_once(
        self,
        key: IdempotencyKey,
        ttl_seconds: float,
        *,
        query_id: str,
        operation: str,
        request: dict[str, Any],
        limits: QueryLimits,
        max_queued: int | None = None,
    ) -> tuple[Row, bool]:
        """Insert the query unless the key already names one: then that one, and False.

        The key's primary key decides, not a lookup beforehand, so concurrent submissions with one key
        (from any connection to this file) create one query. Raises `KeyReused` for another request, and
        `QueueFull` as `insert` does (the key is then not kept).
        """
        with self._transaction() as db:
            now = time.time()
            db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - ttl_seconds,))
            claimed = db.execute(
                "INSERT INTO idempotency_keys (client, key, fingerprint, query_id, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (client, key) DO NOTHING",
                (key.client, key.key, key.fingerprint, query_id, now),
            ).rowcount
            if claimed:
                return _insert(db, query_id, operation, request, limits, max_queued=max_queued), True
            existing = _keyed(db, key, now - ttl_seconds)
        assert existing is not None, "the conflicting key is alive: expired ones were deleted above"
        return existing, False

    def find_key(self, key: IdempotencyKey, ttl_seconds: float) -> Row | None:
        """The query a live key names, None if the key is unknown or expired; `KeyReused` if taken."""
        with self._lock:
            return _keyed(self._db, key, time.time() - ttl_seconds)

    def get(self, query_id: str) -> Row | None:
        with self._lock:
            raw = self._db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
        return None if raw is None else _row(raw)

    def claim_next(self) -> Row | None:
        """Move the oldest queued query to running and count the attempt."""
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = 'running', attempts = attempts + 1, started_at = ?"
                " WHERE seq = (SELECT seq FROM queries WHERE status = 'queued' ORDER BY seq LIMIT 1)"
                " RETURNING *",
                (time.time(),),
            ).fetchone()
        return None if raw is None else _row(raw)

    def finish(
        self,
        query_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: Mapping[str, object] | None = None,
        placement: dict[str, Any] | None = None,
    ) -> Row | None:
        """Record the terminal state unless the query already has one: the finished row if this call
        decided it, else None."""
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = ?, result = ?, error = ?, placement = COALESCE(?, placement),"
                " finished_at = ? WHERE id = ? AND status IN (?, ?) RETURNING *",
                (
                    status,
                    None if result is None else json.dumps(result),
                    None if error is None else json.dumps(dict(error)),
                    None if placement is None else json.dumps(placement),
                    time.time(),
                    query_id,
                    *_ACTIVE,
                ),
            ).fetchone()
        return None if raw is None else _row(raw)

    def cancel_queued(self, query_id: str, error: Mapping[str, object]) -> Row | None:
        """Cancel the query if it is still queued: the cancelled row, else None."""
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = 'cancelled', error = ?, finished_at = ?"
                " WHERE id = ? AND status = 'queued' RETURNING *",
                (json.dumps(dict(error)), time.time(), query_id),
            ).fetchone()
        return None if raw is None else _row(raw)

    def requeue(self, query_id: str) -> bool:
        """Give a running query back to the queue without counting the attempt (graceful shutdown)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE queries SET status = 'queued', attempts = attempts - 1, started_at = NULL"
                " WHERE id = ? AND status = 'running'",
                (query_id,),
            )
        return cursor.rowcount == 1

    def recover(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        """After a crash: queries left running go back to the queue while they have attempts left."""
        with self._transaction() as db:
            requeued = [
                r["id"]
                for r in db.execute(
                    "UPDATE queries SET status = 'queued', started_at = NULL"
                    " WHERE status = 'running' AND attempts < ? RETURNING id",
                    (max_attempts,),
                )
            ]
            failed = [
                r["id"]
                for r in db.execute(
                    "UPDATE queries SET status = 'failed', error = ?, finished_at = ?"
                    " WHERE status = 'running' RETURNING id",
                    (json.dumps(dict(error)), time.time()),
                )
            ]
        return Recovery(requeued=requeued, failed=failed)

    def active_ids(self) -> list[str]:
        """Queries queued or running, oldest first."""
        with self._lock:
            raws = self._db.execute(
                "SELECT id FROM queries WHERE status IN (?, ?) ORDER BY seq", _ACTIVE
            ).fetchall()
        return [raw["id"] for raw in raws]

    def page(self, *, operation: str, status: str | None, limit: int, before_seq: int | None) -> list[Row]:
        """Newest first; `before_seq` is the cursor of the previous page."""
        clauses: list[str] = ["operation = ?"]
        params: list[object] = [operation]
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        sql = f"SELECT * FROM queries WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?"
        with self._lock:
            raws = self._db.execute(sql, (*params, limit)).fetchall()
        return [_row(raw) for raw in raws]

    def recent_run_seconds(self, limit: int) -> list[float]:
        """How long the latest `limit` queries that ran to an end (succeeded or failed) ran, newest first.

        NOT INDEXED: walking the table back from the newest row stops after `limit` matches (past at most the
        active rows); the status index would sort every finished query ever stored.
        """
        with self._lock:
            raws = self._db.execute(
                "SELECT finished_at - started_at AS seconds FROM queries NOT INDEXED"
                " WHERE status IN ('succeeded', 'failed') AND started_at IS NOT NULL"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [raw["seconds"] for raw in raws]

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            raws = self._db.execute("SELECT status, COUNT(*) AS n FROM queries GROUP BY status").fetchall()
        return {raw["status"]: raw["n"] for raw in raws}
