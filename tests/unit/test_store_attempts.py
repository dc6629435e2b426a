"""Every attempt at a query in the store, on each backend: begun by a claim, ended by the outcome, a
graceful hand-back, a restart or a retry; kept across restarts and migrated from the schema before."""

from __future__ import annotations

import json
import time

import pytest

from controller.launchers.base import QueryLimits
from controller.queue.store import SqliteStore, Store
from controller.queue.store.attempts import HANDED_BACK, INTERRUPTED, KEPT
from controller.queue.store.migrations import POSTGRES, SQLITE
from controller.queue.store.postgres import PostgresStore
from tests.support.stored import LIMITS, REQUEST, Database

pytestmark = pytest.mark.unit

ERROR = {
    "error_type": "memory",
    "message": "out of memory",
    "details": {"limit_bytes": 2**30},
    "retryable": False,
}
EXHAUSTED = {"error_type": "internal", "message": "no attempts left", "details": {}, "retryable": True}
PLACEMENT = {"kind": "local", "pid": 4242}
MORE = QueryLimits(cpu="1", memory="2Gi", timeout_seconds=5, cpu_millicores=1000, memory_bytes=2**31)


def statuses(store: Store, query_id: str) -> list[tuple[int, str]]:
    return [(a.number, a.status) for a in store.attempts([query_id])[query_id]]


def test_a_claim_begins_an_attempt_and_the_outcome_ends_it(store: Store) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    store.insert("never", "query", REQUEST, LIMITS)
    claimed = store.claim_next()
    assert claimed is not None
    (running,) = store.attempts(["a"])["a"]
    assert (running.number, running.status, running.finished_at) == (1, "running", None)
    assert (running.limits, running.started_at) == (LIMITS.stored(), claimed.started_at)

    finished = store.finish("a", "failed", error=ERROR, placement=PLACEMENT, running_here=True)
    assert finished is not None
    kept = store.attempts(["a", "never"])
    (ended,) = kept["a"]
    assert (ended.status, ended.error, ended.placement) == ("failed", ERROR, PLACEMENT)
    assert ended.finished_at == finished.finished_at
    assert kept["never"] == [], "a query that never started has no attempt"


def test_a_graceful_hand_back_is_an_interrupted_attempt_and_the_next_is_numbered_after_it(
    store: Store,
) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    store.claim_next()
    assert store.requeue("a")
    store.claim_next()
    store.finish("a", "succeeded", result={"rows": []}, placement=PLACEMENT, running_here=True)
    first, second = store.attempts(["a"])["a"]
    assert (first.number, first.status, first.error) == (1, "interrupted", HANDED_BACK)
    assert (second.number, second.status, second.error, second.placement) == (2, "succeeded", None, PLACEMENT)


def test_attempts_survive_a_restart_and_the_one_it_cut_short_is_interrupted(database: Database) -> None:
    first = database.open()
    for query_id in ("again", "last"):
        first.insert(query_id, "query", REQUEST, LIMITS)
        first.claim_next()
    first.finish("last", "failed", error=ERROR, running_here=True)
    first.insert("last-run", "query", REQUEST, LIMITS)
    first.claim_next()
    database.crash(first)

    second = database.open()
    recovery = second.recover(max_attempts=1, error=EXHAUSTED)
    assert (recovery.requeued, sorted(recovery.failed)) == ([], ["again", "last-run"])
    assert statuses(second, "again") == [(1, "interrupted")]
    assert second.attempts(["again"])["again"][0].error == INTERRUPTED
    assert statuses(second, "last") == [(1, "failed")], "an attempt that had ended stays as it ended"


