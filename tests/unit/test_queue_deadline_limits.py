"""The queue deadline (`limits.queue_timeout_seconds`): admitted, stored and expired while queued (each
backend). The dispatcher's loop is in test_dispatcher, a pending pod in test_pod_fate."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from controller.launchers.base import Job, QueueDeadline
from controller.models import QueryIn
from controller.queue.admission import Rejected, admit_query
from controller.queue.jobs import job_for, queue_expired, wake_in
from controller.queue.store import Store
from controller.settings import Settings
from tests.support.stored import LIMITS, REQUEST

pytestmark = pytest.mark.unit

QUEUED_LIMITS = dataclasses.replace(LIMITS, queue_timeout_seconds=30)
# Below the resolution of an epoch float: the deadline is the submission time, passed by any later clock read.
PASSED = 1e-9


def queue(store: Store, query_id: str, queue_timeout_seconds: float | None) -> None:
    limits = dataclasses.replace(LIMITS, queue_timeout_seconds=queue_timeout_seconds)
    store.insert(query_id, "query", REQUEST, limits)


# Admission -------------------------------------------------------------------------------------------------


def admitted_queue_timeout(settings: Settings, **limits: Any) -> float | None:
    body = QueryIn.model_validate({"sql": "SELECT 1", "limits": limits})
    return admit_query(body, settings).limits.queue_timeout_seconds


def test_no_queue_deadline_unless_asked_for_or_defaulted() -> None:
    assert admitted_queue_timeout(Settings()) is None
    assert admitted_queue_timeout(Settings(), queue_timeout_seconds=2.5) == 2.5
    assert admitted_queue_timeout(Settings(default_queue_timeout_seconds=40)) == 40
    assert admitted_queue_timeout(Settings(default_queue_timeout_seconds=40), queue_timeout_seconds=3) == 3


def test_a_queue_deadline_above_the_maximum_is_refused_naming_the_field() -> None:
    settings = Settings(max_queue_timeout_seconds=60)
    assert admitted_queue_timeout(settings, queue_timeout_seconds=60) == 60
    with pytest.raises(Rejected) as refused:
        admitted_queue_timeout(settings, queue_timeout_seconds=61)
    assert refused.value.field == "limits.queue_timeout_seconds"
    assert "above the maximum 60" in refused.value.message


def test_the_limit_is_kept_through_the_store_format() -> None:
    assert type(QUEUED_LIMITS).from_stored(QUEUED_LIMITS.stored()) == QUEUED_LIMITS
    stored_before = {key: value for key, value in LIMITS.stored().items() if key != "queue_timeout_seconds"}
    assert type(LIMITS).from_stored(stored_before).queue_timeout_seconds is None
    assert QUEUED_LIMITS.as_written()["queue_timeout_seconds"] == 30


# The dispatcher's pure parts -------------------------------------------------------------------------------


def test_the_dispatcher_sleeps_until_the_earliest_deadline_and_never_negative() -> None:
    assert wake_in(None, 100.0) is None
    assert wake_in(103.5, 100.0) == 3.5
    assert wake_in(99.0, 100.0) == 0.0


def test_the_first_attempt_is_held_to_the_queue_deadline_and_a_rerun_is_not(store: Store) -> None:
    queue(store, "a", 30)
    row = store.claim_next()
    assert row is not None
    job = job_for(row)
    assert job.queue_deadline == QueueDeadline(at=row.submitted_at + 30, seconds=30)
    assert job_for(dataclasses.replace(row, attempts=2)).queue_deadline is None
    assert Job("b", 1, {"operation": "query"}, LIMITS, submitted_at=1.0).queue_deadline is None


def test_the_queue_timeout_error_is_a_retryable_timeout_in_the_queue_phase(store: Store) -> None:
    queue(store, "a", 7)
    row = store.get("a")
    assert row is not None
    error = queue_expired(row)
    assert (error["error_type"], error["retryable"]) == ("timeout", True)
    assert error["details"] == {"phase": "queue", "queue_timeout_seconds": 7}
    assert "7 seconds" in error["message"] and "limits.queue_timeout_seconds" in error["message"]


# The store (each backend) ----------------------------------------------------------------------------------


def test_the_store_expires_only_queued_queries_past_their_deadline(store: Store) -> None:
    queue(store, "at once", PASSED)
    assert store.claim_next() is None  # past its deadline at once: never claimed
    assert [row.id for row in store.expire_queued(queue_expired)] == ["at once"]
    queue(store, "running", 3600)
    assert store.claim_next() is not None
    queue(store, "expired", PASSED)
    queue(store, "later", 3600)
    queue(store, "none", None)
    assert store.next_wake(time.time()) == pytest.approx(time.time(), abs=5)
    expired = store.expire_queued(queue_expired)
    assert [(row.id, row.status, row.started_at) for row in expired] == [("expired", "failed", None)]
    assert expired[0].error == queue_expired(expired[0])
    later = store.get("later")
    assert later is not None and store.next_wake(time.time()) == pytest.approx(later.submitted_at + 3600)
    assert store.expire_queued(queue_expired) == []
    running = store.get("running")
    assert running is not None and running.status == "running"


def test_a_claim_skips_a_query_past_its_deadline_and_clears_the_deadline_it_met(store: Store) -> None:
    queue(store, "expired", PASSED)
    queue(store, "next", 3600)
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == "next"
    assert store.next_wake(time.time()) is not None  # "expired" is still queued, for expire_queued
    store.expire_queued(queue_expired)
    assert store.next_wake(time.time()) is None
    # Handed back to the queue (a graceful stop), a query that started once is not expired.
    assert store.requeue("next")
    assert store.next_wake(time.time()) is None
