"""The embedded backend: one SQLite file, one controller.

WAL mode with `synchronous=FULL`: a submission acknowledged with 202 survives a kill -9 or a power cut.
One connection shared by the controller's threads, serialised by a lock; every write is a
`BEGIN IMMEDIATE` transaction, so the queue limit and the cap are checked under the write lock.
There is one replica, so there is no heartbeat: `recover` at start takes back whatever ran.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.queue.store import migrations
from controller.queue.store.base import Connection, Recovery, StoreUnavailable, Subscriber
from controller.queue.store.sql import CLAIMABLE, CLAIMED, Store, Turn

# Primary result codes (the low byte of an extended code) of a write that failed for want of room or access.
_TRANSIENT_FAILURES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
)


class SqliteStore(Store):
    """One SQLite connection shared by the controller's threads, serialised by a lock."""

    _migrations = migrations.SQLITE
    _release = ""  # no owner to forget: every running query runs here
    # NOT INDEXED: walking the table back from the newest row stops after `limit` matches (past at most the
    # active rows); the status index would sort every finished query ever stored.
    _recent_from = "queries NOT INDEXED"

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

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def _take_turn(self, db: Connection, turn: Turn) -> None:
        return None  # a write transaction (BEGIN IMMEDIATE) is alone in the file already

    def _notify(self, db: Connection, channel: str, ids: list[str]) -> None:
        return None  # one controller: it wakes itself

    def _running_here(self) -> tuple[str, tuple[object, ...]]:
        return "status = 'running'", ()

    def _claim(self, db: Connection, now: float) -> Any:
        return db.execute(
            f"UPDATE queries SET status = 'running', {CLAIMED}"
            f" WHERE seq = (SELECT seq FROM queries WHERE {CLAIMABLE} ORDER BY seq LIMIT 1)"
            " RETURNING *",
            (now, now, now),
        ).fetchone()

    def _orphaned(self, db: Connection, now: float) -> tuple[str, list[str]]:
        # At start, whatever runs was left by this controller's previous life; a cancel never waits for
        # another replica to see it.
        return "status = 'running'", []

    def request_cancel(self, query_id: str) -> bool:
        return False  # one controller: whatever runs, runs here

    def heartbeat(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        return Recovery(requeued=[], failed=[])  # one controller: nobody else to take over from

    def retire(self) -> None:
        return None

    def subscribe(self, subscriber: Subscriber) -> None:
        return None  # one controller: it wakes itself
