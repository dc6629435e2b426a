"""What a local worker process gets before it runs: its environment, and what the forked child does
before it execs the worker (death signal, cgroup, resource limits).

Address-space cap (the "rlimit" fallback, where no cgroup is writable). RLIMIT_AS counts reserved
address space, not memory used, and a polars process reserves far more than it touches. Measured with
this worker (polars 2.1, Python 3.11, glibc 2.36; the smallest cap under which a one-table count and a
two-table join over the fixture files still succeed): 0.6-2.1 GiB with one polars thread, 2.2-2.5 GiB
with 2 to 16, almost all of it glibc's per-thread malloc arenas (64 MiB each, reserved, never touched).
With ``MALLOC_ARENA_MAX=2``: 462 MiB at 1 thread, 478 at 2, 494 at 4, 518 at 8, 693 at 16. So in rlimit
mode the worker runs with two arenas and a cap of ``memory limit + 512 MiB + 24 MiB * polars threads``:
the query gets roughly its memory limit on top of what the interpreter and libraries reserve, and a
trivial query runs under any limit. It is an approximation; the cgroup mode caps resident memory exactly.
Near the cap polars does not always fail cleanly: besides aborting on a failed allocation, it was seen
to deadlock, which the launcher can only report as a ``timeout`` at the deadline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

import worker_image
from worker_image.confine import confine
from worker_image.protocol import (
    MEMORY_LIMIT_ENV,
    POLARS_ENV,
    REQUEST_ENV,
    TERMINATION_MESSAGE_ENV,
    TEST_HOOKS_ENV,
)

__all__ = [
    "DEFAULT_INHERITED_ENV",
    "MAX_ENV_STRING_BYTES",
    "address_space_limit",
    "child_setup",
    "request_env_bytes",
    "worker_env",
    "zygote_env",
]

RLIMIT_AS_BASE_BYTES = 512 * 2**20
RLIMIT_AS_PER_THREAD_BYTES = 24 * 2**20
MALLOC_ARENAS_UNDER_RLIMIT = 2

# All a worker takes from the controller's environment; no credentials, no settings. (The worker
# ignores proxy and CA-bundle variables anyway: it fetches with httpx's trust_env off.)
DEFAULT_INHERITED_ENV = ("PATH", "TZ")

# Linux's MAX_ARG_STRLEN: the longest single "NAME=value" string execve accepts.
MAX_ENV_STRING_BYTES = 128 * 1024

# The directory holding the `worker_image` package the controller runs, so the worker is the same code.
_PACKAGE_ROOT = Path(worker_image.__file__).resolve().parent.parent


def request_env_bytes(request_json: str) -> int:
    """How much of `MAX_ENV_STRING_BYTES` the request's environment variable takes."""
    return len(f"{REQUEST_ENV}={request_json}".encode()) + 1


def address_space_limit(memory_bytes: int, threads: int) -> int:
    return memory_bytes + RLIMIT_AS_BASE_BYTES + RLIMIT_AS_PER_THREAD_BYTES * threads


def worker_env(
    *,
    request_json: str,
    scratch: Path,
    termination_log: Path,
    threads: int,
    memory_bytes: int,
    test_hooks: bool,
    rlimit: bool,
    inherited: Iterable[str],
) -> dict[str, str]:
    """`memory_bytes` is the job's memory limit, which the worker watches its own memory against (see
    worker_image/memwatch.py): it stops a query within ~2 s of the limit, where the cgroup's OOM killer
    comes only after the kernel has thrashed for many seconds and RLIMIT_AS fails allocations unreliably."""
    env = {name: os.environ[name] for name in inherited if name in os.environ}
    env.update(
        {
            "PYTHONPATH": str(_PACKAGE_ROOT),
            # The envelope's length and checksum are over UTF-8 bytes, whatever the host's locale.
            "PYTHONUTF8": "1",
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            **POLARS_ENV,
            "POLARS_MAX_THREADS": str(threads),
            MEMORY_LIMIT_ENV: str(memory_bytes),
            REQUEST_ENV: request_json,
            TERMINATION_MESSAGE_ENV: str(termination_log),
        }
    )
    if test_hooks:
        env[TEST_HOOKS_ENV] = "1"
    if rlimit:
        env["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS_UNDER_RLIMIT)
    return env


def child_setup(*, cgroup_procs: Sequence[Path], address_space_bytes: int | None) -> Callable[[], None]:
    """The `preexec_fn`: runs in the forked child, after `setsid` and before exec. `cgroup_procs`: the
    ``cgroup.procs`` files of the job's cgroups, memory first."""
    parent = os.getpid()
    all_procs = [os.fsencode(path) for path in cgroup_procs]
    return partial(confine, parent, all_procs, address_space_bytes)


def zygote_env(*, threads: int, rlimit: bool, inherited: Iterable[str]) -> dict[str, str]:
    """A zygote's environment: a worker's, less everything that belongs to one query (see `warm`)."""
    env = {name: os.environ[name] for name in inherited if name in os.environ}
    env.update(
        {
            "PYTHONPATH": str(_PACKAGE_ROOT),
            "PYTHONUTF8": "1",
            **POLARS_ENV,
            "POLARS_MAX_THREADS": str(threads),
        }
    )
    if rlimit:
        env["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS_UNDER_RLIMIT)
    return env
