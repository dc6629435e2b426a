"""The local launcher's zygotes (warm start): one per polars thread count, started on demand, replaced
when dead.

polars fixes the size of its thread pool when it is imported, so a zygote serves the queries of one thread
count (``POLARS_MAX_THREADS`` in its environment); most deployments use one CPU limit and so one zygote.
`get` answers a live zygote or None, never waiting: with none ready (starting, dead, failed) the query
starts cold, which is faster than waiting for a zygote to import everything, and a zygote for its thread
count starts in the background. A zygote that exits is replaced at once; one that failed to start is not
tried again for `RETRY_AFTER_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from controller.launchers.local.zygote import Zygote

__all__ = ["RETRY_AFTER_SECONDS", "START_TIMEOUT_SECONDS", "ZygotePool"]

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
RETRY_AFTER_SECONDS = 10.0
# jemalloc (polars' and Arrow's) would start background threads at import; a zygote starts none itself.
ZYGOTE_ENV = {
    "_RJEM_MALLOC_CONF": "background_thread:false",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}


class ZygotePool:
    def __init__(
        self,
        python: str,
        *,
        env: Callable[[int], Mapping[str, str]],
        setup: Callable[[], Callable[[], None]],
        start_timeout_seconds: float = START_TIMEOUT_SECONDS,
    ) -> None:
        """`env(threads)` is the environment of a zygote for that thread count; `setup()` its preexec_fn."""
        self._python = python
        self._env = env
        self._setup = setup
        self._start_timeout = start_timeout_seconds
        self._zygotes: dict[int, Zygote] = {}
        self._starting: dict[int, asyncio.Task[Zygote | None]] = {}
        self._failed_at: dict[int, float] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._closed = False

    def get(self, threads: int) -> Zygote | None:
        """The live zygote for `threads`, else None (and one starts in the background)."""
        zygote = self._zygotes.get(threads)
        if zygote is not None and zygote.alive:
            return zygote
        self.prestart(threads)
        return None

    def prestart(self, threads: int) -> asyncio.Task[Zygote | None] | None:
        """Start a zygote for `threads` unless one is up or starting, or the last start failed lately."""
        if self._closed:
            return None
        zygote = self._zygotes.get(threads)
        if zygote is not None and zygote.alive:
            return None
        if zygote is not None:
            del self._zygotes[threads]
            zygote.kill()
        if (task := self._starting.get(threads)) is not None:
            return task
        failed_at = self._failed_at.get(threads)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_AFTER_SECONDS:
            return None
        task = self._starting[threads] = asyncio.create_task(self._start(threads))
        return task

    async def wait_ready(self, threads: int) -> Zygote | None:
        """Start the zygote for `threads` and wait until it is up (or failed)."""
        task = self.prestart(threads)
        if task is not None:
            await asyncio.shield(task)
        return self.get(threads)

    async def _watch(self, zygote: Zygote) -> None:
        """Replace the zygote as soon as it exits."""
        code = await zygote.wait()
        if self._closed or self._zygotes.get(zygote.threads) is not zygote:
            return
        log.error("zygote %d (%d threads) exited (%s); starting another", zygote.pid, zygote.threads, code)
        self.prestart(zygote.threads)

    async def _start(self, threads: int) -> Zygote | None:
        started = time.monotonic()
        try:
            zygote = await Zygote.start(
                self._python,
                threads=threads,
                env={**self._env(threads), **ZYGOTE_ENV},
                cwd="/",
                setup=self._setup(),
                start_timeout_seconds=self._start_timeout,
            )
        except Exception as exc:
            log.error("zygote for %d threads failed to start (%r): queries start cold", threads, exc)
            self._failed_at[threads] = time.monotonic()
            return None
        finally:
            self._starting.pop(threads, None)
        if self._closed:
            await zygote.close()
            return None
        self._failed_at.pop(threads, None)
        self._zygotes[threads] = zygote
        self._watchers.add(watcher := asyncio.create_task(self._watch(zygote)))
        watcher.add_done_callback(self._watchers.discard)
        log.info("zygote %d ready for %d threads in %.2fs", zygote.pid, threads, time.monotonic() - started)
        return zygote

    def status(self) -> str:
        """For readiness: "ok" with the live zygotes, or why none is up."""
        live = [f"{z.threads} threads: pid {z.pid}" for z in self._zygotes.values() if z.alive]
        if live:
            return "ok (" + ", ".join(live) + ")"
        if self._starting:
            return "starting"
        return "none (queries start cold)" if self._failed_at else "not started"

    async def close(self) -> None:
        self._closed = True
        for task in list(self._starting.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for zygote in self._zygotes.values():
            await zygote.close()
        self._zygotes.clear()
        for watcher in list(self._watchers):
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
