"""The store: the durable queue and record of every query, the only code that speaks SQL.

`open_store(settings)` picks the backend: SQLite in the data directory by default (one controller),
PostgreSQL when `PODQ_DATABASE_URL` names one (any number of active controllers).
"""

from __future__ import annotations

from controller.queue.store.attempts import Attempt
from controller.queue.store.base import (
    CANCEL,
    FINISHED,
    QUEUED,
    RECONNECTED,
    IdempotencyKey,
    KeyReused,
    QueueFull,
    Recovery,
    ReplicaLost,
    Row,
    SchemaTooNew,
    StoreUnavailable,
)
from controller.queue.store.sql import Store
from controller.queue.store.sqlite import SqliteStore
from controller.settings import Settings

__all__ = [
    "CANCEL",
    "FINISHED",
    "QUEUED",
    "RECONNECTED",
    "Attempt",
    "IdempotencyKey",
    "KeyReused",
    "QueueFull",
    "Recovery",
    "ReplicaLost",
    "Row",
    "SchemaTooNew",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """The configured store, migrated. `StoreUnavailable` if the database cannot be reached, `SchemaTooNew`
    if a newer podq has migrated it."""
    if settings.database_url is None:
        return SqliteStore(settings.database_path)
    from controller.queue.store.postgres import PostgresStore  # psycopg only when asked for

    return PostgresStore(
        settings.database_url.get_secret_value(),
        stale_seconds=settings.replica_stale_seconds,
        pool_size=settings.database_pool_size,
        timeout_seconds=settings.database_timeout_seconds,
    )
