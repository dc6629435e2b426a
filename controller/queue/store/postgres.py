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
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from controller.queue.store import migrations
from controller.queue.store.base import (
    CANCEL,
    Connection,
    Recovery,
    ReplicaLost,
    StoreUnavailable,
    Subscriber,
    dumps,
)
from controller.queue.store.pg_events import Listener
from controller.queue.store.sql import CLAIMABLE, CLAIMED, Store, Turn
from worker_image.protocol import ErrorType, error_info

# Keys of the transaction-scoped advisory locks (any constants, fixed for all versions).
_LOCKS: dict[Turn, int] = {"migrate": 0x706F6471_01, "claim": 0x706F6471_02, "queue limit": 0x706F6471_03}

Conn = psycopg.Connection[DictRow]


def replica_name() -> str:
    """Unique per process: the host (a pod's name in Kubernetes) and a random suffix."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class _Translated:
    """A psycopg connection that takes the store's `?` placeholders (its statements hold no literal `?`
    or `%`)."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = (), /) -> psycopg.Cursor[DictRow]:
        return self._conn.execute(sql.replace("?", "%s").encode(), params)


class PostgresStore(Store):
    shared = True
    _migrations = migrations.POSTGRES
    _release = ", owner = NULL"
    _recent_from = "queries"

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
                    "INSERT INTO replicas (id) VALUES (?) ON CONFLICT (id) DO UPDATE"
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

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._pool.close()

    @contextmanager
    def _transaction(self) -> Iterator[_Translated]:
        """All or nothing; `StoreUnavailable` if the server could not be reached or went away."""
        try:
            with self._pool.connection() as db, db.transaction():
                yield _Translated(db)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc

    def _reading(self) -> AbstractContextManager[_Translated]:
        return self._transaction()

    def _take_turn(self, db: Connection, turn: Turn) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (_LOCKS[turn],))

    def _notify(self, db: Connection, channel: str, ids: list[str]) -> None:
        for query_id in ids:
            db.execute("SELECT pg_notify(?, ?)", (channel, query_id))

    def _running_here(self) -> tuple[str, tuple[object, ...]]:
        return "status = 'running' AND owner = ?", (self.replica,)

    def _claim(self, db: Connection, now: float) -> Any:
        return db.execute(
            f"WITH next AS (SELECT seq FROM queries WHERE {CLAIMABLE} ORDER BY seq LIMIT 1"
            " FOR UPDATE SKIP LOCKED)"
            f" UPDATE queries SET status = 'running', {CLAIMED}, owner = ?, cancel_requested = false"
            " FROM next WHERE queries.seq = next.seq RETURNING queries.*",
            (now, now, now, self.replica),
        ).fetchone()

    def request_cancel(self, query_id: str) -> bool:
        return self._update_one(
            "UPDATE queries SET cancel_requested = true WHERE id = ? AND status = 'running' AND owner <> ?",
            (query_id, self.replica),
            CANCEL,
            query_id,
        )

    def _orphaned(self, db: Connection, now: float) -> tuple[str, list[str]]:
        """Forget the replicas silent for `stale_seconds` (a row lock each: one taker per dead replica): the
        running queries of replicas no longer known are orphaned."""
        db.execute(
            "DELETE FROM replicas WHERE id <> ?"
            " AND heartbeat_at < clock_timestamp() - make_interval(secs => ?)",
            (self.replica, self._stale_seconds),
        )
        orphaned = "status = 'running' AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = queries.owner)"
        cancelled_error = error_info(ErrorType.CANCELLED, "cancelled while running", retryable=False)
        cancelled = db.execute(
            "UPDATE queries SET status = 'cancelled', error = ?, finished_at = ?, owner = NULL"
            f" WHERE {orphaned} AND cancel_requested RETURNING id",
            (dumps(cancelled_error), now),
        ).fetchall()
        return orphaned, [r["id"] for r in cancelled]

    def heartbeat(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        with self._transaction() as db:
            alive = db.execute(
                "UPDATE replicas SET heartbeat_at = clock_timestamp() WHERE id = ?", (self.replica,)
            ).rowcount
            if alive:
                return self._take_over(db, max_attempts, error)
            db.execute("INSERT INTO replicas (id) VALUES (?)", (self.replica,))
        raise ReplicaLost(f"replica {self.replica} was declared dead by another; its queries were taken over")

    def retire(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM replicas WHERE id = ?", (self.replica,))

    def subscribe(self, subscriber: Subscriber) -> None:
        assert self._listener is None, "one subscriber per store"
        self._listener = Listener(self._url, subscriber, self._timeout)
