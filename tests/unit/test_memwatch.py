"""The worker's memory watch (worker_image/memwatch.py): where it stops a query, and what it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_image.memwatch import (
    MemoryWatch,
    headroom,
    memory_limit,
    parse_limit,
    rss_anon_bytes,
    threshold,
)
from worker_image.protocol import MEMORY_LIMIT_ENV

pytestmark = pytest.mark.unit

MiB = 2**20
GiB = 2**30

# A real /proc/self/status of a worker (Linux 6.x), cut to the lines around the memory counters.
STATUS = """Name:\tpython3
Umask:\t0022
State:\tR (running)
Pid:\t4242
VmPeak:\t 1843212 kB
VmSize:\t 1843212 kB
VmHWM:\t  517364 kB
VmRSS:\t  517364 kB
RssAnon:\t  493336 kB
RssFile:\t   24028 kB
RssShmem:\t       0 kB
VmData:\t  611756 kB
Threads:\t3
"""


@pytest.mark.parametrize(
    ("limit", "stop_at"),
    [
        (128 * MiB, 112 * MiB),  # 1/8: the floor of 32 MiB would leave only 75%
        (200 * MiB, 175 * MiB),  # 1/8 again
        (384 * MiB, 352 * MiB),  # the 32 MiB floor, more than 1/16
        (512 * MiB, 480 * MiB),  # 32 MiB is also 1/16
        (1 * GiB, 960 * MiB),  # 1/16
        (4 * GiB, 3840 * MiB),  # 1/16
    ],
    ids=["128Mi", "200Mi", "384Mi", "512Mi", "1Gi", "4Gi"],
)
def test_the_threshold_by_limit(limit: int, stop_at: int) -> None:
    assert threshold(limit) == stop_at


@given(st.integers(min_value=1, max_value=2**50))
def test_a_query_peaking_at_80_percent_of_its_limit_is_never_stopped(limit: int) -> None:
    assert threshold(limit) * 5 >= limit * 4
    assert threshold(limit) <= limit


@given(st.integers(min_value=512 * MiB, max_value=2**50))
def test_the_headroom_is_at_least_32_mib_once_the_limit_allows_it(limit: int) -> None:
    assert headroom(limit) >= 32 * MiB


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("536870912", 536870912),
        (" 536870912\n", 536870912),
        (None, None),
        ("", None),
        ("0", None),
        ("-1", None),
        ("512Mi", None),
        ("1e9", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits: str.isdigit, not bytes
    ],
)
def test_the_limit_from_the_environment(text: str | None, limit: int | None) -> None:
    assert parse_limit(text) == limit


@given(st.text())
def test_any_limit_text_is_a_positive_number_or_no_watch(text: str) -> None:
    limit = parse_limit(text)
    assert limit is None or (limit > 0 and str(limit) == text.strip().lstrip("0"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (STATUS, 493336 * 1024),
        ("RssAnon:\t       0 kB\n", 0),
        ("VmRSS:\t 100 kB\n", None),  # no RssAnon line (a kernel before 4.5)
        ("RssAnon:\t 12 MB\n", None),
        ("RssAnon:\n", None),
        ("", None),
    ],
    ids=["a worker", "zero", "absent", "another unit", "no value", "empty"],
)
def test_rss_anon_from_status(text: str, expected: int | None) -> None:
    assert rss_anon_bytes(text) == expected


@given(st.lists(st.text(st.characters(exclude_characters="\n\r")), max_size=20), st.integers(0, 2**40))
def test_rss_anon_is_found_among_any_other_lines(lines: list[str], kib: int) -> None:
    others = [line for line in lines if not line.startswith("RssAnon")]
    text = "\n".join([*others[:5], f"RssAnon:\t{kib:>8} kB", *others[5:]])
    assert rss_anon_bytes(text) == kib * 1024


@given(st.text())
def test_any_status_text_reads_as_bytes_or_nothing(text: str) -> None:
    value = rss_anon_bytes(text)
    assert value is None or (value >= 0 and value % 1024 == 0)


def test_the_watch_reads_this_process() -> None:
    watch = MemoryWatch(2**50)
    assert watch.over() is None
    assert watch.peak_bytes > 0


def test_the_watch_says_over_at_the_threshold(tmp_path: Path) -> None:
    status = tmp_path / "status"
    limit = 512 * MiB
    status.write_text(f"RssAnon:\t{threshold(limit) // 1024 - 1} kB\n")
    watch = MemoryWatch(limit, str(status))
    assert watch.over() is None
    status.write_text(f"RssAnon:\t{threshold(limit) // 1024} kB\n")
    assert watch.over() == threshold(limit)
    assert watch.peak_bytes == threshold(limit)


def test_no_limit_in_the_request_or_the_environment_is_no_watch() -> None:
    assert MemoryWatch.of(memory_limit({}, {})) is None
    assert MemoryWatch.of(memory_limit({}, {MEMORY_LIMIT_ENV: "nonsense"})) is None
    watch = MemoryWatch.of(memory_limit({}, {MEMORY_LIMIT_ENV: str(GiB)}))
    assert watch is not None and watch.limit_bytes == GiB


@given(
    request_bytes=st.integers(min_value=1, max_value=2**40),
    environ=st.dictionaries(st.just(MEMORY_LIMIT_ENV), st.text(max_size=12) | st.integers(1, 2**40).map(str)),
)
def test_the_requests_limit_wins_over_the_environments(request_bytes: int, environ: dict[str, str]) -> None:
    """A warm pod resized after its start still has the pool's limit in its environment."""
    assert memory_limit({"limits": {"memory_bytes": request_bytes}}, environ) == request_bytes
    assert memory_limit({}, environ) == parse_limit(environ.get(MEMORY_LIMIT_ENV))
