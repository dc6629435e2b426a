"""The warm pool: pods started ahead of demand, each claimed by exactly one query (PODQ_KUBE_WARM_POOL_SIZE).

`run` keeps `size` idle pool pods up or starting, as seen by the launcher's pod watch: it refills after
every claim, replaces a pod deleted by hand or ended, replaces an idle pod that reached
PODQ_KUBE_WARM_POOL_MAX_IDLE_SECONDS (waking at that moment, even if no pod changes), deletes idle pods
beyond `size` (a size lowered across a restart) and idle pods of another template (an older image or other
settings); the decisions are pool.py's, pure. Every controller of a release shares the same pool (the watch
shows them all; claims are optimistic), so several replicas may overshoot `size` briefly, and then delete
the same excess pods. A query whose limits are the pool's size class (or, with PODQ_KUBE_WARM_POOL_RESIZE,
larger: resize.py's `fit`) `claim`s the longest-started ready pod (pool.py: one merge patch with a
resourceVersion precondition, which also sets the deadline); then the launcher calls `send`, which first
resizes the pod to the query's limits if they are not the class's and waits for the kubelet to apply
them, then attaches to the worker's stdin and writes the request, and follows the pod as any other. A pod
whose resize was refused or not applied within RESIZE_SECONDS, whose attach failed, or whose worker ended
without the request (an attach interrupted), is deleted (`give_up`), never returned to the pool, and the
query starts cold. `stats` is what /metrics shows: the pool's size, its ready idle pods, claims, and
misses by reason.

A controller that stops deletes the idle pods (`drain`); after a crash, idle pods of the same template are
simply the pool again (of another, deleted); a claimed pod is `claim`ed back
by its own query (by label), resized if its spec does not ask for the query's limits yet (the controller
died before the resize) and waited for if they are not applied yet, and its request written once more: a
worker that already read one never reads another, and one that had not (the controller died between the
claim and the attach) gets it now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from controller.launchers.aio import shielded
from controller.launchers.base import Job, PoolMiss, PoolStats
from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.client.errors import Conflict, KubeError, NotFound
from controller.launchers.kubernetes.options import KubernetesOptions
from controller.launchers.kubernetes.pod_status import is_terminal
from controller.launchers.kubernetes.pod_watch import Backoff, PodWatch
from controller.launchers.kubernetes.podspec import CONTAINER_NAME, PodTemplate, worker_request
from controller.launchers.kubernetes.pool import (
    claim_deadline,
    claim_patch,
    claimable,
    claimed_by,
    is_idle,
    plan,
    pool_pod,
    template_hash,
)
from controller.launchers.kubernetes.reasons import Reason
from controller.launchers.kubernetes.resize import RESIZE_SECONDS, asked, fit, progress, resize_patch
from controller.launchers.kubernetes.retry import retrying
from controller.launchers.worker_io import encode_request
from controller.testcrash import crash_if
from worker_image.protocol import ENVELOPE_MARKER

log = logging.getLogger(__name__)

# What is read from a worker's stdout at most; a larger result is read from the pod's log, as a cold one's.
MAX_STREAMED_BYTES = 64 * 2**20
PostEvent = Callable[[Mapping[str, Any], str, str], Awaitable[None]]


class WarmPool:
    def __init__(
        self,
        client: KubeClient,
        pods: PodWatch,
        template: PodTemplate,
        options: KubernetesOptions,
        *,
        post_event: PostEvent,
    ) -> None:
        """`template` is the launcher's, its namespace settled; the pool's settings are `options`'."""
        self._api = client
        self._pods = pods
        self._template = template
        self._namespace = template.namespace
        self._size = options.warm_pool_size
        self._class = options.warm_pool_class
        self._max_idle = options.warm_pool_max_idle_seconds
        self._resize = options.warm_pool_resize
        self._crash_at = options.crash_at
        self._hash = template_hash(template, self._class)
        self._post_event = post_event
        # Claimed here, though the watch may not show it yet: not to be tried again.
        self._taken: set[str] = set()
        self._claims = 0
        self._misses: Counter[PoolMiss] = Counter()

    def stats(self) -> PoolStats:
        ready = [
            pod
            for pod in claimable(self._pods.pods(), self._hash)
            if pod["metadata"]["name"] not in self._taken
        ]
        return PoolStats(size=self._size, idle=len(ready), claims=self._claims, misses=dict(self._misses))

    def _missed(self, reason: PoolMiss) -> None:
        """A query starts cold: why, for /metrics."""
        self._misses[reason] += 1

    async def run(self) -> None:
        """Refill on every change of the pods, and when the oldest idle pod ages out, until cancelled."""
        backoff = Backoff()
        while True:
            self._pods.changed.clear()
            try:
                recheck_at = await self._refill()
            except KubeError as exc:
                delay = backoff.next_delay()
                log.warning("warm pool: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            timeout = None if recheck_at is None else max(0.0, recheck_at - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pods.changed.wait(), timeout)

    async def _refill(self) -> float | None:
        """Create and delete pool pods as `plan` says; when to look again even if no pod changes."""
        pods = self._pods.pods()
        self._taken &= {str(pod["metadata"]["name"]) for pod in pods}
        decided = plan(pods, self._hash, self._size, now=time.time(), max_idle_seconds=self._max_idle)
        for name, version in decided.delete:
            log.info(
                "warm pool: deleting idle pod %s (another template, its worker ended, idle past "
                "PODQ_KUBE_WARM_POOL_MAX_IDLE_SECONDS or beyond the pool's size)",
                name,
            )
            # Conflict: it changed since (claimed, most likely), so it is not the pool's to delete any more.
            with contextlib.suppress(Conflict):
                await self._api.delete_pod(
                    self._namespace, name, grace_period_seconds=0, resource_version=version
                )
        for _ in range(decided.create):
            pod = await self._api.create_pod(
                self._namespace, pool_pod(self._template, self._class, secrets.token_hex(5))
            )
            log.info("warm pool: created pod %s", pod["metadata"]["name"])
            self._pods.seen(pod)
        return decided.recheck_at

    async def give_up(self, job: Job, name: str, reason: PoolMiss = "error") -> None:
        """The request did not reach the worker of the claimed pod `name` (the attach failed, or was
        interrupted and the worker got none; or its resize was refused): the pod is deleted, never returned
        to the pool, and the query starts cold."""
        self._missed(reason)
        try:
            await retrying(
                f"query {job.query_id}: deleting pool pod {name}",
                lambda: self._api.delete_pod(self._namespace, name, grace_period_seconds=0),
            )
        except KubeError as exc:
            # Claimed, it is never taken again; its deadline ends it, and the next start deletes it.
            log.warning("query %s: could not delete pool pod %s: %s", job.query_id, name, exc)

    async def drain(self) -> None:
        """Delete every idle pool pod, the controller stopping (its refill stopped first): an idle pod
        left behind holds its requests on a node for nothing, and the next controller starts its own."""

        async def delete(pod: Mapping[str, Any]) -> None:
            name = str(pod["metadata"]["name"])
            try:
                while is_idle(pod):
                    version = str(pod["metadata"]["resourceVersion"])
                    try:
                        await self._api.delete_pod(
                            self._namespace, name, grace_period_seconds=0, resource_version=version
                        )
                        return
                    except Conflict:
                        # The watch has stopped, so its version may be stale: only claimed ones are kept.
                        pod = await self._api.get_pod(self._namespace, name)
            except NotFound:
                pass
            except KubeError as exc:
                log.warning("warm pool: could not delete idle pod %s: %s", name, exc)

        await asyncio.gather(*(delete(pod) for pod in self._pods.pods() if is_idle(pod)))

    async def claim(self, job: Job) -> tuple[str, bool] | None:
        """A pool pod for `job` and whether it was claimed before (by this query, before a restart); None
        when the query is to start cold."""
        previous = claimed_by(self._pods.pods(), job.query_id)
        if previous is not None:
            name = str(previous["metadata"]["name"])
            log.info("query %s: adopted pool pod %s (attempt %d)", job.query_id, name, job.attempt)
            await self._post_event(previous, Reason.ADOPTED, f"podq follows this pod again ({job.attempt})")
            return name, True
        if (decided := fit(self._class, job.limits, resize=self._resize)) == "cold":
            log.info("query %s: not the pool's limits; starting a cold pod", job.query_id)
            self._missed("size")
            return None
        # A resize's wait is not the query's: its deadline is lowered once the resize is applied (`_fit`).
        extra = RESIZE_SECONDS if decided == "resize" else 0.0
        for pod in claimable(self._pods.pods(), self._hash):
            name = str(pod["metadata"]["name"])
            if name in self._taken:
                continue
            self._taken.add(name)
            patch = claim_patch(pod, job, now=time.time(), extra_seconds=extra)
            try:
                # Shielded: a cancelled query still learns whether it claimed the pod, so it can delete it.
                claimed = await shielded(self._api.patch_pod(self._namespace, name, patch))
            except (Conflict, NotFound):
                continue  # another query or controller took it first, or it is gone
            except KubeError as exc:
                log.warning("query %s: could not claim pool pod %s: %s", job.query_id, name, exc)
                self._missed("error")
                return None
            self._pods.seen(claimed)
            self._claims += 1
            log.info("query %s: claimed pool pod %s", job.query_id, name)
            return name, False
        log.info("query %s: no pool pod ready; starting a cold pod", job.query_id)
        self._missed("empty")
        return None

    async def send(
        self, job: Job, name: str, *, adopted: bool, opened: Callable[[], None] | None = None
    ) -> bytes | None:
        """Write `job`'s request to the worker of the claimed pod `name` (resized first to the query's limits
        if they are larger than the class's: `_fit`), and read what the worker writes to stdout until its
        result envelope (see `streamed.py`) or its end. None when the resize or the attach failed: the pod
        is deleted and the query is to start cold. (For an adopted pod, an attach failure is only logged: its
        worker may well be running the query; and a worker that already had its request ignores another.
        Its resize failing is not: a worker gets its request only once its resize is applied.)"""
        state = self._pods.state(name)
        if state is None or state.gone or is_terminal(state.pod):
            return b""  # nothing to write to; following it reports how it ended
        resized = ""
        if fit(self._class, job.limits, resize=True) == "resize":
            if (took := await self._fit(job, name, adopted=adopted)) is None:
                return None
            resized = f", resized to {job.limits.cpu_millicores}m/{job.limits.memory_bytes} in {took:.1f}s"
        request, _ = worker_request(job, self._template)
        claimed = f"query {job.query_id}, attempt {job.attempt}{resized}"
        # Posted while the query runs, not before it: an Event is one more request.
        posting = asyncio.ensure_future(self._post_event(state.pod, Reason.CLAIMED, claimed))
        try:
            output = await self._api.attach(
                self._namespace,
                name,
                CONTAINER_NAME,
                (encode_request(request) + "\n").encode(),
                until_line=ENVELOPE_MARKER.encode(),
                read_seconds=job.limits.timeout_seconds,
                limit_bytes=MAX_STREAMED_BYTES,
                opened=opened,
            )
        except KubeError as exc:
            if adopted:
                log.info("query %s: request not written again to pod %s: %s", job.query_id, name, exc)
                return b""
            log.warning("query %s: attach to pool pod %s failed: %s; deleting it", job.query_id, name, exc)
            await self.give_up(job, name)
            return None
        finally:
            await asyncio.wait([posting])
        return output

    async def _fit(self, job: Job, name: str, *, adopted: bool) -> float | None:
        """Resize the claimed pod `name` to `job`'s limits (resize.py) unless its spec asks for them already
        (a controller that crashed since patched it), and wait until the kubelet has applied them; the
        seconds that took. None when the resize was refused, or not applied within RESIZE_SECONDS: the pod
        is deleted and the query starts cold."""
        started = time.monotonic()
        with self._pods.following(name) as changed:
            state = self._pods.state(name)
            try:
                if state is not None and not asked(state.pod, job.limits):
                    patch = resize_patch(job.limits)
                    # Shielded: a cancelled query still knows what the pod was asked for.
                    self._pods.seen(await shielded(self._api.resize_pod(self._namespace, name, patch)))
                    crash_if(self._crash_at, "after_resize")
            except KubeError as exc:
                await self._refused(job, name, f"the API server refused the resize: {exc}")
                return None
            while True:
                changed.clear()
                state = self._pods.state(name)
                if adopted and (state is None or state.gone or is_terminal(state.pod)):
                    return time.monotonic() - started  # it may have run the query: following it tells
                if state is None or state.gone:
                    await self._refused(job, name, "the pod is gone")
                    return None
                now = progress(state.pod, job.limits)
                remaining = RESIZE_SECONDS - (time.monotonic() - started)
                if now.state == "refused" or (now.state == "waiting" and remaining <= 0):
                    await self._refused(job, name, now.message)
                    return None
                if now.state == "applied":
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        took = time.monotonic() - started
        log.info("query %s: pool pod %s resized in %.2fs", job.query_id, name, took)
        if not adopted:
            await self._own_deadline(job, name, state.pod)
        return took

    async def _own_deadline(self, job: Job, name: str, pod: Mapping[str, Any]) -> None:
        """Lower the claim's deadline, which allowed for the resize, to the query's own timeout from now.
        (After a restart it is left as it is: at most RESIZE_SECONDS late.)"""
        deadline = claim_deadline(pod, time.time(), job.limits.timeout_seconds)
        try:
            await self._api.patch_pod(self._namespace, name, {"spec": {"activeDeadlineSeconds": deadline}})
        except KubeError as exc:
            log.warning("query %s: deadline of pool pod %s not lowered: %s", job.query_id, name, exc)

    async def _refused(self, job: Job, name: str, why: str) -> None:
        """Give the pool pod `name` up: its resize was refused or came too late."""
        log.warning("query %s: pool pod %s not resized (%s); deleting it", job.query_id, name, why)
        if (state := self._pods.state(name)) is not None and not state.gone:
            message = f"not resized for query {job.query_id} ({why}); it starts on a cold pod"
            await self._post_event(state.pod, Reason.RESIZE_REFUSED, message[:1024])
        await self.give_up(job, name, "resize_refused")
