"""Resizing a warm pool pod in place (resize.py), pure: which queries a pool pod may serve as it is, resized
or not at all, what the resize patch asks, and how the kubelet's answer in the pod's status reads."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.launchers.base import Limits
from controller.launchers.kubernetes.pool import SizeClass, pool_pod
from controller.launchers.kubernetes.resize import asked, fit, progress, resize_patch
from controller.launchers.worker_io import polars_threads
from tests.unit.test_podspec import BARE

pytestmark = pytest.mark.unit

MiB = 2**20
CLASS = SizeClass(cpu_millicores=250, memory_bytes=200 * MiB)
LARGER = Limits(cpu_millicores=500, memory_bytes=400 * MiB, timeout_seconds=60)

millicores = st.integers(min_value=1, max_value=64_000)
memory = st.integers(min_value=MiB, max_value=2**40)
classes = st.builds(SizeClass, cpu_millicores=millicores, memory_bytes=memory)
limits = st.builds(Limits, cpu_millicores=millicores, memory_bytes=memory, timeout_seconds=st.just(60.0))


@given(size=classes, query=limits, resize=st.booleans())
def test_a_query_claims_a_pod_as_it_is_only_at_the_class_own_cpu_and_memory(
    size: SizeClass, query: Limits, resize: bool
) -> None:
    at_class = (query.cpu_millicores, query.memory_bytes) == (size.cpu_millicores, size.memory_bytes)
    assert (fit(size, query, resize=resize) == "claim") is at_class


@given(size=classes, query=limits)
def test_without_resizing_every_other_query_starts_cold(size: SizeClass, query: Limits) -> None:
    assert fit(size, query, resize=False) != "resize"


@given(size=classes, query=limits)
def test_a_resize_only_ever_raises_and_keeps_the_polars_threads(size: SizeClass, query: Limits) -> None:
    """Never less memory (Kubernetes refuses to lower it on a running pod; the query's limit is the
    cgroup's), never less CPU (the kubelet's quota is the query's), never more threads than polars has."""
    decided = fit(size, query, resize=True)
    larger = query.cpu_millicores >= size.cpu_millicores and query.memory_bytes >= size.memory_bytes
    threads = polars_threads(query.cpu_millicores) == polars_threads(size.cpu_millicores)
    if decided == "resize":
        assert larger and threads
    elif decided == "cold":
        assert not (larger and threads)


@given(size=classes, more_cpu=st.integers(0, 64_000), more_memory=st.integers(0, 2**40))
def test_any_larger_query_at_the_same_thread_count_is_resized(
    size: SizeClass, more_cpu: int, more_memory: int
) -> None:
    cpu = size.cpu_millicores + more_cpu
    query = Limits(cpu_millicores=cpu, memory_bytes=size.memory_bytes + more_memory, timeout_seconds=1)
    expected = "claim" if more_cpu == more_memory == 0 else "resize"
    if polars_threads(cpu) != polars_threads(size.cpu_millicores):
        expected = "cold"
    assert fit(size, query, resize=True) == expected


def pool_member() -> dict[str, Any]:
    """An idle pool pod of CLASS as the API server shows it, running."""
    pod = pool_pod(BARE, CLASS, "abc")
    pod["metadata"].update({"uid": "u", "resourceVersion": "7"})
    resources = copy.deepcopy(pod["spec"]["containers"][0]["resources"])
    pod["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "worker", "state": {"running": {}}, "resources": resources}],
    }
    return pod


def patched(pod: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`pod` with a resize patch merged as the API server merges it: containers by name."""
    merged = copy.deepcopy(pod)
    for change in patch["spec"]["containers"]:
        for container in merged["spec"]["containers"]:
            if container["name"] == change["name"]:
                container["resources"] = change["resources"]
    return merged


def test_the_patch_sets_requests_and_limits_alike_on_the_worker_container_only() -> None:
    patch = resize_patch(LARGER)
    assert list(patch) == ["spec"] and list(patch["spec"]) == ["containers"]
    [container] = patch["spec"]["containers"]
    assert container["name"] == "worker" and list(container) == ["name", "resources"]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert asked(patched(pool_member(), patch), LARGER)
    assert not asked(pool_member(), LARGER)


def with_status(
    pod: dict[str, Any], *, resources: Any = None, conditions: tuple[Any, ...] = ()
) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    if resources is not None:
        pod["status"]["containerStatuses"][0]["resources"] = resources
    pod["status"]["conditions"] += list(conditions)
    return pod


# The kubelet reports quantities its own way: whole cores, memory in bytes.
APPLIED = {
    "requests": {"cpu": "500m", "memory": str(400 * MiB)},
    "limits": {"cpu": "0.5", "memory": "400Mi"},
}


def condition(kind: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("name", "status", "state"),
    [
        ("asked, the kubelet not there yet", {}, "waiting"),
        ("applied, in the kubelet's units", {"resources": APPLIED}, "applied"),
        (
            "deferred: not now, maybe later",
            {"conditions": (condition("PodResizePending", "Deferred", "Node didn't have enough capacity"),)},
            "waiting",
        ),
        (
            "infeasible: never on this node",
            {
                "conditions": (
                    condition("PodResizePending", "Infeasible", "Node didn't have enough capacity"),
                )
            },
            "refused",
        ),
        ("in progress", {"conditions": (condition("PodResizeInProgress", ""),)}, "waiting"),
        (
            "in progress, failing (the kubelet retries)",
            {"conditions": (condition("PodResizeInProgress", "Error", "cgroup write failed"),)},
            "waiting",
        ),
        (
            "resources shown, but still in progress",
            {"resources": APPLIED, "conditions": (condition("PodResizeInProgress", ""),)},
            "waiting",
        ),
        (
            "only the memory applied",
            {"resources": {**APPLIED, "limits": {"cpu": "250m", "memory": "400Mi"}}},
            "waiting",
        ),
        ("garbage in the status", {"resources": {"requests": {"cpu": "lots"}}}, "waiting"),
    ],
)
def test_the_resize_reads_from_the_pods_status(name: str, status: dict[str, Any], state: str) -> None:
    pod = with_status(patched(pool_member(), resize_patch(LARGER)), **status)
    found = progress(pod, LARGER)
    assert found.state == state, name
    if state != "applied":
        assert found.message, name


def test_a_pod_whose_spec_was_not_patched_is_not_applied_whatever_its_status() -> None:
    assert progress(with_status(pool_member(), resources=APPLIED), LARGER).state == "waiting"


@pytest.mark.parametrize("end", ["Failed", "Succeeded", "deleting"])
def test_a_pod_that_ended_or_is_being_deleted_is_refused(end: str) -> None:
    pod = with_status(patched(pool_member(), resize_patch(LARGER)), resources=APPLIED)
    if end == "deleting":
        pod["metadata"]["deletionTimestamp"] = "2024-05-06T07:00:00Z"
    else:
        pod["status"]["phase"] = end
    assert progress(pod, LARGER).state == "refused"
