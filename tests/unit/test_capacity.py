"""The submission-time check that some node could ever hold a query's limits."""

from __future__ import annotations

from typing import Any

import pytest

from controller.launchers.base import Limits
from controller.launchers.kubernetes.capacity import NodeRoom, node_rooms, refusal

pytestmark = pytest.mark.unit

GI = 2**30


def node(name: str, cpu: str, memory: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}},
    }


def limits(cpu_m: int, memory: int) -> Limits:
    return Limits(cpu_millicores=cpu_m, memory_bytes=memory, timeout_seconds=10)


def test_allocatable_quantities_are_read_as_the_kubelet_reports_them() -> None:
    nodes = [node("a", "1950m", "24523076Ki"), node("b", "4", "8Gi")]
    assert node_rooms(nodes, {}) == [NodeRoom("a", 1950, 24523076 * 1024), NodeRoom("b", 4000, 8 * GI)]


def test_nodes_outside_the_selector_or_without_allocatable_are_not_counted() -> None:
    nodes = [node("a", "2", "4Gi", pool="batch"), node("b", "8", "64Gi"), {"metadata": {"name": "c"}}]
    assert [r.name for r in node_rooms(nodes, {"pool": "batch"})] == ["a"]
    assert [r.name for r in node_rooms(nodes, {})] == ["a", "b"]


@pytest.mark.parametrize(
    ("cpu_m", "memory", "fits"),
    [
        pytest.param(2000, 4 * GI, True, id="exactly-the-largest-node"),
        pytest.param(500, GI, True, id="small"),
        pytest.param(4001, GI, False, id="one-millicore-too-many"),
        pytest.param(1000, 4 * GI + 1, False, id="one-byte-too-many"),
        # Each dimension fits some node, but no single node holds both.
        pytest.param(3000, 3 * GI, False, id="cpu-of-one-node-memory-of-another"),
    ],
)
def test_a_pod_must_fit_one_node_in_both_cpu_and_memory(cpu_m: int, memory: int, fits: bool) -> None:
    rooms = [NodeRoom("big-memory", 2000, 4 * GI), NodeRoom("big-cpu", 4000, 2 * GI)]
    problem = refusal(limits(cpu_m, memory), rooms)
    assert (problem is None) is fits
    if not fits:
        assert problem is not None and "no node could ever hold" in problem and "big-memory" in problem


def test_no_eligible_node_at_all_is_a_refusal_naming_the_selector() -> None:
    assert refusal(limits(100, GI), []) == "no node in the cluster matches the worker pods' node selector"
