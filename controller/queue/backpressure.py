"""How long a client refused because the queue is full should wait before submitting again (`Retry-After`).

A place in the queue frees when the dispatcher starts a queued query, which it does when a running one
finishes: with `max_concurrent` running, about every (mean run time / max_concurrent) seconds. The mean is
over the most recent runs, so the hint follows the load. It is rounded up to whole seconds (the header's
unit) and kept within [1, 60], so one odd slow query cannot send clients away for long; with no history
to go on it is 1 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Runs the mean is taken over: enough to smooth one outlier, few enough to follow a change of load.
RECENT_RUNS = 20
MIN_SECONDS = 1
MAX_SECONDS = 60


def retry_after_seconds(recent_run_seconds: Sequence[float], max_concurrent: int) -> int:
    if not recent_run_seconds:
        return MIN_SECONDS
    mean = sum(recent_run_seconds) / len(recent_run_seconds)
    return max(MIN_SECONDS, min(MAX_SECONDS, math.ceil(mean / max_concurrent)))
