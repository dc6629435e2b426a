"""Whether any node could ever hold a query's limits: pure, over the nodes' JSON as the API server lists them.

A pod whose requests exceed every eligible node's allocatable stays Pending forever, so such a query is
refused at submission (422) instead of failing as `unschedulable` later. "Ever" means on the nodes there
are now, empty: what other pods use is the scheduler's business, and a pod that merely does not fit yet
waits for `PODQ_UNSCHEDULABLE_AFTER_SECONDS`. A node is eligible when it carries every label of the worker
node selector; taints are not weighed (a toleration mismatch also leaves the pod Pending, and is reported
as `unschedulable` with the scheduler's own message).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.launchers.base import Limits
from controller.quantity import QuantityError, parse_cpu_millicores, parse_memory_bytes

__all__ = ["NodeRoom", "node_rooms", "refusal"]


@dataclass(frozen=True)
class NodeRoom:
    name: str
    cpu_millicores: int
    memory_bytes: int


def node_rooms(nodes: Iterable[Mapping[str, Any]], node_selector: Mapping[str, str]) -> list[NodeRoom]:
    """The allocatable room of every node the worker pods may land on; nodes without it are left out."""
    rooms = []
    for node in nodes:
        labels = node.get("metadata", {}).get("labels") or {}
        if any(labels.get(key) != value for key, value in node_selector.items()):
            continue
        allocatable = node.get("status", {}).get("allocatable") or {}
        try:
            cpu = parse_cpu_millicores(str(allocatable["cpu"]))
            memory = parse_memory_bytes(str(allocatable["memory"]))
        except (KeyError, QuantityError):
            continue
        rooms.append(NodeRoom(node.get("metadata", {}).get("name", "?"), cpu, memory))
    return rooms


def refusal(limits: Limits, rooms: list[NodeRoom]) -> str | None:
    """Why no node could ever run a pod with these limits, or None when one could."""
    if not rooms:
        return "no node in the cluster matches the worker pods' node selector"
    if any(
        r.cpu_millicores >= limits.cpu_millicores and r.memory_bytes >= limits.memory_bytes for r in rooms
    ):
        return None
    largest = max(rooms, key=lambda r: (r.memory_bytes, r.cpu_millicores))
    return (
        f"no node could ever hold cpu={limits.cpu_millicores}m memory={limits.memory_bytes / 2**20:g}Mi: "
        f"the largest node ({largest.name}) has cpu={largest.cpu_millicores}m "
        f"memory={largest.memory_bytes / 2**20:g}Mi allocatable"
    )
