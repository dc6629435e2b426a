"""`Waiters`: one event per query id that somebody waits on (a long poll, a cancel), set when it finishes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


class Waiters:
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

    def wake_all(self) -> None:
        for event, _ in self._events.values():
            event.set()
