"""The store against a real SQLite file: FIFO claims, one terminal state, crash recovery."""

import threading
from pathlib import Path

import pytest

from controller.store import Store

pytestmark = pytest.mark.unit

LIMITS = {"cpu": "1", "memory": "1Gi", "timeout_seconds": 5, "cpu_millicores": 1000, "memory_bytes": 2**30}
ERROR = {"error_type": "internal", "message": "x", "details": {}, "retryable": True}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "podq.db")
    yield s
    s.close()


def submit(store: Store, *ids: str) -> None:
    for query_id in ids:
        store.insert(query_id, "query", {"operation": "query", "sql": "SELECT 1"}, LIMITS)


def test_claims_are_fifo_and_count_attempts(store: Store) -> None:
    submit(store, "a", "b", "c")
    claimed = [store.claim_next(), store.claim_next(), store.claim_next(), store.claim_next()]
    assert [r.id if r else None for r in claimed] == ["a", "b", "c", None]
    assert all(r.status == "running" and r.attempts == 1 for r in claimed if r)


def test_only_the_first_terminal_write_counts(store: Store) -> None:
    submit(store, "a")
    store.claim_next()
    assert store.finish("a", "succeeded", result={"rows": []})
    assert not store.finish("a", "failed", error=ERROR)
    assert not store.cancel_queued("a", ERROR)
    row = store.get("a")
    assert row is not None and row.status == "succeeded" and row.error is None


def test_cancel_queued_only_touches_queued_rows(store: Store) -> None:
    submit(store, "a", "b")
    store.claim_next()
    assert not store.cancel_queued("a", ERROR)
    assert store.cancel_queued("b", ERROR)
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


def test_recover_requeues_while_attempts_remain(tmp_path: Path) -> None:
    path = tmp_path / "podq.db"
    first = Store(path)
    submit(first, "once", "twice", "waiting")
    first.claim_next()  # once: attempt 1
    first.claim_next()  # twice: attempt 1
    first.requeue("twice")
    first.claim_next()  # twice again, attempt count restored by requeue -> 1
    first.close()  # the controller dies here with two queries running

    second = Store(path)
    recovery = second.recover(max_attempts=1, error=ERROR)
    assert sorted(recovery.failed) == ["once", "twice"]
    assert recovery.requeued == []
    assert [second.claim_next().id] == ["waiting"]  # type: ignore[union-attr]
    second.close()

    third = Store(path)
    assert third.recover(max_attempts=2, error=ERROR).requeued == ["waiting"]
    third.close()


def test_page_is_newest_first_with_a_cursor(store: Store) -> None:
    submit(store, "a", "b", "c", "d", "e")
    first = store.page(operation="query", status=None, limit=2, before_seq=None)
    second = store.page(operation="query", status=None, limit=2, before_seq=first[-1].seq)
    third = store.page(operation="query", status=None, limit=2, before_seq=second[-1].seq)
    assert [r.id for r in first + second + third] == ["e", "d", "c", "b", "a"]
    store.claim_next()
    assert [r.id for r in store.page(operation="query", status="running", limit=10, before_seq=None)] == ["a"]
    assert store.count_by_status() == {"queued": 4, "running": 1}
