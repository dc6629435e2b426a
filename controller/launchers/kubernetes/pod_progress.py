"""How far a worker pod has got, for the watch: keep watching, read the log, or fail without it (pure).

`observe` answers, for every state the watch delivers:

    the pod is gone (deleted under us)                      -> Failed: crash (retryable)
    phase Succeeded or Failed, or the worker terminated     -> Ended: read the log, then pod_fate.decide
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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from controller.launchers.base import QueueDeadline, queue_timeout
from controller.launchers.kubernetes.pod_status import (
    condition,
    container_statuses,
    parse_time,
    state,
    worker_status,
)
from worker_image.protocol import ErrorInfo, ErrorType, error_info

__all__ = ["Ended", "Failed", "Verdict", "Waiting", "observe"]

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
    terminated = state(worker_status(pod), "terminated")
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


def _pending(
    pod: Mapping[str, Any], phase: str, *, now: float, unschedulable_after: float, image_pull_grace: float
) -> Verdict:
    scheduled = condition(pod, "PodScheduled")
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
    for container in container_statuses(pod):
        waiting = state(container, "waiting") or {}
        reason = waiting.get("reason")
        if reason in _IMAGE_FAILURES:
            return Failed(_image_error(container, waiting))
        if reason in _IMAGE_PULL_RETRIES:
            ends = _created(pod) + image_pull_grace
            if now < ends:
                return Waiting(reason, waiting.get("message") or "", ends)
            return Failed(_image_error(container, waiting, waited_seconds=image_pull_grace))
    waiting = state(worker_status(pod), "waiting") or {}
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


def _created(pod: Mapping[str, Any]) -> float:
    text = pod.get("metadata", {}).get("creationTimestamp")
    # The API server always sets it; without one there is nothing to wait from, so grace periods are over.
    return parse_time(text) if text else float("-inf")
