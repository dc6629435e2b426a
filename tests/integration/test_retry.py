"""The retry policy end to end on the local launcher: a real controller, real workers under a real memory
cap, each store. A query that holds 600 MiB (the worker's `allocate_mb` hook) fails at 256Mi as `memory`,
runs again with more until it fits, and its record lists every attempt; without room it stops at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.testing.process import ControllerProcess
from tests.support.api import run

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]
NEEDS_600_MIB = {"sql": "SELECT 1 AS x", "debug": {"allocate_mb": 600}, "limits": {"memory": "256Mi"}}
MIB = 2**20


def test_out_of_memory_runs_again_with_more_memory_until_it_fits(
    start_controller: StartController, store_settings: dict[str, str]
) -> None:
    controller = start_controller(**store_settings)
    retry = {"on": ["memory"], "memory_factor": 2, "max_memory": "1Gi"}
    with controller.client() as client:
        record = run(client, {**NEEDS_600_MIB, "retry": retry}, timeout=120)
        metrics = client.get("/metrics").text

    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == [[1]] and record["error"] is None
    attempts = record["attempts"]
    assert [(a["number"], a["status"], a["limits"]["memory"]) for a in attempts] == [
        (1, "failed", "256Mi"),
        (2, "failed", "512Mi"),
        (3, "succeeded", "1024Mi"),
    ]
    for failed in attempts[:2]:
        assert failed["error"]["error_type"] == "memory", failed
        assert failed["placement"]["kind"] == "local" and failed["placement"]["pid"] > 0
        assert failed["started_at"] <= failed["finished_at"]
    assert attempts[0]["error"]["details"]["limit_bytes"] == 256 * MIB
    assert attempts[2]["error"] is None and attempts[2]["placement"] == record["placement"]
    assert_usage(attempts, record)
    assert_observed(metrics, attempts)
    assert record["limits"]["memory"] == "1024Mi", "the record's limits are the last attempt's"
    assert record["retry"] == {
        "max_attempts": 3,
        "on": ["memory"],
        "memory_factor": 2,
        "max_memory_bytes": 1024 * MIB,
    }


def assert_usage(attempts: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Each attempt's usage: the OOM'd ones reached their limit, the last held its 600 MiB below its own."""
    for attempt in attempts:
        usage, limit = attempt["usage"], attempt["error"] and attempt["error"]["details"]["limit_bytes"]
        assert usage["peak_memory_source"] in ("worker", "cgroup"), usage
        assert usage["cpu_seconds"] > 0 and usage["phases"]["starting"] >= 0, usage
        assert usage["phases"]["queued"] >= 0 and usage["datasets"] == [], usage
        if attempt["status"] == "failed":
            # Stopped by its own watch within 1/8 of its limit, or killed by the kernel at it.
            assert 0.8 * limit <= usage["peak_memory_bytes"] <= 1.05 * limit, usage
    last = attempts[-1]["usage"]
    assert 600 * MIB <= last["peak_memory_bytes"] < 1024 * MIB, last
    assert last["phases"]["execute"] is not None and last["phases"]["encode"] is not None, last
    assert record["usage"] == last
    # A retry waits from the previous attempt's end: its backoff.
    assert attempts[1]["usage"]["phases"]["queued"] == pytest.approx(
        attempts[1]["started_at"] - attempts[0]["finished_at"]
    )


def assert_observed(metrics: str, attempts: list[dict[str, Any]]) -> None:
    """/metrics observed each attempt's peak memory ratio and phases."""
    samples = {
        (sample.name, sample.labels.get("phase")): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    assert samples[("podq_attempt_peak_memory_ratio_count", None)] == len(attempts)
    for phase in ("starting", "execute"):
        known = [a for a in attempts if a["usage"]["phases"][phase] is not None]
        assert samples[("podq_attempt_phase_seconds_count", phase)] == len(known), phase
    assert samples[("podq_attempt_phase_seconds_count", "queued")] == 1, "first attempts only"


def test_without_room_for_more_memory_it_fails_after_one_attempt_saying_so(
    start_controller: StartController,
) -> None:
    controller = start_controller()
    retry = {"on": ["memory"], "memory_factor": 2, "max_memory": "256Mi"}
    with controller.client() as client:
        record = run(client, {**NEEDS_600_MIB, "retry": retry})

    assert record["status"] == "failed", record
    (attempt,) = record["attempts"]
    assert attempt["status"] == "failed" and attempt["limits"]["memory"] == "256Mi"
    error = record["error"]
    assert error["error_type"] == "memory"
    assert "not retried: no more memory was allowed" in error["message"], error
    assert error["details"]["not_retried"] in error["message"]


def test_a_crash_is_retried_after_a_backoff_until_the_attempts_run_out(
    start_controller: StartController,
) -> None:
    controller = start_controller()
    with controller.client() as client:
        record = run(client, {"sql": "SELECT 1", "debug": {"crash": "exit"}, "retry": {"max_attempts": 2}})

    assert record["status"] == "failed", record
    first, second = record["attempts"]
    assert [first["status"], second["status"]] == ["failed", "failed"]
    assert first["error"]["error_type"] == second["error"]["error_type"] == "crash"
    assert first["limits"] == second["limits"] == record["limits"], "only memory grows"
    # The backoff after the first attempt: between half and all of a second.
    assert second["started_at"] - first["finished_at"] >= 0.5
    assert record["error"]["message"].endswith("not retried: all 2 attempts of retry.max_attempts were used")


def test_a_query_without_a_retry_policy_is_not_retried(start_controller: StartController) -> None:
    controller = start_controller()
    with controller.client() as client:
        record = run(client, NEEDS_600_MIB)
    assert (record["status"], record["error"]["error_type"], record["retry"]) == ("failed", "memory", None)
    assert len(record["attempts"]) == 1 and "not_retried" not in record["error"]["details"]


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"memory_factor": 1}, "retry.memory_factor"),
        ({"memory_factor": 0.5}, "retry.memory_factor"),
        ({"max_memory": "128Mi"}, "retry.max_memory"),
        ({"max_memory": "64Gi"}, "retry.max_memory"),
        ({"max_memory": "lots"}, "retry.max_memory"),
        ({"on": ["sql"]}, "retry.on.0"),
        ({"on": ["memory", "novel"]}, "retry.on.1"),
        ({"max_attempts": 6}, "retry.max_attempts"),
        ({"max_attempts": 0}, "retry.max_attempts"),
        ({"backoff": 2}, "retry.backoff"),
    ],
)
def test_a_bad_retry_policy_is_refused_naming_the_field(
    running_controller: ControllerProcess, retry: dict[str, Any], field: str
) -> None:
    with httpx.Client(base_url=running_controller.url) as client:
        refused = client.post("/v1/queries", json={**NEEDS_600_MIB, "retry": retry})
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["error_type"] == "validation"
    assert [error["field"] for error in body["details"]["errors"]] == [field], body
