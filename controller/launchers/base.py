"""What the dispatcher asks of a launcher, and what it gets back.

A launcher runs one job to its end and returns an `Outcome`; it never raises for a query's own failure.
Cancellation is asyncio cancellation: when the dispatcher cancels the task awaiting `Launcher.run`, the
launcher stops the work (kills the process group, deletes the pod) before the `CancelledError` leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from worker_image.protocol import ErrorInfo, WorkerRequest


@dataclass(frozen=True)
class Limits:
    cpu_millicores: int
    memory_bytes: int
    timeout_seconds: float


@dataclass(frozen=True)
class Job:
    query_id: str
    attempt: int
    request: WorkerRequest
    limits: Limits


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
