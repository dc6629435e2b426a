"""asyncio helpers the launchers share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def shielded(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` to its end even if this task is cancelled meanwhile.

    Such a cancellation is not lost: it is delivered again at the task's next await. Nor is the result
    lost when the cancellation lands in the very step the awaitable completes (a spawned worker must
    reach the code that kills it).
    """
    task = asyncio.current_task()
    assert task is not None
    inner = asyncio.ensure_future(awaitable)
    cancelled = False
    while not inner.done():
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.cancelled():
                raise
            cancelled = True
            task.uncancel()
    if cancelled:
        task.cancel()
    return inner.result()
