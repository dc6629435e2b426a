"""An attempt's usage: the worker's report checked (controller/launchers/usage.py), completed by the
launcher's figures, and what the worker measures of itself (worker_image/usage.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.launchers.base import Outcome
from controller.launchers.usage import PHASES, empty, from_worker, memory_ratio, settle
from controller.launchers.worker_io import envelope_outcome
from worker_image.protocol import EXIT_USER_ERROR, ErrorType, encode_envelope, error_info
from worker_image.usage import Meter

pytestmark = pytest.mark.unit

MiB = 2**20

GOOD: dict[str, Any] = {
    "peak_memory_bytes": 300 * MiB,
    "cpu_seconds": 1.25,
    "phases": {"fetch": 0.5, "execute": 2.0, "encode": 0.01},
    "datasets": [{"table_name": "trips", "bytes_fetched": 4096, "rows": 10, "uncompressed_bytes": 8192}],
}


def _json(floats: st.SearchStrategy[float]) -> st.SearchStrategy[object]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )


# json.loads takes NaN and Infinity; an envelope (encode_envelope) cannot carry them.
JSON = _json(st.floats())
STRICT_JSON = _json(st.floats(allow_nan=False, allow_infinity=False))


def test_a_good_report_is_kept_whole() -> None:
    usage, dropped = from_worker(GOOD)
    assert dropped == []
    assert usage["peak_memory_bytes"] == GOOD["peak_memory_bytes"]
    assert usage["peak_memory_source"] == "worker"
    assert usage["cpu_seconds"] == GOOD["cpu_seconds"]
    assert usage["phases"] == {**dict.fromkeys(PHASES), **GOOD["phases"]}
    assert usage["datasets"] == GOOD["datasets"]


def test_an_older_worker_without_usage_gives_an_empty_usage() -> None:
    assert from_worker(None) == (empty(), [])


@pytest.mark.parametrize(
    ("field", "bad", "dropped"),
    [
        ("peak_memory_bytes", -1, "peak_memory_bytes"),
        ("peak_memory_bytes", True, "peak_memory_bytes"),
        ("peak_memory_bytes", 1.5, "peak_memory_bytes"),
        ("peak_memory_bytes", 2**63, "peak_memory_bytes"),
        ("cpu_seconds", "1", "cpu_seconds"),
        ("cpu_seconds", -0.5, "cpu_seconds"),
        ("phases", [1, 2], "phases"),
        ("phases", {"fetch": "slow"}, "phases.fetch"),
        (
            "datasets",
            [{"table_name": "1bad", "bytes_fetched": 1, "rows": 1, "uncompressed_bytes": 1}],
            "datasets",
        ),
        (
            "datasets",
            [{"table_name": "t", "bytes_fetched": -1, "rows": 1, "uncompressed_bytes": 1}],
            "datasets",
        ),
        ("datasets", {"t": 1}, "datasets"),
    ],
)
def test_a_bad_field_is_dropped_and_named_the_rest_kept(field: str, bad: object, dropped: str) -> None:
    usage, names = from_worker({**GOOD, field: bad})
    assert names == [dropped]
    kept = {key: value for key, value in GOOD.items() if key != field}
    for key in ("peak_memory_bytes", "cpu_seconds", "datasets"):
        if key in kept:
            assert usage[key] == kept[key]


@given(JSON)
def test_anything_a_worker_prints_gives_a_usage_of_the_documented_shape(value: object) -> None:
    usage, dropped = from_worker(value)
    assert set(usage) == set(empty())
    assert set(usage["phases"]) == set(PHASES)
    for key in ("peak_memory_bytes", "cgroup_peak_memory_bytes"):
        assert usage[key] is None or (type(usage[key]) is int and usage[key] >= 0)
    for seconds in [usage["cpu_seconds"], *usage["phases"].values()]:
        assert seconds is None or (type(seconds) is float and math.isfinite(seconds) and seconds >= 0)
    assert isinstance(usage["datasets"], list)
    json.dumps(usage, allow_nan=False)
    assert isinstance(dropped, list)


@given(STRICT_JSON)
def test_a_bad_usage_never_costs_a_good_result(value: object) -> None:
    line = encode_envelope({"ok": True, "result": {"rows": []}, "usage": value})
    outcome = envelope_outcome(line, exit_code=0, death="exited with code 0")
    assert outcome.result == {"rows": []}
    assert outcome.usage is not None


def test_an_error_envelope_carries_its_usage() -> None:
    info = error_info(ErrorType.SQL, "no such column")
    line = encode_envelope({"ok": False, "error": info, "usage": GOOD})
    outcome = envelope_outcome(line, exit_code=EXIT_USER_ERROR, death="exited with code 3")
    assert outcome.error == info
    assert outcome.usage is not None and outcome.usage["peak_memory_bytes"] == GOOD["peak_memory_bytes"]


def test_the_cgroup_figures_complete_the_workers() -> None:
    usage, _ = from_worker(GOOD)
    settled = settle(usage, cgroup_peak_bytes=310 * MiB, cgroup_cpu_seconds=1.5, starting_seconds=0.2)
    assert settled["peak_memory_bytes"] == GOOD["peak_memory_bytes"]
    assert settled["peak_memory_source"] == "worker"
    assert settled["cgroup_peak_memory_bytes"] == 310 * MiB
    assert settled["cpu_seconds"] == 1.5
    assert settled["phases"]["starting"] == 0.2
    assert settled["phases"]["execute"] == GOOD["phases"]["execute"]


def test_without_the_workers_word_the_cgroup_peak_stands() -> None:
    settled = settle(empty(), cgroup_peak_bytes=512 * MiB, oom_limit_bytes=512 * MiB)
    assert (settled["peak_memory_bytes"], settled["peak_memory_source"]) == (512 * MiB, "cgroup")


def test_an_oom_kill_with_nothing_measured_records_the_limit_it_hit() -> None:
    settled = settle(Outcome().usage or {}, oom_limit_bytes=256 * MiB)
    assert (settled["peak_memory_bytes"], settled["peak_memory_source"]) == (256 * MiB, "limit")


def test_a_measured_peak_is_kept_over_the_limit() -> None:
    usage, _ = from_worker({"peak_memory_bytes": 240 * MiB})
    settled = settle(usage, oom_limit_bytes=256 * MiB)
    assert (settled["peak_memory_bytes"], settled["peak_memory_source"]) == (240 * MiB, "worker")


@pytest.mark.parametrize(
    ("usage", "limit", "ratio"),
    [({"peak_memory_bytes": 128 * MiB}, 512 * MiB, 0.25), ({"peak_memory_bytes": None}, 512 * MiB, None)],
)
def test_memory_ratio(usage: dict[str, Any], limit: int, ratio: float | None) -> None:
    assert memory_ratio(usage, limit) == ratio


def test_the_meter_adds_up_its_phases_and_counts_one_still_running() -> None:
    now = [100.0]
    meter = Meter(clock=lambda: now[0])
    with meter.phase("fetch"):
        now[0] += 1.5
    with meter.phase("execute"):
        now[0] += 2.0
        # A memory stop reports from the main thread while the phase runs.
        assert meter.report()["phases"] == {"fetch": 1.5, "execute": 2.0}
        now[0] += 1.0
    meter.dataset("t", bytes_fetched=10, rows=2, uncompressed_bytes=30)
    report = meter.report(watched_peak_bytes=2**50)
    assert report["phases"] == {"fetch": 1.5, "execute": 3.0}
    assert report["datasets"] == [
        {"table_name": "t", "bytes_fetched": 10, "rows": 2, "uncompressed_bytes": 30}
    ]
    assert report["peak_memory_bytes"] == 2**50
    assert from_worker(report)[1] == []


def test_the_meter_reads_the_processs_own_high_water_mark_and_cpu() -> None:
    ballast = bytearray(64 * MiB)
    ballast[::4096] = b"x" * len(ballast[::4096])
    report = Meter().report()
    assert report["peak_memory_bytes"] >= 64 * MiB
    assert report["peak_resident_bytes"] >= report["peak_memory_bytes"], "resident counts the code too"
    assert report["cpu_seconds"] > 0
    del ballast
