"""The store's queue limit: checked in the inserting transaction, exact under concurrency, nothing stored."""

import threading

import pytest

from controller.queue.store import IdempotencyKey, QueueFull, Store
from tests.support.stored import LIMITS, REQUEST, Database

pytestmark = pytest.mark.unit


def queue(store: Store, query_id: str, max_queued: int) -> None:
    store.insert(query_id, "query", REQUEST, LIMITS, max_queued=max_queued)


def test_the_limit_counts_queued_queries_only(store: Store) -> None:
    queue(store, "a", 2)
    queue(store, "b", 2)
    with pytest.raises(QueueFull) as full:
        queue(store, "c", 2)
    assert full.value.queued == 2
    assert store.get("c") is None, "a refused submission stores nothing"
    claimed = store.claim_next()
    assert claimed is not None
    queue(store, "c", 2)  # a running query frees its place in the queue
    assert store.count_by_status() == {"running": 1, "queued": 2}


def test_a_refused_keyed_submission_keeps_no_key(store: Store) -> None:
    queue(store, "a", 1)
    key = IdempotencyKey("client", "k1", "fp")
    with pytest.raises(QueueFull):
        store.insert_once(
            key, 60, query_id="b", operation="query", request=REQUEST, limits=LIMITS, max_queued=1
        )
    assert store.find_key(key, 60) is None
    store.claim_next()
    row, created = store.insert_once(
        key, 60, query_id="c", operation="query", request=REQUEST, limits=LIMITS, max_queued=1
    )
    assert (row.id, created) == ("c", True)


def test_a_burst_on_two_connections_never_overshoots(database: Database) -> None:
    """Count and insert share one write transaction, so even separate connections stop at the limit."""
    stores = [database.open() for _ in range(2)]
    barrier = threading.Barrier(16)
    refused: list[str] = []

    def submit(n: int) -> None:
        barrier.wait()
        for i in range(10):
            try:
                queue(stores[n % 2], f"q{n}-{i}", 50)
            except QueueFull:
                refused.append(f"q{n}-{i}")

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].count_by_status() == {"queued": 50}
    assert len(refused) == 160 - 50


def test_recent_run_seconds_are_the_newest_finished_runs(store: Store) -> None:
    for query_id in ("a", "b", "c", "d"):
        queue(store, query_id, 10)
    for query_id, status in (("a", "succeeded"), ("b", "failed"), ("c", "succeeded")):
        store.claim_next()
        store.finish(query_id, status)
    store.claim_next()
    store.finish("d", "cancelled")
    queue(store, "e", 10)
    seconds = store.recent_run_seconds(2)
    assert len(seconds) == 2 and all(s >= 0 for s in seconds)
    assert store.recent_run_seconds(10) == store.recent_run_seconds(3), (
        "cancelled and queued ones don't count"
    )


def test_a_retry_with_a_known_key_gets_its_query_even_when_the_queue_is_full(store: Store) -> None:
    key = IdempotencyKey("client", "k1", "fp")
    store.insert_once(key, 60, query_id="a", operation="query", request=REQUEST, limits=LIMITS, max_queued=1)
    row, created = store.insert_once(
        key, 60, query_id="b", operation="query", request=REQUEST, limits=LIMITS, max_queued=1
    )
    assert (row.id, created) == ("a", False)
