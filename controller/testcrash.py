"""Test only: `PODQ_TEST_CRASH_AT` makes the controller kill itself at a named point, as a kill -9 would.

Restart tests must die at moments no signal from outside hits reliably, such as between a worker's end and
the store's terminal write. Honoured only with `PODQ_ENABLE_TEST_HOOKS` (`app.create_app` passes the point
on only then); never set in production.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from typing import Literal, get_args

__all__ = ["CrashPoint", "crash_if", "parse_crash_at"]

log = logging.getLogger(__name__)

# before_finish: a worker has ended and its outcome is read, the store has not recorded it.
# after_finish: the store has just committed a query's terminal state.
# The kubernetes launcher's own: after_create (a pod was just created), before_log (a pod has ended, its
# log is not read yet), before_delete (an outcome is stored, its pod not deleted yet); with a warm pool,
# after_claim (a pool pod is claimed, the request not written yet), after_resize (its resize asked for, not
# waited for), mid_attach (the attach to its worker is open, the request not written) and after_attach (the
# request written and the worker's stdout read, nothing followed or stored yet).
CrashPoint = Literal[
    "before_finish",
    "after_finish",
    "after_create",
    "before_log",
    "before_delete",
    "after_claim",
    "after_resize",
    "mid_attach",
    "after_attach",
]


_reached: Counter[str] = Counter()


def parse_crash_at(text: str) -> tuple[CrashPoint, int]:
    """`point` or `point@N`: crash the Nth time the point is reached (default the first)."""
    name, _, nth = text.partition("@")
    if name not in get_args(CrashPoint):
        raise ValueError(f"unknown crash point {name!r}; one of {', '.join(get_args(CrashPoint))}")
    if nth and (not nth.isdigit() or int(nth) < 1):
        raise ValueError(f"{text!r}: the count after @ must be a positive integer")
    return name, int(nth or 1)  # type: ignore[return-value]


def crash_if(configured: str | None, point: CrashPoint) -> None:
    """SIGKILL this process if `point` is the configured crash point (the Nth time it is reached, for
    `point@N`): no handler, no cleanup runs."""
    if configured is None:
        return
    name, nth = parse_crash_at(configured)
    if name != point:
        return
    _reached[point] += 1
    if _reached[point] == nth:
        log.critical(
            "test crash point %s reached: the controller kills itself (PODQ_TEST_CRASH_AT)", configured
        )
        os.kill(os.getpid(), signal.SIGKILL)
