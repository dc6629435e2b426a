"""Moves queries from the store's queue to the launcher, at most `max_concurrent` at once (across every
controller sharing the store), in FIFO order.

The store holds the truth; the dispatcher holds only the asyncio tasks of the queries it is running.
On start it recovers what a previous controller left running (see `Store.recover`); on a graceful stop it
kills what runs and hands it back to the queue, so a restart loses nothing. With several controllers on
PostgreSQL it also heartbeats, takes over the queries of controllers gone silent, and acts on the other
controllers' news (finished, queued, cancel asked for) that the store hands it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, replace

from controller.launchers.base import Launcher, Outcome
from controller.logs import bind_query
from controller.models import TERMINAL
from controller.queue.jobs import job_for, queue_expired, wake_in
from controller.queue.metrics import Metrics
from controller.queue.retry import Retry, RetryPolicy, Stop, after_failure, next_limits, not_retried
from controller.queue.store import (
    CANCEL,
    FINISHED,
    QUEUED,
    RECONNECTED,
    Recovery,
    ReplicaLost,
    Row,
    Store,
    StoreUnavailable,
)
from controller.queue.waiters import Waiters
from controller.testcrash import crash_if
from worker_image.protocol import ErrorInfo, ErrorType, error_info

log = logging.getLogger(__name__)

# How long the dispatcher waits before it tries a failed store write (disk full, locked) again.
STORE_RETRY_SECONDS = 1.0
# How long a DELETE waits for the controller running the query to stop it (another replica's).
REMOTE_CANCEL_SECONDS = 30.0


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
        max_memory_bytes: int | None = None,
        crash_at: str | None = None,
        heartbeat_seconds: float = 2.0,
        stale_seconds: float = 15.0,
    ) -> None:
        self._store = store
        self._launcher = launcher
        self._max_concurrent = max_concurrent
        self._max_attempts = max_attempts
        self._metrics = metrics
        # The server's memory maximum: a retry never gives more (None: the query's own `max_memory`).
        self._max_memory_bytes = max_memory_bytes
        self._running: dict[str, _Running] = {}
        self._wakeup = asyncio.Event()
        self._waiters = Waiters()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._crash_at = crash_at
        # Shared, the store holds the cap across replicas; alone, what this dispatcher runs is all that runs
        # (and a query whose outcome waits for a full disk no longer holds a slot).
        self._global_cap = max_concurrent if store.shared else None
        self._heartbeat_seconds = heartbeat_seconds
        self._stale_seconds = stale_seconds
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._exhausted = error_info(
            ErrorType.INTERNAL,
            "the controller stopped while this query was running, and it has no attempts left",
            {"max_attempts": max_attempts},
        )

    @property
    def running_count(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        self._took_over(self._store.recover(self._max_attempts, self._exhausted), "recovered after restart")
        await self._launcher.reconcile(self._store.active_ids)
        loop = asyncio.get_running_loop()

        def from_store(channel: str, query_id: str) -> None:  # on the store's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is left to tell
                loop.call_soon_threadsafe(self._event, channel, query_id)

        self._store.subscribe(from_store)
        self._loop_task = asyncio.create_task(self._loop(), name="podq-dispatcher")
        if self._store.shared:
            self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="podq-heartbeat")
        self.notify()

    def _took_over(self, recovery: Recovery, what: str) -> None:
        # A requeued query's next run creates its pod under the same name: on Kubernetes the dead replica's
        # pod is still there, so it is adopted (followed to its end), not started again.
        if recovery.requeued or recovery.finished:
            log.warning(
                "%s: %d requeued %s, %d failed %s, %d cancelled %s",
                what,
                len(recovery.requeued),
                recovery.requeued,
                len(recovery.failed),
                recovery.failed,
                len(recovery.cancelled),
                recovery.cancelled,
            )
        for query_id in recovery.finished:
            if (row := self._store.get(query_id)) is not None:
                self._finished(row)
        if recovery.requeued:
            self.notify()

    def _event(self, channel: str, query_id: str) -> None:
        """News from the store (another replica's, or this one's own echoed back)."""
        if channel == FINISHED:
            self._waiters.wake(query_id)
            self.notify()  # a slot may have freed up
        elif channel == QUEUED:
            self.notify()
        elif channel == CANCEL and (entry := self._running.get(query_id)) is not None:
            log.info("query %s: cancel asked for on another controller", query_id)
            entry.cancel_requested = True
            entry.task.cancel()
        elif channel == RECONNECTED:
            self._waiters.wake_all()
            self.notify()

    async def _heartbeats(self) -> None:
        """Tell the other replicas this one lives, and take over from those that stopped. Out of touch
        with the store for `stale_seconds`, this replica is taken for dead: it stops what it runs."""
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                recovery = await asyncio.to_thread(self._store.heartbeat, self._max_attempts, self._exhausted)
            except ReplicaLost as exc:
                log.error("%s: stopping the %d queries it ran here", exc, len(self._running))
                self._drop_local_work()
                continue
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
                if time.monotonic() - last_beat > self._stale_seconds and self._running:
                    log.error(
                        "no heartbeat for %.0f s: the queries run here are others' now", self._stale_seconds
                    )
                    self._drop_local_work()
                continue
            last_beat = time.monotonic()
            self._took_over(recovery, "took over from a controller gone silent")
            self.notify()  # a safety net under the store's events

    def _drop_local_work(self) -> None:
        for entry in self._running.values():
            entry.task.cancel()

    def notify(self) -> None:
        """Something was queued or a slot freed: look at the queue again."""
        self._wakeup.set()

    async def _loop(self) -> None:
        # Asleep until something is queued, a slot frees up, or the earliest queue deadline passes.
        sleep: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), sleep)
            self._wakeup.clear()
            try:
                for row in self._store.expire_queued(queue_expired):
                    log.info("query %s: failed (timeout): not started within its queue deadline", row.id)
                    self._finished(row)
                while len(self._running) < self._max_concurrent and not self._stopping:
                    claimed = self._store.claim_next(self._global_cap)
                    if claimed is None:
                        break
                    self._start(claimed)
                now = time.time()
                sleep = wake_in(self._store.next_wake(now), now)
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
        self._metrics.observe_attempt(outcome.usage, row.limits.memory_bytes)
        if outcome.error is not None and row.retry is not None:
            decided = self._after(row, RetryPolicy.from_stored(row.retry), outcome.error)
            if isinstance(decided, Retry) and await self._discard(row.id):
                await self._retry_when_possible(row, outcome, decided)
                return
            if isinstance(decided, Retry):
                decided = Stop("not retried: the failed attempt's worker could not be removed")
            if decided.reason is not None:
                outcome = replace(outcome, error=not_retried(outcome.error, decided.reason))
        await self._record_when_possible(row.id, outcome)
        self.notify()  # the store counts the query running until its outcome is written
        await self._release(row.id)

    async def _release(self, query_id: str) -> None:
        try:
            await self._launcher.release(query_id)
        except Exception:
            # What stays behind is cleaned up by the launcher's TTL sweep or the next start's reconcile.
            log.exception("query %s: the launcher could not release the finished job", query_id)

    async def _discard(self, query_id: str) -> bool:
        """Clear the way for the next attempt (its pod takes this one's name)."""
        try:
            return await self._launcher.discard(query_id)
        except Exception:
            log.exception("query %s: the launcher could not remove the failed attempt", query_id)
            return False

    def _after(self, row: Row, policy: RetryPolicy, error: ErrorInfo) -> Retry | Stop:
        """Whether the query's retry policy runs it again after this attempt failed with `error`."""
        return after_failure(
            policy,
            error,
            attempt=row.attempts,
            memory_bytes=row.limits.memory_bytes,
            server_max_memory_bytes=self._max_memory_bytes or policy.max_memory_bytes,
            jitter=random.random(),
        )

    async def _retry_when_possible(self, row: Row, outcome: Outcome, retry: Retry) -> None:
        """Record the failed attempt and queue the query again; while the store cannot write, try again."""
        assert outcome.error is not None
        error = outcome.error
        limits = next_limits(row.limits, retry)
        while True:
            try:
                queued = self._store.retry(
                    row.id,
                    limits,
                    error=error,
                    placement=outcome.placement,
                    usage=outcome.usage,
                    not_before=time.time() + retry.delay_seconds,
                )
                break
            except StoreUnavailable as exc:
                log.error("query %s: retry not stored yet (%s); retrying", row.id, exc)
                await asyncio.sleep(STORE_RETRY_SECONDS)
        if queued:
            log.info(
                "query %s: attempt %d failed (%s); queued again with memory %s in %.1f s",
                row.id,
                row.attempts,
                error["error_type"],
                limits.memory,
                retry.delay_seconds,
            )
            self.notify()
        else:
            log.warning("query %s: retry discarded, the query is no longer this controller's", row.id)

    def _on_cancelled(self, query_id: str) -> None:
        entry = self._running.get(query_id)
        try:
            if entry is not None and entry.cancel_requested:
                error = error_info(ErrorType.CANCELLED, "cancelled while running", retryable=False)
                row = self._store.finish(query_id, "cancelled", error=error, running_here=True)
                if row is not None:
                    self._finished(row)
            elif self._store.requeue(query_id):
                log.info("query %s: handed back to the queue at shutdown", query_id)
        except StoreUnavailable as exc:
            # Left running in the store: recovery (a restart, or another replica's takeover) decides it.
            log.error("query %s: stopped, but the store could not record it: %s", query_id, exc)

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
            query_id,
            status,
            result=outcome.result,
            error=outcome.error,
            placement=outcome.placement,
            usage=outcome.usage,
            running_here=True,
        )
        crash_if(self._crash_at, "after_finish")
        if row is None:
            log.warning("query %s: outcome discarded, the query is no longer this controller's", query_id)
        else:
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
        elif self._store.request_cancel(query_id):
            log.info("query %s: runs on another controller, asked it to cancel", query_id)
            return await self.wait_finished(query_id, REMOTE_CANCEL_SECONDS)
        return self._store.get(query_id)

    async def wait_finished(self, query_id: str, wait_seconds: float) -> Row | None:
        """The record once terminal, or as it stands when `wait_seconds` run out."""
        deadline = time.monotonic() + wait_seconds
        with self._waiters.watch(query_id) as event:
            while True:
                event.clear()
                row = self._store.get(query_id)
                remaining = deadline - time.monotonic()
                if row is None or row.status in TERMINAL or remaining <= 0:
                    return row
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)

    async def stop(self) -> None:
        """Stop dispatching, kill what runs and give it back to the queue for the next start."""
        self._stopping = True
        self._launcher.detach()
        for background in (self._loop_task, self._heartbeat_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        tasks = [entry.task for entry in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        try:
            self._store.retire()
        except StoreUnavailable as exc:
            log.warning("could not sign off from the store (%s); the others will notice the silence", exc)
