"""The kubernetes launcher: one pod per query, followed through one watch, its outcome typed from its fate.

A job's life: `build_pod` (pure) is created under a name derived from the query id, so a create that
meets an existing pod *adopts* it (a restarted controller picks up its predecessor's pods, and a create
whose answer was lost is not run twice). The pod is then followed through `PodWatch` and `observe`
(pure) until it has ended or failed in a way that needs no log; an ended pod's log is read, its envelope
verified, and `decide` (pure) types the outcome. The pod's final status, exit code and a log tail go into
the outcome's placement, which the dispatcher stores before it calls `release`; only then is the pod
deleted, at once or after `PODQ_POD_TTL_SECONDS`. podq's decisions are posted as Events on the pod, so
`kubectl describe pod` tells the story next to the kubelet's. With a warm pool (warm.py), a query at the
pool's limits first claims a pool pod and has its request written to the waiting worker; that pod is then
followed exactly as a cold one, and the query starts cold when no pool pod can be had.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from controller.launchers.aio import shielded
from controller.launchers.base import Job, Limits, Outcome, PoolStats
from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.client.config import load_config
from controller.launchers.kubernetes.client.errors import AlreadyExists, KubeError, is_transient
from controller.launchers.kubernetes.client.events import make_event
from controller.launchers.kubernetes.nodes import NodeRooms
from controller.launchers.kubernetes.options import KubernetesOptions
from controller.launchers.kubernetes.owner import service_account_owner
from controller.launchers.kubernetes.pod_fate import decide, placement
from controller.launchers.kubernetes.pod_log import log_ended, read_log
from controller.launchers.kubernetes.pod_progress import Ended, Failed, Waiting, observe
from controller.launchers.kubernetes.pod_status import finished_at, is_terminal
from controller.launchers.kubernetes.pod_watch import PodWatch
from controller.launchers.kubernetes.podspec import (
    PodTemplate,
    build_pod,
    pod_name,
    query_id_of,
    selector,
)
from controller.launchers.kubernetes.pool import got_no_request, is_idle
from controller.launchers.kubernetes.reasons import Reason
from controller.launchers.kubernetes.retry import retrying
from controller.launchers.kubernetes.streamed import streamed_outcome
from controller.launchers.kubernetes.warm import WarmPool
from controller.logs import bind_pod
from controller.settings import Settings
from controller.testcrash import crash_if
from worker_image.protocol import ErrorType, error_info

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long an ended container's pod may take to show its final phase before podq decides without it.
PHASE_SETTLE_SECONDS = 15.0
# How long a failed attempt's pod may take to go before its query's retry is given up.
DISCARD_SECONDS = 60.0


class KubernetesLauncher:
    name = "kubernetes"

    def __init__(self, options: KubernetesOptions) -> None:
        self._options = options
        self._client: KubeClient | None = None
        self._watch: PodWatch | None = None
        self._namespace = ""
        self._template: PodTemplate | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._node_rooms: NodeRooms | None = None
        self._detached = False
        self._crash_at = options.crash_at
        self._pool: WarmPool | None = None
        # Query id -> its pool pod's name (a cold pod's name is `pod_name(query_id)`).
        self._claimed: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesLauncher:
        return cls(KubernetesOptions.from_settings(settings))

    # Lifetime -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        options = self._options
        config = load_config(options.kube_config, options.kube_context)
        self._namespace = options.pod.namespace or config.namespace or "default"
        owner = service_account_owner(config, self._namespace) if options.owned_by_service_account else None
        self._client = KubeClient(
            config, qps=options.qps, burst=options.burst, request_timeout=options.request_timeout_seconds
        )
        self._template = dataclasses.replace(options.pod, namespace=self._namespace, owner=owner)
        self._watch = PodWatch(
            self._client,
            self._namespace,
            selector(options.pod.instance),
            watch_seconds=options.watch_seconds,
            relist_seconds=options.relist_seconds,
        )
        self._spawn(self._watch.run(), "podq-pod-watch")
        try:
            await asyncio.wait_for(self._watch.synced.wait(), options.request_timeout_seconds * 2)
        except TimeoutError:
            await self.close()
            raise RuntimeError(
                f"cannot list pods in namespace {self._namespace!r} at {config.server}: "
                f"{self._watch.last_error}"
            ) from None
        self._node_rooms = NodeRooms(
            self._client, options.pod.node_selector, options.unschedulable_after_seconds
        )
        await self._node_rooms.refresh()
        self._spawn(self._node_rooms.refresh_forever(), "podq-node-rooms")
        if options.warm_pool_size > 0:
            self._pool = WarmPool(self._client, self._watch, self._template, options, post_event=self._event)
            self._spawn(self._pool.run(), "podq-warm-pool")
        log.info(
            "kubernetes launcher: API server %s from %s, namespace %s, instance %s, image %s",
            config.server,
            config.source,
            self._namespace,
            options.pod.instance,
            options.pod.image,
        )

    async def ready(self) -> bool:
        return self._watch is not None and self._watch.healthy

    def detach(self) -> None:
        self._detached = True

    def pool_stats(self) -> PoolStats | None:
        return None if self._pool is None else self._pool.stats()

    async def close(self) -> None:
        """Stop watching. Pods are left to their fate: running ones are adopted by the next controller; idle
        pool pods are deleted."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._pool is not None:
            await self._pool.drain()
        if self._client is not None:
            await self._client.aclose()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def _api(self) -> KubeClient:
        assert self._client is not None, "start() first"
        return self._client

    @property
    def _pods(self) -> PodWatch:
        assert self._watch is not None, "start() first"
        return self._watch

    # Admission ------------------------------------------------------------------------------------------

    def refusal(self, limits: Limits) -> str | None:
        return None if self._node_rooms is None else self._node_rooms.refusal(limits)

    # Jobs -----------------------------------------------------------------------------------------------

    async def run(self, job: Job) -> Outcome:
        await self._pods.synced.wait()
        if self._pool is not None and (claim := await self._pool.claim(job)) is not None:
            warm = await self._attempt(job, *claim)
            if warm is not None:
                return warm
        cold = await self._attempt(job, pod_name(job.query_id), None)
        assert cold is not None
        return cold

    async def _attempt(self, job: Job, name: str, adopted: bool | None) -> Outcome | None:
        """Run `job` on the pod `name`: a cold one (`adopted` None) or a pool pod claimed for it now (False)
        or before a restart (True). None when the pool pod's attach failed (see warm.py)."""
        bind_pod(name)  # this query's task: every line logged while it runs names its pod
        with self._pods.following(name) as changed:
            try:
                if adopted is None:
                    if (early := await self._create_or_adopt(job, name)) is not None:
                        return early
                else:
                    assert self._pool is not None
                    crash_if(self._crash_at, "after_claim")
                    output = await self._pool.send(
                        job, name, adopted=adopted, opened=lambda: crash_if(self._crash_at, "mid_attach")
                    )
                    if output is None:
                        return None
                    crash_if(self._crash_at, "after_attach")
                    self._claimed[job.query_id] = name
                    if (streamed := await self._streamed(job, name, output)) is not None:
                        return streamed
                if (outcome := await self._follow(job, name, changed)) is None:
                    await self._undelivered(job, name)
                return outcome
            except asyncio.CancelledError:
                if not self._detached:
                    await shielded(self._cancel(job, name))
                raise

    async def _create_or_adopt(self, job: Job, name: str) -> Outcome | None:
        """Create the pod, or adopt the one already there. An outcome when the pod cannot be created."""
        assert self._template is not None
        body = build_pod(job, self._template, submitted_at=job.submitted_at or time.time())
        try:
            pod = await retrying(
                f"query {job.query_id}: creating pod {name}",
                lambda: self._api.create_pod(self._namespace, body),
            )
        except AlreadyExists:
            # A restarted controller's predecessor made it, or an earlier try whose answer was lost did.
            existing = self._pods.state(name)
            if existing is None or existing.gone:
                adopted = await self._api.get_pod(self._namespace, name)
                self._pods.seen(adopted)
            else:
                adopted = dict(existing.pod)
            log.info(
                "query %s: adopted pod %s/%s (attempt %d)", job.query_id, self._namespace, name, job.attempt
            )
            await self._event(adopted, Reason.ADOPTED, f"podq follows this pod again (attempt {job.attempt})")
            return None
        except KubeError as exc:
            log.error("query %s: the API server refused pod %s: %s", job.query_id, name, exc)
            message = f"the API server refused the worker pod: {exc}"
            return Outcome(
                error=error_info(ErrorType.INTERNAL, message, {"pod": name}, retryable=is_transient(exc)),
                placement=self._where(name),
            )
        self._pods.seen(pod)
        crash_if(self._crash_at, "after_create")
        log.info("query %s: created pod %s/%s (attempt %d)", job.query_id, self._namespace, name, job.attempt)
        await self._event(pod, Reason.STARTED, f"query {job.query_id}, attempt {job.attempt}")
        return None

    async def _follow(self, job: Job, name: str, changed: asyncio.Event) -> Outcome | None:
        """The pod's outcome once it has ended; None for a pool pod whose worker never got the request."""
        options = self._options
        last_reason = ""
        settle_until: float | None = None
        while True:
            changed.clear()
            state = self._pods.state(name)
            pod = None if state is None else state.pod
            verdict = observe(
                pod,
                now=time.time(),
                unschedulable_after=options.unschedulable_after_seconds,
                image_pull_grace=options.image_pull_grace_seconds,
                queue_deadline=job.queue_deadline,
            )
            if state is not None and state.gone and isinstance(verdict, Waiting):
                verdict = observe(None, now=time.time(), unschedulable_after=0, image_pull_grace=0)
            if isinstance(verdict, Waiting):
                if verdict.reason != last_reason:
                    log.info("query %s: pod %s %s %s", job.query_id, name, verdict.reason, verdict.message)
                    last_reason = verdict.reason
                timeout = None if verdict.recheck_at is None else max(0.0, verdict.recheck_at - time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
                continue
            if (
                isinstance(verdict, Ended)
                and state is not None
                and not state.gone
                and not is_terminal(state.pod)
            ):
                # The container has ended but the pod's phase (and a pod-level reason such as
                # DeadlineExceeded, which decides first) is not written yet: wait for it, boundedly.
                settle_until = settle_until or time.time() + PHASE_SETTLE_SECONDS
                if time.time() < settle_until:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), settle_until - time.time())
                    continue
            if pod is not None and got_no_request(pod):
                return None
            if isinstance(verdict, Failed):
                outcome = Outcome(error=verdict.error, placement=placement(pod) if pod else self._where(name))
            else:
                assert pod is not None
                outcome = await self._conclude(job, name, pod, verdict, gone=bool(state and state.gone))
            await self._report(job, name, pod, outcome)
            return outcome

    async def _undelivered(self, job: Job, name: str) -> None:
        """A pool pod's worker ended without the request (see `got_no_request`): the query never ran there,
        so the pod is deleted and the query starts cold."""
        assert self._pool is not None
        log.warning(
            "query %s: pool pod %s ended without its request; starting a cold pod", job.query_id, name
        )
        if (state := self._pods.state(name)) is not None and not state.gone:
            await self._event(
                state.pod, Reason.UNDELIVERED, "its worker got no request; the query starts on a cold pod"
            )
        self._claimed.pop(job.query_id, None)
        await self._pool.give_up(job, name)

    async def _streamed(self, job: Job, name: str, output: bytes) -> Outcome | None:
        state = self._pods.state(name)
        outcome = None if state is None else streamed_outcome(output, state.pod)
        if state is not None and outcome is not None:
            await self._report(job, name, state.pod, outcome)
        return outcome

    async def _conclude(
        self, job: Job, name: str, pod: Mapping[str, Any], ended: Ended, *, gone: bool
    ) -> Outcome:
        log_ended(job.query_id, name, pod, ended)
        crash_if(self._crash_at, "before_log")
        if gone:
            return decide(pod, None, log_problem="the pod was deleted before its log was read")
        text, problem = await read_log(self._api, self._namespace, name)
        return decide(pod, text, log_problem=problem)

    def _where(self, name: str) -> dict[str, Any]:
        return {"kind": "kubernetes", "namespace": self._namespace, "pod": name}

    async def _report(self, job: Job, name: str, pod: Mapping[str, Any] | None, outcome: Outcome) -> None:
        if outcome.error is None:
            log.info("query %s: pod %s succeeded", job.query_id, name)
            if pod is not None:
                await self._event(pod, Reason.SUCCEEDED, "result read from the log and verified")
            return
        error = outcome.error
        log.info("query %s: pod %s failed: %s: %s", job.query_id, name, error["error_type"], error["message"])
        if pod is not None:
            await self._event(
                pod, Reason.FAILED, f"{error['error_type']}: {error['message']}", kind="Warning"
            )

    async def _cancel(self, job: Job, name: str) -> None:
        state = self._pods.state(name)
        if state is not None and not state.gone:
            await self._event(state.pod, Reason.CANCELLED, "cancelled by a user; deleting the pod")
        await self._delete(name, job.query_id, "cancelled")

    async def _delete(self, name: str, query_id: str, why: str) -> None:
        try:
            deleted = await self._api.delete_pod(self._namespace, name, grace_period_seconds=0)
        except KubeError as exc:
            log.warning("query %s: could not delete pod %s (%s): %s", query_id, name, why, exc)
            return
        if deleted:
            log.info("query %s: deleted pod %s (%s)", query_id, name, why)

    async def _event(
        self, pod: Mapping[str, Any], reason: str, message: str, *, kind: str = "Normal"
    ) -> None:
        """Post an Event on the pod; best effort, a failure is logged and never fails the query."""
        try:
            await self._api.create_event(
                self._namespace, make_event(pod, reason=reason, message=message, type=kind)
            )
        except KubeError as exc:
            log.warning(
                "could not post event %s on pod %s: %s", reason, pod.get("metadata", {}).get("name"), exc
            )

    # After the outcome is stored ------------------------------------------------------------------------

    async def release(self, query_id: str) -> None:
        name = self._claimed.pop(query_id, None) or pod_name(query_id)
        state = self._pods.state(name)
        if state is None or state.gone:
            self._pods.forget(name)
            return
        crash_if(self._crash_at, "before_delete")
        self._expire(state.pod, query_id)

    def _expire(self, pod: Mapping[str, Any], query_id: str) -> None:
        """Delete a finished pod once its TTL has passed (at once if 0); one still pending or running now."""
        name = str(pod["metadata"]["name"])
        ttl = self._options.pod_ttl_seconds
        if not is_terminal(pod) or ttl <= 0:
            self._spawn(self._delete(name, query_id, "outcome stored"), f"podq-delete-{name}")
            return
        ended = finished_at(pod) or time.time()
        delay = max(0.0, ended + ttl - time.time())
        log.info("query %s: keeping pod %s for %.0fs (PODQ_POD_TTL_SECONDS)", query_id, name, delay)
        self._spawn(self._delete_later(name, query_id, delay), f"podq-ttl-{name}")

    async def discard(self, query_id: str) -> bool:
        """Delete the job's pod now, whatever the TTL, and wait until it is gone: the query's next attempt
        creates a pod of the same name, which must not meet (and adopt) this one."""
        name = pod_name(query_id)
        with self._pods.following(name) as changed:
            deadline = time.monotonic() + DISCARD_SECONDS
            await self._delete(name, query_id, "its query runs again")
            while (state := self._pods.state(name)) is not None and not state.gone:
                changed.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        self._pods.forget(name)
        return True

    async def _delete_later(self, name: str, query_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._delete(name, query_id, "TTL expired")

    async def reconcile(self, active: Callable[[], Collection[str]]) -> None:
        await self._pods.synced.wait()
        # Read after the pods are listed: a pod another replica created meanwhile belongs to a query that
        # was claimed before it, so it is active here too (read before, it looked like an orphan).
        keep = set(active())
        adoptable = []
        for pod in self._pods.pods():
            query_id = query_id_of(pod)
            if self._pool is not None and is_idle(pod):
                continue  # the pool's own (warm.py)
            if query_id is not None and query_id in keep:
                adoptable.append(query_id)
            elif is_terminal(pod):
                self._expire(pod, query_id or "?")
            else:
                log.warning(
                    "pod %s runs for no active query (%s); deleting it", pod["metadata"]["name"], query_id
                )
                await self._event(
                    pod, Reason.ORPHANED, "its query is no longer queued or running", kind="Warning"
                )
                self._spawn(
                    self._delete(str(pod["metadata"]["name"]), query_id or "?", "orphan"), "podq-orphan"
                )
        if adoptable:
            log.info("%d pods of active queries wait to be adopted: %s", len(adoptable), adoptable)
