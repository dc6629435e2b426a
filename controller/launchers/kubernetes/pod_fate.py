"""What a worker pod's state means to podq: pure functions over the pod as the API server returns it.

`observe` answers, for every state the watch delivers, whether to keep watching, to read the log, or to
fail without it:

    the pod is gone (deleted under us)                      -> Failed: crash (retryable)
    phase Succeeded or Failed, or the worker terminated     -> Ended: read the log, then call `decide`
    being deleted, the worker still running                 -> Waiting "Terminating"
    Running                                                 -> Waiting "Running"
    still pending past the job's queue deadline             -> Failed: timeout, phase queue (retryable)
    Unschedulable                                           -> Waiting until `unschedulable_after` seconds
                                                               after creation, then Failed: unschedulable
    ErrImagePull, ImagePullBackOff                          -> Waiting until `image_pull_grace` seconds
                                                               after creation, then Failed: image
    InvalidImageName, ErrImageNeverPull, ImageInspectError,
    CreateContainerConfigError, CreateContainerError        -> Failed: image, at once
    anything else (ContainerCreating, PodInitializing...)   -> Waiting

`decide` turns an ended pod and its log into an `Outcome`, in a fixed order: what the pod's fate says
first, then container states, then the worker's own words, then exit codes (as Argo's
``inferFailedReason`` and Flyte's ``DemystifyFailure`` do, without their gaps):

1. A pod-level reason, unless the pod had Succeeded before it came: ``DeadlineExceeded`` -> timeout;
   ``Evicted``, a node shutdown, a ``DisruptionTarget`` condition (preemption, taint, drain...) -> evicted.
2. Any container ``OOMKilled`` -> memory, even with exit code 0 and a valid envelope in the log; an
   injected container (an init container, a sidecar) is named, with its own limit.
3. The worker never started (``StartError``: the image cannot run its command) -> image.
4. The envelope on the log's last line, if the exit code agrees with it -> its result or its error.
5. A protocol exit code and an ``ErrorInfo`` termination message -> that error.
6. Anything else -> crash, with the exit code and signal, why the envelope was unusable and the log's end.

A cut or garbled envelope is never read as a smaller result: it falls through to 5 and 6.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from controller.launchers.base import Outcome, QueueDeadline, queue_timeout
from controller.launchers.kubernetes.podspec import CONTAINER_NAME
from controller.launchers.worker_io import (
    EXCERPT_LINES,
    PROTOCOL_ERROR_CODES,
    envelope_outcome,
    log_excerpt,
    signal_name,
    termination_error,
)
from controller.quantity import QuantityError, parse_memory_bytes
from worker_image.protocol import ENVELOPE_MARKER, EnvelopeError, ErrorInfo, ErrorType, error_info

__all__ = [
    "Ended",
    "Failed",
    "Verdict",
    "Waiting",
    "decide",
    "log_tail",
    "observe",
    "parse_time",
    "placement",
]

_IMAGE_PULL_RETRIES = frozenset({"ErrImagePull", "ImagePullBackOff"})
_IMAGE_FAILURES = frozenset(
    {
        "InvalidImageName",
        "ErrImageNeverPull",
        "ImageInspectError",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
# Pod reasons (status.reason) and DisruptionTarget condition reasons: who took the pod away.
_DISRUPTIONS = {
    "Evicted": "evicted by the kubelet",
    "Terminated": "stopped for a node shutdown",
    "Shutdown": "stopped for a node shutdown",
    "NodeShutdown": "refused by a node that is shutting down",
    "TerminationByKubelet": "terminated by the kubelet",
    "PreemptionByScheduler": "preempted by the scheduler for a higher-priority pod",
    "DeletionByTaintManager": "deleted by the taint manager (NoExecute taint)",
    "DeletionByPodGC": "deleted by the pod garbage collector (its node is gone)",
    "EvictionByEvictionAPI": "evicted through the eviction API (a node drain, an autoscaler)",
}
# The kubelet's messages when it evicts a pod for its own scratch-space use (pkg/kubelet/eviction):
# the same query fills the same space again, so such an eviction is not worth retrying.
_OWN_LIMIT_EVICTIONS = (
    "Usage of EmptyDir volume",
    "exceeded its local ephemeral storage limit",
    "Pod ephemeral local storage usage exceeds",
)


@dataclass(frozen=True)
class Waiting:
    """Not finished; keep watching."""

    reason: str
    message: str
    # When the verdict may change with no pod event (a grace period ends), else None.
    recheck_at: float | None


@dataclass(frozen=True)
class Ended:
    """The worker container or the pod has ended: read the log, then call `decide`."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """Decided without the log."""

    error: ErrorInfo


Verdict = Waiting | Ended | Failed


def observe(
    pod: Mapping[str, Any] | None,
    *,
    now: float,
    unschedulable_after: float,
    image_pull_grace: float,
    queue_deadline: QueueDeadline | None = None,
) -> Verdict:
    if pod is None:
        message = "the worker pod was deleted before podq read its outcome"
        return Failed(error_info(ErrorType.CRASH, message, retryable=True))
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    terminated = _state(_worker_status(pod), "terminated")
    if phase in ("Succeeded", "Failed") or terminated is not None:
        return Ended(status.get("reason") or (terminated or {}).get("reason") or phase)
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return Waiting("Terminating", "the worker pod is being deleted", None)
    if phase == "Running":
        return Waiting("Running", "", None)
    pending = _pending(
        pod, phase, now=now, unschedulable_after=unschedulable_after, image_pull_grace=image_pull_grace
    )
    return pending if queue_deadline is None else _held_to(pending, queue_deadline, now=now)


def decide(pod: Mapping[str, Any], log: str | None, *, log_problem: str | None = None) -> Outcome:
    """The outcome of an ended pod, given its log (None when it could not be read, `log_problem` says why)."""
    error = _pod_fate(pod) or _out_of_memory(pod) or _start_error(pod)
    verdict = Outcome(error=error) if error is not None else _from_worker(pod, log, log_problem)
    return replace(verdict, placement={**placement(pod), "log_tail": log_tail(log or "")})


def log_tail(text: str) -> str:
    """The last lines of a pod's log for the record, with a result envelope shown by its size only."""
    lines = [
        f"[result envelope, {len(line)} bytes]" if line.startswith(ENVELOPE_MARKER) else line
        for line in text.rstrip("\n").split("\n")[-EXCERPT_LINES:]
    ]
    return log_excerpt("\n".join(lines))


