"""The warm pool on a real cluster (PODQ_KUBE_WARM_POOL_SIZE): queries claim pre-started pods, each pod
serves one query and is replaced, and the kubelet's verdicts (OOMKilled, DeadlineExceeded) on a claimed
pod are typed exactly as on a cold one. Every controller here runs at small default limits (the pool's
size class), so the pods fit the harness node next to other tests' pods."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from controller.launchers.kubernetes.pod_status import parse_time
from controller.launchers.kubernetes.pool import CLAIMED, IDLE, LABEL_WARM, POOL_POD_PREFIX
from controller.testing.process import ControllerProcess, wait_finished
from tests.support.api import run as run_to_end
from tests.support.api import sleeper, submit
from tests.support.e2e import KUBECTL_POLL_SECONDS, KubeControllers, StartKubeController, kubectl, pod_events
from tests.support.pool_series import pool_series
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

Controllers = tuple[KubeControllers, StartKubeController]
POOL = {"kube_warm_pool_size": 2, "default_cpu": "250m", "default_memory": "200Mi"}
POD_TIMEOUT = 120.0
# Between the kubelet's deadline and the record saying so (see test_kubernetes_launcher.py).
STOP_SECONDS = 3.0


def run(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    return run_to_end(client, body, timeout=POD_TIMEOUT)


def pool_pods(controllers: KubeControllers, state: str) -> dict[str, dict[str, Any]]:
    """The pool pods in this state (idle or claimed) and not being deleted, by name."""
    return {
        pod["metadata"]["name"]: pod
        for pod in controllers.pods()
        if pod["metadata"]["labels"].get(LABEL_WARM) == state and "deletionTimestamp" not in pod["metadata"]
    }


def running_idle(controllers: KubeControllers) -> dict[str, dict[str, Any]]:
    return {
        name: pod
        for name, pod in pool_pods(controllers, IDLE).items()
        if pod["status"].get("phase") == "Running"
    }


def ready_pool(controllers: KubeControllers, size: int = 2) -> dict[str, dict[str, Any]]:
    """The idle pool pods once `size` of them run."""

    def ready() -> dict[str, dict[str, Any]]:
        running = running_idle(controllers)
        return running if len(running) >= size else {}

    return wait_until(ready, f"{size} idle pool pods running", within=POD_TIMEOUT, every=KUBECTL_POLL_SECONDS)


def stop_and_drain(controllers: KubeControllers, controller: ControllerProcess) -> None:
    """Stop the controller; it deletes its idle pool pods on the way out."""
    controller.stop()
    wait_until(
        lambda: not pool_pods(controllers, IDLE),
        "the stopped controller's idle pool pods deleted",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )


def pool_metrics(client: httpx.Client) -> dict[tuple[str, str], float]:
    """The controller's warm pool series, by (name, reason)."""
    return pool_series(client.get("/metrics").raise_for_status().text)


def test_select_1_runs_in_a_pool_pod_used_once_and_the_pool_refills(kube_controllers: Controllers) -> None:
    controllers, start = kube_controllers
    controller = start(**POOL)
    with controller.client() as client:
        before = ready_pool(controllers)
        first = run(client, {"sql": "SELECT 1 AS one"})
        second = run(client, {"sql": "SELECT 2 AS two"})
        metrics = pool_metrics(client)
    assert metrics[("podq_warm_pool_claims_total", "")] == 2, metrics
    assert metrics[("podq_warm_pool_size", "")] == 2, metrics
    assert metrics[("podq_warm_pool_misses_total", "empty")] == 0, metrics
    assert first["status"] == "succeeded", first
    assert first["result"]["rows"] == [[1]]
    assert second["result"]["rows"] == [[2]], second
    used = {first["placement"]["pod"], second["placement"]["pod"]}
    assert len(used) == 2 and all(name.startswith(POOL_POD_PREFIX) for name in used), used
    assert first["placement"]["pod"] in before, (first["placement"], sorted(before))
    reasons = {event["reason"] for event in pod_events(controllers.namespace, first["placement"]["pod"])}
    assert {"QueryClaimed", "QuerySucceeded"} <= reasons, reasons
    # Each pod is deleted once its outcome is stored, and the pool is back at its size with new pods.
    wait_until(
        lambda: not used & {pod["metadata"]["name"] for pod in controllers.pods()},
        "the used pool pods deleted",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )
    assert not used & set(ready_pool(controllers))
    stop_and_drain(controllers, controller)


def test_a_query_at_other_limits_starts_a_cold_pod(kube_controllers: Controllers) -> None:
    """Resizing off: a larger query does not take a pool pod (with it, test_kubernetes_warm_resize.py)."""
    controllers, start = kube_controllers
    controller = start(**POOL, kube_warm_pool_resize="false")
    with controller.client() as client:
        idle = ready_pool(controllers)
        record = run(client, {"sql": "SELECT 1 AS one", "limits": {"memory": "256Mi"}})
        metrics = pool_metrics(client)
    assert metrics[("podq_warm_pool_misses_total", "size")] == 1, metrics
    assert metrics[("podq_warm_pool_claims_total", "")] == 0, metrics
    assert metrics[("podq_warm_pool_idle", "")] == 2, metrics
    assert record["result"]["rows"] == [[1]], record
    assert record["placement"]["pod"] == f"podq-{record['id']}"
    assert set(pool_pods(controllers, IDLE)) == set(idle)
    stop_and_drain(controllers, controller)


