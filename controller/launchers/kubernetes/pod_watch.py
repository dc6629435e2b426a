"""One list+watch over this controller's worker pods, kept as a cache that wakes whoever follows a pod.

The loop, after kopf's `continuous_watch` and client-go's reflector: list (its resourceVersion is the
starting point), watch from there with bookmarks, and on 410 Gone (the resourceVersion expired) list again.
A watch ends every `watch_seconds` on the server's side and is resumed from the last resourceVersion seen;
every `relist_seconds` the cache is rebuilt from a fresh list anyway, a safety net for an event lost in
between. API errors are retried with exponential backoff, and the cache is marked unhealthy meanwhile
(`/readyz` reports it). A pod that disappears keeps its last known state, flagged `gone`, so whoever
follows it can still classify how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from controller.launchers.kubernetes.client.api import KubeClient, WatchEvent
from controller.launchers.kubernetes.client.errors import Gone, KubeError, is_transient

log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class PodState:
    pod: Mapping[str, Any]
    # The pod was deleted (or vanished from a relist); `pod` is the last state seen.
    gone: bool = False


def _uid(pod: Mapping[str, Any]) -> str | None:
    uid = pod.get("metadata", {}).get("uid")
    return uid if isinstance(uid, str) else None


def _name(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"]["name"])


class Backoff:
    """Exponential delays with jitter, reset by a success."""

    def __init__(self, first: float = BACKOFF_FIRST_SECONDS, maximum: float = BACKOFF_MAX_SECONDS) -> None:
        self._first = first
        self._maximum = maximum
        self._next = first

    def reset(self) -> None:
        self._next = self._first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay * random.uniform(0.8, 1.2)


class PodWatch:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        selector: str,
        *,
        watch_seconds: int,
        relist_seconds: float,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._selector = selector
        self._watch_seconds = watch_seconds
        self._relist_seconds = relist_seconds
        self._states: dict[str, PodState] = {}
        self._events: dict[str, asyncio.Event] = {}
        self.synced = asyncio.Event()
        # Set on every change of any pod (the warm pool clears it and waits on it).
        self.changed = asyncio.Event()
        self.healthy = False
        self.last_error: str | None = None

    def state(self, name: str) -> PodState | None:
        return self._states.get(name)

    def pods(self) -> list[Mapping[str, Any]]:
        """Every pod present now (not gone)."""
        return [s.pod for s in self._states.values() if not s.gone]

    @contextlib.contextmanager
    def following(self, name: str) -> Iterator[asyncio.Event]:
        """An event set on every change of the pod `name`; clear it, then read `state`, then wait on it.
        Nested (one step of following the pod waits on it too), the outermost keeps the event."""
        outermost = name not in self._events
        event = self._events.setdefault(name, asyncio.Event())
        try:
            yield event
        finally:
            if outermost:
                self._events.pop(name, None)

    def forget(self, name: str) -> None:
        """Drop what is known of a pod nobody follows any more (its outcome is stored)."""
        state = self._states.get(name)
        if state is not None and state.gone:
            del self._states[name]

    def seen(self, pod: Mapping[str, Any]) -> None:
        """Record a state of a pod obtained outside the watch (a create's or get's answer)."""
        name = _name(pod)
        current = self._states.get(name)
        if current is not None and not current.gone and _uid(current.pod) == _uid(pod):
            return  # the watch already holds this pod, probably in a newer state
        self._set(name, PodState(pod))

    def _set(self, name: str, state: PodState) -> None:
        self._states[name] = state
        self.changed.set()
        event = self._events.get(name)
        if event is not None:
            event.set()

    def _apply(self, event: WatchEvent) -> None:
        pod = event.object
        name = _name(pod)
        current = self._states.get(name)
        if current is not None and _uid(current.pod) != _uid(pod) and event.type == "DELETED":
            return  # the end of an earlier pod of that name, recreated since
        self._set(name, PodState(pod, gone=event.type == "DELETED"))

    def _replace_all(self, pods: list[dict[str, Any]]) -> None:
        listed = {_name(pod): pod for pod in pods}
        for name, state in list(self._states.items()):
            if name not in listed and not state.gone:
                self._set(name, PodState(state.pod, gone=True))
        for name, pod in listed.items():
            self._set(name, PodState(pod))

    async def run(self) -> None:
        """List and watch until cancelled."""
        backoff = Backoff()
        while True:
            try:
                resource_version = await self._relist()
                backoff.reset()
                await self._watch_until_relist(resource_version)
            except Gone:
                log.info("pod watch: resourceVersion expired (410 Gone); relisting")
            except KubeError as exc:
                self.healthy = False
                self.last_error = str(exc)
                delay = backoff.next_delay()
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "pod watch: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _relist(self) -> str:
        pods, resource_version = await self._client.list_pods(self._namespace, self._selector)
        self._replace_all(pods)
        self.healthy = True
        self.last_error = None
        if not self.synced.is_set():
            log.info("pod watch: %d pods in %s (%s)", len(pods), self._namespace, self._selector)
            self.synced.set()
        return resource_version

    async def _watch_until_relist(self, resource_version: str) -> None:
        relist_at = time.monotonic() + self._relist_seconds
        while (remaining := relist_at - time.monotonic()) > 0:
            timeout = max(1, min(self._watch_seconds, int(remaining)))
            async for event in self._client.watch_pods(
                self._namespace, self._selector, resource_version, timeout_seconds=timeout
            ):
                resource_version = str(
                    event.object.get("metadata", {}).get("resourceVersion", resource_version)
                )
                if event.type != "BOOKMARK":
                    self._apply(event)
