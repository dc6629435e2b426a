"""The embedded backend: one SQLite file, one controller.

WAL mode with `synchronous=FULL`: a submission acknowledged with 202 survives a kill -9 or a power cut.
One connection shared by the controller's threads, serialised by a lock; every write is a
`BEGIN IMMEDIATE` transaction, so the queue limit and the cap are checked under the write lock.
There is one replica, so there is no heartbeat: `recover` at start takes back whatever ran.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.launchers.base import QueryLimits
from controller.queue.store import migrations
from controller.queue.store.base import (
    ACTIVE,
    IdempotencyKey,
    KeyReused,
    QueueFull,
    Recovery,
    Row,
    Store,
    StoreUnavailable,
    Subscriber,
    dumps,
    row_from,
)


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
        (query_id, operation, dumps(request), dumps(limits.stored()), time.time()),
    )
    return row_from(db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone())


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
    return row_from(raw)


# Primary result codes (the low byte of an extended code) of a write that failed for want of room or access.
_TRANSIENT_FAILURES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
)


class SqliteStore(Store):
    """One SQLite connection shared by the controller's threads, serialised by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.description = f"sqlite:{path}"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute(migrations.VERSION_TABLE)
            found = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            todo = migrations.pending(found, migrations.SQLITE)
            for number, script in todo:
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

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
        with self._lock:
            return _keyed(self._db, key, time.time() - ttl_seconds)

    def get(self, query_id: str) -> Row | None:
        with self._lock:
            raw = self._db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
        return None if raw is None else row_from(raw)

    def claim_next(self, max_running: int | None = None) -> Row | None:
        with self._transaction() as db:
            if max_running is not None:
                (running,) = db.execute("SELECT COUNT(*) FROM queries WHERE status = 'running'").fetchone()
                if running >= max_running:
                    return None
            raw = db.execute(
                "UPDATE queries SET status = 'running', attempts = attempts + 1, started_at = ?"
                " WHERE seq = (SELECT seq FROM queries WHERE status = 'queued' ORDER BY seq LIMIT 1)"
                " RETURNING *",
                (time.time(),),
            ).fetchone()
        return None if raw is None else row_from(raw)

    def finish(
        self,
        query_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: Mapping[str, object] | None = None,
        placement: dict[str, Any] | None = None,
        running_here: bool = False,
    ) -> Row | None:
        active = ("running", "running") if running_here else ACTIVE
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = ?, result = ?, error = ?, placement = COALESCE(?, placement),"
                " finished_at = ? WHERE id = ? AND status IN (?, ?) RETURNING *",
                (status, dumps(result), dumps(error), dumps(placement), time.time(), query_id, *active),
            ).fetchone()
        return None if raw is None else row_from(raw)

    def cancel_queued(self, query_id: str, error: Mapping[str, object]) -> Row | None:
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = 'cancelled', error = ?, finished_at = ?"
                " WHERE id = ? AND status = 'queued' RETURNING *",
                (dumps(error), time.time(), query_id),
            ).fetchone()
        return None if raw is None else row_from(raw)

    def request_cancel(self, query_id: str) -> bool:
        return False  # one controller: whatever runs, runs here

    def requeue(self, query_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE queries SET status = 'queued', attempts = attempts - 1, started_at = NULL"
                " WHERE id = ? AND status = 'running'",
                (query_id,),
            )
        return cursor.rowcount == 1

    def recover(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
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
                    (dumps(error), time.time()),
                )
            ]
        return Recovery(requeued=requeued, failed=failed)

    def heartbeat(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        return Recovery(requeued=[], failed=[])  # one controller: nobody else to take over from

    def retire(self) -> None:
        return None

    def subscribe(self, subscriber: Subscriber) -> None:
        return None  # one controller: it wakes itself

    def active_ids(self) -> list[str]:
        with self._lock:
            raws = self._db.execute(
                "SELECT id FROM queries WHERE status IN (?, ?) ORDER BY seq", ACTIVE
            ).fetchall()
        return [raw["id"] for raw in raws]

    def page(self, *, operation: str, status: str | None, limit: int, before_seq: int | None) -> list[Row]:
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
        return [row_from(raw) for raw in raws]

    def recent_run_seconds(self, limit: int) -> list[float]:
        """NOT INDEXED: walking the table back from the newest row stops after `limit` matches (past at most
        the active rows); the status index would sort every finished query ever stored."""
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