def test_a_retry_ends_the_attempt_as_failed_and_queues_the_query_with_its_new_limits(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    store.claim_next()
    now = time.time()
    assert store.retry("a", MORE, error=ERROR, placement=PLACEMENT, not_before=now + 60)
    assert not store.retry("a", MORE, error=ERROR, placement=PLACEMENT, not_before=now), "only a running one"
    queued = store.get("a")
    assert queued is not None and (queued.status, queued.limits, queued.started_at) == ("queued", MORE, None)
    assert (queued.error, queued.result) == (None, None), "the record's outcome is the last attempt's"
    assert store.claim_next() is None, "not before its backoff has passed"
    assert store.next_wake(now) == pytest.approx(now + 60)

    monkeypatch.setattr(time, "time", lambda: now + 61)
    again = store.claim_next()
    assert again is not None and again.id == "a" and again.limits == MORE
    failed, running = store.attempts(["a"])["a"]
    assert (failed.status, failed.error, failed.placement, failed.limits) == (
        "failed",
        ERROR,
        PLACEMENT,
        LIMITS.stored(),
    )
    assert (running.number, running.status, running.limits) == (2, "running", MORE.stored())
    assert store.next_wake(now + 61) is None


def test_only_the_newest_attempts_are_kept(store: Store) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    for _ in range(KEPT + 3):
        store.claim_next()
        store.requeue("a")
    numbers = [number for number, _ in statuses(store, "a")]
    assert numbers == list(range(4, KEPT + 4))


def test_the_queries_of_the_schema_before_get_their_one_attempt(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqliteStore, "_migrations", SQLITE[:2])
    monkeypatch.setattr(PostgresStore, "_migrations", POSTGRES[:2])
    database.open().close()
    mark = "?" if database.backend == "sqlite" else "%s"
    insert = (
        "INSERT INTO queries (id, operation, request, limits, status, error, placement, attempts,"
        f" submitted_at, started_at, finished_at) VALUES ({', '.join([mark] * 11)})"
    )
    limits, request = json.dumps(LIMITS.stored()), json.dumps(REQUEST)
    for row in (
        (
            "done",
            "query",
            request,
            limits,
            "failed",
            json.dumps(ERROR),
            json.dumps(PLACEMENT),
            1,
            1.0,
            2.0,
            3.0,
        ),
        ("running", "query", request, limits, "running", None, "{}", 2, 1.0, 4.0, None),
        ("queued", "query", request, limits, "queued", None, "{}", 0, 1.0, None, None),
    ):
        database.execute(insert, row)
    monkeypatch.undo()

    store = database.open()
    kept = store.attempts(["done", "running", "queued"])
    (done,) = kept["done"]
    assert (done.number, done.status, done.error, done.placement) == (1, "failed", ERROR, PLACEMENT)
    assert (done.started_at, done.finished_at, done.limits) == (2.0, 3.0, LIMITS.stored())
    assert [(a.number, a.status) for a in kept["running"]] == [(2, "running")]
    assert kept["queued"] == []


USAGE = {"peak_memory_bytes": 300 * 2**20, "peak_memory_source": "worker", "cpu_seconds": 1.5}


def test_each_attempt_keeps_its_own_usage(store: Store) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    store.claim_next()
    assert store.retry("a", MORE, error=ERROR, placement=PLACEMENT, usage=USAGE, not_before=0)
    store.claim_next()
    (_, running) = store.attempts(["a"])["a"]
    assert running.usage is None, "nothing is known of a running attempt"
    last = {**USAGE, "peak_memory_bytes": 700 * 2**20}
    store.finish("a", "succeeded", result={"rows": []}, placement=PLACEMENT, usage=last, running_here=True)
    assert [attempt.usage for attempt in store.attempts(["a"])["a"]] == [USAGE, last]


def test_an_attempt_ended_before_usage_was_kept_has_none(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqliteStore, "_migrations", SQLITE[:4])
    monkeypatch.setattr(PostgresStore, "_migrations", POSTGRES[:4])
    database.open().close()
    mark = "?" if database.backend == "sqlite" else "%s"
    database.execute(
        "INSERT INTO attempts (query_id, number, limits, status, error, placement, started_at, finished_at)"
        f" VALUES ({', '.join([mark] * 8)})",
        ("a", 1, json.dumps(LIMITS.stored()), "failed", json.dumps(ERROR), json.dumps(PLACEMENT), 1.0, 2.0),
    )
    monkeypatch.undo()

    (ended,) = database.open().attempts(["a"])["a"]
    assert (ended.status, ended.error, ended.usage) == ("failed", ERROR, None)