def test_an_oom_kill_in_a_claimed_pool_pod_is_memory(kube_controllers: Controllers) -> None:
    controllers, start = kube_controllers
    controller = start(**POOL)
    with controller.client() as client:
        ready_pool(controllers)
        oom = run(client, {"sql": "SELECT 1", "debug": {"allocate_mb": 1024}})
    assert oom["placement"]["pod"].startswith(POOL_POD_PREFIX), oom["placement"]
    assert oom["status"] == "failed", oom
    assert oom["error"]["error_type"] == "memory", oom["error"]
    assert oom["placement"]["container_reason"] == "OOMKilled", oom["placement"]
    stop_and_drain(controllers, controller)


IDLE_SECONDS = 20
TIMEOUT_SECONDS = 3


def test_a_pool_pods_deadline_is_its_querys_own_timeout_not_its_age(kube_controllers: Controllers) -> None:
    """A pod that idled IDLE_SECONDS is claimed by a query with a 3 s timeout: a deadline counted from the
    pod's start without its idle time would end it at once; the query must get its 3 s, and no more."""
    controllers, start = kube_controllers
    controller = start(**POOL)
    with controller.client() as client:
        pods = ready_pool(controllers)
        oldest = min(parse_time(pod["status"]["startTime"]) for pod in pods.values())
        wait_until(
            lambda: time.time() - oldest >= IDLE_SECONDS,
            f"a pool pod idle for {IDLE_SECONDS} s",
            within=IDLE_SECONDS + 5,
            every=KUBECTL_POLL_SECONDS,
        )
        record = run(client, sleeper(60, timeout_seconds=TIMEOUT_SECONDS))
    assert record["placement"]["pod"] in pods, record["placement"]
    assert record["error"]["error_type"] == "timeout", record
    assert record["placement"]["reason"] == "DeadlineExceeded", record["placement"]
    assert (
        record["error"]["message"]
        == f"the query did not finish within its deadline of {TIMEOUT_SECONDS} seconds"
    )
    ran = record["finished_at"] - record["started_at"]
    # Whole seconds: the kubelet's deadline is rounded up from the pod's age plus the timeout.
    assert TIMEOUT_SECONDS - 1 <= ran <= TIMEOUT_SECONDS + 1 + STOP_SECONDS, record
    stop_and_drain(controllers, controller)


def test_the_pool_replaces_pods_deleted_by_hand(kube_controllers: Controllers) -> None:
    controllers, start = kube_controllers
    controller = start(**POOL)
    deleted = set(ready_pool(controllers))
    kubectl("delete", "pods", "-n", controllers.namespace, "--wait=false", *deleted)
    wait_until(
        lambda: (
            len(
                [
                    name
                    for name, pod in pool_pods(controllers, IDLE).items()
                    if name not in deleted and pod["status"].get("phase") == "Running"
                ]
            )
            >= 2
        ),
        "two new idle pool pods running",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )
    assert not pool_pods(controllers, CLAIMED)
    stop_and_drain(controllers, controller)


MAX_IDLE_SECONDS = 15


def created(pod: dict[str, Any]) -> float:
    return parse_time(pod["metadata"]["creationTimestamp"])


def test_an_idle_pool_pod_is_replaced_at_its_maximum_idle_age(kube_controllers: Controllers) -> None:
    """No pod changes while the pool waits: the pool wakes when its oldest pod ages out."""
    controllers, start = kube_controllers
    controller = start(**POOL, kube_warm_pool_max_idle_seconds=MAX_IDLE_SECONDS)
    first = ready_pool(controllers)

    def replaced() -> dict[str, dict[str, Any]]:
        idle, running = set(pool_pods(controllers, IDLE)), running_idle(controllers)
        return running if not set(first) & idle and len(running) == 2 else {}

    new = wait_until(
        replaced,
        "the first idle pool pods replaced by two new running ones",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )
    # Replaced when they aged out, not before (timestamps in whole seconds).
    aged_out = min(created(pod) for pod in first.values()) + MAX_IDLE_SECONDS
    assert all(created(pod) >= aged_out - 1 for pod in new.values()), (first, new)
    stop_and_drain(controllers, controller)


def test_a_controller_restarted_with_a_smaller_pool_deletes_the_idle_pods_beyond_it(
    kube_controllers: Controllers,
) -> None:
    """The crashed controller's two idle pods are adopted; at size 1 one of them goes and none is made."""
    controllers, start = kube_controllers
    first = start(**POOL)
    idle = set(ready_pool(controllers))
    first.kill()
    second = start(**{**POOL, "kube_warm_pool_size": 1})

    def one_left() -> set[str]:
        pods = set(pool_pods(controllers, IDLE))
        return pods if len(pods) == 1 else set()

    left = wait_until(
        one_left,
        "one idle pool pod left",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )
    assert left <= idle, (sorted(left), sorted(idle))
    with second.client() as client:
        assert pool_metrics(client)[("podq_warm_pool_size", "")] == 1
    stop_and_drain(controllers, second)


