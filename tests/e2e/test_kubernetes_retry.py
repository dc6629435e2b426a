"""The retry policy on a real cluster: a query holding 600 MiB (the worker's `allocate_mb` hook) in a pod
limited to 256Mi fails as `memory`, and runs again in a new pod of the same name with more memory until it
fits; the failed attempts' pods are gone before the next is created, and the record lists every attempt."""

from __future__ import annotations

import pytest

from tests.support.api import run
from tests.support.e2e import KubeControllers, StartKubeController
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

Controllers = tuple[KubeControllers, StartKubeController]
MIB = 2**20
NEEDS_600_MIB = {
    "sql": "SELECT 1 AS x",
    "debug": {"allocate_mb": 600},
    "limits": {"cpu": "100m", "memory": "256Mi", "timeout_seconds": 120},
}


def test_out_of_memory_runs_again_in_a_new_pod_with_more_memory(kube_controllers: Controllers) -> None:
    controllers, start = kube_controllers
    retry = {"on": ["memory"], "memory_factor": 2, "max_memory": "1Gi"}
    # A TTL keeps a finished pod: a failed attempt's must go all the same, for the next one to be created.
    with start(pod_ttl_seconds=20).client() as client:
        record = run(client, {**NEEDS_600_MIB, "retry": retry}, timeout=300)
        kept = controllers.pods()
        no_room = run(client, {**NEEDS_600_MIB, "retry": {**retry, "max_memory": "256Mi"}}, timeout=180)
        wait_until(
            lambda: not controllers.pods(), "the kept pods deleted after their TTL", within=90, every=1
        )

    assert record["status"] == "succeeded", record
    attempts = record["attempts"]
    assert [(a["status"], a["limits"]["memory"]) for a in attempts] == [
        ("failed", "256Mi"),
        ("failed", "512Mi"),
        ("succeeded", "1024Mi"),
    ], attempts
    name = f"podq-{record['id']}"
    assert all(a["placement"]["pod"] == name for a in attempts), attempts
    assert all(a["error"]["error_type"] == "memory" for a in attempts[:2]), attempts
    assert record["result"]["rows"] == [[1]]
    # Usage: the OOM'd attempts reached their limits (stopped by the worker's own watch within 1/8 of it,
    # or OOMKilled: the limit it hit), the last held its 600 MiB below its own; each pod's start is timed.
    for attempt, limit in zip(attempts, (256 * MIB, 512 * MIB, 1024 * MIB), strict=True):
        usage = attempt["usage"]
        assert usage["phases"]["starting"] > 0 and usage["phases"]["queued"] >= 0, usage
        if attempt["status"] == "failed":
            assert 0.8 * limit <= usage["peak_memory_bytes"] <= limit, usage
            assert usage["peak_memory_source"] in ("worker", "limit"), usage
        else:
            assert 600 * MIB <= usage["peak_memory_bytes"] < limit, usage
            assert usage["peak_memory_source"] == "worker" and usage["cpu_seconds"] > 0, usage
    assert record["usage"] == attempts[-1]["usage"]
    # The pod kept for its TTL is the last attempt's.
    assert [(p["metadata"]["name"], p["metadata"]["annotations"]["podq.dev/attempt"]) for p in kept] == [
        (name, "3")
    ], kept
    assert kept[0]["spec"]["containers"][0]["resources"]["limits"]["memory"] == str(2**30)

    assert no_room["status"] == "failed", no_room
    assert len(no_room["attempts"]) == 1
    assert "not retried: no more memory was allowed" in no_room["error"]["message"], no_room
