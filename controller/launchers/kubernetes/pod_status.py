"""Reading a pod as the API server returns it (a dict): the worker's container, states, conditions, times."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from controller.launchers.kubernetes.podspec import CONTAINER_NAME

__all__ = [
    "condition",
    "container_statuses",
    "finished_at",
    "is_terminal",
    "parse_time",
    "state",
    "worker_status",
]


def parse_time(text: str) -> float:
    """An API server timestamp ("2025-01-01T00:00:00Z") as epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def finished_at(pod: Mapping[str, Any]) -> float | None:
    """When the worker container ended (epoch seconds), from its terminated state."""
    ended = (state(worker_status(pod), "terminated") or {}).get("finishedAt")
    return parse_time(ended) if ended else None


def worker_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    # By name: injected sidecars may stand before or after the worker.
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((status for status in statuses if status.get("name") == CONTAINER_NAME), None)


def container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def state(container: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    if container is None:
        return None
    found: Mapping[str, Any] | None = (container.get("state") or {}).get(name)
    return found


def condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((item for item in conditions if item.get("type") == kind), None)
