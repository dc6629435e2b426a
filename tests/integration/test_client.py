"""`podq.client` against a real `podq serve`: every endpoint, sync and async, and every error type a
local controller can produce.

Real queries produce validation, network, sql, timeout (a dataset that drips past the deadline),
memory (a cross join over its limit), cancelled and internal (a query running when the controller was
killed, with no attempt left). Only `crash` uses a worker test hook: no real query makes the worker
die. `evicted`, `image` and `unschedulable` as a query's fate need Kubernetes; their mapping is in
tests/unit/test_client_errors.py, as is the 503 (`Unavailable`) that only a store that cannot write gives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.testing.process import ControllerProcess
from podq.client import (
    AsyncClient,
    BadRequest,
    Cancelled,
    Client,
    Conflict,
    InspectionResult,
    InternalError,
    InvalidQuery,
    Limits,
    NetworkError,
    NotFound,
    OutOfMemory,
    QueryResult,
    QueryTimeout,
    QueueFull,
    SQLError,
    Unauthorized,
    Unreachable,
    WaitTimeout,
    WorkerCrashed,
    is_retryable,
)
from tests.support.fixtures import HUNGRY_SQL
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]


def slow_url(file_server: str, seconds: float = 60) -> str:
    """A dataset whose download drips for `seconds`: its query stays running (fetching) meanwhile."""
    return f"{file_server}/slow?seconds={seconds}&drip=0.2"


def test_submit_wait_get_list_and_health(running_controller: ControllerProcess, file_server: str) -> None:
    with Client(running_controller.url) as podq:
        assert podq.healthz() is True
        readiness = podq.readyz()
        assert readiness.ready and readiness.checks == {"store": "ok", "launcher": "ok"}
        older = podq.run("SELECT 0 AS z")

        queued = podq.submit(
            "SELECT name, value FROM t ORDER BY id",
            {"t": f"{file_server}/simple.parquet"},
            cpu="500m",
            memory="256Mi",
            timeout_seconds=30,
            queue_timeout_seconds=600,
            max_rows=3,
        )
        assert queued.status in ("queued", "running") and not queued.finished
        assert queued.limits == Limits("500m", "256Mi", 30, 600)
        assert older.limits.queue_timeout_seconds is None, "no queue deadline unless one is asked for"
        assert queued.datasets[0].table_name == "t"

        done = podq.wait(queued.id, timeout=60)
        assert done.status == "succeeded" and done.finished and len(done.attempts) == 1
        assert isinstance(done.result, QueryResult)
        assert [c.name for c in done.result.columns] == ["name", "value"]
        assert len(done.result.rows) == 3 and done.result.total_rows == 10
        assert done.result.truncated and done.result.truncated_by == "rows"
        assert done.raw["id"] == done.id

        assert podq.get(queued.id) == done
        assert podq.get(queued.id, wait=5) == done
        page = podq.list(status="succeeded", limit=1)
        assert [r.id for r in page.items] == [done.id] and page.next_cursor is not None
        assert podq.list(status="succeeded", limit=1, cursor=page.next_cursor).items[0].id == older.id
        every = [r.id for r in podq.iter_queries(status="succeeded", page_size=1)]
        assert every.index(done.id) < every.index(older.id), "newest first, across pages"
        assert all(r.status == "queued" for r in podq.list(status="queued").items)


def test_submit_sends_an_idempotency_key_and_honours_a_given_one(
    running_controller: ControllerProcess,
) -> None:
    with Client(running_controller.url) as podq:
        first = podq.submit("SELECT 7 AS n", idempotency_key="client-test-key")
        again = podq.submit("SELECT 7 AS n", idempotency_key="client-test-key")
        other = podq.submit("SELECT 7 AS n")
        assert again.id == first.id, "the same key and body give the same query back"
        assert other.id != first.id, "a generated key is new for every submission"
        with pytest.raises(BadRequest) as refused:
            podq.submit("SELECT 8 AS n", idempotency_key="client-test-key")
        assert refused.value.status_code == 422
        assert refused.value.error.details["errors"][0]["field"] == "Idempotency-Key"


def test_run_returns_rows_or_raises_the_typed_error(
    running_controller: ControllerProcess, file_server: str, closed_port_url: str
) -> None:
    table = f"{file_server}/simple.parquet"
    with Client(running_controller.url) as podq:
        counted = podq.run("SELECT count(*) AS n FROM t", {"t": table}).result
        assert isinstance(counted, QueryResult)
        assert (counted.rows, counted.total_rows, counted.truncated, counted.truncated_by) == (
            [[10]],
            1,
            False,
            None,
        )
        cases = [
            (InvalidQuery, "SELECT * FROM t", {"t": f"{file_server}/fake.parquet"}, {}),
            (InvalidQuery, "SELECT * FROM nowhere", {}, {}),
            (NetworkError, "SELECT * FROM t", {"t": f"{closed_port_url}/x.parquet"}, {}),
            (SQLError, "SELEC * FROM t", {"t": table}, {}),
            (QueryTimeout, "SELECT * FROM t", {"t": slow_url(file_server)}, {"timeout_seconds": 1}),
        ]
        for expected, sql, datasets, limits in cases:
            with pytest.raises(expected) as failed:
                podq.run(sql, datasets, wait_timeout=60, **limits)
            assert failed.value.error.error_type == failed.value.record.error.error_type  # type: ignore[union-attr]
            assert failed.value.record.status == "failed"
            assert is_retryable(failed.value) is (expected is NetworkError)


def test_memory_is_OutOfMemory_for_a_real_query(
    running_controller: ControllerProcess, file_server: str
) -> None:
    with Client(running_controller.url) as podq, pytest.raises(OutOfMemory) as failed:
        podq.run(HUNGRY_SQL, {"table2": f"{file_server}/large.parquet"}, memory="256Mi", timeout_seconds=60)
    assert failed.value.error.details["limit_bytes"] == 256 * 1024 * 1024


def test_retry_policy_and_attempts_on_the_record(running_controller: ControllerProcess) -> None:
    with Client(running_controller.url) as podq:
        done = podq.run("SELECT 1 AS x", memory="256Mi", retry={"on": ["memory"], "max_memory": "1Gi"})
        with pytest.raises(BadRequest) as refused:
            podq.submit("SELECT 1", retry={"memory_factor": 1})
    assert done.retry == {
        "max_attempts": 3,
        "on": ["memory"],
        "memory_factor": 2.0,
        "max_memory_bytes": 2**30,
    }
    (attempt,) = done.attempts
    assert (attempt.number, attempt.status, attempt.limits, attempt.error) == (
        1,
        "succeeded",
        done.limits,
        None,
    )
    assert attempt.placement == done.placement and attempt.finished_at == done.finished_at
    assert "retry.memory_factor" in refused.value.error.message


def test_crash_is_WorkerCrashed(running_controller: ControllerProcess) -> None:
    # The one test hook here: no real query makes the worker die.
    with Client(running_controller.url) as podq, pytest.raises(WorkerCrashed) as failed:
        podq.run("SELECT 1", debug={"crash": "segv"})
    assert failed.value.retryable


def test_cancel_not_found_conflict_and_wait_timeout(
    running_controller: ControllerProcess, file_server: str
) -> None:
    with Client(running_controller.url) as podq:
        slow = podq.submit("SELECT * FROM t", {"t": slow_url(file_server)}, timeout_seconds=60)
        with pytest.raises(WaitTimeout) as waited:
            podq.wait(slow.id, timeout=0.5)
        assert waited.value.record.status in ("queued", "running")
        cancelled = podq.cancel(slow.id)
        assert (
            cancelled.status == "cancelled" and cancelled.error and cancelled.error.error_type == "cancelled"
        )
        assert podq.cancel(slow.id).status == "cancelled", "cancelling twice is fine"
        with pytest.raises(Cancelled):
            podq.wait(slow.id, raise_on_failure=True)

        finished = podq.run("SELECT 1 AS x")
        with pytest.raises(Conflict) as conflict:
            podq.cancel(finished.id)
        assert conflict.value.status_code == 409 and "already finished" in conflict.value.error.message
        for call in (podq.get, podq.cancel, podq.get_inspection):
            with pytest.raises(NotFound) as missing:
                call("0" * 32)
            assert missing.value.status_code == 404
        with pytest.raises(BadRequest) as bad:
            podq.submit("SELECT 1", memory="1Pi")
        assert "limits.memory" in bad.value.error.message and not is_retryable(bad.value)
        with pytest.raises(BadRequest) as bad:
            podq.submit("SELECT 1", queue_timeout_seconds=10**6)
        assert "limits.queue_timeout_seconds" in bad.value.error.message


def test_inspection(running_controller: ControllerProcess, file_server: str) -> None:
    with Client(running_controller.url) as podq:
        queued = podq.inspect(f"{file_server}/simple.parquet", memory="256Mi")
        assert queued.operation == "inspect"
        done = podq.wait_inspection(queued.id, timeout=60)
        assert done == podq.get_inspection(queued.id, wait=1)
        assert isinstance(done.result, InspectionResult)
        assert done.result.valid and done.result.row_count == 10
        assert "name" in [c.name for c in done.result.columns]
        with pytest.raises(NotFound):
            podq.get(queued.id)  # an inspection is not a query
        with pytest.raises(InvalidQuery):
            podq.wait_inspection(podq.inspect(f"{file_server}/fake.parquet").id, raise_on_failure=True)


def test_async_client_covers_the_same_endpoints(
    running_controller: ControllerProcess, file_server: str
) -> None:
    async def scenario() -> None:
        async with AsyncClient(running_controller.url) as podq:
            assert await podq.healthz() is True
            assert (await podq.readyz()).ready
            done = await podq.run("SELECT 2 AS y")
            assert done.result and done.result.rows == [[2]]  # type: ignore[union-attr]
            assert (await podq.get(done.id, wait=1)) == done
            assert done.id in [r.id for r in (await podq.list(limit=50)).items]
            assert done.id in [r.id async for r in podq.iter_queries(status="succeeded")]
            slow = await podq.submit(
                "SELECT * FROM t", {"t": slow_url(file_server)}, queue_timeout_seconds=600
            )
            assert slow.limits.queue_timeout_seconds == 600
            assert (await podq.cancel(slow.id)).status == "cancelled"
            with pytest.raises(Cancelled):
                await podq.wait(slow.id, raise_on_failure=True)
            with pytest.raises(SQLError):
                await podq.run("SELEC 1")
            with pytest.raises(Conflict):
                await podq.cancel(done.id)
            with pytest.raises(NotFound):
                await podq.get("f" * 32)
            inspection = await podq.inspect(f"{file_server}/simple.parquet")
            inspected = await podq.wait_inspection(inspection.id, timeout=60)
            assert inspected == await podq.get_inspection(inspection.id)

    asyncio.run(scenario())


def test_queue_full_is_QueueFull_with_retry_after(
    start_controller: StartController, file_server: str
) -> None:
    controller = start_controller(max_concurrent=1, max_queued=1)
    with Client(controller.url) as podq:
        running = podq.submit("SELECT * FROM t", {"t": slow_url(file_server)})
        queued = podq.submit("SELECT 1")
        with pytest.raises(QueueFull) as full:
            podq.submit("SELECT 2")
        assert full.value.status_code == 429 and full.value.retry_after >= 1
        assert full.value.error.error_type == "unschedulable" and is_retryable(full.value)
        for record in (queued, running):
            podq.cancel(record.id)


def test_a_queue_deadline_passed_behind_a_full_queue_is_QueryTimeout_in_phase_queue(
    start_controller: StartController, file_server: str
) -> None:
    controller = start_controller(max_concurrent=1)
    with Client(controller.url) as podq:
        running = podq.submit("SELECT * FROM t", {"t": slow_url(file_server)})
        wait_until(lambda: podq.get(running.id).status == "running", "the slow query to hold the only slot")
        with pytest.raises(QueryTimeout) as late:
            podq.run("SELECT 1", queue_timeout_seconds=1, wait_timeout=60)
        assert late.value.error.details["phase"] == "queue" and is_retryable(late.value)
        assert late.value.record.limits.queue_timeout_seconds == 1 and late.value.record.started_at is None
        podq.cancel(running.id)


def test_auth_unauthorized_then_token(start_controller: StartController) -> None:
    controller = start_controller(api_tokens=json.dumps(["client-token"]))
    with Client(controller.url) as anonymous, pytest.raises(Unauthorized) as refused:
        anonymous.list()
    assert refused.value.status_code == 401
    with Client(controller.url, token="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.submit("SELECT 1")
    with Client(controller.url, token="client-token") as podq:
        assert podq.run("SELECT 1 AS x").status == "succeeded"
        assert podq.healthz() and podq.readyz().ready


def test_internal_after_a_kill_with_no_attempt_left(
    start_controller: StartController, tmp_path: Path, file_server: str
) -> None:
    data_dir = tmp_path / "internal-data"
    first = start_controller(data_dir=data_dir, max_attempts=1)
    with Client(first.url) as podq:
        slow = podq.submit("SELECT * FROM t", {"t": slow_url(file_server)})
        wait_until(lambda: podq.get(slow.id).status == "running", "the slow query to be running")
    first.kill()
    second = start_controller(data_dir=data_dir, max_attempts=1)
    with Client(second.url) as podq, pytest.raises(InternalError) as failed:
        podq.wait(slow.id, timeout=30, raise_on_failure=True)
    assert failed.value.retryable


def test_unreachable(closed_port_url: str) -> None:
    with Client(closed_port_url, retries=1) as podq, pytest.raises(Unreachable) as down:
        podq.healthz()
    assert is_retryable(down.value) and closed_port_url in str(down.value)
