"""How the end of a local worker process becomes an `Outcome`: a pure function, checked in a fixed order.

1. The launcher killed it at its deadline                     -> ``timeout``
2. The launcher killed it because the launcher was closing   -> ``internal`` (retryable)
   A warm worker whose zygote died under it (its exit status is lost with the zygote)
                                                              -> ``crash`` (retryable)
3. Evidence that it ran out of memory                         -> ``memory``
   - cgroup: the job cgroup's OOM-kill counter moved, or the worker died of a SIGKILL the launcher did
     not send while the cgroup had hit its limit (failcnt > 0);
   - rlimit: the worker died without a result (a signal, or an exit code that is neither 0 nor a
     protocol code) and its stderr shows an allocation failure. Under RLIMIT_AS an allocation fails
     instead of the kernel killing anything: polars (Rust) prints "memory allocation of N bytes failed"
     and aborts, Arrow (C++) dies of an uncaught ``std::bad_alloc``, Python raises ``MemoryError``.
     A SIGSEGV/SIGABRT without such a line stays a ``crash``: the launcher cannot see how close to
     the cap a dead process was, and a genuine segfault must not be reported as a memory problem.
4. A result envelope too large for the launcher to hold       -> ``internal``
5. A valid envelope whose exit code agrees with it (ok and exit 0, an error and `EXIT_USER_ERROR` or
   `EXIT_INTERNAL_ERROR`)                                    -> its result or its error
   (the worker's own ``memory`` error, when it stopped a query near its limit before the kernel had to,
   see worker_image/memwatch.py, gets the launcher's enforcement mode added to its details)
6. No usable envelope, but a protocol exit code and an error in the termination-message file
                                                              -> that error
7. Anything else                                              -> ``crash``, with the exit code or signal
   name, why the envelope was unusable, and the last lines of stderr.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace
from typing import Any, Literal

from controller.launchers.base import Outcome
from controller.launchers.usage import settle
from controller.launchers.worker_io import (
    PROTOCOL_ERROR_CODES,
    envelope_outcome,
    log_excerpt,
    signal_name,
    termination_error,
)
from worker_image.protocol import EnvelopeError, ErrorInfo, ErrorType, error_info

__all__ = ["KillReason", "MemoryEvidence", "WorkerEnd", "classify"]

KillReason = Literal["deadline", "shutdown", "zygote_lost"]
Enforcement = Literal["cgroup", "rlimit"]

ALLOCATION_FAILURE_MARKERS = (
    "memory allocation of",
    "std::bad_alloc",
    "MemoryError",
    "Cannot allocate memory",
)


@dataclass(frozen=True)
class MemoryEvidence:
    enforcement: Enforcement
    limit_bytes: int
    # The job cgroup's counters: zero, and no peak, under rlimit (no job cgroup).
    oom_kills: int = 0
    failcnt: int = 0
    peak_bytes: int | None = None


@dataclass(frozen=True)
class WorkerEnd:
    """What the launcher saw of one worker process, from spawn to reaping."""

    pid: int
    # How the worker started: a new interpreter ("cold") or forked from a zygote ("warm").
    start: Literal["warm", "cold"]
    # As `Popen.returncode`: negative for a death by signal.
    returncode: int
    killed_for: KillReason | None
    timeout_seconds: float
    # The last stdout line carrying the envelope marker, if any.
    envelope_line: str | None
    # The last envelope line was longer than the launcher keeps; `envelope_line` is then None.
    envelope_oversized: bool
    stderr_tail: str
    termination_message: str | None
    memory: MemoryEvidence
    # The job cgroup's CPU time (cpuacct), when it has one.
    cpu_seconds: float | None = None
    # From the launcher's start of the worker until the worker process was there.
    starting_seconds: float | None = None


def classify(end: WorkerEnd) -> Outcome:
    placement = {
        "kind": "local",
        "pid": end.pid,
        **_exit_details(end.returncode),
        "memory_enforcement": end.memory.enforcement,
        "start": end.start,
    }
    outcome = _decide(end)
    memory_error = outcome.error is not None and outcome.error["error_type"] == ErrorType.MEMORY
    usage = settle(
        outcome.usage or {},
        cgroup_peak_bytes=end.memory.peak_bytes,
        cgroup_cpu_seconds=end.cpu_seconds,
        starting_seconds=end.starting_seconds,
        oom_limit_bytes=end.memory.limit_bytes if memory_error else None,
    )
    return replace(outcome, placement=placement, usage=usage)


def _decide(end: WorkerEnd) -> Outcome:
    if end.killed_for == "deadline":
        message = f"the query did not finish within its deadline of {end.timeout_seconds:g} seconds"
        details = {"phase": "run", "timeout_seconds": end.timeout_seconds}
        return Outcome(error=error_info(ErrorType.TIMEOUT, message, details))
    if end.killed_for == "shutdown":
        message = "the controller stopped while the query was running"
        return Outcome(error=error_info(ErrorType.INTERNAL, message, retryable=True))
    if end.killed_for == "zygote_lost":
        message = "the worker's zygote died while the query was running"
        details = {"signal": "SIGKILL", "stderr_tail": log_excerpt(end.stderr_tail)}
        return Outcome(error=error_info(ErrorType.CRASH, message, details, retryable=True))
    if _out_of_memory(end):
        return Outcome(error=_memory_error(end))
    if end.envelope_oversized:
        message = "the worker's result is larger than the local launcher accepts"
        return Outcome(error=error_info(ErrorType.INTERNAL, message, retryable=False))
    try:
        outcome = envelope_outcome(end.envelope_line, exit_code=end.returncode, death=_death(end))
    except EnvelopeError as exc:
        problem = str(exc)
    else:
        if outcome.error is not None and outcome.error["error_type"] == ErrorType.MEMORY:
            outcome.error["details"] = {**outcome.error["details"], "enforcement": end.memory.enforcement}
        return outcome
    if end.returncode in PROTOCOL_ERROR_CODES:
        info = termination_error(end.termination_message)
        if info is not None:
            return Outcome(error=info)
    details = {
        **_exit_details(end.returncode),
        "envelope_problem": problem,
        "stderr_tail": log_excerpt(end.stderr_tail),
    }
    message = f"the worker {_death(end)} without a usable result"
    return Outcome(error=error_info(ErrorType.CRASH, message, details))


def _out_of_memory(end: WorkerEnd) -> bool:
    evidence = end.memory
    if evidence.enforcement == "cgroup":
        killed = end.returncode == -signal.SIGKILL
        return evidence.oom_kills > 0 or (killed and evidence.failcnt > 0)
    died_without_result = end.returncode not in (0, *PROTOCOL_ERROR_CODES)
    return died_without_result and any(marker in end.stderr_tail for marker in ALLOCATION_FAILURE_MARKERS)


def _memory_error(end: WorkerEnd) -> ErrorInfo:
    evidence = end.memory
    details: dict[str, Any] = {
        "limit_bytes": evidence.limit_bytes,
        "enforcement": evidence.enforcement,
        **_exit_details(end.returncode),
    }
    if evidence.peak_bytes is not None:
        details["peak_bytes"] = evidence.peak_bytes
    mib = evidence.limit_bytes / 2**20
    return error_info(ErrorType.MEMORY, f"the query ran out of memory (limit {mib:g} MiB)", details)


def _exit_details(returncode: int) -> dict[str, Any]:
    if returncode < 0:
        return {"signal": signal_name(-returncode)}
    return {"exit_code": returncode}


def _death(end: WorkerEnd) -> str:
    if end.returncode < 0:
        return f"was killed by {signal_name(-end.returncode)}"
    return f"exited with code {end.returncode}"
