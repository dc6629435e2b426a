"""The store on each backend (a real SQLite file, a real PostgreSQL server): FIFO claims, one terminal
state, crash recovery, idempotency keys, schema versions."""

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from controller.queue.store import IdempotencyKey, KeyReused, Row, SchemaTooNew, SqliteStore, Store
from controller.queue.store.migrations import POSTGRES, SQLITE
from tests.support.stored import LIMITS, REQUEST, Database

pytestmark = pytest.mark.unit

ERROR = {"error_type": "internal", "message": "x", "details": {}, "retryable": True}


def submit(store: Store, *ids: str) -> None:
    for query_id in ids:
        store.insert(query_id, "query", REQUEST, LIMITS)


def test_claims_are_fifo_and_count_attempts(store: Store) -> None:
    submit(store, "a", "b", "c")
    claimed = [store.claim_next(), store.claim_next(), store.claim_next(), store.claim_next()]
    assert [r.id if r else None for r in claimed] == ["a", "b", "c", None]
    assert all(r.status == "running" and r.attempts == 1 for r in claimed if r)


def test_only_the_first_terminal_write_counts(store: Store) -> None:
    submit(store, "a")
    store.claim_next()
    finished = store.finish("a", "succeeded", result={"rows": []}, placement={"kind": "local", "pid": 7})
    assert finished is not None and finished == store.get("a")
    assert (finished.status, finished.result, finished.error) == ("succeeded", {"rows": []}, None)
    assert finished.placement == {"kind": "local", "pid": 7}
    assert finished.limits == LIMITS and finished.request == REQUEST
    assert finished.started_at is not None and finished.finished_at is not None
    assert finished.submitted_at <= finished.started_at <= finished.finished_at
    assert store.finish("a", "failed", error=ERROR) is None
    assert store.cancel_queued("a", ERROR) is None
    row = store.get("a")
    assert row is not None and row.status == "succeeded" and row.error is None


def test_cancel_queued_only_touches_queued_rows(store: Store) -> None:
    submit(store, "a", "b")
    store.claim_next()
    assert store.cancel_queued("a", ERROR) is None
    cancelled = store.cancel_queued("b", ERROR)
    assert cancelled is not None and (cancelled.id, cancelled.status) == ("b", "cancelled")
    assert cancelled.error == ERROR
    assert cancelled.finished_at is not None and cancelled == store.get("b")
    assert store.claim_next() is None


def test_concurrent_claims_never_hand_out_a_row_twice(store: Store) -> None:
    submit(store, *[f"q{i:03}" for i in range(200)])
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all() -> None:
        while (row := store.claim_next()) is not None:
            with lock:
                claimed.append(row.id)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"q{i:03}" for i in range(200)]


def test_recover_requeues_while_attempts_remain(database: Database) -> None:
    first = database.open()
    submit(first, "once", "twice", "waiting")
    first.claim_next()  # once: attempt 1
    first.claim_next()  # twice: attempt 1
    first.requeue("twice")
    first.claim_next()  # twice again, attempt count restored by requeue -> 1
    database.crash(first)  # the controller dies here with two queries running

    second = database.open()
    recovery = second.recover(max_attempts=1, error=ERROR)
    assert sorted(recovery.failed) == ["once", "twice"]
    assert recovery.requeued == []
    assert [second.claim_next().id] == ["waiting"]  # type: ignore[union-attr]
    database.crash(second)

    third = database.open()
    assert third.recover(max_attempts=2, error=ERROR).requeued == ["waiting"]


def test_page_is_newest_first_with_a_cursor(store: Store) -> None:
    submit(store, "a", "b", "c", "d", "e")
    first = store.page(operation="query", status=None, limit=2, before_seq=None)
    second = store.page(operation="query", status=None, limit=2, before_seq=first[-1].seq)
    third = store.page(operation="query", status=None, limit=2, before_seq=second[-1].seq)
    assert [r.id for r in first + second + third] == ["e", "d", "c", "b", "a"]
    store.claim_next()
    assert [r.id for r in store.page(operation="query", status="running", limit=10, before_seq=None)] == ["a"]
    assert store.count_by_status() == {"queued": 4, "running": 1}


DAY = 86_400.0


def insert_once(store: Store, key: IdempotencyKey, query_id: str, ttl: float = DAY) -> tuple[Row, bool]:
    return store.insert_once(key, ttl, query_id=query_id, operation="query", request=REQUEST, limits=LIMITS)


def all_ids(store: Store) -> list[str]:
    return [r.id for r in store.page(operation="query", status=None, limit=100, before_seq=None)]


