"""What the dispatcher asks of a launcher, and what it gets back.

A launcher runs one job to its end and returns an `Outcome`; it never raises for a query's own failure.
Cancellation is asyncio cancellation: when the dispatcher cancels the task awaiting `Launcher.run`, the
launcher stops the work (kills the process group, deletes the pod) before the `CancelledError` leaves it,
unless the launcher was `detach`ed first: then work that can outlive the controller (a pod) is left running
for the next controller to adopt.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker_image.protocol import ErrorInfo, WorkerRequest


@dataclass(frozen=True)
class Limits:
    cpu_millicores: int
    memory_bytes: int
    timeout_seconds: float


def limits_from(stored: Mapping[str, Any]) -> Limits:
    """The limits as the store keeps them (see `admission`)."""
    return Limits(
        cpu_millicores=stored["cpu_millicores"],
        memory_bytes=stored["memory_bytes"],
        timeout_seconds=stored["timeout_seconds"],
    )


@dataclass(frozen=True)
class Job:
    query_id: str
    attempt: int
    request: WorkerRequest
    limits: Limits
    # When the query was submitted (epoch seconds); None for jobs that were never queued (tests).
    submitted_at: float | None = None


@dataclass
class Outcome:
    """The end of one job: exactly one of `result` and `error` is set."""

    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    # Where it ran and what was seen, for the record: e.g. {"kind": "local", "pid": 123, "exit_code": 0}.
    placement: dict[str, Any] = field(default_factory=dict)


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

    async def reconcile(self, active: Collection[str]) -> None:
        """At start, after recovery: `active` are the queries queued or running in the store. Work left by an
        earlier controller for any other query is cleaned up; work of an active query waits for `run`."""

    async def release(self, query_id: str) -> None:
        """The job's outcome is stored: free what it still holds (a finished pod is deleted, now or after
        its TTL)."""

    def detach(self) -> None:
        """The controller is stopping: from now on, cancelled jobs leave work that survives the controller in
        place, for the next controller to adopt."""