def placement(pod: Mapping[str, Any]) -> dict[str, Any]:
    """Where the query ran and how its pod ended, for the record."""
    metadata, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status") or {}
    worker = _worker_status(pod)
    terminated = _state(worker, "terminated") or {}
    container_state = terminated or _state(worker, "waiting") or {}
    started = terminated.get("startedAt") or (_state(worker, "running") or {}).get("startedAt")
    fields = {
        "kind": "kubernetes",
        "namespace": metadata.get("namespace"),
        "pod": metadata.get("name"),
        "node": spec.get("nodeName"),
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "container_reason": container_state.get("reason"),
        **_exit_details(terminated.get("exitCode")),
        "started_at": started or status.get("startTime"),
        "finished_at": terminated.get("finishedAt"),
    }
    return {key: value for key, value in fields.items() if value is not None}


def parse_time(text: str) -> float:
    """An API server timestamp ("2025-01-01T00:00:00Z") as epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


def _pending(
    pod: Mapping[str, Any], phase: str, *, now: float, unschedulable_after: float, image_pull_grace: float
) -> Verdict:
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        reason, message = scheduled.get("reason") or phase, scheduled.get("message") or ""
        if reason != "Unschedulable":
            return Waiting(reason, message, None)
        ends = _created(pod) + unschedulable_after
        if now < ends:
            return Waiting(reason, message, ends)
        details = {"scheduler_message": message, "waited_seconds": unschedulable_after}
        return Failed(
            error_info(ErrorType.UNSCHEDULABLE, f"no node can run the worker pod: {message}", details)
        )
    for container in _container_statuses(pod):
        waiting = _state(container, "waiting") or {}
        reason = waiting.get("reason")
        if reason in _IMAGE_FAILURES:
            return Failed(_image_error(container, waiting))
        if reason in _IMAGE_PULL_RETRIES:
            ends = _created(pod) + image_pull_grace
            if now < ends:
                return Waiting(reason, waiting.get("message") or "", ends)
            return Failed(_image_error(container, waiting, waited_seconds=image_pull_grace))
    waiting = _state(_worker_status(pod), "waiting") or {}
    return Waiting(waiting.get("reason") or phase, waiting.get("message") or "", None)


def _held_to(pending: Verdict, deadline: QueueDeadline, *, now: float) -> Verdict:
    """A pod still pending, held to its query's queue deadline: the worker must be running by then."""
    if not isinstance(pending, Waiting):
        return pending
    if now < deadline.at:
        recheck_at = deadline.at if pending.recheck_at is None else min(pending.recheck_at, deadline.at)
        return replace(pending, recheck_at=recheck_at)
    details = {"pending_reason": pending.reason, "pending_message": pending.message}
    return Failed(queue_timeout(deadline.seconds, **details))


