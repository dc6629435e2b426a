"""What the rest of the controller knows of the store: `Row`, the errors, and the `Store` interface that
each backend (sqlite.py, postgres.py) implements with the same guarantees.

The queue is the table: FIFO by `seq`; a claim moves a row queued -> running once, and only while fewer
than the global cap run; every terminal write is conditional on the row not being terminal yet, so each
query reaches exactly one terminal state whatever races (cancel vs. finish, restart vs. finish, one
replica vs. another). An idempotency key is a row whose primary key is (client, key), written in the
transaction that inserts its query. The queue limit is checked in that transaction too.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.launchers.base import QueryLimits

ACTIVE = ("queued", "running")

# Channels of the events a store hands its subscriber (PostgreSQL: LISTEN/NOTIFY across replicas).
FINISHED, QUEUED, CANCEL = "podq_finished", "podq_queued", "podq_cancel"
# A subscriber's callback: (channel, query id). `RECONNECTED` with an empty id: events may have been lost.
RECONNECTED = "podq_reconnected"
Subscriber = Callable[[str, str], None]


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


def loads(value: Any) -> Any:
    """A JSON column: text in SQLite, TEXT in PostgreSQL too (kept byte-for-byte as written)."""
    return None if value is None else json.loads(value)


def dumps(value: Mapping[str, object] | None) -> str | None:
    return None if value is None else json.dumps(dict(value))


def row_from(raw: Any) -> Row:
    return Row(
        seq=raw["seq"],
        id=raw["id"],
        operation=raw["operation"],
        request=json.loads(raw["request"]),
        limits=QueryLimits.from_stored(json.loads(raw["limits"])),
        status=raw["status"],
        result=loads(raw["result"]),
        error=loads(raw["error"]),
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


@dataclass(frozen=True)
class IdempotencyKey:
    """A client's `Idempotency-Key` and the fingerprint of the request it first came with."""

    client: str
    key: str
    fingerprint: str


class KeyReused(Exception):
    """The idempotency key is taken by a different request."""


class StoreUnavailable(Exception):
    """The store cannot write just now (disk full, I/O error, locked past the timeout, the database server
    unreachable); nothing was written, and the same write may succeed later."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer podq than this one; refusing to touch it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the database schema is version {found}, but this podq knows versions up to {known}: "
            "a newer podq has migrated it; run that version (or a newer one), never an older one"
        )


@dataclass(frozen=True)
class Recovery:
    requeued: list[str]
    failed: list[str]
    # Queries whose cancel was asked for while their dead replica ran them: cancelled, not run again.
    cancelled: list[str] = field(default_factory=list)

    @property
    def finished(self) -> list[str]:
        return [*self.failed, *self.cancelled]


class Store(ABC):
    """The durable queue and record of every query. Only the backends speak SQL."""

    # What `PODQ_DATABASE_URL` (or the data directory) names, without a password, for the log.
    description: str
    # Several controllers may share it: they heartbeat and take over from each other.
    shared: bool = False

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> None:
        """Raises unless the database answers."""

    @abstractmethod
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

    @abstractmethod
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
        (from any connection, any replica) create one query. Raises `KeyReused` for another request, and
        `QueueFull` as `insert` does (the key is then not kept).
        """

    @abstractmethod
    def find_key(self, key: IdempotencyKey, ttl_seconds: float) -> Row | None:
        """The query a live key names, None if the key is unknown or expired; `KeyReused` if taken."""

    @abstractmethod
    def get(self, query_id: str) -> Row | None: ...

    @abstractmethod
    def claim_next(self, max_running: int | None = None) -> Row | None:
        """Move the oldest queued query to running, owned by this store's replica, and count the attempt;
        None when nothing is queued or `max_running` queries run already (across every replica)."""

    @abstractmethod
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
        """Record the terminal state unless the query already has one: the finished row if this call
        decided it, else None. A running query is finished only by the replica running it; with
        `running_here`, only a query this replica runs (the outcome of a run it started), so a replica
        declared dead cannot finish a query another has taken over since."""

    @abstractmethod
    def cancel_queued(self, query_id: str, error: Mapping[str, object]) -> Row | None:
        """Cancel the query if it is still queued: the cancelled row, else None."""

    @abstractmethod
    def request_cancel(self, query_id: str) -> bool:
        """Ask the replica running the query to cancel it: True if it runs on another replica (that one
        is told), False if it does not run or runs here."""

    @abstractmethod
    def requeue(self, query_id: str) -> bool:
        """Give a running query of this replica back to the queue without counting the attempt."""

    @abstractmethod
    def recover(self, max_attempts: int, error: Mapping[str, object]) -> Recovery:
        """At start: queries a dead controller left running go back to the queue while they have
        attempts left, the others fail with `error`. SQLite: every running query (there is one
        controller); PostgreSQL: those of replicas whose heartbeat is stale."""

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

    @abstractmethod
    def active_ids(self) -> list[str]:
        """Queries queued or running, oldest first."""

    @abstractmethod
    def page(self, *, operation: str, status: str | None, limit: int, before_seq: int | None) -> list[Row]:
        """Newest first; `before_seq` is the cursor of the previous page."""

    @abstractmethod
    def recent_run_seconds(self, limit: int) -> list[float]:
        """How long the latest `limit` queries that ran to an end (succeeded or failed) ran, newest first."""

    @abstractmethod
    def count_by_status(self) -> dict[str, int]: ...


class ReplicaLost(Exception):
    """Other replicas declared this one dead (its heartbeat was stale) and took over its queries: what it
    still runs must stop, and nothing it writes about them counts."""