def test_a_key_names_one_query(store: Store) -> None:
    key = IdempotencyKey("client", "k1", "fp")
    first, created = insert_once(store, key, "a")
    again, created_again = insert_once(store, key, "b")
    assert (first.id, created) == ("a", True)
    assert (again.id, created_again) == ("a", False)
    assert store.find_key(key, DAY) == store.get("a")
    assert all_ids(store) == ["a"]


def test_a_key_reused_for_another_request_is_refused_and_stores_nothing(store: Store) -> None:
    insert_once(store, IdempotencyKey("client", "k1", "fp"), "a")
    other = IdempotencyKey("client", "k1", "other-fp")
    with pytest.raises(KeyReused):
        insert_once(store, other, "b")
    with pytest.raises(KeyReused):
        store.find_key(other, DAY)
    assert all_ids(store) == ["a"]


def test_keys_are_per_client(store: Store) -> None:
    insert_once(store, IdempotencyKey("alice", "k1", "fp"), "a")
    _, created = insert_once(store, IdempotencyKey("bob", "k1", "fp"), "b")
    assert created
    assert store.find_key(IdempotencyKey("carol", "k1", "fp"), DAY) is None


def test_an_expired_key_is_free_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    key = IdempotencyKey("client", "k1", "fp")
    insert_once(store, key, "a", ttl=60)
    now[0] += 59
    assert store.find_key(key, 60) is not None
    now[0] += 2
    assert store.find_key(key, 60) is None
    reused, created = insert_once(store, IdempotencyKey("client", "k1", "new-fp"), "b", ttl=60)
    assert (reused.id, created) == ("b", True)
    assert all_ids(store) == ["b", "a"], "the first query stays; only its key is gone"


def test_concurrent_submissions_on_separate_connections_create_one_query(database: Database) -> None:
    """Two Store objects are two connections (two controllers): only the key's primary key can keep them
    apart."""
    stores = [database.open() for _ in range(2)]
    key = IdempotencyKey("client", "k1", "fp")
    barrier = threading.Barrier(8)
    outcomes: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def submit_once(n: int) -> None:
        barrier.wait()
        row, created = insert_once(stores[n % 2], key, f"q{n}")
        with lock:
            outcomes.append((row.id, created))

    threads = [threading.Thread(target=submit_once, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [query_id for query_id, created in outcomes if created]
    assert len(outcomes) == 8 and len(winners) == 1
    assert {query_id for query_id, _ in outcomes} == set(winners)
    assert all_ids(stores[0]) == winners


# The schema before idempotency keys: a database file written by that version must keep working.
PREVIOUS_SCHEMA = """
CREATE TABLE queries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, operation TEXT NOT NULL,
    request TEXT NOT NULL, limits TEXT NOT NULL, status TEXT NOT NULL, result TEXT, error TEXT,
    placement TEXT NOT NULL DEFAULT '{}', attempts INTEGER NOT NULL DEFAULT 0, submitted_at REAL NOT NULL,
    started_at REAL, finished_at REAL
);
INSERT INTO queries (id, operation, request, limits, status, submitted_at)
VALUES ('old', 'query', '{"sql": "SELECT 1"}',
        '{"cpu": "1", "memory": "1Gi", "timeout_seconds": 5,'
        || ' "cpu_millicores": 1000, "memory_bytes": 1073741824}',
        'queued', 1.0);
"""


def test_a_database_of_the_previous_schema_gains_idempotency_keys(tmp_path: Path) -> None:
    path = tmp_path / "podq.db"
    with sqlite3.connect(path) as db:
        db.executescript(PREVIOUS_SCHEMA)
    db.close()
    store = SqliteStore(path)
    _, created = insert_once(store, IdempotencyKey("client", "k1", "fp"), "new")
    assert created
    assert all_ids(store) == ["new", "old"]
    old = store.claim_next()
    assert old is not None and old.id == "old" and old.limits == LIMITS
    store.close()


def test_a_database_migrated_by_a_newer_podq_is_refused(database: Database) -> None:
    database.open().close()
    newest = len(SQLITE)
    assert len(POSTGRES) == newest, "both backends are at the same version"
    assert database.execute("SELECT version FROM schema_version") == [(newest,)]
    database.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(
        SchemaTooNew, match=f"schema is version 99, but this podq knows versions up to {newest}"
    ):
        database.open()


def test_opening_again_migrates_nothing(database: Database) -> None:
    first = database.open()
    submit(first, "a")
    second = database.open()
    assert database.execute("SELECT version FROM schema_version") == [(len(SQLITE),)]
    assert [r.id for r in second.page(operation="query", status=None, limit=10, before_seq=None)] == ["a"]
