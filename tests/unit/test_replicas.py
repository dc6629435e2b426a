"""Several controllers (replicas) on one PostgreSQL database, through the store and the dispatcher: the cap
holds across replicas under racing claims, a silent replica's queries are taken over and finish once,
cancel and long polls work from any replica. A real PostgreSQL server; launchers are the gated double."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from controller.queue.dispatcher import Dispatcher
from controller.queue.metrics import Metrics
from controller.queue.store import CANCEL, FINISHED, ReplicaLost, Store
from controller.queue.store.postgres import PostgresStore
from tests.support.stored import LIMITS, REQUEST, Database
from tests.support.waiting import wait_until_async
from tests.unit.test_dispatcher import GatedLauncher

pytestmark = pytest.mark.unit

ERROR = {"error_type": "internal", "message": "x", "details": {}, "retryable": True}


def submit(store: Store, *ids: str) -> None:
    for query_id in ids:
        store.insert(query_id, "query", REQUEST, LIMITS)


@pytest.mark.parametrize("cap", [1, 3])
def test_racing_claimers_on_four_replicas_never_exceed_the_cap(pg_database: Database, cap: int) -> None:
    """Each claimer counts what it holds; it lets go (in Python) before the store hears of it, so the
    count can only exceed the cap if the store let more than `cap` run."""
    stores = [pg_database.open() for _ in range(4)]
    submit(stores[0], *[f"q{i:03}" for i in range(120)])
    held, peak, finished = [0], [0], []
    lock = threading.Lock()
    barrier = threading.Barrier(8)
    # Set once `cap` rows are held at once: the race is shown to reach the cap, on a loaded machine too.
    at_cap = threading.Event()

    def claimer(store: Store, seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        while True:
            row = store.claim_next(cap)
            if row is None:
                if store.count_by_status().get("queued", 0) == 0:
                    return
                continue
            with lock:
                held[0] += 1
                peak[0] = max(peak[0], held[0])
                assert held[0] <= cap, f"{held[0]} running at cap {cap}"
                if held[0] == cap:
                    at_cap.set()
            # Until then each claimer holds on to its row (a while at most), so that claims pile up.
            at_cap.wait(timeout=2)
            if rng.random() < 0.5:
                threading.Event().wait(rng.random() / 200)
            with lock:
                held[0] -= 1
                finished.append(row.id)
            assert store.finish(row.id, "succeeded", running_here=True) is not None

    threads = [threading.Thread(target=claimer, args=(stores[n % 4], n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(finished) == [f"q{i:03}" for i in range(120)], "each query claimed exactly once"
    assert peak[0] == cap
    assert stores[1].count_by_status() == {"succeeded": 120}


def test_a_silent_replicas_queries_are_taken_over_and_finish_once(pg_database: Database) -> None:
    a, b = pg_database.open(), pg_database.open()
    submit(a, "x", "y", "z")
    assert [a.claim_next().id, a.claim_next().id] == ["x", "y"]  # type: ignore[union-attr]
    assert b.heartbeat(2, ERROR).requeued == [], "a is alive: nothing to take over"
    pg_database.crash(a)  # its heartbeat is now a day old
    c = pg_database.open()
    recovery = b.heartbeat(2, ERROR)
    assert (sorted(recovery.requeued), recovery.failed) == (["x", "y"], [])
    assert c.heartbeat(2, ERROR).requeued == [], "one replica takes over each"
    assert [b.claim_next().id for _ in range(3)] == ["x", "y", "z"]  # type: ignore[union-attr]
    rows = [b.get(i) for i in "xyz"]
    assert [(r.status, r.attempts) for r in rows if r] == [("running", 2), ("running", 2), ("running", 1)]


def test_a_replica_declared_dead_learns_it_and_cannot_finish_what_it_ran(pg_database: Database) -> None:
    a, b = pg_database.open(), pg_database.open()
    submit(a, "x")
    a.claim_next()
    assert isinstance(a, PostgresStore)
    pg_database.execute(
        "UPDATE replicas SET heartbeat_at = heartbeat_at - interval '1 day' WHERE id = %s", (a.replica,)
    )
    assert b.heartbeat(2, ERROR).requeued == ["x"]
    b_row = b.claim_next()
    assert b_row is not None and b_row.id == "x"
    with pytest.raises(ReplicaLost):
        a.heartbeat(2, ERROR)
    assert a.finish("x", "succeeded", result={"rows": [1]}, running_here=True) is None
    assert a.requeue("x") is False
    finished = b.finish("x", "succeeded", result={"rows": [2]}, running_here=True)
    assert finished is not None and finished.result == {"rows": [2]}
    a.heartbeat(2, ERROR)  # registered again after ReplicaLost


def test_a_query_exhausted_on_a_dead_replica_fails_and_a_cancelled_one_is_cancelled(
    pg_database: Database,
) -> None:
    a, b = pg_database.open(), pg_database.open()
    submit(a, "tired", "unwanted")
    a.claim_next()
    a.claim_next()
    assert b.request_cancel("unwanted")
    pg_database.crash(a)
    recovery = b.heartbeat(1, ERROR)
    assert (recovery.requeued, recovery.failed, recovery.cancelled) == ([], ["tired"], ["unwanted"])
    ended = [b.get(query_id) for query_id in ("tired", "unwanted")]
    assert [(row.status, row.finished_at is not None) for row in ended if row] == [
        ("failed", True),
        ("cancelled", True),
    ], "each ended when taken over"


def test_events_reach_every_replica(pg_database: Database) -> None:
    a, b = pg_database.open(), pg_database.open()
    heard: list[tuple[str, str]] = []
    got = threading.Condition()

    def listen(channel: str, query_id: str) -> None:
        with got:
            heard.append((channel, query_id))
            got.notify_all()

    b.subscribe(listen)
    submit(a, "x", "y")
    a.claim_next()
    assert b.request_cancel("x")
    a.finish("x", "succeeded", running_here=True)
    a.cancel_queued("y", ERROR)
    with got:
        assert got.wait_for(lambda: {(CANCEL, "x"), (FINISHED, "x"), (FINISHED, "y")} <= set(heard), 10)


@asynccontextmanager
async def replicas(
    database: Database, count: int, cap: int
) -> AsyncIterator[list[tuple[Dispatcher, GatedLauncher]]]:
    async with AsyncExitStack() as stack:
        running: list[tuple[Dispatcher, GatedLauncher]] = []
        for _ in range(count):
            store = database.open()
            launcher = GatedLauncher()
            launcher.store = store
            if running:  # one set of what runs, across the replicas: each launcher's peak is the global one
                launcher.active = running[0][1].active
            dispatcher = Dispatcher(
                store,
                launcher,
                max_concurrent=cap,
                max_attempts=2,
                metrics=Metrics(store),
                heartbeat_seconds=0.2,
                stale_seconds=1,
            )
            await dispatcher.start()
            stack.push_async_callback(dispatcher.stop)
            running.append((dispatcher, launcher))
        yield running


def test_two_dispatchers_share_the_cap_and_cancel_and_wait_across_replicas(pg_database: Database) -> None:
    async def scenario() -> None:
        async with replicas(pg_database, 2, cap=3) as [(one, first), (two, second)]:
            store = pg_database.open()
            submit(store, *[f"q{i}" for i in range(8)])
            one.notify()
            two.notify()
            await wait_until_async(
                lambda: len(first.started) + len(second.started) >= 3, "three queries to start", within=30
            )
            started = first.started + second.started
            assert sorted(started) == ["q0", "q1", "q2"], "three run, on whichever replica claimed them"
            owner_of = {q: (first if q in first.started else second) for q in started}
            # Cancel through the replica that does not run it; wait through it too.
            victim = next(q for q in started if owner_of[q] is first)
            row = await two.cancel(victim)
            assert row is not None and row.status == "cancelled"
            other = next(q for q in started if q != victim)
            waiter = asyncio.create_task((two if owner_of[other] is first else one).wait_finished(other, 10))
            owner_of[other].open_gate(other)
            finished = await asyncio.wait_for(waiter, 5)
            assert finished is not None and finished.status == "succeeded"
            for q in [f"q{i}" for i in range(8)]:
                first.open_gate(q)
                second.open_gate(q)
            for q in [f"q{i}" for i in range(8)]:
                done = await one.wait_finished(q, 10)
                assert done is not None and done.status in ("succeeded", "cancelled")
            assert max(first.peak, second.peak) == 3, "never more than the cap across both replicas"
            everything = first.started + second.started
            assert sorted(everything) == sorted(set(everything)), "no query started twice"

    asyncio.run(scenario())
