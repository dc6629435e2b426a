"""The dispatcher with a real store (each backend: SQLite, a real PostgreSQL server) and a gated launcher.

The launcher here is a test double on purpose: the property under test is the dispatcher's (cap, FIFO,
exactly one terminal state), and each job must stay running until the test releases it. Real worker
subprocesses run the same dispatcher in tests/integration.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.launchers.base import Job, Limits, Outcome, PoolStats
from controller.queue.dispatcher import Dispatcher
from controller.queue.metrics import Metrics
from controller.queue.retry import RetryPolicy
from controller.queue.store import Store
from tests.support.stored import LIMITS, REQUEST, Database, NewDatabase
from worker_image.protocol import ErrorType, error_info

pytestmark = pytest.mark.unit


class GatedLauncher:
    """Each job runs until `open_gate(query_id)`; records starts, peak concurrency, cancellations and
    what the dispatcher tells it about stored outcomes, recovery and shutdown."""

    name = "gated"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.active: set[str] = set()
        self.peak = 0
        self.gates: dict[str, asyncio.Event] = {}
        self.changed = asyncio.Condition()
        # (query id, its status in the store when the dispatcher released it)
        self.released: list[tuple[str, str]] = []
        self.store: Store | None = None
        self.reconciled: list[str] | None = None
        self.detached = False

    async def start(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    async def run(self, job: Job) -> Outcome:
        gate = self.gates.setdefault(job.query_id, asyncio.Event())
        self.started.append(job.query_id)
        self.active.add(job.query_id)
        self.peak = max(self.peak, len(self.active))
        await self._changed()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(f"{job.query_id} (detached)" if self.detached else job.query_id)
            raise
        finally:
            self.active.discard(job.query_id)
            await self._changed()
        return Outcome(result={"columns": [], "rows": [], "total_rows": 0, "truncated": False})

    def open_gate(self, query_id: str) -> None:
        self.gates.setdefault(query_id, asyncio.Event()).set()

    def refusal(self, limits: Limits) -> str | None:
        return None

    async def reconcile(self, active: Callable[[], Collection[str]]) -> None:
        self.reconciled = list(active())

    async def release(self, query_id: str) -> None:
        row = self.store.get(query_id) if self.store else None
        self.released.append((query_id, row.status if row else "?"))
        await self._changed()

    async def discard(self, query_id: str) -> bool:
        return True

    def pool_stats(self) -> PoolStats | None:
        return None

    def detach(self) -> None:
        self.detached = True

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), within)


@asynccontextmanager
async def dispatching(cap: int, db: Database) -> AsyncIterator[tuple[Dispatcher, GatedLauncher, Store]]:
    store = db.open()
    launcher = GatedLauncher()
    launcher.store = store
    dispatcher = Dispatcher(store, launcher, max_concurrent=cap, max_attempts=2, metrics=Metrics(store))
    await dispatcher.start()
    try:
        yield dispatcher, launcher, store
    finally:
        await dispatcher.stop()
        store.close()


@asynccontextmanager
async def running_a(db: Database) -> AsyncIterator[tuple[Dispatcher, GatedLauncher, Store]]:
    """`dispatching` with a cap of one, once query "a" is running in the launcher."""
    async with dispatching(1, db) as (dispatcher, launcher, store):
        submit(store, dispatcher, "a")
        await launcher.wait_for(lambda: launcher.active == {"a"})
        yield dispatcher, launcher, store


def run_with_db(new_database: NewDatabase, scenario: Callable[[Database], Coroutine[Any, Any, None]]) -> None:
    """Run an async scenario against a fresh database."""
    database = new_database()
    try:
        asyncio.run(scenario(database))
    finally:
        database.release()


def submit(store: Store, dispatcher: Dispatcher, query_id: str) -> None:
    store.insert(query_id, "query", REQUEST, LIMITS)
    dispatcher.notify()


actions = st.lists(
    st.one_of(
        st.just(("submit", 0)),
        st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=30)),
        st.tuples(st.just("finish"), st.integers(min_value=0, max_value=30)),
    ),
    max_size=30,
)


# `new_database` is function-scoped, but each example asks it for a database of its own.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap=st.integers(min_value=1, max_value=4), script=actions)
def test_cap_fifo_and_one_terminal_state_for_any_submit_cancel_sequence(
    new_database: NewDatabase, cap: int, script: list[tuple[str, int]]
) -> None:
    """A model of the queue predicts which queries run after each step; the dispatcher must agree."""

    async def scenario(db: Database) -> None:
        async with dispatching(cap, db) as (dispatcher, launcher, store):
            submitted: list[str] = []
            queue: list[str] = []
            running: list[str] = []
            expected: dict[str, str] = {}
            for verb, index in script:
                if verb == "submit":
                    query_id = f"q{len(submitted):03}"
                    submitted.append(query_id)
                    queue.append(query_id)
                    submit(store, dispatcher, query_id)
                elif submitted:
                    target = submitted[index % len(submitted)]
                    if verb == "cancel":
                        row = await dispatcher.cancel(target)
                        assert row is not None and row.id == target
                        if target in queue or target in running:
                            assert row.status == "cancelled"
                            expected[target] = "cancelled"
                            (queue if target in queue else running).remove(target)
                        elif expected.get(target) == "cancelled":
                            assert row.status == "cancelled"  # a repeated DELETE is idempotent
                        else:
                            assert row.status == expected[target] == "succeeded"  # finished: left as it was
                    elif target in running:
                        launcher.open_gate(target)
                        row = await dispatcher.wait_finished(target, 5)
                        assert row is not None and row.status == "succeeded"
                        expected[target] = "succeeded"
                        running.remove(target)
                while len(running) < cap and queue:
                    running.append(queue.pop(0))
                await launcher.wait_for(lambda: launcher.active == set(running))

            for query_id in submitted:
                launcher.open_gate(query_id)
            for query_id in submitted:
                row = await dispatcher.wait_finished(query_id, 5)
                assert row is not None
                assert row.status == expected.get(query_id, "succeeded"), row

            assert launcher.peak <= cap
            assert launcher.started == sorted(launcher.started), "start order must follow submission"
            assert len(launcher.started) == len(set(launcher.started)), "a query started twice"
            never_started = {q for q in submitted if q not in launcher.started}
            assert all(expected.get(q) == "cancelled" for q in never_started)

    run_with_db(new_database, scenario)


def test_QUEUE_1_cap_of_two_starts_fifo_and_drains(new_database: NewDatabase) -> None:
    async def scenario(db: Database) -> None:
        async with dispatching(2, db) as (dispatcher, launcher, store):
            for query_id in ("a", "b", "c", "d"):
                submit(store, dispatcher, query_id)
            await launcher.wait_for(lambda: launcher.started == ["a", "b"])
            assert store.get("c").status == store.get("d").status == "queued"  # type: ignore[union-attr]
            launcher.open_gate("b")
            await launcher.wait_for(lambda: launcher.started == ["a", "b", "c"])
            launcher.open_gate("a")
            await launcher.wait_for(lambda: launcher.started == ["a", "b", "c", "d"])
            launcher.open_gate("c")
            launcher.open_gate("d")
            for query_id in ("a", "b", "c", "d"):
                row = await dispatcher.wait_finished(query_id, 5)
                assert row is not None and row.status == "succeeded"

    run_with_db(new_database, scenario)


def test_stop_hands_running_queries_back_to_the_queue(new_database: NewDatabase) -> None:
    async def scenario(db: Database) -> None:
        async with dispatching(1, db) as (dispatcher, launcher, store):
            submit(store, dispatcher, "a")
            submit(store, dispatcher, "b")
            await launcher.wait_for(lambda: launcher.active == {"a"})
        reopened = db.open()
        assert {r.id: (r.status, r.attempts) for r in (reopened.get("a"), reopened.get("b")) if r} == {
            "a": ("queued", 0),
            "b": ("queued", 0),
        }

    run_with_db(new_database, scenario)


def test_wait_finished_returns_on_the_terminal_state(new_database: NewDatabase) -> None:
    async def scenario(db: Database) -> None:
        async with dispatching(1, db) as (dispatcher, launcher, store):
            submit(store, dispatcher, "a")
            waiter = asyncio.create_task(dispatcher.wait_finished("a", 30))
            await launcher.wait_for(lambda: launcher.active == {"a"})
            assert not waiter.done()
            launcher.open_gate("a")
            row = await asyncio.wait_for(waiter, 5)
            assert row is not None and row.status == "succeeded"
            timed_out = await dispatcher.wait_finished("missing", 0.01)
            assert timed_out is None

    run_with_db(new_database, scenario)


def test_a_job_is_released_only_once_its_outcome_is_stored(new_database: NewDatabase) -> None:
    async def scenario(db: Database) -> None:
        async with running_a(db) as (_, launcher, _):
            assert launcher.released == []
            launcher.open_gate("a")
            await launcher.wait_for(lambda: launcher.released != [])
            assert launcher.released == [("a", "succeeded")]

    run_with_db(new_database, scenario)


def test_stop_detaches_the_launcher_before_it_cancels_running_jobs(new_database: NewDatabase) -> None:
    async def scenario(db: Database) -> None:
        async with running_a(db) as (_, launcher, _):
            assert not launcher.detached
        assert launcher.cancelled == ["a (detached)"]

    run_with_db(new_database, scenario)


def test_start_hands_the_launcher_the_active_queries_after_recovery(new_database: NewDatabase) -> None:
    async def scenario(db: Database) -> None:
        store = db.open()
        for query_id in ("old-running", "queued"):
            store.insert(query_id, "query", REQUEST, LIMITS)
        store.claim_next()  # "old-running" was running when the previous controller died
        done = store.insert("done", "query", REQUEST, LIMITS)
        store.finish(done.id, "cancelled", error={"error_type": "cancelled"})
        db.crash(store)
        async with dispatching(1, db) as (_, launcher, _store):
            assert launcher.reconciled == ["old-running", "queued"]

    run_with_db(new_database, scenario)


def test_a_query_queued_past_its_deadline_never_starts_and_the_next_does(new_database: NewDatabase) -> None:
    async def scenario(db: Database) -> None:
        async with dispatching(1, db) as (dispatcher, launcher, store):
            submit(store, dispatcher, "a")
            await launcher.wait_for(lambda: launcher.active == {"a"})
            store.insert("late", "query", REQUEST, dataclasses.replace(LIMITS, queue_timeout_seconds=0.3))
            dispatcher.notify()
            late = await dispatcher.wait_finished("late", 10)
            assert late is not None and late.status == "failed" and late.started_at is None
            assert late.error is not None and late.error["details"]["phase"] == "queue"
            submit(store, dispatcher, "b")
            launcher.open_gate("a")
            launcher.open_gate("b")
            b = await dispatcher.wait_finished("b", 10)
            assert b is not None and b.status == "succeeded"
            assert launcher.started == ["a", "b"]

    run_with_db(new_database, scenario)


class StuckLauncher(GatedLauncher):
    """Every job runs out of memory, and its worker cannot be removed before a retry."""

    async def run(self, job: Job) -> Outcome:
        self.started.append(job.query_id)
        return Outcome(error=error_info(ErrorType.MEMORY, "the query ran out of memory"))

    async def discard(self, query_id: str) -> bool:
        return False


def test_a_retry_whose_failed_worker_cannot_be_removed_does_not_happen_and_says_why(
    database: Database,
) -> None:
    async def scenario() -> None:
        store = database.open()
        launcher = StuckLauncher()
        dispatcher = Dispatcher(store, launcher, max_concurrent=1, max_attempts=3, metrics=Metrics(store))
        await dispatcher.start()
        try:
            policy = RetryPolicy(
                max_attempts=3, on=frozenset({"memory"}), memory_factor=2, max_memory_bytes=2**31
            )
            store.insert("a", "query", REQUEST, LIMITS, retry=policy.stored())
            dispatcher.notify()
            row = await dispatcher.wait_finished("a", 10)
        finally:
            await dispatcher.stop()
            store.close()
        assert row is not None and row.status == "failed" and launcher.started == ["a"]
        assert row.error is not None
        assert row.error["message"].endswith("not retried: the failed attempt's worker could not be removed")

    asyncio.run(scenario())
