"""One worker subprocess, from spawn to reaping.

Its exit is watched through a pidfd (Linux >= 5.3) rather than `Process.wait()`, which on Python 3.11 also
waits for stdout and stderr to close: a process the worker left behind holding them would make a
finished worker look like one still running. Killing goes by session, not process group: the worker's
pid is its session id, which the kernel cannot hand out again while any member of the session lives,
so killing the session's live members is safe at any time, before or after the worker is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from controller.launchers.local.procfs import session_members
from controller.launchers.local.streams import EnvelopeScanner, TailBuffer, drain

__all__ = ["WorkerProcess"]

log = logging.getLogger(__name__)

_STDERR_TAIL_BYTES = 64 * 1024
_POLL_SECONDS = 0.01


class WorkerProcess:
    def __init__(
        self, process: asyncio.subprocess.Process, pidfd: int | None, query_id: str, max_envelope_bytes: int
    ) -> None:
        assert process.stdout is not None and process.stderr is not None
        self._process = process
        self._pidfd = pidfd
        self._query_id = query_id
        self.stdout = EnvelopeScanner(max_envelope_bytes)
        self.stderr = TailBuffer(_STDERR_TAIL_BYTES)
        self._readers = [
            asyncio.create_task(drain(process.stdout, self.stdout)),
            asyncio.create_task(drain(process.stderr, self.stderr)),
        ]

    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        setup: Callable[[], None],
        query_id: str,
        max_envelope_bytes: int,
    ) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            preexec_fn=setup,
        )
        try:
            pidfd: int | None = os.pidfd_open(process.pid)
        except ProcessLookupError:
            # Already exited and reaped.
            pidfd = None
        return cls(process, pidfd, query_id, max_envelope_bytes)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def exited(self) -> None:
        """Until the worker itself has exited (whatever it left behind)."""
        if self._pidfd is None:
            return
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(self._pidfd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(self._pidfd)

    def kill(self) -> list[int]:
        """SIGKILL every live process of the worker's session, the worker included; which ones they were."""
        members = session_members(self.pid)
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return members

    async def reap(self, grace_seconds: float) -> int:
        """Kill what is left of the session, reap the worker and drain its output; its return code.

        Waits at most `grace_seconds` for the killed processes to go, and as long again for the pipes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        if killed := self.kill():
            log.info(
                "query %s: killed %d processes of worker %d's session", self._query_id, len(killed), self.pid
            )
        while self.kill():
            if loop.time() > deadline:
                log.error("query %s: processes of session %d survive SIGKILL", self._query_id, self.pid)
                break
            await asyncio.sleep(_POLL_SECONDS)
        try:
            async with asyncio.timeout(grace_seconds):
                returncode = await self._process.wait()
                await asyncio.gather(*self._readers)
        except TimeoutError:
            # Only a process that left both the session and the cgroup can still hold the pipes open.
            log.error("query %s: worker %d's output is still open after it died", self._query_id, self.pid)
            for reader in self._readers:
                reader.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            returncode = self._process.returncode if self._process.returncode is not None else -signal.SIGKILL
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return returncode
