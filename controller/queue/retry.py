"""A query's retry policy and what it decides after a failed attempt (pure: the caller brings the jitter).

The policy (`retry` in the request, its defaults in settings) says how many attempts a query may have in
all, on which error types it is tried again, and how its memory grows on `memory`: the next attempt gets
max(limit * memory_factor, observed peak * 1.25), rounded up to a whole MiB and capped at the policy's
`max_memory` and the server's maximum. A memory retry that cannot get more memory does not happen, and the
error says so. The other error types are tried again after an exponential backoff with jitter, and only
while the error itself says a retry may help (an eviction for the pod's own scratch use does not).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from controller.launchers.base import QueryLimits
from controller.models import RETRY_TYPES
from worker_image.protocol import ErrorInfo, ErrorType

RETRY_ON: frozenset[str] = frozenset(RETRY_TYPES)
# A peak seen just before the kill is a floor, not the need: leave a quarter on top.
PEAK_MARGIN = 1.25
MIB = 2**20
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    on: frozenset[str]
    memory_factor: float
    max_memory_bytes: int

    def stored(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "on": sorted(self.on),
            "memory_factor": self.memory_factor,
            "max_memory_bytes": self.max_memory_bytes,
        }

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> RetryPolicy:
        return cls(
            max_attempts=stored["max_attempts"],
            on=frozenset(stored["on"]),
            memory_factor=stored["memory_factor"],
            max_memory_bytes=stored["max_memory_bytes"],
        )


@dataclass(frozen=True)
class Retry:
    """Run the query again with `memory_bytes` (the same limit unless it grew), after `delay_seconds`."""

    memory_bytes: int
    delay_seconds: float


@dataclass(frozen=True)
class Stop:
    """No other attempt; `reason` says why one that the policy covers did not happen (else None)."""

    reason: str | None


def after_failure(
    policy: RetryPolicy,
    error: Mapping[str, Any],
    *,
    attempt: int,
    memory_bytes: int,
    server_max_memory_bytes: int,
    jitter: float,
) -> Retry | Stop:
    """What follows attempt number `attempt` (from 1), which ran with `memory_bytes` and failed with
    `error`; `jitter` in [0, 1) spreads the backoff."""
    error_type = error.get("error_type")
    if error_type not in policy.on:
        return Stop(None)
    if error_type != ErrorType.MEMORY and not error.get("retryable"):
        return Stop(None)
    if attempt >= policy.max_attempts:
        return Stop(f"not retried: all {policy.max_attempts} attempts of retry.max_attempts were used")
    if error_type != ErrorType.MEMORY:
        return Retry(memory_bytes, backoff_seconds(attempt, jitter))
    cap = min(policy.max_memory_bytes, server_max_memory_bytes)
    grown = min(next_memory_bytes(memory_bytes, policy.memory_factor, _peak(error)), cap)
    if grown <= memory_bytes:
        return Stop(
            f"not retried: no more memory was allowed (the attempt had {format_mib(memory_bytes)}, "
            f"retry.max_memory and the server's maximum allow {format_mib(cap)})"
        )
    return Retry(grown, 0.0)


def next_limits(limits: QueryLimits, retry: Retry) -> QueryLimits:
    """The limits of the attempt `retry` starts: the memory it grew to, written in MiB."""
    if retry.memory_bytes == limits.memory_bytes:
        return limits
    return replace(limits, memory=format_mib(retry.memory_bytes), memory_bytes=retry.memory_bytes)


def not_retried(error: ErrorInfo, reason: str) -> ErrorInfo:
    """The last attempt's error, saying why no other attempt followed."""
    return ErrorInfo(
        error_type=error["error_type"],
        message=f"{error['message']}; {reason}",
        details={**error["details"], "not_retried": reason},
        retryable=error["retryable"],
    )


def next_memory_bytes(limit_bytes: int, factor: float, peak_bytes: int | None) -> int:
    """max(limit * factor, peak * 1.25), rounded up to a whole MiB."""
    wanted = max(limit_bytes * factor, (peak_bytes or 0) * PEAK_MARGIN)
    return math.ceil(wanted / MIB) * MIB


def backoff_seconds(attempt: int, jitter: float) -> float:
    """Exponential from `BACKOFF_FIRST_SECONDS`, capped, and spread over its upper half by `jitter`."""
    ceiling = min(BACKOFF_FIRST_SECONDS * 2.0 ** min(attempt - 1, 32), BACKOFF_MAX_SECONDS)
    return ceiling * (0.5 + jitter / 2)


def format_mib(memory_bytes: int) -> str:
    """A byte count as a Kubernetes quantity in whole MiB, rounded up ("768Mi")."""
    return f"{math.ceil(memory_bytes / MIB)}Mi"


def _peak(error: Mapping[str, Any]) -> int | None:
    peak = (error.get("details") or {}).get("peak_bytes")
    return peak if isinstance(peak, int) else None
