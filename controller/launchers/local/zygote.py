"""The controller's side of a zygote (see worker_image/zygote.py): start it, ask it for children, hear how
they ended.

The controller keeps a handle of its own on every child: the pidfd the zygote opened before it could reap
the child (so it names that process and no other), which tells when the child has exited whatever the
zygote does. The exit status comes from the zygote, which reaps it. A zygote that dies fails everything
waiting on it with `ZygoteLost`; one that does not answer a fork within `FORK_TIMEOUT_SECONDS` is killed
(and so counts as dead): the launcher then starts that query cold and the next one on a new zygote.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FORK_TIMEOUT_SECONDS", "Zygote", "ZygoteChild", "ZygoteLost"]

log = logging.getLogger(__name__)

FORK_TIMEOUT_SECONDS = 5.0
_MAX_MESSAGE = 1 << 20


class ZygoteLost(Exception):
    """The zygote died (or was killed as wedged) before it answered."""


@dataclass(frozen=True)
class ZygoteChild:
    pid: int
    pidfd: int
    # Resolves to the child's return code (as `Popen.returncode`) when the zygote reaps it.
    returncode: asyncio.Future[int]


class Zygote:
    def __init__(self, process: asyncio.subprocess.Process, sock: socket.socket, threads: int) -> None:
        self._process = process
        self._sock = sock
        self.threads = threads
        self._numbers = itertools.count(1)
        self._forks: dict[int, asyncio.Future[ZygoteChild]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lost = False
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_message)

    @classmethod
    async def start(
        cls,
        python: str,
        *,
        threads: int,
        env: Mapping[str, str],
        cwd: str,
        setup: Callable[[], None],
        start_timeout_seconds: float,
    ) -> Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                python,
                "-m",
                "worker_image.zygote",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                env=dict(env),
                cwd=cwd,
                pass_fds=(theirs.fileno(),),
                process_group=0,
                preexec_fn=setup,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        zygote = cls(process, ours, threads)
        try:
            async with asyncio.timeout(start_timeout_seconds):
                await zygote._ready
        except BaseException:
            zygote.kill()
            await zygote.wait()
            raise
        return zygote

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return not self._lost and self._process.returncode is None

    async def fork(
        self,
        *,
        cwd: str,
        env: Mapping[str, str],
        cgroup_procs: Sequence[str],
        rlimit_as: int | None,
        stdout: int,
        stderr: int,
        request: int,
    ) -> ZygoteChild:
        """A new child with these descriptors as its stdout, stderr and request pipe; `ZygoteLost` if the
        zygote is dead or does not answer in time (it is then killed), `OSError` if the fork failed."""
        if not self.alive:
            raise ZygoteLost("the zygote is not running")
        number = next(self._numbers)
        message = {"fork": number, "cwd": cwd, "env": dict(env), "cgroup_procs": list(cgroup_procs)}
        message["rlimit_as"] = rlimit_as
        answer: asyncio.Future[ZygoteChild] = asyncio.get_running_loop().create_future()
        self._forks[number] = answer
        try:
            socket.send_fds(self._sock, [json.dumps(message).encode()], [stdout, stderr, request])
            async with asyncio.timeout(FORK_TIMEOUT_SECONDS):
                return await answer
        except TimeoutError:
            log.error("zygote %d did not answer a fork in %gs: killing it", self.pid, FORK_TIMEOUT_SECONDS)
            self.kill()
            raise ZygoteLost("the zygote did not answer") from None
        except OSError as exc:
            if isinstance(exc, BlockingIOError | BrokenPipeError | ConnectionError):
                self.kill()
                raise ZygoteLost(f"the zygote's socket failed: {exc}") from exc
            raise
        finally:
            self._forks.pop(number, None)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._process.pid, signal.SIGKILL)
        self._lose()

    async def wait(self) -> int:
        return await self._process.wait()

    async def close(self) -> None:
        self.kill()
        await self.wait()

    def _on_message(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, 1)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self._lose()
            return
        self._dispatch(json.loads(data), fds)

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        if "ready" in message:
            if not self._ready.done():
                self._ready.set_result(None)
        elif "forked" in message:
            pid = int(message["pid"])
            exit_future = self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
            child = ZygoteChild(pid, fds[0], exit_future)
            answer = self._forks.get(message["forked"])
            if answer is None or answer.done():
                # Its caller gave up (cancelled): nobody will ever run this child's query.
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
                os.close(child.pidfd)
                return
            answer.set_result(child)
        elif "exited" in message:
            future = self._exits.pop(int(message["exited"]), None)
            if future is not None and not future.done():
                future.set_result(int(message["returncode"]))
        elif "failed" in message:
            answer = self._forks.get(message["failed"])
            if answer is not None and not answer.done():
                answer.set_exception(OSError(f"the zygote could not fork: {message['error']}"))
        for fd in fds[1:] if "forked" in message else fds:
            os.close(fd)

    def forget(self, pid: int) -> None:
        """Stop waiting for `pid`'s exit report."""
        future = self._exits.pop(pid, None)
        if future is not None and not future.done():
            future.cancel()

    def _lose(self) -> None:
        if self._lost:
            return
        self._lost = True
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        futures: list[asyncio.Future[Any]] = [*self._forks.values(), *self._exits.values(), self._ready]
        for future in futures:
            if not future.done():
                future.set_exception(ZygoteLost(f"zygote {self.pid} died"))
                # Retrieved or not, it is no error for nobody to have been waiting.
                future.exception()
        self._exits.clear()
