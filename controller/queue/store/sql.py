"""`Store`: the interface every backend offers, and the statements both backends run, written once.

The queue is the table: FIFO by `seq`; a claim moves a row queued -> running once, and only while fewer
than the global cap run; every terminal write is conditional on the row not being terminal yet, so each
query reaches exactly one terminal state whatever races (cancel vs. finish, restart vs. finish, one
replica vs. another). An idempotency key is a row whose primary key is (client, key), written in the
transaction that inserts its query. The queue limit is checked in that transaction too.

Statements are written with SQLite's `?` placeholders (the PostgreSQL store translates them) and read rows
by column name. A backend (sqlite.py, postgres.py) brings its connections, its claim, and what only a
shared database has: replicas that take turns, tell each other, and own the queries they run.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal

from controller.launchers.base import QueryLimits
from controller.queue.store import attempts, migrations
from controller.queue.store.base import (
    FINISHED,
    QUEUED,
    Connection,
    IdempotencyKey,
    KeyReused,
    QueueFull,
    Recovery,
    Row,
    Subscriber,
    dumps,
    row_from,
)
from controller.queue.store.reads import Reads

# What replicas do one at a time (`Store._take_turn`).
Turn = Literal["migrate", "claim", "queue limit"]

# The queued rows a claim may take (both parameters: now): none past its queue deadline, which expires, nor
# a retry before its backoff has passed.
CLAIMABLE = (
    "status = 'queued' AND (queue_deadline IS NULL OR queue_deadline > ?)"
    " AND (not_before IS NULL OR not_before <= ?)"
)
# What a claim sets besides the status and owner: the queue deadline is met once a query is claimed (a
# launcher holds it to the rest, e.g. a pending pod), and a query handed back to the queue has started.
CLAIMED = "attempts = attempts + 1, started_at = ?, queue_deadline = NULL, not_before = NULL"


class Store(Reads):
    """The durable queue and record of every query. Only the backends and this class speak SQL."""

    # What `PODQ_DATABASE_URL` (or the data directory) names, without a password, for the log.
    description: str
    # Several controllers may share it: they heartbeat and take over from each other.
    shared: bool = False
    # The backend's schema (migrations.py).
    _migrations: ClassVar[list[str]]
    # What a write that ends or gives back a run sets besides the status.
    _release: ClassVar[str]

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Connection]:
        """All or nothing; `StoreUnavailable` if the database could not write or went away."""

    @abstractmethod
    def _take_turn(self, db: Connection, turn: Turn) -> None:
        """Until the transaction ends, no other transaction of any replica gets past the same `turn`."""

    @abstractmethod
    def _notify(self, db: Connection, channel: str, ids: list[str]) -> None:
        """Tell the other replicas' subscribers, once the transaction commits."""

    @abstractmethod
    def _running_here(self) -> tuple[str, tuple[object, ...]]:
        """The condition (SQL and its parameters) that a query runs on this store's replica."""

    @abstractmethod
    def _claim(self, db: Connection, now: float) -> Any:
        """Move the oldest `CLAIMABLE` query to running on this replica (`CLAIMED`): the raw row."""

    @abstractmethod
    def _orphaned(self, db: Connection, now: float) -> tuple[str, list[str]]:
        """The condition that a query runs on no live replica any more; and, cancelled now, those of them
        whose cancel was asked for while their replica ran them."""

    def _migrate(self) -> None:
        with self._transaction() as db:
            # Replicas starting together migrate one after the other; the later ones find nothing to do.
            self._take_turn(db, "migrate")
            db.execute(migrations.VERSION_TABLE)
            found = db.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()["v"] or 0
            for number, script in migrations.pending(found, self._migrations):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    def insert(
        self,
        query_id: str,
        operation: str,
        request: dict[str, Any],
        limits: QueryLimits,
        *,
        retry: Mapping[str, object] | None = None,
        max_queued: int | None = None,
    ) -> Row:
        """Queue a query (with its `retry` policy); `QueueFull` (nothing stored) if `max_queued` are queued
        already."""
        with self._transaction() as db:
            return self._insert(db, query_id, operation, request, limits, retry=retry, max_queued=max_queued)

    def _insert(
        self,
        db: Connection,
        query_id: str,
        operation: str,
        request: dict[str, Any],
        limits: QueryLimits,
        *,
        retry: Mapping[str, object] | None,
        max_queued: int | None,
    ) -> Row:
        if max_queued is not None:
            self._take_turn(db, "queue limit")
            queued = _count(db, "queued")
            if queued >= max_queued:
                raise QueueFull(queued)
        now = time.time()
        raw = db.execute(
            "INSERT INTO queries (id, operation, request, limits, retry, status, submitted_at, queue_deadline"
            ") VALUES (?, ?, ?, ?, ?, 'queued', ?, ?) RETURNING *",
            (
                query_id,
                operation,
                dumps(request),
                dumps(limits.stored()),
                dumps(retry),
                now,
                limits.queue_deadline(now),
            ),
        ).fetchone()
        self._notify(db, QUEUED, [query_id])
        return row_from(raw)

    def insert_once(
        self,
        key: IdempotencyKey,
        ttl_seconds: float,
        *,
        query_id: str,
        operation: str,
        request: dict[str, Any],
        limits: QueryLimits,
        retry: Mapping[str, object] | None = None,
        max_queued: int | None = None,
    ) -> tuple[Row, bool]:
        """Insert the query unless the key already names one: then that one, and False.

        The key's primary key decides, not a lookup beforehand, so concurrent submissions with one key
        (from any connection, any replica) create one query. Raises `KeyReused` for another request, and
        `QueueFull` as `insert` does (the key is then not kept).
        """
        with self._transaction() as db:
            now = time.time()
            db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - ttl_seconds,))
            # A concurrent insert of the same key waits here for the other transaction, then does nothing.
            claimed = db.execute(
                "INSERT INTO idempotency_keys (client, key, fingerprint, query_id, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (client, key) DO NOTHING",
                (key.client, key.key, key.fingerprint, query_id, now),
            ).rowcount
            if claimed:
                inserted = self._insert(
                    db, query_id, operation, request, limits, retry=retry, max_queued=max_queued
                )
                return inserted, True
            existing = _keyed(db, key, now - ttl_seconds)
        assert existing is not None, "the conflicting key is alive: expired ones were deleted above"
        return existing, False

    def find_key(self, key: IdempotencyKey, ttl_seconds: float) -> Row | None:
        """The query a live key names, None if the key is unknown or expired; `KeyReused` if taken."""
        with self._reading() as db:
            return _keyed(db, key, time.time() - ttl_seconds)

    def claim_next(self, max_running: int | None = None) -> Row | None:
        """Move the oldest queued query to running, owned by this store's replica, and count the attempt;
        None when nothing is queued or `max_running` queries run already (across every replica)."""
        with self._transaction() as db:
            if max_running is not None:
                # Claims count and claim one at a time, so two replicas cannot both take the last slot.
                self._take_turn(db, "claim")
                if _count(db, "running") >= max_running:
                    return None
            now = time.time()
            raw = self._claim(db, now)
            if raw is not None:
                attempts.begin(db, raw["id"], raw["limits"], now)
        return None if raw is None else row_from(raw)

    def expire_queued(self, error: Callable[[Row], Mapping[str, object]]) -> list[Row]:
        """Fail the queued queries past their queue deadline, each with `error(row)`: the failed rows."""
        now = time.time()
        with self._transaction() as db:
            due = db.execute(
                "SELECT * FROM queries WHERE status = 'queued' AND queue_deadline <= ? ORDER BY seq", (now,)
            ).fetchall()
            expired = []
            for queued in due:
                raw = db.execute(
                    "UPDATE queries SET status = 'failed', error = ?, finished_at = ?, queue_deadline = NULL"
                    " WHERE id = ? AND status = 'queued' RETURNING *",
                    (dumps(error(row_from(queued))), now, queued["id"]),
                ).fetchone()
                if raw is not None:
                    expired.append(row_from(raw))
            self._notify(db, FINISHED, [row.id for row in expired])
        return expired

    def finish(
        self,
        query_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: Mapping[str, object] | None = None,
        placement: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        running_here: bool = False,
    ) -> Row | None:
        """Record the terminal state unless the query already has one: the finished row if this call
        decided it, else None. A running query is finished only by the replica running it; with
        `running_here`, only a query this replica runs (the outcome of a run it started), so a replica
        declared dead cannot finish a query another has taken over since."""
        here, mine = self._running_here()
        which = here if running_here else f"status = 'queued' OR ({here})"
        now = time.time()
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = ?, result = ?, error = ?, placement = COALESCE(?, placement),"
                f" finished_at = ?{self._release} WHERE id = ? AND ({which}) RETURNING *",
                (status, dumps(result), dumps(error), dumps(placement), now, query_id, *mine),
            ).fetchone()
            if raw is not None:
                attempts.end(db, [query_id], status, now=now, error=error, placement=placement, usage=usage)
                self._notify(db, FINISHED, [query_id])
        return None if raw is None else row_from(raw)

    def cancel_queued(self, query_id: str, error: Mapping[str, object]) -> Row | None:
        """Cancel the query if it is still queued: the cancelled row, else None."""
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = 'cancelled', error = ?, finished_at = ?"
                " WHERE id = ? AND status = 'queued' RETURNING *",
                (dumps(error), time.time(), query_id),
            ).fetchone()
            if raw is not None:
                self._notify(db, FINISHED, [query_id])
        return None if raw is None else row_from(raw)

    @abstractmethod
    def request_cancel(self, query_id: str) -> bool:
        """Ask the replica running the query to cancel it: True if it runs on another replica (that one
        is told), False if it does not run or runs here."""

    def requeue(self, query_id: str) -> bool:
        """Give a running query of this replica back to the queue without counting the attempt (which is
        recorded as interrupted)."""
        return self._hand_back(
            query_id,
            "attempts = attempts - 1",
            (),
            "interrupted",
            error=attempts.HANDED_BACK,
            placement=None,
            usage=None,
        )

    def retry(
        self,
        query_id: str,
        limits: QueryLimits,
        *,
        error: Mapping[str, object],
        placement: dict[str, Any],
        not_before: float,
        usage: dict[str, Any] | None = None,
    ) -> bool:
        """Record a running query's failed attempt and queue it again with `limits`, to start no earlier
        than `not_before`; False (nothing written) unless this replica runs it."""
        return self._hand_back(
            query_id,
            "limits = ?, not_before = ?",
            (dumps(limits.stored()), not_before),
            "failed",
            error=error,
            placement=placement,
            usage=usage,
        )

    def _hand_back(
        self,
        query_id: str,
        assignments: str,
        params: tuple[object, ...],
        attempt_status: str,
        *,
        error: Mapping[str, object],
        placement: dict[str, Any] | None,
        usage: dict[str, Any] | None,
    ) -> bool:
        """Queue again a query this replica runs, with `assignments` (SQL, its `params`) besides, ending its
        attempt with `attempt_status`: True if it did, False (nothing written) if the query runs elsewhere
        or not at all."""
        here, mine = self._running_here()
        with self._transaction() as db:
            changed = (
                db.execute(
                    f"UPDATE queries SET status = 'queued', started_at = NULL, {assignments}{self._release}"
                    f" WHERE id = ? AND {here}",
                    (*params, query_id, *mine),
                ).rowcount
                == 1
            )
            if changed:
                attempts.end(
                    db,
                    [query_id],
                    attempt_status,
                    now=time.time(),
                    error=error,
                    placement=placement,
                    usage=usage,
                )
                self._notify(db, QUEUED, [query_id])
        return changed

    def _update_one(self, sql: str, params: tuple[object, ...], channel: str, query_id: str) -> bool:
        """An UPDATE of the one query: True if it changed it, and then `channel` is told."""
        with self._transaction() as db:
            changed = db.execute(sql, params).rowcount == 1
            self._notify(db, channel, [query_id] if changed else [])
        return changed

    def recover(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        """At start: queries a dead controller left running go back to the queue while they have
        attempts left, the others fail with `error`. SQLite: every running query (there is one
        controller); PostgreSQL: those of replicas whose heartbeat is stale."""
        with self._transaction() as db:
            return self._take_over(db, max_attempts, error)

    def _take_over(self, db: Connection, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        now = time.time()
        orphaned, cancelled = self._orphaned(db, now)
        requeued = db.execute(
            f"UPDATE queries SET status = 'queued', started_at = NULL{self._release}"
            f" WHERE {orphaned} AND attempts < ? RETURNING id",
            (max_attempts,),
        ).fetchall()
        failed = db.execute(
            f"UPDATE queries SET status = 'failed', error = ?, finished_at = ?{self._release}"
            f" WHERE {orphaned} RETURNING id",
            (dumps(error), now),
        ).fetchall()
        recovery = Recovery(
            requeued=[r["id"] for r in requeued], failed=[r["id"] for r in failed], cancelled=cancelled
        )
        ended = [*recovery.requeued, *recovery.finished]
        attempts.end(db, ended, "interrupted", now=now, error=attempts.INTERRUPTED)
        self._notify(db, FINISHED, recovery.finished)
        self._notify(db, QUEUED, recovery.requeued[:1])
        return recovery

    @abstractmethod
    def heartbeat(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        """Say this replica is alive and take over (as `recover` does) the running queries of replicas that
        have been silent too long. Raises `ReplicaLost` if this replica was itself declared dead."""

    @abstractmethod
    def retire(self) -> None:
        """This replica stops (gracefully): forget it, so nobody waits for its heartbeat."""

    @abstractmethod
    def subscribe(self, subscriber: Subscriber) -> None:
        """Hand `subscriber` the events of other replicas (from a thread of the store's own)."""


def _count(db: Connection, status: str) -> int:
    counted: int = db.execute("SELECT COUNT(*) AS n FROM queries WHERE status = ?", (status,)).fetchone()["n"]
    return counted


def _keyed(db: Connection, key: IdempotencyKey, born_after: float) -> Row | None:
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
