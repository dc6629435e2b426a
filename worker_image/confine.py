"""How a local worker confines itself before it runs a query, whether the launcher forked and execs it (cold)
or the zygote forked it (warm): the death signal, the job's cgroups, no core dumps, the address-space cap.

It runs in a forked child of a process that may have threads: system calls only, no logging, no imports, no
locks."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Sequence

__all__ = ["confine"]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def confine(parent: int, cgroup_procs: Sequence[bytes], address_space_bytes: int | None) -> None:
    """SIGKILL when `parent` dies (it exits at once if `parent` is already gone), then joins each
    ``cgroup.procs`` file (memory first), so every byte it allocates from here on is charged to the job."""
    # The death signal fires when the forking *thread* ends: the launcher forks from the event loop's
    # thread, which lives as long as the controller; the zygote is single-threaded.
    if _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        # The parent died before the death signal was armed.
        os._exit(1)
    pid = str(os.getpid()).encode()
    for procs in cgroup_procs:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if address_space_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