def test_after_kill_9_the_pool_is_adopted_and_a_claimed_pod_ends_its_query_once(
    kube_controllers: Controllers,
) -> None:
    """The simplest rule: a crashed controller's idle pods are the next one's pool, and a claimed pod is
    taken back by its own query (by label), never run again on another pod."""
    controllers, start = kube_controllers
    first = start(**POOL)
    idle = ready_pool(controllers)
    with first.client() as client:
        location = submit(client, sleeper(4))
        claimed = wait_until(
            lambda: pool_pods(controllers, CLAIMED),
            "a pool pod claimed",
            within=POD_TIMEOUT,
            every=KUBECTL_POLL_SECONDS,
        )
    first.kill()
    second = start(**POOL)
    with second.client() as client:
        record = wait_finished(client, location, timeout=POD_TIMEOUT)
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == [[1]]
    assert record["placement"]["pod"] in claimed, (record["placement"], sorted(claimed))
    reasons = {event["reason"] for event in pod_events(controllers.namespace, record["placement"]["pod"])}
    assert {"QueryClaimed", "QueryAdopted", "QuerySucceeded"} <= reasons, reasons
    assert not pod_events(controllers.namespace, f"podq-{record['id']}"), "a cold pod was started too"
    assert set(idle) - set(claimed) <= set(ready_pool(controllers)), "an idle pod was not adopted"
    stop_and_drain(controllers, second)


@pytest.mark.parametrize("point", ["after_claim", "after_attach"])
def test_a_crash_between_claim_attach_and_outcome_ends_the_query_once_on_its_pool_pod(
    point: str, kube_controllers: Controllers
) -> None:
    """after_claim: the worker waits for a request nobody wrote, and the next controller writes it;
    after_attach: the worker has answered, and the next controller reads the answer from the pod."""
    controllers, start = kube_controllers
    first = start(**POOL, test_crash_at=point)
    ready_pool(controllers)
    with first.client() as client:
        location = submit(client, {"sql": "SELECT 1 AS one"})
    assert first.process is not None
    first.process.wait(timeout=POD_TIMEOUT)
    assert "test crash point" in first.log(), first.log()
    claimed = pool_pods(controllers, CLAIMED)
    second = start(**POOL)
    with second.client() as client:
        record = wait_finished(client, location, timeout=POD_TIMEOUT)
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == [[1]]
    assert [attempt["status"] for attempt in record["attempts"]][:1] == ["interrupted"], record["attempts"]
    assert len(record["attempts"]) == 2, record["attempts"]
    assert list(claimed) == [record["placement"]["pod"]], (record["placement"], sorted(claimed))
    assert not pod_events(controllers.namespace, f"podq-{record['id']}"), "a cold pod was started too"
    stop_and_drain(controllers, second)


def test_a_crash_mid_attach_ends_the_query_once_and_leaves_no_pool_pod_behind(
    kube_controllers: Controllers,
) -> None:
    """The controller dies with the attach open and nothing written: the worker's stdin (stdinOnce) closes
    empty, the worker exits without output, and the next controller deletes that pod and runs the query on
    a cold pod; the fixture checks that no pod is left once the controllers stop."""
    controllers, start = kube_controllers
    first = start(**POOL, test_crash_at="mid_attach")
    ready_pool(controllers)
    with first.client() as client:
        location = submit(client, {"sql": "SELECT 1 AS one"})
    assert first.process is not None
    first.process.wait(timeout=POD_TIMEOUT)
    assert "test crash point mid_attach" in first.log(), first.log()
    claimed = pool_pods(controllers, CLAIMED)
    assert len(claimed) == 1, sorted(claimed)
    second = start(**POOL)
    with second.client() as client:
        record = wait_finished(client, location, timeout=POD_TIMEOUT)
        metrics = pool_metrics(client)
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == [[1]]
    assert [attempt["status"] for attempt in record["attempts"]][:1] == ["interrupted"], record["attempts"]
    assert len(record["attempts"]) == 2, record["attempts"]
    assert record["placement"]["pod"] == f"podq-{record['id']}", record["placement"]
    [pool_pod] = claimed
    reasons = {event["reason"] for event in pod_events(controllers.namespace, pool_pod)}
    assert {"QueryClaimed", "QueryAdopted", "QueryNotDelivered"} <= reasons, reasons
    assert "QuerySucceeded" not in reasons, reasons
    assert metrics[("podq_warm_pool_misses_total", "error")] == 1, metrics
    wait_until(
        lambda: pool_pod not in {pod["metadata"]["name"] for pod in controllers.pods()},
        "the undelivered pool pod deleted",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )
    stop_and_drain(controllers, second)
