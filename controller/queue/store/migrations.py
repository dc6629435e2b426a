"""The schema of each backend as a list of migrations: migration N (1-based) takes a database from version
N-1 to N. A database records its version in `schema_version`; a store applies what is missing when it
opens, in one transaction, and refuses a database whose version is newer than the last migration here
(a newer podq migrated it; an older one must not write to it).

Never edit a migration that has shipped: append one.
"""

from __future__ import annotations

from controller.queue.store.base import SchemaTooNew

# Version 1 of the tables both backends have, in each backend's types: `seq`, `time` (seconds since the
# epoch as the controllers' clocks give them), `exists` (SQLite's IF NOT EXISTS) and the `running` columns
# of a shared database (which replica runs a query, and whether another asked it to cancel).
_QUEUES_V1 = """
    CREATE TABLE {exists}queries (
        seq          {seq},
        id           TEXT NOT NULL UNIQUE,
        operation    TEXT NOT NULL,
        request      TEXT NOT NULL,
        limits       TEXT NOT NULL,
        status       TEXT NOT NULL,
        result       TEXT,
        error        TEXT,
        placement    TEXT NOT NULL DEFAULT '{{}}',
        attempts     INTEGER NOT NULL DEFAULT 0,
        submitted_at {time} NOT NULL,
        started_at   {time},
        finished_at  {time}{running}
    );
    CREATE INDEX {exists}queries_by_status ON queries (status, seq);
    CREATE INDEX {exists}queries_by_operation ON queries (operation, seq);
    CREATE TABLE {exists}idempotency_keys (
        client      TEXT NOT NULL,
        key         TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        query_id    TEXT NOT NULL,
        created_at  {time} NOT NULL,
        PRIMARY KEY (client, key)
    );
    CREATE INDEX {exists}idempotency_keys_by_age ON idempotency_keys (created_at);
"""

# Version 2: a queued query's queue deadline (submitted_at + limits.queue_timeout_seconds), NULL without
# one and once the query has been claimed; indexed for the dispatcher's wake-up and expiry.
_QUEUE_DEADLINE_V2 = """
    ALTER TABLE queries ADD COLUMN queue_deadline {time};
    CREATE INDEX queries_queued_by_deadline ON queries (queue_deadline) WHERE status = 'queued'
"""

# Version 3: every attempt at a query, kept after the next one starts (the record's `attempts`), with what
# a queries row held of its last run copied in for the queries that ran before.
_ATTEMPTS_V3 = """
    CREATE TABLE attempts (
        query_id    TEXT NOT NULL,
        number      INTEGER NOT NULL,
        limits      TEXT NOT NULL,
        status      TEXT NOT NULL,
        error       TEXT,
        placement   TEXT NOT NULL DEFAULT '{{}}',
        started_at  {time} NOT NULL,
        finished_at {time},
        PRIMARY KEY (query_id, number)
    );
    INSERT INTO attempts (query_id, number, limits, status, error, placement, started_at, finished_at)
        SELECT id, attempts, limits, status, error, placement, started_at, finished_at FROM queries
        WHERE started_at IS NOT NULL AND attempts > 0
"""

# Version 4: a query's retry policy (controller/queue/retry.py), and when a query queued again for a retry
# may start at the earliest (its backoff).
_RETRY_V4 = """
    ALTER TABLE queries ADD COLUMN retry TEXT;
    ALTER TABLE queries ADD COLUMN not_before {time}
"""

# Version 5: what each attempt used (controller/launchers/usage.py), as JSON; NULL for the attempts before.
_USAGE_V5 = """
    ALTER TABLE attempts ADD COLUMN usage TEXT
"""

# Version 1 is the schema of every podq before versioning, written with IF NOT EXISTS so that a file from
# then (with or without the idempotency keys) is adopted as it stands.
SQLITE = [
    _QUEUES_V1.format(
        exists="IF NOT EXISTS ", seq="INTEGER PRIMARY KEY AUTOINCREMENT", time="REAL", running=""
    ),
    _QUEUE_DEADLINE_V2.format(time="REAL"),
    _ATTEMPTS_V3.format(time="REAL"),
    _RETRY_V4.format(time="REAL"),
    _USAGE_V5,
]

# A replica's heartbeat is the database server's clock: staleness is judged on one clock whatever the
# replicas'.
POSTGRES = [
    _QUEUES_V1.format(
        exists="",
        seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        time="DOUBLE PRECISION",
        running=",\n        owner TEXT,\n        cancel_requested BOOLEAN NOT NULL DEFAULT false",
    )
    + """
    CREATE INDEX queries_running_by_owner ON queries (owner) WHERE status = 'running';
    CREATE TABLE replicas (
        id           TEXT PRIMARY KEY,
        started_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    );
    """,
    _QUEUE_DEADLINE_V2.format(time="DOUBLE PRECISION"),
    _ATTEMPTS_V3.format(time="DOUBLE PRECISION"),
    _RETRY_V4.format(time="DOUBLE PRECISION"),
    _USAGE_V5,
]

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def pending(found: int, migrations: list[str]) -> list[tuple[int, str]]:
    """The migrations a database at version `found` still needs, numbered; `SchemaTooNew` past the last."""
    if found > len(migrations):
        raise SchemaTooNew(found, len(migrations))
    return [(number, migrations[number - 1]) for number in range(found + 1, len(migrations) + 1)]
