"""What the rest of the controller knows of the store besides its interface (`Store`, in sql.py): `Row`,
the errors, the events, and how a row's JSON columns are written and read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.launchers.base import QueryLimits

ACTIVE = ("queued", "running")

# Channels of the events a store hands its subscriber (PostgreSQL: LISTEN/NOTIFY across replicas).
FINISHED, QUEUED, CANCEL = "podq_finished", "podq_queued", "podq_cancel"
# A subscriber's callback: (channel, query id). `RECONNECTED` with an empty id: events may have been lost.
RECONNECTED = "podq_reconnected"
Subscriber = Callable[[str, str], None]


class Result(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """A connection as sqlite3 offers it: `?` placeholders, rows read by column name."""

    def execute(self, sql: str, params: Sequence[object] = (), /) -> Result: ...


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
    # The query's retry policy as stored (controller/queue/retry.py), None for none.
    retry: dict[str, Any] | None
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
        retry=loads(raw["retry"]),
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


class ReplicaLost(Exception):
    """Other replicas declared this one dead (its heartbeat was stale) and took over its queries: what it
    still runs must stop, and nothing it writes about them counts."""