def _image_error(
    container: Mapping[str, Any], waiting: Mapping[str, Any], *, waited_seconds: float | None = None
) -> ErrorInfo:
    image, reason, message = container.get("image", ""), waiting.get("reason", ""), waiting.get("message", "")
    details: dict[str, Any] = {
        "container": container.get("name"),
        "image": image,
        "reason": reason,
        "message": message,
    }
    if waited_seconds is not None:
        details["waited_seconds"] = waited_seconds
    return error_info(
        ErrorType.IMAGE, f"the worker image {image} cannot be run: {reason}: {message}", details
    )


def _pod_fate(pod: Mapping[str, Any]) -> ErrorInfo | None:
    status = pod.get("status") or {}
    # The kubelet's node-shutdown manager still writes its reason and condition onto a pod that had already
    # Succeeded, and keeps the phase: that pod's own result stands.
    if status.get("phase") == "Succeeded":
        return None
    if status.get("reason") == "DeadlineExceeded":
        return _timeout(pod)
    return _disruption(pod)


def _timeout(pod: Mapping[str, Any]) -> ErrorInfo:
    status = pod.get("status") or {}
    deadline = pod.get("spec", {}).get("activeDeadlineSeconds")
    details = {
        "phase": "run",
        "active_deadline_seconds": deadline,
        "reason": status.get("reason"),
        "message": status.get("message"),
    }
    message = f"the query did not finish within its deadline of {deadline} seconds"
    return error_info(ErrorType.TIMEOUT, message, details)


def _disruption(pod: Mapping[str, Any]) -> ErrorInfo | None:
    status = pod.get("status") or {}
    reason = status.get("reason")
    condition = _condition(pod, "DisruptionTarget")
    if condition is not None and condition.get("status") != "True":
        condition = None
    if condition is None and reason not in _DISRUPTIONS:
        return None
    details: dict[str, Any] = {"reason": reason, "message": status.get("message") or ""}
    if condition is not None:
        details["disruption_reason"] = condition.get("reason")
        details["message"] = details["message"] or condition.get("message") or ""
    cause = reason if reason in _DISRUPTIONS else details["disruption_reason"]
    what = _DISRUPTIONS.get(cause, f"disrupted ({cause})")
    said = details["message"].strip()
    own_limit = reason == "Evicted" and any(marker in said for marker in _OWN_LIMIT_EVICTIONS)
    message = f"the worker pod was {what}: {said}" if said else f"the worker pod was {what}"
    return error_info(ErrorType.EVICTED, message, details, retryable=not own_limit)


