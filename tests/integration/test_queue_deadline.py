"""The queue deadline end to end on the local launcher: a real controller, real workers, each store.

A queue is held full by a sleeper (cap 1); a query behind it with `queue_timeout_seconds: 1` must fail as
`timeout` in phase `queue` without a worker ever running for it, and the queue must go on afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.testing.process import ControllerProcess, wait_finished, wait_status
from tests.support.api import sleeper, submit
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]
# One start mode is enough: the queue deadline is decided before any worker starts.
HELD_FULL = {"max_concurrent": "1", "local_warm_start": "false"}
LATE = {"sql": "SELECT 1 AS x", "limits": {"queue_timeout_seconds": 1}}


def assert_expired_in_the_queue(record: dict[str, Any]) -> None:
    assert record["status"] == "failed", record
    error = record["error"]
    assert (error["error_type"], error["retryable"]) == ("timeout", True), error
    assert error["details"] == {"phase": "queue", "queue_timeout_seconds": 1}
    assert record["limits"]["queue_timeout_seconds"] == 1
    # No worker ever ran for it.
    assert (record["started_at"], record["placement"], record["attempts"]) == (None, {}, []), record


def blocked(client: httpx.Client) -> str:
    """A sleeper holding the only slot, running."""
    blocker = submit(client, sleeper(120))
    wait_status(client, blocker, "running")
    return blocker


def test_a_query_queued_past_its_queue_deadline_never_starts_and_the_queue_goes_on(
    start_controller: StartController, store_settings: dict[str, str]
) -> None:
    controller = start_controller(**HELD_FULL, **store_settings)
    with controller.client() as client:
        blocker = blocked(client)
        late = submit(client, LATE)
        after = submit(client, {"sql": "SELECT 2 AS y"})
        assert_expired_in_the_queue(wait_finished(client, late, timeout=30))
        assert client.get(blocker).json()["status"] == "running"
        assert client.get(after).json()["status"] == "queued"
        assert client.delete(blocker).json()["status"] == "cancelled"
        nxt = wait_finished(client, after, timeout=60)
        metrics = client.get("/metrics").text
    assert nxt["status"] == "succeeded" and nxt["result"]["rows"] == [[2]], nxt
    assert 'error_type="timeout",operation="query",status="failed"} 1.0' in metrics


def test_a_queue_deadline_that_passed_while_the_controller_was_down_is_enforced_at_start(
    start_controller: StartController, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = start_controller(data_dir, **HELD_FULL)
    with first.client() as client:
        blocked(client)
        late = submit(client, LATE)
        submitted_at = client.get(late).json()["submitted_at"]
    first.stop()
    wait_until(lambda: time.time() > submitted_at + 1, "the queue deadline to pass", within=10)
    second = start_controller(data_dir, **HELD_FULL)
    with second.client() as client:
        assert_expired_in_the_queue(wait_finished(client, late, timeout=30))


def test_a_query_within_its_queue_deadline_runs_and_can_still_be_cancelled(
    start_controller: StartController,
) -> None:
    controller = start_controller(**HELD_FULL)
    with controller.client() as client:
        blocker = blocked(client)
        patient = submit(client, {"sql": "SELECT 1 AS x", "limits": {"queue_timeout_seconds": 600}})
        cancelled = client.delete(patient).json()
        assert cancelled["status"] == "cancelled" and cancelled["error"]["error_type"] == "cancelled"
        waiting = submit(client, {"sql": "SELECT 3 AS z", "limits": {"queue_timeout_seconds": 600}})
        client.delete(blocker)
        record = wait_finished(client, waiting, timeout=60)
    assert record["status"] == "succeeded" and record["result"]["rows"] == [[3]], record
