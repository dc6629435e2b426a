"""Retry-After for a full queue: the mean of recent runs over the concurrency, in whole seconds, bounded."""

import pytest

from controller.queue.backpressure import MAX_SECONDS, MIN_SECONDS, retry_after_seconds

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("runs", "max_concurrent", "expected"),
    [
        pytest.param([], 4, MIN_SECONDS, id="no-history-is-the-minimum"),
        pytest.param([0.4, 0.6], 4, 1, id="sub-second-slots-round-up-to-1"),
        pytest.param([8.0, 8.0], 4, 2, id="a-slot-every-mean-over-concurrency"),
        pytest.param([9.0, 9.0, 9.0], 4, 3, id="rounded-up-not-down"),
        pytest.param([10.0, 30.0], 1, 20, id="mean-not-latest"),
        pytest.param([600.0], 2, MAX_SECONDS, id="capped"),
        pytest.param([0.0], 1, MIN_SECONDS, id="instant-runs-still-at-least-the-minimum"),
    ],
)
def test_retry_after(runs: list[float], max_concurrent: int, expected: int) -> None:
    assert retry_after_seconds(runs, max_concurrent) == expected
