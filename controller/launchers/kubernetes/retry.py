"""Retrying an API call through a transient failure: an API server restarting, overloaded, out of reach."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from controller.launchers.kubernetes.client.errors import KubeError, is_transient
from controller.launchers.kubernetes.pod_watch import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

# Long enough to ride out an API server restart (creating a pod, reading its log).
API_RETRY_SECONDS = 180.0


async def retrying(what: str, call: Callable[[], Awaitable[T]], seconds: float = API_RETRY_SECONDS) -> T:
    """`call()`, again after a transient API failure for up to `seconds`; any other failure, or the last
    one, is raised."""
    backoff = Backoff()
    give_up = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except KubeError as exc:
            if not is_transient(exc) or time.monotonic() >= give_up:
                raise
            delay = backoff.next_delay()
            log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
