"""A token bucket like client-go's (`flowcontrol.NewTokenBucketRateLimiter`), for requests to the API server.

Pure apart from its clock and its sleep, both injectable: tests drive it with a fake clock and no sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """A token bucket: `burst` tokens, refilled at `qps` per second; each request takes one.

    A request that finds the bucket empty reserves the next token at once and sleeps until it is due, so
    waiters are served in arrival order and a burst of waiters is spread at `qps`. A waiter cancelled
    while asleep gives its token back.
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs qps > 0 and burst >= 1, not {qps} and {burst}")
        self._qps = qps
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()

    def reserve(self) -> float:
        """Take a token; return how many seconds from now it is due (0: at once)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._qps)
        self._updated = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._qps

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay <= 0:
            return
        try:
            await self._sleep(delay)
        except asyncio.CancelledError:
            self._tokens += 1
            raise
