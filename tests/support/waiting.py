"""Waiting on observable state with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.01


def wait_until(
    predicate: Callable[[], T], what: str = "the condition", within: float = 10, every: float = POLL_SECONDS
) -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail after `within` seconds.
    `every` is the poll interval: raise it when each look is costly (a kubectl call)."""
    deadline = time.monotonic() + within
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        time.sleep(every)  # sleep-ok: the poll interval of a deadline-bounded wait
    return value


async def wait_until_async(predicate: Callable[[], T], what: str = "the condition", within: float = 10) -> T:
    """`wait_until` for code on an event loop, which keeps running while this waits."""
    try:
        async with asyncio.timeout(within):
            # Polled: the state waited on (processes, files) has no event to await.
            while not (value := predicate()):  # noqa: ASYNC110
                await asyncio.sleep(POLL_SECONDS)  # sleep-ok: the poll interval of a deadline-bounded wait
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {within} s") from None
    return value
