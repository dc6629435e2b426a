"""Resizing a warm pool pod in place (PODQ_KUBE_WARM_POOL_RESIZE) on a real cluster: a query larger than
the pool's size class runs on a claimed pool pod that the kubelet resized for it, and watches its memory
against its own limit, not the pool's; a resize the node cannot hold now is given up after its deadline,
the pod deleted and the query run on a cold pod; a controller killed between the resize and the attach
leaves the query to end once, on that pod."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controller.launchers.kubernetes.pool import CLAIMED, POOL_POD_PREFIX
from controller.launchers.kubernetes.resize import RESIZE_SECONDS
from controller.quantity import parse_memory_bytes
from controller.testing.process import wait_finished
from tests.e2e.test_kubernetes_warm_pool import (
    POD_TIMEOUT,
    POOL,
    Controllers,
    pool_metrics,
    pool_pods,
    ready_pool,
    stop_and_drain,
)
from tests.support.api import submit
from tests.support.e2e import KUBECTL_POLL_SECONDS, kubectl, kubectl_json, pod_events
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

RESIZING = {**POOL, "kube_warm_pool_resize": "true"}
LARGER = "400Mi"
# More than the pool's 200Mi (its cgroup would OOM-kill it, its watch stop it), well within 400Mi's.
NEEDS_MiB = 250


def worker_resources(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker container's resources: asked for (spec) and configured now (status)."""
    [spec] = pod["spec"]["containers"]
    [status] = pod["status"].get("containerStatuses") or [{}]
    return spec["resources"], status.get("resources") or {}


def memory_of(resources: dict[str, Any]) -> tuple[int, int]:
    return (
        parse_memory_bytes(str(resources.get("requests", {}).get("memory", "0"))),
        parse_memory_bytes(str(resources.get("limits", {}).get("memory", "0"))),
    )


def test_a_larger_query_runs_on_a_pool_pod_resized_in_place_at_its_own_memory_limit(
    kube_controllers: Controllers,
) -> None:
    controllers, start = kube_controllers
    controller = start(**RESIZING)
    larger = parse_memory_bytes(LARGER)
    body = {
        "sql": "SELECT 1 AS one",
        "limits": {"memory": LARGER},
        "debug": {"allocate_mb": NEEDS_MiB, "sleep_seconds": 3},
    }
    with controller.client() as client:
        idle = ready_pool(controllers)
        location = submit(client, body)

        def resized() -> dict[str, Any] | None:
            for pod in pool_pods(controllers, CLAIMED).values():
                if memory_of(worker_resources(pod)[1]) == (larger, larger):
                    return pod
            return None

        pod = wait_until(
            resized, "a claimed pool pod resized", within=POD_TIMEOUT, every=KUBECTL_POLL_SECONDS
        )
        record = wait_finished(client, location, timeout=POD_TIMEOUT)
        metrics = pool_metrics(client)
    asked, configured = worker_resources(pod)
    assert memory_of(asked) == (larger, larger), asked
    assert asked["requests"]["cpu"] == asked["limits"]["cpu"] == configured["limits"]["cpu"], (
        asked,
        configured,
    )
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == [[1]], record
    assert record["placement"]["pod"] == pod["metadata"]["name"], record["placement"]
    assert record["placement"]["pod"] in idle, (record["placement"], sorted(idle))
    assert (
        record["usage"]["peak_memory_bytes"] >= NEEDS_MiB * 2**20 > parse_memory_bytes(POOL["default_memory"])
    )
    assert metrics[("podq_warm_pool_claims_total", "")] == 1, metrics
    assert metrics[("podq_warm_pool_misses_total", "size")] == 0, metrics
    assert metrics[("podq_warm_pool_misses_total", "resize_refused")] == 0, metrics
    claimed = [
        e for e in pod_events(controllers.namespace, pod["metadata"]["name"]) if e["reason"] == "QueryClaimed"
    ]
    assert len(claimed) == 1 and "resized to" in claimed[0]["message"], claimed
    stop_and_drain(controllers, controller)


