"""One worker process, from spawn (or fork from a zygote) to reaping.

Its exit is watched through a pidfd (Linux >= 5.3) rather than `Process.wait()`, which on Python 3.11 also
waits for stdout and stderr to close: a process the worker left behind holding them would make a
finished worker look like one still running. Killing goes by session, not process group: the worker's
pid is its session id, which the kernel cannot hand out again while any member of the session lives,
so killing the session's live members is safe at any time, before or after the worker is reaped.

A warm worker (`WorkerProcess.fork`) is a child of the zygote, not of the controller: the controller
watches it through the pidfd the zygote opened for it and gets its exit status from the zygote. If the
zygote dies first, that status is lost and `reap` returns None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from controller.launchers.local.procfs import session_members
from controller.launchers.local.streams import EnvelopeScanner, TailBuffer, drain
from controller.launchers.local.zygote import Zygote, ZygoteLost

__all__ = ["WorkerProcess"]

log = logging.getLogger(__name__)

_STDERR_TAIL_BYTES = 64 * 1024
_POLL_SECONDS = 0.01


class WorkerProcess:
    def __init__(
        self,
        *,
        pid: int,
        pidfd: int | None,
        streams: tuple[asyncio.StreamReader, asyncio.StreamReader],
        wait: Callable[[], Awaitable[int]],
        query_id: str,
        max_envelope_bytes: int,
    ) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._wait = wait
        self._query_id = query_id
        self.stdout = EnvelopeScanner(max_envelope_bytes)
        self.stderr = TailBuffer(_STDERR_TAIL_BYTES)
        self._readers = [
            asyncio.create_task(drain(streams[0], self.stdout)),
            asyncio.create_task(drain(streams[1], self.stderr)),
        ]
        self._extra: list[asyncio.Task[None]] = []
        # A cold worker's process, whose return code may be known while its pipes are still open.
        self._process: asyncio.subprocess.Process | None = None

    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        *,
        env: Mapping[str, str],
        request: bytes,
        cwd: Path,
        setup: Callable[[], None],
        query_id: str,
        max_envelope_bytes: int,
    ) -> WorkerProcess:
        """A cold worker: a new interpreter, which reads `request` from its stdin."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
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
        assert process.stdout is not None and process.stderr is not None
        streams = (process.stdout, process.stderr)
        worker = cls(
            pid=process.pid,
            pidfd=pidfd,
            streams=streams,
            wait=process.wait,
            query_id=query_id,
            max_envelope_bytes=max_envelope_bytes,
        )
        worker._process = process
        assert process.stdin is not None
        worker._extra.append(asyncio.create_task(_feed(process.stdin, request)))
        return worker

    @classmethod
    async def fork(
        cls,
        zygote: Zygote,
        *,
        request: bytes,
        env: Mapping[str, str],
        cwd: Path,
        cgroup_procs: Sequence[Path],
        rlimit_as: int | None,
        query_id: str,
        max_envelope_bytes: int,
    ) -> WorkerProcess:
        """A warm worker: a child of `zygote`, which gets `request` through a pipe of its own once it has
        confined itself. `ZygoteLost` or `OSError` when the zygote could not fork (nothing is left)."""
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        request_r, request_w = os.pipe2(os.O_CLOEXEC)
        try:
            child = await zygote.fork(
                cwd=str(cwd),
                env=env,
                cgroup_procs=[str(path) for path in cgroup_procs],
                rlimit_as=rlimit_as,
                stdout=stdout_w,
                stderr=stderr_w,
                request=request_r,
            )
        except BaseException:
            for fd in (stdout_r, request_w):
                os.close(fd)
            raise
        finally:
            for fd in (stdout_w, stderr_w, request_r):
                os.close(fd)
        loop = asyncio.get_running_loop()
        streams = (await _reader(loop, stdout_r), await _reader(loop, stderr_r))

        async def returncode() -> int:
            try:
                return await child.returncode
            finally:
                zygote.forget(child.pid)

        worker = cls(
            pid=child.pid,
            pidfd=child.pidfd,
            streams=streams,
            wait=returncode,
            query_id=query_id,
            max_envelope_bytes=max_envelope_bytes,
        )
        worker._extra.append(asyncio.create_task(asyncio.to_thread(_write_and_close, request_w, request)))
        return worker

    @property
    def pid(self) -> int:
        return self._pid

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

    async def reap(self, grace_seconds: float) -> int | None:
        """Kill what is left of the session, reap the worker and drain its output; its return code (None
        for a warm worker whose zygote died before reporting it).

        Waits at most `grace_seconds` for the killed processes to go, and as long again for the pipes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        if killed := self.kill():
            log.info(
                "query %s: killed %d processes of worker %d's session", self._query_id, len(killed), self.pid
            )
        # A session found empty needs no second look: only its members could add to it.
        while killed and (killed := self.kill()):
            if loop.time() > deadline:
                log.error("query %s: processes of session %d survive SIGKILL", self._query_id, self.pid)
                break
            await asyncio.sleep(_POLL_SECONDS)
        returncode: int | None = None
        try:
            async with asyncio.timeout(grace_seconds):
                try:
                    returncode = await self._wait()
                except ZygoteLost:
                    returncode = None
                await asyncio.gather(*self._readers)
        except TimeoutError:
            # Only a process that left both the session and the cgroup can still hold the pipes open.
            log.error("query %s: worker %d's output is still open after it died", self._query_id, self.pid)
            for reader in self._readers:
                reader.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            if self._process is not None:
                known = self._process.returncode
                returncode = known if known is not None else -signal.SIGKILL
        finally:
            await asyncio.gather(*self._extra, return_exceptions=True)
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return returncode


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    """A stream over the read end of a pipe; the transport closes the descriptor at its end."""
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """The request into a cold worker's stdin; a worker that died first never needed it."""
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stdin.wait_closed()


def _write_and_close(fd: int, data: bytes) -> None:
    """The request into the child's pipe; a child that died first (EPIPE) never needed it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass
    finally:
        os.close(fd)
