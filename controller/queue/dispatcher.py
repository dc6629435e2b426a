"""Moves queries from the store's queue to the launcher, at most `max_concurrent` at once, in FIFO order.

The store holds the truth; the dispatcher holds only the asyncio tasks of the queries it is running.
On start it recovers what a previous controller left running (see `Store.recover`); on a graceful stop it
kills what runs and hands it back to the queue, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, cast

from controller.launchers.base import Job, Launcher, Outcome
from controller.logs import bind_query
from controller.models import TERMINAL
from controller.queue.metrics import Metrics
from controller.queue.store import Row, Store, StoreUnavailable
from controller.testcrash import crash_if
from worker_image.protocol import ErrorType, WorkerRequest, error_info

log = logging.getLogger(__name__)

# How long the dispatcher waits before it tries a failed store write (disk full, locked) again.
STORE_RETRY_SECONDS = 1.0


def job_for(row: Row) -> Job:
    return Job(
        query_id=row.id,
        attempt=row.attempts,
        request=cast(WorkerRequest, row.request),
        limits=row.limits,
        submitted_at=row.submitted_at,
    )


class _Waiters:
    """One event per query id that somebody is waiting on, released when the last waiter leaves."""

    def __init__(self) -> None:
        self._events: dict[str, tuple[asyncio.Event, int]] = {}

    @contextlib.contextmanager
    def watch(self, query_id: str) -> Any:
        event, count = self._events.get(query_id, (asyncio.Event(), 0))
        self._events[query_id] = (event, count + 1)
        try:
            yield event
        finally:
            event, count = self._events[query_id]
            if count == 1:
                del self._events[query_id]
            else:
                self._events[query_id] = (event, count - 1)

    def wake(self, query_id: str) -> None:
        entry = self._events.get(query_id)
        if entry is not None:
            entry[0].set()


@dataclass
class _Running:
    task: asyncio.Task[None]
    cancel_requested: bool = False


class Dispatcher:
    def __init__(
        self,
        store: Store,
        launcher: Launcher,
        *,
        max_concurrent: int,
        max_attempts: int,
        metrics: Metrics,
        crash_at: str | None = None,
    ) -> None:
        self._store = store
        self._launcher = launcher
        self._max_concurrent = max_concurrent
        self._max_attempts = max_attempts
        self._metrics = metrics
        self._running: dict[str, _Running] = {}
        self._wakeup = asyncio.Event()
        self._waiters = _Waiters()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._crash_at = crash_at

    @property
    def running_count(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        recovery = self._store.recover(
            self._max_attempts,
            error_info(
                ErrorType.INTERNAL,
                "the controller stopped while this query was running, and it has no attempts left",
                {"max_attempts": self._max_attempts},
            ),
        )
        if recovery.requeued or recovery.failed:
            log.warning(
                "recovered after restart: %d requeued %s, %d failed %s",
                len(recovery.requeued),
                recovery.requeued,
                len(recovery.failed),
                recovery.failed,
            )
        for query_id in recovery.failed:
            if (row := self._store.get(query_id)) is not None:
                self._finished(row)
        await self._launcher.reconcile(self._store.active_ids())
        self._loop_task = asyncio.create_task(self._loop(), name="podq-dispatcher")
        self.notify()

    def notify(self) -> None:
        """Something was queued or a slot freed: look at the queue again."""
        self._wakeup.set()

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                while len(self._running) < self._max_concurrent and not self._stopping:
                    row = self._store.claim_next()
                    if row is None:
                        break
                    self._start(row)
            except Exception:
                # The store failed (disk full, locked): keep the loop alive and look again shortly.
                log.exception("dispatcher could not claim the next query; retrying")
                await asyncio.sleep(STORE_RETRY_SECONDS)
                self.notify()

    def _start(self, row: Row) -> None:
        log.info("query %s: starting attempt %d", row.id, row.attempts)
        self._metrics.observe_started(row)
        task = asyncio.create_task(self._run(row), name=f"podq-query-{row.id}")
        self._running[row.id] = _Running(task)

    async def _run(self, row: Row) -> None:
        bind_query(row.id, row.attempts)  # this task's context: every line logged while it runs names it
        try:
            outcome = await self._launcher.run(job_for(row))
        except asyncio.CancelledError:
            self._on_cancelled(row.id)
            return
        except Exception as exc:
            log.exception("query %s: launcher failed", row.id)
            outcome = Outcome(error=error_info(ErrorType.INTERNAL, f"launcher failed: {exc!r}"))
        finally:
            self._running.pop(row.id, None)
            self.notify()
        await self._record_when_possible(row.id, outcome)
        try:
            await self._launcher.release(row.id)
        except Exception:
            # What stays behind is cleaned up by the launcher's TTL sweep or the next start's reconcile.
            log.exception("query %s: the launcher could not release the finished job", row.id)

    def _on_cancelled(self, query_id: str) -> None:
        entry = self._running.get(query_id)
        if entry is not None and entry.cancel_requested:
            error = error_info(ErrorType.CANCELLED, "cancelled while running", retryable=False)
            if (row := self._store.finish(query_id, "cancelled", error=error)) is not None:
                self._finished(row)
        elif self._store.requeue(query_id):
            log.info("query %s: handed back to the queue at shutdown", query_id)

    async def _record_when_possible(self, query_id: str, outcome: Outcome) -> None:
        """Store the outcome; while the store cannot write (disk full), hold it and try again.

        The query stays `running` meanwhile. Should the controller die first, recovery runs it again.
        """
        while True:
            try:
                self._record(query_id, outcome)
                return
            except StoreUnavailable as exc:
                log.error("query %s: outcome not stored yet (%s); retrying", query_id, exc)
                await asyncio.sleep(STORE_RETRY_SECONDS)

    def _record(self, query_id: str, outcome: Outcome) -> None:
        crash_if(self._crash_at, "before_finish")
        status = "succeeded" if outcome.error is None else "failed"
        row = self._store.finish(
            query_id, status, result=outcome.result, error=outcome.error, placement=outcome.placement
        )
        crash_if(self._crash_at, "after_finish")
        if row is not None:
            error_type = outcome.error["error_type"] if outcome.error else None
            log.info(
                "query %s: %s%s",
                query_id,
                row.status,
                f" ({error_type})" if error_type else "",
                extra={"error_type": error_type},
            )
            self._finished(row)

    def _finished(self, row: Row) -> None:
        """`row` has just reached its terminal state."""
        self._metrics.observe_finished(row)
        self._waiters.wake(row.id)

    async def cancel(self, query_id: str) -> Row | None:
        """Cancel the query: a queued one never starts, a running one is stopped. The row as it stands
        afterwards (`cancelled`, or the status it had already finished with), None for an unknown id."""
        error = error_info(ErrorType.CANCELLED, "cancelled before it started", retryable=False)
        if (row := self._store.cancel_queued(query_id, error)) is not None:
            log.info("query %s: cancelled while queued", query_id)
            self._finished(row)
            return row
        entry = self._running.get(query_id)
        if entry is not None:
            entry.cancel_requested = True
            entry.task.cancel()
            await asyncio.wait({entry.task})
        return self._store.get(query_id)

    async def wait_finished(self, query_id: str, wait_seconds: float) -> Row | None:
        """The record once terminal, or as it stands when `wait_seconds` run out."""
        with self._waiters.watch(query_id) as event:
            row = self._store.get(query_id)
            if row is None or row.status in TERMINAL or wait_seconds <= 0:
                return row
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait_seconds)
        return self._store.get(query_id)

    async def stop(self) -> None:
        """Stop dispatching, kill what runs and give it back to the queue for the next start."""
        self._stopping = True
        self._launcher.detach()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = [entry.task for entry in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
