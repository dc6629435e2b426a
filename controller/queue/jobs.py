"""What the dispatcher hands a launcher for a claimed query, and when to look at the queue again (pure)."""

from __future__ import annotations

from typing import cast

from controller.launchers.base import Job, queue_timeout
from controller.queue.store import Row
from worker_image.protocol import ErrorInfo, WorkerRequest


def job_for(row: Row) -> Job:
    return Job(
        query_id=row.id,
        attempt=row.attempts,
        request=cast(WorkerRequest, row.request),
        limits=row.limits,
        submitted_at=row.submitted_at,
        # A rerun (after a controller died, or a retry) had started before: the queue deadline was met then.
        queue_timeout_seconds=row.limits.queue_timeout_seconds if row.attempts == 1 else None,
    )


def queue_expired(row: Row) -> ErrorInfo:
    """The error of a queued query whose queue deadline passed before a slot freed up for it."""
    assert row.limits.queue_timeout_seconds is not None, "only a query with a queue deadline expires"
    return queue_timeout(row.limits.queue_timeout_seconds)


def wake_in(next_deadline: float | None, now: float) -> float | None:
    """How long the dispatcher may sleep before a queue deadline passes or a retry may start (None: until
    woken)."""
    return None if next_deadline is None else max(0.0, next_deadline - now)