def _out_of_memory(pod: Mapping[str, Any]) -> ErrorInfo | None:
    for container in _container_statuses(pod):
        terminated = _state(container, "terminated") or {}
        if terminated.get("reason") != "OOMKilled":
            continue
        name = container.get("name")
        limit = _memory_limit(pod, name)
        details: dict[str, Any] = {
            "container": name,
            "limit": limit,
            "limit_bytes": _bytes(limit),
            "reason": "OOMKilled",
            **_exit_details(terminated.get("exitCode")),
        }
        # An injected container (a sidecar, an init container) has a limit of its own, not the query's.
        who = "the query" if name == CONTAINER_NAME else f"the {name} container"
        return error_info(ErrorType.MEMORY, f"{who} ran out of memory (limit {limit or 'unset'})", details)
    return None


def _start_error(pod: Mapping[str, Any]) -> ErrorInfo | None:
    terminated = _state(_worker_status(pod), "terminated") or {}
    if terminated.get("reason") != "StartError":
        return None
    message = terminated.get("message") or ""
    details = {"reason": "StartError", "message": message, **_exit_details(terminated.get("exitCode"))}
    return error_info(ErrorType.IMAGE, f"the worker container could not start: {message}", details)


def _from_worker(pod: Mapping[str, Any], log: str | None, log_problem: str | None) -> Outcome:
    terminated = _state(_worker_status(pod), "terminated") or {}
    exit_code = terminated.get("exitCode")
    death = _death(exit_code)
    problem = log_problem or "the pod log was not read"
    if log is not None:
        try:
            return envelope_outcome(log, exit_code=exit_code, death=death)
        except EnvelopeError as exc:
            problem = str(exc)
    termination_message = terminated.get("message")
    if exit_code in PROTOCOL_ERROR_CODES:
        info = termination_error(termination_message)
        if info is not None:
            return Outcome(error=info)
    status = pod.get("status") or {}
    details: dict[str, Any] = {
        **_exit_details(exit_code),
        "container_reason": terminated.get("reason"),
        "envelope_problem": problem,
    }
    if log is not None:
        details["log_tail"] = log_excerpt(log)
        if log_problem:
            details["log_problem"] = log_problem
    if termination_message:
        details["termination_message"] = log_excerpt(termination_message)
    if status.get("reason"):
        details["pod_reason"] = status["reason"]
        details["pod_message"] = status.get("message") or ""
    return Outcome(error=error_info(ErrorType.CRASH, f"the worker {death} without a usable result", details))


def _exit_details(exit_code: int | None) -> dict[str, Any]:
    if exit_code is None:
        return {}
    number = _signal_number(exit_code)
    if number is None:
        return {"exit_code": exit_code}
    return {"exit_code": exit_code, "signal": signal_name(number)}


def _death(exit_code: int | None) -> str:
    if exit_code is None:
        return "left no exit code"
    number = _signal_number(exit_code)
    if number is None:
        return f"exited with code {exit_code}"
    return f"exited with code {exit_code} ({signal_name(number)})"


def _signal_number(exit_code: int) -> int | None:
    """The signal behind a container exit code: the runtime reports a death by signal N as 128 + N."""
    if 128 < exit_code <= 128 + signal.SIGRTMAX:
        return exit_code - 128
    return None


def _worker_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    # By name: injected sidecars may stand before or after the worker.
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((status for status in statuses if status.get("name") == CONTAINER_NAME), None)


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _state(container: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    if container is None:
        return None
    state: Mapping[str, Any] | None = (container.get("state") or {}).get(name)
    return state


def _condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((condition for condition in conditions if condition.get("type") == kind), None)


def _memory_limit(pod: Mapping[str, Any], container: str | None) -> str | None:
    pod_spec = pod.get("spec", {})
    for spec in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        if spec.get("name") == container:
            limit: str | None = (spec.get("resources") or {}).get("limits", {}).get("memory")
            return limit
    return None


def _bytes(quantity: str | None) -> int | None:
    try:
        return parse_memory_bytes(quantity) if quantity else None
    except QuantityError:
        return None


def _created(pod: Mapping[str, Any]) -> float:
    text = pod.get("metadata", {}).get("creationTimestamp")
    # The API server always sets it; without one there is nothing to wait from, so grace periods are over.
    return parse_time(text) if text else float("-inf")
