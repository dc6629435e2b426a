"""`python -m worker_image.zygote <fd>`: a warm parent that forks one worker per query (the local launcher's
warm start).

The zygote imports the worker and everything a query needs (polars, pyarrow, sqlglot, httpx with anyio's
backend) and builds the fetch's TLS context (the CA bundle, no query's state), then only waits on its
control socket (fd `<fd>`, a SOCK_SEQPACKET socket whose other end the controller holds). It
never runs a query and never sees a request or a result. Messages are one JSON object per datagram:

- controller -> zygote: ``{"fork": n, "cwd": ..., "env": {...}, "cgroup_procs": [...], "rlimit_as": int
  | null}`` with three descriptors attached: the worker's stdout and stderr (write ends) and the read end
  of a pipe the controller writes the request into once the child exists.
- zygote -> controller: ``{"ready": pid}`` once warm; ``{"forked": n, "pid": pid}`` with the child's
  pidfd attached (opened before the zygote could reap it, so it can never name another process);
  ``{"exited": pid, "returncode": rc}`` (as `Popen.returncode`) when it reaps a child; ``{"failed": n,
  "error": ...}`` when a fork failed.

The child confines itself before it reads its request, exactly as a cold worker is confined before exec:
a session of its own, the death signal (SIGKILL when the zygote dies; the zygote itself dies with the
controller), the job's cgroups joined, RLIMIT_CORE 0 and the RLIMIT_AS fallback, only stdin (/dev/null),
stdout, stderr and the request pipe open, the job's environment and working directory. Then it runs
`worker_image.__main__.main`, which reads the request from the pipe (``PODQ_REQUEST_FD``, as a cold
worker does), so the protocol and the envelope are the cold worker's. (Its /proc environ is the zygote's.)

Library imports start a few threads of their own (polars' out-of-core cleaner; the launcher turns
jemalloc's background threads off through the environment); a fork copies only the forking thread, and
polars' thread pool is created lazily in the child. polars fixes its pool size at import, so the launcher
runs one zygote per thread count (``POLARS_MAX_THREADS`` in the zygote's environment).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import tempfile
import traceback
from typing import Any

from worker_image.confine import confine
from worker_image.protocol import EXIT_INTERNAL_ERROR, REQUEST_FD_ENV
from worker_image.standby import warm_up

_MAX_MESSAGE = 1 << 20
_REQUEST_FD = 3


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def serve(control_fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=control_fd)
    warm_up()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    _send(sock, {"ready": os.getpid()})
    while True:
        readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        _reap(sock)
        if sock.fileno() in readable:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
            if not data:
                # The controller is gone; the children die with us (their death signal).
                return 0
            _fork(sock, json.loads(data), fds, (wake_r, wake_w))


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _fork(sock: socket.socket, command: dict[str, Any], fds: list[int], wake: tuple[int, int]) -> None:
    number = command.get("fork")
    try:
        if len(fds) != 3:
            raise ValueError(f"expected 3 descriptors, got {len(fds)}")
        pid = os.fork()
        if pid == 0:
            _child(command, fds, sock.fileno(), wake)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            os.kill(pid, signal.SIGKILL)
            raise
        try:
            _send(sock, {"forked": number, "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)
    except Exception as exc:  # a failed fork is the controller's to handle: it starts the query cold
        _send(sock, {"failed": number, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for fd in fds:
            os.close(fd)


def _child(command: dict[str, Any], fds: list[int], control_fd: int, wake: tuple[int, int]) -> None:
    """In the forked child: confine, read the request, run the worker. Never returns."""
    code = EXIT_INTERNAL_ERROR
    try:
        zygote = os.getppid()
        os.setsid()
        rlimit_as = command.get("rlimit_as")
        confine(
            zygote,
            [os.fsencode(p) for p in command["cgroup_procs"]],
            None if rlimit_as is None else int(rlimit_as),
        )
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        stdout, stderr, request = fds
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.dup2(request, _REQUEST_FD)
        os.closerange(_REQUEST_FD + 1, os.sysconf("SC_OPEN_MAX"))
        del control_fd, wake
        os.chdir(command["cwd"])
        os.environ.clear()
        os.environ.update(command["env"])
        tempfile.tempdir = None
        os.set_inheritable(_REQUEST_FD, False)
        os.environ[REQUEST_FD_ENV] = str(_REQUEST_FD)
        from worker_image.__main__ import main

        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
            sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
