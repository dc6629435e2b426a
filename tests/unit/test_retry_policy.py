"""The retry decision after a failed attempt (controller/queue/retry.py): memory growth, caps, backoff."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.launchers.base import QueryLimits
from controller.queue.retry import (
    MIB,
    RETRY_ON,
    Retry,
    RetryPolicy,
    Stop,
    after_failure,
    backoff_seconds,
    format_mib,
    next_limits,
    next_memory_bytes,
    not_retried,
)
from worker_image.protocol import ErrorType, error_info

pytestmark = pytest.mark.unit

GIB = 1024 * MIB
SERVER_MAX = 4 * GIB
ON_MEMORY = RetryPolicy(max_attempts=3, on=frozenset({"memory"}), memory_factor=2.0, max_memory_bytes=GIB)


def oom(peak_bytes: int | None = None) -> dict[str, Any]:
    details = {} if peak_bytes is None else {"peak_bytes": peak_bytes}
    return dict(error_info(ErrorType.MEMORY, "the query ran out of memory", details))


def decide(policy: RetryPolicy, error: dict[str, Any], attempt: int, memory_bytes: int) -> Retry | Stop:
    return after_failure(
        policy,
        error,
        attempt=attempt,
        memory_bytes=memory_bytes,
        server_max_memory_bytes=SERVER_MAX,
        jitter=0.5,
    )


def test_memory_doubles_then_stops_at_max_memory_saying_so() -> None:
    assert decide(ON_MEMORY, oom(), 1, 256 * MIB) == Retry(512 * MIB, 0.0)
    assert decide(ON_MEMORY, oom(), 2, 512 * MIB) == Retry(GIB, 0.0)
    last = decide(ON_MEMORY, oom(), 2, GIB)
    assert isinstance(last, Stop) and last.reason is not None
    assert "no more memory was allowed" in last.reason and "1024Mi" in last.reason


def test_a_factor_that_overshoots_max_memory_is_capped_at_it() -> None:
    assert decide(ON_MEMORY, oom(), 1, 768 * MIB) == Retry(GIB, 0.0)


def test_the_peak_with_a_margin_wins_over_the_factor_when_larger() -> None:
    policy = RetryPolicy(3, frozenset({"memory"}), 1.1, 2 * GIB)
    # 256Mi * 1.1 = 281.6Mi; a peak of 300Mi * 1.25 = 375Mi.
    assert decide(policy, oom(peak_bytes=300 * MIB), 1, 256 * MIB) == Retry(375 * MIB, 0.0)


def test_the_server_maximum_caps_a_policy_written_under_a_larger_one() -> None:
    policy = RetryPolicy(3, frozenset({"memory"}), 4.0, 16 * GIB)
    assert decide(policy, oom(), 1, 2 * GIB) == Retry(SERVER_MAX, 0.0)


def test_no_attempt_past_max_attempts_and_the_reason_says_so() -> None:
    stop = decide(ON_MEMORY, oom(), 3, 256 * MIB)
    assert isinstance(stop, Stop) and stop.reason is not None and "3 attempts" in stop.reason


@pytest.mark.parametrize("error_type", [t for t in ErrorType if t not in RETRY_ON])
def test_error_types_outside_the_policy_stop_without_a_reason(error_type: ErrorType) -> None:
    every = RetryPolicy(5, frozenset(RETRY_ON), 2.0, GIB)
    assert decide(every, dict(error_info(error_type, "x", retryable=True)), 1, 256 * MIB) == Stop(None)


def test_a_type_the_policy_does_not_name_is_not_retried() -> None:
    assert decide(ON_MEMORY, dict(error_info(ErrorType.NETWORK, "refused")), 1, 256 * MIB) == Stop(None)


def test_other_types_back_off_with_the_same_memory() -> None:
    policy = RetryPolicy(4, frozenset({"network", "crash"}), 2.0, GIB)
    assert decide(policy, dict(error_info(ErrorType.NETWORK, "refused")), 1, 256 * MIB) == Retry(
        256 * MIB, backoff_seconds(1, 0.5)
    )
    assert decide(policy, dict(error_info(ErrorType.CRASH, "segv")), 3, 256 * MIB) == Retry(
        256 * MIB, backoff_seconds(3, 0.5)
    )


def test_an_error_that_says_a_retry_cannot_help_is_not_retried() -> None:
    policy = RetryPolicy(4, frozenset({"evicted"}), 2.0, GIB)
    own_scratch = dict(error_info(ErrorType.EVICTED, "ephemeral storage", retryable=False))
    assert decide(policy, own_scratch, 1, 256 * MIB) == Stop(None)


def test_the_policy_survives_the_store() -> None:
    assert RetryPolicy.from_stored(ON_MEMORY.stored()) == ON_MEMORY


@given(
    limit_mib=st.integers(1, 8192),
    factor=st.floats(1.01, 16, allow_nan=False),
    peak=st.none() | st.integers(0, 64 * GIB),
    cap_mib=st.integers(1, 8192),
    attempt=st.integers(1, 10),
)
def test_a_memory_retry_always_gets_more_memory_within_every_cap(
    limit_mib: int, factor: float, peak: int | None, cap_mib: int, attempt: int
) -> None:
    policy = RetryPolicy(10, frozenset({"memory"}), factor, cap_mib * MIB)
    decided = decide(policy, oom(peak), attempt, limit_mib * MIB)
    if isinstance(decided, Retry):
        assert limit_mib * MIB < decided.memory_bytes <= min(cap_mib * MIB, SERVER_MAX)
        assert decided.memory_bytes % MIB == 0 and decided.delay_seconds == 0
        grown = next_memory_bytes(limit_mib * MIB, factor, peak)
        assert decided.memory_bytes == min(grown, cap_mib * MIB, SERVER_MAX)
    else:
        assert decided.reason is not None
        assert attempt >= 10 or min(cap_mib * MIB, SERVER_MAX) <= limit_mib * MIB


@given(
    limit=st.integers(1, 64 * GIB),
    factor=st.floats(1.01, 16, allow_nan=False),
    peak=st.none() | st.integers(0, 64 * GIB),
)
def test_the_next_limit_covers_the_factor_and_the_peak_margin_and_rounds_up_to_a_mib(
    limit: int, factor: float, peak: int | None
) -> None:
    grown = next_memory_bytes(limit, factor, peak)
    assert grown % MIB == 0
    assert grown >= limit * factor and grown >= (peak or 0) * 1.25
    assert grown - MIB < max(limit * factor, (peak or 0) * 1.25)


@given(attempt=st.integers(1, 10_000), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_grows_from_one_second_to_a_minute_within_its_upper_half(attempt: int, jitter: float) -> None:
    ceiling = min(2.0 ** min(attempt - 1, 32), 60.0)
    assert ceiling / 2 <= backoff_seconds(attempt, jitter) <= ceiling


def test_format_mib_rounds_up() -> None:
    assert (format_mib(GIB), format_mib(GIB + 1)) == ("1024Mi", "1025Mi")


def test_the_error_of_a_query_not_retried_keeps_its_type_and_says_why() -> None:
    error = error_info(ErrorType.MEMORY, "the query ran out of memory", {"peak_bytes": 5}, retryable=True)
    reason = "no more memory was allowed (max_memory 1024Mi)"
    assert not_retried(error, reason) == {
        "error_type": "memory",
        "message": f"the query ran out of memory; {reason}",
        "details": {"peak_bytes": 5, "not_retried": reason},
        "retryable": True,
    }
    assert error["details"] == {"peak_bytes": 5}, "the attempt's own error is left as it was"


def test_the_next_attempt_gets_the_grown_memory_written_in_mib_and_nothing_else_changes() -> None:
    limits = QueryLimits(
        cpu="500m",
        memory="256Mi",
        timeout_seconds=30,
        cpu_millicores=500,
        memory_bytes=256 * MIB,
        queue_timeout_seconds=60,
    )
    grown = next_limits(limits, Retry(768 * MIB, 0.0))
    assert grown == QueryLimits(
        cpu="500m",
        memory="768Mi",
        timeout_seconds=30,
        cpu_millicores=500,
        memory_bytes=768 * MIB,
        queue_timeout_seconds=60,
    )
    assert next_limits(limits, Retry(256 * MIB, 2.0)) is limits
