"""Two readings of a pod's status the launcher and the warm pool share: has it ended, and when."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.launchers.kubernetes.pod_fate import parse_time


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def finished_at(pod: Mapping[str, Any]) -> float | None:
    """When the worker container ended (epoch seconds), from its terminated state."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and terminated.get("finishedAt"):
            return parse_time(terminated["finishedAt"])
    return None
