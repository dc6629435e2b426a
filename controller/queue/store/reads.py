"""`Reads`: what the store answers without writing (the record, its attempts, pages, counts), for every
backend alike; the writes are `Store`'s (sql.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import ClassVar

from controller.queue.store import attempts
from controller.queue.store.attempts import Attempt
from controller.queue.store.base import ACTIVE, Connection, Row, row_from


class Reads(ABC):
    # The table `recent_run_seconds` reads, with the backend's hint of how.
    _recent_from: ClassVar[str]

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Connection]:
        """A connection to read from."""

    def ping(self) -> None:
        """Raises unless the database answers."""
        with self._reading() as db:
            db.execute("SELECT 1").fetchone()

    def get(self, query_id: str) -> Row | None:
        with self._reading() as db:
            raw = db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
        return None if raw is None else row_from(raw)

    def next_wake(self, now: float) -> float | None:
        """When the queue changes with no event (epoch seconds), None if it will not: the earliest queue
        deadline of a queued query, or a retry's earliest start still to come."""
        with self._reading() as db:
            raw = db.execute(
                "SELECT MIN(queue_deadline) AS deadline,"
                " MIN(CASE WHEN not_before > ? THEN not_before END) AS not_before"
                " FROM queries WHERE status = 'queued'",
                (now,),
            ).fetchone()
        times = [t for t in (raw["deadline"], raw["not_before"]) if t is not None]
        return min(times, default=None)

    def attempts(self, query_ids: Sequence[str]) -> dict[str, list[Attempt]]:
        """The kept attempts of each query, oldest first."""
        with self._reading() as db:
            return attempts.of(db, query_ids)

    def active_ids(self) -> list[str]:
        """Queries queued or running, oldest first."""
        with self._reading() as db:
            raws = db.execute("SELECT id FROM queries WHERE status IN (?, ?) ORDER BY seq", ACTIVE).fetchall()
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
        with self._reading() as db:
            raws = db.execute(sql, (*params, limit)).fetchall()
        return [row_from(raw) for raw in raws]

    def recent_run_seconds(self, limit: int) -> list[float]:
        """How long the latest `limit` queries that ran to an end (succeeded or failed) ran, newest first."""
        with self._reading() as db:
            raws = db.execute(
                f"SELECT finished_at - started_at AS seconds FROM {self._recent_from}"
                " WHERE status IN ('succeeded', 'failed') AND started_at IS NOT NULL"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [raw["seconds"] for raw in raws]

    def count_by_status(self) -> dict[str, int]:
        with self._reading() as db:
            raws = db.execute("SELECT status, COUNT(*) AS n FROM queries GROUP BY status").fetchall()
        return {raw["status"]: raw["n"] for raw in raws}
