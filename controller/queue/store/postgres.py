"""The shared backend: PostgreSQL, any number of active controllers (replicas) on one database.

Every replica serves the API and dispatches. They coordinate through the database only:
- a claim takes the oldest queued row with `FOR UPDATE SKIP LOCKED` (concurrent claimers skip each other's
  row instead of waiting on it) after taking a transaction-scoped advisory lock under which it counts the
  running rows, so the cap holds across replicas however the claims race;
- the queue limit is counted under another advisory lock in the inserting transaction, for the same reason;
- each replica has a row in `replicas` and refreshes its heartbeat (the server's clock); a replica that sees
  another silent for `stale_seconds` deletes its row and takes over its running queries in the same
  transaction (requeued while attempts remain), so exactly one replica takes over each;
- a running query is finished only by its owner, so a replica declared dead that comes back cannot write
  an outcome for a query someone else now runs;
- terminal writes, submissions and cancel requests NOTIFY the other replicas in their transaction
  (delivered on commit): long polls wake and dispatchers look at the queue on any replica's news.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from controller.launchers.base import QueryLimits
from controller.queue.store import migrations
from controller.queue.store.base import (
    ACTIVE,
    CANCEL,
    FINISHED,
    QUEUED,
    IdempotencyKey,
    KeyReused,
    QueueFull,
    Recovery,
    ReplicaLost,
    Row,
    Store,
    StoreUnavailable,
    Subscriber,
    dumps,
    row_from,
)
from controller.queue.store.pg_events import Listener
from worker_image.protocol import ErrorType, error_info

# Keys of the transaction-scoped advisory locks (any constants, fixed for all versions).
_MIGRATE_LOCK, _CLAIM_LOCK, _QUEUE_LIMIT_LOCK = 0x706F6471_01, 0x706F6471_02, 0x706F6471_03

Conn = psycopg.Connection[DictRow]


def replica_name() -> str:
    """Unique per process: the host (a pod's name in Kubernetes) and a random suffix."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def _notify(db: Conn, channel: str, ids: list[str]) -> None:
    for query_id in ids:
        db.execute("SELECT pg_notify(%s, %s)", (channel, query_id))


class PostgresStore(Store):
    shared = True

    def __init__(
        self,
        url: str,
        *,
        replica: str | None = None,
        stale_seconds: float = 15,
        pool_size: int = 8,
        timeout_seconds: float = 5,
    ) -> None:
        self.replica = replica or replica_name()
        self.description = f"postgresql (replica {self.replica})"
        self._url = url
        self._stale_seconds = stale_seconds
        self._timeout = timeout_seconds
        self._listener: Listener | None = None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout_seconds,
            kwargs={"row_factory": dict_row, "connect_timeout": max(1, round(timeout_seconds))},
            connection_class=Conn,
            check=ConnectionPool.check_connection,
            open=False,
            name="podq",
        )
        try:
            # One plain connection first: its error says what is wrong (refused, auth, no such database).
            psycopg.connect(url, connect_timeout=max(1, round(timeout_seconds))).close()
            self._pool.open(wait=True, timeout=timeout_seconds)
            self._migrate()
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO replicas (id) VALUES (%s) ON CONFLICT (id) DO UPDATE"
                    " SET heartbeat_at = clock_timestamp()",
                    (self.replica,),
                )
        except psycopg.OperationalError as exc:
            self._pool.close()
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise StoreUnavailable(f"cannot reach the database: {reason}") from exc
        except BaseException:
            self._pool.close()
            raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            # Replicas starting together migrate one after the other; the later ones find nothing to do.
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            db.execute(migrations.VERSION_TABLE)
            found = db.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
            for number, script in migrations.pending((found or {}).get("v") or 0, migrations.POSTGRES):
                db.execute(script.encode())  # several statements: no parameters, so sent as one
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._pool.close()

    @contextmanager
    def _transaction(self) -> Iterator[Conn]:
        """All or nothing; `StoreUnavailable` if the server could not be reached or went away."""
        try:
            with self._pool.connection() as db, db.transaction():
                yield db
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> DictRow | None:
        with self._transaction() as db:
            return db.execute(sql.encode(), params).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[DictRow]:
        with self._transaction() as db:
            return db.execute(sql.encode(), params).fetchall()

    def ping(self) -> None:
        self._one("SELECT 1")

    @staticmethod
    def _insert(
        db: Conn,
        query_id: str,
        operation: str,
        request: dict[str, Any],
        limits: QueryLimits,
        *,
        max_queued: int | None,
    ) -> Row:
        if max_queued is not None:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_QUEUE_LIMIT_LOCK,))
            counted = db.execute("SELECT COUNT(*) AS n FROM queries WHERE status = 'queued'").fetchone()
            queued = counted["n"] if counted else 0
            if queued >= max_queued:
                raise QueueFull(queued)
        raw = db.execute(
            "INSERT INTO queries (id, operation, request, limits, status, submitted_at)"
            " VALUES (%s, %s, %s, %s, 'queued', %s) RETURNING *",
            (query_id, operation, dumps(request), dumps(limits.stored()), time.time()),
        ).fetchone()
        _notify(db, QUEUED, [query_id])
        return row_from(raw)

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
            return self._insert(db, query_id, operation, request, limits, max_queued=max_queued)

    @staticmethod
    def _keyed(db: Conn, key: IdempotencyKey, born_after: float) -> Row | None:
        raw = db.execute(
            "SELECT k.fingerprint AS fingerprint, q.* FROM idempotency_keys k"
            " JOIN queries q ON q.id = k.query_id"
            " WHERE k.client = %s AND k.key = %s AND k.created_at >= %s",
            (key.client, key.key, born_after),
        ).fetchone()
        if raw is None:
            return None
        if raw["fingerprint"] != key.fingerprint:
            raise KeyReused(key.key)
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
        max_queued: int | None = None,
    ) -> tuple[Row, bool]:
        with self._transaction() as db:
            now = time.time()
            db.execute("DELETE FROM idempotency_keys WHERE created_at < %s", (now - ttl_seconds,))
            # A concurrent insert of the same key waits here for the other transaction, then does nothing.
            claimed = db.execute(
                "INSERT INTO idempotency_keys (client, key, fingerprint, query_id, created_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (client, key) DO NOTHING",
                (key.client, key.key, key.fingerprint, query_id, now),
            ).rowcount
            if claimed:
                return self._insert(db, query_id, operation, request, limits, max_queued=max_queued), True
            existing = self._keyed(db, key, now - ttl_seconds)
        assert existing is not None, "the conflicting key is alive: expired ones were deleted above"
        return existing, False

    def find_key(self, key: IdempotencyKey, ttl_seconds: float) -> Row | None:
        with self._transaction() as db:
            return self._keyed(db, key, time.time() - ttl_seconds)

    def get(self, query_id: str) -> Row | None:
        raw = self._one("SELECT * FROM queries WHERE id = %s", (query_id,))
        return None if raw is None else row_from(raw)

    def claim_next(self, max_running: int | None = None) -> Row | None:
        with self._transaction() as db:
            if max_running is not None:
                # Claims count and claim one at a time, so two replicas cannot both take the last slot.
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
                counted = db.execute("SELECT COUNT(*) AS n FROM queries WHERE status = 'running'").fetchone()
                if counted is not None and counted["n"] >= max_running:
                    return None
            raw = db.execute(
                "WITH next AS (SELECT seq FROM queries WHERE status = 'queued' ORDER BY seq LIMIT 1"
                " FOR UPDATE SKIP LOCKED)"
                " UPDATE queries q SET status = 'running', attempts = q.attempts + 1, started_at = %s,"
                " owner = %s, cancel_requested = false FROM next WHERE q.seq = next.seq RETURNING q.*",
                (time.time(), self.replica),
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
        which = "" if running_here else "status = 'queued' OR "
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = %s, result = %s, error = %s,"
                " placement = COALESCE(%s, placement), finished_at = %s, owner = NULL"
                f" WHERE id = %s AND ({which}(status = 'running' AND owner = %s)) RETURNING *",
                (status, dumps(result), dumps(error), dumps(placement), time.time(), query_id, self.replica),
            ).fetchone()
            if raw is not None:
                _notify(db, FINISHED, [query_id])
        return None if raw is None else row_from(raw)

    def cancel_queued(self, query_id: str, error: Mapping[str, object]) -> Row | None:
        with self._transaction() as db:
            raw = db.execute(
                "UPDATE queries SET status = 'cancelled', error = %s, finished_at = %s"
                " WHERE id = %s AND status = 'queued' RETURNING *",
                (dumps(error), time.time(), query_id),
            ).fetchone()
            if raw is not None:
                _notify(db, FINISHED, [query_id])
        return None if raw is None else row_from(raw)

    def request_cancel(self, query_id: str) -> bool:
        with self._transaction() as db:
            asked = db.execute(
                "UPDATE queries SET cancel_requested = true"
                " WHERE id = %s AND status = 'running' AND owner <> %s",
                (query_id, self.replica),
            ).rowcount
            _notify(db, CANCEL, [query_id] if asked else [])
        return asked == 1

    def requeue(self, query_id: str) -> bool:
        with self._transaction() as db:
            moved = db.execute(
                "UPDATE queries SET status = 'queued', attempts = attempts - 1, started_at = NULL,"
                " owner = NULL WHERE id = %s AND status = 'running' AND owner = %s",
                (query_id, self.replica),
            ).rowcount
            _notify(db, QUEUED, [query_id] if moved else [])
        return moved == 1

    def recover(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        with self._transaction() as db:
            return self._take_over(db, max_attempts, error)

    def _take_over(self, db: Conn, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        """Forget the replicas silent for `stale_seconds` (a row lock each: one taker per dead replica) and
        take back the running queries of replicas no longer known."""
        db.execute(
            "DELETE FROM replicas WHERE id <> %s"
            " AND heartbeat_at < clock_timestamp() - make_interval(secs => %s)",
            (self.replica, self._stale_seconds),
        )
        orphaned = "status = 'running' AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = queries.owner)"
        cancelled_error = error_info(ErrorType.CANCELLED, "cancelled while running", retryable=False)
        now = time.time()
        cancelled = db.execute(
            "UPDATE queries SET status = 'cancelled', error = %s, finished_at = %s, owner = NULL"
            f" WHERE {orphaned} AND cancel_requested RETURNING id",
            (dumps(cancelled_error), now),
        ).fetchall()
        requeued = db.execute(
            "UPDATE queries SET status = 'queued', started_at = NULL, owner = NULL"
            f" WHERE {orphaned} AND attempts < %s RETURNING id",
            (max_attempts,),
        ).fetchall()
        failed = db.execute(
            "UPDATE queries SET status = 'failed', error = %s, finished_at = %s, owner = NULL"
            f" WHERE {orphaned} RETURNING id",
            (dumps(error), now),
        ).fetchall()
        recovery = Recovery(
            requeued=[r["id"] for r in requeued],
            failed=[r["id"] for r in failed],
            cancelled=[r["id"] for r in cancelled],
        )
        _notify(db, FINISHED, recovery.finished)
        _notify(db, QUEUED, recovery.requeued[:1])
        return recovery

    def heartbeat(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        with self._transaction() as db:
            alive = db.execute(
                "UPDATE replicas SET heartbeat_at = clock_timestamp() WHERE id = %s", (self.replica,)
            ).rowcount
            if alive:
                return self._take_over(db, max_attempts, error)
            db.execute("INSERT INTO replicas (id) VALUES (%s)", (self.replica,))
        raise ReplicaLost(f"replica {self.replica} was declared dead by another; its queries were taken over")

    def retire(self) -> None:
        self._one("DELETE FROM replicas WHERE id = %s RETURNING id", (self.replica,))

    def subscribe(self, subscriber: Subscriber) -> None:
        assert self._listener is None, "one subscriber per store"
        self._listener = Listener(self._url, subscriber, self._timeout)

    def active_ids(self) -> list[str]:
        raws = self._all("SELECT id FROM queries WHERE status IN (%s, %s) ORDER BY seq", ACTIVE)
        return [raw["id"] for raw in raws]

    def page(self, *, operation: str, status: str | None, limit: int, before_seq: int | None) -> list[Row]:
        clauses: list[str] = ["operation = %s"]
        params: list[object] = [operation]
        if status is not None:
            clauses.append("status = %s")
            params.append(status)
        if before_seq is not None:
            clauses.append("seq < %s")
            params.append(before_seq)
        sql = f"SELECT * FROM queries WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT %s"
        return [row_from(raw) for raw in self._all(sql, (*params, limit))]

    def recent_run_seconds(self, limit: int) -> list[float]:
        raws = self._all(
            "SELECT finished_at - started_at AS seconds FROM queries"
            " WHERE status IN ('succeeded', 'failed') AND started_at IS NOT NULL ORDER BY seq DESC LIMIT %s",
            (limit,),
        )
        return [raw["seconds"] for raw in raws]

    def count_by_status(self) -> dict[str, int]:
        raws = self._all("SELECT status, COUNT(*) AS n FROM queries GROUP BY status")
        return {raw["status"]: raw["n"] for raw in raws}
