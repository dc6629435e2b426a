"""What the store gives back: every field of a row read back after each write, at the bounds of its clocks."""

import sqlite3
import time
from pathlib import Path

import pytest

from controller.launchers.base import QueryLimits
from controller.queue.store import IdempotencyKey, KeyReused, QueueFull, SqliteStore, Store, StoreUnavailable
from tests.support.stored import LIMITS, REQUEST, Database

pytestmark = pytest.mark.unit

ERROR = {"error_type": "crash", "message": "the worker died", "details": {"exit_code": 1}, "retryable": True}
OTHER_LIMITS = QueryLimits(
    cpu="250m", memory="64Mi", timeout_seconds=2.5, cpu_millicores=250, memory_bytes=2**26
)
INSPECT = {"operation": "inspect", "url": "http://files/t.parquet"}


class Clock:
    """time.time() as the store sees it, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: float = 1_000.0) -> None:
        self.now = start
        monkeypatch.setattr(time, "time", lambda: self.now)

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def test_a_queued_row_is_what_was_submitted(store: Store, clock: Clock) -> None:
    row = store.insert("a", "inspect", INSPECT, OTHER_LIMITS)

    assert row == store.get("a")
    assert (row.id, row.operation, row.request, row.limits) == ("a", "inspect", INSPECT, OTHER_LIMITS)
    assert (row.status, row.result, row.error, row.placement, row.attempts) == ("queued", None, None, {}, 0)
    assert (row.submitted_at, row.started_at, row.finished_at) == (1_000.0, None, None)


def test_a_claimed_row_starts_now_and_counts_one_attempt(store: Store, clock: Clock) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    clock.advance(2)

    row = store.claim_next()

    assert row is not None and row == store.get("a")
    assert (row.status, row.attempts, row.submitted_at, row.started_at) == ("running", 1, 1_000.0, 1_002.0)
    assert row.finished_at is None


def test_a_failed_row_keeps_its_error_placement_and_times(store: Store, clock: Clock) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    clock.advance(1)
    store.claim_next()
    clock.advance(3)

    finished = store.finish("a", "failed", error=ERROR, placement={"kind": "kubernetes", "pod": "podq-a"})

    assert finished is not None and finished == store.get("a")
    assert (finished.status, finished.result, finished.error) == ("failed", None, ERROR)
    assert finished.placement == {"kind": "kubernetes", "pod": "podq-a"}
    assert (finished.submitted_at, finished.started_at, finished.finished_at) == (1_000.0, 1_001.0, 1_004.0)
    assert (finished.request, finished.limits, finished.attempts) == (REQUEST, LIMITS, 1)


def test_finishing_without_a_placement_keeps_the_one_recorded(store: Store) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    store.claim_next()

    finished = store.finish("a", "succeeded", result={"rows": [[1]]})

    assert finished is not None
    assert (finished.result, finished.placement, finished.error) == ({"rows": [[1]]}, {}, None)


def test_a_queued_row_can_be_finished_but_an_unknown_one_cannot(store: Store) -> None:
    store.insert("a", "query", REQUEST, LIMITS)

    assert store.finish("nope", "failed", error=ERROR) is None
    finished = store.finish("a", "failed", error=ERROR)
    assert finished is not None and (finished.status, finished.started_at) == ("failed", None)


def test_a_cancelled_row_keeps_the_reason_and_when(store: Store, clock: Clock) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    clock.advance(5)

    cancelled = store.cancel_queued("a", ERROR)

    assert cancelled is not None and cancelled == store.get("a")
    assert (cancelled.status, cancelled.error, cancelled.finished_at, cancelled.started_at) == (
        "cancelled",
        ERROR,
        1_005.0,
        None,
    )
    assert store.cancel_queued("nope", ERROR) is None


def test_requeue_gives_a_running_query_back_uncounted(store: Store, clock: Clock) -> None:
    store.insert("a", "query", REQUEST, LIMITS)
    store.insert("b", "query", REQUEST, LIMITS)
    store.claim_next()

    assert store.requeue("a") is True
    row = store.get("a")
    assert row is not None and (row.status, row.attempts, row.started_at) == ("queued", 0, None)
    assert store.requeue("a") is False, "only a running query goes back"
    assert store.requeue("b") is False
    assert store.requeue("nope") is False
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == "a", "a requeued query keeps its place"


def test_recover_requeues_below_the_attempt_limit_and_fails_at_it(tmp_path: Path, clock: Clock) -> None:
    store = SqliteStore(tmp_path / "podq.db")
    for query_id in ("twice", "once", "queued"):
        store.insert(query_id, "query", REQUEST, LIMITS)
    store.claim_next()
    store.requeue("twice")
    store.claim_next()  # twice, attempt 1
    store.claim_next()  # once, attempt 1
    store.finish("once", "failed", error=ERROR)
    store.insert("later", "query", REQUEST, LIMITS)
    store.claim_next()  # queued, attempt 1
    store.claim_next()  # later, attempt 1
    store.close()
    clock.advance(10)

    reopened = SqliteStore(tmp_path / "podq.db")
    recovery = reopened.recover(max_attempts=2, error=ERROR)

    assert sorted(recovery.requeued) == ["later", "queued", "twice"]
    assert recovery.failed == []
    again = [reopened.claim_next() for _ in range(3)]
    assert [(r.id, r.attempts) for r in again if r] == [("twice", 2), ("queued", 2), ("later", 2)]
    reopened.close()

    last = SqliteStore(tmp_path / "podq.db")
    final = last.recover(max_attempts=2, error=ERROR)
    assert (sorted(final.failed), final.requeued) == (["later", "queued", "twice"], [])
    failed = last.get("twice")
    assert failed is not None and (failed.status, failed.error, failed.finished_at) == (
        "failed",
        ERROR,
        1_010.0,
    )
    assert last.get("once") is not None and last.get("once").status == "failed"  # type: ignore[union-attr]
    last.close()


def test_a_requeued_row_starts_again_from_no_start_time(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "podq.db")
    store.insert("a", "query", REQUEST, LIMITS)
    store.claim_next()
    store.close()

    reopened = SqliteStore(tmp_path / "podq.db")
    assert reopened.recover(max_attempts=3, error=ERROR).requeued == ["a"]
    row = reopened.get("a")
    assert row is not None and (row.status, row.started_at, row.attempts) == ("queued", None, 1)
    reopened.close()


def test_active_ids_are_queued_and_running_oldest_first(store: Store) -> None:
    for query_id in ("a", "b", "c", "d"):
        store.insert(query_id, "query", REQUEST, LIMITS)
    store.claim_next()
    store.claim_next()
    store.finish("b", "succeeded", result={})
    store.cancel_queued("d", ERROR)

    assert store.active_ids() == ["a", "c"]


def test_a_page_is_of_one_operation_and_status(store: Store) -> None:
    store.insert("q1", "query", REQUEST, LIMITS)
    store.insert("i1", "inspect", INSPECT, LIMITS)
    store.insert("q2", "query", REQUEST, LIMITS)
    store.claim_next()

    queries = store.page(operation="query", status=None, limit=10, before_seq=None)
    running = store.page(operation="query", status="running", limit=10, before_seq=None)
    queued = store.page(operation="query", status="queued", limit=10, before_seq=None)
    inspections = store.page(operation="inspect", status="queued", limit=10, before_seq=None)

    assert [r.id for r in queries] == ["q2", "q1"]
    assert [r.id for r in running] == ["q1"]
    assert [r.id for r in queued] == ["q2"]
    assert [r.id for r in inspections] == ["i1"]
    assert store.page(operation="query", status=None, limit=1, before_seq=queries[-1].seq) == []


def test_recent_run_seconds_are_finish_minus_start_newest_first(store: Store, clock: Clock) -> None:
    for query_id, seconds, status in (
        ("a", 1.5, "succeeded"),
        ("b", 4.0, "failed"),
        ("c", 0.25, "succeeded"),
    ):
        store.insert(query_id, "query", REQUEST, LIMITS)
        store.claim_next()
        clock.advance(seconds)
        store.finish(query_id, status)
    store.insert("never-ran", "query", REQUEST, LIMITS)
    store.finish("never-ran", "failed", error=ERROR)

    assert store.recent_run_seconds(10) == [0.25, 4.0, 1.5]
    assert store.recent_run_seconds(2) == [0.25, 4.0]


def test_count_by_status_counts_every_status(store: Store) -> None:
    for query_id in ("a", "b", "c", "d"):
        store.insert(query_id, "query", REQUEST, LIMITS)
    store.claim_next()
    store.finish("a", "succeeded", result={})
    store.cancel_queued("b", ERROR)

    assert store.count_by_status() == {"succeeded": 1, "cancelled": 1, "queued": 2}
    store.ping()


def test_the_queue_limit_refuses_at_the_limit_not_before(store: Store) -> None:
    store.insert("a", "query", REQUEST, LIMITS, max_queued=2)
    store.insert("b", "query", REQUEST, LIMITS, max_queued=2)

    with pytest.raises(QueueFull) as full:
        store.insert("c", "query", REQUEST, LIMITS, max_queued=2)

    assert (full.value.queued, str(full.value)) == (2, "2 queries queued")
    store.insert("c", "query", REQUEST, LIMITS)  # no limit given: none applies


def test_a_key_lives_exactly_its_ttl(store: Store, clock: Clock) -> None:
    key = IdempotencyKey("client", "k1", "fp")
    store.insert_once(key, 60, query_id="a", operation="query", request=REQUEST, limits=LIMITS)

    clock.advance(60)
    assert store.find_key(key, 60) == store.get("a")
    row, created = store.insert_once(key, 60, query_id="b", operation="query", request=REQUEST, limits=LIMITS)
    assert (row.id, created) == ("a", False)

    clock.advance(0.5)
    assert store.find_key(key, 60) is None
    row, created = store.insert_once(key, 60, query_id="b", operation="query", request=REQUEST, limits=LIMITS)
    assert (row.id, created) == ("b", True)


def test_a_keyed_insert_stores_what_was_submitted(store: Store, clock: Clock) -> None:
    key = IdempotencyKey("client", "k1", "fp")

    row, created = store.insert_once(
        key, 60, query_id="a", operation="inspect", request=INSPECT, limits=OTHER_LIMITS
    )

    assert created and row == store.get("a")
    assert (row.operation, row.request, row.limits, row.submitted_at) == (
        "inspect",
        INSPECT,
        OTHER_LIMITS,
        1_000.0,
    )


def test_a_full_disk_is_unavailable_and_writes_nothing(tmp_path: Path) -> None:
    # SQLite's own stand-in for a full disk: the database may not grow past its current pages.
    store = SqliteStore(tmp_path / "podq.db")
    store.insert("a", "query", REQUEST, LIMITS)
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")

    with pytest.raises(StoreUnavailable, match="full"):
        store.insert("b", "query", {**REQUEST, "sql": "SELECT '" + "x" * 100_000 + "'"}, LIMITS)

    assert store.get("b") is None
    assert store.active_ids() == ["a"]
    assert store.claim_next() is not None, "the store still writes what fits"
    store.close()


def test_a_write_refused_for_good_is_not_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "podq.db")
    store._db.execute("PRAGMA query_only = ON")

    with pytest.raises(sqlite3.OperationalError) as refused:
        store.insert("a", "query", REQUEST, LIMITS)

    assert not isinstance(refused.value, StoreUnavailable)
    store.close()


def test_a_store_makes_its_directory_and_keeps_a_write_ahead_log(tmp_path: Path) -> None:
    path = tmp_path / "state" / "podq" / "podq.db"

    store = SqliteStore(path)
    store.insert("a", "query", REQUEST, LIMITS)

    # WAL mode is a property of the file: another connection sees it.
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()
    store.close()


def test_one_sqlite_controller_runs_everything_itself(tmp_path: Path) -> None:
    path = tmp_path / "podq.db"
    store = SqliteStore(path)
    store.insert("a", "query", REQUEST, LIMITS)
    store.claim_next()

    assert store.description == f"sqlite:{path}", "what the controller's start-up line names"
    assert store.request_cancel("a") is False, "a running query runs here: no other replica to tell"
    recovery = store.heartbeat(1, ERROR)
    assert (recovery.requeued, recovery.failed, recovery.finished) == ([], [], [])
    row = store.get("a")
    assert row is not None and row.status == "running", "no replica to take the query over from"
    store.close()


def test_a_reused_key_is_named_in_the_refusal(store: Store) -> None:
    store.insert_once(
        IdempotencyKey("client", "k1", "fp"),
        60,
        query_id="a",
        operation="query",
        request=REQUEST,
        limits=LIMITS,
    )

    with pytest.raises(KeyReused) as reused:
        store.find_key(IdempotencyKey("client", "k1", "other"), 60)

    assert str(reused.value) == "k1"


RETRY_POLICY = {"max_attempts": 3, "on": ["memory"], "memory_factor": 2.0, "max_memory": "1Gi"}


def test_a_query_keeps_the_retry_policy_it_was_submitted_with(store: Store) -> None:
    store.insert("plain", "query", REQUEST, LIMITS, retry=RETRY_POLICY)
    keyed, _ = store.insert_once(
        IdempotencyKey("client", "k1", "fp"),
        60,
        query_id="keyed",
        operation="query",
        request=REQUEST,
        limits=LIMITS,
        retry=RETRY_POLICY,
    )
    store.insert("none", "query", REQUEST, LIMITS)

    rows = [store.get(query_id) for query_id in ("plain", "keyed", "none")]
    assert [row.retry if row else "missing" for row in rows] == [RETRY_POLICY, RETRY_POLICY, None]
    assert keyed.retry == RETRY_POLICY


def test_the_outcome_of_a_run_finishes_only_a_query_this_replica_runs(store: Store) -> None:
    store.insert("queued", "query", REQUEST, LIMITS)

    assert store.finish("queued", "succeeded", result={"rows": []}, running_here=True) is None
    row = store.get("queued")
    assert row is not None and row.status == "queued"


def test_a_restart_ends_the_attempt_it_cut_short_at_the_restart(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    first = database.open()
    first.insert("a", "query", REQUEST, LIMITS)
    first.claim_next()
    database.crash(first)
    clock.advance(30)

    database.open().recover(max_attempts=2, error=ERROR)

    (cut_short,) = database.open().attempts(["a"])["a"]
    assert (cut_short.status, cut_short.started_at, cut_short.finished_at) == (
        "interrupted",
        1_000.0,
        1_030.0,
    )
