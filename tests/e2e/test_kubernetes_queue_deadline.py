"""The queue deadline on a real cluster: a pod still Pending (too large to schedule now) when its query's
`queue_timeout_seconds` passes is deleted, and the query fails as `timeout` in phase `queue`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.testing.process import wait_finished
from tests.support.api import run, sleeper, submit
from tests.support.e2e import KUBECTL_POLL_SECONDS, KubeControllers, StartKubeController
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

Controllers = tuple[KubeControllers, StartKubeController]


def test_a_pod_pending_past_its_queue_deadline_is_deleted_and_the_query_fails_as_a_queue_timeout(
    kube_controllers: Controllers, ballast: Callable[[str], int]
) -> None:
    controllers, start = kube_controllers
    free_millicores = ballast(controllers.namespace)
    # The unschedulable wait is far longer than the queue deadline: the queue deadline must decide.
    with start(unschedulable_after_seconds=600).client() as client:
        too_large_now = sleeper(5, cpu=f"{free_millicores + 100}m", memory="128Mi", queue_timeout_seconds=5)
        location = submit(client, too_large_now)
        name = f"podq-{location.rsplit('/', 1)[1]}"

        def unschedulable() -> bool:
            return any(
                condition.get("reason") == "Unschedulable"
                for pod in controllers.pods()
                if pod["metadata"]["name"] == name
                for condition in pod.get("status", {}).get("conditions") or []
            )

        wait_until(unschedulable, f"pod {name} pending, unschedulable", within=30, every=KUBECTL_POLL_SECONDS)
        record = wait_finished(client, location, timeout=60)
        wait_until(
            lambda: name not in {pod["metadata"]["name"] for pod in controllers.pods()},
            f"pod {name} deleted",
            within=30,
            every=KUBECTL_POLL_SECONDS,
        )
        # Room for a small query is left: the service goes on.
        after = run(client, {"sql": "SELECT 1 AS x", "limits": {"cpu": "100m", "memory": "256Mi"}}, 120)
    assert record["status"] == "failed", record
    error = record["error"]
    assert (error["error_type"], error["retryable"]) == ("timeout", True), error
    assert error["details"]["phase"] == "queue" and error["details"]["queue_timeout_seconds"] == 5, error
    assert error["details"]["pending_reason"] == "Unschedulable", error
    assert record["placement"]["pod"] == name, record
    assert after["status"] == "succeeded" and after["result"]["rows"] == [[1]], after
