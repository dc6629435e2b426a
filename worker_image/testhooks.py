"""The request's `debug` section: misbehaviour on demand, for testing launchers and the controller.

Honoured only when ``PODQ_ENABLE_TEST_HOOKS=1`` is in the worker's environment; otherwise a request
carrying one is a `validation` error. Applied before the operation, in this order: ``stdout_noise``
(printed to stdout), ``allocate_mb`` (allocated and touched, held until the worker exits),
``sleep_seconds``, ``snoop`` (a list of strings: the query fails as ``validation`` if any of them is in
this process's environment or in any other process's /proc environ or command line; for isolation tests),
then ``crash`` ("exit": `os._exit(1)`, "segv": a real SIGSEGV, "abort": SIGABRT).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Mapping
from typing import Any

from worker_image.protocol import REQUEST_ENV, TEST_HOOKS_ENV, ErrorType, WorkerError

_CRASHES = ("exit", "segv", "abort")
_KNOWN = frozenset({"crash", "sleep_seconds", "allocate_mb", "stdout_noise", "snoop"})
_MIB = 1 << 20


def apply_test_hooks(debug: Mapping[str, Any] | None, environ: Mapping[str, str]) -> bytearray | None:
    """Runs the hooks (which may not return); the allocation they made, if any, for the caller to hold."""
    if debug is None:
        return None
    if environ.get(TEST_HOOKS_ENV) != "1":
        raise _invalid(
            f"the request has a 'debug' section but test hooks are disabled ({TEST_HOOKS_ENV} is not 1)"
        )
    _check(debug)
    if "stdout_noise" in debug:
        print(debug["stdout_noise"], flush=True)
    ballast = _allocate(debug["allocate_mb"]) if "allocate_mb" in debug else None
    if "sleep_seconds" in debug:
        time.sleep(debug["sleep_seconds"])  # sleep-ok: the hook's whole purpose (deadline and cancel tests)
    if "snoop" in debug:
        _snoop(debug["snoop"], environ)
    if "crash" in debug:
        _crash(debug["crash"])
    return ballast


def _check(debug: Mapping[str, Any]) -> None:
    unknown = sorted(set(debug) - _KNOWN)
    if unknown:
        raise _invalid(f"unknown debug hooks: {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    if "crash" in debug and debug["crash"] not in _CRASHES:
        raise _invalid(f"debug.crash must be one of {', '.join(_CRASHES)}")
    if "sleep_seconds" in debug and not _is_number(debug["sleep_seconds"], minimum=0):
        raise _invalid("debug.sleep_seconds must be a number >= 0")
    if "allocate_mb" in debug and not (
        _is_number(debug["allocate_mb"], minimum=1) and isinstance(debug["allocate_mb"], int)
    ):
        raise _invalid("debug.allocate_mb must be an integer >= 1")
    if "stdout_noise" in debug and not isinstance(debug["stdout_noise"], str):
        raise _invalid("debug.stdout_noise must be a string")
    snoop = debug.get("snoop", [])
    if not isinstance(snoop, list) or not all(isinstance(item, str) and item for item in snoop):
        raise _invalid("debug.snoop must be a list of non-empty strings")


def _allocate(megabytes: int) -> bytearray:
    ballast = bytearray(megabytes * _MIB)
    # A fresh allocation is untouched zero pages; write one byte per page so it is really resident.
    ballast[:: mmap.PAGESIZE] = b"\x01" * len(range(0, len(ballast), mmap.PAGESIZE))
    return ballast


def _snoop(secrets: list[str], environ: Mapping[str, str]) -> None:
    """Fails if this process can see any of `secrets` anywhere but in its own request."""
    places = {f"own environment {name}": value for name, value in environ.items() if name != REQUEST_ENV}
    own = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        for item in ("environ", "cmdline"):
            try:
                with open(f"/proc/{entry}/{item}", "rb") as handle:
                    places[f"/proc/{entry}/{item}"] = handle.read().decode(errors="replace")
            except OSError:
                continue
    for where, text in places.items():
        for secret in secrets:
            if secret in text:
                raise _invalid(f"snoop: {secret!r} is visible in {where}")


def _crash(kind: str) -> None:
    if kind == "exit":
        os._exit(1)
    if kind == "abort":
        os.abort()
    ctypes.string_at(0)


def _is_number(value: Any, minimum: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= minimum


def _invalid(message: str) -> WorkerError:
    return WorkerError(ErrorType.VALIDATION, message)
