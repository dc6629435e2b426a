"""The test-only crash point's spelling: `point` or `point@N`."""

from __future__ import annotations

import pytest

from controller.testcrash import parse_crash_at

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("before_finish", ("before_finish", 1)), ("after_create@5", ("after_create", 5))],
)
def test_a_point_and_the_time_it_is_reached(text: str, parsed: tuple[str, int]) -> None:
    assert parse_crash_at(text) == parsed


@pytest.mark.parametrize("text", ["nowhere", "after_create@0", "after_create@x", "after_create@-1", ""])
def test_unknown_points_and_bad_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"crash point|positive integer"):
        parse_crash_at(text)
