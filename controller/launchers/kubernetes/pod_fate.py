"""What an ended worker pod means to podq: pure functions over the pod as the API server returns it.

Once the watch (pod_progress's `observe`) says a pod has ended, `decide` turns it and its log into an
`Outcome`, in a fixed order: what the pod's fate says
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
from dataclasses import replace
from typing import Any

from controller.launchers.base import Outcome
from controller.launchers.kubernetes.pod_status import (
    condition,
    container_statuses,
    parse_time,
    state,
    worker_status,
)
from controller.launchers.kubernetes.podspec import ANNOTATION_TIMEOUT, CONTAINER_NAME
from controller.launchers.usage import settle
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

__all__ = ["decide", "log_tail", "placement", "starting_seconds", "usage"]

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


def decide(pod: Mapping[str, Any], log: str | None, *, log_problem: str | None = None) -> Outcome:
    """The outcome of an ended pod, given its log (None when it could not be read, `log_problem` says why)."""
    error = _pod_fate(pod) or _out_of_memory(pod) or _start_error(pod)
    verdict = Outcome(error=error) if error is not None else _from_worker(pod, log, log_problem)
    return replace(
        verdict, placement={**placement(pod), "log_tail": log_tail(log or "")}, usage=usage(pod, verdict)
    )


def usage(pod: Mapping[str, Any], verdict: Outcome) -> dict[str, Any]:
    """The verdict's usage with what the pod tells: its starting phase, and for an OOM kill the limit."""
    oom_limit = None
    if verdict.error is not None and verdict.error["error_type"] == ErrorType.MEMORY:
        oom_limit = verdict.error["details"].get("limit_bytes") or _bytes(_memory_limit(pod, CONTAINER_NAME))
    return settle(verdict.usage or {}, starting_seconds=starting_seconds(pod), oom_limit_bytes=oom_limit)


def starting_seconds(pod: Mapping[str, Any]) -> float | None:
    """From the pod's creation to its worker container's start (scheduling, image, sandbox), if both are
    known."""
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    worker = worker_status(pod)
    started = (state(worker, "terminated") or state(worker, "running") or {}).get("startedAt")
    if not created or not started:
        return None
    try:
        start, creation = parse_time(started), parse_time(created)
    except ValueError:
        return None
    # A container the kubelet could not start (StartError) is reported as started at the Unix epoch.
    return max(0.0, start - creation) if start > 0 else None


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
    worker = worker_status(pod)
    terminated = state(worker, "terminated") or {}
    container_state = terminated or state(worker, "waiting") or {}
    started = terminated.get("startedAt") or (state(worker, "running") or {}).get("startedAt")
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
    # A pool pod's deadline also counts the time it waited for its query, which the query's own timeout
    # (annotated when it was claimed) does not.
    timeout = (pod.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_TIMEOUT, deadline)
    message = f"the query did not finish within its deadline of {timeout} seconds"
    return error_info(ErrorType.TIMEOUT, message, details)


def _disruption(pod: Mapping[str, Any]) -> ErrorInfo | None:
    status = pod.get("status") or {}
    reason = status.get("reason")
    target = condition(pod, "DisruptionTarget")
    if target is not None and target.get("status") != "True":
        target = None
    if target is None and reason not in _DISRUPTIONS:
        return None
    details: dict[str, Any] = {"reason": reason, "message": status.get("message") or ""}
    if target is not None:
        details["disruption_reason"] = target.get("reason")
        details["message"] = details["message"] or target.get("message") or ""
    cause = reason if reason in _DISRUPTIONS else details["disruption_reason"]
    what = _DISRUPTIONS.get(cause, f"disrupted ({cause})")
    said = details["message"].strip()
    own_limit = reason == "Evicted" and any(marker in said for marker in _OWN_LIMIT_EVICTIONS)
    message = f"the worker pod was {what}: {said}" if said else f"the worker pod was {what}"
    return error_info(ErrorType.EVICTED, message, details, retryable=not own_limit)


def _out_of_memory(pod: Mapping[str, Any]) -> ErrorInfo | None:
    for container in container_statuses(pod):
        terminated = state(container, "terminated") or {}
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
    terminated = state(worker_status(pod), "terminated") or {}
    if terminated.get("reason") != "StartError":
        return None
    message = terminated.get("message") or ""
    details = {"reason": "StartError", "message": message, **_exit_details(terminated.get("exitCode"))}
    return error_info(ErrorType.IMAGE, f"the worker container could not start: {message}", details)


def _from_worker(pod: Mapping[str, Any], log: str | None, log_problem: str | None) -> Outcome:
    terminated = state(worker_status(pod), "terminated") or {}
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