def test_a_query_asking_for_less_than_the_class_starts_cold_even_with_resizing(
    kube_controllers: Controllers,
) -> None:
    controllers, start = kube_controllers
    controller = start(**RESIZING)
    with controller.client() as client:
        idle = ready_pool(controllers)
        record = wait_finished(
            client, submit(client, {"sql": "SELECT 1 AS one", "limits": {"memory": "128Mi"}}), POD_TIMEOUT
        )
        metrics = pool_metrics(client)
    assert record["result"]["rows"] == [[1]], record
    assert record["placement"]["pod"] == f"podq-{record['id']}", record["placement"]
    assert metrics[("podq_warm_pool_misses_total", "size")] == 1, metrics
    assert set(idle) <= set(pool_pods(controllers, "idle"))
    stop_and_drain(controllers, controller)


def delete_ballast(namespace: str) -> None:
    names = [
        pod["metadata"]["name"]
        for pod in kubectl_json("get", "pods", "-n", namespace)["items"]
        if pod["metadata"]["name"].startswith("ballast-")
    ]
    kubectl("delete", "pods", "-n", namespace, "--grace-period=0", "--wait=false", *names)


def test_a_resize_the_node_cannot_hold_now_is_given_up_and_the_query_runs_cold(
    kube_controllers: Controllers, ballast: Callable[[str], int]
) -> None:
    """The node's CPU filled but 200m: raising a 250m pool pod to 500m is deferred by the kubelet, so after
    RESIZE_SECONDS the pod is deleted and the query starts a cold pod, which runs once there is room."""
    controllers, start = kube_controllers
    controller = start(**RESIZING)
    with controller.client() as client:
        ready_pool(controllers)
        free = ballast(controllers.namespace)
        assert free < 250, free
        location = submit(client, {"sql": "SELECT 1 AS one", "limits": {"cpu": "500m"}})
        wait_until(
            lambda: pool_metrics(client)[("podq_warm_pool_misses_total", "resize_refused")] == 1,
            "the resize given up",
            within=RESIZE_SECONDS + POD_TIMEOUT,
            every=KUBECTL_POLL_SECONDS,
        )
        query_id = location.rsplit("/", 1)[1]
        assert client.get(location).json()["status"] == "running"
        delete_ballast(controllers.namespace)
        record = wait_finished(client, location, timeout=POD_TIMEOUT)
        metrics = pool_metrics(client)
    assert record["status"] == "succeeded", record
    assert record["placement"]["pod"] == f"podq-{query_id}", record["placement"]
    assert metrics[("podq_warm_pool_claims_total", "")] == 1, metrics
    refused = [
        event
        for event in kubectl_json("get", "events", "-n", controllers.namespace)["items"]
        if event["reason"] == "QueryResizeRefused"
    ]
    assert len(refused) == 1, refused
    pool_pod = refused[0]["involvedObject"]["name"]
    assert pool_pod.startswith(POOL_POD_PREFIX) and query_id in refused[0]["message"], refused
    assert "PodResizePending" in refused[0]["message"], refused
    wait_until(
        lambda: pool_pod not in {pod["metadata"]["name"] for pod in controllers.pods()},
        "the pool pod given up deleted",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )
    stop_and_drain(controllers, controller)


def test_a_crash_after_the_resize_ends_the_query_once_on_its_resized_pool_pod(
    kube_controllers: Controllers,
) -> None:
    """The controller dies once the resize is asked for: the next one adopts the claimed pod, waits for the
    resize it finds asked for, writes the request, and the query ends there, at its own limit."""
    controllers, start = kube_controllers
    first = start(**RESIZING, test_crash_at="after_resize")
    ready_pool(controllers)
    body = {"sql": "SELECT 1 AS one", "limits": {"memory": LARGER}, "debug": {"allocate_mb": NEEDS_MiB}}
    with first.client() as client:
        location = submit(client, body)
    assert first.process is not None
    first.process.wait(timeout=POD_TIMEOUT)
    assert "test crash point after_resize" in first.log(), first.log()
    claimed = pool_pods(controllers, CLAIMED)
    assert len(claimed) == 1, sorted(claimed)
    second = start(**RESIZING)
    with second.client() as client:
        record = wait_finished(client, location, timeout=POD_TIMEOUT)
    assert record["status"] == "succeeded", record
    assert [attempt["status"] for attempt in record["attempts"]] == ["interrupted", "succeeded"], record
    assert list(claimed) == [record["placement"]["pod"]], (record["placement"], sorted(claimed))
    assert not pod_events(controllers.namespace, f"podq-{record['id']}"), "a cold pod was started too"
    stop_and_drain(controllers, second)
