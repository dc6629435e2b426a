"""What the dispatcher asks of a launcher, and what it gets back.

A launcher runs one job to its end and returns an `Outcome`; it never raises for a query's own failure.
Cancellation is asyncio cancellation: when the dispatcher cancels the task awaiting `Launcher.run`, the
launcher stops the work (kills the process group, deletes the pod) before the `CancelledError` leaves it,
unless the launcher was `detach`ed first: then work that can outlive the controller (a pod) is left running
for the next controller to adopt.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self, get_args

from worker_image.protocol import ErrorInfo, ErrorType, WorkerRequest, error_info


@dataclass(frozen=True)
class Limits:
    """What a launcher enforces: the numbers."""

    cpu_millicores: int
    memory_bytes: int
    timeout_seconds: float


@dataclass(frozen=True)
class QueryLimits(Limits):
    """A query's limits as the user wrote them (`cpu`, `memory`: Kubernetes quantities, kept verbatim for the
    record) together with the numbers podq enforces; built by admission, kept by the store."""

    cpu: str
    memory: str
    # How long the query may wait to start (queued, then pending on Kubernetes); None: as long as it takes.
    queue_timeout_seconds: float | None = None

    def as_written(self) -> dict[str, Any]:
        """The limits as the record shows them."""
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "timeout_seconds": self.timeout_seconds,
            "queue_timeout_seconds": self.queue_timeout_seconds,
        }

    def stored(self) -> dict[str, Any]:
        return {**self.as_written(), "cpu_millicores": self.cpu_millicores, "memory_bytes": self.memory_bytes}

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> Self:
        return cls(
            cpu=stored["cpu"],
            memory=stored["memory"],
            timeout_seconds=stored["timeout_seconds"],
            cpu_millicores=stored["cpu_millicores"],
            memory_bytes=stored["memory_bytes"],
            queue_timeout_seconds=stored.get("queue_timeout_seconds"),
        )

    def queue_deadline(self, submitted_at: float) -> float | None:
        """When a query submitted at `submitted_at` must have started running (epoch seconds), or None."""
        return None if self.queue_timeout_seconds is None else submitted_at + self.queue_timeout_seconds


@dataclass(frozen=True)
class QueueDeadline:
    """When a job's worker must be running at the latest (epoch seconds), and the limit that says so."""

    at: float
    seconds: float


@dataclass(frozen=True)
class Job:
    query_id: str
    attempt: int
    request: WorkerRequest
    limits: Limits
    # When the query was submitted (epoch seconds); None for jobs that were never queued (tests).
    submitted_at: float | None = None
    # How long after `submitted_at` the worker must be running at the latest (see `queue_timeout`); None
    # when the query has none, or has run before (a rerun after a restart is not held to it).
    queue_timeout_seconds: float | None = None

    @property
    def queue_deadline(self) -> QueueDeadline | None:
        if self.submitted_at is None or self.queue_timeout_seconds is None:
            return None
        return QueueDeadline(self.submitted_at + self.queue_timeout_seconds, self.queue_timeout_seconds)


@dataclass(frozen=True)
class Outcome:
    """The end of one job: exactly one of `result` and `error` is set. Built once, placement included."""

    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    # Where it ran and what was seen, for the record: e.g. {"kind": "local", "pid": 123, "exit_code": 0}.
    placement: dict[str, Any] = field(default_factory=dict)
    # What the attempt used (controller/launchers/usage.py); None when nothing is known.
    usage: dict[str, Any] | None = None


def queue_timeout(queue_timeout_seconds: float, **details: Any) -> ErrorInfo:
    """The error of a query that did not start running within its queue deadline."""
    message = (
        f"the query did not start running within its queue deadline of {queue_timeout_seconds:g} seconds "
        "(limits.queue_timeout_seconds)"
    )
    return error_info(
        ErrorType.TIMEOUT,
        message,
        {"phase": "queue", "queue_timeout_seconds": queue_timeout_seconds, **details},
        retryable=True,
    )


# Why a query started cold although the launcher keeps a pool of warm workers: none was ready (`empty`), its
# limits are not the pool's (`size`), or taking one failed (`error`: the claim or the attach was refused).
PoolMiss = Literal["empty", "size", "error", "resize_refused"]
POOL_MISSES: tuple[PoolMiss, ...] = get_args(PoolMiss)


@dataclass(frozen=True)
class PoolStats:
    """A launcher's pool of warm workers, for /metrics; every count since the controller started."""

    size: int  # idle workers it keeps
    idle: int  # idle workers ready now
    claims: int  # taken by a query
    misses: Mapping[PoolMiss, int] = field(default_factory=dict)

    @classmethod
    def none(cls) -> PoolStats:
        """A launcher without a pool."""
        return cls(size=0, idle=0, claims=0)


class Launcher(Protocol):
    name: str

    async def start(self) -> None:
        """Prepare (check the cgroup hierarchy, connect to the API server...)."""

    async def run(self, job: Job) -> Outcome:
        """Run the job to its end. Cancelling the awaiting task stops the work and leaves nothing behind."""

    async def close(self) -> None:
        """Stop everything still running; no process or pod outlives this call."""

    async def ready(self) -> bool:
        """Whether new jobs can be run now (for /readyz)."""

    def refusal(self, limits: Limits) -> str | None:
        """Why a job with these limits could never run here (a 422 at submission), or None."""

    async def reconcile(self, active: Callable[[], Collection[str]]) -> None:
        """At start, after recovery: `active()` reads the queries queued or running in the store. Work left
        by an earlier controller for any other query is cleaned up; work of an active query waits for `run`.
        A launcher calls `active()` only once it knows all the work there is, so that work another replica
        started meanwhile is in both and not taken for an orphan."""

    async def release(self, query_id: str) -> None:
        """The job's outcome is stored: free what it still holds (a finished pod is deleted, now or after
        its TTL)."""

    async def discard(self, query_id: str) -> bool:
        """The job failed and its query runs again: remove what it left at once (a finished pod, whatever
        its TTL) so the next attempt starts afresh. False if that could not be done."""

    def pool_stats(self) -> PoolStats | None:
        """The figures of the launcher's pool of warm workers, read at each scrape; None without a pool."""

    def detach(self) -> None:
        """The controller is stopping: from now on, cancelled jobs leave work that survives the controller in
        place, for the next controller to adopt."""
