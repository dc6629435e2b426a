"""The API client's token bucket (controller/launchers/kube_ratelimit), on a fake clock: nothing sleeps."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.launchers.kubernetes.client.ratelimit import RateLimiter

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("qps", "burst", "schedule", "delays"),
    [
        (2, 3, [0, 0, 0, 0, 0], [0, 0, 0, 0.5, 1.0]),
        (2, 3, [0, 0, 0, 1.0, 1.0, 1.0], [0, 0, 0, 0, 0, 0.5]),
        (2, 3, [0, 100, 100, 100, 100], [0, 0, 0, 0, 0.5]),
        (5, 1, [0, 0, 0.1, 0.1], [0, 0.2, 0.3, 0.5]),
        (0.5, 2, [0, 0, 0, 0], [0, 0, 2.0, 4.0]),
    ],
    ids=["burst-then-qps", "refilled-after-a-second", "refill-capped-at-burst", "burst-of-one", "slow-qps"],
)
def test_reserve(qps: float, burst: int, schedule: list[float], delays: list[float]) -> None:
    """`schedule`: when each request arrives (seconds after the limiter was made)."""
    clock = FakeClock()
    start = clock.now
    limiter = RateLimiter(qps, burst, clock=clock)
    observed = []
    for at in schedule:
        clock.now = start + at
        observed.append(limiter.reserve())
    assert observed == pytest.approx(delays)


@given(
    qps=st.floats(0.1, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=60),
)
def test_no_window_sees_more_than_burst_plus_qps_times_its_length(
    qps: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(qps, burst, clock=clock)
    due = []
    for gap in gaps:
        clock.now += gap
        due.append(clock.now + limiter.reserve())
    assert due == sorted(due), "requests are served in arrival order"
    for first, last in itertools.combinations(range(len(due)), 2):
        assert last - first + 1 <= burst + qps * (due[last] - due[first]) + 1e-6


def test_acquire_sleeps_until_due_and_a_cancelled_waiter_returns_its_token() -> None:
    clock = FakeClock()
    slept: list[float] = []
    asleep, gate = asyncio.Event(), asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        asleep.set()
        await gate.wait()

    async def scenario() -> None:
        limiter = RateLimiter(4, 1, clock=clock, sleep=sleep)
        await limiter.acquire()  # the burst: no sleep
        assert slept == []
        waiter = asyncio.create_task(limiter.acquire())
        await asleep.wait()
        assert slept == [0.25]
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.reserve() == 0.25  # the cancelled waiter's slot, not the one after it

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("qps", "burst"), [(0, 1), (-1, 1), (1, 0)], ids=["qps-zero", "qps-negative", "burst-zero"]
)
def test_a_limit_that_would_never_admit_is_refused(qps: float, burst: int) -> None:
    with pytest.raises(ValueError, match="qps > 0 and burst >= 1"):
        RateLimiter(qps, burst)
