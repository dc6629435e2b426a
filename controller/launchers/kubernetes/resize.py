"""Which queries a warm pool pod may serve, and resizing one in place for a larger query: pure.

The rule (`fit`): a query at exactly the pool's size class claims a pod as it is; one asking for more CPU
and/or memory and less of neither is served by a pod resized up in place (``pods/resize``, KEP-1287, beta
and on by default since Kubernetes v1.33) when PODQ_KUBE_WARM_POOL_RESIZE is on (the default); every
other query starts a cold pod. A query asking for less never takes a bigger pod: its limits are the
kubelet's (the cgroup's OOM kill at its memory, its CPU quota), and Kubernetes refuses to lower a running
pod's memory. Nor is a pod resized to more CPU than its polars thread pool was sized for (polars fixes
POLARS_MAX_THREADS when the worker imports it, before any request): such a query starts cold, with the
threads its CPU is worth.

A resize sets the container's requests and limits both (Guaranteed QoS stays Guaranteed) through a
strategic merge patch, which merges the container list by name. The kubelet reports it in the pod's status
(`progress`): ``containerStatuses[].resources`` are the resources configured now, and the conditions
``PodResizePending`` (reason ``Infeasible``: the node can never hold it; ``Deferred``: not now) and
``PodResizeInProgress`` (reason ``Error`` while it fails to apply) say why not yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from controller.launchers.base import Limits
from controller.launchers.kubernetes.pod_status import condition, is_terminal, worker_status
from controller.launchers.kubernetes.podspec import CONTAINER_NAME, quantities
from controller.launchers.kubernetes.pool import SizeClass
from controller.launchers.worker_io import polars_threads
from controller.quantity import QuantityError, parse_cpu_millicores, parse_memory_bytes

__all__ = ["RESIZE_SECONDS", "Fit", "Progress", "asked", "fit", "progress", "resize_patch"]

# How long a claimed pod may take to show its resize applied before it is deleted and the query starts
# cold. The harness applied one in ~1.8 s where a cold pod took 4-6 s (BENCHMARKS.md): past this, waiting
# on is no faster than starting cold.
RESIZE_SECONDS = 10.0
PENDING = "PodResizePending"
IN_PROGRESS = "PodResizeInProgress"
INFEASIBLE = "Infeasible"

Fit = Literal["claim", "resize", "cold"]


def fit(size: SizeClass, limits: Limits, *, resize: bool) -> Fit:
    """How a query at `limits` may use a pool pod of class `size` (see the module docstring)."""
    cpu, memory = limits.cpu_millicores, limits.memory_bytes
    if (cpu, memory) == (size.cpu_millicores, size.memory_bytes):
        return "claim"
    larger = cpu >= size.cpu_millicores and memory >= size.memory_bytes
    if resize and larger and polars_threads(cpu) == polars_threads(size.cpu_millicores):
        return "resize"
    return "cold"


def resize_patch(limits: Limits) -> dict[str, Any]:
    """The strategic merge patch for ``pods/resize`` giving the worker these limits (requests equal)."""
    resources = quantities(limits.cpu_millicores, limits.memory_bytes)
    container = {"name": CONTAINER_NAME, "resources": {"requests": resources, "limits": dict(resources)}}
    return {"spec": {"containers": [container]}}


@dataclass(frozen=True)
class Progress:
    state: Literal["applied", "waiting", "refused"]
    # Why not applied (the kubelet's condition and message), for logs and events.
    message: str = ""


def _at(resources: Any, limits: Limits) -> bool:
    """Whether these requests and limits (the API's quantities) are exactly `limits`."""
    if not isinstance(resources, Mapping):
        return False
    for kind in ("requests", "limits"):
        values = resources.get(kind)
        if not isinstance(values, Mapping):
            return False
        try:
            cpu = parse_cpu_millicores(str(values.get("cpu")))
            memory = parse_memory_bytes(str(values.get("memory")))
        except QuantityError:
            return False
        if (cpu, memory) != (limits.cpu_millicores, limits.memory_bytes):
            return False
    return True


def _worker_spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = (pod.get("spec") or {}).get("containers") or []
    return next((item for item in containers if item.get("name") == CONTAINER_NAME), {})


def asked(pod: Mapping[str, Any], limits: Limits) -> bool:
    """Whether the pod's spec already asks for `limits` (a resize was patched, by this controller or by
    one that crashed since)."""
    return _at(_worker_spec(pod).get("resources"), limits)


def progress(pod: Mapping[str, Any], limits: Limits) -> Progress:
    """Where the resize of `pod` to `limits` stands, from its status."""
    if is_terminal(pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return Progress("refused", "the pod ended or is being deleted")
    pending, in_progress = condition(pod, PENDING), condition(pod, IN_PROGRESS)
    if pending is not None:
        message = f"{PENDING} {pending.get('reason')}: {pending.get('message', '')}".rstrip(": ")
        return Progress("refused" if pending.get("reason") == INFEASIBLE else "waiting", message)
    if in_progress is not None:
        message = f"{IN_PROGRESS} {in_progress.get('reason') or ''}: {in_progress.get('message', '')}"
        return Progress("waiting", message.rstrip(": "))
    status = worker_status(pod)
    if status is not None and _at(status.get("resources"), limits) and asked(pod, limits):
        return Progress("applied")
    return Progress("waiting", "the kubelet has not reported the new resources yet")
