"""What the store and dispatcher tests queue (one set of limits, one request), and the databases they
queue it in: every test that takes `database` or `store` runs on each backend, SQLite and a real
PostgreSQL server, with the same assertions."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from controller.launchers.base import QueryLimits
from controller.queue.store import SqliteStore, Store
from controller.queue.store.postgres import PostgresStore
from tests.support.postgres import PostgresServer

LIMITS = QueryLimits(cpu="1", memory="1Gi", timeout_seconds=5, cpu_millicores=1000, memory_bytes=2**30)
REQUEST: dict[str, Any] = {"operation": "query", "sql": "SELECT 1"}
BACKENDS = ["sqlite", "postgres"]


@dataclass
class Database:
    """One empty database of one backend; `open()` is one more controller's store on it."""

    backend: str
    location: Path | str
    server: PostgresServer | None = None
    opened: list[Store] = field(default_factory=list)

    def open(self, **options: Any) -> Store:
        store: Store
        if isinstance(self.location, Path):
            store = SqliteStore(self.location)
        else:
            store = PostgresStore(self.location, **{"timeout_seconds": 5, **options})
        self.opened.append(store)
        return store

    def crash(self, store: Store) -> None:
        """The controller of `store` dies: its connections go, and (PostgreSQL) its heartbeat goes stale."""
        store.close()
        if isinstance(store, PostgresStore):
            self.execute(
                "UPDATE replicas SET heartbeat_at = heartbeat_at - interval '1 day' WHERE id = %s",
                (store.replica,),
            )

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """SQL from a test (SQLite's `?` or PostgreSQL's `%s` placeholders, as the backend wants)."""
        if isinstance(self.location, Path):
            with closing(sqlite3.connect(self.location, isolation_level=None)) as db:
                return db.execute(sql, params).fetchall()
        assert self.server is not None
        return self.server.execute(self.location, sql, params)

    def release(self) -> None:
        """Close every store opened on it; the database may then be handed to another test, emptied."""
        for store in self.opened:
            store.close()
        self.opened.clear()
        if self.server is not None and isinstance(self.location, str):
            self.server.give_back(self.location)
            self.server = None


NewDatabase = Callable[[], Database]


@pytest.fixture(params=BACKENDS)
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewDatabase]:
    """`new_database()`: a fresh, empty database of the test's backend (closed at teardown)."""
    made: list[Database] = []
    names = count()
    server: PostgresServer | None = None
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")

    def new() -> Database:
        if server is None:
            database = Database("sqlite", tmp_path / f"podq-{next(names)}.db")
        else:
            database = Database("postgres", server.take_database(), server)
        made.append(database)
        return database

    yield new
    for database in made:
        database.release()


@pytest.fixture
def database(new_database: NewDatabase) -> Database:
    return new_database()


@pytest.fixture
def store(database: Database) -> Store:
    """A fresh store of each backend."""
    return database.open()


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[Database]:
    """A fresh PostgreSQL database, for what only the shared backend does (several replicas)."""
    database = Database("postgres", postgres_server.take_database(), postgres_server)
    yield database
    database.release()


@pytest.fixture(params=BACKENDS)
def store_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    """A controller's store settings for each backend: SQLite (the default), a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return {"database_url": server.take_database()}
